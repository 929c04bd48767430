# The public attention functions: arguments checked once (arguments.py), then one path to the kernels.
# flash_dmattn_func(...) -> here -> ops.attention (autograd: ops.Attention) -> the CUDA kernels
# (libdmattn) on CUDA tensors, reference.py on CPU tensors.
# Invariant: every error names the public argument at fault (the packed functions' included).
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

from typing import Optional

from torch import Tensor

from . import arguments, ops

__all__ = [
    "flash_dmattn_func",
    "flash_dmattn_qkvpacked_func",
    "flash_dmattn_kvpacked_func",
    "flash_dmattn_varlen_func",
]


def attention(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, return_lse,
              names: tuple[str, str, str] = ("q", "k", "v"), backend: str = "library"):
    """The dense functions' one path. Eager calls on plain CUDA tensors skip the Python checks that
    libdmattn repeats (it validates every tensor and names the argument); the rest are checked here."""
    want_lse = arguments.flag(return_lse, "return_lse")
    if backend == "library" and ops.plain_eager_cuda(q, k, v):
        a = arguments.eager_kernel_args(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic)
        try:
            out, lse = ops.attention(*a, backend="direct")
        except (TypeError, ValueError) as exc:
            raise _public_names(exc, names) from None
    else:
        a = arguments.normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic,
                                names=names)
        out, lse = ops.attention(*a, backend=backend)
    return (out, lse) if want_lse else out


def _public_names(exc: Exception, names: tuple[str, str, str]) -> Exception:
    """libdmattn's error about q, k or v, named for the argument they came from (qkv, kv)."""
    msg = str(exc)
    for abi, public in zip(("q:", "k:", "v:"), names):
        if msg.startswith(abi) and abi != public + ":":
            return type(exc)(public + ":" + msg[len(abi):])
    return exc


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
    return attention(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, return_lse)


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
    qkv = arguments.tensor(qkv, "qkv")
    arguments.rank(qkv, "qkv", 5, "(batch, seqlen, 3, num_heads, head_dim)")
    if qkv.shape[2] != 3:
        raise ValueError(f"qkv: dimension 2 must have size 3 (q, k, v), got shape {tuple(qkv.shape)}")
    q, k, v = qkv.unbind(2)
    return attention(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, return_lse,
                     names=("qkv", "qkv", "qkv"))


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
    kv = arguments.tensor(kv, "kv")
    arguments.rank(kv, "kv", 5, "(batch, seqlen_k, 2, num_kv_heads, head_dim)")
    if kv.shape[2] != 2:
        raise ValueError(f"kv: dimension 2 must have size 2 (k, v), got shape {tuple(kv.shape)}")
    k, v = kv.unbind(2)
    return attention(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic, return_lse,
                     names=("q", "kv", "kv"))


# ---------------------------------------------------------------------------------------------
# Variable-length sequences


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
    a = arguments.normalize_varlen(q, k, v, attn_mask, attn_bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                   max_seqlen_k, scale, is_causal, softcap, deterministic, block_table)
    want_lse = arguments.flag(return_lse, "return_lse")
    out, lse = ops.varlen_attention(*a)
    return (out, lse) if want_lse else out
