"""Timing for the benchmarks: CUDA events around each run, the L2 cache flushed before every run
(an H100's 50 MB L2 would otherwise hold a small problem's inputs), median of the runs."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

_L2_FLUSH_BYTES = 256 << 20  # several times any current L2
_flush_buffer: torch.Tensor | None = None


def _flush_l2() -> None:
    global _flush_buffer
    if _flush_buffer is None:
        _flush_buffer = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    _flush_buffer.zero_()


def median_ms(fn: Callable[[], object], warmup: int = 3, reps: int = 10, cold_l2: bool = True) -> float:
    """Median time of fn() in milliseconds (CUDA events on a GPU, perf_counter on the CPU)."""
    for _ in range(warmup):
        fn()
    if not torch.cuda.is_available():
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        if cold_l2:
            _flush_l2()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
