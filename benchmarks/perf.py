"""Shared machinery of forward_performance.py and backward_performance.py.

- Timing: the median of CUDA-event timings after warm-up (flash_dmattn.bench.time_ms), with the
  inputs rotated: enough copies of everything a call reads that their total is three times the L2
  cache, used in turn, so no timed run finds its inputs left in L2 by the run before.
- Work: TFLOP/s on kept (query, key) pairs (the useful work) and on computed tiles (every 128 x 64
  tile holding a kept pair, counted whole: what a kernel that skips empty tiles at our granularity
  must compute). Dense peers compute every tile causal attention touches.
- Peak memory: what one call allocates beyond its inputs (torch's allocator).
- Peers at their best: SDPA gets k and v with their own H_kv heads and enable_gqa=True, FlexAttention
  enable_gqa=True, never K/V heads repeated to H. An SDPA row records the backends it was allowed
  (sdpa_backends: one forced, or "default" for SDPA's own choice), the one that ran (sdpa_backend,
  from one profiled call) and gqa ("native" where H != H_kv).
- Rows: one dict per (config, system) with the figures above, the measured density and a note;
  a system that cannot run a config gets a row with no time and the reason.
- Output: a compact table on stdout as rows arrive, JSON with every figure and the machine facts,
  a markdown table, and PNG plots (time vs sequence length per system, speedup vs density).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparse_masks import density, kept_pairs, topw_key_blocks, topw_row_blocks  # noqa: E402

import flash_dmattn  # noqa: E402
from flash_dmattn.bench import ProgressBar, sdpa_backend_ran, time_ms  # noqa: E402

DT = torch.bfloat16
DEVICE = "cuda"  # the tests run the machinery on "cpu" at toy sizes
TILE_Q, TILE_K = 128, 64  # the granularity our kernels skip work at (query rows x keys)
FLOPS_PER_PAIR_D = {"forward": 4, "backward": 10, "forward+backward": 14}  # 2 (4, 6) matmuls of 2 D flops
ROTATION_L2_MULTIPLE = 3
MAX_COPIES = 64
WARMUP, REPS = 3, 20
PEERS = ("schedule", "dense", "sdpa-flash", "sdpa-default", "sdpa-mask", "flex")  # what masked_case can add
# --only's names for sets of groups (each script adds its own): "gqa" is the groups with an SDPA peer on
# a GQA shape (H != H_kv), the ones whose SDPA numbers changed when SDPA got its K/V heads unrepeated.
GQA_ALIAS = "gqa"
SKIPPED_PEERS: set[str] = set()  # --skip: peers left out of masked_case (quick A/B runs of our kernels)


# ---- inputs --------------------------------------------------------------------------------------

def randn(shape, seed, requires_grad=False):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    return torch.randn(*shape, device=DEVICE, dtype=DT, generator=g).requires_grad_(requires_grad)


def qkv(B, Q, K, H, H_kv, D, seed=0, requires_grad=False):
    return tuple(randn((B, n, h, D), seed + i, requires_grad) for i, (n, h) in enumerate(((Q, H), (K, H_kv), (K, H_kv))))


def key_score(B, H_kv, K, seed=1):
    """The per-key score a dynamic mask ranks by (seeded: the same blocks every run)."""
    return torch.randn(B, H_kv, K, device=DEVICE, generator=torch.Generator(device=DEVICE).manual_seed(seed))


def topw_mask(score, w, Q, form):
    """Keep-mask of the top-w keys as whole 64-key blocks: per (batch, kv head) for form "key"
    ((B, H_kv, 1, K), O(K)), per row among the keys it may see for form "row" ((B, H_kv, Q, K))."""
    return topw_key_blocks(score, w) if form == "key" else topw_row_blocks(score, w, Q, causal=True)


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def copies_for(total_bytes: int) -> int:
    """How many copies of inputs of this size make three times the L2 cache (at least 1)."""
    l2 = getattr(torch.cuda.get_device_properties(0), "L2_cache_size", 50 << 20) if torch.cuda.is_available() else 50 << 20
    return max(1, min(MAX_COPIES, math.ceil(ROTATION_L2_MULTIPLE * l2 / max(1, total_bytes))))


def rotated(make: Callable[[tuple], Callable], inputs: Sequence, shared: Sequence = ()) -> list[Callable]:
    """[make(inputs), make(copy 1 of inputs), ...]: one callable per copy, enough copies of `inputs`
    (plus the `shared` tensors, read by every copy, counted once) to exceed L2 three times over.
    Copies keep requires_grad, so a backward through them is a backward through fresh leaves."""
    n = copies_for(nbytes(*inputs) + nbytes(*shared))
    sets = [tuple(inputs)]
    for _ in range(n - 1):
        sets.append(tuple(t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
                          for t in inputs))
    return [make(s) for s in sets]


# ---- work counts ---------------------------------------------------------------------------------

def computed_pairs(mask: Optional[torch.Tensor], B: int, H: int, Q: int, K: int, causal: bool) -> int:
    """(query, key) pairs in the TILE_Q x TILE_K tiles holding at least one kept pair, each tile
    counted whole within the Q x K matrix, summed over B x H query heads (the mask broadcasts over
    batch and heads)."""
    nq, nk = -(-Q // TILE_Q), -(-K // TILE_K)
    offset = K - Q
    device = mask.device if mask is not None else "cpu"
    qt = torch.arange(nq, device=device)
    last_row = torch.clamp((qt + 1) * TILE_Q - 1, max=Q - 1)
    limit = (last_row + offset) if causal else torch.full_like(qt, K - 1)      # last key a tile may see
    if mask is None:
        active = torch.zeros(nq, nk, dtype=torch.bool, device=device)
        active |= (torch.arange(nk, device=device) * TILE_K)[None, :] <= limit[:, None]
        return tile_area(active, Q, K) * B * H
    m = mask.bool()
    mb, mh = m.shape[0], m.shape[1]
    if m.shape[-2] == 1:
        per_key = m[:, :, 0, :].long()
        prefix = F.pad(per_key.cumsum(-1), (1, 0))                                 # (mb, mh, K + 1)
        start = torch.arange(nk, device=device) * TILE_K
        stop = torch.minimum(start + TILE_K, (limit[:, None] + 1).clamp(min=0))   # (nq, nk)
        stop = torch.maximum(stop, start)
        count = prefix[..., stop.flatten()] - prefix[..., start.repeat(nq)]
        area = tile_area((count > 0).unflatten(-1, (nq, nk)), Q, K)
    else:
        area = 0
        rows_per_chunk = TILE_Q * max(1, (1 << 28) // max(1, mb * mh * K * TILE_Q))
        cols = torch.arange(K, device=device)
        for r0 in range(0, Q, rows_per_chunk):
            chunk = m[:, :, r0:r0 + rows_per_chunk, :]
            if causal:
                rows = torch.arange(r0, r0 + chunk.shape[2], device=device)
                chunk = chunk & (cols[None, :] <= rows[:, None] + offset)
            chunk = F.pad(chunk, (0, nk * TILE_K - K, 0, (-chunk.shape[2]) % TILE_Q))
            active = chunk.unflatten(3, (nk, TILE_K)).unflatten(2, (-1, TILE_Q)).any(-1).any(3)
            area += tile_area(active, Q - r0, K)
    return area * (B // mb) * (H // mh)


def tile_area(active: torch.Tensor, Q: int, K: int) -> int:
    """Pairs inside the active tiles (..., query tiles, key tiles), tiles clipped to Q x K."""
    nq, nk = active.shape[-2], active.shape[-1]
    rows = torch.clamp(Q - torch.arange(nq, device=active.device) * TILE_Q, 0, TILE_Q)
    cols = torch.clamp(K - torch.arange(nk, device=active.device) * TILE_K, 0, TILE_K)
    return int((active.long() * rows[:, None] * cols[None, :]).sum())


def tflops(pairs: int, head_dim: int, ms: Optional[float], mode: str) -> Optional[float]:
    return FLOPS_PER_PAIR_D[mode] * head_dim * pairs / (ms * 1e-3) / 1e12 if ms else None


# ---- measuring -----------------------------------------------------------------------------------

def peak_mb(fn: Callable) -> Optional[float]:
    """MB one call allocates beyond what was allocated before it (torch's caching allocator; None
    off CUDA)."""
    if DEVICE != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def failure(exc: BaseException) -> str:
    """A one-line reason for a row whose system could not run."""
    if isinstance(exc, torch.OutOfMemoryError):
        torch.cuda.empty_cache()
        return f"out of memory: {str(exc)[:80]}"
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first[:120]}"


def measure(fns: Callable[[], Sequence[Callable]], *, inference: bool, warmup: Optional[int] = None,
            reps: Optional[int] = None, probe: Optional[Callable[[Callable], object]] = None):
    """(median ms, peak MB, "", probe(first callable) or None) over the callables fns() makes
    (rotated copies; making them may record forwards), or (None, None, reason, None) when the system
    cannot run the configuration: a missing kernel or a peer's limit is a result, not a crash. The
    probe runs after the timed calls, so what it costs (a profiler) is not timed."""
    try:
        with torch.inference_mode(inference):
            made = list(fns())
            ms = time_ms(made, torch.device(DEVICE), WARMUP if warmup is None else warmup, REPS if reps is None else reps)
            mem = peak_mb(made[0])
            probed = probe(made[0]) if probe is not None else None
        return ms, mem, "", probed
    except Exception as exc:  # noqa: BLE001 - any peer failure is reported in its row
        return None, None, failure(exc), None


def row(group, config, system, ms, *, mode, D, kept, computed, dens, mem=None, note="", **extra):
    r = {"group": group, "config": config, "system": system, "mode": mode, "ms": ms,
         "tflops": tflops(kept, D, ms, mode), "tflops_computed": tflops(computed, D, ms, mode),
         "peak_mb": mem, "density": dens, "note": note}
    r.update(extra)
    return r


def sparse_bounds(rows, factor: float, with_schedule: bool, min_density: float = 0.0) -> list[dict]:
    """Notes on each "ours sparse" row the issue's bound: factor x density x our dense causal time
    (the same config's "ours dense causal" row, else the group's first), plus the schedule build (the
    config's "ours schedule only" row) when with_schedule. A row below min_density (where the issue
    sets no such bound) or lacking what its bound needs gets none."""
    groups_dense = {}
    for r in rows:
        if r["system"] == "ours dense causal" and r["ms"]:
            groups_dense.setdefault(r["group"], r["ms"])
    dense = {(r["group"], r["config"]): r["ms"] for r in rows if r["system"] == "ours dense causal" and r["ms"]}
    schedule = {(r["group"], r["config"]): r["ms"] for r in rows if r["system"].startswith("ours schedule") and r["ms"]}
    for r in rows:
        key = (r["group"], r["config"])
        d = dense.get(key, groups_dense.get(r["group"]))
        if (r["system"] != "ours sparse" or not r["ms"] or d is None or (with_schedule and key not in schedule)
                or r["density"] < min_density):
            continue
        bound = factor * r["density"] * d + (schedule[key] if with_schedule else 0.0)
        r["bound_ms"] = bound
        r["note"] = (r["note"] + f" bound {bound:.3f} ms: {'within' if r['ms'] <= bound else 'OVER'}").strip()
    return rows


# ---- systems -------------------------------------------------------------------------------------

def ours(mask=None, bias=None, causal=False):
    """make(inputs) for flash_dmattn_func over (q, k, v)."""
    return lambda t: (lambda: flash_dmattn.flash_dmattn_func(q=t[0], k=t[1], v=t[2], attn_mask=mask, attn_bias=bias,
                                                             is_causal=causal))


SDPA_NAMES = {SDPBackend.FLASH_ATTENTION: "flash", SDPBackend.EFFICIENT_ATTENTION: "efficient",
              SDPBackend.CUDNN_ATTENTION: "cudnn", SDPBackend.MATH: "math"}


def sdpa(backends=None, attn_mask=None, causal=False):
    """make(inputs) for SDPA over (q, k, v) in its layout (sdpa_layout: k and v keep their H_kv heads),
    with enable_gqa=True: SDPA maps query head h to kv head h // (H / H_kv) itself, as a user with GQA
    calls it (a no-op where H = H_kv). Under sdpa_kernel(backends), or SDPA's own choice for None.
    make.sdpa_backends names what it may run ("flash", "cudnn,efficient", "default"); timed() records
    it and the backend that ran."""
    def make(t):
        def call():
            return F.scaled_dot_product_attention(t[0], t[1], t[2], attn_mask=attn_mask, is_causal=causal,
                                                  enable_gqa=True)
        if backends is None:
            return call

        def run():
            with sdpa_kernel(backends):
                return call()
        return run
    listed = [] if backends is None else list(backends) if isinstance(backends, (list, tuple)) else [backends]
    make.sdpa_backends = ",".join(SDPA_NAMES[b] for b in listed) or "default"
    return make


def sdpa_layout(q, k, v):
    """(B, L, H, D) -> SDPA's (B, H, L, D), each with its own heads: k and v keep H_kv (outside any
    timed call)."""
    return tuple(t.detach().transpose(1, 2).contiguous().requires_grad_(t.requires_grad) for t in (q, k, v))


def float_mask(keep, bias, H, Q, K, causal=True):
    """SDPA's additive mask for (keep, bias, causal), in bf16: (B, 1, Q, K) when keep and bias have
    one kv head (SDPA broadcasts it over the query heads), else (B, H, Q, K). SDPA's attn_mask has a
    head axis of 1 or H, and no stride maps query head h to kv head h // (H / H_kv), so a mask with
    content per kv head is repeated to the H query heads (repeated_mask_note says so in the row)."""
    B, mask_heads = keep.shape[0], max(keep.shape[1], bias.shape[1])
    m = bias.detach().expand(B, mask_heads, Q, K).to(DT).clone()
    allowed = keep.expand(B, mask_heads, Q, K)
    if causal:
        rows = torch.arange(Q, device=keep.device)[:, None]
        allowed = allowed & (torch.arange(K, device=keep.device)[None, :] <= rows + K - Q)
    m.masked_fill_(~allowed, float("-inf"))
    return m if mask_heads in (1, H) else m.repeat_interleave(H // mask_heads, dim=1)


def repeated_mask_note(mask_heads: int, H: int) -> str:
    """The note of an SDPA row whose float mask had to be repeated from mask_heads to H heads."""
    if mask_heads in (1, H):
        return ""
    return (f"float mask repeated from {mask_heads} kv heads to H={H} (SDPA's attn_mask takes 1 or H heads; "
            f"K/V stay at {mask_heads})")


_compiled_flex = None


def flex(keep, bias, causal, B, H, Q, K):
    """FlexAttention with the keep-mask as a BlockMask and the bias captured by a score_mod:
    (make(inputs) over (B, H, L, D) q/k/v views, BlockMask build ms). The build is timed apart: a
    dynamic mask is rebuilt every step."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    group = H // keep.shape[1]
    km = keep[:, :, 0, :] if keep.shape[2] == 1 else None

    def mask_mod(b, h, qi, kj):
        kept = km[b, h // group, kj] if km is not None else keep[b, h // group, qi, kj]
        return kept & (kj <= qi + K - Q) if causal else kept

    build = lambda: create_block_mask(mask_mod, B, H, Q, K, device=DEVICE)  # noqa: E731
    build_ms, *_ = measure(lambda: [build], inference=True, warmup=1, reps=3)
    try:
        block_mask = build()
    except Exception as exc:  # noqa: BLE001 - say which step failed
        raise RuntimeError(f"BlockMask build failed: {failure(exc)}") from exc
    bgroup = H // bias.shape[1]

    def score_mod(score, b, h, qi, kj):
        return score + bias[b, h // bgroup, 0, kj]

    if _compiled_flex is None:
        # One compiled function serves every shape of the run: without a higher limit dynamo stops
        # recompiling after 8 shapes and flex runs eagerly (unfused, O(Q*K) memory), timing nothing
        # of what a user gets; past the limit, fail the row instead.
        for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                     "accumulated_cache_size_limit"):
            if hasattr(torch._dynamo.config, name):
                setattr(torch._dynamo.config, name, 4096)
        if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
            torch._dynamo.config.fail_on_recompile_limit_hit = True
        _compiled_flex = torch.compile(flex_attention, dynamic=False)

    def make(t):
        q, k, v = (x.transpose(1, 2) for x in t)
        return lambda: _compiled_flex(q, k, v, score_mod=score_mod, block_mask=block_mask, enable_gqa=True)
    return make, build_ms


def original_flash_dmattn_reason() -> str:
    """Why the original flash-dmattn package is not among the peers (recorded in each run's meta).
    It installs a module of the same name as ours, so it is only reachable as its compiled extension."""
    import importlib.util
    if importlib.util.find_spec("flash_dmattn_cuda") is None:
        return "original flash-dmattn not installed (optional peer)"
    return "original flash-dmattn found but not wired up: its extension's call signature is not pinned here"


# ---- backward callables --------------------------------------------------------------------------

def backward_only(fwd: Callable, wrt: Sequence[torch.Tensor]) -> Callable:
    """The backward of one recorded forward (retain_graph), with a fixed random output gradient."""
    out = fwd()
    dout = torch.randn_like(out)
    return lambda: torch.autograd.grad(out, wrt, dout, retain_graph=True)


def forward_backward(fwd: Callable, wrt: Sequence[torch.Tensor]) -> Callable:
    def run():
        out = fwd()
        return torch.autograd.grad(out, wrt, torch.ones_like(out))
    return run


def in_mode(make: Callable[[tuple], Callable], mode: str, extra_wrt: Sequence[torch.Tensor] = ()) -> Callable:
    """make(inputs) of a forward -> make(inputs) of what `mode` times: the forward itself, its
    backward alone (one recorded forward), or both; gradients with respect to the inputs that
    require grad, plus extra_wrt (a bias shared by every copy)."""
    if mode == "forward":
        return make

    def make_mode(t):
        fwd = make(t)
        wrt = tuple(x for x in t if isinstance(x, torch.Tensor) and x.requires_grad) + tuple(extra_wrt)
        return backward_only(fwd, wrt) if mode == "backward" else forward_backward(fwd, wrt)
    return make_mode


def timed(group, config, system, make, inputs, *, mode, D, kept, computed, dens, shared=(), extra_wrt=(), note="",
          **extra):
    """One row: `make`'s forward timed in `mode` over rotated copies of `inputs`. For an SDPA peer
    (make from sdpa(), inputs in sdpa_layout) the row also holds sdpa_backends (what it was allowed),
    sdpa_backend (what ran: one call of what was timed, profiled), gqa ("native": k/v went in with
    their H_kv heads and enable_gqa; "n/a" where H = H_kv), and the backend in its note."""
    allowed = getattr(make, "sdpa_backends", None)
    probe = (lambda fn: sdpa_backend_ran(fn, torch.device(DEVICE))) if allowed else None
    ms, mem, reason, ran = measure(lambda: rotated(in_mode(make, mode, extra_wrt), inputs, shared),
                                   inference=mode == "forward", probe=probe)
    if allowed:
        gqa = "native" if inputs[0].shape[1] != inputs[1].shape[1] else "n/a"
        extra.update(sdpa_backends=allowed, sdpa_backend=ran, gqa=gqa, H=inputs[0].shape[1], H_kv=inputs[1].shape[1])
        if ran:
            chose = "SDPA's choice" if allowed == "default" else f"allowed {allowed}"
            note = f"SDPA ran {ran} ({chose}, GQA {gqa}) {note}"
    return row(group, config, system, ms, mode=mode, D=D, kept=kept, computed=computed, dens=dens, mem=mem,
               note=(note.strip() + " " + reason).strip(), **extra)


def masked_case(group, config, B, H, H_kv, Q, K, D, w, form, peers, *, mode, **extra):
    """Rows for one shape with a top-w mask (form "key" or "row", see topw_mask) and the per-key
    score as a bias (requiring grad outside the forward): ours, and the peers asked for among
    "schedule" (ours with a mask keeping nothing: the schedule build and launches), "dense" (ours
    without a mask), "sdpa-flash" (dense, no mask, flash backend forced), "sdpa-default" (the same,
    backend of SDPA's choosing), "sdpa-mask" (the equivalent float mask on cuDNN or the efficient
    backend, whose bias gets no gradient) and "flex" (kernel, and BlockMask build apart)."""
    peers = tuple(p for p in peers if p not in SKIPPED_PEERS)
    grad = mode != "forward"
    causal = Q > 1  # one query row sees every key under bottom-right causal: run it without
    q, k, v = qkv(B, Q, K, H, H_kv, D, requires_grad=grad)
    score = key_score(B, H_kv, K)
    keep = topw_mask(score, w, Q, form)
    bias = score.to(DT).unsqueeze(2).requires_grad_(grad)
    bias_wrt = (bias,) if grad else ()
    dens = density(keep, Q, K, causal)
    kept = kept_pairs(keep, Q, K, causal) * (H // H_kv)
    dense_kept = kept_pairs(None, Q, K, causal) * B * H
    cmp_sparse = computed_pairs(keep, B, H, Q, K, causal)
    cmp_dense = computed_pairs(None, B, H, Q, K, causal)
    common = dict(mode=mode, D=D, **extra)
    out = [timed(group, config, "ours sparse", ours(keep, bias, causal), (q, k, v), shared=(keep, bias),
                 extra_wrt=bias_wrt, kept=kept, computed=cmp_sparse, dens=dens, **common)]
    if "schedule" in peers:
        out.append(timed(group, config, "ours schedule only (empty mask)", ours(torch.zeros_like(keep), bias, causal),
                         (q, k, v), shared=(keep, bias), extra_wrt=bias_wrt, kept=0, computed=0, dens=0.0, **common))
    if "dense" in peers:
        out.append(timed(group, config, "ours dense causal", ours(None, None, causal), (q, k, v), kept=dense_kept,
                         computed=cmp_dense, dens=1.0, reference=True, **common))
    if "sdpa-flash" in peers:
        out.append(timed(group, config, "sdpa-flash dense causal", sdpa(SDPBackend.FLASH_ATTENTION, causal=causal),
                         sdpa_layout(q, k, v), kept=dense_kept, computed=cmp_dense, dens=1.0, reference=True, **common))
    if "sdpa-default" in peers:
        out.append(timed(group, config, "sdpa-default dense causal", sdpa(causal=causal), sdpa_layout(q, k, v),
                         kept=dense_kept, computed=cmp_dense, dens=1.0, reference=True, **common))
    if "sdpa-mask" in peers:
        name = "sdpa cudnn/efficient float mask"
        try:
            fm = float_mask(keep, bias, H, Q, K, causal)
            out.append(timed(group, config, name, sdpa([SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION],
                                                       attn_mask=fm),
                             sdpa_layout(q, k, v), shared=(fm,), kept=kept, dens=dens,
                             computed=computed_pairs(None, B, H, Q, K, False),
                             note=repeated_mask_note(max(keep.shape[1], bias.shape[1]), H), **common))
            del fm
        except torch.OutOfMemoryError as exc:
            out.append(row(group, config, name, None, kept=kept, computed=0, dens=dens,
                           note="building the (B, H, Q, K) float mask: " + failure(exc), **common))
    if "flex" in peers:
        try:
            make, build_ms = flex(keep, bias, causal, B, H, Q, K)
            out.append(timed(group, config, "flex kernel", make, (q, k, v), shared=(bias,), extra_wrt=bias_wrt,
                             kept=kept, computed=cmp_sparse, dens=dens, gqa="native" if H != H_kv else "n/a",
                             **common))
            out.append(row(group, config, "flex BlockMask build", build_ms, kept=0, computed=0, dens=dens,
                           note="rebuilt every step for a dynamic mask", **common))
        except Exception as exc:  # noqa: BLE001 - a peer failing is a result, not a crash
            out.append(row(group, config, "flex kernel", None, kept=kept, computed=cmp_sparse, dens=dens,
                           note=failure(exc), **common))
    del q, k, v, keep, bias
    torch.cuda.empty_cache()
    return out


def shapes_group(quick: bool, mode: str) -> list[dict]:
    """Sweeps of batch, query heads, GQA ratio and head dim around one shape (B=2 H=16 H_kv=4 D=128
    L=4096, causal, a 12.5% top-w per-key mask with the per-key score as bias): ours sparse against
    our dense causal, SDPA (flash, and its own choice) and Flex, one plot series per sweep."""
    base = dict(B=2, H=16, H_kv=4, D=128)
    L = 4096
    sweeps = (("batch", "B", (1, 8) if quick else (1, 2, 4, 8), lambda x: dict(B=x)),
              ("query heads (H_kv = H/4)", "H", (16,) if quick else (4, 8, 16, 32), lambda x: dict(H=x, H_kv=x // 4)),
              ("GQA ratio (H=32)", "H/H_kv", () if quick else (1, 4, 8, 32), lambda x: dict(H=32, H_kv=32 // x)),
              ("head dim", "D", (64, 128) if quick else (32, 64, 96, 128, 192, 256), lambda x: dict(D=x)))
    out = []
    for label, axis, values, change in sweeps:
        for x in values:
            c = {**base, **change(x)}
            config = f"B={c['B']} H={c['H']} H_kv={c['H_kv']} D={c['D']} L={L} W=L/8"
            out += masked_case("shapes", config, c["B"], c["H"], c["H_kv"], L, L, c["D"], L // 8, "key",
                               ("dense", "sdpa-flash", "sdpa-default") + (() if quick else ("flex",)), mode=mode,
                               series=f"shapes {mode}: {label}, L={L}, 12.5%", x=x, x_label=axis)
    return out


def dense_group(quick: bool, mode: str) -> list[dict]:
    """No mask, D 64/128, L 4k (and 16k), B=2 H=16, full and causal: ours against SDPA (its flash
    backend, and its own choice)."""
    out = []
    for D in (64, 128):
        for L in ((4096,) if quick else (4096, 16384)):
            for causal in (False, True):
                B, H = 2, 16
                q, k, v = qkv(B, L, L, H, H, D, requires_grad=mode != "forward")
                kept = kept_pairs(None, L, L, causal) * B * H
                cmp = computed_pairs(None, B, H, L, L, causal)
                name = f"D={D} L={L} B={B} H={H} {'causal' if causal else 'full'}"
                for system, make, inputs in (("ours", ours(causal=causal), (q, k, v)),
                                             ("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION, causal=causal),
                                              sdpa_layout(q, k, v)),
                                             ("sdpa-default", sdpa(causal=causal), sdpa_layout(q, k, v))):
                    out.append(timed("dense", name, system, make, inputs, mode=mode, D=D, kept=kept, computed=cmp,
                                     dens=1.0))
    return out


# ---- output --------------------------------------------------------------------------------------

def git_commit() -> str:
    """GIT_COMMIT when set (a copied tree's git metadata may be stale), else HEAD, else "unknown"."""
    commit = os.environ.get("GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                    cwd=Path(__file__).parent, timeout=20).stdout.strip() or "unknown"
        except (OSError, subprocess.SubprocessError):
            commit = "unknown"
    return commit


def machine() -> dict:
    props = torch.cuda.get_device_properties(0)
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        driver = "unknown"
    return {"date": datetime.date.today().isoformat(), "gpu": torch.cuda.get_device_name(),
            "compute_capability": f"{props.major}.{props.minor}", "driver": driver, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "python": platform.python_version(),
            "flash_dmattn": flash_dmattn.__version__, "commit": git_commit()}


# How the peers get GQA, in every run's meta as "sdpa_gqa" (results_tables.py flags the runs without it:
# those handed SDPA its kv heads repeated to H).
SDPA_GQA = ("enable_gqa=True: SDPA gets q (B, H, L, D) and k, v (B, H_kv, L, D), Flex k, v with H_kv heads; "
            "each SDPA row's sdpa_backend is the backend that ran")


def default_out_dir() -> Path:
    gpu = torch.cuda.get_device_name().lower()
    slug = next((w for w in gpu.replace("nvidia", "").split() if any(c.isdigit() for c in w)), "gpu")
    return Path(__file__).resolve().parent / "results" / f"{datetime.date.today().isoformat()}-{slug}"


HEADER = f"{'config':<44} {'system':<30} {'ms':>9} {'TFLOP/s':>8} {'computed':>8} {'MB':>7} {'density':>7}  note"


def format_row(r) -> str:
    def num(x, fmt, width):
        return format(x, fmt).rjust(width) if x is not None else "-".rjust(width)
    return (f"{r['config'][:44]:<44} {r['system'][:30]:<30} {num(r['ms'], '.3f', 9)} {num(r['tflops'], '.1f', 8)} "
            f"{num(r['tflops_computed'], '.1f', 8)} {num(r['peak_mb'], '.0f', 7)} {num(r['density'], '.3f', 7)}  {r['note']}")


def markdown(rows) -> str:
    lines = ["| group | config | system | ms | TFLOP/s kept | TFLOP/s computed | peak MB | density | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def num(x, fmt):
            return format(x, fmt) if x is not None else "-"
        lines.append(f"| {r['group']} | {r['config']} | {r['system']} | {num(r['ms'], '.3f')} | {num(r['tflops'], '.1f')} | "
                     f"{num(r['tflops_computed'], '.1f')} | {num(r['peak_mb'], '.0f')} | {num(r['density'], '.3f')} | "
                     f"{r['note']} |")
    return "\n".join(lines) + "\n"


def write(rows, out_dir: Path, name: str, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    title = f"# {name} on {meta['gpu']} ({meta['date']}, commit {meta['commit'][:12]}, torch {meta['torch']})\n\n"
    (out_dir / f"{name}.md").write_text(title + markdown(rows))


def run_groups(groups: dict, selected: list[str], quick: bool, out_dir: Path, name: str) -> list[dict]:
    """Run the selected groups, printing rows as they come and rewriting the outputs after each
    group (a run cut short keeps what it measured)."""
    meta = machine()
    meta.update(quick=quick, groups=selected, all_groups=list(groups), original_flash_dmattn=original_flash_dmattn_reason(),
                skipped_peers=sorted(SKIPPED_PEERS), sdpa_gqa=SDPA_GQA)
    print(f"{name} on {meta['gpu']} (torch {meta['torch']}, CUDA {meta['cuda']}, commit {meta['commit'][:12]}); "
          f"TFLOP/s on kept pairs and on computed 128x64 tiles; MB = peak memory beyond the inputs; "
          f"original flash-dmattn: {meta['original_flash_dmattn']}", flush=True)
    print(HEADER, flush=True)
    bar = ProgressBar(len(selected))
    rows: list[dict] = []
    for g in selected:
        bar.step(g)
        for r in groups[g](quick):
            print(format_row(r), flush=True)
            rows.append(r)
        write(rows, out_dir, name, meta)
        plot(rows, out_dir, name)
        torch.cuda.empty_cache()
    print(f"wrote {out_dir}/{name}.json, .md and plots", flush=True)
    return rows


def select_groups(only: str, groups: dict, aliases: dict) -> list[str]:
    """--only's comma-separated names, each a group or an alias of several (GQA_ALIAS), expanded in
    the scripts' group order without repeats."""
    names = [g for g in only.split(",") if g]
    unknown = [g for g in names if g not in groups and g not in aliases]
    if unknown:
        raise SystemExit(f"unknown group(s) {unknown}; choose from {list(groups)} or {list(aliases)}")
    wanted = {g for n in names for g in aliases.get(n, (n,))}
    return [g for g in groups if g in wanted]


def cli(groups: dict, name: str, doc: str, aliases: Optional[dict] = None) -> None:
    """The command line of <name>_performance.py: --quick, --only (groups or aliases), --out, --skip."""
    aliases = aliases or {}
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a subset of every group, about two minutes")
    ap.add_argument("--only", default=",".join(groups),
                    help=f"comma-separated groups of: {', '.join(groups)}"
                         + "".join(f"; or {a} (= {','.join(g)})" for a, g in aliases.items()))
    ap.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results/<date>-<gpu>)")
    ap.add_argument("--skip", default="", help=f"comma-separated peers to leave out of the masked groups, of: "
                    f"{', '.join(PEERS)} (kernel A/B runs; a bound needs schedule and dense)")
    args = ap.parse_args()
    skip = {p for p in args.skip.split(",") if p}
    if skip - set(PEERS):
        raise SystemExit(f"unknown peer(s) {sorted(skip - set(PEERS))}; choose from {list(PEERS)}")
    SKIPPED_PEERS.update(skip)
    selected = select_groups(args.only, groups, aliases)
    if not torch.cuda.is_available():
        raise SystemExit(f"{name}_performance.py needs a CUDA GPU (the equivalence scripts run on CPU)")
    run_groups(groups, selected, args.quick, args.out or default_out_dir(), name)


def merge(name: str, out_dir: Path, sources: Sequence[tuple[Path, Sequence[str]]]) -> list[dict]:
    """One results file from several runs (a GPU call is time-limited, so groups run apart): the
    rows of the given groups from each source folder's <name>.json, in order; meta from the last
    source, with where each group came from. Rewrites <name>.json, .md and the plots in out_dir."""
    rows, meta = [], {}
    for folder, groups in sources:
        data = json.loads((Path(folder) / f"{name}.json").read_text())
        rows += [r for g in groups for r in data["rows"] if r["group"] == g]
        meta = dict(data["meta"])
    meta["groups"] = [g for _, groups in sources for g in groups]
    meta["merged_from"] = {g: Path(folder).name for folder, groups in sources for g in groups}
    write(rows, out_dir, name, meta)
    plot(rows, out_dir, name)
    return rows


# ---- plots ---------------------------------------------------------------------------------------

def plot(rows, out_dir: Path, name: str) -> list[Path]:
    """`<name>-seqlen.png`: time vs sequence length per system for each x-axis series ("series" key),
    `<name>-density.png`: our speedup over each reference vs measured density. Skipped without
    matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    series = sorted({r["series"] for r in rows if r.get("series")})
    if series:
        ncols = min(3, len(series))
        nrows = -(-len(series) // ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.2 * nrows), squeeze=False)
        for ax in axes.flat[len(series):]:
            ax.set_visible(False)
        palette = plt.get_cmap("tab10").colors
        color = {system: palette[i % len(palette)]
                 for i, system in enumerate(dict.fromkeys(r["system"] for r in rows if r.get("series")))}
        for ax, s in zip(axes.flat, series):
            pts = [r for r in rows if r.get("series") == s and r["ms"]]
            for system in dict.fromkeys(r["system"] for r in pts):
                xs = sorted((r["x"], r["ms"]) for r in pts if r["system"] == system)
                ax.plot([x for x, _ in xs], [y for _, y in xs], "o-", label=system, markersize=3, color=color[system])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(pts[0]["x_label"] if pts else "")
            ax.set_ylabel(f"{pts[0]['mode'] if pts else ''} time (ms)")
            ax.set_title(s, fontsize=9)
            _finish_axes(ax)
        written.append(_save(fig, out_dir / f"{name}-seqlen.png", plt))
    sweep = [r for r in rows if r["group"] == "density" and r["ms"]]
    ours_sparse = sorted((r for r in sweep if r["system"] == "ours sparse"), key=lambda r: r["density"])
    refs = [r for r in sweep if r["system"] != "ours sparse" and r.get("reference")]
    if ours_sparse and refs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for ref in refs:
            ax.plot([r["density"] for r in ours_sparse], [ref["ms"] / r["ms"] for r in ours_sparse], "o-",
                    label=f"over {ref['system']}")
        ax.plot([r["density"] for r in ours_sparse], [1 / r["density"] for r in ours_sparse], ":", color="gray",
                label="1 / density (time proportional to kept work)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("density (kept pairs / causal pairs)")
        ax.set_ylabel("speedup of ours (sparse)")
        ax.set_title(ours_sparse[0]["config"].split(" w=")[0] + f", {ours_sparse[0]['mode']}", fontsize=9)
        _finish_axes(ax)
        written.append(_save(fig, out_dir / f"{name}-density.png", plt))
    return written


def _finish_axes(ax) -> None:
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)


def _save(fig, path: Path, plt) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
