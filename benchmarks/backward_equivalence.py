"""Backward equivalence: dq, dk, dv and dbias (in the bias's own shape) of every available backend of
ours, through autograd for a fixed random dout, against the float64 reference's backward.

  python benchmarks/backward_equivalence.py [--quick] [--device cuda|cpu] [--backends cuda,flex,reference]
                                           [--dtypes bfloat16,float16] [--json FILE]

The same cases as forward_equivalence.py (benchmarks/equivalence.py). Prints max/mean abs error,
relative error and the naive same-dtype max error per gradient; exits 1 if any row fails the pass
rule (tests/helpers/oracle.py). On CPU only the reference backend computes q/k/v gradients.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equivalence  # noqa: E402


def main() -> int:
    args = equivalence.parser(__doc__.split("\n")[0]).parse_args()
    return equivalence.run("backward", args)


if __name__ == "__main__":
    sys.exit(main())
