# Test oracle: a textbook, fully materialized attention (written apart from flash_dmattn.reference
# so that each checks the other), the one tolerance rule every backend test uses, and random inputs.
# Invariant: inputs are rounded to the kernel dtype before the oracle sees them, so the oracle and
# the kernel differ only in how they compute, never in what they compute on.
from __future__ import annotations

import dataclasses
import zlib

import torch
from torch import Tensor

# Relative-norm bands, ||actual - oracle|| / ||oracle||.  u is the unit roundoff of the dtype.
# Inputs are already rounded, so the error left is intermediate rounding (P rounded to the dtype
# before the PV product, the output rounded once): a few u.  bf16 (u = 2^-8 = 3.9e-3) and fp16
# (u = 2^-11 = 4.9e-4) get 4u.  float32 (u = 6e-8) gets ~170u, room for float32 sums over long
# key rows and for exp/log.  float64 gets 1e-10: far above its rounding (1e-16), far below any
# semantic bug, so the float64 reference-vs-oracle checks are exact in all but rounding.
BANDS = {
    torch.bfloat16: 1.6e-2,
    torch.float16: 2e-3,
    torch.float32: 1e-5,
    torch.float64: 1e-10,
}

# The noise floor is this many eps of the dtype at the oracle's largest magnitude: rounding the
# output alone costs up to eps/2 there, so a naive baseline that happens to be exact on a small
# case cannot make the rule demand better than the dtype can store.
NOISE_FLOOR_EPS = 2.0


