#!/usr/bin/env bash
# gpu_ab.sh: A/B kernel experiments in one GPU-machine call. Builds several variants of the library
# side by side (each from a source tree and extra CUDA flags, for a kernel-table subset), checks each
# with a test subset, and times each on the same forward benchmark groups, so versions are compared
# in one run on one GPU (ci/gpu_check.sh stays the one command for the full check).
#
#   bash ci/gpu_ab.sh NAME=SRC[:CUDA_FLAGS] ...
#
#   NAME        a label (letters, digits, '-', '_')
#   SRC         source tree: '.' for the working tree, or a copy of another commit, e.g. made with
#               `mkdir -p .ab/base && git archive HEAD | tar -x -C .ab/base` (.ab/ is ignored; carry it);
#               or wheel:PATH, a wheel built elsewhere (ci/build_wheel_host.sh on a CPU machine), installed
#               instead of built, so the GPU's time goes to measuring (its tests run from the working tree)
#   CUDA_FLAGS  extra nvcc flags, e.g. -DSOME_SWITCH=0 read by the kernel under test (spaces allowed, quote the argument)
# Environment:
#   AB_KERNELS  kernel-table rows (default "sm90:fwd:bf16:64;sm90:fwd:bf16:128"); per variant
#               AB_KERNELS_<NAME> overrides it
#   AB_TESTS    pytest arguments run against every variant (default: tests/test_forward_cuda.py -q -x);
#               "skip" runs none; per variant AB_TESTS_<NAME> overrides it
#   AB_BENCH    which performance script: forward (default, benchmarks/forward_performance.py) or
#               backward (benchmarks/backward_performance.py)
#   AB_GROUPS   that script's groups (default dense,bias)
#   AB_SIZES    quick (default: the script's --quick) or full
#   AB_SKIP     peers the benchmark leaves out (the script's --skip, e.g. flex,sdpa-mask)
#   AB_TABLE    ';'-separated argument sets of benchmarks/profile_attention.py --table (each kernel's
#               time in one call, torch.profiler) run for every variant
#   AB_HOST     a variant name: benchmarks/profile_host.py (where a forward + backward call's host time
#               goes) with the arguments in AB_HOST_ARGS (default: its sparse row)
#   AB_PROFILE  a variant name: Nsight Compute on one of its kernels (benchmarks/profile_attention.py), once
#               per ';'-separated argument set in AB_PROFILE_ARGS (default "--D 128"); AB_PROFILE_KERNEL
#               names the kernel (default fwd_kernel; bwd_kernel with --backward in the arguments)
# Results (logs, one table per variant) go to ${OUT:-./gpu-ab}.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RESULTS=${OUT:-$ROOT/gpu-ab}
SCRATCH=${SCRATCH:-/tmp/dmattn-ab}
PY=${PYTHON:-python3}
mkdir -p "$RESULTS" "$SCRATCH"
[ $# -gt 0 ] || { echo "usage: $0 NAME=SRC[:CUDA_FLAGS] ..."; exit 2; }
step() { printf '\n==== %s (t=%ss) ====\n' "$*" "$SECONDS"; }

if [ -z "${CUTLASS_DIR:-}" ]; then
  wheel=$(ls .whl/nvidia_cutlass-*.whl 2>/dev/null | head -1)
  if [ -n "$wheel" ]; then
    $PY -m pip install -q --no-deps --no-index --target "$SCRATCH/cutlass" "$wheel" || exit 1
    export CUTLASS_DIR=$SCRATCH/cutlass/cutlass_library/source
  fi
fi

names=()
declare -A src flags
is_wheel() { [ "${1#wheel:}" != "$1" ]; }  # a variant given as wheel:PATH
for arg in "$@"; do
  name=${arg%%=*}; rest=${arg#*=}
  if is_wheel "$rest"; then
    src[$name]=$rest; flags[$name]=""
  else
    src[$name]=${rest%%:*}
    flags[$name]=$([ "$rest" != "${rest#*:}" ] && echo "${rest#*:}" || true)
  fi
  names+=("$name")
done

# Builds in parallel, the machine's cores shared between them.
step "build ${names[*]}"
builds=0  # variants compiled here (wheels are only installed)
for name in "${names[@]}"; do is_wheel "${src[$name]}" || builds=$((builds + 1)); done
[ $builds -gt 0 ] || builds=1
jobs_each=$(( ($(nproc) + builds - 1) / builds ))
for name in "${names[@]}"; do
  kernels_var="AB_KERNELS_${name//-/_}"
  kernels=${!kernels_var:-${AB_KERNELS:-sm90:fwd:bf16:64;sm90:fwd:bf16:128}}
  (
    rm -rf "$SCRATCH/$name/site"
    if is_wheel "${src[$name]}"; then
      $PY -m pip install -q --no-deps --no-index --target "$SCRATCH/$name/site" "${src[$name]#wheel:}" \
        > "$SCRATCH/$name.build.log" 2>&1
      echo "$name: installed ${src[$name]#wheel:}, rc $?"
      exit 0
    fi
    cd "${src[$name]}" || exit 1
    CMAKE_BUILD_PARALLEL_LEVEL=$jobs_each $PY -m pip install --no-build-isolation --no-deps --no-index \
      --target "$SCRATCH/$name/site" -C build-dir="$SCRATCH/$name/build" -C cmake.define.CUTLASS_DIR="${CUTLASS_DIR:-}" \
      -C "cmake.define.DMATTN_KERNELS=$kernels" -C "cmake.define.CMAKE_CUDA_FLAGS=${flags[$name]}" . \
      > "$SCRATCH/$name.build.log" 2>&1
    echo "$name: build rc $? at t=${SECONDS}s (kernels: $kernels; flags: ${flags[$name]:-none})"
  ) &
done
wait
failed=0
for name in "${names[@]}"; do
  if [ ! -d "$SCRATCH/$name/site/flash_dmattn" ]; then
    echo "== $name: BUILD FAILED"; tail -30 "$SCRATCH/$name.build.log"; cp "$SCRATCH/$name.build.log" "$RESULTS/"; failed=1
  fi
done
[ $failed -eq 0 ] || exit 1

for name in "${names[@]}"; do
  tests_var="AB_TESTS_${name//-/_}"
  tests=${!tests_var:-${AB_TESTS:-tests/test_forward_cuda.py -q -x}}
  if [ "$tests" != skip ]; then
    step "$name: tests"
    tree=${src[$name]}
    is_wheel "$tree" && tree=.
    (cd "$tree" && PYTHONPATH=$SCRATCH/$name/site $PY -m pytest $tests \
      -p no:cacheprovider 2>&1 | tail -15 | tee "$RESULTS/$name.tests.txt")
  fi
  quick=$([ "${AB_SIZES:-quick}" = quick ] && echo --quick)
  bench=${AB_BENCH:-forward}_performance
  step "$name: $bench $quick --only ${AB_GROUPS:-dense,bias}"
  PYTHONPATH=$SCRATCH/$name/site $PY benchmarks/$bench.py $quick --only "${AB_GROUPS:-dense,bias}" \
    ${AB_SKIP:+--skip "$AB_SKIP"} --out "$SCRATCH/$name.bench" > "$RESULTS/$name.bench.txt" 2>&1
  grep -vE "^\s*\[|^$" "$RESULTS/$name.bench.txt" | tail -20
  if [ -n "${AB_TABLE:-}" ]; then
    IFS=';' read -ra table_args <<< "$AB_TABLE"
    for args in "${table_args[@]}"; do
      step "$name: kernel times, profile_attention.py $args"
      PYTHONPATH=$SCRATCH/$name/site $PY benchmarks/profile_attention.py $args --table 2>&1 \
        | grep -E "Name|kernel|Self CUDA|ran " | cut -c1-160 | tee -a "$RESULTS/$name.kernels.txt"
    done
  fi
done

if [ -n "${AB_HOST:-}" ]; then
  step "${AB_HOST}: host time, profile_host.py ${AB_HOST_ARGS:-}"
  PYTHONPATH=$SCRATCH/${AB_HOST}/site $PY benchmarks/profile_host.py ${AB_HOST_ARGS:-} > "$RESULTS/${AB_HOST}.host.txt" 2>&1
  head -3 "$RESULTS/${AB_HOST}.host.txt"
fi

if [ -n "${AB_PROFILE:-}" ] && command -v ncu > /dev/null; then
  IFS=';' read -ra configs <<< "${AB_PROFILE_ARGS:---D 128}"
  for args in "${configs[@]}"; do
    step "${AB_PROFILE}: ncu, profile_attention.py $args"
    PYTHONPATH=$SCRATCH/${AB_PROFILE}/site ncu --clock-control none --section SpeedOfLight --section Occupancy --section WarpStateStats --section SchedulerStats \
      --section InstructionStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis -k "regex:${AB_PROFILE_KERNEL:-fwd_kernel}" -c 1 $PY benchmarks/profile_attention.py $args --reps 1 \
      >> "$RESULTS/${AB_PROFILE}.ncu.txt" 2>&1
    grep -E "Duration|Issued Instructions  |Warp Cycles Per Issued|Local" "$RESULTS/${AB_PROFILE}.ncu.txt" | tail -4
  done
fi
step "done"
