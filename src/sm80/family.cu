// family.cu: the SM80-class kernel library's table (family/family.h). One source, compiled once per
// arch family (sm80, sm90, sm100, sm120) with that family's -gencode targets; DMATTN_FAMILY_NAME
// says which. Calls are routed by (dtype, head-dim bucket) to the launchers the kernel table
// compiled in (fwd_dispatch.inc, generated); anything else answers NOT_IMPLEMENTED naming it.
#include <cuda_runtime_api.h>

#include <cstdio>

#include "family/family.h"
#include "sm80/bwd_launch.h"
#include "sm80/fwd_launch.h"

#ifndef DMATTN_FAMILY_NAME
#error "DMATTN_FAMILY_NAME must be defined by the build (e.g. \"sm80\")"
#endif

namespace dmattn::sm80 {
namespace {

// Never launched: cudaFuncGetAttributes on it tells whether this library's fatbin holds an image
// (SASS for the device's arch, or PTX the driver can compile) that the device can run.
__global__ void image_probe_kernel() {}

// Restores the calling thread's current device: the runtime's current device is shared with the
// caller (torch), so the library must not leave it changed.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    ok_ = cudaGetDevice(&previous_) == cudaSuccess;
    if (ok_ && previous_ != device) ok_ = cudaSetDevice(device) == cudaSuccess;
  }
  ~DeviceGuard() {
    if (ok_) cudaSetDevice(previous_);
  }
  bool ok() const { return ok_; }

 private:
  int previous_ = 0;
  bool ok_ = false;
};

dmattn_status probe(int32_t device, char* msg, size_t msg_len) {
  DeviceGuard guard(device);
  if (!guard.ok()) {
    std::snprintf(msg, msg_len, "cannot select CUDA device %d: %s", device, cudaGetErrorString(cudaGetLastError()));
    return DMATTN_STATUS_CUDA_ERROR;
  }
  cudaFuncAttributes attr{};
  cudaError_t err = cudaFuncGetAttributes(&attr, image_probe_kernel);
  if (err != cudaSuccess) {
    cudaGetLastError();
    std::snprintf(msg, msg_len,
                  "the %s kernel library has no code this GPU can run (%s); rebuild with -DDMATTN_ARCHS set to the "
                  "GPU's compute capability",
                  DMATTN_FAMILY_NAME, cudaGetErrorString(err));
    return DMATTN_STATUS_UNSUPPORTED_DEVICE;
  }
  return DMATTN_STATUS_SUCCESS;
}

// `bucket` is the head-dim bucket the kernel table would hold the kernel under (0: none fits);
// `hint`, if any, says how a build would get it.
dmattn_status missing_kernel(const char* direction, DType dtype, int head_dim, int bucket, char* msg,
                             size_t msg_len, const char* hint = "") {
  char bucket_note[48] = "";
  if (bucket != head_dim) std::snprintf(bucket_note, sizeof(bucket_note), " (bucket %d)", bucket);
  std::snprintf(msg, msg_len,
                "the CUDA %s kernel (%s, %s, head_dim %d%s) is not implemented in this build of flash-dmattn%s; "
                "use the 'reference' or 'flex' backend meanwhile",
                direction, DMATTN_FAMILY_NAME, dtype_name(dtype), head_dim, bucket_note, hint);
  return DMATTN_STATUS_NOT_IMPLEMENTED;
}

// The smallest head-dim bucket holding `head_dim` (inputs between buckets are padded inside the
// kernel: columns past head_dim are zero-filled on load and never stored).
int head_dim_bucket(int head_dim) {
  for (int bucket : {32, 64, 96, 128, 192, 256})
    if (head_dim <= bucket) return bucket;
  return 0;
}

// The forward's workspace: the tile plan of a keep-mask and split-KV partial results (split_kv.h).
// A call that will answer NOT_IMPLEMENTED (varlen) needs none: the size query succeeds with 0 so the
// whole host path up to the launch can be exercised before those kernels exist.
dmattn_status fwd_workspace_size(const FwdProblem* p, size_t* bytes, char*, size_t) {
  *bytes = p->shape.cu_seqlens_q != nullptr ? 0 : fwd_workspace_bytes(*p, head_dim_bucket(p->shape.head_dim));
  return DMATTN_STATUS_SUCCESS;
}

