#!/usr/bin/env bash
# prepare_cutlass.sh DIR: the CUTLASS/CuTe headers (the nvidia-cutlass package) unpacked at a fixed
# path, so every Python build of a cibuildwheel container compiles the CUDA libraries with the same
# command lines and reuses their objects (set CUTLASS_DIR=DIR/cutlass_library/source).
set -euo pipefail
dir=${1:-/opt/cutlass}
python3 -m pip install --no-deps --target "$dir" "nvidia-cutlass>=4.2,<5"
test -f "$dir/cutlass_library/source/include/cute/tensor.hpp"
echo "CUTLASS headers in $dir/cutlass_library/source"
