"""Tile plans: a plan's partial/full lists are exactly the tile-OR / tile-AND of the mask, for every
broadcast form and lengths that break tiles; broadcast axes stay broadcast (a per-key keep list is
planned in O(K)); and topk_key_blocks keeps whole blocks of the best-scoring keys."""
from __future__ import annotations

import itertools
import time

import pytest
import torch

from flash_dmattn.masks import block_scores, plan, topk_key_blocks


def brute_states(mask, Q, K, tq, tk):
    """(Bm, Hm, Tq, Tk): 0 empty, 1 partial, 2 full, from the dense mask tile by tile."""
    m = mask.bool().expand(mask.shape[0], mask.shape[1], Q, K)
    Tq = 1 if mask.shape[2] == 1 else -(-Q // tq)
    Tk = -(-K // tk)
    out = torch.zeros(m.shape[0], m.shape[1], Tq, Tk, dtype=torch.int8)
    for i, j in itertools.product(range(Tq), range(Tk)):
        rows = slice(0, Q) if Tq == 1 else slice(i * tq, min(Q, (i + 1) * tq))
        tile = m[:, :, rows, j * tk:min(K, (j + 1) * tk)]
        out[:, :, i, j] = torch.where(tile.all(-1).all(-1), 2, torch.where(tile.any(-1).any(-1), 1, 0))
    return out


@pytest.mark.parametrize("Q,K,tq,tk", [(70, 90, 16, 32), (64, 64, 64, 64), (1, 100, 64, 32), (129, 65, 64, 64)])
def test_plan_matches_the_tile_or_and_of_every_broadcast_form(Q, K, tq, tk):
    B, H = 2, 3
    gen = torch.Generator().manual_seed(Q * K)
    for b, h, q, k in itertools.product((B, 1), (H, 1), (Q, 1), (K, 1)):
        # sparse rows and columns so that empty, partial and full tiles all occur
        mask = torch.rand(b, h, q, k, generator=gen) < 0.9
        if q > 1:
            mask[:, :, : q // 3] = False
        if k > 1:
            mask[..., k // 2:] = True
        p = plan(mask, tile_q=tq, tile_kv=tk, k_len=K)
        want = brute_states(mask, Q, K, tq, tk)
        assert torch.equal(p.states(), want), (b, h, q, k)
        # lists are ascending, counted, and padded with -1
        for count, index in ((p.partial_count, p.partial_index), (p.full_count, p.full_index)):
            valid = index >= 0
            assert torch.equal(valid.sum(-1, dtype=torch.int32), count)
            assert torch.equal(valid, torch.arange(index.shape[-1]) < count[..., None])
            v = torch.where(valid, index, torch.iinfo(torch.int32).max)
            assert (v[..., 1:] >= v[..., :-1]).all()


def test_float_masks_keep_where_nonzero():
    mask = torch.tensor([[[[0.0, 1.0, 1.0, 0.5]]]])
    p = plan(mask, tile_q=1, tile_kv=2, k_len=4)
    assert p.states().tolist() == [[[[1, 2]]]]


def test_expanded_mask_is_planned_as_its_broadcast():
    keep = torch.rand(1, 2, 1, 300) < 0.5
    p = plan(keep.expand(1, 2, 4096, 300), tile_q=64, tile_kv=64, k_len=300)
    assert p.partial_count.shape == (1, 2, 1)
    assert torch.equal(p.states(), plan(keep, tile_q=64, tile_kv=64, k_len=300).states())


def test_per_key_keep_list_is_planned_in_linear_time():
    K = 1 << 24  # a dense (K, K) plan input would hold 2^48 elements
    keep = torch.zeros(1, 1, 1, K, dtype=torch.bool)
    keep[..., 4096:8192] = True
    keep[..., 100] = True
    t0 = time.perf_counter()
    p = plan(keep, tile_q=128, tile_kv=128, k_len=K)
    assert time.perf_counter() - t0 < 30
    assert p.full_count.item() == 32 and p.partial_count.item() == 1
    assert p.partial_index[0, 0, 0, 0].item() == 0
    assert p.full_index[0, 0, 0, :32].tolist() == list(range(32, 64))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="^mask:"):
        plan(torch.ones(3, 3, dtype=torch.bool), tile_q=64, tile_kv=64, k_len=3)
    with pytest.raises(ValueError, match="^mask:"):
        plan(torch.ones(1, 1, 1, 5, dtype=torch.bool), tile_q=64, tile_kv=64, k_len=6)
    with pytest.raises(ValueError, match="^tile_q, tile_kv:"):
        plan(torch.ones(1, 1, 1, 5, dtype=torch.bool), tile_q=0, tile_kv=64, k_len=5)
    with pytest.raises(ValueError, match="^score:"):
        topk_key_blocks(torch.randn(4, 5), 64)


def test_topk_key_blocks_keeps_the_best_whole_blocks():
    score = torch.randn(2, 3, 640)
    keep = topk_key_blocks(score, 128)
    assert keep.shape == (2, 3, 1, 640) and (keep.sum(-1) == 128).all()
    chosen = keep[:, :, 0].unflatten(-1, (-1, 64))
    assert (chosen.all(-1) | ~chosen.any(-1)).all()
    best = block_scores(score).topk(2, dim=-1).indices
    assert chosen.any(-1).gather(-1, best).all()
