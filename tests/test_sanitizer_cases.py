# ci/sanitize_cases.py must reach every kernel: its list of expected kernels is every __global__
# function in src/ (but the load-time probe), so a new kernel fails here until the sanitizer's
# cases cover it.
import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_sanitizer_cases_expect_every_kernel_in_src():
    spec = importlib.util.spec_from_file_location("sanitize_cases", ROOT / "ci" / "sanitize_cases.py")
    cases = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cases)
    kernels = set()
    for path in (ROOT / "src").rglob("*.cu*"):
        text = path.read_text()
        kernels |= set(re.findall(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(", text))
    assert "fwd_kernel" in kernels and "bwd_kernel" in kernels  # the pattern still finds kernels
    assert kernels - {"image_probe_kernel"} == set(cases.EXPECTED)
