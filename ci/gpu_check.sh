#!/usr/bin/env bash
# gpu_check.sh: the one command for a GPU machine. Builds flash-dmattn for the local GPU's arch,
# installs it into a scratch directory, runs the whole test suite (GPU-marked tests included), the
# side-by-side benchmark and the host-overhead benchmark, and prints a short summary.
#
#   bash ci/gpu_check.sh [RESULTS_DIR]
#
# RESULTS_DIR (default: $OUT if set, else ./gpu-check) receives summary.md and the full logs; commit
# them under benchmarks/results/<date>-<gpu>/. Environment:
#   DMATTN_ARCHS      archs to build (default: the local GPU's)
#   DMATTN_HEAD_DIMS  head-dim subset (default: all)
#   DMATTN_BWD_WIDE_HEAD_DIMS  ON (the default): the backward's D = 192/256 kernels
#   CUTLASS_DIR       CUTLASS headers; otherwise a nvidia-cutlass wheel in .whl/ or the installed package
#   GIT_COMMIT        commit being checked (default: git rev-parse HEAD when .git exists)
#   JOBS              build parallelism (default: nproc)
#   GPU_CHECK_TESTS   test paths to run (default: tests)
#   GPU_CHECK_FORWARD forward benchmark (benchmarks/forward_performance.py): quick (default), full or skip
#   GPU_CHECK_BACKWARD backward benchmark (benchmarks/backward_performance.py): quick (default), full or skip
#   GPU_CHECK_WHEEL   a wheel built elsewhere (e.g. here by ci/build_wheel_host.sh, whose CUDA libraries
#                     compiled on a CPU machine): installed instead of building, so the GPU's time goes
#                     to tests and benchmarks
#   FLASH_DMATTN_REQUIRE_KERNELS  the kernel-table rows whose GPU tests must run, not skip (a test
#                     whose row is missing fails): default DMATTN_KERNELS when set, else the rows of
#                     DMATTN_HEAD_DIMS when set, else "all"; a prebuilt wheel is held to the same
#                     variables, so export the ones it was built with
#   GPU_CHECK_PROFILE 1: Nsight Compute on one dense D=128 forward (benchmarks/profile_attention.py),
#                     its speed-of-light, occupancy and warp-stall sections into the summary
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-$PWD/gpu-check}}
mkdir -p "$RESULTS"
SCRATCH=${SCRATCH:-/tmp/dmattn-gpu-check}
SITE=$SCRATCH/site
PY=${PYTHON:-python3}
export CMAKE_BUILD_PARALLEL_LEVEL=${JOBS:-$(nproc)}
export DMATTN_BWD_WIDE_HEAD_DIMS=${DMATTN_BWD_WIDE_HEAD_DIMS:-ON}
COMMIT=${GIT_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}
# A copied working tree (the device tool's) reports its base commit: say when files differ from it.
[ -z "${GIT_COMMIT:-}" ] && [ -n "$(git status --porcelain 2>/dev/null)" ] && COMMIT="$COMMIT + uncommitted changes"
status=0
step() { printf '\n==== %s (t=%ss) ====\n' "$*" "$SECONDS"; }

step "machine"
mkdir -p "$SCRATCH"
# At most 8 files go to RESULTS (summary, pytest and bench logs, host overhead json, forward and backward
# text + json; the build log stays in SCRATCH): small facts
# go into the summary only.
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader | tee "$SCRATCH/gpu.txt"
GPU=$(head -1 "$SCRATCH/gpu.txt" | cut -d, -f1)
$PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
nvcc --version | tail -2

step "CUTLASS"
if [ -z "${CUTLASS_DIR:-}" ]; then
  wheel=$(ls .whl/nvidia_cutlass-*.whl 2>/dev/null | head -1)
  if [ -n "$wheel" ]; then
    $PY -m pip install -q --no-deps --no-index --target "$SCRATCH/cutlass" "$wheel" || exit 1
    export CUTLASS_DIR=$SCRATCH/cutlass/cutlass_library/source
  fi
fi
echo "CUTLASS_DIR=${CUTLASS_DIR:-<from the installed nvidia-cutlass package>}"

rm -rf "$SITE"
if [ -n "${GPU_CHECK_WHEEL:-}" ]; then
  step "install the prebuilt wheel $(basename "$GPU_CHECK_WHEEL")"
  t0=$(date +%s)
  $PY -m pip install -q --no-deps --no-index --target "$SITE" "$GPU_CHECK_WHEEL" > "$SCRATCH/build.log" 2>&1 \
    || { cat "$SCRATCH/build.log"; exit 1; }
  BUILD_NOTE="none: prebuilt wheel $(basename "$GPU_CHECK_WHEEL") installed in $(( $(date +%s) - t0 ))s"
else
  step "build (archs: ${DMATTN_ARCHS:-local GPU}, jobs: $CMAKE_BUILD_PARALLEL_LEVEL)"
  t0=$(date +%s)
  $PY -m pip install --no-build-isolation --no-deps --no-index --target "$SITE" \
    -C build-dir="$SCRATCH/build" -C cmake.define.CUTLASS_DIR="${CUTLASS_DIR:-}" . > "$SCRATCH/build.log" 2>&1
  rc=$?
  t1=$(date +%s)
  BUILD_S=$((t1 - t0))
  BUILD_NOTE="${BUILD_S}s for archs ${DMATTN_ARCHS:-local} with $CMAKE_BUILD_PARALLEL_LEVEL jobs"
  tail -3 "$SCRATCH/build.log"
  if [ $rc -ne 0 ]; then
    echo "BUILD FAILED (rc $rc); the end of the build log:"
    tail -40 "$SCRATCH/build.log"
    exit 1
  fi
