# FlexAttention backend: our keep-mask, causal rule, bias and softcap as a BlockMask and a score_mod.
# flex_dmattn_func(...) -> arguments.normalize -> torch.nn.attention.flex_attention (compiled on CUDA).
# Invariant: same semantics as reference.py (bottom-right causal, a row with no kept key gives 0).
"""PyTorch FlexAttention backend.

The keep-mask and ``is_causal`` become a ``BlockMask`` whose mask_mod indexes the (broadcast) mask,
so fully masked tiles are skipped; the bias and softcap become a score_mod that reads the captured
bias tensor, so its gradient flows (in the bias's own shape). GQA uses ``enable_gqa``.

On CUDA the call goes through ``torch.compile(flex_attention)`` (a fused kernel). On CPU it runs
eagerly: PyTorch's unfused path, which materializes the (B, H, Q, K) scores, warns once per process,
and (torch 2.13) has no backward for q, k or v: flex_dmattn_func raises NotImplementedError when
they require grad on CPU (a bias gradient alone works). So the registry lists "flex" only where a
CUDA device is visible, while ``FLEX_AVAILABLE`` says only that FlexAttention imports. Building the
BlockMask evaluates the mask_mod on every (b, h, q, k): O(B*H*Q*K) work per call.
``deterministic`` has no effect here.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

try:
    from torch.nn.attention import flex_attention as _flex
    _IMPORT_ERROR = None
except ImportError as exc:  # torch older than 2.5
    _flex = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

__all__ = ["flex_dmattn_func", "import_error", "unavailable_reason"]

_compiled_flex_attention = None


def import_error() -> Optional[str]:
    """None when torch.nn.attention.flex_attention imports (flex_dmattn_func can be called)."""
    if _flex is None:
        return f"torch {torch.__version__} has no usable FlexAttention ({_IMPORT_ERROR})"
    return None


def unavailable_reason() -> Optional[str]:
    """None when flex can serve as a full backend here (forward and backward), else why not.

    That needs a CUDA device: on CPU, torch runs FlexAttention eagerly (unfused) and raises for a
    backward through q, k or v. flex_dmattn_func still runs CPU forwards (inference).
    """
    reason = import_error()
    if reason is None and not torch.cuda.is_available():
        reason = ("no CUDA device: FlexAttention runs only eagerly on CPU, unfused and without a "
                  "backward for q/k/v (flex_dmattn_func still runs CPU inference)")
    return reason


def _flex_attention(device: torch.device):
    global _compiled_flex_attention
    if device.type == "cpu":
        return _flex.flex_attention
    if _compiled_flex_attention is None:
        _compiled_flex_attention = torch.compile(_flex.flex_attention, dynamic=False)
    return _compiled_flex_attention


def _reader(t: Tensor, H: int, H_kv: int):
    """(b, h, q_idx, kv_idx) -> t's entry, for t of shape (B|1, H|H_kv|1, Q|1, K|1)."""
    nb, nh, nq, nk = t.shape
    group = H // H_kv
    per_query_head, per_kv_head = nh == H, nh == H_kv and nh != 1

    def at(b, h, q_idx, kv_idx):
        head = h if per_query_head else (h // group if per_kv_head else 0)
        return t[b if nb > 1 else 0, head, q_idx if nq > 1 else 0, kv_idx if nk > 1 else 0]

    return at


def _block_mask(keep: Optional[Tensor], causal: bool, B, H, H_kv, Q, K, device):
    if keep is None and not causal:
        return None
    offset = K - Q  # bottom-right alignment: query i sees key j iff j <= i + K - Q
    keep_at = _reader(keep, H, H_kv) if keep is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        if keep_at is None:
            return kv_idx <= q_idx + offset
        kept = keep_at(b, h, q_idx, kv_idx)
        return kept & (kv_idx <= q_idx + offset) if causal else kept

    mask_B = B if keep is not None and keep.shape[0] > 1 else None
    mask_H = H if keep is not None and keep.shape[1] > 1 else None
    return _flex.create_block_mask(mask_mod, mask_B, mask_H, Q, K, device=device)


def _score_mod(bias: Optional[Tensor], softcap: float, H: int, H_kv: int):
    if bias is None and softcap == 0.0:
        return None
    bias_at = _reader(bias, H, H_kv) if bias is not None else None

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap > 0.0:
            score = softcap * torch.tanh(score / softcap)  # flex's score is already scale * q.k
        if bias_at is not None:
            score = score + bias_at(b, h, q_idx, kv_idx)
        return score

    return score_mod


def flex_dmattn_func(q, k, v, attn_mask=None, attn_bias=None, scale=None, is_causal=None,
                     softcap=None, deterministic=None, return_lse=False):
    """Attention through PyTorch FlexAttention, with the semantics of ``flash_dmattn_func``.

    q (B, Q, H, D); k, v (B, K, H_kv, D); attn_mask / attn_bias (B|1, H|H_kv|1, Q|1, K|1) with the
    mask bool (True = keep) or kept where != 0; causal aligned bottom-right. Any float dtype and
    device FlexAttention supports (CPU: forward only, see the module notes). Returns out
    (B, Q, H, D), and lse (B, H, Q) with ``return_lse``.
    Empty inputs (B, Q or K == 0) go to the reference backend, which defines them the same way.

    Example::

        out = flex_dmattn_func(q, k, v, attn_mask=keep, attn_bias=bias, is_causal=True)
    """
    from .. import arguments, ops
    from . import reference_dmattn_func

    if _flex is None:
        raise RuntimeError(f"flex_dmattn_func: {import_error()}")
    a = arguments.normalize(q, k, v, attn_mask, attn_bias, scale, is_causal, softcap, deterministic)
    a = a._replace(bias=ops.collapse_with_grad(a.bias))
    if a.q.device.type == "cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (a.q, a.k, a.v)):
            raise NotImplementedError(
                f"flex_dmattn_func: torch {torch.__version__} has no FlexAttention backward on CPU "
                "for q, k or v; use flash_dmattn_func (the CPU reference) to train on CPU"
            )
        # torch refuses CPU inputs that require grad even under no_grad; nothing is recorded here
        a = a._replace(q=a.q.detach(), k=a.k.detach(), v=a.v.detach())
    want_lse = arguments.flag(return_lse, "return_lse")
    B, Q, H, _ = a.q.shape
    K, H_kv = a.k.shape[1], a.k.shape[2]
    if a.q.numel() == 0 or K == 0:
        return reference_dmattn_func(a.q, a.k, a.v, a.mask, a.bias, a.scale, a.causal, a.softcap,
                                     return_lse=want_lse)
    keep = a.mask if a.mask is None or a.mask.dtype == torch.bool else a.mask != 0
    block_mask = _block_mask(keep, a.causal, B, H, H_kv, Q, K, a.q.device)
    score_mod = _score_mod(a.bias, a.softcap, H, H_kv)
    # Our layout is (B, L, H, D); flex takes (B, H, L, D). Transposed views, no copies.
    qt, kt, vt = (t.transpose(1, 2) for t in (a.q, a.k, a.v))
    flex_attention = _flex_attention(a.q.device)
    kwargs = dict(score_mod=score_mod, block_mask=block_mask, scale=a.scale, enable_gqa=H != H_kv)
    if Q > 1 and a.q.device.type == "cuda":
        # torch picks its decoding kernel for short queries; with GQA and 1 < Q < 128 (Q=100, 2 query
        # heads per kv head) inductor finds no valid config for it (NoValidChoicesError, torch 2.11).
        # The general kernel serves every Q > 1; Q = 1 keeps the decoding kernel, which works.
        kwargs["kernel_options"] = {"FORCE_USE_FLEX_ATTENTION": True}
    # Eager flex still traces itself with dynamo; once shapes vary, dynamo turns them dynamic and
    # a captured bias that requires grad then fails to trace (torch 2.13). Keep them static.
    static = (contextlib.nullcontext() if torch.compiler.is_compiling()
              else torch._dynamo.config.patch(automatic_dynamic_shapes=False))
    with static:
        if hasattr(_flex, "AuxRequest"):
            out, aux = flex_attention(qt, kt, vt, return_aux=_flex.AuxRequest(lse=True), **kwargs)
            lse = aux.lse
        else:
            out, lse = flex_attention(qt, kt, vt, return_lse=True, **kwargs)
    out = out.transpose(1, 2)
    return (out, lse.detach()) if want_lse else out
