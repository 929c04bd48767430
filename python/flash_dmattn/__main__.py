# `python -m flash_dmattn` (also the `flash-dmattn` script): what is installed and what can run here.
# Reads _version, _paths, library.info() and the backend registry; `bench` runs bench.py.
# Invariant: it reports, it never fails for a missing piece (no GPU, no compiled module).
"""Usage::

    python -m flash_dmattn                 # versions, GPU, CUDA backend build, available backends
    python -m flash_dmattn --json          # the same as JSON
    python -m flash_dmattn --cmake-dir     # only the CMake package dir:
                                           #   cmake -Ddmattn_DIR=$(python -m flash_dmattn --cmake-dir)
    python -m flash_dmattn --include-dir   # only the C header dir
    python -m flash_dmattn bench [--seqlens 512,1024] [--heads 8] [--kv-heads 2] [--head-dim 64]
                                 [--batch 2] [--causal] [--dtype bf16|fp16|fp32]
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from . import __version__, _paths
from .backends import backend_status
from . import library


def collect() -> dict:
    """Everything the report prints, as plain data."""
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            major, minor = torch.cuda.get_device_capability(i)
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i),
                         "compute_capability": f"{major}.{minor}"})
    cuda = {"built": library.is_built(), "library": str(_paths.library_path())}
    if cuda["built"]:
        try:
            cuda["info"] = library.info()
        except Exception as exc:  # report, do not crash: the library may fail to load
            cuda["info_error"] = f"{type(exc).__name__}: {exc}"
    status = backend_status()
    cuda["unavailable_reason"] = status["cuda"]
    return {
        "flash_dmattn": __version__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": gpus,
        "cuda_backend": cuda,
        "backends": {name: {"available": reason is None, "reason": reason}
                     for name, reason in status.items()},
        "available_backends": [name for name, reason in status.items() if reason is None],
        "cmake_dir": str(_paths.cmake_dir()) if _paths.cmake_dir().exists() else None,
        "include_dir": str(_paths.include_dir()),
    }


def _join(values) -> str:
    return ", ".join(str(v) for v in values) if values else "none"


def _head_dims_by_direction(kernels) -> str:
    """'forward 32, 64; backward 64' from kernel-table rows (family:direction:dtype:head_dim): the
    directions can hold different head dims (no backward at 192/256 on sm120, or with
    DMATTN_BWD_WIDE_HEAD_DIMS=OFF)."""
    dims: dict[str, set[int]] = {"fwd": set(), "bwd": set()}
    for row in kernels or ():
        _, direction, _, head_dim = row.split(":")
        dims.setdefault(direction, set()).add(int(head_dim))
    parts = [f"{name} {_join(sorted(dims[d]))}" for d, name in (("fwd", "forward"), ("bwd", "backward"))]
    return "; ".join(parts)


def render(facts: dict) -> str:
    lines = [
        f"flash-dmattn    {facts['flash_dmattn']}",
        f"torch           {facts['torch']} (CUDA {facts['torch_cuda'] or 'none'})",
        f"CUDA available  {'yes' if facts['cuda_available'] else 'no'}",
    ]
    for gpu in facts["gpus"]:
        lines.append(f"GPU {gpu['index']}           {gpu['name']}, compute capability "
                     f"{gpu['compute_capability']}")
    cuda = facts["cuda_backend"]
    lines.append(f"CUDA backend    {'built' if cuda['built'] else 'not built'}")
    info = cuda.get("info")
    if info is not None:
        lines += [
            f"  library       {info.get('version', '?')} (ABI {info.get('abi_version', '?')}), {cuda['library']}",
            f"  archs         {_join(info.get('archs'))}",
            f"  families      {_join(info.get('families'))}",
            f"  head dims     {_head_dims_by_direction(info.get('kernels'))}",
            f"  dtypes        {_join(info.get('dtypes'))}",
            f"  kernels       {len(info.get('kernels') or [])}",
        ]
    elif "info_error" in cuda:
        lines.append(f"  info failed   {cuda['info_error']}")
    if cuda["built"] and cuda["unavailable_reason"] is not None:
        lines.append(f"  cannot run    {cuda['unavailable_reason']}")
    lines.append(f"backends        available: {_join(facts['available_backends'])}")
    for name, entry in facts["backends"].items():
        if not entry["available"]:
            lines.append(f"  {name:<13} unavailable: {entry['reason']}")
    lines.append(f"cmake dir       {facts['cmake_dir'] or 'none (no C library in this install)'}")
    return "\n".join(lines)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or any(x <= 0 for x in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _positive(text: str) -> int:
    value = _int_list(text)
    if len(value) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return value[0]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flash_dmattn",
                                     description="flash-dmattn installation and backend report")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--cmake-dir", action="store_true",
                        help="print only the CMake package dir (for -Ddmattn_DIR=...)")
    parser.add_argument("--include-dir", action="store_true", help="print only the C header dir")
    sub = parser.add_subparsers(dest="command")
    bench = sub.add_parser("bench", help="forward timing of the available backends vs PyTorch SDPA")
    bench.add_argument("--seqlens", type=_int_list, help="comma-separated lengths (Q = K)")
    bench.add_argument("--heads", type=_positive, help="query heads")
    bench.add_argument("--kv-heads", type=_positive,
                       help="key/value heads (default: --heads); fewer is GQA, given to SDPA with enable_gqa=True")
    bench.add_argument("--head-dim", type=_positive)
    bench.add_argument("--batch", type=_positive)
    bench.add_argument("--causal", action="store_true", help="bottom-right causal mask")
    bench.add_argument("--dtype", choices=("bf16", "fp16", "fp32"))
    bench.add_argument("--warmup", type=int, help="untimed runs per entry")
    bench.add_argument("--reps", type=_positive, help="timed runs per entry (median reported)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    for wanted, path in ((args.cmake_dir, _paths.cmake_dir()), (args.include_dir, _paths.include_dir())):
        if wanted:
            if not path.exists():  # a DMATTN_CUDA=OFF install has no C library to link
                print(f"flash-dmattn: {path} does not exist: this install has no C library "
                      "(built with DMATTN_CUDA=OFF?)", file=sys.stderr)
                return 1
            print(path)
            return 0
    if args.command == "bench":
        from . import bench

        try:
            bench.run(seqlens=args.seqlens, heads=args.heads, kv_heads=args.kv_heads, head_dim=args.head_dim,
                      batch=args.batch, causal=args.causal, dtype=args.dtype,
                      warmup=args.warmup, reps=args.reps)
        except ValueError as exc:
            print(f"flash-dmattn bench: {exc}", file=sys.stderr)
            return 2
        return 0
    facts = collect()
    print(json.dumps(facts, indent=2) if args.json else render(facts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
