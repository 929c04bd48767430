#!/usr/bin/env bash
# build_libraries.sh PREFIX: the CUDA libraries alone (no Python module), installed into PREFIX, for
# wheel builds to reuse through DMATTN_PREBUILT_DIR=PREFIX (they compile nothing of CUDA then).
# Environment: DMATTN_ARCHS (default "all"), DMATTN_HEAD_DIMS, DMATTN_KERNELS, DMATTN_BWD_WIDE_HEAD_DIMS, CUTLASS_DIR, JOBS,
# LIBRARIES_BUILD_DIR (default build/libraries).
# The build tree is kept: an interrupted build (a time-limited shell) resumes where it stopped, and
# the report adds up the seconds of every run since the last completed one (for a full build's
# time, start from an empty LIBRARIES_BUILD_DIR).
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=$1
build=${LIBRARIES_BUILD_DIR:-build/libraries}
jobs=${JOBS:-$(nproc)}
start=$(date +%s)
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DDMATTN_BUILD_PYTHON=OFF -DCMAKE_INSTALL_LIBDIR=lib \
  -DDMATTN_ARCHS="${DMATTN_ARCHS:-all}" -DDMATTN_HEAD_DIMS="${DMATTN_HEAD_DIMS:-}" -DDMATTN_KERNELS="${DMATTN_KERNELS:-}" \
  -DDMATTN_BWD_WIDE_HEAD_DIMS="${DMATTN_BWD_WIDE_HEAD_DIMS:-ON}" \
  ${CUTLASS_DIR:+-DCUTLASS_DIR="$CUTLASS_DIR"}
# One line per run of this build tree: its start and end (epoch seconds). A run killed by a time
# limit wrote no end; its last finished compile (the mtime of .ninja_log) stands in for it.
log=$build/build-times.log
[ -f "$build/complete" ] && rm -f "$log" "$build/complete"
if [ -f "$log" ] && [ "$(tail -1 "$log" | wc -w)" -eq 1 ]; then
  sed -i "\$s/\$/ $(stat -c %Y "$build/.ninja_log" 2> /dev/null || tail -1 "$log")/" "$log"
fi
echo "$start" >> "$log"
cmake --build "$build" -j "$jobs"
sed -i "\$s/\$/ $(date +%s)/" "$log"
touch "$build/complete"
cmake --install "$build" --prefix "$prefix"
runs=$(wc -l < "$log")
total=$(awk '{ s += $2 - $1 } END { print s }' "$log")
{
  echo "libraries for archs ${DMATTN_ARCHS:-all} (kernels: ${DMATTN_KERNELS:-${DMATTN_HEAD_DIMS:-all head dims}}):" \
       "${total}s to build with $jobs jobs over $runs run(s) of $build; $(nvcc --version | tail -1)"
  for lib in "$prefix"/lib/libdmattn*.so; do
    printf '  %-22s %7.1f MB\n' "$(basename "$lib")" "$(awk -v b="$(stat -c %s "$lib")" 'BEGIN { print b / 1e6 }')"
  done
} | tee "$build/report.txt"
