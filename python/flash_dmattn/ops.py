# The torch.library ops behind the public API, and the one autograd function over them.
# api.py (arguments.py checks) -> attention() -> Attention (autograd) -> an implementation:
#   the ops flash_dmattn::{fwd, bwd} (CPU: reference.py, CUDA: library.py -> _C), or on eager calls
#   with plain CUDA tensors the ops' CUDA impls called directly (no dispatcher), or reference.py.
# Invariant: CUDA tensors run our kernels or raise; they never fall back to the reference here.
"""torch.library ops (a schema, a fake impl, a CPU impl and a CUDA impl each) and ``Attention``.

Op outputs: fwd ``(out, lse, plan)``, bwd ``(dq, dk, dv, dbias)``. The ops take already-checked
arguments (arguments.py). ``out`` is contiguous in q's dtype; ``lse`` is float32 (float64 for
float64 inputs): (B, H, Q) for fwd, (H, total_q) for varlen_fwd. ``dbias`` has the bias's shape, or
is an empty tensor of shape (0,) when there is no bias or ``bias_requires_grad`` is False (an op
cannot return ``Tensor?``). ``deterministic`` only affects the backward. ``plan`` (uint8, 1-D) is
the schedule of the mask's kept tiles that the CUDA forward writes for the backward to walk, so the
backward does not read the mask again; it is empty (shape (0,)) without a mask and on CPU.

Gradients come from one mechanism, the autograd functions ``Attention`` and ``VarlenAttention``
(the ops register no autograd of their own); torch.compile traces them like any autograd.Function.
Which implementation they call is decided per call (``_impls``): eager calls on plain CUDA tensors
skip the dispatcher, which costs tens of microseconds of host time a call (bench_overhead.py).

Registered with ``torch.library.Library`` (define + impl) rather than ``custom_op``: custom_op wraps
each kernel in a dynamo-disable that imports torch._dynamo on the first call (seconds).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import library
from . import reference
from .arguments import collapse_expanded, expanded_axes

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
    return q.new_empty((library.plan_bytes(mask, q.shape[1], k.shape[1]),), dtype=torch.uint8)


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
    reason = library.library_unavailable_reason(q.get_device())
    if reason is not None:
        # Built but unable to serve this device (not for this arch): a missing implementation.
        # Not built at all: an installation problem.
        error = NotImplementedError if library.is_built() else RuntimeError
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


def _fwd_reference(q, k, v, mask, bias, scale, causal, softcap, deterministic):
    """The op's CPU impl: reference.py, on any device (the "reference" backend uses it on CUDA)."""
    if q.numel() == 0 or k.shape[1] == 0:
        return *_empty_fwd(q, k, _lse_dtype(q)), _no_plan(q)
    out, lse = reference.attention_forward(
        q, k, v, mask, bias, scale=scale, causal=causal, softcap=softcap
    )
    return out.contiguous(), lse.contiguous(), _no_plan(q)


torch.library.impl("flash_dmattn::fwd", "cpu", _fwd_reference, lib=_lib)


@torch.library.register_fake("flash_dmattn::fwd", lib=_lib)
def _fwd_fake(q, k, v, mask, bias, scale, causal, softcap, deterministic):
    B, Q, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, Q), dtype=_lse_dtype(q)), _plan_like(q, k, mask)


def _fwd_cuda(q, k, v, mask, bias, scale, causal, softcap, deterministic, keep_plan=True):
    """The op's CUDA impl: (out, lse, plan). An eager call without grad has no backward to hand a
    plan to: attention() calls it with keep_plan=False and gets (out, lse)."""
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
        library.fwd(q, k, v, mask, bias, out, lse, scale, causal, softcap,
                  plan if plan is not None and plan.numel() else None)
    return (out, lse, plan) if keep_plan else (out, lse)


# Registered by call, not as a decorator: the decorator form returns None on some torch versions
# (2.11), and attention() calls this function directly on eager calls.
torch.library.impl("flash_dmattn::fwd", "cuda", _fwd_cuda, lib=_lib)


# ---------------------------------------------------------------------------------------------
# flash_dmattn::bwd


