# The adaptor to libdmattn: the only importer of the compiled module flash_dmattn._C.
# ops.py (the CUDA impls of the ops) -> here -> _C (nanobind, DLPack) -> libdmattn's C ABI.
# Invariant: nothing here knows the public API; errors come back with the public argument names.
"""libdmattn through ``flash_dmattn._C``: availability, facts and the launch calls.

Allocates workspaces with torch (so the caching allocator and CUDA graphs see them), passes the
current raw stream, and maps library status codes to Python exceptions (done inside _C).
"""
from __future__ import annotations

import importlib

import torch

try:
    _C = importlib.import_module("flash_dmattn._C")
    _IMPORT_ERROR = None
except ImportError as exc:  # built with DMATTN_CUDA=OFF, or the module failed to load
    _C = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


def is_built() -> bool:
    """True when the compiled module and libdmattn are present."""
    return _C is not None


# The kernel table is fixed at build time; device answers are cached per device index.
_KERNELS = tuple(_C.info()["kernels"]) if _C is not None else ()
_device_reasons: dict[int, str | None] = {}


def library_unavailable_reason(device: int | None = None) -> str | None:
    """None when libdmattn is loaded and serves `device` (default: current); kernels for a given
    problem may still be missing, which the library reports itself (NotImplementedError naming it)."""
    if device in _device_reasons:  # the per-call path: one dict lookup
        return _device_reasons[device]
    if _C is None:
        return ("the CUDA backend was not built or failed to load "
                f"({_IMPORT_ERROR}); reinstall without DMATTN_CUDA=OFF")
    if not torch.cuda.is_available():
        return "no CUDA device is visible to PyTorch"
    if device is None:
        device = torch.cuda.current_device()
    if device not in _device_reasons:
        _device_reasons[device] = _C.device_unavailable_reason(device)
    return _device_reasons[device]


def unavailable_reason(device: int | None = None) -> str | None:
    """None when the cuda backend can serve `device` (default: current): the library is there and
    holds kernels. Backend selection (flash_dmattn_func_auto) uses this."""
    reason = library_unavailable_reason(device)
    if reason is None and not _KERNELS:
        return "the CUDA kernels are not implemented in this version (the library and its ABI are)"
    return reason


def info() -> dict:
    """Library facts: version, ABI version, compiled archs, head dims, dtypes, kernel table."""
    if _C is None:
        raise RuntimeError(unavailable_reason())
    return _C.info()


# How tensors cross into _C. torch >= 2.10 publishes DLPack's C exchange table
# (__dlpack_c_exchange_api__): _C reads tensors and the current stream through it directly (about
# 0.1 us a tensor). Older torch: DLPack capsules from torch's C exporter (~0.9 us a tensor;
# Tensor.__dlpack__ is Python code costing ~6.6 us, measured on torch 2.13, Xeon 2.5 GHz) and the
# raw stream handle read here. Neither synchronizes streams: the stream is given explicitly.
_EXCHANGE = hasattr(torch.Tensor, "__dlpack_c_exchange_api__")
_to_dlpack = torch._C._to_dlpack

if _EXCHANGE:
    def _capsules(tensors):
        return tensors

    def _stream(t: torch.Tensor):
        return None  # _C asks torch for its current stream on t's device
else:
    def _capsules(tensors):
        return [None if t is None else _to_dlpack(t) for t in tensors]

    def _stream(t: torch.Tensor) -> int:
        return torch.cuda.current_stream(t.device).cuda_stream


def _allocator(like: torch.Tensor):
    """The workspace callback _C calls (only when the library asks for workspace): a torch byte
    tensor, so the caching allocator and CUDA graph capture see every byte."""
    return lambda nbytes: _to_dlpack(torch.empty(nbytes, dtype=torch.uint8, device=like.device))


# The ABI names mask and bias "mask"/"bias"; users know them as attn_mask/attn_bias.
_PUBLIC_NAMES = {"mask:": "attn_mask:", "bias:": "attn_bias:"}


def _public_error(exc: Exception) -> Exception:
    msg = str(exc)
    for abi, public in _PUBLIC_NAMES.items():
        if msg.startswith(abi):
            return type(exc)(public + msg[len(abi):])
    return exc


def _call(entry, *args) -> None:
    """Calls a _C entry; the library validates every argument (ValueError naming it, renamed here to
    the public name)."""
    try:
        entry(*args)
    except ValueError as exc:
        raise _public_error(exc) from None


def plan_bytes(mask, seqlen_q: int, seqlen_k: int) -> int:
    """Bytes of the tile plan the forward writes for a mask of this shape (0 without a mask): int32
    rows of (key tiles + 2) per (mask batch, mask head, 128-row query tile; one for a per-key mask),
    as src/sm80/tile_plan.h lays them out. The library checks the size it is given, and
    tests/test_backward_cuda.py checks this formula against _C.fwd_plan_size."""
    if mask is None:
        return 0
    Bm, Hm, Qm, _ = mask.shape
    q_tiles = 1 if Qm == 1 else -(-seqlen_q // 128)
    return Bm * Hm * q_tiles * (-(-seqlen_k // 64) + 2) * 4


def fwd(q, k, v, mask, bias, out, lse, scale: float, causal: bool, softcap: float, plan=None) -> None:
    """Writes out (B,Q,H,D) and lse (B,H,Q) fp32, and with a mask the tile plan into `plan` (a byte
    tensor of >= plan_bytes, or None: the plan then lives in the workspace and is dropped). Raises
    NotImplementedError for missing kernels."""
    args = (*_capsules((q, k, v, mask, bias, out, lse)), _allocator(q), scale, softcap, causal, _stream(q))
    _call(_C.fwd, *args, *(() if plan is None else _capsules((plan,))))


def bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias,
        scale: float, causal: bool, softcap: float, deterministic: bool, plan=None) -> None:
    """Writes dq, dk, dv and (when given) dbias in the bias's own shape. `plan`: the forward's plan
    for these same inputs, or None (the backward builds it again from the mask)."""
    tensors = (dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias)
    args = (*_capsules(tensors), _allocator(q), scale, softcap, causal, deterministic, _stream(q))
    _call(_C.bwd, *args, *(() if plan is None else _capsules((plan,))))


def varlen_fwd(q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q: int,
               max_seqlen_k: int, block_table, scale: float, causal: bool, softcap: float) -> None:
    """Packed sequences: q (total_q,H,D), k/v (total_k,H_kv,D) or paged; lse (H,total_q) fp32."""
    tensors = (q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, block_table)
    _call(_C.varlen_fwd, *_capsules(tensors), max_seqlen_q, max_seqlen_k, scale, softcap, causal, _allocator(q),
          _stream(q))


def varlen_bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, cu_seqlens_q, cu_seqlens_k,
               max_seqlen_q: int, max_seqlen_k: int, block_table, scale: float, causal: bool,
               softcap: float, deterministic: bool) -> None:
    """Gradients of varlen_fwd; with block_table, dk/dv are written in k/v's paged layout."""
    tensors = (dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, cu_seqlens_q, cu_seqlens_k, block_table)
    _call(_C.varlen_bwd, *_capsules(tensors), max_seqlen_q, max_seqlen_k, scale, softcap, causal, deterministic,
          _allocator(q), _stream(q))
