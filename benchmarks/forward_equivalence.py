"""Forward equivalence: out and lse of every available backend of ours against the float64 reference.

  python benchmarks/forward_equivalence.py [--quick] [--device cuda|cpu] [--backends cuda,flex,reference]
                                          [--dtypes bfloat16,float16] [--json FILE]

Cases (benchmarks/equivalence.py): broadcast forms of mask and bias, bool and float masks, GQA 1/4/8,
causal with Q<K, Q=K, Q>K, decode Q=1, softcap, fully masked rows, every head-dim bucket and dims
between them, odd lengths. Prints max/mean abs error, relative error and the naive same-dtype max
error per output; exits 1 if any row fails the pass rule (tests/helpers/oracle.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import equivalence  # noqa: E402


def main() -> int:
    args = equivalence.parser(__doc__.split("\n")[0]).parse_args()
    return equivalence.run("forward", args)


if __name__ == "__main__":
    sys.exit(main())