_lib.define(
    "bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor? mask, Tensor? bias, Tensor out, "
    "Tensor lse, float scale, bool causal, float softcap, bool deterministic, "
    "bool bias_requires_grad, Tensor? plan=None) -> (Tensor dq, Tensor dk, Tensor dv, Tensor dbias)"
)
bwd = torch.ops.flash_dmattn.bwd.default  # the handle the package calls


def _bwd_reference(dout, q, k, v, mask, bias, out, lse, scale, causal, softcap, deterministic,
             bias_requires_grad, plan=None):
    if q.numel() == 0 or k.shape[1] == 0:
        return _zero_grads(q, k, v, bias, bias_requires_grad)
    dq, dk, dv, dbias = reference.attention_backward(
        dout, q, k, v, mask, bias, out, lse,
        scale=scale, causal=causal, softcap=softcap, bias_requires_grad=bias_requires_grad,
    )
    dbias = _no_dbias(q) if dbias is None else dbias.contiguous()
    return dq.contiguous(), dk.contiguous(), dv.contiguous(), dbias


torch.library.impl("flash_dmattn::bwd", "cpu", _bwd_reference, lib=_lib)


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
    library.bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv,
              dbias if bias is not None and bias_requires_grad else None,
              scale, causal, softcap, deterministic,
              plan if mask is not None and plan is not None and plan.numel() else None)
    return dq, dk, dv, dbias


torch.library.impl("flash_dmattn::bwd", "cuda", _bwd_cuda, lib=_lib)  # by call: see fwd's


# ---------------------------------------------------------------------------------------------
# Which implementation a call runs, and the autograd function over it


def _private_probe(path: str):
    """A torch-internal callable, or None where this torch has none (then every call takes the
    dispatcher, which is always correct, only slower)."""
    obj = torch._C
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


# Whether a TorchDispatchMode or a functorch transform is active. torch has no public query for
# either; without these probes the eager fast path is off (tests/test_cuda_path.py covers both).
_dispatch_stack_len = _private_probe("_len_torch_dispatch_stack")
_functorch_level = _private_probe("_functorch.peek_interpreter_stack")


def plain_eager() -> bool:
    """True outside torch.compile, dispatch modes (fake tensors, tracing) and functorch transforms:
    the state in which a plain tensor can go straight to libdmattn."""
    if _dispatch_stack_len is None or _functorch_level is None:
        return False
    return not torch.compiler.is_compiling() and _dispatch_stack_len() == 0 and _functorch_level() is None


def plain_eager_cuda(q, k, v) -> bool:
    """q, k, v are plain CUDA tensors (not subclasses) in the plain eager state."""
    return type(q) is Tensor and type(k) is Tensor and type(v) is Tensor and q.is_cuda and plain_eager()


def _impls(backend: str):
    """(forward, backward) with the signatures of the fwd and bwd ops, for a backend: "direct"
    (the CUDA impls, no dispatcher: eager calls on plain CUDA tensors, see plain_eager_cuda),
    "library" (the ops through the dispatcher: CPU reference, CUDA kernels, fake tensors, modes,
    torch.compile) or "reference" (reference.py on any device)."""
    if backend == "direct":
        return _fwd_cuda, _bwd_cuda
    if backend == "reference":
        return _fwd_reference, _bwd_reference
    return fwd, bwd


def _collapse(bias: Optional[Tensor]) -> Optional[Tensor]:
    """The bias with its expanded axes read as size 1 (a view), or None."""
    return None if bias is None else collapse_expanded(bias)


def _grad_of_expanded(dbias: Tensor, bias: Tensor, axes: tuple) -> Tensor:
    """The gradient for ``bias`` from ``dbias``, the gradient of its collapsed view (expanded axes
    read as size 1). Spread evenly over the positions each element stands for: the autograd step
    that expanded ``bias`` sums them back, so its source gets ``dbias`` exactly, and no O(Q*K)
    tensor is built. ``axes`` (plain bools from the forward) says which axes were expanded; their
    sizes are read here, from the saved tensor, so nothing symbolic crosses from forward to backward
    under torch.compile(dynamic=True)."""
    copies = 1
    for expanded, n in zip(axes, bias.shape):
        if expanded:
            copies = copies * n
    return (dbias / copies).expand(bias.shape)