dmattn_status launch_fwd_row(const FwdProblem& p, char* msg, size_t msg_len) {
  const int bucket = head_dim_bucket(p.shape.head_dim);
#include "fwd_dispatch.inc"
  return missing_kernel("forward", p.dtype, p.shape.head_dim, bucket, msg, msg_len);
}

// A dense-layout call (varlen/paged kernels do not exist yet) on its device, through `launch_row`.
template <class Problem, class LaunchRow>
dmattn_status run_dense(const Problem& p, const char* direction, LaunchRow launch_row, char* msg, size_t msg_len) {
  if (p.shape.cu_seqlens_q != nullptr) {
    std::snprintf(msg, msg_len,
                  "the CUDA varlen%s %s kernel is not implemented in this version of flash-dmattn; use the "
                  "'reference' backend meanwhile",
                  p.shape.block_table != nullptr ? " paged-KV" : "", direction);
    return DMATTN_STATUS_NOT_IMPLEMENTED;
  }
  DeviceGuard guard(p.launch.device);
  if (!guard.ok()) {
    std::snprintf(msg, msg_len, "cannot select CUDA device %d", p.launch.device);
    return DMATTN_STATUS_CUDA_ERROR;
  }
  return launch_row(p, msg, msg_len);
}

dmattn_status fwd(const FwdProblem* p, char* msg, size_t msg_len) {
  return run_dense(*p, "forward", launch_fwd_row, msg, msg_len);
}

// The backward's workspace (bwd_launch.h); 0 where the call will answer NOT_IMPLEMENTED.
dmattn_status bwd_workspace_size(const BwdProblem* p, size_t* bytes, char*, size_t) {
  *bytes = p->shape.cu_seqlens_q != nullptr ? 0 : bwd_workspace_bytes(*p, head_dim_bucket(p->shape.head_dim));
  return DMATTN_STATUS_SUCCESS;
}

dmattn_status launch_bwd_row(const BwdProblem& p, char* msg, size_t msg_len) {
  const int bucket = head_dim_bucket(p.shape.head_dim);
#include "bwd_dispatch.inc"
  // cmake/kernels.cmake builds these unless DMATTN_BWD_WIDE_HEAD_DIMS=OFF, and never for sm120.
  const char* hint = bucket <= 128 ? ""
                     : DMATTN_FAMILY_SM == 120
                         ? " (the backward at head dims 192 and 256 needs 115-165 KB of shared memory a block; the sm120 "
                           "family's GPUs have 99 KB)"
                         : " (the backward's head dims 192 and 256 are left out of builds with DMATTN_BWD_WIDE_HEAD_DIMS=OFF)";
  return missing_kernel("backward", p.dtype, p.shape.head_dim, bucket, msg, msg_len, hint);
}

dmattn_status bwd(const BwdProblem* p, char* msg, size_t msg_len) {
  return run_dense(*p, "backward", launch_bwd_row, msg, msg_len);
}

// The caller-held tile plan (tile_plan.h); none for varlen calls, whose kernels do not exist yet.
dmattn_status fwd_plan_size(const FwdProblem* p, size_t* bytes, char*, size_t) {
  const bool planned = p->scoring.mask_kind != MaskKind::kNone && p->shape.cu_seqlens_q == nullptr;
  *bytes = planned ? plan_extents(*p).bytes() : 0;
  return DMATTN_STATUS_SUCCESS;
}

constexpr dmattn_family_table kTable = {
    DMATTN_FAMILY_ABI, DMATTN_FAMILY_NAME, probe, fwd_workspace_size, fwd, bwd_workspace_size, bwd, fwd_plan_size,
};

}  // namespace
}  // namespace dmattn::sm80

extern "C" __attribute__((visibility("default"))) const dmattn_family_table* dmattn_family_get(void) {
  return &dmattn::sm80::kTable;
}
