#!/usr/bin/env bash
# build_libraries.sh PREFIX: the CUDA libraries alone (no Python module), installed into PREFIX, for
# wheel builds to reuse through DMATTN_PREBUILT_DIR=PREFIX (they compile nothing of CUDA then).
# Environment: DMATTN_ARCHS (default "all"), DMATTN_HEAD_DIMS, DMATTN_KERNELS, CUTLASS_DIR, JOBS.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$1
build=${LIBRARIES_BUILD_DIR:-build/libraries}
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDMATTN_BUILD_PYTHON=OFF -DCMAKE_INSTALL_LIBDIR=lib \
  -DDMATTN_ARCHS="${DMATTN_ARCHS:-all}" -DDMATTN_HEAD_DIMS="${DMATTN_HEAD_DIMS:-}" -DDMATTN_KERNELS="${DMATTN_KERNELS:-}" \
  ${CUTLASS_DIR:+-DCUTLASS_DIR="$CUTLASS_DIR"}
cmake --build "$build" -j "${JOBS:-$(nproc)}"
cmake --install "$build" --prefix "$prefix"
echo "==== libraries for archs ${DMATTN_ARCHS:-all} built in $(( $(date +%s) - start ))s:"
ls -la "$prefix/lib"
