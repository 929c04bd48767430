"""Gradient equivalence through the public functions: the gradients a user gets from
flash_dmattn_func, flash_dmattn_qkvpacked_func, flash_dmattn_kvpacked_func and
flash_dmattn_varlen_func (whatever backend they run on: our CUDA kernels on a GPU, the reference on
the CPU) against the float64 reference's backward; torch.autograd.gradcheck of the reference in
float64; and, on CUDA, deterministic=True giving bitwise identical gradients twice.

  python benchmarks/grad_equivalence.py [--quick] [--device cuda|cpu] [--dtypes bfloat16,float16] [--json FILE]

Prints one row per gradient (max/mean abs error, relative error, naive same-dtype max error) and
exits 1 if any row fails (the pass rule of tests/helpers/oracle.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equivalence as eq  # noqa: E402

import flash_dmattn  # noqa: E402
from flash_dmattn.backends import reference_dmattn_func  # noqa: E402


def public_grads(entry: str, case: eq.Case, inp, device: str):
    """(dq, dk, dv, dbias) through one public function, unpacked to the q/k/v shapes."""
    mask = eq.to(inp.mask, device)
    bias = eq.to(inp.bias, device, grad=inp.bias is not None)
    kw = dict(attn_mask=mask, attn_bias=bias, is_causal=case.causal, softcap=case.softcap or None)
    dout = inp.dout.to(device)
    if entry == "func":
        q, k, v = (eq.to(t, device, grad=True) for t in (inp.q, inp.k, inp.v))
        out = flash_dmattn.flash_dmattn_func(q, k, v, **kw)
        wrt = [q, k, v]
    elif entry == "qkvpacked":
        qkv = torch.stack((inp.q, inp.k, inp.v), dim=2).to(device).requires_grad_()
        out = flash_dmattn.flash_dmattn_qkvpacked_func(qkv, **kw)
        wrt = [qkv]
    else:  # kvpacked
        q = eq.to(inp.q, device, grad=True)
        kv = torch.stack((inp.k, inp.v), dim=2).to(device).requires_grad_()
        out = flash_dmattn.flash_dmattn_kvpacked_func(q, kv, **kw)
        wrt = [q, kv]
    got = torch.autograd.grad(out, wrt + ([bias] if bias is not None else []), dout)
    dbias = got[-1] if bias is not None else None
    if entry == "func":
        dq, dk, dv = got[:3]
    elif entry == "qkvpacked":
        dq, dk, dv = got[0].unbind(2)
    else:
        dq, (dk, dv) = got[0], got[1].unbind(2)
    return dq, dk, dv, dbias


def varlen_rows(dtype: torch.dtype, device: str) -> list[dict]:
    """Two sequences of different lengths packed without padding, each checked against its own oracle."""
    lens_q, lens_k, H, H_kv, D = (70, 130), (90, 150), 4, 2, 64
    seqs = [eq.Case(f"varlen seq {i}", 1, lq, lk, H, H_kv, D, causal=True) for i, (lq, lk) in
            enumerate(zip(lens_q, lens_k))]
    inps = [eq.make_inputs(c, dtype) for c in seqs]
    cat = lambda name: torch.cat([getattr(i, name)[0] for i in inps]).to(device)  # noqa: E731
    q, k, v = (cat(n).requires_grad_() for n in ("q", "k", "v"))
    cu = lambda lens: torch.tensor([0, lens[0], lens[0] + lens[1]], dtype=torch.int32, device=device)  # noqa: E731
    base = {"backend": "varlen_func", "dtype": str(dtype).replace("torch.", "")}
    try:
        out = flash_dmattn.flash_dmattn_varlen_func(q, k, v, cu_seqlens_q=cu(lens_q), cu_seqlens_k=cu(lens_k),
                                                    max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k),
                                                    is_causal=True)
        dq, dk, dv = torch.autograd.grad(out, (q, k, v), cat("dout"))
    except NotImplementedError as e:
        return [dict(base, case="varlen", output="-", skipped=str(e).split("\n")[0][:160], ok=True)]
    rows = []
    q0 = k0 = 0
    for c, inp, lq, lk in zip(seqs, inps, lens_q, lens_k):
        want = eq.oracle_call(c, inp, grad=True)[2]
        naive = eq.naive_call(c, inp, device, grad=True)[2]
        got = (dq[q0:q0 + lq][None], dk[k0:k0 + lk][None], dv[k0:k0 + lk][None])
        for g, w, n, name in zip(got, want, naive, ("dq", "dk", "dv")):
            rows.append(dict(base, case=c.name, **eq.errors(g, w, n, name, dtype)))
        q0, k0 = q0 + lq, k0 + lk
    return rows


def gradcheck_rows() -> list[dict]:
    """torch.autograd.gradcheck of the reference in float64: its backward is the oracle's."""
    rows = []
    g = torch.Generator().manual_seed(0)
    for name, causal, softcap, bias_shape in (("per-key bias, causal", True, 0.0, (1, 1, 1, 7)),
                                              ("full bias, softcap", False, 3.0, (1, 2, 5, 7))):
        q = torch.randn(1, 5, 2, 4, dtype=torch.float64, generator=g, requires_grad=True)
        k, v = (torch.randn(1, 7, 1, 4, dtype=torch.float64, generator=g, requires_grad=True) for _ in range(2))
        bias = torch.randn(bias_shape, dtype=torch.float64, generator=g, requires_grad=True)
        mask = torch.rand(1, 1, 5, 7, generator=g) < 0.7
        fn = lambda q, k, v, b: reference_dmattn_func(q, k, v, mask, b, is_causal=causal,  # noqa: E731
                                                      softcap=softcap or None)
        try:
            ok = torch.autograd.gradcheck(fn, (q, k, v, bias), eps=1e-6, atol=1e-6)
            why = ""
        except Exception as e:  # noqa: BLE001 - gradcheck raises on a mismatch
            ok, why = False, str(e).split("\n")[0][:200]
        rows.append({"backend": "reference gradcheck", "dtype": "float64", "case": name, "output": "dq,dk,dv,dbias",
                     "ok": bool(ok), "why": why})
    return rows


