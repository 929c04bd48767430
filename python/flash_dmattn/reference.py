# Pure-PyTorch attention with a keep-mask and an additive bias: the CPU implementation behind the
# flash_dmattn torch.library ops, and the oracle every backend is tested against.
# Invariant: queries go in chunks, so no (B, H, Q, K) temporary exists unless an input is already
# that large; a row with nothing kept gives out = 0 and lse = -inf, never NaN.
"""Reference attention forward and backward.

Layouts: ``q`` is ``(B, Q, H, D)``; ``k`` and ``v`` are ``(B, K, H_kv, D)`` with ``H % H_kv == 0``;
query head ``h`` reads kv head ``h // (H // H_kv)``.  ``mask`` and ``bias`` are 4-D and each axis is
either full or 1: ``(B|1, H|H_kv|1, Q|1, K|1)``.  A head axis of ``H_kv`` shares one row among the
query heads of a kv group.  Broadcast axes may arrive with stride 0; they are never expanded.

Scores: ``s = scale * q.k + bias``, or with ``softcap = c > 0``: ``s = c * tanh(scale * q.k / c) + bias``
(the cap bounds the q.k term only).  Key ``j`` is kept for query ``i`` when the mask keeps it (bool
True, or a float != 0, documented as 1.0 keep / 0.0 drop) and, if ``causal``, ``j <= i + K - Q``:
the diagonal is aligned bottom-right, so with ``Q=2, K=4``::

    query 0: k k k .
    query 1: k k k k

``out[i] = softmax(s[i, kept]) @ v[kept]`` and ``lse[i] = logsumexp(s[i, kept])``.  A row with nothing
kept (mask, causal, or every kept score -inf) gives ``out = 0`` and ``lse = -inf``.  NaN in a kept
score (from the bias or q/k) makes its row NaN; a NaN bias under a dropped key has no effect.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .arguments import broadcast_shape_ok

__all__ = ["attention_forward", "attention_backward"]

# One query chunk's score tensor holds at most this many elements (B * H * chunk * K).
_CHUNK_ELEMENTS = 1 << 26

_NEG_INF = float("-inf")


def _check_inputs(q, k, v, mask, bias, softcap, chunk_size) -> tuple[int, int, int, int, int, int]:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if t.dim() != 4:
            raise ValueError(f"{name}: expected a 4-D tensor (B, seqlen, heads, head_dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name}: dtype {t.dtype} is not a floating dtype")
    B, Q, H, D = q.shape
    _, K, H_kv, _ = k.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"key: shape {tuple(k.shape)} does not match query {tuple(q.shape)} in batch or head_dim")
    if H_kv == 0 or H % H_kv != 0:
        raise ValueError(f"key: {H_kv} kv heads do not divide the {H} query heads")
    if v.shape != k.shape:
        raise ValueError(f"value: shape {tuple(v.shape)} differs from key {tuple(k.shape)}")
    for name, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name}: dtype {t.dtype} differs from query dtype {q.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name}: device {t.device} differs from query device {q.device}")
    if mask is not None:
        broadcast_shape_ok(mask, "attn_mask", B, H, H_kv, Q, K)
        if mask.dtype != torch.bool and not mask.is_floating_point():
            raise ValueError(
                f"attn_mask: dtype {mask.dtype} is not supported; use bool (True = keep) "
                "or a floating dtype (1.0 = keep, 0.0 = drop)"
            )
        if mask.device != q.device:
            raise ValueError(f"attn_mask: device {mask.device} differs from query device {q.device}")
    if bias is not None:
        broadcast_shape_ok(bias, "attn_bias", B, H, H_kv, Q, K)
        if not bias.is_floating_point():
            raise ValueError(f"attn_bias: dtype {bias.dtype} is not a floating dtype")
        if bias.device != q.device:
            raise ValueError(f"attn_bias: device {bias.device} differs from query device {q.device}")
    if not softcap >= 0.0:
        raise ValueError(f"softcap: must be >= 0 (0 disables it), got {softcap}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: must be >= 1 or None, got {chunk_size}")
    return B, Q, K, H, H_kv, D


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk(chunk_size: int | None, B: int, H: int, K: int) -> int:
    if chunk_size is not None:
        return chunk_size
    return max(1, _CHUNK_ELEMENTS // max(1, B * H * K))


def _grouped(t: Tensor | None, H: int, H_kv: int) -> Tensor | None:
    """(b, H|H_kv|1, q, k) -> (b, H_kv|1, G|1, q, k): query head n * G + g reads [:, n, g]."""
    if t is None:
        return None
    if t.shape[1] == H:
        return t.unflatten(1, (H_kv, H // H_kv))
    return t.unsqueeze(2)  # one row per kv group (H_kv), or one for all heads (1)


def _rows(t: Tensor, q0: int, q1: int) -> Tensor:
    """The query rows [q0, q1) of a grouped mask/bias view; a size-1 query axis stays as is."""
    return t if t.shape[-2] == 1 else t[..., q0:q1, :]


def _keep(mask_g, causal, q0, q1, Q, K, device) -> Tensor | None:
    """Which keys each query of the chunk keeps, broadcastable to (B, H_kv, G, q1-q0, K); None = all."""
    keep = None
    if mask_g is not None:
        m = _rows(mask_g, q0, q1)
        keep = m if m.dtype == torch.bool else m != 0
    if causal:
        i = torch.arange(q0, q1, device=device).unsqueeze(-1)
        j = torch.arange(K, device=device)
        allowed = j <= i + (K - Q)  # (q1-q0, K), bottom-right aligned
        keep = allowed if keep is None else keep & allowed
    return keep


def _scores(q_c, k_t, bias_g, keep, q0, q1, scale, softcap, cdt) -> tuple[Tensor, Tensor | None]:
    """Masked scores (B, H_kv, G, Qc, K) of one query chunk, and tanh(scale*qk/c) when capped."""
    B, N, G, Qc, D = q_c.shape
    s = torch.matmul(q_c.reshape(B, N, G * Qc, D), k_t).view(B, N, G, Qc, k_t.shape[-1]) * scale
    t = None
    if softcap > 0.0:
        t = torch.tanh(s / softcap)
        s = t * softcap
    if bias_g is not None:
        s = s + _rows(bias_g, q0, q1).to(cdt)
    if keep is not None:
        s = torch.where(keep, s, _NEG_INF)
    return s, t


def _exp_rows(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """exp(s - rowmax), the row max and the row sum; a row with nothing kept gives 0, 0, 0."""
    m = s.amax(dim=-1, keepdim=True)
    # A row with nothing kept has max -inf; shifting by 0 instead keeps exp(-inf) = 0, not NaN.
    m = m.masked_fill(m == _NEG_INF, 0.0)
    p = torch.exp(s - m)
    return p, m, p.sum(dim=-1, keepdim=True)  # the sum is >= 1 wherever something is kept


def _softmax_rows(s: Tensor) -> Tensor:
    """softmax over the last axis of masked scores; a row with nothing kept is all 0."""
    p, _, denom = _exp_rows(s)
    return p / denom.masked_fill(denom == 0, 1.0)


def _to_grouped_rows(x: Tensor, H_kv: int, cdt) -> Tensor:
    """(B, L, H, D) -> contiguous (B, H_kv, G, L, D) in the compute dtype."""
    return x.to(cdt).permute(0, 2, 1, 3).unflatten(1, (H_kv, x.shape[2] // H_kv)).contiguous()


def _from_grouped_rows(x: Tensor) -> Tensor:
    """(B, H_kv, G, L, D) -> (B, L, H, D)."""
    return x.flatten(1, 2).permute(0, 2, 1, 3)


def attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    scale: float,
    causal: bool = False,
    softcap: float = 0.0,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Attention output and log-sum-exp.

    Returns ``out`` (B, Q, H, D) in q's dtype and ``lse`` (B, H, Q) in float32 (float64 for float64
    inputs), natural log.  Computed in float32 (float64 for float64 inputs), ``chunk_size`` queries
    at a time (default: as many as keep one chunk's scores under 64M elements).
    """
    B, Q, K, H, H_kv, D = _check_inputs(q, k, v, mask, bias, softcap, chunk_size)
    cdt = _compute_dtype(q.dtype)
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Q), dtype=cdt, device=q.device)
    if K == 0:
        out.zero_()
        lse.fill_(_NEG_INF)
        return out, lse
    G = H // H_kv
    q_g = _to_grouped_rows(q, H_kv, cdt)  # (B, H_kv, G, Q, D)
    k_t = k.to(cdt).permute(0, 2, 3, 1)  # (B, H_kv, D, K)
    v_n = v.to(cdt).permute(0, 2, 1, 3)  # (B, H_kv, K, D)
    mask_g, bias_g = _grouped(mask, H, H_kv), _grouped(bias, H, H_kv)
    lse_g = lse.view(B, H_kv, G, Q)
    step = _chunk(chunk_size, B, H, K)
    for q0 in range(0, Q, step):
        q1 = min(Q, q0 + step)
        keep = _keep(mask_g, causal, q0, q1, Q, K, q.device)
        s, _ = _scores(q_g[:, :, :, q0:q1], k_t, bias_g, keep, q0, q1, scale, softcap, cdt)
        p, m, denom = _exp_rows(s)
        o = torch.matmul(p.view(B, H_kv, G * (q1 - q0), K), v_n).view(B, H_kv, G, q1 - q0, D)
        o = o / denom.masked_fill(denom == 0, 1.0)  # empty rows: 0 / 1 = 0 exactly
        out[:, q0:q1] = _from_grouped_rows(o).to(q.dtype)
        lse_g[..., q0:q1] = (m + torch.log(denom)).squeeze(-1)  # log(0) = -inf for empty rows
    return out, lse


