"""Runs one forward configuration a few times, for a profiler to look at (nothing is timed here).

  python benchmarks/profile_forward.py [--D 128] [--L 4096] [--B 2] [--H 16] [--H_kv 16] [--causal]
                                       [--mask per-key|per-query|all-true] [--bias per-key|per-query] [--reps 3]

Under Nsight Compute, for the forward kernel's stall reasons and pipe utilization:

  ncu --set full -k regex:fwd_kernel -c 1 -o fwd python benchmarks/profile_forward.py --D 128

Masks keep whole 64-key blocks, one in two (benchmarks/sparse_masks.py), so tiles are full or empty.
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
    ap.add_argument("--bias", choices=("per-key", "per-query"), default=None)
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_forward.py needs a CUDA GPU")
    H_kv = a.H_kv or a.H
    dt = torch.bfloat16
    q = torch.randn(a.B, a.L, a.H, a.D, device="cuda", dtype=dt)
    k, v = (torch.randn(a.B, a.L, H_kv, a.D, device="cuda", dtype=dt) for _ in range(2))
    score = torch.randn(a.B, H_kv, a.L, device="cuda")
    mask = None
    if a.mask == "per-key":
        mask = topw_key_blocks(score, a.L // 2)
    elif a.mask == "all-true":  # a per-key mask keeping every key: the mask path's own cost
        mask = torch.ones(a.B, H_kv, 1, a.L, device="cuda", dtype=torch.bool)
    elif a.mask == "per-query":
        mask = topw_row_blocks(score, a.L // 2, a.L, causal=a.causal)
    bias = None
    if a.bias == "per-key":
        bias = score.to(dt).unsqueeze(2)
    elif a.bias == "per-query":
        bias = torch.randn(a.B, H_kv, a.L, a.L, device="cuda", dtype=dt)
    with torch.inference_mode():
        for _ in range(a.reps):
            flash_dmattn.flash_dmattn_func(q=q, k=k, v=v, attn_mask=mask, attn_bias=bias, is_causal=a.causal)
    torch.cuda.synchronize()
    print(f"ran {a.reps} forward calls: B={a.B} L={a.L} H={a.H} H_kv={H_kv} D={a.D} causal={a.causal} "
          f"mask={a.mask} bias={a.bias}")


if __name__ == "__main__":
    main()
