"""The C ABI of libdmattn, loaded through ctypes: version queries, capabilities, the no-GPU status,
and argument validation (every rule names its argument). Runs on a machine without a GPU: every
check here happens before the library touches a device."""
from __future__ import annotations

import ctypes
import math
import threading

import pytest
import torch

import flash_dmattn
from helpers import capi
from helpers.capi import BF16, BOOL, FP16, FP32, INT32, Desc

pytestmark = pytest.mark.skipif(not capi.library_path().exists(), reason="libdmattn was not built (DMATTN_CUDA=OFF)")
HAS_GPU = torch.cuda.is_available()


@pytest.fixture(scope="module")
def lib():
    return capi.load()


def last_error(lib) -> str:
    return lib.dmattn_get_last_error().decode()


def test_version_queries_match_the_package(lib):
    assert lib.dmattn_abi_version() == 1
    assert lib.dmattn_version_string().decode() == flash_dmattn.__version__
    major, minor, patch = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32()
    lib.dmattn_version(ctypes.byref(major), ctypes.byref(minor), ctypes.byref(patch))
    assert f"{major.value}.{minor.value}.{patch.value}" == flash_dmattn.__version__


def test_status_names_cover_every_status(lib):
    names = [lib.dmattn_status_name(s).decode() for s in range(8)]
    assert names[0] == "DMATTN_STATUS_SUCCESS" and names[3] == "DMATTN_STATUS_NO_CUDA_DEVICE"
    assert len(set(names)) == 8
    assert lib.dmattn_status_name(99).decode() == "DMATTN_STATUS_UNKNOWN"


def test_capabilities_report_the_compiled_archs_and_table(lib):
    caps = capi.Capabilities()
    caps.struct_size = ctypes.sizeof(caps)
    assert lib.dmattn_get_capabilities(ctypes.byref(caps)) == capi.SUCCESS
    archs = list(caps.archs[: caps.num_archs])
    families = [caps.families[i].value.decode() for i in range(caps.num_families)]
    assert archs and all(a >= 80 for a in archs)
    assert families and all(f.startswith("sm") for f in families)
    for family in families:  # every family's library sits next to libdmattn
        assert (capi.library_path().parent / f"libdmattn_{family}.so").exists()
    rows = [r for r in lib.dmattn_kernel_table().decode().split("\n") if r]
    head_dims = sorted({int(r.split(":")[3]) for r in rows})
    assert head_dims == list(caps.head_dims[: caps.num_head_dims])
    assert all(r.split(":")[0] in families for r in rows)