fi
ls -la "$SITE/flash_dmattn/lib" | tee "$SCRATCH/libraries.txt"
export PYTHONPATH=$SITE

step "python -m flash_dmattn"
$PY -m flash_dmattn | tee "$SCRATCH/info.txt" || status=1

# The rows this check was asked for must all be there: a GPU test whose row is missing fails.
if [ -z "${FLASH_DMATTN_REQUIRE_KERNELS:-}" ]; then
  if [ -n "${DMATTN_KERNELS:-}" ]; then
    FLASH_DMATTN_REQUIRE_KERNELS=$DMATTN_KERNELS
  elif [ -n "${DMATTN_HEAD_DIMS:-}" ]; then
    FLASH_DMATTN_REQUIRE_KERNELS=$(for d in ${DMATTN_HEAD_DIMS//,/ }; do for t in fp16 bf16; do
      printf 'fwd:%s:%s;' "$t" "$d"
      case " 192 256 " in *" $d "*) [ "$DMATTN_BWD_WIDE_HEAD_DIMS" = ON ] || continue ;; esac
      printf 'bwd:%s:%s;' "$t" "$d"; done; done)
  else
    FLASH_DMATTN_REQUIRE_KERNELS=all
  fi
fi
export FLASH_DMATTN_REQUIRE_KERNELS
echo "required kernel-table rows: $FLASH_DMATTN_REQUIRE_KERNELS"

step "tests (all, GPU-marked included)"
$PY -m pytest ${GPU_CHECK_TESTS:-tests} -q -rs -p no:cacheprovider 2>&1 | tee "$RESULTS/pytest.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
TESTS=$(tail -1 "$RESULTS/pytest.log")

step "benchmark: python -m flash_dmattn bench"
$PY -m flash_dmattn bench 2>&1 | tee "$RESULTS/bench.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

step "benchmark: host overhead"
$PY benchmarks/bench_overhead.py --json "$RESULTS/overhead.json" 2>&1 | tee "$SCRATCH/overhead.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# One peer benchmark: bench_peers NAME MODE (quick, full or skip) runs benchmarks/NAME_performance.py
# into $SCRATCH/perf (NAME.json, NAME.md, plots) and its printout into $RESULTS/NAME.txt.
bench_peers() {
  local name=$1 mode=$2
  [ "$mode" = skip ] && return 0
  step "benchmark: $name against the peers ($mode)"
  $PY "benchmarks/${name}_performance.py" $([ "$mode" = quick ] && echo --quick) --out "$SCRATCH/perf" 2>&1 \
    | tee "$RESULTS/$name.txt"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  cp "$SCRATCH/perf/$name.json" "$RESULTS/" 2>/dev/null
}

bench_peers forward "${GPU_CHECK_FORWARD:-quick}"
bench_peers backward "${GPU_CHECK_BACKWARD:-quick}"

if [ "${GPU_CHECK_PROFILE:-0}" = 1 ]; then
  step "profile: ncu on the forward kernel"
  if command -v ncu > /dev/null; then
    ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --section LaunchStats \
      -k regex:fwd_kernel -c 1 $PY benchmarks/profile_attention.py --D 128 --reps 1 > "$SCRATCH/profile.txt" 2>&1
    tail -80 "$SCRATCH/profile.txt"
  else
    echo "ncu not found" | tee "$SCRATCH/profile.txt"
  fi
fi

{
  echo "# GPU check: $(date -u +%Y-%m-%d) on $GPU"
  echo
  echo "- commit: $COMMIT"
  echo "- gpu: $(cat "$SCRATCH/gpu.txt")"
  echo "- software: $($PY -c "import sys, torch; print('python', sys.version.split()[0], '/ torch', torch.__version__)") / $(nvcc --version | tail -1)"
  echo "- build: $BUILD_NOTE"
  echo "- tests: $TESTS"
  echo
  echo '## Libraries'; echo '```'; cat "$SCRATCH/libraries.txt"; echo '```'
  echo '## python -m flash_dmattn'; echo '```'; cat "$SCRATCH/info.txt"; echo '```'
  echo '## python -m flash_dmattn bench'; echo '```'; cat "$RESULTS/bench.txt"; echo '```'
  echo '## Host overhead (benchmarks/bench_overhead.py)'; echo '```'; cat "$SCRATCH/overhead.txt"; echo '```'
  [ -f "$SCRATCH/profile.txt" ] && [ "${GPU_CHECK_PROFILE:-0}" = 1 ] && { echo '## Nsight Compute, one dense D=128 forward'; echo '```'; tail -80 "$SCRATCH/profile.txt"; echo '```'; }
  [ -f "$RESULTS/forward.txt" ] && { echo '## Forward against the peers (benchmarks/forward_performance.py)'; echo '```'; cat "$RESULTS/forward.txt"; echo '```'; }
  [ -f "$RESULTS/backward.txt" ] && { echo '## Backward against the peers (benchmarks/backward_performance.py)'; echo '```'; cat "$RESULTS/backward.txt"; echo '```'; }
} > "$RESULTS/summary.md"

step "summary"
echo "gpu: $GPU | commit: $COMMIT | build: $BUILD_NOTE | tests: $TESTS | status: $([ $status -eq 0 ] && echo PASS || echo FAIL)"
exit $status
