"""Backward speed of the CUDA kernels against the peers, on the configurations issue 4 names.

  python benchmarks/bench_backward.py [--quick] [--out DIR] [--only dense,bias,sparse]

Groups (each row: median of CUDA-event timings with the L2 flushed (flash_dmattn.bench.time_ms);
TFLOP/s on kept pairs, 10 D flops per pair for a backward (five products), 14 D for forward+backward):
  dense   no mask, D 64/128, L 4k/16k, B*H = 32: our backward vs SDPA's flash backward (causal and not)
  bias    causal, a per-key bias (B, H_kv, 1, K) that requires grad (dbias reduced in the kernel),
          with and without an all-true mask: against our dense causal backward
  sparse  forward+backward with top-w keys per row chosen as whole 64-key blocks (the forward
          benchmark's masks, density measured): ours vs our dense causal, SDPA flash dense causal and
          FlexAttention (captured bias requiring grad; BlockMask build reported apart)
Writes results.json and results.md to --out.
"""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_masks import density, kept_pairs, topw_key_blocks  # noqa: E402

import flash_dmattn  # noqa: E402
from flash_dmattn.bench import ProgressBar, timed_or_reason  # noqa: E402

DT = torch.bfloat16


def leaves(B, Q, K, H, H_kv, D, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return tuple(torch.randn(B, n, h, D, device="cuda", dtype=DT, generator=g).requires_grad_()
                 for n, h in ((Q, H), (K, H_kv), (K, H_kv)))


def ours_fwd(q, k, v, mask=None, bias=None, causal=False):
    return lambda: flash_dmattn.flash_dmattn_func(q=q, k=k, v=v, attn_mask=mask, attn_bias=bias, is_causal=causal)


def sdpa_fwd(q, k, v, causal):
    """SDPA's flash backend in its (B, H, L, D) layout (MHA only here)."""
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))

    def run():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal)
    return run


def backward_only(fwd, wrt):
    """A callable running the backward of one forward, recorded once (retain_graph)."""
    out = fwd()
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)


def forward_backward(fwd, wrt):
    def run():
        out = fwd()
        return torch.autograd.grad(out, wrt, torch.ones_like(out))
    return run


timed = functools.partial(timed_or_reason, inference=False)


def row(group, config, system, ms, kept, D, flops_per_pair_d, dens=1.0, note=""):
    tflops = flops_per_pair_d * D * kept / (ms * 1e-3) / 1e12 if ms else None
    return {"group": group, "config": config, "system": system, "ms": ms, "tflops": tflops, "density": dens,
            "note": note}


def group_dense(quick):
    out = []
    for D in (64, 128):
        for L in ((4096,) if quick else (4096, 16384)):
            for causal in (False, True):
                B, H = 2, 16
                q, k, v = leaves(B, L, L, H, H, D)
                kept = kept_pairs(None, L, L, causal) * B * H
                name = f"D={D} L={L} {'causal' if causal else 'full'} backward"
                for system, fwd in (("ours", ours_fwd(q, k, v, causal=causal)), ("sdpa-flash", sdpa_fwd(q, k, v, causal))):
                    ms, note = timed(backward_only(fwd, (q, k, v)))
                    out.append(row("dense", name, system, ms, kept, D, 10, note=note))
    return out


def group_bias(quick):
    out = []
    B, H, H_kv, D = 2, 16, 4, 128
    for L in ((4096,) if quick else (4096, 16384)):
        q, k, v = leaves(B, L, L, H, H_kv, D)
        bias = torch.randn(B, H_kv, 1, L, device="cuda", dtype=DT).requires_grad_()
        keep = torch.ones(B, H_kv, 1, L, device="cuda", dtype=torch.bool)
        kept = kept_pairs(None, L, L, True) * B * H
        name = f"per-key bias L={L} D={D} H={H} H_kv={H_kv} backward"
        for system, fwd, wrt in (("ours dense causal", ours_fwd(q, k, v, causal=True), (q, k, v)),
                                 ("ours bias causal", ours_fwd(q, k, v, None, bias, True), (q, k, v, bias)),
                                 ("ours bias+mask causal", ours_fwd(q, k, v, keep, bias, True), (q, k, v, bias))):
            ms, note = timed(backward_only(fwd, wrt))
            out.append(row("bias", name, system, ms, kept, D, 10, note=note))
    return out


