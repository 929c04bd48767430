#!/usr/bin/env bash
# repair_wheel.sh WHEEL DEST: auditwheel repair (the driver, libcuda.so.1, stays outside the wheel:
# libdmattn opens it at run time), then the size check. Used by cibuildwheel and build_wheel_host.sh.
# Our libraries keep their names: libdmattn finds libdmattn_<family>.so next to itself, and neither
# is grafted (they are the wheel's own, found through _C's RPATH).
set -euo pipefail
wheel=$1 dest=$2
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dest"
auditwheel repair --exclude libcuda.so.1 -w "$dest" "$wheel"
python3 "$here/check_wheel_size.py" "$(ls -t "$dest"/*.whl | head -1)"  # the wheel just written
