"""Fails if a wheel is over the size limit (100 MB), and prints what takes the room (per-arch
kernel libraries first).

  python ci/check_wheel_size.py [--limit-mb 100] WHEEL...
"""
from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path


def report(wheel: Path, limit_mb: float) -> bool:
    size_mb = wheel.stat().st_size / 1e6
    with zipfile.ZipFile(wheel) as z:
        libs = sorted((i for i in z.infolist() if i.filename.endswith(".so") or ".so." in i.filename),
                      key=lambda i: -i.file_size)
    ok = size_mb <= limit_mb
    print(f"{wheel.name}: {size_mb:.1f} MB compressed (limit {limit_mb:.0f} MB): {'ok' if ok else 'TOO LARGE'}")
    for i in libs:
        print(f"  {i.filename}: {i.file_size / 1e6:.1f} MB ({i.compress_size / 1e6:.1f} MB in the wheel)")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("wheels", nargs="+", type=Path)
    ap.add_argument("--limit-mb", type=float, default=100.0)
    args = ap.parse_args()
    results = [report(w, args.limit_mb) for w in args.wheels]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
