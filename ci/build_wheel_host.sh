#!/usr/bin/env bash
# build_wheel_host.sh: the wheel pipeline's build steps on this machine, without a container: the
# same CMake options as [tool.cibuildwheel] in pyproject.toml, the same repair and size check.
#
#   DMATTN_ARCHS=80 DMATTN_HEAD_DIMS=64 bash ci/build_wheel_host.sh [PYTHON...]
#
# PYTHON: interpreters to build for (default: python3). As in a cibuildwheel container, the CUDA
# libraries (which do not depend on Python) are compiled once (ci/build_libraries.sh into
# build/libraries-prefix) and every Python's wheel links them (DMATTN_PREBUILT_DIR). Wheels land in
# dist/ (repaired; the raw ones in dist/raw/).
# Environment: DMATTN_ARCHS (default "all"), DMATTN_HEAD_DIMS, DMATTN_KERNELS, CUTLASS_DIR (default:
# the nvidia-cutlass package unpacked into build/cutlass by ci/prepare_cutlass.sh, from .whl/ if
# one is there), SKIP_REPAIR=1 (no auditwheel on this machine: the raw wheel is size-checked and
# copied to dist/), BUILD_ISOLATION=0 (no package index: build with the scikit-build-core and
# nanobind installed in each PYTHON).
set -euo pipefail
cd "$(dirname "$0")/.."
pythons=("$@")
[ ${#pythons[@]} -gt 0 ] || pythons=(python3)
export DMATTN_ARCHS=${DMATTN_ARCHS:-all}
if [ -z "${CUTLASS_DIR:-}" ]; then
  [ -f build/cutlass/cutlass_library/source/include/cute/tensor.hpp ] || bash ci/prepare_cutlass.sh build/cutlass
  export CUTLASS_DIR=$PWD/build/cutlass/cutlass_library/source
fi
prefix=$PWD/build/libraries-prefix
rm -rf "$prefix" dist/raw dist/flash_dmattn-*.whl
bash ci/build_libraries.sh "$prefix"
mkdir -p dist/raw
isolation=()
[ "${BUILD_ISOLATION:-1}" = 0 ] && isolation=(--no-build-isolation)
for py in "${pythons[@]}"; do
  start=$(date +%s)
  echo "==== wheel for $($py --version) (archs ${DMATTN_ARCHS}, kernels ${DMATTN_KERNELS:-${DMATTN_HEAD_DIMS:-all}})"
  DMATTN_PREBUILT_DIR=$prefix $py -m pip wheel . --no-deps -w dist/raw "${isolation[@]}"
  echo "==== built in $(( $(date +%s) - start ))s"
done
for wheel in dist/raw/*.whl; do
  # Each wheel carries the libraries built above byte for byte: no Python's build compiled CUDA.
  rm -rf dist/raw/unpacked
  python3 -m zipfile -e "$wheel" dist/raw/unpacked
  for lib in "$prefix"/lib/libdmattn*.so; do
    cmp "$lib" "dist/raw/unpacked/flash_dmattn/lib/$(basename "$lib")"
  done
  echo "$(basename "$wheel") carries the prebuilt $(cd "$prefix/lib" && echo libdmattn*.so)"
  if [ "${SKIP_REPAIR:-0}" = 1 ]; then
    cp "$wheel" dist/
    python3 ci/check_wheel_size.py "dist/$(basename "$wheel")"
  else
    bash ci/repair_wheel.sh "$wheel" dist
  fi
done
rm -rf dist/raw/unpacked
ls -la dist/*.whl
