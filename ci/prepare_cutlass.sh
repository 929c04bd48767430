#!/usr/bin/env bash
# prepare_cutlass.sh DIR: the CUTLASS/CuTe headers (the nvidia-cutlass package) unpacked at a fixed
# path, so every Python build of a cibuildwheel container compiles the CUDA libraries with the same
# command lines and reuses their objects (set CUTLASS_DIR=DIR/cutlass_library/source). A wheel in
# .whl/ (a machine without PyPI access) is used as it is; otherwise PyPI's.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-/opt/cutlass}
wheel=$(find .whl -maxdepth 1 -name 'nvidia_cutlass-*.whl' 2> /dev/null | head -1 || true)
python3 -m pip install --no-deps --target "$dir" "${wheel:-nvidia-cutlass>=4.2,<5}"
test -f "$dir/cutlass_library/source/include/cute/tensor.hpp"
echo "CUTLASS headers in $dir/cutlass_library/source"
