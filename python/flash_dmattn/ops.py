# The torch.library ops behind the public API: flash_dmattn::{fwd, bwd, varlen_fwd, varlen_bwd}.
# api.py (argument checks) -> these ops -> CPU: reference.py, CUDA: backends/cuda.py -> _C.
# Invariant: CUDA tensors run our kernels or raise; they never fall back to the reference here.
"""torch.library ops: one schema, a fake impl, a CPU impl and a CUDA impl per op.

Outputs: fwd ``(out, lse, plan)``, bwd ``(dq, dk, dv, dbias)``. The ops take already-normalized arguments
(api.py checks them). ``out`` is contiguous in q's dtype; ``lse`` is float32 (float64 for float64
inputs): (B, H, Q) for fwd, (H, total_q) for varlen_fwd. ``dbias`` has the bias's shape, or is an
empty tensor of shape (0,) when there is no bias or ``bias_requires_grad`` is False (an op cannot
return ``Tensor?``). ``deterministic`` only affects the backward; fwd takes it so autograd can hand
it on. ``lse`` is not differentiable. ``plan`` (uint8, 1-D) is the schedule of the mask's kept tiles
that the CUDA forward writes for the backward to walk (bwd's last argument), so the backward does
not read the mask again; it is empty (shape (0,)) without a mask and on CPU.

Registered with ``torch.library.Library`` (define + impl) rather than ``custom_op``: custom_op wraps
each kernel in a dynamo-disable that imports torch._dynamo on the first call (seconds).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from . import reference
from .backends import cuda as _cuda

_NEG_INF = float("-inf")

_lib = torch.library.Library("flash_dmattn", "DEF")


def _lse_dtype(q: Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _no_dbias(q: Tensor) -> Tensor:
    return q.new_empty((0,))


def _dbias_like(bias: Optional[Tensor], bias_requires_grad: bool, q: Tensor) -> Tensor:
    if bias is None or not bias_requires_grad:
        return _no_dbias(q)
    return torch.empty(bias.shape, dtype=bias.dtype, device=bias.device)


def _no_plan(q: Tensor) -> Tensor:
    return q.new_empty((0,), dtype=torch.uint8)


def _plan_like(q: Tensor, k: Tensor, mask: Optional[Tensor]) -> Tensor:
    """The fwd op's plan output: sized for the mask on CUDA, else empty."""
    if mask is None or q.device.type != "cuda" or q.numel() == 0 or k.shape[1] == 0:
        return _no_plan(q)
    return q.new_empty((_cuda.plan_bytes(mask, q.shape[1], k.shape[1]),), dtype=torch.uint8)


def _empty_fwd(q: Tensor, k: Tensor, lse_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """B, Q or K == 0: nothing to compute. Without keys every row is fully masked: 0 and -inf."""
    B, Q, H, _ = q.shape
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    return out, torch.full((B, H, Q), _NEG_INF, dtype=lse_dtype, device=q.device)


def _zero_grads(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], bias_requires_grad: bool):
    """Gradients when nothing attends (B, Q or K == 0): all zero."""
    dq, dk, dv = (torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    return dq, dk, dv, _dbias_like(bias, bias_requires_grad, q).zero_()


def _last_dim_contiguous(t: Tensor) -> Tensor:
    # Gradients like out.sum()'s arrive expanded (all strides 0); kernels need stride(-1) == 1.
    return t if t.stride(-1) == 1 else t.contiguous()


def _require_cuda_backend(op: str, q: Tensor) -> None:
    """Raise unless libdmattn serves q's device: never fall back to the reference. A kernel missing
    for this particular problem is reported by the library itself (NotImplementedError naming it)."""
    reason = _cuda.library_unavailable_reason(q.get_device())
    if reason is not None:
        # Built but unable to serve this device (not for this arch): a missing implementation.
        # Not built at all: an installation problem.
        error = NotImplementedError if _cuda.is_built() else RuntimeError
        raise error(
            f"flash_dmattn::{op}: the inputs are CUDA tensors but the CUDA backend cannot run: "
            f"{reason}. (The pure-PyTorch path is flash_dmattn_func_auto(backend='reference').)"
        )


# ---------------------------------------------------------------------------------------------
# flash_dmattn::fwd


_lib.define(
    "fwd(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? bias, float scale, bool causal, "
    "float softcap, bool deterministic) -> (Tensor out, Tensor lse, Tensor plan)"
)
fwd = torch.ops.flash_dmattn.fwd.default  # the handle the package calls


@torch.library.impl("flash_dmattn::fwd", "cpu", lib=_lib)
def _fwd_cpu(q, k, v, mask, bias, scale, causal, softcap, deterministic):
    if q.numel() == 0 or k.shape[1] == 0:
        return *_empty_fwd(q, k, _lse_dtype(q)), _no_plan(q)
    out, lse = reference.attention_forward(
        q, k, v, mask, bias, scale=scale, causal=causal, softcap=softcap
    )
    return out.contiguous(), lse.contiguous(), _no_plan(q)


@torch.library.register_fake("flash_dmattn::fwd", lib=_lib)
def _fwd_fake(q, k, v, mask, bias, scale, causal, softcap, deterministic):
    B, Q, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, Q), dtype=_lse_dtype(q)), _plan_like(q, k, mask)


