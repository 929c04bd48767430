"""A C++ program configures against the installed package's CMake config, links dmattn::dmattn,
runs, and prints the library's version: the path a C++ user takes."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flash_dmattn
from flash_dmattn import _paths

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.skipif(not _paths.cmake_dir().exists(), reason="no CMake package installed (DMATTN_CUDA=OFF or source tree)"),
    pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not on PATH"),
]


def run(cmd, **kw):
    result = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_cpp_program_builds_and_links_against_the_installed_package(tmp_path):
    cmake_dir = run([sys.executable, "-m", "flash_dmattn", "--cmake-dir"]).strip()
    assert Path(cmake_dir) == _paths.cmake_dir()
    build = tmp_path / "build"
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    run(["cmake", "-S", str(HERE / "cpp_consumer"), "-B", str(build), f"-Ddmattn_DIR={cmake_dir}", *generator])
    run(["cmake", "--build", str(build)])
    exe = build / "dmattn_consumer"
    # No LD_LIBRARY_PATH: the imported target's location is baked into the executable's RPATH.
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    out = run([str(exe)], env=env)
    assert f"dmattn version {flash_dmattn.__version__} abi 1" in out
    assert "archs 8" in out or "archs 9" in out or "archs 1" in out
    assert "device 0: DMATTN_STATUS_" in out
