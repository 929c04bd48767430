#!/usr/bin/env bash
# sanitize.sh: compute-sanitizer's memcheck, racecheck and synccheck over calls that reach every
# libdmattn kernel (ci/sanitize_cases.py), on a GPU machine. Writes summary.md (and each tool's log)
# into RESULTS_DIR; exits 1 if a tool reports an error or a kernel was not reached.
#
#   bash ci/sanitize.sh [RESULTS_DIR]        # default: $OUT if set, else ./sanitize
#
# Environment: SANITIZE_WHEEL (a wheel to install first, e.g. one built by ci/build_wheel_host.sh;
# otherwise flash_dmattn must import as installed), SANITIZE_HEAD_DIMS (default 64,128: buckets the
# library holds), SANITIZE_TOOLS (default "memcheck racecheck synccheck"), PYTHON.
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS=${1:-${OUT:-$PWD/sanitize}}
mkdir -p "$RESULTS"
PY=${PYTHON:-python3}
DIMS=${SANITIZE_HEAD_DIMS:-64,128}
if [ -n "${SANITIZE_WHEEL:-}" ]; then
  site=/tmp/dmattn-sanitize-site
  rm -rf "$site"
  $PY -m pip install -q --no-deps --no-index --target "$site" "$SANITIZE_WHEEL" || { echo "installing $SANITIZE_WHEEL failed"; exit 1; }
  export PYTHONPATH=$site
fi
SAN=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
[ -n "$SAN" ] || { echo "compute-sanitizer not found (it ships with the CUDA toolkit)"; exit 1; }
# Every allocation its own: with torch's caching allocator an out-of-bounds access inside a pooled
# block would land in memory the sanitizer thinks valid.
export PYTORCH_NO_CUDA_MEMORY_CACHING=1
status=0
{
  echo "# compute-sanitizer: $(date -u +%Y-%m-%d) on $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
  echo
  echo "- commit: ${GIT_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "- $($SAN --version | tail -1); $($PY -c 'import torch; print("torch", torch.__version__)')"
  echo "- cases: ci/sanitize_cases.py, head dims $DIMS"
} > "$RESULTS/summary.md"

$PY ci/sanitize_cases.py --head-dims "$DIMS" --list-kernels "$RESULTS/kernels.txt" | tee "$RESULTS/coverage.txt"
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1
{ echo "- $(cat "$RESULTS/coverage.txt")"; echo; echo "| tool | errors | exit |"; echo "| --- | --- | --- |"; } >> "$RESULTS/summary.md"

for tool in ${SANITIZE_TOOLS:-memcheck synccheck racecheck}; do
  extra=()
  [ "$tool" = racecheck ] && extra=(--racecheck-report all)
  [ "$tool" = memcheck ] && extra=(--leak-check no --padding 32)
  echo "==== $tool"
  timeout "${SANITIZE_TOOL_TIMEOUT:-1800}" "$SAN" --tool "$tool" "${extra[@]}" --kernel-name kns=dmattn --error-exitcode 3 \
    $PY ci/sanitize_cases.py --head-dims "$DIMS" > "$RESULTS/$tool.log" 2>&1
  rc=$?
  # memcheck and synccheck end with "ERROR SUMMARY: N errors", racecheck with
  # "RACECHECK SUMMARY: H hazards displayed (N errors, W warnings)".
  errors=$(grep -Eo 'ERROR SUMMARY: [0-9]+|\([0-9]+ errors' "$RESULTS/$tool.log" | tail -1 | grep -Eo '[0-9]+')
  tail -4 "$RESULTS/$tool.log"
  echo "| $tool | ${errors:-?} | $rc |" >> "$RESULTS/summary.md"
  [ $rc -eq 0 ] && [ "${errors:-1}" = 0 ] || status=1
done
echo >> "$RESULTS/summary.md"
echo "status: $([ $status -eq 0 ] && echo CLEAN || echo ERRORS)" | tee -a "$RESULTS/summary.md"
exit $status
