# Keep-mask helpers and the tile plan: which key tiles each query tile must visit.
# api/benchmarks -> here (pure torch, CPU or GPU) -> the kernels' scheduled loops (DESIGN: "Sparsity
# is scheduled, not discovered"). Invariant: a plan never drops a tile holding a kept element.
"""Tile plans and dynamic masks.

A kernel that loads every mask tile to learn that it is empty still pays for reading an O(Q*K)
mask. A plan summarizes the mask once per tile: for each (mask batch, mask head, query tile) it
lists the key tiles that are *partial* (some elements kept: the kernel applies the mask) and the
ones that are *full* (every element kept: no per-element mask work). Tiles in neither list are
skipped. The plan depends only on the mask and the tile shape, not on causal alignment, scale or
bias, so forward, backward and every head sharing the mask reuse it. Kernels apply causal limits
and sequence bounds on top (a tile crossing the diagonal is treated as partial).

Broadcast axes stay broadcast: a (B, H_kv, 1, K) keep list gives a plan with one query tile,
built in O(K); a (.., Q, 1) mask gives one state per query tile, the same for every key tile.

Example::

    keep = topk_key_blocks(score, 1024)             # (B, H_kv, 1, K) from per-key scores
    p = plan(keep, tile_q=64, tile_kv=64, k_len=K)  # p.partial_count: (B, H_kv, 1, ceil(K/64))
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .arguments import collapse_expanded

__all__ = ["TilePlan", "block_scores", "plan", "topk_key_blocks"]


@dataclasses.dataclass
class TilePlan:
    """Per (mask batch, mask head, query tile): key-tile lists, ascending, padded with -1.

    Shapes: counts (Bm, Hm, Tq) int32, indices (Bm, Hm, Tq, Tk) int32, where Tq is 1 for a mask
    broadcast over queries and Tk = ceil(k_len / tile_kv)."""

    tile_q: int
    tile_kv: int
    partial_count: Tensor
    partial_index: Tensor
    full_count: Tensor
    full_index: Tensor

    def states(self) -> Tensor:
        """(Bm, Hm, Tq, Tk) int8: 0 empty, 1 partial, 2 full (for tests and inspection)."""
        Tk = self.partial_index.shape[-1]
        out = torch.zeros(*self.partial_index.shape, dtype=torch.int8, device=self.partial_index.device)
        for value, index in ((1, self.partial_index), (2, self.full_index)):
            valid = index >= 0
            flat = torch.where(valid, index, torch.full_like(index, Tk)).long()
            scratch = torch.zeros(*out.shape[:-1], Tk + 1, dtype=torch.int8, device=out.device)
            scratch.scatter_(-1, flat, torch.full_like(flat, value, dtype=torch.int8))
            out = torch.maximum(out, scratch[..., :Tk])
        return out


def _tile_reduce(m: Tensor, axis: int, tile: int, fill: bool, reduce: str) -> Tensor:
    """Reduces axis `axis` of a bool tensor in tiles of `tile` (the last one padded with `fill`)."""
    n = m.shape[axis]
    pad = (-n) % tile
    if pad:
        shape = list(m.shape)
        shape[axis] = pad
        m = torch.cat([m, torch.full(shape, fill, dtype=torch.bool, device=m.device)], dim=axis)
    m = m.unflatten(axis, (-1, tile))
    return m.any(axis + 1) if reduce == "any" else m.all(axis + 1)


def _lists(selected: Tensor) -> tuple[Tensor, Tensor]:
    """bool (..., Tk) -> (count (...), ascending indices (..., Tk) padded with -1), int32."""
    Tk = selected.shape[-1]
    positions = torch.arange(Tk, device=selected.device, dtype=torch.int32).expand_as(selected)
    keyed = torch.where(selected, positions, torch.full_like(positions, Tk))
    ordered = keyed.sort(dim=-1).values
    index = torch.where(ordered < Tk, ordered, torch.full_like(ordered, -1))
    return selected.sum(-1, dtype=torch.int32), index


def plan(mask: Tensor, *, tile_q: int, tile_kv: int, k_len: int) -> TilePlan:
    """The tile plan of a keep-mask of any broadcast form (B|1, H|H_kv|1, Q|1, K|1).

    mask: bool (True keeps) or floating (kept where != 0). Axes of size 1 stay size 1; an axis
    expanded with .expand() (stride 0) is read as size 1 too, so nothing O(Q*K) is built for it.
    """
    if mask.dim() != 4:
        raise ValueError(f"mask: expected 4 dimensions (B|1, H|H_kv|1, Q|1, K|1), got shape {tuple(mask.shape)}")
    if tile_q <= 0 or tile_kv <= 0:
        raise ValueError(f"tile_q, tile_kv: must be positive, got {tile_q}, {tile_kv}")
    if mask.shape[-1] not in (1, k_len):
        raise ValueError(f"mask: key axis has size {mask.shape[-1]}, expected {k_len} or 1")
    # Expanded axes (stride 0) are read as size 1: the plan of a broadcast is a broadcast.
    m = collapse_expanded(mask)
    m = m if m.dtype == torch.bool else m != 0
    if m.shape[2] > 1:
        any_q = _tile_reduce(m, 2, tile_q, False, "any")
        all_q = _tile_reduce(m, 2, tile_q, True, "all")
    else:
        any_q = all_q = m
    Tk = -(-k_len // tile_kv)
    if m.shape[3] > 1:
        any_t = _tile_reduce(any_q, 3, tile_kv, False, "any")
        all_t = _tile_reduce(all_q, 3, tile_kv, True, "all")
    else:  # one state per row: the same for every key tile
        any_t = any_q.expand(*any_q.shape[:3], Tk)
        all_t = all_q.expand(*all_q.shape[:3], Tk)
    partial_count, partial_index = _lists(any_t & ~all_t)
    full_count, full_index = _lists(all_t)
    return TilePlan(tile_q, tile_kv, partial_count, partial_index, full_count, full_index)


def block_scores(score: Tensor, block: int = 64) -> Tensor:
    """(..., K) per-key scores -> (..., ceil(K/block)) summed per block (the last block padded)."""
    pad = (-score.shape[-1]) % block
    return torch.nn.functional.pad(score.float(), (0, pad)).unflatten(-1, (-1, block)).sum(-1)


def topk_key_blocks(score: Tensor, w: int, block: int = 64) -> Tensor:
    """A dynamic keep-mask from per-key scores: score (B, H_kv, K) -> keep (B, H_kv, 1, K) bool,
    the ceil(w / block) best blocks of `block` consecutive keys (ranked by summed score).

    Whole blocks make the kept work skippable tile by tile; the top-w single keys would scatter
    over every tile. The result is a per-key keep list: its plan costs O(K)."""
    if score.dim() != 3:
        raise ValueError(f"score: expected (B, H_kv, K), got shape {tuple(score.shape)}")
    if w <= 0 or block <= 0:
        raise ValueError(f"w, block: must be positive, got {w}, {block}")
    K = score.shape[-1]
    blocks = block_scores(score, block)
    n = min(-(-w // block), blocks.shape[-1])
    chosen = torch.zeros_like(blocks, dtype=torch.bool)
    chosen.scatter_(-1, blocks.topk(n, dim=-1).indices, True)
    return chosen.repeat_interleave(block, dim=-1)[..., :K].unsqueeze(-2)