def _reduce_dbias(ds: Tensor, bias_shape, H: int) -> Tensor:
    """Sum dS (B, H_kv, G, Qc, K) over every axis the bias broadcasts: -> (b, h, Qc|1, k)."""
    b, h, q, k = bias_shape
    if k == 1:
        ds = ds.sum(dim=-1, keepdim=True)
    if q == 1:
        ds = ds.sum(dim=-2, keepdim=True)
    if h == H:
        ds = ds.flatten(1, 2)
    elif h == ds.shape[1]:  # one bias row per kv group: sum over the group's query heads
        ds = ds.sum(dim=2)
    else:
        ds = ds.sum(dim=(1, 2)).unsqueeze(1)
    if b == 1:
        ds = ds.sum(dim=0, keepdim=True)
    return ds


def attention_backward(
    dout: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    bias: Tensor | None,
    out: Tensor,
    lse: Tensor,
    *,
    scale: float,
    causal: bool = False,
    softcap: float = 0.0,
    bias_requires_grad: bool = True,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Gradients of ``attention_forward`` from its saved ``out`` and ``lse``.

    Returns ``(dq, dk, dv, dbias)`` in the dtypes of q, k, v and bias.  dk and dv sum over the
    query heads of each kv group.  ``dbias`` has exactly the bias's shape (summed over each
    broadcast axis) and is 0 under dropped keys; it is None when ``bias`` is None or
    ``bias_requires_grad`` is False.

    P is recomputed per query chunk from the chunk's own row max and sum rather than as
    exp(s - lse): each chunk holds whole rows, and when a row's scores sit near finfo.min (a
    finfo.min bias) log(sum) is below the ulp of lse, so exp(s - lse) would give every key weight 1.
    ``lse`` is still taken, and checked, so the signature matches the kernels' backward.
    """
    B, Q, K, H, H_kv, D = _check_inputs(q, k, v, mask, bias, softcap, chunk_size)
    for name, t in (("dout", dout), ("out", out)):
        if t.shape != q.shape:
            raise ValueError(f"{name}: shape {tuple(t.shape)} differs from query {tuple(q.shape)}")
    if lse.shape != (B, H, Q):
        raise ValueError(f"lse: shape {tuple(lse.shape)} is not (B, H, Q) = {(B, H, Q)}")
    cdt = _compute_dtype(q.dtype)
    G = H // H_kv
    want_dbias = bias is not None and bias_requires_grad
    q_g = _to_grouped_rows(q, H_kv, cdt)  # (B, H_kv, G, Q, D)
    do_g = _to_grouped_rows(dout, H_kv, cdt)
    o_g = _to_grouped_rows(out, H_kv, cdt)
    k_n = k.to(cdt).permute(0, 2, 1, 3)  # (B, H_kv, K, D)
    v_n = v.to(cdt).permute(0, 2, 1, 3)
    k_t, v_t = k_n.transpose(-1, -2), v_n.transpose(-1, -2)
    mask_g, bias_g = _grouped(mask, H, H_kv), _grouped(bias, H, H_kv)

    dq = torch.empty((B, Q, H, D), dtype=cdt, device=q.device)
    dk = torch.zeros((B, H_kv, K, D), dtype=cdt, device=q.device)
    dv = torch.zeros((B, H_kv, K, D), dtype=cdt, device=q.device)
    dbias = torch.zeros(bias.shape, dtype=cdt, device=q.device) if want_dbias else None
    if K == 0:
        dq.zero_()
    step = _chunk(chunk_size, B, H, K)
    for q0 in range(0, Q if K else 0, step):
        q1 = min(Q, q0 + step)
        rows = G * (q1 - q0)
        q_c, do_c, o_c = (x[:, :, :, q0:q1] for x in (q_g, do_g, o_g))
        keep = _keep(mask_g, causal, q0, q1, Q, K, q.device)
        s, t = _scores(q_c, k_t, bias_g, keep, q0, q1, scale, softcap, cdt)
        p = _softmax_rows(s)  # (B, H_kv, G, Qc, K); 0 under dropped keys
        do_r = do_c.reshape(B, H_kv, rows, D)
        dv += torch.matmul(p.view(B, H_kv, rows, K).transpose(-1, -2), do_r)
        dp = torch.matmul(do_r, v_t).view(s.shape)
        delta = (do_c * o_c).sum(dim=-1, keepdim=True)
        ds = p * (dp - delta)  # gradient w.r.t. the score, hence w.r.t. the (uncapped) bias term
        if want_dbias:
            part = _reduce_dbias(ds, bias.shape, H)
            if bias.shape[2] == 1:
                dbias += part
            else:
                dbias[:, :, q0:q1] = part
        if t is not None:
            ds = ds * (1.0 - t * t)  # d(c * tanh(x / c)) / dx
        ds_r = ds.view(B, H_kv, rows, K)
        dq_c = (torch.matmul(ds_r, k_n) * scale).view(B, H_kv, G, q1 - q0, D)
        dq[:, q0:q1] = _from_grouped_rows(dq_c)
        dk += torch.matmul(ds_r.transpose(-1, -2), q_c.reshape(B, H_kv, rows, D)) * scale
    return (
        dq.to(q.dtype),
        dk.permute(0, 2, 1, 3).to(k.dtype),
        dv.permute(0, 2, 1, 3).to(v.dtype),
        dbias.to(bias.dtype) if want_dbias else None,
    )
