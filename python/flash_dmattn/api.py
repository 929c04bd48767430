# The public attention functions: check and normalize every argument, then call one torch.library op.
# flash_dmattn_func(...) -> here -> ops.py (flash_dmattn::fwd / varlen_fwd) -> reference or CUDA.
# Invariant: what reaches an op is valid, has no expanded (stride-0, size>1) mask/bias axis, and every
# error raised here names the argument at fault.
"""Flash dynamic-mask attention: ``softmax(scale * q k^T + bias, masked) v``.

Shapes (``B`` batch, ``Q``/``K`` query/key lengths, ``H`` query heads, ``H_kv`` key/value heads,
``D`` head dim)::

    q               (B, Q, H, D)
    k, v            (B, K, H_kv, D)        H % H_kv == 0; query head h reads kv head h // (H // H_kv)
    attn_mask       (B|1, H|H_kv|1, Q|1, K|1)
    attn_bias       (B|1, H|H_kv|1, Q|1, K|1)
    out             (B, Q, H, D)           in q's dtype
    lse             (B, H, Q)              float32 (float64 for float64 inputs), natural log

Each mask/bias axis is either full or 1 (broadcast without copying); a head axis of ``H_kv`` is
shared by the query heads of a kv group. Axes expanded with ``.expand()`` (stride 0) are read as
size 1, so an expanded tensor costs only the memory it really has.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from . import ops
from .reference import broadcast_shape_ok

__all__ = [
    "flash_dmattn_func",
    "flash_dmattn_qkvpacked_func",
    "flash_dmattn_kvpacked_func",
    "flash_dmattn_varlen_func",
]

# What the CUDA kernels take; the reference (CPU, and the "reference" backend) also takes fp32/fp64.
KERNEL_DTYPES = (torch.float16, torch.bfloat16)
REFERENCE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
KERNEL_MAX_HEAD_DIM = 256
KERNEL_HEAD_DIM_MULTIPLE = 8


class Normalized(NamedTuple):
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Optional[Tensor]
    bias: Optional[Tensor]
    scale: float
    causal: bool
    softcap: float
    deterministic: bool


# ---------------------------------------------------------------------------------------------
# Scalar arguments


def _flag(value, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool or None, got {type(value).__name__} {value!r}")
    return value


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def _scale(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return _real(scale, "scale")


def _softcap(softcap) -> float:
    if softcap is None:
        return 0.0
    value = _real(softcap, "softcap")
    if value < 0.0:
        raise ValueError(f"softcap: must be >= 0 (0 or None turns it off), got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Tensor arguments


def _tensor(t, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def _rank(t: Tensor, name: str, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-D tensor {layout}, got shape {tuple(t.shape)}")


def _same_device(t: Tensor, name: str, q: Tensor, q_name: str) -> None:
    if t.device != q.device:
        raise ValueError(f"{name}: on device {t.device}, but {q_name} is on {q.device}")


def _last_dim_contiguous(t: Tensor, name: str) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: the last dimension must be contiguous (stride 1), got strides "
            f"{tuple(t.stride())}; call .contiguous() first"
        )


def _check_qkv(q: Tensor, k: Tensor, v: Tensor, names: tuple[str, str, str], kernel: bool) -> None:
    """dtype, device, head and stride checks shared by the dense and varlen entry points.

    Ranks are checked by the callers; the last two axes are (heads, head_dim) in every layout.
    """
    qn, kn, vn = names
    allowed = KERNEL_DTYPES if kernel else REFERENCE_DTYPES
    if q.dtype not in allowed:
        where = "CUDA kernels take" if kernel else "supported dtypes are"
        raise TypeError(f"{qn}: dtype {q.dtype} is not supported; {where} "
                        f"{', '.join(str(d) for d in allowed)}")
    for t, n in ((k, kn), (v, vn)):
        if t.dtype != q.dtype:
            raise TypeError(f"{n}: dtype {t.dtype} differs from {qn} dtype {q.dtype}")
        _same_device(t, n, q, qn)
    H, D = q.shape[-2], q.shape[-1]
    H_kv = k.shape[-2]
    if H == 0:
        raise ValueError(f"{qn}: has 0 heads (shape {tuple(q.shape)})")
    if D == 0:
        raise ValueError(f"{qn}: has head dim 0 (shape {tuple(q.shape)})")
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(
            f"{kn}: the number of query heads ({qn}: {H}) must be a multiple of the number of "
            f"key/value heads ({kn}: {H_kv})"
        )
    if k.shape[-1] != D:
        raise ValueError(f"{kn}: head dim {k.shape[-1]} differs from {qn} head dim {D}")
    if v.shape != k.shape:
        raise ValueError(f"{vn}: shape {tuple(v.shape)} differs from {kn} shape {tuple(k.shape)}")
    if kernel and (D > KERNEL_MAX_HEAD_DIM or D % KERNEL_HEAD_DIM_MULTIPLE != 0):
        raise ValueError(
            f"{qn}: head dim {D} is not supported by the CUDA kernels (it must be a multiple of "
            f"{KERNEL_HEAD_DIM_MULTIPLE} and at most {KERNEL_MAX_HEAD_DIM})"
        )
    for t, n in ((q, qn), (k, kn), (v, vn)):
        _last_dim_contiguous(t, n)


class _CollapseExpanded(torch.autograd.Function):
    """A view reading expanded axes (stride 0, size > 1) as size 1, without a copy.

    torch's own as_strided backward would build a storage-sized index tensor for such an input
    (the full O(Q*K) it is meant to avoid). Here the gradient of the size-1 view, divided by the
    number of positions it stands for, is expanded back: the autograd step that made the expanded
    tensor sums those positions again, so its source gets exactly the view's gradient.
    """

    @staticmethod
    def forward(ctx, t: Tensor, size: tuple[int, ...], copies: int) -> Tensor:
        ctx.shape, ctx.copies = tuple(t.shape), copies
        return t.as_strided(size, t.stride())

    @staticmethod
    def backward(ctx, grad: Tensor):
        return (grad / ctx.copies).expand(ctx.shape), None, None


def _collapse_expanded(t: Tensor) -> Tensor:
    size, copies = [], 1
    for n, st in zip(t.shape, t.stride()):
        expanded = st == 0 and n > 1
        size.append(1 if expanded else n)
        copies *= n if expanded else 1
    if copies == 1:
        return t
    if t.requires_grad and torch.is_grad_enabled():
        return _CollapseExpanded.apply(t, tuple(size), copies)
    return t.as_strided(size, t.stride())


def _mask_and_bias(mask, bias, q: Tensor, q_name: str, B: int, H: int, H_kv: int, Q: int, K: int):
    """Shape, dtype, device and stride checks for attn_mask/attn_bias; expanded axes collapsed.

    A mask of bool or q's dtype passes as is; any other dtype becomes ``mask != 0`` (bool).
    The mask is detached: it selects scores and has no gradient.
    """
    if mask is not None:
        mask = _tensor(mask, "attn_mask")
        broadcast_shape_ok(mask, "attn_mask", B, H, H_kv, Q, K)
        _same_device(mask, "attn_mask", q, q_name)
        mask = _collapse_expanded(mask.detach())
        if mask.dtype not in (torch.bool, q.dtype):
            mask = mask != 0
        _last_dim_contiguous(mask, "attn_mask")
    if bias is not None:
        bias = _tensor(bias, "attn_bias")
        broadcast_shape_ok(bias, "attn_bias", B, H, H_kv, Q, K)
        _same_device(bias, "attn_bias", q, q_name)
        if bias.dtype != q.dtype:
            raise TypeError(f"attn_bias: dtype {bias.dtype} differs from {q_name} dtype {q.dtype}; "
                            f"pass attn_bias.to({q.dtype})")
        bias = _collapse_expanded(bias)
        _last_dim_contiguous(bias, "attn_bias")
    return mask, bias


def normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, *,
              names: tuple[str, str, str] = ("q", "k", "v"), kernel: bool) -> Normalized:
    """Check the dense-layout arguments and apply the defaults.

    ``kernel`` adds the CUDA kernels' limits (fp16/bf16, head dim a multiple of 8 and <= 256).
    Used by the public functions and by the flex and reference backends.
    """
    qn, kn, vn = names
    q, k, v = _tensor(q, qn), _tensor(k, kn), _tensor(v, vn)
    _rank(q, qn, 4, "(batch, seqlen_q, num_heads, head_dim)")
    _rank(k, kn, 4, "(batch, seqlen_k, num_kv_heads, head_dim)")
    _rank(v, vn, 4, "(batch, seqlen_k, num_kv_heads, head_dim)")
    _check_qkv(q, k, v, names, kernel)
    B, Q, H, D = q.shape
    K, H_kv = k.shape[1], k.shape[2]
    if k.shape[0] != B:
        raise ValueError(f"{kn}: batch size {k.shape[0]} differs from {qn} batch size {B}")
    mask, bias = _mask_and_bias(attn_mask, attn_bias, q, qn, B, H, H_kv, Q, K)
    return Normalized(q, k, v, mask, bias, _scale(scale, D), _flag(is_causal, "is_causal"),
                      _softcap(softcap), _flag(deterministic, "deterministic"))


def _is_kernel_path(q) -> bool:
    return isinstance(q, Tensor) and q.device.type == "cuda"


# ---------------------------------------------------------------------------------------------
# Public functions


def flash_dmattn_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    attn_bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    is_causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    deterministic: Optional[bool] = None,
    return_lse: bool = False,
):
    """Attention with a dynamic keep-mask and a trainable additive bias.

    Args:
        q: (B, Q, H, D) queries. On CUDA: float16 or bfloat16, D a multiple of 8 and <= 256.
            On CPU (the pure-PyTorch reference): float16, bfloat16, float32 or float64, any D.
        k, v: (B, K, H_kv, D), q's dtype and device; H % H_kv == 0 (GQA/MQA when H_kv < H).
            Every input's last dimension must be contiguous (stride 1).
        attn_mask: keep-mask, shape (B|1, H|H_kv|1, Q|1, K|1). bool (True = keep) or q's
            dtype (kept where != 0, i.e. 1.0 keep / 0.0 drop); any other dtype is converted with
            ``attn_mask != 0``. It gets no gradient. None keeps every key.
        attn_bias: added to the scores, same broadcast shapes as the mask, q's dtype. Its
            gradient comes back in its own shape (summed over the broadcast axes).
        scale: score scale; None means 1 / sqrt(D). Must be finite.
        is_causal: None or False: no causal mask. True: query i sees key j iff j <= i + K - Q
            (aligned bottom-right). For Q = 2, K = 5 (k = kept)::

                query 0:  k k k k .
                query 1:  k k k k k

        softcap: c > 0 replaces ``scale * q.k`` by ``c * tanh(scale * q.k / c)`` (before the
            bias is added). None or 0 turns it off. Must be finite and >= 0.
        deterministic: make the backward bitwise reproducible (CUDA; the CPU path always is).
        return_lse: also return the log-sum-exp of each row's kept scores.

    Returns:
        out (B, Q, H, D) in q's dtype, or ``(out, lse)`` with lse (B, H, Q) float32 (float64 for
        float64 inputs) when ``return_lse``. A row with no kept key (mask, causal, or K == 0) has
        out = 0 and lse = -inf. B == 0 or Q == 0 gives empty results of these shapes. lse is
        not differentiable.

    Example::

        q, k, v = (torch.randn(2, 1024, 8, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        keep = torch.rand(2, 1, 1024, 1024, device="cuda") < 0.1   # one mask for all heads
        out = flash_dmattn_func(q, k, v, attn_mask=keep, is_causal=True)

    Raises:
        TypeError / ValueError naming the argument for invalid inputs. On CUDA tensors:
        RuntimeError when the CUDA backend is not built, NotImplementedError (a RuntimeError)
        naming what is missing when it is built but has no kernel for the call or the device;
        it never falls back to the reference.
    """
    want_lse = _flag(return_lse, "return_lse")
    if _eager_cuda(q, k, v):
        args = _eager_cuda_args(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic)
        if _needs_grad(q, k, v, attn_bias):
            out, lse = ops.EagerCudaAttention.apply(*args)
        else:
            out, lse = ops.cuda_fwd(*args, keep_plan=False)
        return (out, lse) if want_lse else out
    a = normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic,
                  kernel=_is_kernel_path(q))
    out, lse, _ = ops.fwd(a.q, a.k, a.v, a.mask, a.bias, a.scale, a.causal, a.softcap, a.deterministic)
    return (out, lse) if want_lse else out


# ---------------------------------------------------------------------------------------------
# The eager path on CUDA tensors: outside torch.compile, tracing modes and functorch transforms, a
# forward goes straight to the op's CUDA implementation (no autograd needed) or through
# ops.EagerCudaAttention, a plain autograd.Function over the same implementations. The dispatcher
# and the registered autograd cost ~25 us a call without grad and ~80 us with it on a 2.5 GHz Xeon
# (Python kernels are boxed through C++ and back), more than everything else in the call;
# libdmattn validates every argument itself (errors name it), so only what the library cannot see
# (defaults, expanded axes, mask dtype conversion) is done here.


def _eager_cuda(q, k, v) -> bool:
    return (
        type(q) is Tensor and type(k) is Tensor and type(v) is Tensor and q.is_cuda
        and not torch.compiler.is_compiling()
        and torch._C._len_torch_dispatch_stack() == 0
        and torch._C._functorch.peek_interpreter_stack() is None
    )


def _needs_grad(q, k, v, bias) -> bool:
    return torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                        or (bias is not None and bias.requires_grad))


def _collapse_for_kernel(t: Optional[Tensor], name: str) -> Optional[Tensor]:
    if t is None:
        return None
    if type(t) is not Tensor:
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return _collapse_expanded(t) if 0 in t.stride() else t


def _eager_cuda_args(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic):
    """The fwd op's arguments (q, k, v, mask, bias, scale, causal, softcap, deterministic)."""
    # The mask selects scores and gets no gradient.
    mask = _collapse_for_kernel(attn_mask.detach() if type(attn_mask) is Tensor else attn_mask, "attn_mask")
    if mask is not None and mask.dtype is not torch.bool and mask.dtype is not q.dtype:
        mask = mask != 0
    bias = _collapse_for_kernel(attn_bias, "attn_bias")
    scale = q.shape[-1] ** -0.5 if scale is None else _real(scale, "scale")
    return (q, k, v, mask, bias, scale, _flag(is_causal, "is_causal"), _softcap(softcap),
            _flag(deterministic, "deterministic"))


def flash_dmattn_qkvpacked_func(
    qkv: Tensor,
    attn_mask: Optional[Tensor] = None,
    attn_bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    is_causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    deterministic: Optional[bool] = None,
    return_lse: bool = False,
):
    """``flash_dmattn_func`` on packed ``qkv`` (B, L, 3, H, D): q, k and v share H and L.

    The three views are taken without a copy and the gradient comes back as one (B, L, 3, H, D)
    tensor. The other arguments and the result are those of ``flash_dmattn_func`` with Q = K = L.

    Example::

        qkv = torch.randn(2, 512, 3, 8, 64, device="cuda", dtype=torch.bfloat16)
        out = flash_dmattn_qkvpacked_func(qkv, is_causal=True)   # (2, 512, 8, 64)
    """
    qkv = _tensor(qkv, "qkv")
    _rank(qkv, "qkv", 5, "(batch, seqlen, 3, num_heads, head_dim)")
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv: dimension 2 must have size 3 (q, k, v), got shape {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    a = normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic,
                  names=("qkv", "qkv", "qkv"), kernel=_is_kernel_path(qkv))
    want_lse = _flag(return_lse, "return_lse")
    out, lse, _ = ops.fwd(a.q, a.k, a.v, a.mask, a.bias, a.scale, a.causal, a.softcap, a.deterministic)
    return (out, lse) if want_lse else out


def flash_dmattn_kvpacked_func(
    q: Tensor,
    kv: Tensor,
    attn_mask: Optional[Tensor] = None,
    attn_bias: Optional[Tensor] = None,
    scale: Optional[float] = None,
    is_causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    deterministic: Optional[bool] = None,
    return_lse: bool = False,
):
    """``flash_dmattn_func`` with packed ``kv`` (B, K, 2, H_kv, D); q is (B, Q, H, D).

    k and v are views of kv (no copy); their gradient comes back as one tensor shaped like kv.

    Example::

        q = torch.randn(2, 16, 8, 64, device="cuda", dtype=torch.bfloat16)
        kv = torch.randn(2, 4096, 2, 2, 64, device="cuda", dtype=torch.bfloat16)   # GQA, H_kv = 2
        out = flash_dmattn_kvpacked_func(q, kv, is_causal=True)
    """
    kv = _tensor(kv, "kv")
    _rank(kv, "kv", 5, "(batch, seqlen_k, 2, num_kv_heads, head_dim)")
    if kv.shape[2] != 2:
        raise ValueError(f"kv: dimension 2 must have size 2 (k, v), got shape {tuple(kv.shape)}")
    k, v = kv.unbind(2)
    a = normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic,
                  names=("q", "kv", "kv"), kernel=_is_kernel_path(q))
    want_lse = _flag(return_lse, "return_lse")
    out, lse, _ = ops.fwd(a.q, a.k, a.v, a.mask, a.bias, a.scale, a.causal, a.softcap, a.deterministic)
    return (out, lse) if want_lse else out


# ---------------------------------------------------------------------------------------------
# Variable-length sequences


def _values_checkable(t: Tensor) -> bool:
    """Whether cu_seqlens/block_table values may be read: not while tracing or capturing a graph."""
    if torch.compiler.is_compiling():
        return False
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def _cu_seqlens(t, name: str, q: Tensor) -> Tensor:
    if t is None:
        raise ValueError(f"{name}: is required, an int32 tensor (batch + 1,) of cumulative lengths")
    t = _tensor(t, name)
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: dtype must be torch.int32, got {t.dtype}")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name}: expected a 1-D tensor (batch + 1,), got shape {tuple(t.shape)}")
    _same_device(t, name, q, "q")
    return t


