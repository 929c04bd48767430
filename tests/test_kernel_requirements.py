# The GPU tests' kernel rule (helpers/kernels.py): a row FLASH_DMATTN_REQUIRE_KERNELS requires and the
# build lacks fails the test; a row left out on purpose skips. Checked here against a stand-in table.
import pytest
import torch
from _pytest.outcomes import Failed, Skipped

from helpers import kernels

TABLE = ["sm90:fwd:bf16:64", "sm90:bwd:bf16:64", "sm90:fwd:bf16:128"]


@pytest.fixture
def built(monkeypatch):
    monkeypatch.setattr(kernels.library, "library_unavailable_reason", lambda device=None: None)
    monkeypatch.setattr(kernels.library, "info", lambda: {"kernels": TABLE})


def test_required_rows_parse_the_build_variables():
    assert kernels.required_rows("all") == "all"
    assert kernels.required_rows("") == set()
    assert kernels.required_rows("sm90:fwd:bf16:64;sm90:bwd:bf16:64") == {"fwd:bf16:64", "bwd:bf16:64"}
    assert kernels.required_rows("fwd:fp16:96, bwd:bf16:128;") == {"fwd:fp16:96", "bwd:bf16:128"}
    with pytest.raises(ValueError, match="FLASH_DMATTN_REQUIRE_KERNELS"):
        kernels.required_rows("sm90:fwd:bf16")


@pytest.mark.parametrize("required,dtype,d,directions,outcome", [
    ("", torch.bfloat16, 64, ("fwd", "bwd"), None),          # present: runs
    ("", torch.bfloat16, 128, ("bwd",), Skipped),            # absent, nothing required: skips
    ("all", torch.bfloat16, 128, ("bwd",), Failed),          # absent and everything required: fails
    ("sm90:bwd:bf16:128", torch.bfloat16, 100, ("bwd",), Failed),  # head dim 100 is bucket 128
    ("sm90:bwd:bf16:128", torch.float16, 64, (), Skipped),   # fp16 not required: skips
])
def test_a_missing_required_row_fails_and_an_optional_one_skips(built, monkeypatch, required, dtype, d,
                                                                directions, outcome):
    monkeypatch.setenv("FLASH_DMATTN_REQUIRE_KERNELS", required)
    if outcome is None:
        kernels.require_kernels(dtype, d, *directions)
        return
    with pytest.raises(outcome):
        kernels.require_kernels(dtype, d, *directions)
