# `python -m flash_dmattn bench`: a quick forward-timing table, our backends next to PyTorch SDPA.
# CLI (__main__.py) -> here -> each available backend's callable and SDPA on the same inputs.
# Invariant: a backend that cannot run is reported in the table, never crashes the run; speed is
# only printed, never asserted. The real benchmarks live in benchmarks/.
"""Side-by-side forward timing on the available device.

GPU: every available flash-dmattn backend against SDPA's flash backend, timed with CUDA events.
CPU: the reference against SDPA's math backend, timed with perf_counter, at small sizes.
Each entry: median of the timed runs after warm-up, and TFLOP/s counted as 4*B*H*Q*K*D (halved
for causal, dense: no mask, so every element is kept).
"""
from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# Defaults per device: (seqlens, heads, head_dim, batch, dtype, warm-up runs, timed runs).
GPU_DEFAULTS = ((1024, 2048, 4096), 16, 128, 2, "bf16", 3, 10)
CPU_DEFAULTS = ((128, 256), 4, 64, 1, "fp32", 1, 3)


@dataclass
class Result:
    seqlen: int
    name: str
    ms: Optional[float] = None
    tflops: Optional[float] = None
    status: str = "ok"


class ProgressBar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, one line per step otherwise)."""

    def __init__(self, total: int, width: int = 30, stream=None):
        self.total, self.width, self.done = max(1, total), width, 0
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def step(self, label: str) -> None:
        self.done += 1
        filled = self.width * self.done // self.total
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"[{bar}] {self.done}/{self.total} {label}"
        self.stream.write(("\r" + line.ljust(78)) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def flops(batch: int, heads: int, q_len: int, k_len: int, head_dim: int, causal: bool) -> float:
    """Forward FLOPs of dense attention: two matmuls of 2*B*H*Q*K*D each, half of them if causal."""
    total = 4.0 * batch * heads * q_len * k_len * head_dim
    return total / 2 if causal else total


_HOST_AHEAD_CYCLES = 4_000_000  # ~2-3 ms of GPU clock: longer than the host path of any call timed


def time_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    """Median milliseconds of fn() after `warmup` untimed calls. fn may also be a sequence of
    callables, run in turn (each warmed up once at least): copies of the inputs rotated so that no
    timed run finds its inputs in L2 from the run before (benchmarks/perf.py makes them).

    On CUDA this is GPU time: each run is queued behind a short GPU sleep (outside the timed events),
    so the host has launched all of fn's kernels before the GPU reaches them and a slow host path
    does not leave gaps between them. The host path's own cost is benchmarks/bench_overhead.py's."""
    fns = list(fn) if isinstance(fn, (list, tuple)) else [fn]
    for i in range(max(warmup, len(fns))):
        fns[i % len(fns)]()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(reps):
            torch.cuda._sleep(_HOST_AHEAD_CYCLES)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[i % len(fns)]()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for i in range(reps):
            t0 = time.perf_counter()
            fns[i % len(fns)]()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _candidates(device: torch.device, causal: bool):
    """[(name, fn(q, k, v) or None, reason)] for this device; q/k/v in (B, L, H, D)."""
    from .api import flash_dmattn_func
    from .backends import backend_status, flex_dmattn_func, reference_dmattn_func

    def sdpa(backend: SDPBackend):
        def run(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return run

    if device.type != "cuda":
        return [("reference", lambda q, k, v: reference_dmattn_func(q, k, v, is_causal=causal), None),
                ("sdpa-math", sdpa(SDPBackend.MATH), None)]
    ours = {
        "cuda": lambda q, k, v: flash_dmattn_func(q, k, v, is_causal=causal),
        "flex": lambda q, k, v: flex_dmattn_func(q, k, v, is_causal=causal),
        "reference": lambda q, k, v: reference_dmattn_func(q, k, v, is_causal=causal),
    }
    status = backend_status()
    rows = [(name, ours.get(name) if reason is None else None, reason)
            for name, reason in status.items()]
    return rows + [("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION), None)]


def run(seqlens=None, heads=None, head_dim=None, batch=None, causal=False, dtype=None,
        warmup=None, reps=None, device=None, out=None) -> list[Result]:
    """Run the comparison and print the table to `out` (stdout). Returns the results."""
    out = out or sys.stdout
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    seqlens = tuple(seqlens or defaults[0])
    heads, head_dim, batch = heads or defaults[1], head_dim or defaults[2], batch or defaults[3]
    dtype_name = dtype or defaults[4]
    warmup = defaults[5] if warmup is None else warmup
    reps = defaults[6] if reps is None else reps
    torch_dtype = DTYPES[dtype_name]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    candidates = _candidates(device, causal)
    print(f"flash-dmattn forward bench on {name}: batch={batch} heads={heads} head_dim={head_dim} "
          f"dtype={dtype_name} causal={causal} (median of {reps} after {warmup} warm-up)", file=out)
    bar = ProgressBar(len(seqlens) * len(candidates))
    results = []
    for L in seqlens:
        gen = torch.Generator(device=device).manual_seed(L)
        q, k, v = (torch.randn(batch, L, heads, head_dim, device=device, dtype=torch_dtype,
                               generator=gen) for _ in range(3))
        bhld = tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))  # SDPA's layout
        for cand, fn, reason in candidates:
            bar.step(f"L={L} {cand}")
            if fn is None:
                results.append(Result(L, cand, status=f"unavailable: {reason}"))
                continue
            args = bhld if cand.startswith("sdpa") else (q, k, v)
            try:
                with torch.inference_mode():
                    ms = time_ms(lambda: fn(*args), device, warmup, reps)
            except NotImplementedError as exc:
                results.append(Result(L, cand, status=f"not implemented: {exc}"))
                continue
            except (TypeError, ValueError) as exc:  # a configuration this backend does not take
                results.append(Result(L, cand, status=f"unsupported: {exc}"))
                continue
            except RuntimeError as exc:
                results.append(Result(L, cand, status=f"failed: {exc}"))
                continue
            tf = flops(batch, heads, L, L, head_dim, causal) / (ms * 1e-3) / 1e12
            results.append(Result(L, cand, ms, tf))
    _print_table(results, out)
    return results


def _print_table(results: list[Result], out) -> None:
    print(f"{'seqlen':>7}  {'backend':<11} {'time (ms)':>10} {'TFLOP/s':>9}  status", file=out)
    for r in results:
        ms = f"{r.ms:10.3f}" if r.ms is not None else f"{'-':>10}"
        tf = f"{r.tflops:9.4g}" if r.tflops is not None else f"{'-':>9}"
        status = r.status if len(r.status) <= 100 else r.status[:97] + "..."
        print(f"{r.seqlen:>7}  {r.name:<11} {ms} {tf}  {status}", file=out)
