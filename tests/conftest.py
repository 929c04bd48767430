# pytest setup shared by every test file: the `gpu` marker and the import path.
# Invariant: a CPU-only machine runs everything not marked gpu.
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# Run from a source checkout without installing: fall back to python/ when flash_dmattn is not
# importable already (an installed wheel or PYTHONPATH wins).
if importlib.util.find_spec("flash_dmattn") is None:
    sys.path.insert(0, str(ROOT / "python"))


def pytest_configure(config):
    # CI sets this: there the compiled library must exist, or tests that skip without it would
    # hide a broken build.
    if os.environ.get("FLASH_DMATTN_REQUIRE_BUILD") == "1":
        from flash_dmattn import library as cuda

        if not cuda.is_built():
            raise pytest.UsageError(f"FLASH_DMATTN_REQUIRE_BUILD=1 but {cuda.library_unavailable_reason()}")
    # torch.compile's own internals (inductor) still call this deprecated torch.jit decorator
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def pytest_collection_modifyitems(config, items):
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    has_gpu = torch.cuda.is_available()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