def _expand_heads(t: Tensor, B: int, H: int, Q: int, K: int) -> Tensor:
    """(B|1, H|H_kv|1, Q|1, K|1) -> (B, H, Q, K): a kv-group row is repeated for its query heads."""
    if t.shape[1] not in (1, H):
        t = t.repeat_interleave(H // t.shape[1], dim=1)
    return t.expand(B, H, Q, K)


def naive_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None = None,
    bias: Tensor | None = None,
    *,
    scale: float,
    causal: bool = False,
    softcap: float = 0.0,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Textbook attention computed entirely in ``dtype`` (default q's): returns (out, lse).

    Shapes as in flash_dmattn.reference: q (B, Q, H, D), k/v (B, K, H_kv, D), mask/bias
    (B|1, H|H_kv|1, Q|1, K|1).  Differentiable (rows with nothing kept have zero gradient).
    """
    dtype = dtype or q.dtype
    B, Q, H, _ = q.shape
    K, H_kv = k.shape[1], k.shape[2]
    qh = q.to(dtype).transpose(1, 2)  # (B, H, Q, D)
    kh = k.to(dtype).transpose(1, 2).repeat_interleave(H // H_kv, dim=1)  # (B, H, K, D)
    vh = v.to(dtype).transpose(1, 2).repeat_interleave(H // H_kv, dim=1)
    s = scale * (qh @ kh.transpose(-1, -2))  # (B, H, Q, K)
    if softcap > 0:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + _expand_heads(bias.to(dtype), B, H, Q, K)
    keep = torch.ones(B, H, Q, K, dtype=torch.bool, device=q.device)
    if mask is not None:
        keep = keep & (_expand_heads(mask, B, H, Q, K) != 0)
    if causal:
        keep = keep & torch.ones(Q, K, dtype=torch.bool, device=q.device).tril(diagonal=K - Q)
    s = s.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    # softmax of an all -inf row is NaN (and so is its gradient): give those rows zeros instead.
    empty = (s == float("-inf")).all(dim=-1, keepdim=True)
    p = torch.softmax(s.masked_fill(empty, 0.0), dim=-1).masked_fill(empty, 0.0)
    out = (p @ vh).transpose(1, 2)  # (B, Q, H, D)
    return out, lse


# An oracle no larger than this is zero up to float64 rounding (real results here are >= ~1e-6).
ZERO_ORACLE = 1e-10


def _finite_max_abs(x: Tensor) -> float:
    x = x[torch.isfinite(x)]
    return x.abs().max().item() if x.numel() else 0.0


def assert_close_to_oracle(
    actual: Tensor,
    oracle: Tensor,
    naive: Tensor | None,
    *,
    name: str,
    dtype: torch.dtype,
) -> dict[str, float]:
    """THE tolerance rule.  Pass iff

    (a) NaN and +-inf sit exactly where the oracle has them;
    (b) ||actual - oracle|| / ||oracle|| <= BANDS[dtype], unless the oracle is zero to float64
        rounding (max|oracle| <= ZERO_ORACLE: a result that is exactly 0 in exact arithmetic, such as
        the gradient of a bias broadcast over keys): a relative error means nothing there, and (c),
        against the same math done naively, decides alone;
    (c) max|actual - oracle| <= 2 * max|naive - oracle| + NOISE_FLOOR_EPS * eps(dtype) * max|oracle|,
        where ``naive`` is the same math done naively in ``dtype``.  Pass ``naive=None`` when the
        oracle is itself the same-dtype computation (float64 checks); (c) then becomes
        max|actual - oracle| <= BANDS[dtype] * max|oracle|.
    Errors are measured over the entries that are finite in the oracle.  Returns the measurements.
    """
    a, o = actual.detach().double(), oracle.detach().double()
    assert a.shape == o.shape, f"{name}: shape {tuple(a.shape)} != oracle {tuple(o.shape)}"
    bad_nan = torch.isnan(a) != torch.isnan(o)
    assert not bad_nan.any(), (
        f"{name}: NaN placement differs from the oracle at {int(bad_nan.sum())} entries, "
        f"first at {tuple(bad_nan.nonzero()[0].tolist())}"
    )
    inf_o = torch.isinf(o)
    bad_inf = (torch.isinf(a) != inf_o) | (inf_o & (a != o))
    assert not bad_inf.any(), (
        f"{name}: infinities differ from the oracle at {int(bad_inf.sum())} entries, "
        f"first at {tuple(bad_inf.nonzero()[0].tolist())}"
    )
    finite = torch.isfinite(o)
    diff = (a - o)[finite]
    ref_norm = o[finite].norm().item()
    err_norm = diff.norm().item()
    oracle_max = _finite_max_abs(o)
    zero_oracle = oracle_max <= ZERO_ORACLE
    rel_err = err_norm / ref_norm if not zero_oracle else err_norm  # absolute, for the record
    max_err = diff.abs().max().item() if diff.numel() else 0.0
    ref_max = 1.0 if zero_oracle else oracle_max  # a zero oracle: errors count as absolute
    if naive is None:
        naive_err = float("nan")
        allowed = BANDS[dtype] * ref_max
    else:
        n = naive.detach().double()
        naive_err = _finite_max_abs((n - o)[finite])
        allowed = 2.0 * naive_err + NOISE_FLOOR_EPS * torch.finfo(dtype).eps * ref_max
    stats = {"rel_err": rel_err, "max_err": max_err, "naive_max_err": naive_err, "allowed_max_err": allowed}
    assert (zero_oracle or rel_err <= BANDS[dtype]) and max_err <= allowed, (
        f"{name} ({dtype}): rel err {rel_err:.3e} (band {BANDS[dtype]:.1e}), max err {max_err:.3e} "
        f"(allowed {allowed:.3e}), naive max err {naive_err:.3e}"
    )
    return stats


@dataclasses.dataclass
class Inputs:
    """One attention problem, every floating tensor already rounded to the kernel dtype."""

    q: Tensor  # (B, Q, H, D)
    k: Tensor  # (B, K, H_kv, D)
    v: Tensor  # (B, K, H_kv, D)
    dout: Tensor  # (B, Q, H, D)
    mask: Tensor | None = None
    bias: Tensor | None = None

    def oracle(self) -> "Inputs":
        """The same values in float64 (bool masks stay bool): what the oracle computes on."""
        up = lambda t: t.double() if t is not None and t.is_floating_point() else t  # noqa: E731
        return Inputs(*(up(getattr(self, f.name)) for f in dataclasses.fields(self)))


def _seed(*parts) -> int:
    return zlib.crc32(repr(parts).encode())


def rand_tensor(shape, dtype: torch.dtype, gen: torch.Generator) -> Tensor:
    """Standard normal values drawn in float32, then rounded to ``dtype``."""
    return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)


def rand_mask(shape, dtype: torch.dtype, gen: torch.Generator, keep_prob: float = 0.7) -> Tensor:
    """A random keep-mask: bool (True = keep) or floating (1.0 keep / 0.0 drop)."""
    keep = torch.rand(shape, generator=gen) < keep_prob
    return keep if dtype == torch.bool else keep.to(dtype)


def rand_inputs(
    B: int,
    Q: int,
    K: int,
    H: int,
    H_kv: int,
    D: int,
    *,
    dtype: torch.dtype,
    mask_shape: tuple[int, ...] | None = None,
    mask_dtype: torch.dtype = torch.bool,
    keep_prob: float = 0.7,
    bias_shape: tuple[int, ...] | None = None,
    bias_dtype: torch.dtype | None = None,
    seed: int | None = None,
) -> Inputs:
    """Fresh random inputs (never zeros) in ``dtype``; the seed defaults to one derived from the case."""
    if seed is None:
        seed = _seed(B, Q, K, H, H_kv, D, dtype, mask_shape, mask_dtype, bias_shape, bias_dtype)
    gen = torch.Generator().manual_seed(seed)
    inputs = Inputs(
        q=rand_tensor((B, Q, H, D), dtype, gen),
        k=rand_tensor((B, K, H_kv, D), dtype, gen),
        v=rand_tensor((B, K, H_kv, D), dtype, gen),
        dout=rand_tensor((B, Q, H, D), dtype, gen),
    )
    if mask_shape is not None:
        inputs.mask = rand_mask(mask_shape, mask_dtype, gen, keep_prob)
    if bias_shape is not None:
        inputs.bias = rand_tensor(bias_shape, bias_dtype or dtype, gen)
    return inputs
