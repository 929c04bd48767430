// bwd_support.cu: everything the backward runs around its main kernel (bwd_launch.h): the workspace
// layout, the plan's class map, the row statistics, and the conversions of the fp32 accumulators
// (dQ, and dbias where it is a sum over CTAs or over broadcast axes) into the caller's tensors.
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <cstdio>

#include "sm80/bwd_launch.h"
#include "sm80/device_math.cuh"
#include "sm80/launch_status.h"
#include "sm80/score_tile.cuh"
#include "sm80/split_kv.h"

namespace dmattn::sm80 {
namespace {

// A row's lse is trusted when ulp(lse) / 2 < 2^-11: a relative error in P below bf16/fp16 output
// rounding. Past that (scores near -1e9 or finfo.min from a bias), log(sum) may have been rounded
// away, so the row's sum of exp(s - lse) is measured again (prep_rows_kernel).
constexpr float kTrustedLse = 8192.f;

// Runs f with a value of the element type of `dtype` (cutlass::bfloat16_t or cutlass::half_t).
template <class F>
void with_element(DType dtype, F f) {
  if (dtype == DType::kBF16) f(cutlass::bfloat16_t{});
  else f(cutlass::half_t{});
}

// One warp per (b, h, row) of the padded row range: delta = rowsum(dO * O) in fp32; the lse the
// main kernel shifts by (+inf where nothing is kept, so every P there is 0); and, with a bias, the
// row's 1 / sum(exp(s - lse)) where the lse cannot be trusted (see kTrustedLse), else 1.
template <typename T>
__global__ void prep_rows_kernel(const BwdProblem p, int q_pad, float* lse_out, float* delta_out, float* fix_out) {
  const int lane = threadIdx.x % 32;
  const int64_t row = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
  const Extents& s = p.shape;
  const int64_t rows = int64_t(s.batch) * s.heads * q_pad;
  if (row >= rows) return;
  const int q = int(row % q_pad);
  const int h = int(row / q_pad % s.heads);
  const int b = int(row / q_pad / s.heads);
  float delta = 0.f, lse = INFINITY, fix = 1.f;
  if (q < s.seqlen_q) {
    const T* o = static_cast<const T*>(p.out.data) + b * p.out.batch_stride + q * p.out.row_stride + h * p.out.head_stride;
    const T* d_o = static_cast<const T*>(p.dout.data) + b * p.dout.batch_stride + q * p.dout.row_stride + h * p.dout.head_stride;
    for (int d = lane; d < s.head_dim; d += 32) delta += static_cast<float>(o[d]) * static_cast<float>(d_o[d]);
    for (int off = 16; off > 0; off >>= 1) delta += __shfl_xor_sync(0xffffffff, delta, off);
    const float lse_in = p.lse[(int64_t(b) * s.heads + h) * s.seqlen_q + q];
    lse = lse_in == -INFINITY ? INFINITY : lse_in;
    if (p.scoring.has_bias && fabsf(lse_in) > kTrustedLse && fabsf(lse_in) < INFINITY) {
      // The row again, one key per lane at a time: sum of exp(s - lse) over the kept keys.
      const Scoring& sc = p.scoring;
      const int h_kv = h / (s.heads / s.heads_kv);
      const T* qr = static_cast<const T*>(p.q.data) + b * p.q.batch_stride + q * p.q.row_stride + h * p.q.head_stride;
      const T* bias = static_cast<const T*>(sc.bias.data);
      const int diag = s.seqlen_k - s.seqlen_q;
      float sum = 0.f;
      for (int j = lane; j < s.seqlen_k; j += 32) {
        bool keep = !(sc.causal && j > q + diag);
        if (keep && sc.mask_kind != MaskKind::kNone) {
          const int64_t at = view_offset(sc.mask, b, h, q, j);
          keep = sc.mask_kind == MaskKind::kBool ? static_cast<const uint8_t*>(sc.mask.data)[at] != 0
                                                 : static_cast<float>(static_cast<const T*>(sc.mask.data)[at]) != 0.f;
        }
        if (!keep) continue;
        const T* kr = static_cast<const T*>(p.k.data) + b * p.k.batch_stride + int64_t(j) * p.k.row_stride +
                      h_kv * p.k.head_stride;
        float dot = 0.f;
        for (int d = 0; d < s.head_dim; ++d) dot += static_cast<float>(qr[d]) * static_cast<float>(kr[d]);
        float score = sc.softcap > 0.f ? sc.softcap * tanhf(dot * sc.scale / sc.softcap) : dot * sc.scale;
        score += static_cast<float>(bias[view_offset(sc.bias, b, h, q, j)]);
        sum += exp2f((score - lse_in) * 1.4426950408889634f);
      }
      for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, off);
      fix = sum > 0.f ? 1.f / sum : 1.f;
    }
  }
  if (lane == 0) {
    lse_out[row] = lse;
    delta_out[row] = delta;
    fix_out[row] = fix;
  }
}

// Plan rows -> class map: one CTA per plan row writes its full (2) and partial (1) tiles; the map
// was zeroed, so tiles in neither list stay 0.
__global__ void class_map_kernel(TilePlan plan, uint8_t* map) {
  const int32_t* row = plan.rows + int64_t(blockIdx.x) * plan.row_len();
  uint8_t* out = map + int64_t(blockIdx.x) * plan.k_tiles;
  const int n_full = row[0], n_partial = row[1];
  for (int j = threadIdx.x; j < n_full; j += blockDim.x) out[row[2 + j]] = 2;
  for (int j = threadIdx.x; j < n_partial; j += blockDim.x) out[row[2 + plan.k_tiles - 1 - j]] = 1;
}

// dq = scale * dq_accum in q's dtype, one thread per 2 columns.
template <typename T>
__global__ void convert_dq_kernel(const BwdProblem p, const float* accum, int q_pad, int stride) {
  const Extents& s = p.shape;
  const int64_t pairs = int64_t(s.batch) * s.heads * s.seqlen_q * (s.head_dim / 2);
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < pairs; i += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(i % (s.head_dim / 2)) * 2;
    const int64_t r = i / (s.head_dim / 2);
    const int q = int(r % s.seqlen_q), h = int(r / s.seqlen_q % s.heads), b = int(r / s.seqlen_q / s.heads);
    const float* src = accum + ((int64_t(b) * s.heads + h) * q_pad + q) * stride + d;
    T* dst = static_cast<T*>(p.dq.data) + b * p.dq.batch_stride + q * p.dq.row_stride + h * p.dq.head_stride + d;
    dst[0] = T(src[0] * p.scoring.scale);
    dst[1] = T(src[1] * p.scoring.scale);
  }
}

