# Edge cases as data, shared by every backend's tests: shapes whose lengths break tiles, every
# mask/bias broadcast form, GQA ratios and head dims at and between the kernel buckets.
# Sizes stay CPU-affordable; GPU tests may scale the lengths up but keep the same forms.
from __future__ import annotations

import itertools
from typing import Callable

# (B, Q, K, H, H_kv, D).  Lengths 1, 17, 113 and 203 fall off any power-of-two tile; 128 fits
# one exactly; Q > K leaves leading causal rows empty; Q = 1 is decoding.
SHAPES: list[tuple[int, int, int, int, int, int]] = [
    (1, 1, 1, 1, 1, 32),
    (2, 17, 17, 4, 2, 64),
    (1, 113, 203, 4, 1, 72),
    (1, 203, 113, 2, 2, 40),
    (2, 1, 203, 8, 1, 128),
    (1, 128, 128, 2, 2, 96),
]

# (Q, K) for causal alignment: Q < K, Q == K, Q > K (its first Q - K rows see no key), decode.
CAUSAL_LENGTHS: list[tuple[int, int]] = [(17, 45), (33, 33), (45, 17), (1, 64), (64, 1)]

# H // H_kv: MHA, GQA, and an 8-way group.
GQA_RATIOS: tuple[int, ...] = (1, 4, 8)

# The kernel head-dim buckets, and dims that fall between them (padded up to the next bucket).
HEAD_DIM_BUCKETS: tuple[int, ...] = (32, 64, 96, 128, 192, 256)
HEAD_DIMS_BETWEEN: tuple[int, ...] = (40, 72, 136, 200)
HEAD_DIMS: tuple[int, ...] = HEAD_DIM_BUCKETS + HEAD_DIMS_BETWEEN

# Each axis of a mask or bias is full or broadcast: (B|1, H|H_kv|1, Q|1, K|1), 2*3*2*2 = 24 forms.
_AXIS_FORMS: tuple[tuple[tuple[str, Callable[..., int]], ...], ...] = (
    (("B", lambda B, H, H_kv, Q, K: B), ("1", lambda *_: 1)),
    (("H", lambda B, H, H_kv, Q, K: H), ("H_kv", lambda B, H, H_kv, Q, K: H_kv), ("1", lambda *_: 1)),
    (("Q", lambda B, H, H_kv, Q, K: Q), ("1", lambda *_: 1)),
    (("K", lambda B, H, H_kv, Q, K: K), ("1", lambda *_: 1)),
)


def _form(parts) -> Callable[[int, int, int, int, int], tuple[int, int, int, int]]:
    return lambda B, H, H_kv, Q, K: tuple(f(B, H, H_kv, Q, K) for _, f in parts)


# (name, shape function of (B, H, H_kv, Q, K)); names read like "1,H_kv,Q,1".
BROADCAST_FORMS: list[tuple[str, Callable[[int, int, int, int, int], tuple[int, int, int, int]]]] = [
    (",".join(n for n, _ in parts), _form(parts)) for parts in itertools.product(*_AXIS_FORMS)
]


def broadcast_shapes(B: int, H: int, H_kv: int, Q: int, K: int) -> list[tuple[str, tuple[int, int, int, int]]]:
    """Every distinct broadcast shape for this problem, named by its first form.

    Forms that coincide (H == H_kv, or any length already 1) are listed once.
    """
    seen: dict[tuple[int, int, int, int], str] = {}
    for name, shape_of in BROADCAST_FORMS:
        seen.setdefault(shape_of(B, H, H_kv, Q, K), name)
    return [(name, shape) for shape, name in seen.items()]
