"""What forward_equivalence.py, backward_equivalence.py and grad_equivalence.py share: the case
matrix, the backends to check, the float64 oracle, the error report and the pass rule.

Every available backend of ours (flash_dmattn.get_available_backends(): cuda, flex, reference) is
run on each case in each dtype and compared with the float64 reference (flash_dmattn.reference on
the CPU, on the same rounded inputs). The pass rule is the test suite's (tests/helpers/oracle.py):
relative error within the dtype's band, and max error at most twice that of the same math done
naively in the same dtype. A backend that has no kernel for a case (NotImplementedError: an
unbuilt head-dim bucket, a dtype the backend lacks) is reported as skipped with its reason; any
other exception is a failure.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from helpers.oracle import BANDS, assert_close_to_oracle, naive_attention, rand_inputs  # noqa: E402

import flash_dmattn  # noqa: E402
from flash_dmattn import reference  # noqa: E402
from flash_dmattn.backends import _FUNCS  # noqa: E402
from flash_dmattn.bench import ProgressBar  # noqa: E402


@dataclasses.dataclass
class Case:
    name: str
    B: int
    Q: int
    K: int
    H: int
    H_kv: int
    D: int
    mask_shape: Optional[tuple] = None
    mask_dtype: str = "bool"  # "bool" or "float" (q's dtype, 1 keep / 0 drop)
    bias_shape: Optional[tuple] = None
    causal: bool = False
    softcap: float = 0.0
    empty_rows: bool = False  # rows 3..6 of the mask keep nothing


def cases(quick: bool) -> list[Case]:
    """The matrix: broadcast forms of mask and bias, mask dtypes, GQA, causal alignments, decode,
    softcap, fully masked rows, every head-dim bucket and dims between them, odd lengths."""
    B, Q, K, H, Hk = 2, 77, 131, 4, 2
    out = [
        Case("dense", B, Q, K, H, Hk, 64),
        Case("mask+bias full", B, Q, K, H, Hk, 64, (B, H, Q, K), bias_shape=(B, H, Q, K), causal=True),
        Case("per-key mask+bias", B, Q, K, H, Hk, 64, (B, Hk, 1, K), bias_shape=(B, Hk, 1, K), causal=True),
        Case("float mask, shared bias", B, Q, K, H, Hk, 64, (1, 1, Q, K), "float", (1, 1, Q, K)),
        Case("causal Q<K", 1, 100, 300, 2, 1, 64, causal=True),
        Case("decode Q=1", 1, 1, 513, 8, 2, 128, (1, 2, 1, 513), bias_shape=(1, 2, 1, 513), causal=True),
        Case("softcap", 1, 130, 150, 4, 2, 64, (1, 1, 130, 150), bias_shape=(1, 4, 130, 150), causal=True,
             softcap=5.0),
        Case("fully masked rows", 1, 90, 100, 2, 2, 64, (1, 2, 90, 100), bias_shape=(1, 2, 1, 100), empty_rows=True),
    ]
    if quick:
        return out
    out += [
        Case(f"mask {m} bias {b}", B, Q, K, H, Hk, 64, m, bias_shape=b, causal=True)
        for m, b in [((1, H, Q, 1), (B, 1, Q, 1)), ((B, 1, 1, K), (1, H, 1, K)), ((1, Hk, Q, K), (B, Hk, Q, 1)),
                     ((B, H, Q, K), (1, 1, 1, K))]
    ]
    out += [Case(f"GQA {H // hk}", 1, 150, 190, 8, hk, 64, (1, hk, 150, 190), bias_shape=(1, hk, 1, 190),
                 causal=True) for hk in (8, 2, 1)]
    out += [Case("causal Q=K", 2, 257, 257, 2, 2, 64, causal=True),
            Case("causal Q>K", 2, 300, 100, 2, 1, 64, (2, 1, 300, 100), causal=True),
            Case("float mask per query", 1, 200, 260, 4, 2, 64, (1, 2, 200, 260), "float", causal=True)]
    out += [Case(f"D={d}", 1, 140, 150, 2, 1, d, (1, 1, 140, 150), bias_shape=(1, 1, 1, 150), causal=True)
            for d in (32, 40, 64, 72, 96, 120, 128, 192, 200, 256)]
    return out


def dtypes_for(device: str, names: Optional[str]) -> list[torch.dtype]:
    if names:
        return [getattr(torch, n) for n in names.split(",")]
    return [torch.bfloat16, torch.float16] if device == "cuda" else [torch.bfloat16]


def backends_for(device: str, names: Optional[str]) -> list[str]:
    available = flash_dmattn.get_available_backends()
    chosen = names.split(",") if names else available
    for n in chosen:
        if n not in available:
            raise SystemExit(f"backend {n!r} is not available here: {flash_dmattn.backend_status()[n]}")
    return chosen


def make_inputs(case: Case, dtype: torch.dtype):
    mdt = torch.bool if case.mask_dtype == "bool" else dtype
    inp = rand_inputs(case.B, case.Q, case.K, case.H, case.H_kv, case.D, dtype=dtype, mask_shape=case.mask_shape,
                      mask_dtype=mdt, bias_shape=case.bias_shape)
    if case.empty_rows:
        inp.mask[:, :, 3:7] = False if mdt == torch.bool else 0
    return inp


def errors(actual, oracle, naive, name, dtype) -> dict:
    """The report's figures for one output, and whether the pass rule holds."""
    a, o = actual.detach().double().cpu(), oracle.detach().double().cpu()
    finite = torch.isfinite(o)
    diff = (a - o)[finite].abs()
    row = {"output": name, "max_abs": diff.max().item() if diff.numel() else 0.0,
           "mean_abs": diff.mean().item() if diff.numel() else 0.0}
    try:
        stats = assert_close_to_oracle(a, o, None if naive is None else naive.detach().cpu(), name=name, dtype=dtype)
        row.update(rel=stats["rel_err"], naive_max_abs=stats["naive_max_err"], ok=True, why="")
    except AssertionError as e:
        row.update(rel=float("nan"), naive_max_abs=float("nan"), ok=False, why=str(e).split("\n")[0][:200])
    return row