// dbias (out_b, out_h, out_n) in the bias's dtype from fp32 sums (in_b, in_h, in_n) over the axes the
// bias broadcasts: batch (out 1), heads (out 1, or out_h groups of in_h / out_h). One
// thread per output element, in a fixed order, so the result is reproducible.
template <typename T>
__global__ void reduce_dbias_kernel(const float* in, int in_b, int in_h, int in_n, int64_t in_pitch, T* out, int out_b,
                                    int out_h, int out_n) {
  const int64_t total = int64_t(out_b) * out_h * out_n;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int n = int(i % out_n), h = int(i / out_n % out_h), b = int(i / out_n / out_h);
    const int b0 = out_b == in_b ? b : 0, b1 = out_b == in_b ? b + 1 : in_b;
    const int hg = in_h / out_h;
    const int n0 = out_n == in_n ? n : 0, n1 = out_n == in_n ? n + 1 : in_n;
    float sum = 0.f;
    for (int bb = b0; bb < b1; ++bb)
      for (int hh = h * hg; hh < (h + 1) * hg; ++hh)
        for (int nn = n0; nn < n1; ++nn) sum += in[(int64_t(bb) * in_h + hh) * in_pitch + nn];
    out[i] = T(sum);
  }
}

int grid_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return int(blocks < 65535 * 8 ? (blocks > 0 ? blocks : 1) : 65535 * 8);
}

DbiasMode dbias_mode(const BwdProblem& p) {
  if (!p.has_dbias) return DbiasMode::kNone;
  const ScoreView& v = p.dbias;
  const bool per_query = v.shape[2] != 1, per_key = v.shape[3] != 1;
  if (!per_key) return DbiasMode::kZero;
  if (per_query)
    return v.shape[0] == p.shape.batch && v.shape[1] == p.shape.heads ? DbiasMode::kFullDirect : DbiasMode::kFullAccum;
  return DbiasMode::kPerKey;
}

// kFullAccum with a dbias element reached from more than one CTA (CTAs are per kv head and batch).
bool dbias_shared_across_ctas(const BwdProblem& p) {
  return (p.dbias.shape[0] == 1 && p.shape.batch > 1) || (p.dbias.shape[1] == 1 && p.shape.heads_kv > 1);
}

// The workspace, in order, each part 256-byte aligned.
struct BwdWorkspace {
  size_t plan = 0, class_map = 0, rows = 0, dq = 0, dbias = 0, dq_turn = 0, dbias_turn = 0;
  size_t total() const { return plan + class_map + 3 * rows + dq + dbias + dq_turn + dbias_turn; }
};

