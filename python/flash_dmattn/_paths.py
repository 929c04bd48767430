"""Where the installed package keeps its compiled parts: libdmattn, headers, CMake package config.

C++ users point CMake at `cmake_dir()` (printed by `python -m flash_dmattn --cmake-dir`).
"""
from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def lib_dir() -> Path:
    return PACKAGE_DIR / "lib"


def include_dir() -> Path:
    return PACKAGE_DIR / "include"


def cmake_dir() -> Path:
    return lib_dir() / "cmake" / "dmattn"


def library_path() -> Path:
    """Path of libdmattn (the C ABI). It may not exist in a build without CUDA."""
    return lib_dir() / "libdmattn.so"
