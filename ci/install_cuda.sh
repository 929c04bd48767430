#!/usr/bin/env bash
# install_cuda.sh: the CUDA toolkit (compiler and static runtime only) inside a manylinux_2_28
# container (AlmaLinux 8), for cibuildwheel's before-all step. CUDA_VERSION picks the release
# (default 12.9, the first with the family targets sm_100f that the sm100 library is built for;
# a 12.x runtime, linked statically, runs on every driver from 525 on). x86_64 and aarch64
# (NVIDIA's "sbsa" repository) are supported.
set -euo pipefail
version=${CUDA_VERSION:-12.9}
case "$(uname -m)" in
  x86_64) repo_arch=x86_64 ;;
  aarch64) repo_arch=sbsa ;;
  *) echo "install_cuda.sh: unsupported machine $(uname -m)" >&2; exit 1 ;;
esac
dnf install -y dnf-plugins-core
dnf config-manager --add-repo "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/${repo_arch}/cuda-rhel8.repo"
pkg=${version/./-}
# nvcc (with its crt headers) and cudart's static library: libdmattn links the runtime statically
# and opens the driver at run time, so nothing else is needed to build.
dnf install -y "cuda-nvcc-${pkg}" "cuda-cudart-devel-${pkg}" "cuda-crt-${pkg}" || dnf install -y "cuda-nvcc-${pkg}" "cuda-cudart-devel-${pkg}"
ln -sfn "/usr/local/cuda-${version}" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version