def _max_seqlen(value, name: str, lengths: Optional[Tensor]) -> int:
    if value is None:
        if lengths is None:
            raise ValueError(f"{name}: is required under torch.compile and CUDA graph capture")
        return int(lengths.max()) if lengths.numel() else 0
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def _check_cu_values(cu: Tensor, name: str, total: Optional[int], total_name: str) -> Tensor:
    """Host copy of cu checked: starts at 0, non-decreasing, ends at ``total``. Returns lengths."""
    cu = cu.detach().to("cpu", torch.int64)
    lengths = cu[1:] - cu[:-1]
    if cu[0] != 0:
        raise ValueError(f"{name}: must start at 0, got {cu[0].item()}")
    if (lengths < 0).any():
        raise ValueError(f"{name}: must be non-decreasing, got {cu.tolist()}")
    if total is not None and cu[-1] != total:
        raise ValueError(f"{name}: ends at {cu[-1].item()} but {total_name} has {total} tokens")
    return lengths


def flash_dmattn_varlen_func(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Optional[Tensor] = None,
    attn_bias: Optional[Tensor] = None,
    cu_seqlens_q: Optional[Tensor] = None,
    cu_seqlens_k: Optional[Tensor] = None,
    max_seqlen_q: Optional[int] = None,
    max_seqlen_k: Optional[int] = None,
    scale: Optional[float] = None,
    is_causal: Optional[bool] = None,
    softcap: Optional[float] = None,
    deterministic: Optional[bool] = None,
    block_table: Optional[Tensor] = None,
    return_lse: bool = False,
):
    """Attention over a batch of packed sequences of different lengths (no padding).

    Shapes, with sequence b's queries at rows ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``::

        q               (total_q, H, D)
        k, v            (total_k, H_kv, D)                  or, with block_table (paged KV):
                        (num_blocks, page_size, H_kv, D)
        cu_seqlens_q/k  (B + 1,) int32, 0 first, non-decreasing; cu_seqlens_q[-1] == total_q
                        and, without block_table, cu_seqlens_k[-1] == total_k
        attn_mask/bias  (B|1, H|H_kv|1, max_seqlen_q|1, max_seqlen_k|1): sequence b reads the
                        top-left (len_q_b, len_k_b) corner of its slice
        block_table     (B, max_blocks_per_seq) int32: key j of sequence b is row
                        j % page_size of page block_table[b, j // page_size]
        out             (total_q, H, D);  lse (H, total_q) float32 (float64 for float64 inputs)

    Causal alignment is bottom-right per sequence (query i sees key j iff j <= i + len_k - len_q).
    A zero-length key sequence gives its queries out = 0 and lse = -inf. Other arguments are
    those of ``flash_dmattn_func``. ``max_seqlen_q``/``max_seqlen_k`` None are computed from the
    cu_seqlens (one device-to-host copy; pass them under torch.compile or CUDA graph capture).
    cu_seqlens and block_table values are checked eagerly (one small device-to-host copy),
    except while compiling or capturing a CUDA graph, where they are trusted.

    block_table (paged KV) is experimental; gradients flow into k and v in their paged layout.

    Example::

        cu = torch.tensor([0, 512, 1536, 2304], dtype=torch.int32, device="cuda")  # 512, 1024, 768
        q, k, v = (torch.randn(2304, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        out = flash_dmattn_varlen_func(q=q, k=k, v=v, cu_seqlens_q=cu, cu_seqlens_k=cu, is_causal=True)
    """
    q, k, v = _tensor(q, "q"), _tensor(k, "k"), _tensor(v, "v")
    paged = block_table is not None
    _rank(q, "q", 3, "(total_q, num_heads, head_dim)")
    if paged:
        kv_layout = "(num_blocks, page_size, num_kv_heads, head_dim) with block_table"
        _rank(k, "k", 4, kv_layout)
        _rank(v, "v", 4, kv_layout)
    else:
        _rank(k, "k", 3, "(total_k, num_kv_heads, head_dim)")
        _rank(v, "v", 3, "(total_k, num_kv_heads, head_dim)")
    _check_qkv(q, k, v, ("q", "k", "v"), kernel=_is_kernel_path(q))
    total_q, H, D = q.shape
    H_kv = k.shape[-2]

    cu_q = _cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q)
    cu_k = _cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q)
    if cu_k.numel() != cu_q.numel():
        raise ValueError(f"cu_seqlens_k: has {cu_k.numel()} entries but cu_seqlens_q has "
                         f"{cu_q.numel()} (both are batch + 1)")
    B = cu_q.numel() - 1
    if paged:
        block_table = _tensor(block_table, "block_table")
        if block_table.dtype != torch.int32:
            raise TypeError(f"block_table: dtype must be torch.int32, got {block_table.dtype}")
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table: expected shape (batch={B}, max_blocks_per_seq), got "
                             f"{tuple(block_table.shape)}")
        _same_device(block_table, "block_table", q, "q")
        if k.shape[1] == 0:
            raise ValueError(f"k: page_size is 0 (shape {tuple(k.shape)})")

    lengths_q = lengths_k = None
    if _values_checkable(q):
        lengths_q = _check_cu_values(cu_q, "cu_seqlens_q", total_q, "q")
        lengths_k = _check_cu_values(cu_k, "cu_seqlens_k", None if paged else k.shape[0], "k")
    max_q = _max_seqlen(max_seqlen_q, "max_seqlen_q", lengths_q)
    max_k = _max_seqlen(max_seqlen_k, "max_seqlen_k", lengths_k)
    if lengths_q is not None:
        for lengths, mx, name in ((lengths_q, max_q, "max_seqlen_q"), (lengths_k, max_k, "max_seqlen_k")):
            if lengths.numel() and int(lengths.max()) > mx:
                raise ValueError(f"{name}: {mx} is less than the longest sequence ({int(lengths.max())})")
    if paged:
        num_blocks, page_size = k.shape[0], k.shape[1]
        capacity = block_table.shape[1] * page_size
        if max_k > capacity:
            raise ValueError(f"block_table: {block_table.shape[1]} pages of {page_size} hold "
                             f"{capacity} keys, fewer than max_seqlen_k = {max_k}")
        if lengths_k is not None and B > 0:
            pages_used = (lengths_k + page_size - 1) // page_size
            used = torch.arange(block_table.shape[1]) < pages_used[:, None]
            ids = block_table.detach().cpu()[used]
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_blocks):
                raise ValueError(f"block_table: page ids must lie in [0, {num_blocks}) where "
                                 f"used, got values in [{int(ids.min())}, {int(ids.max())}]")

    mask, bias = _mask_and_bias(attn_mask, attn_bias, q, "q", B, H, H_kv, max_q, max_k)
    want_lse = _flag(return_lse, "return_lse")
    out, lse = ops.varlen_fwd(
        q, k, v, mask, bias, cu_q, cu_k, max_q, max_k, block_table, _scale(scale, D),
        _flag(is_causal, "is_causal"), _softcap(softcap), _flag(deterministic, "deterministic"),
    )
    return (out, lse) if want_lse else out
