"""Where the host time of a forward + backward call goes: torch.profiler's CPU view (ops, CUDA
runtime calls, the autograd engine) and cProfile's Python view, over calls queued behind a GPU sleep
so the host never waits for the GPU.

  python benchmarks/profile_host.py [--L 32768] [--H 2] [--H_kv 1] [--D 64] [--w 1024] [--calls 50]

The default is issue 4's sparse row (B=1, per-key top-1024 mask, causal). bench_overhead.py times
each layer of the path on a tiny problem; this script says which calls inside a layer cost it.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_masks import topw_key_blocks  # noqa: E402

import flash_dmattn  # noqa: E402


def host_us(fn, calls: int) -> float:
    """Host microseconds per fn() over `calls` calls queued behind a GPU sleep longer than their host
    work, so the host never waits for the GPU."""
    torch.cuda._sleep(int(2e9))
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    per = (time.perf_counter() - t0) / calls
    torch.cuda.synchronize()
    return per * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--L", type=int, default=32768)
    ap.add_argument("--B", type=int, default=1)
    ap.add_argument("--H", type=int, default=2)
    ap.add_argument("--H_kv", type=int, default=1)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--w", type=int, default=1024, help="keys kept per row (0: no mask)")
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("profile_host.py needs a CUDA GPU")
    dt = torch.bfloat16
    q = torch.randn(a.B, a.L, a.H, a.D, device="cuda", dtype=dt, requires_grad=True)
    k, v = (torch.randn(a.B, a.L, a.H_kv, a.D, device="cuda", dtype=dt, requires_grad=True) for _ in range(2))
    mask = topw_key_blocks(torch.randn(a.B, a.H_kv, a.L, device="cuda"), a.w) if a.w else None
    dout = torch.randn_like(q)

    def call():
        out = flash_dmattn.flash_dmattn_func(q=q, k=k, v=v, attn_mask=mask, is_causal=True)
        torch.autograd.grad(out, (q, k, v), dout)

    for _ in range(10):
        call()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(a.calls):
        call()
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / a.calls

    host = host_us(call, a.calls)
    print(f"B={a.B} L={a.L} H={a.H} H_kv={a.H_kv} D={a.D} w={a.w} causal: {wall * 1e6:.1f} us per forward + "
          f"backward end to end, {host:.1f} us of host time per call (queued behind a GPU sleep)")

    torch.cuda._sleep(int(2e9))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(a.calls):
            call()
    torch.cuda.synchronize()
    print(f"\ntorch.profiler, CPU, {a.calls} calls (times include the profiler's own overhead):")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40, max_name_column_width=60))

    # cProfile sees the calling thread only; autograd runs the backward on its device thread, so the
    # backward op is also called directly, with what the forward saved.
    scale = a.D ** -0.5
    with torch.no_grad():
        out, lse, plan = torch.ops.flash_dmattn.fwd(q, k, v, mask, None, scale, True, 0.0, False)

    def bwd_op():
        torch.ops.flash_dmattn.bwd(dout, q, k, v, mask, None, out, lse, scale, True, 0.0, False, False, plan)

    for name, fn in (("forward + backward (main thread: the forward and autograd's hand-off)", call),
                     ("the bwd op alone, as autograd calls it", bwd_op)):
        per = host_us(fn, a.calls)
        torch.cuda._sleep(int(2e9))
        pr = cProfile.Profile()
        pr.enable()
        for _ in range(a.calls):
            fn()
        pr.disable()
        torch.cuda.synchronize()
        s = io.StringIO()
        pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
        print(f"\ncProfile of {name}: {per:.1f} us of host time per call without the profiler; "
              f"{a.calls} calls, by own time:")
        print(s.getvalue())


if __name__ == "__main__":
    main()