def _fwd_cuda(q, k, v, mask, bias, scale, causal, softcap, deterministic, keep_plan=True):
    """The op's CUDA impl: (out, lse, plan). api.py's eager inference path, which has no backward
    to hand a plan to, calls it with keep_plan=False and gets (out, lse)."""
    # On the eager inference path every line here is per-call host time: new_empty reuses q's
    # dtype and device without building them again.
    _require_cuda_backend("fwd", q)
    B, Q, H, D = q.shape
    if B == 0 or Q == 0 or H == 0 or k.shape[1] == 0:
        out, lse = _empty_fwd(q, k, torch.float32)
        plan = _no_plan(q)
    else:
        out = q.new_empty((B, Q, H, D))
        lse = q.new_empty((B, H, Q), dtype=torch.float32)
        plan = _plan_like(q, k, mask) if keep_plan else None
        _cuda.fwd(q, k, v, mask, bias, out, lse, scale, causal, softcap,
                  plan if plan is not None and plan.numel() else None)
    return (out, lse, plan) if keep_plan else (out, lse)


# Registered by call, not as a decorator: the decorator form returns None on some torch versions
# (2.11), and api.py's eager inference path calls this function directly.
torch.library.impl("flash_dmattn::fwd", "cuda", _fwd_cuda, lib=_lib)
cuda_fwd = _fwd_cuda


# ---------------------------------------------------------------------------------------------
# flash_dmattn::bwd


_lib.define(
    "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? bias, Tensor out, "
    "Tensor lse, float scale, bool causal, float softcap, bool deterministic, "
    "bool bias_requires_grad, Tensor? plan=None) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dbias)"
)
bwd = torch.ops.flash_dmattn.bwd.default  # the handle the package calls


@torch.library.impl("flash_dmattn::bwd", "cpu", lib=_lib)
def _bwd_cpu(dout, q, k, v, mask, bias, out, lse, scale, causal, softcap, deterministic,
             bias_requires_grad, plan=None):
    if q.numel() == 0 or k.shape[1] == 0:
        return _zero_grads(q, k, v, bias, bias_requires_grad)
    dq, dk, dv, dbias = reference.attention_backward(
        dout, q, k, v, mask, bias, out, lse,
        scale=scale, causal=causal, softcap=softcap, bias_requires_grad=bias_requires_grad,
    )
    dbias = _no_dbias(q) if dbias is None else dbias.contiguous()
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbias


@torch.library.register_fake("flash_dmattn::bwd", lib=_lib)
def _bwd_fake(dout, q, k, v, mask, bias, out, lse, scale, causal, softcap, deterministic,
              bias_requires_grad, plan=None):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            _dbias_like(bias, bias_requires_grad, q))


