"""Keep-masks for the sparse benchmarks that really keep the fraction they claim.

A dynamic mask keeps, per query row, the top-w keys by a learned per-key score. Chosen key by key,
the kept keys scatter over every 64-key tile and no kernel can skip anything; so the benchmarks
choose whole 64-key blocks (ranked by their summed score), which is what a block-sparse model
trains. Two forms:

- ``topw_key_blocks``: one keep list per (batch, kv head), shape (B, H_kv, 1, K): the top w/64 blocks
  of the whole sequence. With causal, early rows see fewer than w of them. O(K) to build and to
  schedule.
- ``topw_row_blocks``: per row, the top w/64 blocks among the blocks that row may see (causal), shape
  (B, H_kv, Q, K), as the seed's top-k example does per key. A partly visible diagonal block counts
  as one block with only its visible keys, so a row keeps between w - 63 and w keys.

``kept_pairs`` counts kept (query, key) pairs exactly (after causal), so densities and FLOPs are
measured, not assumed.
"""
from __future__ import annotations

import torch
from torch import Tensor

from flash_dmattn.masks import block_scores, topk_key_blocks

BLOCK = 64


def topw_key_blocks(score: Tensor, w: int, block: int = BLOCK) -> Tensor:
    """score (B, H_kv, K) -> keep (B, H_kv, 1, K) bool: the top ceil(w/block) blocks of the sequence."""
    return topk_key_blocks(score, w, block)


def topw_row_blocks(score: Tensor, w: int, q_len: int, causal: bool = True, block: int = BLOCK) -> Tensor:
    """score (B, H_kv, K) -> keep (B, H_kv, Q, K) bool: per row, the top ceil(w/block) blocks among
    the blocks it may see (all of them without causal; causal aligned bottom-right)."""
    K = score.shape[-1]
    blocks = block_scores(score, block)                                # (B, Hk, nb)
    nb = blocks.shape[-1]
    n = max(1, -(-w // block))
    rank = blocks.argsort(dim=-1, descending=True).argsort(dim=-1)    # 0 = best block
    if not causal:
        keep_block = (rank < n).unsqueeze(-2).expand(*blocks.shape[:-1], q_len, nb)
    else:
        rows = torch.arange(q_len, device=score.device)
        last_block = ((rows + K - q_len).clamp(min=-1)).div(block, rounding_mode="floor")  # (Q,)
        visible = torch.arange(nb, device=score.device)[None, :] <= last_block[:, None]    # (Q, nb)
        # Among the visible blocks, keep those whose rank among visible ones is < n.
        order = blocks.argsort(dim=-1, descending=True)                                      # best first
        vis_sorted = visible[:, None, None, :].expand(q_len, *order.shape).gather(-1, order.expand(q_len, *order.shape))
        keep_sorted = vis_sorted & (vis_sorted.cumsum(-1) <= n)
        keep_block = torch.zeros_like(keep_sorted).scatter(-1, order.expand_as(keep_sorted), keep_sorted)
        keep_block = keep_block.permute(1, 2, 0, 3)                                          # (B, Hk, Q, nb)
    del rank
    keep = keep_block.repeat_interleave(block, dim=-1)[..., :K]
    if causal:
        cols = torch.arange(K, device=score.device)
        rows = torch.arange(q_len, device=score.device)
        keep = keep & (cols[None, :] <= rows[:, None] + K - q_len)
    return keep


def causal_pairs(q_len: int, k_len: int) -> int:
    """(query, key) pairs a causal (bottom-right) mask keeps."""
    first = k_len - q_len + 1  # keys visible to row 0
    return sum(max(0, min(k_len, first + i)) for i in range(q_len))


def kept_pairs(mask: Tensor | None, q_len: int, k_len: int, causal: bool) -> int:
    """Kept (query, key) pairs summed over the mask's own (batch, head) entries, counted exactly.
    A (.., 1, K) mask is counted row by row against the causal limit without building (Q, K)."""
    if mask is None:
        return causal_pairs(q_len, k_len) if causal else q_len * k_len
    m = mask.bool()
    if m.shape[-2] == 1 and q_len > 1:
        per_key = m[..., 0, :].long()                                   # (B, Hk, K)
        if not causal:
            return int(per_key.sum()) * q_len
        prefix = torch.cat([torch.zeros_like(per_key[..., :1]), per_key.cumsum(-1)], dim=-1)
        limits = (torch.arange(q_len, device=m.device) + k_len - q_len + 1).clamp(0, k_len)
        return int(prefix[..., limits].sum())
    if causal:
        rows = torch.arange(q_len, device=m.device)[:, None]
        cols = torch.arange(k_len, device=m.device)[None, :]
        m = m & (cols <= rows + k_len - q_len)
    return int(m.sum())


def density(mask: Tensor | None, q_len: int, k_len: int, causal: bool) -> float:
    """Kept pairs over the pairs causal (or dense) attention computes, per (batch, head) entry."""
    entries = 1 if mask is None else mask.shape[0] * mask.shape[1]
    full = causal_pairs(q_len, k_len) if causal else q_len * k_len
    return kept_pairs(mask, q_len, k_len, causal) / (entries * full)