def flex_fwd(q, k, v, keep, bias, causal):
    """FlexAttention with the keep-mask as a BlockMask and the bias captured by score_mod."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    B, Q, H, D = q.shape
    K = k.shape[1]
    km = keep[:, :, 0, :]
    group, bgroup = H // keep.shape[1], H // bias.shape[1]

    def mask_mod(b, h, qi, kj):
        return km[b, h // group, kj] & (kj <= qi + K - Q) if causal else km[b, h // group, kj]

    build = lambda: create_block_mask(mask_mod, B, H, Q, K, device="cuda")  # noqa: E731
    build_ms, _ = timed(build, warmup=1, reps=3)
    block_mask = build()

    def score_mod(score, b, h, qi, kj):
        return score + bias[b, h // bgroup, 0, kj]

    compiled = torch.compile(flex_attention, dynamic=False)

    def run():
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
        return compiled(qt, kt, vt, score_mod=score_mod, block_mask=block_mask, enable_gqa=True).transpose(1, 2)
    return run, build_ms


def group_sparse(quick):
    out = []
    B, H, H_kv, L, D, w = 1, 2, 1, 32768, 64, 1024
    q, k, v = leaves(B, L, L, H, H_kv, D)
    # Seeded: the top-w blocks' positions, hence the density under causal, are the same every run.
    score = torch.randn(B, H_kv, L, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    keep = topw_key_blocks(score, w)
    bias = score.to(DT).unsqueeze(2).requires_grad_()
    dens = density(keep, L, L, causal=True)
    kept = kept_pairs(keep, L, L, True) * (H // H_kv)
    dense_kept = kept_pairs(None, L, L, True) * B * H
    name = f"B={B} H={H} H_kv={H_kv} L={L} D={D} w={w} forward+backward"
    ms, note = timed(forward_backward(ours_fwd(q, k, v, keep, bias, True), (q, k, v, bias)))
    out.append(row("sparse", name, "ours sparse", ms, kept, D, 14, dens, note))
    ms_dense, note = timed(forward_backward(ours_fwd(q, k, v, causal=True), (q, k, v)))
    out.append(row("sparse", name, "ours dense causal", ms_dense, dense_kept, D, 14, 1.0, note))
    if out[0]["ms"] and ms_dense:
        bound = 1.5 * dens * ms_dense
        out[0]["note"] = f"bound 1.5 x density x dense = {bound:.3f} ms: {'within' if out[0]['ms'] <= bound else 'OVER'}"
    qs, ks, vs = (t.detach().transpose(1, 2).repeat_interleave(H // t.shape[2], dim=1).transpose(1, 2).requires_grad_()
                  for t in (q, k, v))
    ms, note = timed(forward_backward(sdpa_fwd(qs, ks, vs, True), (qs, ks, vs)))
    out.append(row("sparse", name, "sdpa-flash dense causal", ms, dense_kept, D, 14, 1.0, note))
    try:
        fn, build_ms = flex_fwd(q, k, v, keep, bias, True)
        ms, note = timed(forward_backward(fn, (q, k, v, bias)))
        out.append(row("sparse", name, "flex", ms, kept, D, 14, dens, note))
        out.append(row("sparse", name, "flex BlockMask build", build_ms, 0, D, 14, dens, "per step for a dynamic mask"))
    except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
        out.append(row("sparse", name, "flex", None, kept, D, 14, dens, f"{type(exc).__name__}: {str(exc)[:100]}"))
    return out


GROUPS = {"dense": group_dense, "bias": group_bias, "sparse": group_sparse}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="L=4k only for dense and bias")
    ap.add_argument("--only", default=",".join(GROUPS), help="comma-separated groups")
    ap.add_argument("--out", default="bench-backward")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_backward.py needs a CUDA GPU")
    groups = [g for g in args.only.split(",") if g]
    bar = ProgressBar(len(groups))
    results = []
    for g in groups:
        results += GROUPS[g](args.quick)
        bar.step(g)
    lines = ["| group | config | system | ms | TFLOP/s | density | note |", "|---|---|---|---|---|---|---|"]
    for r in results:
        ms = f"{r['ms']:.3f}" if r["ms"] else "-"
        tf = f"{r['tflops']:.0f}" if r["tflops"] else "-"
        lines.append(f"| {r['group']} | {r['config']} | {r['system']} | {ms} | {tf} | {r['density']:.3f} | {r['note']} |")
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "python": platform.python_version()}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    (out / "results.md").write_text(f"# Backward benchmark on {meta['gpu']}\n\n{text}\n")


if __name__ == "__main__":
    main()
