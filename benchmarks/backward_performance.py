"""Backward speed of flash-dmattn against the systems a user would pick instead, in one run.

  python benchmarks/backward_performance.py [--quick] [--only GROUPS] [--out DIR] [--skip PEERS]

The forward script's peers, masks and machinery (benchmarks/perf.py), timing either the backward
alone (one recorded forward, replayed; "backward") or a whole training step's attention
("forward+backward"). Our bias and Flex's captured bias require grad, so their times include dbias;
SDPA's float mask carries the bias without a gradient. SDPA and Flex get GQA natively (enable_gqa=True,
K/V with their H_kv heads); each SDPA row records the backend that ran (its backward included).
TFLOP/s count 10 D flops per pair for a backward and 14 D for forward+backward. Groups:

  seed-train  the seed README's backward rows: B=1 H=2 H_kv=1 D=64, causal, mask + bias, Q = K from
              256 to 32768 at W=1024, and W from 32 to 32768 at L=32768 (backward alone)
  models      H=32 H_kv=8 D=128 at L 4k-16k, H=16 D=64 with B*H large and small: dense causal and a
              12.5% top-w mask, forward+backward
  shapes      batch, query heads, GQA ratio and head dim sweeps around B=2 H=16 H_kv=4 D=128 L=4096
              with a 12.5% top-w mask + bias, forward+backward (no backward kernel past D=128 yet: those
              rows say so)
  density     one shape, densities 100% to 1.5%, forward+backward; issue 4's bound on each row
  dense       issue 4: no mask, D 64/128, L 4k/16k, B*H = 32, causal and not: backward vs SDPA
  bias        issue 4: per-key bias with its gradient, causal (with and without an all-true mask)
  sparse      issue 4: B=1 H=2 H_kv=1 L=32768 D=64 w=1024 (and H=32 H_kv=8 L=8192 D=128 w=2048),
              forward+backward, against 1.5 x density x our dense causal forward+backward

--only gqa runs the groups with an SDPA peer on a GQA shape (H != H_kv): seed-train, models, shapes,
sparse. --quick runs a subset in about two minutes. Results: DIR (default
benchmarks/results/<date>-<gpu>/) gets backward.json, backward.md, backward-seqlen.png and
backward-density.png.
"""
from __future__ import annotations

import torch

import perf
from perf import computed_pairs, kept_pairs, ours, qkv

BWD, STEP = "backward", "forward+backward"
SDPA_DENSE = ("sdpa-flash", "sdpa-default")


def group_seed_train(quick):
    out = []
    for L in ((4096,) if quick else (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)):
        out += perf.masked_case("seed-train", f"B=1 H=2 H_kv=1 D=64 L={L} W=1024", 1, 2, 1, L, L, 64, 1024, "row",
                                SDPA_DENSE + ("flex",) + (("sdpa-mask",) if not quick and L <= 16384 else ()),
                                mode=BWD, series="train backward, W=1024 (time vs L)", x=L,
                                x_label="sequence length (Q = K)")
    for W in (() if quick else (32, 64, 128, 256, 512, 2048, 4096, 8192, 16384, 32768)):
        out += perf.masked_case("seed-train", f"B=1 H=2 H_kv=1 D=64 L=32768 W={W}", 1, 2, 1, 32768, 32768, 64, W, "row",
                                SDPA_DENSE + ("flex",), mode=BWD, series="train backward, L=32768 (time vs W)", x=W,
                                x_label="window W (top-W keys per row)")
    return out


def group_models(quick):
    out = []
    shapes = [(1, 32, 8, 128, L) for L in ((4096,) if quick else (4096, 8192, 16384))]
    if not quick:
        shapes += [(8, 16, 16, 64, 4096), (1, 16, 16, 64, 4096), (1, 16, 16, 64, 16384)]
    for B, H, H_kv, D, L in shapes:
        out += perf.masked_case("models", f"B={B} H={H} H_kv={H_kv} D={D} L={L} W=L/8", B, H, H_kv, L, L, D, L // 8,
                                "key", ("dense",) + SDPA_DENSE + (("flex",) if not quick else ()), mode=STEP,
                                series=f"models fwd+bwd: B={B} H={H} H_kv={H_kv} D={D}, 12.5% (time vs L)", x=L,
                                x_label="sequence length (Q = K)")
    return out


def group_shapes(quick):
    return perf.shapes_group(quick, STEP)


def group_density(quick):
    B, H, D, L = (1, 8, 128, 8192) if quick else (1, 8, 128, 16384)
    out = []
    for i, frac in enumerate((1.0, 0.25, 0.06) if quick else (1.0, 0.5, 0.25, 0.125, 0.06, 0.03, 0.015)):
        w = max(64, int(frac * L))
        peers = ((("dense",) + SDPA_DENSE) if i == 0 else ()) + (("flex",) if not quick else ())
        out += perf.masked_case("density", f"B={B} H={H} H_kv={H} L={L} D={D} w={w}", B, H, H, L, L, D, w, "row", peers,
                                mode=STEP)
    return perf.sparse_bounds(out, 1.5, with_schedule=False)


def group_dense(quick):
    return perf.dense_group(quick, BWD)


def group_bias(quick):
    out = []
    B, H, H_kv, D = 2, 16, 4, 128
    for L in ((4096,) if quick else (4096, 16384)):
        q, k, v = qkv(B, L, L, H, H_kv, D, requires_grad=True)
        bias = perf.randn((B, H_kv, 1, L), 7, requires_grad=True)
        keep = torch.ones(B, H_kv, 1, L, device=perf.DEVICE, dtype=torch.bool)
        kept = kept_pairs(None, L, L, True) * B * H
        cmp = computed_pairs(None, B, H, L, L, True)
        name = f"per-key bias + dbias L={L} D={D} H={H} H_kv={H_kv}"
        for system, make, wrt in (("ours dense causal", ours(causal=True), ()),
                                  ("ours bias causal", ours(None, bias, True), (bias,)),
                                  ("ours bias+mask causal", ours(keep, bias, True), (bias,))):
            out.append(perf.timed("bias", name, system, make, (q, k, v), shared=(bias, keep), extra_wrt=wrt, mode=BWD,
                                  D=D, kept=kept, computed=cmp, dens=1.0))
    return out


def group_sparse(quick):
    peers = ("dense",) + SDPA_DENSE + ("flex",)
    out = perf.masked_case("sparse", "B=1 H=2 H_kv=1 L=32768 D=64 w=1024", 1, 2, 1, 32768, 32768, 64, 1024, "key", peers,
                           mode=STEP)
    if not quick:
        out += perf.masked_case("sparse", "B=1 H=32 H_kv=8 L=8192 D=128 w=2048", 1, 32, 8, 8192, 8192, 128, 2048, "row",
                                peers, mode=STEP)
    return perf.sparse_bounds(out, 1.5, with_schedule=False)


GROUPS = {"seed-train": group_seed_train, "models": group_models, "shapes": group_shapes, "density": group_density,
          "dense": group_dense, "bias": group_bias, "sparse": group_sparse}
# The groups with an SDPA peer on a GQA shape (tests/test_bench_peers.py checks this against the groups).
GQA_GROUPS = ("seed-train", "models", "shapes", "sparse")


def main():
    perf.cli(GROUPS, "backward", __doc__, aliases={perf.GQA_ALIAS: GQA_GROUPS})


if __name__ == "__main__":
    main()
