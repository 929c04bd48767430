"""Runs one configuration a few times, forward only or forward + backward, for a profiler to look at.

  python benchmarks/profile_attention.py [--D 128] [--L 4096] [--B 2] [--H 16] [--H_kv 16] [--causal]
                                       [--mask per-key|per-query|all-true] [--w KEEP]
                                       [--bias per-key|per-query] [--backward] [--table] [--reps 3]
                                       [--system ours|sdpa-flash]

--backward adds the backward (the bias, when given, requires grad). --table prints the time of each
CUDA kernel of the last repetition (torch.profiler), for a first look without Nsight.

Under Nsight Compute, for the forward kernel's stall reasons and pipe utilization:

  ncu --clock-control none --set full -k regex:fwd_kernel -c 1 -o fwd python benchmarks/profile_attention.py --D 128

--system sdpa-flash runs PyTorch SDPA's flash backend on the same dense problem instead (no mask or
bias), so a profiler can compare its kernels with ours (ncu -k regex:flash_bwd ...).

Masks keep whole 64-key blocks, --w keys per row (default: one in two; benchmarks/sparse_masks.py), so
tiles are full or empty.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_masks import topw_key_blocks, topw_row_blocks  # noqa: E402

import flash_dmattn  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--D", type=int, default=128)
    ap.add_argument("--L", type=int, default=4096)
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--H", type=int, default=16)
    ap.add_argument("--H_kv", type=int, default=None, help="default: H")
    ap.add_argument("--causal", action="store_true")
    ap.add_argument("--mask", choices=("per-key", "per-query", "all-true"), default=None)
    ap.add_argument("--w", type=int, default=None, help="keys kept per row by --mask (default: L / 2)")
    ap.add_argument("--bias", choices=("per-key", "per-query"), default=None)
    ap.add_argument("--backward", action="store_true", help="forward + backward")
    ap.add_argument("--table", action="store_true", help="print per-kernel CUDA times (torch.profiler)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--system", choices=("ours", "sdpa-flash"), default="ours")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_attention.py needs a CUDA GPU")
    H_kv = a.H_kv or a.H
    dt = torch.bfloat16
    q = torch.randn(a.B, a.L, a.H, a.D, device="cuda", dtype=dt)
    k, v = (torch.randn(a.B, a.L, H_kv, a.D, device="cuda", dtype=dt) for _ in range(2))
    score = torch.randn(a.B, H_kv, a.L, device="cuda")
    mask = None
    if a.mask == "per-key":
        mask = topw_key_blocks(score, a.w or a.L // 2)
    elif a.mask == "all-true":  # a per-key mask keeping every key: the mask path's own cost
        mask = torch.ones(a.B, H_kv, 1, a.L, device="cuda", dtype=torch.bool)
    elif a.mask == "per-query":
        mask = topw_row_blocks(score, a.w or a.L // 2, a.L, causal=a.causal)
    bias = None
    if a.bias == "per-key":
        bias = score.to(dt).unsqueeze(2)
    elif a.bias == "per-query":
        bias = torch.randn(a.B, H_kv, a.L, a.L, device="cuda", dtype=dt)
    if a.backward:
        for t in (q, k, v) + ((bias,) if bias is not None else ()):
            t.requires_grad_()

    if a.system == "sdpa-flash" and (mask is not None or bias is not None):
        raise SystemExit("--system sdpa-flash runs the dense problem: drop --mask and --bias")

    def attention():
        if a.system == "ours":
            return flash_dmattn.flash_dmattn_func(q=q, k=k, v=v, attn_mask=mask, attn_bias=bias, is_causal=a.causal)
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            out = torch.nn.functional.scaled_dot_product_attention(
                q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=a.causal, enable_gqa=H_kv != a.H)
        return out.transpose(1, 2)

    def run():
        out = attention()
        if a.backward:
            out.backward(torch.ones_like(out))

    with torch.inference_mode(not a.backward):
        for _ in range(a.reps - 1 if a.table else a.reps):
            run()
        if a.table:
            torch.cuda.synchronize()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                run()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
    what = "forward + backward" if a.backward else "forward"
    print(f"ran {a.reps} {what} calls of {a.system}: B={a.B} L={a.L} H={a.H} H_kv={H_kv} D={a.D} causal={a.causal} "
          f"mask={a.mask} w={a.w} bias={a.bias}")


if __name__ == "__main__":
    main()
