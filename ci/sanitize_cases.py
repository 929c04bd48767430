"""Calls that reach every CUDA kernel of libdmattn, for compute-sanitizer (ci/sanitize.sh runs this
under memcheck, racecheck and synccheck).

  python ci/sanitize_cases.py [--list-kernels FILE] [--head-dims 64,128]

Each case runs forward (and backward where it says so) on small bf16 problems with ragged lengths:
the tile-plan builder (per-query and per-key masks), the forward with and without mask and bias,
causal with Q != K, GQA, a fully masked row, decode through split-KV and its combine, and every
backward kernel (prep_rows, schedule, clear_slots, the step kernel, finish_columns, convert_dq,
reduce_dbias, class_map) with and without mask and bias, deterministic or not. Outputs are checked
to be finite, so a kernel that reads garbage fails here too. With --list-kernels, the names of the
kernels launched (from torch.profiler, run once without the sanitizer) go to FILE, and the script
exits 1 if any kernel of EXPECTED was not reached.
"""
from __future__ import annotations

import argparse
import sys

import torch

import flash_dmattn

# Every __global__ function in src/ that a public call can launch (image_probe_kernel runs once when
# the family library loads).
EXPECTED = ("fwd_kernel", "bwd_kernel", "build_tile_plan_kernel", "combine_splits_kernel", "prep_rows_kernel",
            "schedule_kernel", "clear_slots_kernel", "finish_columns_kernel", "convert_dq_kernel",
            "reduce_dbias_kernel", "class_map_kernel")


def rand(*shape, grad=False, dtype=torch.bfloat16):
    return torch.randn(*shape, device="cuda", dtype=dtype).requires_grad_(grad)


def case(B, Q, K, H, H_kv, D, *, mask=None, bias=None, causal=False, backward=False, deterministic=False,
         bias_grad=False, empty_row=False):
    q, k, v = rand(B, Q, H, D, grad=backward), rand(B, K, H_kv, D, grad=backward), rand(B, K, H_kv, D, grad=backward)
    m = None
    if mask == "row":
        m = torch.rand(B, 1, Q, K, device="cuda") < 0.3
    elif mask == "key":
        m = torch.rand(B, H_kv, 1, K, device="cuda") < 0.3
    if m is not None and empty_row:
        m[:, :, :1] = False  # a row that keeps nothing (per-query mask) or a key nobody keeps
    b = None
    if bias == "key":
        b = rand(B, H_kv, 1, K, grad=bias_grad)
    elif bias == "full":
        b = rand(1, H, Q, K, grad=bias_grad)
    out = flash_dmattn.flash_dmattn_func(q, k, v, attn_mask=m, attn_bias=b, is_causal=causal,
                                         deterministic=deterministic)
    if backward:
        wrt = [q, k, v] + ([b] if b is not None and bias_grad else [])
        grads = torch.autograd.grad(out, wrt, torch.randn_like(out))
        assert all(torch.isfinite(g.float()).all() for g in grads), "non-finite gradient"
    assert torch.isfinite(out.float()).all(), "non-finite output"


def cases(head_dims):
    for D in head_dims:
        case(2, 77, 131, 4, 2, D)                                                  # dense, ragged, GQA
        case(1, 200, 150, 4, 4, D, causal=True)                                    # causal, Q > K
        case(2, 130, 190, 4, 2, D, mask="row", bias="key", causal=True, empty_row=True)
        case(1, 70, 300, 4, 1, D, mask="key", bias="full", causal=True)            # per-key mask, MQA
        case(1, 1, 20000, 8, 2, D)                                                 # decode: split-KV + combine
        case(1, 5, 3000, 8, 2, D, mask="key", causal=True)                         # short-query tile
        case(2, 100, 140, 4, 2, D, backward=True, causal=True)                     # dense backward
        case(1, 150, 170, 4, 2, D, mask="row", bias="key", bias_grad=True, backward=True, causal=True,
             empty_row=True)                                                       # masked, dbias reduced
        case(1, 130, 150, 4, 4, D, mask="key", bias="full", bias_grad=True, backward=True, deterministic=True)
    torch.cuda.synchronize()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--head-dims", default="64,128")
    ap.add_argument("--list-kernels", default=None)
    args = ap.parse_args()
    head_dims = [int(d) for d in args.head_dims.split(",")]
    torch.manual_seed(0)
    if not args.list_kernels:
        cases(head_dims)
        print(f"sanitize_cases: every case ran (head dims {head_dims})")
        return 0
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        cases(head_dims)
    names = sorted({e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA})
    ours = [n for n in names if "dmattn" in n]
    with open(args.list_kernels, "w") as f:
        f.write("\n".join(ours) + "\n")
    missing = [k for k in EXPECTED if not any(k + "<" in n or k + "(" in n for n in ours)]
    print(f"sanitize_cases: {len(ours)} distinct dmattn kernels launched; not reached: {missing or 'none'}")
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
