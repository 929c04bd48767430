"""The installed libraries keep DESIGN's promises: libdmattn exports only dmattn_* symbols, the kernel
libraries only their family table, and none links libtorch, libcudart or libcuda (the static CUDA
runtime opens the driver at run time)."""
from __future__ import annotations

import shutil
import subprocess

import pytest

from flash_dmattn import _paths

LIB_DIR = _paths.lib_dir()
pytestmark = [
    pytest.mark.skipif(not _paths.library_path().exists(), reason="libdmattn was not built (DMATTN_CUDA=OFF)"),
    pytest.mark.skipif(shutil.which("nm") is None or shutil.which("ldd") is None, reason="needs nm and ldd"),
]


def exported(path) -> list[str]:
    out = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True, text=True, check=True)
    return [line.split()[-1] for line in out.stdout.splitlines() if line.strip()]


def needed(path) -> str:
    return subprocess.run(["ldd", str(path)], capture_output=True, text=True, check=True).stdout


def family_libraries():
    return sorted(LIB_DIR.glob("libdmattn_sm*.so"))


def test_libdmattn_exports_only_its_c_abi():
    symbols = exported(_paths.library_path())
    assert "dmattn_fwd" in symbols and "dmattn_get_last_error" in symbols
    assert [s for s in symbols if not s.startswith("dmattn_")] == []


def test_family_libraries_export_only_their_table():
    libs = family_libraries()
    assert libs, f"no kernel libraries next to libdmattn in {LIB_DIR}"
    for lib in libs:
        assert exported(lib) == ["dmattn_family_get"], lib.name


@pytest.mark.parametrize("forbidden", ["libtorch", "libc10", "libcudart", "libcuda.so"])
def test_no_library_links_torch_or_the_cuda_runtime(forbidden):
    for lib in [_paths.library_path(), *family_libraries(), *_paths.PACKAGE_DIR.glob("_C*.so")]:
        assert forbidden not in needed(lib), f"{lib.name} links {forbidden}"


def test_binding_and_library_answer_without_torch():
    # The compiled parts never need torch: load _C by file (not through the package, whose
    # __init__ imports torch) in a fresh interpreter that cannot import torch at all (-S: no
    # site-packages, so no torch installed as far as it can see) and ask the library for its facts.
    import sys

    module = next(_paths.PACKAGE_DIR.glob("_C*.so"))
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('torch') is None, 'torch is importable'\n"
        f"spec = importlib.util.spec_from_file_location('_C', {str(module)!r})\n"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "info = m.info()\n"
        "print(info['version'], info['abi_version'], info['families'])\n"
    )
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import flash_dmattn

    assert out.stdout.startswith(f"{flash_dmattn.__version__} 1 [")