class CollapseExpanded(torch.autograd.Function):
    """``collapse_expanded`` with a gradient, for callers that hand the collapsed view to code that
    differentiates it itself (the flex backend). apply(t) -> the collapsed view."""

    @staticmethod
    def forward(t):
        return collapse_expanded(t)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (t,) = inputs
        ctx.save_for_backward(t)
        ctx.axes = expanded_axes(t)

    @staticmethod
    def backward(ctx, grad):
        (t,) = ctx.saved_tensors
        return _grad_of_expanded(grad, t, ctx.axes)


def collapse_with_grad(t: Optional[Tensor]) -> Optional[Tensor]:
    if t is None or not any(expanded_axes(t)):
        return t
    return CollapseExpanded.apply(t) if _needs_grad(t) else collapse_expanded(t)


def _attention_forward(q, k, v, mask, bias, scale, causal, softcap, deterministic, backend):
    forward, _ = _impls(backend)
    return forward(q, k, v, mask, _collapse(bias), scale, causal, softcap, deterministic)


def _attention_setup(ctx, inputs, output):
    q, k, v, mask, bias, scale, causal, softcap, deterministic, backend = inputs
    out, lse, plan = output
    ctx.mark_non_differentiable(lse, plan)
    if not torch.compiler.is_compiling():
        # lse and plan get no gradient: without this autograd fills zero tensors for them every
        # backward (launches and host time).
        ctx.set_materialize_grads(False)
    ctx.save_for_backward(q, k, v, mask, bias, out, lse, plan)
    ctx.args = (scale, causal, softcap, deterministic, backend)
    ctx.bias_axes = expanded_axes(bias) if bias is not None else ()


def _attention_backward(ctx, dout, _dlse, _dplan):
    if dout is None:  # nothing downstream of out needs a gradient
        return (None,) * 10
    q, k, v, mask, bias, out, lse, plan = ctx.saved_tensors
    scale, causal, softcap, deterministic, backend = ctx.args
    want_dbias = bias is not None and ctx.needs_input_grad[4]
    _, backward = _impls(backend)
    dq, dk, dv, dbias = backward(_last_dim_contiguous(dout), q, k, v, mask, _collapse(bias), out, lse, scale,
                                 causal, softcap, deterministic, want_dbias, plan)
    if want_dbias and any(ctx.bias_axes):
        dbias = _grad_of_expanded(dbias, bias, ctx.bias_axes)
    return dq, dk, dv, None, (dbias if want_dbias else None), None, None, None, None, None


class Attention(torch.autograd.Function):
    """The attention forward and its gradients: one autograd node per call, whatever implementation
    runs (``backend``, see ``_impls``). An expanded bias (stride-0 axes) is read through a
    collapsed view and gets its gradient back in its own shape (``_grad_of_expanded``).
    apply(q, k, v, mask, bias, scale, causal, softcap, deterministic, backend) -> (out, lse, plan).

    Written with ``forward(ctx, ...)``: torch binds the arguments of the setup_context form with
    inspect.signature on every apply (~57 us more a call on the 2-core CPU machine, 24 us of it the
    binding). functorch transforms need that form: they get ``AttentionForTransforms``, the same
    steps."""

    @staticmethod
    def forward(ctx, q, k, v, mask, bias, scale, causal, softcap, deterministic, backend):
        inputs = (q, k, v, mask, bias, scale, causal, softcap, deterministic, backend)
        output = _attention_forward(*inputs)
        _attention_setup(ctx, inputs, output)
        return output

    backward = staticmethod(_attention_backward)


class AttentionForTransforms(torch.autograd.Function):
    """``Attention`` in the setup_context form that torch.func transforms require."""

    forward = staticmethod(_attention_forward)
    setup_context = staticmethod(_attention_setup)
    backward = staticmethod(_attention_backward)


def _autograd_function():
    return Attention if _functorch_level is None or _functorch_level() is None else AttentionForTransforms