def to(t, device, grad=False):
    if t is None:
        return None
    t = t.to(device)
    return t.requires_grad_() if grad else t


def run_on(fn: Callable, inp, device: str, grad: bool):
    """(out, lse, grads or None) of fn(q, k, v, mask, bias) on the device; grads = (dq, dk, dv, dbias)
    through autograd for inp.dout (dbias None without a bias)."""
    q, k, v, bias = (to(t, device, grad) for t in (inp.q, inp.k, inp.v, inp.bias))
    out, lse = fn(q, k, v, to(inp.mask, device), bias)
    grads = None
    if grad:
        wrt = [t for t in (q, k, v, bias) if t is not None]
        got = torch.autograd.grad(out, wrt, inp.dout.to(device))
        grads = tuple(got) + (None,) * (4 - len(got))
    return out, lse, grads


def backend_call(backend: str, case: Case, inp, device: str, grad: bool):
    """(out, lse, grads or None) from one of our backends."""
    fn: Callable = _FUNCS[backend]
    return run_on(lambda q, k, v, m, b: fn(q, k, v, m, b, is_causal=case.causal, softcap=case.softcap or None,
                                           return_lse=True), inp, device, grad)


def oracle_call(case: Case, inp, grad: bool):
    o = inp.oracle()
    scale = case.D ** -0.5
    out, lse = reference.attention_forward(o.q, o.k, o.v, o.mask, o.bias, scale=scale, causal=case.causal,
                                           softcap=case.softcap)
    grads = None
    if grad:
        grads = reference.attention_backward(o.dout, o.q, o.k, o.v, o.mask, o.bias, out, lse, scale=scale,
                                             causal=case.causal, softcap=case.softcap)
    return out, lse, grads


def naive_call(case: Case, inp, device: str, grad: bool):
    """The textbook math in the inputs' dtype (on the device): the scale of honest rounding error."""
    return run_on(lambda q, k, v, m, b: naive_attention(q, k, v, m, b, scale=case.D ** -0.5, causal=case.causal,
                                                        softcap=case.softcap), inp, device, grad)


def check_case(backend: str, case: Case, dtype: torch.dtype, device: str, what: str) -> list[dict]:
    """Rows for one (backend, case, dtype): what = "forward" (out, lse) or "backward" (dq, dk, dv, dbias)."""
    grad = what == "backward"
    inp = make_inputs(case, dtype)
    base = {"backend": backend, "case": case.name, "dtype": str(dtype).replace("torch.", "")}
    try:
        got = backend_call(backend, case, inp, device, grad)
    except NotImplementedError as e:
        return [dict(base, output="-", skipped=str(e).split("\n")[0][:160], ok=True)]
    except Exception as e:  # noqa: BLE001 - an available backend failing on a valid case is a result
        return [dict(base, output="-", ok=False, why=f"{type(e).__name__}: {str(e)[:200]}")]
    want = oracle_call(case, inp, grad)
    naive = naive_call(case, inp, device, grad)
    rows = []
    if not grad:
        rows.append(dict(base, **errors(got[0], want[0], naive[0], "out", dtype)))
        rows.append(dict(base, **lse_errors(got[1], want[1])))
    else:
        for g, w, n, name in zip(got[2], want[2], naive[2], ("dq", "dk", "dv", "dbias")):
            if w is not None:
                rows.append(dict(base, **errors(g, w, n, name, dtype)))
    return rows


