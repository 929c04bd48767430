# `python -m flash_dmattn` run as a user would: a subprocess with the package on PYTHONPATH.
# Checks the report's content, the path-only options CMake consumes, JSON, and a tiny bench.
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

import flash_dmattn
from flash_dmattn import _paths, bench

PACKAGE_PARENT = Path(flash_dmattn.__file__).resolve().parent.parent


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_PARENT), env.get("PYTHONPATH")]))
    return env


def _run(*args, timeout=120):
    proc = subprocess.run([sys.executable, "-m", "flash_dmattn", *args], capture_output=True, text=True,
                          env=_env(), timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def test_report_names_versions_backends_and_reasons():
    out = _run().stdout
    assert f"flash-dmattn    {flash_dmattn.__version__}" in out
    assert torch.__version__ in out
    assert f"CUDA available  {'yes' if torch.cuda.is_available() else 'no'}" in out
    assert "CUDA backend    " in out
    assert "reference" in out and "triton        unavailable: the Triton backend is not implemented yet" in out
    if not torch.cuda.is_available():
        assert "available: reference" in out and "flex          unavailable: no CUDA device" in out
    if flash_dmattn.library.is_built():
        assert "archs" in out and "head dims     forward" in out and "; backward" in out and "dtypes" in out
    else:
        assert "CUDA backend    not built" in out
        assert "cuda          unavailable: the CUDA backend was not built" in out


def test_report_gives_each_direction_its_own_head_dims():
    """A default build holds forward kernels up to D=256 but backward ones up to 128: one merged list
    would claim a backward the library does not have."""
    from flash_dmattn.__main__ import render

    facts = json.loads(_run("--json").stdout)
    facts["cuda_backend"] = {"built": True, "library": "libdmattn.so", "unavailable_reason": None, "info": {
        "kernels": ["sm90:fwd:bf16:64", "sm90:fwd:fp16:256", "sm90:bwd:bf16:64", "sm80:fwd:bf16:128"]}}
    assert "  head dims     forward 64, 128, 256; backward 64\n" in render(facts)
    facts["cuda_backend"]["info"]["kernels"] = ["sm90:fwd:bf16:64"]
    assert "  head dims     forward 64; backward none\n" in render(facts)


def test_cmake_dir_and_include_dir_print_only_the_path():
    for flag, path in (("--cmake-dir", _paths.cmake_dir()), ("--include-dir", _paths.include_dir())):
        result = subprocess.run([sys.executable, "-m", "flash_dmattn", flag], capture_output=True, text=True,
                                env=_env())
        if path.exists():
            assert result.returncode == 0 and result.stdout == f"{path}\n"
        else:  # an install without the C library says so instead of printing a dangling path
            assert result.returncode == 1 and result.stdout == "" and "does not exist" in result.stderr


def test_json_report_is_complete():
    facts = json.loads(_run("--json").stdout)
    assert facts["flash_dmattn"] == flash_dmattn.__version__ and facts["torch"] == torch.__version__
    assert facts["cuda_available"] == torch.cuda.is_available()
    assert list(facts["backends"]) == ["cuda", "triton", "flex", "reference"]
    assert facts["backends"]["reference"] == {"available": True, "reason": None}
    assert facts["backends"]["triton"]["reason"] == "the Triton backend is not implemented yet"
    assert facts["available_backends"] == flash_dmattn.get_available_backends()
    assert facts["cuda_backend"]["built"] == flash_dmattn.library.is_built()
    assert facts["cmake_dir"] == (str(_paths.cmake_dir()) if _paths.cmake_dir().exists() else None)


def test_bench_prints_a_timing_table_and_a_progress_bar():
    proc = _run("bench", "--seqlens", "16,32", "--heads", "2", "--head-dim", "16", "--batch", "1",
                "--causal", "--dtype", "fp32", "--warmup", "1", "--reps", "2")
    lines = proc.stdout.splitlines()
    assert "batch=1 heads=2 head_dim=16 dtype=fp32 causal=True" in lines[0]
    rows = [line.split() for line in lines[2:]]
    names = [(int(r[0]), r[1]) for r in rows]
    if torch.cuda.is_available():
        assert (16, "sdpa-flash") in names
    else:
        assert names == [(16, "reference"), (16, "sdpa-math"), (32, "reference"), (32, "sdpa-math")]
        for r in rows:  # time, TFLOP/s, status
            assert float(r[2]) > 0 and float(r[3]) > 0 and r[4] == "ok"
    assert "[" in proc.stderr and "L=32" in proc.stderr


def test_bench_reports_a_backend_that_raises_instead_of_crashing(monkeypatch):
    def no_kernel(q, k, v):
        raise NotImplementedError("flash_dmattn: no fwd kernel for this head dim")

    def wrong_dtype(q, k, v):
        raise TypeError("q: dtype torch.float32 is not supported")

    monkeypatch.setattr(bench, "_candidates", lambda device, causal: [("cuda", no_kernel, None),
                                                                      ("other", wrong_dtype, None),
                                                                      ("triton", None, "not here")])
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    results = bench.run(seqlens=[8], heads=1, head_dim=8, batch=1, warmup=0, reps=1, device="cpu", out=out)
    assert [r.status for r in results] == ["not implemented: flash_dmattn: no fwd kernel for this head dim",
                                           "unsupported: q: dtype torch.float32 is not supported",
                                           "unavailable: not here"]
    assert "not implemented" in out.getvalue() and "3/3" in err.getvalue()


def test_flops_counts_two_matmuls_and_halves_for_causal():
    assert bench.flops(2, 3, 5, 7, 11, causal=False) == 4 * 2 * 3 * 5 * 7 * 11
    assert bench.flops(2, 3, 5, 7, 11, causal=True) == 2 * 2 * 3 * 5 * 7 * 11
