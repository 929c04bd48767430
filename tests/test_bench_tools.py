"""The benchmark helpers measure what they claim: masks keep the stated fraction and kept pairs are
counted exactly (also for the O(K) per-key form)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sparse_masks as sm  # noqa: E402


def dense_causal(Q, K):
    return torch.ones(Q, K, dtype=torch.bool).tril(K - Q)


@pytest.mark.parametrize("Q,K", [(5, 5), (3, 7), (7, 3), (1, 9), (100, 130)])
def test_causal_pairs_match_a_dense_count(Q, K):
    assert sm.causal_pairs(Q, K) == int(dense_causal(Q, K).sum())


def test_key_block_mask_keeps_whole_blocks_and_the_stated_width():
    score = torch.randn(2, 3, 1024)  # whole blocks only: a partial last block would keep less than w
    keep = sm.topw_key_blocks(score, 256)
    assert keep.shape == (2, 3, 1, 1024)
    assert (keep.sum(-1) == 256).all()
    blocks = keep.unflatten(-1, (-1, 64))
    assert ((blocks.all(-1)) | (~blocks.any(-1))).all(), "a 64-key block is either kept whole or dropped"
    # the chosen blocks are the best-scoring ones
    best = sm.block_scores(score).topk(4, dim=-1).indices
    assert keep[..., 0, :].unflatten(-1, (-1, 64)).any(-1).gather(-1, best).all()


@pytest.mark.parametrize("causal", [True, False])
def test_row_block_mask_keeps_min_of_w_and_visible_keys(causal):
    Q = K = 512
    keep = sm.topw_row_blocks(torch.randn(1, 2, K), 128, Q, causal=causal)
    visible = dense_causal(Q, K).sum(-1) if causal else torch.full((Q,), K)
    kept = keep.sum(-1)[0, 0]
    # whole blocks: each row keeps 2 blocks of 64 keys, or everything visible when fewer exist
    # (a partly visible diagonal block counts its visible part)
    assert (kept <= torch.maximum(visible, torch.tensor(128))).all()
    assert (kept[visible <= 64] == visible[visible <= 64]).all()
    # Two blocks per row; with causal the diagonal block counts with only its visible part.
    assert ((kept[visible >= 128] <= 128) & (kept[visible >= 128] >= 128 - 63)).all()
    whole = visible[visible >= 128] % 64 == 0 if causal else visible[visible >= 128] > 0
    assert (kept[visible >= 128][whole] == 128).all()
    if causal:
        assert not (keep[0, 0] & ~dense_causal(Q, K)).any()


@pytest.mark.parametrize("causal", [True, False])
def test_kept_pairs_of_a_per_key_mask_match_the_dense_count(causal):
    Q, K = 70, 90
    keep = torch.rand(2, 3, 1, K) > 0.4
    dense = keep.expand(2, 3, Q, K)
    if causal:
        dense = dense & dense_causal(Q, K)
    assert sm.kept_pairs(keep, Q, K, causal) == int(dense.sum())
    assert sm.kept_pairs(keep.expand(2, 3, Q, K), Q, K, causal) == int(dense.sum())
    full = sm.causal_pairs(Q, K) if causal else Q * K
    assert sm.density(keep, Q, K, causal) == pytest.approx(int(dense.sum()) / (6 * full))



def _bench_forward():
    import bench_forward  # benchmarks/ is on sys.path above
    return bench_forward


def _row(config, system, ms, density):
    return {"group": "sweep", "config": config, "system": system, "ms": ms, "density": density, "note": ""}


def test_sparse_bound_is_density_times_dense_plus_schedule_and_flags_rows_over_it():
    bf = _bench_forward()
    rows = [_row("a", "ours sparse", 1.5, 0.5), _row("a", "ours schedule only (empty mask)", 0.2, 0.0),
            _row("b", "ours sparse", 1.6, 0.5), _row("b", "ours schedule only (empty mask)", 0.2, 0.0),
            _row("c", "ours sparse", 1.0, 0.5)]  # no schedule row: no bound claimed
    bf.with_sparse_bound(rows, dense_causal_ms=2.0)
    assert rows[0]["bound_ms"] == pytest.approx(1.35 * 0.5 * 2.0 + 0.2)
    assert rows[0]["note"].endswith("within") and rows[2]["note"].endswith("OVER")
    assert "bound_ms" not in rows[4]


def test_sweep_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bf = _bench_forward()
    sweep = [_row("x w=64", "ours sparse", 0.3, 0.1), _row("x w=640", "ours sparse", 1.2, 0.9),
             _row("x w=64", "ours schedule only (empty mask)", 0.1, 0.0), _row("x", "ours dense causal", 1.3, 1.0)]
    bf.plot_sweep(sweep, tmp_path / "sweep.png", plt)
    assert (tmp_path / "sweep.png").stat().st_size > 1000