def determinism_rows(dtype: torch.dtype) -> list[dict]:
    """deterministic=True twice on the same inputs: bitwise equal gradients (CUDA)."""
    case = eq.Case("deterministic", 2, 200, 260, 4, 2, 64, (2, 1, 200, 260), bias_shape=(1, 1, 200, 260),
                   causal=True)
    inp = eq.make_inputs(case, dtype)
    base = {"backend": "func", "dtype": str(dtype).replace("torch.", ""), "case": case.name,
            "output": "dq,dk,dv,dbias bitwise"}
    runs = []
    try:
        for _ in range(2):
            q, k, v, bias = (eq.to(t, "cuda", grad=True) for t in (inp.q, inp.k, inp.v, inp.bias))
            out = flash_dmattn.flash_dmattn_func(q, k, v, inp.mask.cuda(), bias, is_causal=True, deterministic=True)
            runs.append(torch.autograd.grad(out, (q, k, v, bias), inp.dout.cuda()))
    except NotImplementedError as e:  # no kernel for this dtype in this build: skipped, like the other rows
        return [dict(base, skipped=str(e).split("\n")[0][:160], ok=True)]
    same = all(torch.equal(a, b) for a, b in zip(*runs))
    return [dict(base, ok=same, why="" if same else "gradients differ between runs")]


def main() -> int:
    args = eq.parser(__doc__.split("\n")[0]).parse_args()
    cases = [c for c in eq.cases(args.quick) if c.mask_dtype == "bool"]
    dtypes = eq.dtypes_for(args.device, args.dtypes)
    jobs = [(e, c, dt) for e in ("func", "kvpacked", "qkvpacked") for c in cases for dt in dtypes
            if e != "qkvpacked" or (c.H == c.H_kv and c.Q == c.K)]
    qkv_case = eq.Case("MHA Q=K mask+bias", 2, 150, 150, 4, 4, 64, (2, 1, 150, 150), bias_shape=(2, 4, 1, 150),
                       causal=True)
    jobs += [("qkvpacked", qkv_case, dt) for dt in dtypes]
    bar = eq.ProgressBar(len(jobs), stream=sys.stderr)
    rows = []
    for entry, c, dt in jobs:
        bar.step(f"{entry} {c.name}")
        inp = eq.make_inputs(c, dt)
        base = {"backend": f"{entry}", "case": c.name, "dtype": str(dt).replace("torch.", "")}
        try:
            got = public_grads(entry, c, inp, args.device)
        except NotImplementedError as e:
            rows.append(dict(base, output="-", skipped=str(e).split("\n")[0][:160], ok=True))
            continue
        want = eq.oracle_call(c, inp, grad=True)[2]
        naive = eq.naive_call(c, inp, args.device, grad=True)[2]
        for g, w, n, name in zip(got, want, naive, ("dq", "dk", "dv", "dbias")):
            if w is not None:
                rows.append(dict(base, **eq.errors(g, w, n, name, dt)))
    for dt in dtypes:
        rows += varlen_rows(dt, args.device)
        if args.device == "cuda":
            rows += determinism_rows(dt)
    rows += gradcheck_rows()
    return eq.report("grad", args, rows)


if __name__ == "__main__":
    sys.exit(main())
