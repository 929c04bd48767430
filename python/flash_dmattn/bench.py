# `python -m flash_dmattn bench`: a quick forward-timing table, our backends next to PyTorch SDPA.
# CLI (__main__.py) -> here -> each available backend's callable and SDPA on the same inputs.
# Invariant: a backend that cannot run is reported in the table, never crashes the run; speed is
# only printed, never asserted. The real benchmarks live in benchmarks/.
"""Side-by-side forward timing on the available device.

GPU: every available flash-dmattn backend against SDPA, forced to its flash backend and left to its
own choice, timed with CUDA events. CPU: the reference against SDPA's math backend, timed with
perf_counter, at small sizes. With fewer kv heads than query heads (GQA), SDPA gets k and v with
their own H_kv heads and ``enable_gqa=True``, as a user with GQA calls it, never heads repeated to H.
Each entry: median of the timed runs after warm-up, TFLOP/s counted as 4*B*H*Q*K*D (halved for
causal, dense: no mask, so every element is kept), and for SDPA the backend that ran (profiled once,
see sdpa_backend_ran).
"""
from __future__ import annotations

import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

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
    sdpa_backend: Optional[str] = None  # SDPA entries: the backend that ran (sdpa_backend_ran)


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


# SDPA's backends as the names of the aten ops it dispatches to (aten::_scaled_dot_product_cudnn_attention,
# _flash_attention[_for_cpu], _efficient_attention, _attention_math[_for_mps], _fused_attention_overrideable)
# and of their autograd nodes (ScaledDotProductCudnnAttentionBackward0, ...), lower-cased, no underscores.
_SDPA_OP_BACKENDS = ("cudnn", "flash", "efficient", "math", "overrideable")
# Kernel names, when no op name says it (checked in this order: cuDNN's SDPA kernels are named like
# cudnn_generated_fort_native_sdpa_sm90_flash_fprop_..., so "cudnn" must win over "flash").
_SDPA_KERNEL_BACKENDS = (("cudnn", ("cudnn", "fort_native_sdpa")),
                         ("flash", ("pytorch_flash", "flash_fwd", "flash_bwd")),
                         ("efficient", ("fmha_cutlass", "memeffattention", "mem_eff", "efficient_attention")))
# The math backend is a composite of matrix products and a softmax: cuBLAS kernels (sm90_xmma_gemm_...,
# nvjet_..., ampere_..._gemm, cutlass gemm), torch's softmax, or on CPU the ops themselves.
_MATH_MARKS = ("gemm", "xmma", "nvjet", "softmax", "aten::bmm", "aten::matmul", "aten::baddbmm")


def sdpa_backend_from_names(ops: Sequence[str], kernels: Sequence[str] = ()) -> str:
    """Which SDPA backend ran, from the op names (in order) and kernel names of one profiled call:
    "cudnn", "flash", "efficient", "math" or "overrideable"; "unknown: <first kernel>" when neither
    names one. The op SDPA dispatched to decides; kernel names only when no op names a backend."""
    for name in ops:
        flat = name.lower().replace("_", "")
        if "scaleddotproduct" in flat:
            tail = flat.split("scaleddotproduct", 1)[1]
            for backend in _SDPA_OP_BACKENDS:
                if backend in tail:
                    return backend
    for name in kernels:
        low = name.lower()
        for backend, marks in _SDPA_KERNEL_BACKENDS:
            if any(m in low for m in marks):
                return backend
    if any(m in name.lower() for name in (*kernels, *ops) for m in _MATH_MARKS):
        return "math"
    return f"unknown: {kernels[0][:100]}" if kernels else "unknown: no kernel recorded"


