#!/usr/bin/env bash
# gpu_wheel_check.sh: the wheel a release ships, checked on a GPU machine. Builds it with the
# pipeline's host steps (ci/build_wheel_host.sh: every arch family by default), installs it into an
# empty target and runs the whole test suite (GPU tests included) against that install, with
# `python -m flash_dmattn` and `ldd` of the installed libraries. Writes summary.md: build time,
# per-library and wheel sizes, test result.
#
#   bash ci/gpu_wheel_check.sh [RESULTS_DIR]
#
# RESULTS_DIR defaults to $OUT if set, else ./gpu-wheel-check. The CUDA build resumes where a run
# cut off by a time limit stopped (its build tree, build/libraries, is kept), so the same command
# can be repeated until it gets past the build. Environment: DMATTN_ARCHS (default all),
# DMATTN_HEAD_DIMS, DMATTN_KERNELS, JOBS, PYTHON (default python3; needs scikit-build-core and
# nanobind: the build runs without a package index), SKIP_REPAIR (default 1 unless auditwheel is
# installed), GPU_CHECK_TESTS (default tests).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
RESULTS=${1:-${OUT:-$PWD/gpu-wheel-check}}
SITE=${SCRATCH:-/tmp/dmattn-gpu-wheel-check}/site
PY=${PYTHON:-python3}
export DMATTN_ARCHS=${DMATTN_ARCHS:-all}
if ! command -v auditwheel > /dev/null || ! command -v patchelf > /dev/null; then
  export SKIP_REPAIR=${SKIP_REPAIR:-1}
fi
mkdir -p "$RESULTS"
step() { printf '\n==== %s (t=%ss) ====\n' "$*" "$SECONDS"; }

step "wheel: archs $DMATTN_ARCHS, ${JOBS:-$(nproc)} jobs, repair: $([ "${SKIP_REPAIR:-0}" = 1 ] && echo skipped || echo auditwheel)"
BUILD_ISOLATION=0 bash ci/build_wheel_host.sh "$PY" > "$RESULTS/build.log" 2>&1
rc=$?
tail -15 "$RESULTS/build.log"
[ $rc -eq 0 ] || { echo "BUILD FAILED (rc $rc): see build.log"; exit 1; }
wheel=$(ls dist/flash_dmattn-*.whl)

step "install into an empty target"
rm -rf "$SITE"
$PY -m pip install -q --no-deps --no-index --target "$SITE" "$wheel" || exit 1
export PYTHONPATH=$SITE FLASH_DMATTN_WHEEL=$PWD/$wheel FLASH_DMATTN_REQUIRE_BUILD=1
$PY -m flash_dmattn | tee "$RESULTS/info.txt"
for lib in "$SITE"/flash_dmattn/lib/*.so "$SITE"/flash_dmattn/_C*.so; do
  echo "$(basename "$lib"):"; ldd "$lib"
done | tee "$RESULTS/ldd.txt"

step "tests against the installed wheel"
# From tests/, so nothing of the source tree's python/ can shadow the install.
(cd tests && $PY -m pytest "${GPU_CHECK_TESTS:-.}" -q -rs -p no:cacheprovider) 2>&1 | tee "$RESULTS/pytest.log"
status=${PIPESTATUS[0]}

{
  echo "# Wheel check: $(date -u +%Y-%m-%d) on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo
  echo "- commit: $(git rev-parse HEAD 2> /dev/null || echo unknown)$([ -n "$(git status --porcelain 2> /dev/null)" ] && echo ' + uncommitted changes')"
  echo "- software: $($PY -c "import sys, torch; print('python', sys.version.split()[0], '/ torch', torch.__version__)") / $(nvcc --version | tail -1)"
  echo "- tests: $(tail -1 "$RESULTS/pytest.log")"
  echo
  echo '## Build (ci/build_libraries.sh report) and wheel size'
  echo '```'
  cat build/libraries/report.txt
  grep -A20 '^flash_dmattn-.*MB compressed' "$RESULTS/build.log"
  echo '```'
  echo '## python -m flash_dmattn'; echo '```'; cat "$RESULTS/info.txt"; echo '```'
  echo '## ldd'; echo '```'; cat "$RESULTS/ldd.txt"; echo '```'
} > "$RESULTS/summary.md"
cat "$RESULTS/summary.md"
exit "$status"
