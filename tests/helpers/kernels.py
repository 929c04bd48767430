# Which CUDA kernels this build holds, for GPU tests that skip (with the reason) what was not built.
from __future__ import annotations

import pytest
import torch

from flash_dmattn.backends import cuda as cuda_backend

BUCKETS = (32, 64, 96, 128, 192, 256)
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
DIRECTIONS = {"fwd": "forward", "bwd": "backward"}


def bucket(d: int) -> int:
    """The head-dim bucket whose kernels serve head dim d."""
    return next(b for b in BUCKETS if d <= b)


def require_kernels(dtype: torch.dtype, head_dim: int, *directions: str) -> None:
    """Skip unless the library serves this GPU and holds the kernel-table rows for dtype, head_dim's
    bucket and each direction ("fwd", "bwd"; default "fwd")."""
    reason = cuda_backend.library_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    rows = cuda_backend.info()["kernels"]
    for direction in directions or ("fwd",):
        if not any(r.endswith(f":{direction}:{NAMES[dtype]}:{bucket(head_dim)}") for r in rows):
            pytest.skip(f"no {DIRECTIONS[direction]} kernel built for {NAMES[dtype]} head_dim bucket {bucket(head_dim)}")