def sdpa_backend_ran(fn: Callable[[], object], device: torch.device) -> str:
    """The SDPA backend one call of fn runs (sdpa_backend_from_names over a torch.profiler trace of
    it, CUDA kernels included on a GPU). Run it apart from the timed calls: the profiler's hooks
    cost host time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with warnings.catch_warnings():  # "Profiler clears events at the end of each cycle": one cycle here
        warnings.filterwarnings("ignore", message=".*clears events at the end of each cycle")
        with profile(activities=activities) as prof:
            fn()
            if cuda:
                torch.cuda.synchronize()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    ops = [e.name for e in events if e.device_type == DeviceType.CPU]
    kernels = [e.name for e in events if e.device_type == DeviceType.CUDA]
    kernels += [k.name for e in events for k in getattr(e, "kernels", ()) if k.name not in kernels]
    return sdpa_backend_from_names(ops, kernels)


def _candidates(device: torch.device, causal: bool):
    """[(name, fn(q, k, v) or None, reason)] for this device; q/k/v in (B, L, H, D)."""
    from .api import flash_dmattn_func
    from .backends import backend_status, flex_dmattn_func, reference_dmattn_func

    def sdpa(backend: Optional[SDPBackend]):
        """SDPA over (B, H, L, D) q and (B, H_kv, L, D) k, v: enable_gqa maps the query heads onto
        the kv heads (a no-op when H = H_kv); backend None leaves the choice to SDPA."""
        def run(q, k, v):
            if backend is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
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
    return rows + [("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION), None), ("sdpa-default", sdpa(None), None)]


def run(seqlens=None, heads=None, head_dim=None, batch=None, causal=False, dtype=None,
        warmup=None, reps=None, device=None, out=None, kv_heads=None) -> list[Result]:
    """Run the comparison and print the table to `out` (stdout). Returns the results. kv_heads
    (default: heads) below heads is GQA: it must divide heads."""
    out = out or sys.stdout
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    defaults = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    seqlens = tuple(seqlens or defaults[0])
    heads, head_dim, batch = heads or defaults[1], head_dim or defaults[2], batch or defaults[3]
    kv_heads = kv_heads or heads
    if heads % kv_heads:
        raise ValueError(f"kv_heads={kv_heads} must divide heads={heads}")
    dtype_name = dtype or defaults[4]
    warmup = defaults[5] if warmup is None else warmup
    reps = defaults[6] if reps is None else reps
    torch_dtype = DTYPES[dtype_name]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

    candidates = _candidates(device, causal)
    print(f"flash-dmattn forward bench on {name}: batch={batch} heads={heads} head_dim={head_dim} "
          f"dtype={dtype_name} causal={causal} kv_heads={kv_heads} (median of {reps} after {warmup} warm-up)",
          file=out)
    bar = ProgressBar(len(seqlens) * len(candidates))
    results = []
    for L in seqlens:
        gen = torch.Generator(device=device).manual_seed(L)
        q, k, v = (torch.randn(batch, L, h, head_dim, device=device, dtype=torch_dtype, generator=gen)
                   for h in (heads, kv_heads, kv_heads))
        bhld = tuple(t.transpose(1, 2).contiguous() for t in (q, k, v))  # SDPA's layout, kv heads kept
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
            ran = None
            if cand.startswith("sdpa"):
                with torch.inference_mode():
                    ran = sdpa_backend_ran(lambda: fn(*args), device)
            results.append(Result(L, cand, ms, tf, sdpa_backend=ran))
    _print_table(results, out)
    return results


def _print_table(results: list[Result], out) -> None:
    print(f"{'seqlen':>7}  {'backend':<12} {'time (ms)':>10} {'TFLOP/s':>9}  status", file=out)
    for r in results:
        ms = f"{r.ms:10.3f}" if r.ms is not None else f"{'-':>10}"
        tf = f"{r.tflops:9.4g}" if r.tflops is not None else f"{'-':>9}"
        status = r.status if len(r.status) <= 100 else r.status[:97] + "..."
        if r.sdpa_backend:
            status += f" (SDPA ran {r.sdpa_backend})"
        print(f"{r.seqlen:>7}  {r.name:<12} {ms} {tf}  {status}", file=out)