def _bwd_cuda(dout, q, k, v, mask, bias, out, lse, scale, causal, softcap, deterministic,
              bias_requires_grad, plan=None):
    _require_cuda_backend("bwd", q)
    if q.numel() == 0 or k.shape[1] == 0:
        return _zero_grads(q, k, v, bias, bias_requires_grad)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dbias = _dbias_like(bias, bias_requires_grad, q)
    _cuda.bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv,
              dbias if bias is not None and bias_requires_grad else None,
              scale, causal, softcap, deterministic,
              plan if mask is not None and plan is not None and plan.numel() else None)
    return dq, dk, dv, dbias


torch.library.impl("flash_dmattn::bwd", "cuda", _bwd_cuda, lib=_lib)  # by call: see fwd's


def _save_for_backward(ctx, inputs, out, lse, plan):
    q, k, v, mask, bias, scale, causal, softcap, deterministic = inputs
    ctx.save_for_backward(q, k, v, mask, bias, out, lse, plan)
    ctx.args = (scale, causal, softcap, deterministic)


def _gradients(ctx, dout, bwd_impl):
    """The fwd op's input gradients from what _save_for_backward kept, through bwd_impl (the bwd op,
    or its CUDA impl called directly)."""
    q, k, v, mask, bias, out, lse, plan = ctx.saved_tensors
    scale, causal, softcap, deterministic = ctx.args
    want_dbias = bias is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias = bwd_impl(_last_dim_contiguous(dout), q, k, v, mask, bias, out, lse,
                                 scale, causal, softcap, deterministic, want_dbias, plan)
    return dq, dk, dv, None, (dbias if want_dbias else None), None, None, None, None


def _fwd_setup_context(ctx, inputs, output):
    out, lse, plan = output
    ctx.mark_non_differentiable(lse, plan)
    _save_for_backward(ctx, inputs, out, lse, plan)


def _fwd_backward(ctx, dout, _dlse, _dplan):
    return _gradients(ctx, dout, bwd)


torch.library.register_autograd("flash_dmattn::fwd", _fwd_backward,
                                setup_context=_fwd_setup_context, lib=_lib)


class EagerCudaAttention(torch.autograd.Function):
    """The fwd op and its registered autograd for eager calls on plain CUDA tensors (api.py picks
    them): the same CUDA impls, saved tensors and gradients, from a plain autograd.Function. The
    registered autograd boxes each call through the dispatcher and its own Python autograd wrapper,
    which cost ~80 us of host time per forward (bench_overhead.py) and more per backward: more than
    a sparse call's GPU time. torch.compile, tracing modes and functorch keep the op.
    apply(q, k, v, mask, bias, scale, causal, softcap, deterministic) -> (out, lse)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, scale, causal, softcap, deterministic):
        inputs = (q, k, v, mask, bias, scale, causal, softcap, deterministic)
        out, lse, plan = _fwd_cuda(*inputs)
        ctx.mark_non_differentiable(lse)
        # lse gets no gradient: without this autograd would fill a zero tensor for it every backward
        # (a launch and ~60 us of host time on the GPU machine).
        ctx.set_materialize_grads(False)
        _save_for_backward(ctx, inputs, out, lse, plan)
        return out, lse

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dlse):
        if dout is None:  # nothing downstream of out needs a gradient
            return (None,) * 9
        return _gradients(ctx, dout, _bwd_cuda)


# ---------------------------------------------------------------------------------------------
# Variable-length sequences on the CPU: one reference call per sequence.


def _seq_slice(t: Optional[Tensor], b: int, lq: int, lk: int) -> Optional[Tensor]:
    """Sequence b's part of a (B|1, h, max_seqlen_q|1, max_seqlen_k|1) mask or bias."""
    if t is None:
        return None
    if t.shape[0] > 1:
        t = t[b:b + 1]
    if t.shape[2] > 1:
        t = t[:, :, :lq]
    if t.shape[3] > 1:
        t = t[:, :, :, :lk]
    return t