def test_capabilities_reject_a_wrong_struct_size(lib):
    caps = capi.Capabilities()
    caps.struct_size = 4
    assert lib.dmattn_get_capabilities(ctypes.byref(caps)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("caps: struct_size")


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU behaviour")
def test_check_device_without_gpu_reports_no_cuda_device(lib):
    assert lib.dmattn_check_device(0) == capi.NO_CUDA_DEVICE
    assert "no CUDA device" in last_error(lib)


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU behaviour")
def test_valid_forward_without_gpu_returns_no_cuda_device(lib):
    args = capi.fwd_args(mask=Desc((2, 1, 1, 7), BOOL), bias=Desc((1, 4, 5, 7), BF16), causal=1)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE
    assert "no CUDA device" in last_error(lib)
    size = ctypes.c_size_t(123)
    assert lib.dmattn_fwd_workspace_size(ctypes.byref(args), ctypes.byref(size)) == capi.NO_CUDA_DEVICE


@pytest.mark.skipif(HAS_GPU, reason="checks the no-GPU behaviour")
def test_valid_backward_without_gpu_returns_no_cuda_device(lib):
    args = capi.bwd_args(bias=Desc((2, 2, 1, 7), BF16), dbias=Desc((2, 2, 1, 7), BF16))
    assert lib.dmattn_bwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE


@pytest.mark.gpu
def test_check_device_succeeds_on_a_built_arch(lib):
    assert lib.dmattn_check_device(torch.cuda.current_device()) == capi.SUCCESS, last_error(lib)


@pytest.mark.gpu
def test_a_call_without_its_kernel_names_the_missing_kernel(lib):
    # Any forward row this build lacks (builds differ: CI's holds two rows, a full one every row).
    rows = lib.dmattn_kernel_table().decode()
    missing = [(dtype, name, d) for dtype, name in ((BF16, "bf16"), (FP16, "fp16"))
               for d in (32, 64, 96, 128, 192, 256) if f"fwd:{name}:{d}" not in rows]
    if not missing:
        pytest.skip("this build holds every forward row: no call can miss its kernel")
    dtype, name, d = missing[0]
    # Fake pointers are safe: NOT_IMPLEMENTED is answered before any memory is touched.
    args = capi.fwd_args(D=d, dtype=dtype)
    size = ctypes.c_size_t(1)
    assert lib.dmattn_fwd_workspace_size(ctypes.byref(args), ctypes.byref(size)) == capi.SUCCESS, last_error(lib)
    assert size.value == 0
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.NOT_IMPLEMENTED
    assert "forward kernel" in last_error(lib) and f"head_dim {d}" in last_error(lib), last_error(lib)


def test_empty_problems_succeed_without_touching_a_device(lib):
    args = capi.fwd_args(B=0)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.SUCCESS, last_error(lib)
    args = capi.fwd_args(Q=0)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.SUCCESS, last_error(lib)
    args = capi.bwd_args(B=0)
    assert lib.dmattn_bwd(ctypes.byref(args)) == capi.SUCCESS, last_error(lib)


def test_last_error_is_thread_local(lib):
    args = capi.fwd_args(q=None)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT
    seen = {}
    thread = threading.Thread(target=lambda: seen.setdefault("other", last_error(lib)))
    thread.start()
    thread.join()
    assert seen["other"] == ""
    assert last_error(lib).startswith("q:")


# Each case: overrides for a valid forward call, and the argument the message must start with.
B, Q, K, H, HKV, D = 2, 5, 7, 4, 2, 64
FWD_CASES = {
    "missing q": (dict(q=None), "q:"),
    "q rank": (dict(q=Desc((B, Q, H * D))), "q:"),
    "q float32": (dict(q=Desc((B, Q, H, D), FP32)), "q:"),
    "q on cpu": (dict(q=Desc((B, Q, H, D), device=capi.DEVICE_CPU)), "q:"),
    "q last dim strided": (dict(q=Desc((B, Q, H, D), strides=(Q * H * D * 2, H * D * 2, D * 2, 2))), "q:"),
    "q misaligned": (dict(q=Desc((B, Q, H, D), data=0x7E0000000002)), "q:"),
    "q row stride not multiple of 8": (dict(q=Desc((B, Q, H, D), strides=(Q * H * 68, H * 68, 68, 1))), "q:"),
    "head dim not multiple of 8": (
        dict(q=Desc((B, Q, H, 60)), k=Desc((B, K, HKV, 60)), v=Desc((B, K, HKV, 60)), out=Desc((B, Q, H, 60))), "q:"),
    "head dim over 256": (
        dict(q=Desc((B, Q, H, 264)), k=Desc((B, K, HKV, 264)), v=Desc((B, K, HKV, 264)), out=Desc((B, Q, H, 264))),
        "q:"),
    "head dim mismatch": (dict(k=Desc((B, K, HKV, 32)), v=Desc((B, K, HKV, 32))), "k:"),
    "head ratio": (dict(k=Desc((B, K, 3, D)), v=Desc((B, K, 3, D))), "k:"),
    "k batch": (dict(k=Desc((1, K, HKV, D)), v=Desc((1, K, HKV, D))), "k:"),
    "k dtype": (dict(k=Desc((B, K, HKV, D), FP16)), "k:"),
    "k on another device": (dict(k=Desc((B, K, HKV, D), device_id=1)), "k:"),
    "v shape": (dict(v=Desc((B, K + 1, HKV, D))), "v:"),
    "missing out": (dict(out=None), "out:"),
    "out shape": (dict(out=Desc((B, Q + 1, H, D))), "out:"),
    "out dtype": (dict(out=Desc((B, Q, H, D), FP16)), "out:"),
    "out stride 0": (dict(out=Desc((B, Q, H, D), strides=(Q * H * D, 0, D, 1))), "out:"),
    "lse dtype": (dict(lse=Desc((B, H, Q), BF16)), "lse:"),
    "lse shape": (dict(lse=Desc((B, Q, H), FP32)), "lse:"),
    "mask rank": (dict(mask=Desc((Q, K), BOOL)), "mask:"),
    "mask broadcast": (dict(mask=Desc((B, 3, Q, K), BOOL)), "mask:"),
    "mask query axis": (dict(mask=Desc((B, H, Q + 1, K), BOOL)), "mask:"),
    "mask dtype": (dict(mask=Desc((B, H, Q, K), FP32)), "mask:"),
    "mask key axis strided": (dict(mask=Desc((B, H, Q, K), BOOL, strides=(H * Q * K * 2, Q * K * 2, K * 2, 2))),
                              "mask:"),
    "bias dtype": (dict(bias=Desc((B, H, Q, K), FP16)), "bias:"),
    "bias broadcast": (dict(bias=Desc((B, H, Q, K + 2), BF16)), "bias:"),
    "scale nan": (dict(scale=math.nan), "scale:"),
    "scale inf": (dict(scale=math.inf), "scale:"),
    "softcap negative": (dict(softcap=-1.0), "softcap:"),
    "causal 2": (dict(causal=2), "causal:"),
    "cu_seqlens_q alone": (dict(cu_seqlens_q=Desc((3,), INT32)), "cu_seqlens_k:"),
    "block_table without varlen": (dict(block_table=Desc((B, 4), INT32)), "block_table:"),
    "tile_plan NULL with a size": (dict(tile_plan_size=64), "tile_plan:"),
    "tile_plan misaligned": (dict(tile_plan=8, tile_plan_size=64), "tile_plan:"),
}


@pytest.mark.parametrize("case", list(FWD_CASES))
def test_forward_validation_names_the_argument(lib, case):
    overrides, prefix = FWD_CASES[case]
    args = capi.fwd_args(**overrides)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT, case
    assert last_error(lib).startswith(prefix), last_error(lib)
    size = ctypes.c_size_t()
    assert lib.dmattn_fwd_workspace_size(ctypes.byref(args), ctypes.byref(size)) == capi.INVALID_ARGUMENT
    assert lib.dmattn_fwd_plan_size(ctypes.byref(args), ctypes.byref(size)) == capi.INVALID_ARGUMENT


@pytest.mark.skipif(HAS_GPU, reason="valid calls reach the device on a GPU machine")
def test_callers_built_before_the_tile_plan_fields_are_still_served(lib):
    """struct_size may stop before the appended tile_plan fields (an older dmattn.h): they read as absent."""
    fwd = capi.fwd_args(mask=Desc((2, 1, 5, 7), BOOL), tile_plan_size=64)  # invalid if it were read
    fwd.struct_size = capi.FwdArgs.tile_plan.offset
    assert lib.dmattn_fwd(ctypes.byref(fwd)) == capi.NO_CUDA_DEVICE, last_error(lib)
    bwd = capi.bwd_args(tile_plan_size=64)
    bwd.struct_size = capi.BwdArgs.tile_plan.offset
    assert lib.dmattn_bwd(ctypes.byref(bwd)) == capi.NO_CUDA_DEVICE, last_error(lib)
    bwd.struct_size = capi.BwdArgs.tile_plan.offset + 4
    assert lib.dmattn_bwd(ctypes.byref(bwd)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("args: struct_size")


def test_forward_validation_rejects_a_foreign_struct_size(lib):
    args = capi.fwd_args()
    args.struct_size = 8
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("args: struct_size")
    assert lib.dmattn_fwd(None) == capi.INVALID_ARGUMENT


@pytest.mark.skipif(HAS_GPU, reason="valid calls reach the device on a GPU machine")
def test_forward_accepts_every_broadcast_form_of_mask_and_bias(lib):
    for b in (B, 1):
        for h in (H, HKV, 1):
            for q in (Q, 1):
                for k in (K, 1):
                    for dtype in (BOOL, BF16):
                        args = capi.fwd_args(mask=Desc((b, h, q, k), dtype), bias=Desc((b, h, q, k), BF16))
                        assert lib.dmattn_fwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE, last_error(lib)


@pytest.mark.skipif(HAS_GPU, reason="valid calls reach the device on a GPU machine")
def test_forward_accepts_varlen_and_paged_layouts(lib):
    total_q, total_k, max_q, max_k, batch = 9, 12, 5, 7, 2
    varlen = dict(q=Desc((total_q, H, D)), k=Desc((total_k, HKV, D)), v=Desc((total_k, HKV, D)),
                  out=Desc((total_q, H, D)), lse=Desc((H, total_q), FP32),
                  cu_seqlens_q=Desc((batch + 1,), INT32), cu_seqlens_k=Desc((batch + 1,), INT32),
                  max_seqlen_q=max_q, max_seqlen_k=max_k)
    args = capi.fwd_args(**varlen, mask=Desc((batch, H, max_q, max_k), BOOL))
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE, last_error(lib)
    paged = dict(varlen, k=Desc((6, 16, HKV, D)), v=Desc((6, 16, HKV, D)), block_table=Desc((batch, 3), INT32))
    args = capi.fwd_args(**paged)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE, last_error(lib)
    bad = dict(varlen, lse=Desc((batch, H, max_q), FP32))
    args = capi.fwd_args(**bad)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("lse:")
    bad = dict(varlen, cu_seqlens_k=Desc((batch + 2,), INT32))
    args = capi.fwd_args(**bad)
    assert lib.dmattn_fwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("cu_seqlens_k:")


BWD_CASES = {
    "missing dout": (dict(dout=None), "dout:"),
    "missing lse": (dict(lse=None), "lse:"),
    "dq shape": (dict(dq=Desc((B, Q, H, 32))), "dq:"),
    "dk dtype": (dict(dk=Desc((B, K, HKV, D), FP16)), "dk:"),
    "dv shape": (dict(dv=Desc((B, K, H, D))), "dv:"),
    "dbias without bias": (dict(dbias=Desc((B, H, Q, K))), "dbias:"),
    "dbias shape": (dict(bias=Desc((B, H, 1, K)), dbias=Desc((B, H, Q, K))), "dbias:"),
    "deterministic 3": (dict(deterministic=3), "deterministic:"),
    "block_table without varlen": (dict(block_table=Desc((B, 4), INT32)), "block_table:"),
    "tile_plan NULL with a size": (dict(tile_plan_size=64), "tile_plan:"),
}


@pytest.mark.parametrize("case", list(BWD_CASES))
def test_backward_validation_names_the_argument(lib, case):
    overrides, prefix = BWD_CASES[case]
    args = capi.bwd_args(**overrides)
    assert lib.dmattn_bwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT, case
    assert last_error(lib).startswith(prefix), last_error(lib)


@pytest.mark.skipif(HAS_GPU, reason="valid calls reach the device on a GPU machine")
def test_backward_accepts_paged_kv(lib):
    total_q, batch = 9, 2
    rows = lambda: Desc((total_q, H, D))  # noqa: E731
    pages = lambda: Desc((6, 16, HKV, D))  # noqa: E731
    args = capi.bwd_args(dout=rows(), q=rows(), out=rows(), dq=rows(), lse=Desc((H, total_q), FP32),
                         k=pages(), v=pages(), dk=pages(), dv=pages(),
                         cu_seqlens_q=Desc((batch + 1,), INT32), cu_seqlens_k=Desc((batch + 1,), INT32),
                         block_table=Desc((batch, 3), INT32), max_seqlen_q=5, max_seqlen_k=40)
    assert lib.dmattn_bwd(ctypes.byref(args)) == capi.NO_CUDA_DEVICE, last_error(lib)
    args = capi.bwd_args(dout=rows(), q=rows(), out=rows(), dq=rows(), lse=Desc((H, total_q), FP32),
                         k=pages(), v=pages(), dk=Desc((6, 8, HKV, D)), dv=pages(),
                         cu_seqlens_q=Desc((batch + 1,), INT32), cu_seqlens_k=Desc((batch + 1,), INT32),
                         block_table=Desc((batch, 3), INT32), max_seqlen_q=5, max_seqlen_k=40)
    assert lib.dmattn_bwd(ctypes.byref(args)) == capi.INVALID_ARGUMENT
    assert last_error(lib).startswith("dk:")