# The lse is float32 whatever the inputs, and only ever shifts exp(s - lse): the test suite's bound
# (tests/test_forward_cuda.py), |lse - oracle| <= 2e-3 (1 + |oracle|), is far below what bf16/fp16
# scores resolve. The kernels' approximate exp2/tanh (softcap) put it at ~1e-5 on an H100, so the
# float32 rule for out would be the wrong yardstick.
LSE_RTOL = LSE_ATOL = 2e-3


def lse_errors(actual, oracle) -> dict:
    a, o = actual.detach().double().cpu(), oracle.detach().double().cpu()
    row = {"output": "lse", "naive_max_abs": float("nan")}
    same_inf = torch.equal(torch.isneginf(a), torch.isneginf(o)) and not torch.isnan(a).any()
    finite = torch.isfinite(o)
    diff = (a - o)[finite].abs()
    row.update(max_abs=diff.max().item() if diff.numel() else 0.0, mean_abs=diff.mean().item() if diff.numel() else 0.0,
               rel=(diff.norm() / o[finite].norm()).item() if diff.numel() else 0.0)
    within = bool((diff <= LSE_ATOL + LSE_RTOL * o[finite].abs()).all())
    row["ok"] = same_inf and within
    row["why"] = "" if row["ok"] else ("-inf rows or NaN differ" if not same_inf else
                                       f"max err {row['max_abs']:.3e} over {LSE_ATOL} + {LSE_RTOL} |lse|")
    return row


def fmt(x) -> str:
    return "-" if x is None or x != x else f"{x:.2e}"


def print_table(rows: list[dict], out=sys.stdout) -> None:
    cols = ("backend", "dtype", "case", "output", "max_abs", "mean_abs", "rel", "naive_max_abs", "result")
    print("| " + " | ".join(cols) + " |", file=out)
    print("|" + "---|" * len(cols), file=out)
    for r in rows:
        result = "skipped: " + r["skipped"] if "skipped" in r else ("ok" if r["ok"] else "FAIL " + r.get("why", ""))
        cells = [r["backend"], r["dtype"], r["case"], r["output"], fmt(r.get("max_abs")), fmt(r.get("mean_abs")),
                 fmt(r.get("rel")), fmt(r.get("naive_max_abs")), result]
        print("| " + " | ".join(cells) + " |", file=out)


def environment() -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "flash_dmattn": flash_dmattn.__version__,
           "backends": flash_dmattn.get_available_backends()}
    if torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    return env


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="a small subset of the cases")
    ap.add_argument("--device", choices=("cuda", "cpu"), default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--backends", help="comma-separated (default: every available one)")
    ap.add_argument("--dtypes", help="comma-separated torch dtypes (default: bfloat16,float16 on cuda; bfloat16 on cpu)")
    ap.add_argument("--json", help="write every row and the environment here")
    return ap


def run(what: str, args) -> int:
    """Runs the case matrix for `what` ("forward" or "backward"), prints it; returns the exit status."""
    backends = [b for b in backends_for(args.device, args.backends)
                if args.device == "cuda" or b == "reference"]  # cuda takes GPU tensors; flex has no CPU backward
    jobs = [(b, c, dt) for b in backends for c in cases(args.quick) for dt in dtypes_for(args.device, args.dtypes)]
    bar = ProgressBar(len(jobs), stream=sys.stderr)
    rows: list[dict] = []
    for b, c, dt in jobs:
        bar.step(f"{b} {c.name}")
        rows += check_case(b, c, dt, args.device, what)
    return report(what, args, rows)


def report(what: str, args, rows: list[dict]) -> int:
    """The table, a summary line and the JSON; 1 if any row failed."""
    print_table(rows)
    failed = [r for r in rows if not r["ok"]]
    skipped = [r for r in rows if "skipped" in r]
    print(f"\n{what} equivalence against the float64 reference on {args.device}: {len(rows)} rows, "
          f"{len(failed)} failed, {len(skipped)} skipped (no kernel for the case); bands {fmt_bands()}")
    if args.json:
        Path(args.json).write_text(json.dumps({"environment": environment(), "rows": rows}, indent=1, default=str))
    return 1 if failed else 0


def fmt_bands() -> str:
    return ", ".join(f"{str(k).replace('torch.', '')} {v:.1e}" for k, v in BANDS.items())