BwdWorkspace bwd_workspace(const BwdProblem& p, int bucket) {
  BwdWorkspace w;
  const Extents& s = p.shape;
  const size_t q_pad = size_t(s.seqlen_q + kBwdTileQ - 1) / kBwdTileQ * kBwdTileQ;
  const size_t bh = size_t(s.batch) * s.heads;
  const size_t k_tiles = size_t(s.seqlen_k + kBwdTileKV - 1) / kBwdTileKV;
  if (p.scoring.mask_kind != MaskKind::kNone && s.seqlen_q > 0) {
    const FwdProblem f = bwd_as_fwd(p);
    const TilePlan t = plan_extents(f);
    w.plan = plan_workspace_bytes(f);
    w.class_map = align256(size_t(t.batches) * t.heads * t.q_tiles * t.k_tiles);
  }
  w.rows = align256(bh * q_pad * sizeof(float));
  w.dq = align256(bh * q_pad * bucket * sizeof(float));
  const ScoreView& v = p.dbias;
  switch (dbias_mode(p)) {
    case DbiasMode::kFullAccum: w.dbias = align256(size_t(v.shape[0]) * v.shape[1] * v.shape[2] * v.shape[3] * 4); break;
    case DbiasMode::kPerKey: w.dbias = align256(bh * s.seqlen_k * sizeof(float)); break;
    default: break;
  }
  if (p.deterministic) {
    w.dq_turn = align256(bh * (q_pad / kBwdTileQ) * sizeof(int32_t));
    if (dbias_mode(p) == DbiasMode::kFullAccum && dbias_shared_across_ctas(p))
      w.dbias_turn = align256(size_t(v.shape[0]) * v.shape[1] * (q_pad / kBwdTileQ) * k_tiles * sizeof(int32_t));
  }
  return w;
}

dmattn_status cuda_status(cudaError_t err, const char* what, char* msg, size_t msg_len) {
  if (err == cudaSuccess) return DMATTN_STATUS_SUCCESS;
  std::snprintf(msg, msg_len, "%s failed: %s", what, cudaGetErrorString(err));
  return DMATTN_STATUS_CUDA_ERROR;
}

}  // namespace

FwdProblem bwd_as_fwd(const BwdProblem& p) {
  FwdProblem f;
  f.dtype = p.dtype;
  f.shape = p.shape;
  f.scoring = p.scoring;
  f.q = p.q;
  f.k = p.k;
  f.v = p.v;
  f.out = p.out;
  f.launch = p.launch;
  return f;
}

size_t bwd_workspace_bytes(const BwdProblem& p, int head_dim_bucket) {
  return bwd_workspace(p, head_dim_bucket).total();
}

