"""The benchmark helpers measure what they claim: masks keep the stated fraction, kept pairs and
computed tiles are counted exactly (also for the O(K) per-key form), bounds and plots say what the
rows hold, and benchmarks/RESULTS.md's tables are the ones generated from the committed results."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import perf  # noqa: E402
import results_tables  # noqa: E402
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


def brute_force_computed(mask, B, H, Q, K, causal):
    """Pairs in the TILE_Q x TILE_K tiles holding a kept pair (tiles clipped to Q x K), over B x H
    query heads."""
    m = mask.bool().expand(B, mask.shape[1], Q, K) if mask is not None else torch.ones(B, 1, Q, K, dtype=torch.bool)
    if causal:
        m = m & dense_causal(Q, K)
    total = 0
    for q0 in range(0, Q, perf.TILE_Q):
        for k0 in range(0, K, perf.TILE_K):
            tile = m[:, :, q0:q0 + perf.TILE_Q, k0:k0 + perf.TILE_K]
            total += int(tile.flatten(2).any(-1).sum()) * tile.shape[2] * tile.shape[3]
    heads = H // (mask.shape[1] if mask is not None else 1)
    return total * heads


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("Q,K", [(300, 300), (130, 450), (450, 130), (1, 333)])
def test_computed_pairs_count_the_tiles_holding_a_kept_pair(Q, K, causal):
    torch.manual_seed(0)
    B, H = 2, 4
    per_key = torch.rand(B, 2, 1, K) > 0.7
    per_row = torch.rand(B, 2, Q, K) > 0.995  # sparse enough that whole tiles drop out
    for mask in (None, per_key, per_row):
        want = brute_force_computed(mask, B, H, Q, K, causal)
        assert perf.computed_pairs(mask, B, H, Q, K, causal) == want
    # a mask keeping nothing computes nothing
    assert perf.computed_pairs(torch.zeros(B, 2, 1, K, dtype=torch.bool), B, H, Q, K, causal) == 0


def _row(config, system, ms, density, group="density", **extra):
    r = {"group": group, "config": config, "system": system, "mode": "forward", "ms": ms, "tflops": None,
         "tflops_computed": None, "peak_mb": None, "density": density, "note": ""}
    r.update(extra)
    return r


def test_sparse_bound_is_density_times_dense_plus_schedule_and_flags_rows_over_it():
    rows = [_row("a", "ours sparse", 1.5, 0.5), _row("a", "ours schedule only (empty mask)", 0.2, 0.0),
            _row("b", "ours sparse", 1.6, 0.5), _row("b", "ours schedule only (empty mask)", 0.2, 0.0),
            _row("c", "ours sparse", 1.0, 0.5),  # no schedule row: no bound claimed
            _row("d", "ours dense causal", 2.0, 1.0)]
    perf.sparse_bounds(rows, 1.35, with_schedule=True)
    assert rows[0]["bound_ms"] == pytest.approx(1.35 * 0.5 * 2.0 + 0.2)
    assert rows[0]["note"].endswith("within") and rows[2]["note"].endswith("OVER")
    assert "bound_ms" not in rows[4]
    # without the schedule term (the backward's bound), and the config's own dense row wins
    rows = [_row("e", "ours sparse", 1.0, 0.5), _row("e", "ours dense causal", 1.0, 1.0),
            _row("f", "ours dense causal", 3.0, 1.0)]
    perf.sparse_bounds(rows, 1.5, with_schedule=False)
    assert rows[0]["bound_ms"] == pytest.approx(0.75) and rows[0]["note"].endswith("OVER")


def test_plots_are_written_for_series_and_density(tmp_path):
    pytest.importorskip("matplotlib")
    rows = [_row("L=1k", s, ms, 0.1, group="seed", series="time vs L", x=1024, x_label="L")
            for s, ms in (("ours sparse", 0.1), ("flex kernel", 0.3))]
    rows += [_row("L=2k", s, ms, 0.1, group="seed", series="time vs L", x=2048, x_label="L")
             for s, ms in (("ours sparse", 0.2), ("flex kernel", 0.7))]
    rows += [_row("x w=64", "ours sparse", 0.3, 0.1), _row("x w=640", "ours sparse", 1.2, 0.9),
             _row("x w=640", "ours dense causal", 1.3, 1.0, reference=True)]
    written = perf.plot(rows, tmp_path, "forward")
    assert [p.name for p in written] == ["forward-seqlen.png", "forward-density.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_rotated_copies_fill_l2_three_times_and_keep_requires_grad():
    t = torch.randn(1 << 20, requires_grad=True)  # 4 MB
    fns = perf.rotated(lambda s: (lambda: s[0]), (t,))
    copies = [f() for f in fns]
    assert copies[0] is t and len(copies) == perf.copies_for(4 << 20) >= 2
    assert all(c.requires_grad and torch.equal(c, t) for c in copies)
    assert len({c.data_ptr() for c in copies}) == len(copies)
    assert perf.copies_for(1 << 40) == 1


@pytest.mark.parametrize("mode", ["forward", "backward", "forward+backward"])
def test_masked_case_times_every_system_or_says_why_not(mode, monkeypatch):
    """The benchmark machinery end to end on the CPU reference at toy sizes: every system gets a
    row, failures become reasons, densities and work counts are the measured ones."""
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    monkeypatch.setattr(perf, "MAX_COPIES", 2)
    monkeypatch.setattr(perf, "WARMUP", 1)
    monkeypatch.setattr(perf, "REPS", 2)
    rows = perf.masked_case("g", "toy", 1, 2, 1, 150, 200, 32, 64, "row", ("schedule", "dense", "sdpa-mask"), mode=mode)
    by = {r["system"]: r for r in rows}
    assert list(by) == ["ours sparse", "ours schedule only (empty mask)", "ours dense causal",
                        "sdpa cudnn/efficient float mask"]
    assert by["ours sparse"]["ms"] > 0 and by["ours dense causal"]["ms"] > 0
    assert 0 < by["ours sparse"]["density"] < 1 and by["ours dense causal"]["density"] == 1.0
    assert by["ours sparse"]["tflops"] < by["ours sparse"]["tflops_computed"]
    # no cuDNN or efficient kernel on CPU: a reason, not a crash
    assert by["sdpa cudnn/efficient float mask"]["ms"] is None and "RuntimeError" in by["sdpa cudnn/efficient float mask"]["note"]


def test_skipped_peers_are_left_out_of_masked_cases(monkeypatch):
    """--skip (kernel A/B runs) drops the named peers and nothing else."""
    monkeypatch.setattr(perf, "DEVICE", "cpu")
    monkeypatch.setattr(perf, "MAX_COPIES", 1)
    monkeypatch.setattr(perf, "WARMUP", 1)
    monkeypatch.setattr(perf, "REPS", 1)
    monkeypatch.setattr(perf, "SKIPPED_PEERS", {"sdpa-mask", "schedule"})
    rows = perf.masked_case("g", "toy", 1, 2, 1, 130, 130, 32, 64, "key", ("schedule", "dense", "sdpa-mask"),
                            mode="forward")
    assert [r["system"] for r in rows] == ["ours sparse", "ours dense causal"]


def test_results_tables_are_generated_from_the_committed_results():
    text = results_tables.RESULTS.read_text()
    folders, section = results_tables.current(text)
    assert section is not None, "benchmarks/RESULTS.md lacks the generated tables"
    assert (folders[0] / "forward.json").exists() and (folders[0] / "backward.json").exists()
    assert section == results_tables.section(folders), (
        f"benchmarks/RESULTS.md is stale: python benchmarks/results_tables.py {' '.join(map(str, folders))}")


def test_results_tables_flag_sdpa_rows_run_on_repeated_kv_heads():
    """Runs that gave SDPA repeated K/V heads (no "sdpa_gqa" in meta) say so above each GQA table."""
    gqa = [{"config": "Q=1 K=64 H=4 H_kv=1 D=64", "system": s, "ms": 1.0} for s in ("ours", "sdpa-flash")]
    mha = [{"config": "B=1 H=4 H_kv=4 D=64", "system": s, "ms": 1.0} for s in ("ours", "sdpa-flash")]
    ours_only = [{"config": "per-key bias H=4 H_kv=1", "system": "ours dense causal", "ms": 1.0}]
    assert results_tables.sdpa_saw_repeated_heads({}, gqa)
    assert not results_tables.sdpa_saw_repeated_heads({"sdpa_gqa": "enable_gqa"}, gqa)
    assert not results_tables.sdpa_saw_repeated_heads({}, mha)
    assert not results_tables.sdpa_saw_repeated_heads({}, ours_only)
