// split_kv.cu: merges split-KV partial results (split_kv.h). One warp per (batch, head, query row):
// lse = log sum_i exp(lse_i); out = sum_i exp(lse_i - lse) out_i. Splits that kept nothing have
// lse_i = -inf and weigh 0; a row no split kept gives out = 0 and lse = -inf.
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include <cmath>

#include "sm80/launch_status.h"
#include "sm80/split_kv.h"

namespace dmattn::sm80 {
namespace {

constexpr int kWarps = 4;

template <typename Element>
__global__ void __launch_bounds__(kWarps * 32) combine_splits_kernel(const FwdProblem p, const SplitKV split) {
  const int lane = threadIdx.x % 32;
  const int64_t rows = int64_t(p.shape.batch) * p.shape.heads * p.shape.seqlen_q;
  const int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32;  // (b, h, q) flattened
  if (row >= rows) return;
  const int q = int(row % p.shape.seqlen_q);
  const int h = int((row / p.shape.seqlen_q) % p.shape.heads);
  const int b = int(row / (int64_t(p.shape.seqlen_q) * p.shape.heads));

  const float lse_i = lane < split.splits ? split.lse_partial[lane * rows + row] : -INFINITY;
  float m = lse_i;
  for (int o = 16; o > 0; o /= 2) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  float w = m == -INFINITY ? 0.f : expf(lse_i - m);
  float sum = w;
  for (int o = 16; o > 0; o /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  const float lse = sum > 0.f ? m + logf(sum) : -INFINITY;
  __shared__ float weights[kWarps][kMaxSplits];
  if (lane < split.splits) weights[threadIdx.x / 32][lane] = sum > 0.f ? w / sum : 0.f;
  __syncwarp();

  Element* out = static_cast<Element*>(p.out.data) + b * p.out.batch_stride + int64_t(q) * p.out.row_stride +
                 h * p.out.head_stride;
  for (int col = lane; col < p.shape.head_dim; col += 32) {
    float acc = 0.f;
    for (int i = 0; i < split.splits; ++i) {
      const float wi = weights[threadIdx.x / 32][i];
      if (wi != 0.f) acc += wi * split.out_partial[(i * rows + row) * split.head_dim_stride + col];
    }
    out[col] = static_cast<Element>(acc);
  }
  if (lane == 0 && p.lse != nullptr) p.lse[row] = lse;
}

}  // namespace

dmattn_status combine_splits(const FwdProblem& p, const SplitKV& split, char* msg, size_t msg_len) {
  const int64_t rows = int64_t(p.shape.batch) * p.shape.heads * p.shape.seqlen_q;
  const dim3 grid(unsigned((rows + kWarps - 1) / kWarps));
  cudaStream_t stream = static_cast<cudaStream_t>(p.launch.stream);
  if (p.dtype == DType::kF16) combine_splits_kernel<cutlass::half_t><<<grid, kWarps * 32, 0, stream>>>(p, split);
  else combine_splits_kernel<cutlass::bfloat16_t><<<grid, kWarps * 32, 0, stream>>>(p, split);
  return launch_status("split-KV combine kernel", msg, msg_len);
}

}  // namespace dmattn::sm80