dmattn_status bwd_prepare(const BwdProblem& p, int bucket, BwdParams& params, char* msg, size_t msg_len) {
  const BwdWorkspace w = bwd_workspace(p, bucket);
  if (p.launch.workspace_size < w.total()) {
    std::snprintf(msg, msg_len, "workspace: %zu bytes given, the backward needs %zu", p.launch.workspace_size,
                  w.total());
    return DMATTN_STATUS_INSUFFICIENT_WORKSPACE;
  }
  cudaStream_t stream = static_cast<cudaStream_t>(p.launch.stream);
  const Extents& s = p.shape;
  char* at = static_cast<char*>(p.launch.workspace);
  auto take = [&](size_t bytes) {
    char* part = bytes ? at : nullptr;
    at += bytes;
    return part;
  };
  params.p = p;
  params.q_pad = (s.seqlen_q + kBwdTileQ - 1) / kBwdTileQ * kBwdTileQ;
  dmattn_status st = DMATTN_STATUS_SUCCESS;
  // Without queries nothing is walked: no plan (the kernel only writes zero dK and dV).
  if (p.scoring.mask_kind != MaskKind::kNone && s.seqlen_q > 0) {
    const FwdProblem f = bwd_as_fwd(p);
    params.plan = plan_extents(f);
    params.plan.rows = reinterpret_cast<int32_t*>(take(w.plan));
    uint8_t* map = reinterpret_cast<uint8_t*>(take(w.class_map));
    params.tile_class = map;
    st = build_tile_plan(f, params.plan, msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
    st = cuda_status(cudaMemsetAsync(map, 0, w.class_map, stream), "clearing the class map", msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
    class_map_kernel<<<params.plan.batches * params.plan.heads * params.plan.q_tiles, 256, 0, stream>>>(params.plan, map);
    st = launch_status("backward class map", msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  float* lse = reinterpret_cast<float*>(take(w.rows));
  float* delta = reinterpret_cast<float*>(take(w.rows));
  float* fix = reinterpret_cast<float*>(take(w.rows));
  params.lse = lse;
  params.delta = delta;
  params.row_fix = fix;
  params.dq_accum = reinterpret_cast<float*>(take(w.dq));
  params.dq_stride = bucket;
  params.dbias_mode = dbias_mode(p);
  params.dbias_accum = reinterpret_cast<float*>(take(w.dbias));
  params.dq_turn = reinterpret_cast<int32_t*>(take(w.dq_turn));
  params.dbias_turn = reinterpret_cast<int32_t*>(take(w.dbias_turn));

  // Everything the kernel adds into starts at zero; so does a dbias written tile by tile, since
  // tiles nothing reaches are never written.
  const char* clear_what = "clearing the backward accumulators";
  st = cuda_status(cudaMemsetAsync(params.dq_accum, 0, w.dq, stream), clear_what, msg, msg_len);
  if (st == DMATTN_STATUS_SUCCESS && w.dbias)
    st = cuda_status(cudaMemsetAsync(params.dbias_accum, 0, w.dbias, stream), clear_what, msg, msg_len);
  if (st == DMATTN_STATUS_SUCCESS && (w.dq_turn + w.dbias_turn))
    st = cuda_status(cudaMemsetAsync(params.dq_turn ? static_cast<void*>(params.dq_turn) : params.dbias_turn, 0,
                                     w.dq_turn + w.dbias_turn, stream),
                     clear_what, msg, msg_len);
  if (st == DMATTN_STATUS_SUCCESS && (params.dbias_mode == DbiasMode::kFullDirect || params.dbias_mode == DbiasMode::kZero)) {
    const ScoreView& v = p.dbias;
    const size_t bytes = size_t(v.shape[0]) * v.shape[1] * v.shape[2] * v.shape[3] * 2;
    st = cuda_status(cudaMemsetAsync(v.data, 0, bytes, stream), clear_what, msg, msg_len);
  }
  if (st != DMATTN_STATUS_SUCCESS) return st;

  const int64_t rows = int64_t(s.batch) * s.heads * params.q_pad;
  constexpr int kRowsPerBlock = 8;
  const int blocks = int((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  if (blocks == 0) return DMATTN_STATUS_SUCCESS;
  with_element(p.dtype, [&](auto element) {
    prep_rows_kernel<decltype(element)><<<blocks, 32 * kRowsPerBlock, 0, stream>>>(p, params.q_pad, lse, delta, fix);
  });
  return launch_status("backward row statistics", msg, msg_len);
}

dmattn_status bwd_finish(const BwdParams& params, char* msg, size_t msg_len) {
  const BwdProblem& p = params.p;
  const Extents& s = p.shape;
  cudaStream_t stream = static_cast<cudaStream_t>(p.launch.stream);
  const int64_t pairs = int64_t(s.batch) * s.heads * s.seqlen_q * (s.head_dim / 2);
  if (pairs > 0) {
    with_element(p.dtype, [&](auto element) {
      convert_dq_kernel<decltype(element)><<<grid_for(pairs, 256), 256, 0, stream>>>(p, params.dq_accum, params.q_pad,
                                                                                    params.dq_stride);
    });
    const dmattn_status st = launch_status("backward dq conversion", msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  const ScoreView& v = p.dbias;
  int in_b = s.batch, in_h = s.heads, in_n = 0;
  int64_t in_pitch = 0;
  switch (params.dbias_mode) {
    case DbiasMode::kPerKey: in_n = s.seqlen_k; in_pitch = s.seqlen_k; break;
    case DbiasMode::kFullAccum:
      in_b = v.shape[0];
      in_h = v.shape[1];
      in_n = v.shape[2] * v.shape[3];
      in_pitch = in_n;
      break;
    default: return DMATTN_STATUS_SUCCESS;
  }
  const int out_n = v.shape[2] * v.shape[3];
  const int64_t total = int64_t(v.shape[0]) * v.shape[1] * out_n;
  if (total == 0) return DMATTN_STATUS_SUCCESS;
  with_element(p.dtype, [&](auto element) {
    using T = decltype(element);
    reduce_dbias_kernel<T><<<grid_for(total, 256), 256, 0, stream>>>(params.dbias_accum, in_b, in_h, in_n, in_pitch,
                                                                     static_cast<T*>(v.data), v.shape[0], v.shape[1], out_n);
  });
  return launch_status("backward dbias reduction", msg, msg_len);
}

}  // namespace dmattn::sm80
