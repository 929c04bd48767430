// launch_status.h: the status of the kernel launch just made on this thread, as the family table
// reports it ("<what> launch failed: <CUDA error>" in msg).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>

#include "dmattn/dmattn.h"

namespace dmattn::sm80 {

inline dmattn_status launch_status(const char* what, char* msg, size_t msg_len) {
  const cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) return DMATTN_STATUS_SUCCESS;
  std::snprintf(msg, msg_len, "%s launch failed: %s", what, cudaGetErrorString(err));
  return DMATTN_STATUS_CUDA_ERROR;
}

}  // namespace dmattn::sm80
