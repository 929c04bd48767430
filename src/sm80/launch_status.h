// launch_status.h: host-side launch helpers: the status of the kernel launch just made on this thread,
// as the family table reports it ("<what> launch failed: <CUDA error>" in msg), and the one-time
// shared-memory opt-in of a kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>

#include "dmattn/dmattn.h"

namespace dmattn::sm80 {

inline dmattn_status launch_status(const char* what, char* msg, size_t msg_len) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return DMATTN_STATUS_SUCCESS;
  std::snprintf(msg, msg_len, "%s launch failed: %s", what, cudaGetErrorString(err));
  return DMATTN_STATUS_CUDA_ERROR;
}

// Sets a kernel's dynamic shared memory limit once per device; `done` is that kernel's own record.
template <class Kernel>
cudaError_t allow_smem(Kernel kernel, int bytes, int device, std::atomic<uint64_t>& done) {
  const uint64_t bit = device < 64 ? uint64_t(1) << device : 0;
  if (bytes <= 48 * 1024 || (bit != 0 && (done.load(std::memory_order_relaxed) & bit))) return cudaSuccess;
  const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (err == cudaSuccess) done.fetch_or(bit, std::memory_order_relaxed);
  return err;
}

}  // namespace dmattn::sm80