def _key_rows(b: int, k0: int, k1: int, page_size: int,
              block_table: Optional[Tensor]) -> Tensor | slice:
    """Rows of the (flattened) key tensor holding sequence b's keys, in order."""
    if block_table is None:
        return slice(k0, k1)
    j = torch.arange(k1 - k0)
    pages = block_table[b].long()[j // page_size]
    return pages * page_size + j % page_size


def _flat_keys(t: Tensor, paged: bool) -> Tensor:
    """Keys as (rows, H_kv, D): paged (num_blocks, page_size, H_kv, D) tensors flatten their pages."""
    return t.reshape(-1, *t.shape[2:]) if paged else t


def _varlen_segments(cu_seqlens_q: Tensor, cu_seqlens_k: Tensor):
    """(b, q0, q1, k0, k1) for each sequence: its query rows and (logical) key positions."""
    cq = cu_seqlens_q.tolist()
    ck = cu_seqlens_k.tolist()
    for b in range(len(cq) - 1):
        yield b, cq[b], cq[b + 1], ck[b], ck[b + 1]


_lib.define(
    "varlen_fwd(Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? bias, Tensor cu_seqlens_q, "
    "Tensor cu_seqlens_k, SymInt max_seqlen_q, SymInt max_seqlen_k, Tensor? block_table, "
    "float scale, bool causal, float softcap, bool deterministic) -> (Tensor out, Tensor lse)"
)
varlen_fwd = torch.ops.flash_dmattn.varlen_fwd.default  # the handle the package calls


@torch.library.impl("flash_dmattn::varlen_fwd", "cpu", lib=_lib)
def _varlen_fwd_cpu(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                    block_table, scale, causal, softcap, deterministic):
    paged = block_table is not None
    page_size = k.shape[1] if paged else 0
    kf, vf = _flat_keys(k, paged), _flat_keys(v, paged)
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.full((q.shape[1], q.shape[0]), _NEG_INF, dtype=_lse_dtype(q), device=q.device)
    for b, q0, q1, k0, k1 in _varlen_segments(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:  # no queries, or no keys (rows fully masked: 0 and -inf)
            continue
        rows = _key_rows(b, k0, k1, page_size, block_table)
        o, l = reference.attention_forward(
            q[None, q0:q1], kf[rows][None], vf[rows][None],
            _seq_slice(mask, b, q1 - q0, k1 - k0), _seq_slice(bias, b, q1 - q0, k1 - k0),
            scale=scale, causal=causal, softcap=softcap,
        )
        out[q0:q1] = o[0]
        lse[:, q0:q1] = l[0]
    return out, lse


@torch.library.register_fake("flash_dmattn::varlen_fwd", lib=_lib)
def _varlen_fwd_fake(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     block_table, scale, causal, softcap, deterministic):
    total_q, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((H, total_q), dtype=_lse_dtype(q))


@torch.library.impl("flash_dmattn::varlen_fwd", "cuda", lib=_lib)
def _varlen_fwd_cuda(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     block_table, scale, causal, softcap, deterministic):
    _require_cuda_backend("varlen_fwd", q)
    total_q, H, _ = q.shape
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((H, total_q), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    if k.numel() == 0 or max_seqlen_k == 0:  # no keys anywhere: every row is fully masked
        return out.zero_(), lse.fill_(_NEG_INF)
    _cuda.varlen_fwd(q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                     max_seqlen_k, block_table, scale, causal, softcap)
    return out, lse


_lib.define(
    "varlen_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? bias, Tensor out, "
    "Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, SymInt max_seqlen_q, "
    "SymInt max_seqlen_k, Tensor? block_table, float scale, bool causal, float softcap, "
    "bool deterministic, bool bias_requires_grad) "
    "-> (Tensor dq, Tensor dk, Tensor dv, Tensor dbias)"
)
varlen_bwd = torch.ops.flash_dmattn.varlen_bwd.default  # the handle the package calls


@torch.library.impl("flash_dmattn::varlen_bwd", "cpu", lib=_lib)
def _varlen_bwd_cpu(dout, q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                    max_seqlen_k, block_table, scale, causal, softcap, deterministic,
                    bias_requires_grad):
    paged = block_table is not None
    page_size = k.shape[1] if paged else 0
    kf, vf = _flat_keys(k, paged), _flat_keys(v, paged)
    want_dbias = bias is not None and bias_requires_grad
    dq = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    # dk/dv/dbias gather contributions from several sequences (shared pages, a batch-broadcast
    # bias): accumulate them in the compute dtype and round once.
    acc = _lse_dtype(q)
    dkf = torch.zeros(kf.shape, dtype=acc, device=k.device)
    dvf = torch.zeros(vf.shape, dtype=acc, device=v.device)
    dbias = torch.zeros(bias.shape, dtype=acc, device=bias.device) if want_dbias else None
    for b, q0, q1, k0, k1 in _varlen_segments(cu_seqlens_q, cu_seqlens_k):
        if q1 == q0 or k1 == k0:
            continue
        lq, lk = q1 - q0, k1 - k0
        rows = _key_rows(b, k0, k1, page_size, block_table)
        bias_b = _seq_slice(bias, b, lq, lk)
        dq_b, dk_b, dv_b, dbias_b = reference.attention_backward(
            dout[None, q0:q1], q[None, q0:q1], kf[rows][None], vf[rows][None],
            _seq_slice(mask, b, lq, lk), bias_b, out[None, q0:q1], lse[None, :, q0:q1],
            scale=scale, causal=causal, softcap=softcap, bias_requires_grad=want_dbias,
        )
        dq[q0:q1] = dq_b[0]
        if paged:
            dkf.index_add_(0, rows, dk_b[0].to(acc))
            dvf.index_add_(0, rows, dv_b[0].to(acc))
        else:
            dkf[rows] += dk_b[0]
            dvf[rows] += dv_b[0]
        if want_dbias:
            _seq_slice(dbias, b, lq, lk).add_(dbias_b)
    return (
        dq,
        dkf.to(k.dtype).reshape(k.shape),
        dvf.to(v.dtype).reshape(v.shape),
        dbias.to(bias.dtype) if want_dbias else _no_dbias(q),
    )


@torch.library.register_fake("flash_dmattn::varlen_bwd", lib=_lib)
def _varlen_bwd_fake(dout, q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                     max_seqlen_k, block_table, scale, causal, softcap, deterministic,
                     bias_requires_grad):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            _dbias_like(bias, bias_requires_grad, q))


@torch.library.impl("flash_dmattn::varlen_bwd", "cuda", lib=_lib)
def _varlen_bwd_cuda(dout, q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                     max_seqlen_k, block_table, scale, causal, softcap, deterministic,
                     bias_requires_grad):
    _require_cuda_backend("varlen_bwd", q)
    dq = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = torch.empty(v.shape, dtype=v.dtype, device=v.device)
    dbias = _dbias_like(bias, bias_requires_grad, q)
    if q.numel() == 0 or k.numel() == 0 or max_seqlen_k == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dbias.zero_()
    _cuda.varlen_bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv,
                     dbias if bias is not None and bias_requires_grad else None,
                     cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                     scale, causal, softcap, deterministic)
    return dq, dk, dv, dbias


def _varlen_setup_context(ctx, inputs, output):
    (q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
     scale, causal, softcap, deterministic) = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, block_table)
    ctx.args = (max_seqlen_q, max_seqlen_k, scale, causal, softcap, deterministic)


def _varlen_backward(ctx, dout, _dlse):
    q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, block_table = ctx.saved_tensors
    max_seqlen_q, max_seqlen_k, scale, causal, softcap, deterministic = ctx.args
    want_dbias = bias is not None and ctx.needs_input_grad[4]
    dq, dk, dv, dbias = varlen_bwd(
        _last_dim_contiguous(dout), q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k,
        max_seqlen_q, max_seqlen_k, block_table, scale, causal, softcap, deterministic, want_dbias,
    )
    return (dq, dk, dv, None, (dbias if want_dbias else None)) + (None,) * 9


torch.library.register_autograd("flash_dmattn::varlen_fwd", _varlen_backward,
                                setup_context=_varlen_setup_context, lib=_lib)

