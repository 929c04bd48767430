# Which CUDA kernels this build holds, for GPU tests: a row the build was meant to hold and lacks is a
# failure; a row the build left out on purpose (a developer's subset) skips with the reason.
# FLASH_DMATTN_REQUIRE_KERNELS says which rows must be there: "all", or the rows, ";"- or ","-separated,
# as in DMATTN_KERNELS ("sm90:fwd:bf16:128"; the family may be left out: "fwd:bf16:128"). Unset: none
# is required (a local run skips what is missing). ci/gpu_check.sh sets it from what it built.
from __future__ import annotations

import os
import re

import pytest
import torch

from flash_dmattn import library

BUCKETS = (32, 64, 96, 128, 192, 256)
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}
DIRECTIONS = {"fwd": "forward", "bwd": "backward"}


def bucket(d: int) -> int:
    """The head-dim bucket whose kernels serve head dim d."""
    return next(b for b in BUCKETS if d <= b)


def required_rows(value: str | None = None) -> set[str] | str:
    """The rows FLASH_DMATTN_REQUIRE_KERNELS (or ``value``) requires, without their family: a set
    of "direction:dtype:head_dim", or "all"."""
    value = os.environ.get("FLASH_DMATTN_REQUIRE_KERNELS", "") if value is None else value
    if value.strip() == "all":
        return "all"
    rows = set()
    for row in filter(None, (r.strip() for r in re.split(r"[;,\s]+", value))):
        parts = row.split(":")
        if len(parts) not in (3, 4) or parts[-3] not in DIRECTIONS or parts[-2] not in NAMES.values():
            raise ValueError(f"FLASH_DMATTN_REQUIRE_KERNELS: {row!r} is not a kernel-table row "
                             "(family:direction:dtype:head_dim, e.g. sm90:fwd:bf16:128)")
        rows.add(":".join(parts[-3:]))
    return rows


def require_kernels(dtype: torch.dtype, head_dim: int, *directions: str) -> None:
    """Skip unless the library serves this GPU and holds the kernel-table rows for dtype, head_dim's
    bucket and each direction ("fwd", "bwd"; default "fwd"); fail instead of skipping when the row
    is one FLASH_DMATTN_REQUIRE_KERNELS requires."""
    reason = library.library_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    rows = library.info()["kernels"]
    required = required_rows()
    for direction in directions or ("fwd",):
        row = f"{direction}:{NAMES[dtype]}:{bucket(head_dim)}"
        if any(r.endswith(":" + row) for r in rows):
            continue
        missing = f"no {DIRECTIONS[direction]} kernel built for {NAMES[dtype]} head_dim bucket {bucket(head_dim)}"
        if required == "all" or row in required:
            pytest.fail(f"{missing}, but FLASH_DMATTN_REQUIRE_KERNELS requires the row {row}")
        pytest.skip(f"{missing} (not required by FLASH_DMATTN_REQUIRE_KERNELS)")
