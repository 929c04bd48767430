# Every argument check of the Python API, in one place: the public functions and the flex and
# reference backends call these before anything runs. The C library (libdmattn) checks the kernels'
# own limits (dtypes, head dims, strides) and names the argument itself, so those are not copied here.
# Invariant: every error raised here starts with the public name of the argument at fault.
"""Argument checks and defaults for the attention functions.

``normalize`` checks a dense call (q, k, v, mask, bias and the options) and applies the defaults;
``eager_kernel_args`` does only the conversions libdmattn cannot see (defaults, expanded axes, mask
dtype), for eager calls that go straight to the library, which validates the tensors itself.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Optional

import torch
from torch import Tensor

__all__ = [
    "Normalized",
    "normalize",
    "eager_kernel_args",
    "broadcast_shape_ok",
    "collapse_expanded",
    "expanded_axes",
    "flag",
]

# The dtypes of the pure-PyTorch path; libdmattn narrows CUDA calls to float16 and bfloat16.
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Normalized(NamedTuple):
    """A checked dense call. ``mask`` is detached, bool or q's dtype, expanded axes read as size 1;
    ``bias`` is the tensor as given (its expanded axes are collapsed where the gradient is handled,
    ops.attention), already checked in its collapsed form."""

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


def flag(value, name: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool or None, got {type(value).__name__} {value!r}")
    return value


def real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a float or None, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def scale_or_default(scale, head_dim: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    return real(scale, "scale")


def softcap_or_off(softcap) -> float:
    if softcap is None:
        return 0.0
    value = real(softcap, "softcap")
    if value < 0.0:
        raise ValueError(f"softcap: must be >= 0 (0 or None turns it off), got {value}")
    return value


# ---------------------------------------------------------------------------------------------
# Tensor arguments


def tensor(t, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def rank(t: Tensor, name: str, n: int, layout: str) -> None:
    if t.dim() != n:
        raise ValueError(f"{name}: expected a {n}-D tensor {layout}, got shape {tuple(t.shape)}")


def same_device(t: Tensor, name: str, q: Tensor, q_name: str) -> None:
    if t.device != q.device:
        raise ValueError(f"{name}: on device {t.device}, but {q_name} is on {q.device}")


def last_dim_contiguous(t: Tensor, name: str) -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(
            f"{name}: the last dimension must be contiguous (stride 1), got strides "
            f"{tuple(t.stride())}; call .contiguous() first"
        )


def broadcast_shape_ok(t: Tensor, name: str, B: int, H: int, H_kv: int, Q: int, K: int) -> None:
    """Raise ValueError naming ``name`` unless ``t`` has shape ``(B|1, H|H_kv|1, Q|1, K|1)``."""
    shape = tuple(t.shape)
    if (
        len(shape) != 4
        or shape[0] not in (B, 1)
        or shape[1] not in (H, H_kv, 1)
        or shape[2] not in (Q, 1)
        or shape[3] not in (K, 1)
    ):
        raise ValueError(
            f"{name}: shape {shape} does not broadcast to (B|1, H|H_kv|1, Q|1, K|1) = "
            f"({B}|1, {H}|{H_kv}|1, {Q}|1, {K}|1)"
        )


def check_qkv(q: Tensor, k: Tensor, v: Tensor, names: tuple[str, str, str]) -> None:
    """dtype, device, head and stride checks shared by the dense and varlen layouts.

    Ranks are checked by the callers; the last two axes are (heads, head_dim) in every layout.
    """
    qn, kn, vn = names
    if q.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{qn}: dtype {q.dtype} is not supported; supported dtypes are "
                        f"{', '.join(str(d) for d in FLOAT_DTYPES)} (CUDA kernels: float16, bfloat16)")
    for t, n in ((k, kn), (v, vn)):
        if t.dtype != q.dtype:
            raise TypeError(f"{n}: dtype {t.dtype} differs from {qn} dtype {q.dtype}")
        same_device(t, n, q, qn)
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
    for t, n in ((q, qn), (k, kn), (v, vn)):
        last_dim_contiguous(t, n)


# ---------------------------------------------------------------------------------------------
# Broadcast (expanded) axes


def expanded_axes(t: Tensor) -> tuple[bool, ...]:
    """Which axes are expanded: stride 0 and size > 1 (read as size 1, never copied)."""
    return tuple(st == 0 and n > 1 for n, st in zip(t.shape, t.stride()))


def collapse_expanded(t: Tensor) -> Tensor:
    """A view of ``t`` whose expanded axes have size 1: the first element of each, by narrow, which
    torch.compile keeps exact (as_strided on an intermediate reads the storage inductor laid out,
    not the view's). Not for autograd: narrow's backward builds a zero tensor of t's full size, so a
    tensor that needs a gradient is collapsed inside ops.Attention (or ops.CollapseExpanded). The
    stride test first keeps the common case (nothing expanded) to one check on the hot path."""
    if 0 not in t.stride():
        return t
    for axis, expanded in enumerate(expanded_axes(t)):
        if expanded:
            t = t.narrow(axis, 0, 1)
    return t


def _mask(mask, q: Tensor, q_name: str, B: int, H: int, H_kv: int, Q: int, K: int) -> Optional[Tensor]:
    """A mask of bool or q's dtype passes as is; any other dtype becomes ``mask != 0`` (bool). The
    mask is detached: it selects scores and has no gradient."""
    if mask is None:
        return None
    mask = tensor(mask, "attn_mask")
    broadcast_shape_ok(mask, "attn_mask", B, H, H_kv, Q, K)
    same_device(mask, "attn_mask", q, q_name)
    mask = collapse_expanded(mask.detach())
    if mask.dtype not in (torch.bool, q.dtype):
        mask = mask != 0
    last_dim_contiguous(mask, "attn_mask")
    return mask


def _bias(bias, q: Tensor, q_name: str, B: int, H: int, H_kv: int, Q: int, K: int) -> Optional[Tensor]:
    if bias is None:
        return None
    bias = tensor(bias, "attn_bias")
    broadcast_shape_ok(bias, "attn_bias", B, H, H_kv, Q, K)
    same_device(bias, "attn_bias", q, q_name)
    if bias.dtype != q.dtype:
        raise TypeError(f"attn_bias: dtype {bias.dtype} differs from {q_name} dtype {q.dtype}; "
                        f"pass attn_bias.to({q.dtype})")
    last_dim_contiguous(collapse_expanded(bias), "attn_bias")
    return bias


def mask_and_bias(mask, bias, q: Tensor, q_name: str, B: int, H: int, H_kv: int, Q: int, K: int):
    return _mask(mask, q, q_name, B, H, H_kv, Q, K), _bias(bias, q, q_name, B, H, H_kv, Q, K)


# ---------------------------------------------------------------------------------------------
# Whole calls


def normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, *,
              names: tuple[str, str, str] = ("q", "k", "v")) -> Normalized:
    """Check a dense-layout call and apply the defaults (see ``Normalized``)."""
    qn, kn, vn = names
    q, k, v = tensor(q, qn), tensor(k, kn), tensor(v, vn)
    rank(q, qn, 4, "(batch, seqlen_q, num_heads, head_dim)")
    rank(k, kn, 4, "(batch, seqlen_k, num_kv_heads, head_dim)")
    rank(v, vn, 4, "(batch, seqlen_k, num_kv_heads, head_dim)")
    check_qkv(q, k, v, names)
    B, Q, H, D = q.shape
    K, H_kv = k.shape[1], k.shape[2]
    if k.shape[0] != B:
        raise ValueError(f"{kn}: batch size {k.shape[0]} differs from {qn} batch size {B}")
    mask, bias = mask_and_bias(attn_mask, attn_bias, q, qn, B, H, H_kv, Q, K)
    return Normalized(q, k, v, mask, bias, scale_or_default(scale, D), flag(is_causal, "is_causal"),
                      softcap_or_off(softcap), flag(deterministic, "deterministic"))


def _kernel_tensor(t, name: str) -> Optional[Tensor]:
    if t is None:
        return None
    if type(t) is not Tensor:
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    return t


def eager_kernel_args(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic) -> Normalized:
    """The conversions libdmattn cannot do, for eager calls that go straight to it (it validates
    every tensor and names the argument): defaults, the mask's expanded axes and dtype. The bias is
    passed as given, like ``normalize``'s."""
    mask = _kernel_tensor(attn_mask, "attn_mask")
    if mask is not None:
        if mask.requires_grad:  # it selects scores and gets no gradient
            mask = mask.detach()
        mask = collapse_expanded(mask)
        if mask.dtype is not torch.bool and mask.dtype is not q.dtype:
            mask = mask != 0
    bias = _kernel_tensor(attn_bias, "attn_bias")
    scale = q.shape[-1] ** -0.5 if scale is None else real(scale, "scale")
    return Normalized(q, k, v, mask, bias, scale, flag(is_causal, "is_causal"), softcap_or_off(softcap),
                      flag(deterministic, "deterministic"))


# ---------------------------------------------------------------------------------------------
# Variable-length sequences


def values_checkable(t: Tensor) -> bool:
    """Whether cu_seqlens/block_table values may be read: not while tracing or capturing a graph."""
    if torch.compiler.is_compiling():
        return False
    return not (t.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def cu_seqlens(t, name: str, q: Tensor) -> Tensor:
    if t is None:
        raise ValueError(f"{name}: is required, an int32 tensor (batch + 1,) of cumulative lengths")
    t = tensor(t, name)
    if t.dtype != torch.int32:
        raise TypeError(f"{name}: dtype must be torch.int32, got {t.dtype}")
    if t.dim() != 1 or t.numel() < 1:
        raise ValueError(f"{name}: expected a 1-D tensor (batch + 1,), got shape {tuple(t.shape)}")
    same_device(t, name, q, "q")
    return t


def max_seqlen(value, name: str, lengths: Optional[Tensor]) -> int:
    if value is None:
        if lengths is None:
            raise ValueError(f"{name}: is required under torch.compile and CUDA graph capture")
        return int(lengths.max()) if lengths.numel() else 0
    if isinstance(value, bool) or not isinstance(value, (int, torch.SymInt)):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def cu_lengths(cu: Tensor, name: str, total: Optional[int], total_name: str) -> Tensor:
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


class NormalizedVarlen(NamedTuple):
    q: Tensor
    k: Tensor
    v: Tensor
    mask: Optional[Tensor]
    bias: Optional[Tensor]
    cu_seqlens_q: Tensor
    cu_seqlens_k: Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    block_table: Optional[Tensor]
    scale: float
    causal: bool
    softcap: float
    deterministic: bool


def normalize_varlen(q, k, v, attn_mask, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                     scale, is_causal, softcap, deterministic, block_table) -> NormalizedVarlen:
    """Check a packed (varlen) call, paged or not, and apply the defaults."""
    q, k, v = tensor(q, "q"), tensor(k, "k"), tensor(v, "v")
    paged = block_table is not None
    rank(q, "q", 3, "(total_q, num_heads, head_dim)")
    if paged:
        kv_layout = "(num_blocks, page_size, num_kv_heads, head_dim) with block_table"
        rank(k, "k", 4, kv_layout)
        rank(v, "v", 4, kv_layout)
    else:
        rank(k, "k", 3, "(total_k, num_kv_heads, head_dim)")
        rank(v, "v", 3, "(total_k, num_kv_heads, head_dim)")
    check_qkv(q, k, v, ("q", "k", "v"))
    total_q, H, D = q.shape
    H_kv = k.shape[-2]

    cu_q = cu_seqlens(cu_seqlens_q, "cu_seqlens_q", q)
    cu_k = cu_seqlens(cu_seqlens_k, "cu_seqlens_k", q)
    if cu_k.numel() != cu_q.numel():
        raise ValueError(f"cu_seqlens_k: has {cu_k.numel()} entries but cu_seqlens_q has "
                         f"{cu_q.numel()} (both are batch + 1)")
    B = cu_q.numel() - 1
    if paged:
        block_table = tensor(block_table, "block_table")
        if block_table.dtype != torch.int32:
            raise TypeError(f"block_table: dtype must be torch.int32, got {block_table.dtype}")
        if block_table.dim() != 2 or block_table.shape[0] != B:
            raise ValueError(f"block_table: expected shape (batch={B}, max_blocks_per_seq), got "
                             f"{tuple(block_table.shape)}")
        same_device(block_table, "block_table", q, "q")
        if k.shape[1] == 0:
            raise ValueError(f"k: page_size is 0 (shape {tuple(k.shape)})")

    lengths_q = lengths_k = None
    if values_checkable(q):
        lengths_q = cu_lengths(cu_q, "cu_seqlens_q", total_q, "q")
        lengths_k = cu_lengths(cu_k, "cu_seqlens_k", None if paged else k.shape[0], "k")
    max_q = max_seqlen(max_seqlen_q, "max_seqlen_q", lengths_q)
    max_k = max_seqlen(max_seqlen_k, "max_seqlen_k", lengths_k)
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

    mask, bias = mask_and_bias(attn_mask, attn_bias, q, "q", B, H, H_kv, max_q, max_k)
    return NormalizedVarlen(q, k, v, mask, bias, cu_q, cu_k, max_q, max_k, block_table,
                            scale_or_default(scale, D), flag(is_causal, "is_causal"), softcap_or_off(softcap),
                            flag(deterministic, "deterministic"))