def _distinct(*tensors):
    """The tensors, with any that repeats an earlier one (q is k in self-attention, cu_seqlens_q is
    cu_seqlens_k) replaced by a view of it: torch.compile cannot trace an autograd.Function given
    one tensor twice. Eager calls pass through untouched."""
    if not torch.compiler.is_compiling():
        return tensors
    return tuple(t.view_as(t) if t is not None and any(t is s for s in tensors[:i]) else t
                 for i, t in enumerate(tensors))


def _needs_grad(*tensors) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def attention(q, k, v, mask, bias, scale: float, causal: bool, softcap: float, deterministic: bool,
              backend: str = "library") -> tuple[Tensor, Tensor]:
    """(out, lse) for checked arguments (arguments.py) on ``backend`` (``_impls``): through
    ``Attention`` when a gradient is needed, else straight to the implementation."""
    if _needs_grad(q, k, v, bias):
        q, k, v, mask, bias = _distinct(q, k, v, mask, bias)
        out, lse, _ = _autograd_function().apply(q, k, v, mask, bias, scale, causal, softcap, deterministic, backend)
        return out, lse
    forward, _ = _impls(backend)
    bias = _collapse(bias)
    if forward is _fwd_cuda:  # no backward will read a plan: don't keep one
        return _fwd_cuda(q, k, v, mask, bias, scale, causal, softcap, deterministic, keep_plan=False)
    out, lse, _ = forward(q, k, v, mask, bias, scale, causal, softcap, deterministic)
    return out, lse



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
    library.varlen_fwd(q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
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
    library.varlen_bwd(dout, q, k, v, mask, bias, out, lse, dq, dk, dv,
                     dbias if bias is not None and bias_requires_grad else None,
                     cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                     scale, causal, softcap, deterministic)
    return dq, dk, dv, dbias


class VarlenAttention(torch.autograd.Function):
    """``Attention`` for packed sequences, over the varlen ops (no fast path: CUDA has no varlen
    kernel yet). apply(the varlen_fwd op's arguments) -> (out, lse)."""

    @staticmethod
    def forward(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                scale, causal, softcap, deterministic):
        return varlen_fwd(q, k, v, mask, _collapse(bias), cu_seqlens_q,
                          cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table, scale, causal, softcap,
                          deterministic)

    @staticmethod
    def setup_context(ctx, inputs, output):
        (q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
         scale, causal, softcap, deterministic) = inputs
        out, lse = output
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, block_table)
        ctx.args = (max_seqlen_q, max_seqlen_k, scale, causal, softcap, deterministic)
        ctx.bias_axes = expanded_axes(bias) if bias is not None else ()

    @staticmethod
    def backward(ctx, dout, _dlse):
        q, k, v, mask, bias, out, lse, cu_seqlens_q, cu_seqlens_k, block_table = ctx.saved_tensors
        max_seqlen_q, max_seqlen_k, scale, causal, softcap, deterministic = ctx.args
        want_dbias = bias is not None and ctx.needs_input_grad[4]
        collapsed = _collapse(bias)
        dq, dk, dv, dbias = varlen_bwd(
            _last_dim_contiguous(dout), q, k, v, mask, collapsed, out, lse, cu_seqlens_q, cu_seqlens_k,
            max_seqlen_q, max_seqlen_k, block_table, scale, causal, softcap, deterministic, want_dbias,
        )
        if want_dbias and any(ctx.bias_axes):
            dbias = _grad_of_expanded(dbias, bias, ctx.bias_axes)
        return (dq, dk, dv, None, (dbias if want_dbias else None)) + (None,) * 9


def varlen_attention(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, block_table,
                     scale, causal, softcap, deterministic) -> tuple[Tensor, Tensor]:
    """(out, lse) for checked varlen arguments."""
    if _needs_grad(q, k, v, bias):
        q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, block_table = _distinct(
            q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, block_table)
        return VarlenAttention.apply(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                     block_table, scale, causal, softcap, deterministic)
    return VarlenAttention.forward(q, k, v, mask, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                   block_table, scale, causal, softcap, deterministic)
