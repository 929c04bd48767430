"""The backward kernel's compile-time configuration, checked on the host without a GPU: a small
program (kernel_config/bwd_config_check.cu) built against the kernel's own header with nvcc and the
CUTLASS headers the build used checks that the dQ product's K^T chunks address exactly what the
whole tile's view does and that each variant's shared memory fits the GPUs its library serves."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cutlass_include() -> Path | None:
    """CUTLASS_DIR, else the copy ci/build_wheel_host.sh unpacked, else the nvidia-cutlass package."""
    candidates = []
    if os.environ.get("CUTLASS_DIR"):
        candidates += [Path(os.environ["CUTLASS_DIR"]), Path(os.environ["CUTLASS_DIR"]) / "include"]
    candidates.append(ROOT / "build/cutlass/cutlass_library/source/include")
    spec = importlib.util.find_spec("cutlass_library")
    if spec is not None and spec.origin:
        candidates.append(Path(spec.origin).parent / "source" / "include")
    return next((c for c in candidates if (c / "cute" / "tensor.hpp").exists()), None)


def test_backward_config_chunks_and_shared_memory(tmp_path):
    nvcc = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))
    include = cutlass_include()
    if nvcc is None or include is None:
        # CI compiles the kernels, so both are there: a skip there would hide this check.
        assert os.environ.get("FLASH_DMATTN_REQUIRE_BUILD") != "1", f"nvcc {nvcc}, CUTLASS headers {include}"
        pytest.skip(f"needs nvcc and the CUTLASS headers (nvcc: {nvcc}, CUTLASS: {include})")
    exe = tmp_path / "bwd_config_check"
    build = subprocess.run(
        [nvcc, "-std=c++17", "--expt-relaxed-constexpr", "-DDMATTN_FAMILY_SM=90", f"-I{ROOT / 'src'}",
         f"-I{ROOT / 'src/include'}", f"-I{include}", str(ROOT / "tests/kernel_config/bwd_config_check.cu"),
         "-o", str(exe)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0 and "0 failures" in run.stdout, run.stdout + run.stderr
    # The wide head dims take the one-buffer, chunked-dQ configuration; the others keep theirs.
    assert "D=256 tile_kv=64 dq_chunk=64 row_buffers=1" in run.stdout
    assert "D=128 tile_kv=128 dq_chunk=128 row_buffers=2" in run.stdout


def kernel_rows(*defines: str) -> list[str]:
    """A family's kernel-table rows (FAMILY=..., default sm90) from cmake/kernels.cmake, with -D definitions."""
    script = ROOT / "tests/kernel_config/print_rows.cmake"
    result = subprocess.run(["cmake", *(f"-D{d}" for d in defines), "-P", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    line = next(ln for ln in result.stderr.splitlines() if ln.startswith("ROWS="))
    return line[len("ROWS="):].split(";")


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_wide_backward_rows_on_the_families_whose_gpus_fit_them():
    """The backward's D = 192/256 kernels need 115-165 KB of shared memory a block: every family but
    sm120 (99 KB GPUs) builds them unless DMATTN_BWD_WIDE_HEAD_DIMS=OFF."""
    wide = {f"bwd:{t}:{d}" for t in ("fp16", "bf16") for d in (192, 256)}
    for family in ("sm80", "sm90", "sm100"):
        rows = kernel_rows(f"FAMILY={family}")
        off = kernel_rows(f"FAMILY={family}", "DMATTN_BWD_WIDE_HEAD_DIMS=OFF")
        assert f"{family}:bwd:bf16:128" in off and f"{family}:fwd:bf16:256" in off
        assert set(rows) - set(off) == {f"{family}:{r}" for r in wide}
    sm120 = kernel_rows("FAMILY=sm120")
    assert "sm120:bwd:bf16:128" in sm120 and "sm120:fwd:bf16:256" in sm120
    assert not any(r.split(":", 1)[1] in wide for r in sm120)
    assert kernel_rows("DMATTN_HEAD_DIMS=256") == [
        "sm90:fwd:fp16:256", "sm90:fwd:bf16:256", "sm90:bwd:fp16:256", "sm90:bwd:bf16:256"]


def gencode(archs: str) -> dict[str, list[str]]:
    """{family: its -gencode flags} as cmake/archs.cmake resolves DMATTN_ARCHS=archs."""
    script = ROOT / "tests/kernel_config/print_gencode.cmake"
    result = subprocess.run(["cmake", f"-DDMATTN_ARCHS={archs}", "-P", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = [ln[len("GENCODE "):] for ln in result.stderr.splitlines() if ln.startswith("GENCODE ")]
    return {name: flags.split(";") for name, flags in (ln.split("=", 1) for ln in lines)}


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH")
def test_ptx_rides_only_on_a_plain_compute_pass():
    """The newest arch's PTX is embedded where its SASS comes from plain compute_XX (one front-end
    pass makes both): a wheel's all-arch build puts it in sm120. Behind sm_90a or sm_100f it would
    double every unit's cicc time, so single-arch sm90/sm100 builds carry SASS only."""
    ptx = "-gencode=arch=compute_{0},code=compute_{0}"
    every = gencode("all")
    assert every["sm120"] == ["-gencode=arch=compute_120,code=sm_120", ptx.format(120)]
    assert every["sm90"] == ["-gencode=arch=compute_90a,code=sm_90a"]
    assert every["sm100"] == ["-gencode=arch=compute_100f,code=sm_100f"]
    assert gencode("80") == {"sm80": ["-gencode=arch=compute_80,code=sm_80", ptx.format(80)]}
    assert gencode("90") == {"sm90": ["-gencode=arch=compute_90a,code=sm_90a"]}
    assert gencode("100") == {"sm100": ["-gencode=arch=compute_100f,code=sm_100f"]}
