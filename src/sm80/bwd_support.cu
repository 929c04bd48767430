// bwd_support.cu: everything the backward runs around its main kernel (bwd_launch.h): the workspace
// layout, the plan's class map, the row statistics, and the conversions of the fp32 accumulators
// (dQ, and dbias where it is a sum over CTAs or over broadcast axes) into the caller's tensors.
#include <cuda_runtime_api.h>
#include <cutlass/numeric_types.h>

#include <climits>
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

// 8 consecutive elements (a 16-byte access where the address allows it, else one at a time): rows
// of q-shaped tensors have D % 8 == 0 elements, so row chunks of 8 never cross a row.
template <typename T>
__device__ __forceinline__ void load8(const T* src, float (&x)[8]) {
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    alignas(16) T v[8];
    *reinterpret_cast<uint4*>(v) = __ldg(reinterpret_cast<const uint4*>(src));
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = static_cast<float>(v[j]);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) x[j] = static_cast<float>(src[j]);
  }
}
template <typename T>
__device__ __forceinline__ void store8(T* dst, const float (&x)[8]) {
  alignas(16) T v[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = T(x[j]);
  if (reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(v);
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) dst[j] = v[j];
  }
}

// Rows of the padded row range, 8 lanes per (b, h, row), 4 rows per warp: delta = rowsum(dO * O) in
// fp32; the lse the main kernel shifts by (+inf where nothing is kept, so every P there is 0); and,
// with a bias, the row's 1 / sum(exp(s - lse)) where the lse cannot be trusted (see kTrustedLse),
// measured by the whole warp one such row at a time, else 1. It also zeroes the row of the dQ
// accumulator (dq_stride floats) the main kernel adds into: one pass less than a memset, one launch
// less on a path that small sparse calls wait on.
constexpr int kPrepLanesPerRow = 8;
constexpr int kPrepRowsPerWarp = 32 / kPrepLanesPerRow;

template <typename T>
__global__ void prep_rows_kernel(const BwdProblem p, int q_pad, float* lse_out, float* delta_out, float* fix_out,
                                 float* dq_accum, int dq_stride) {
  const int lane = threadIdx.x % 32, part = lane % kPrepLanesPerRow;
  const int64_t row = (int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32) * kPrepRowsPerWarp +
                      lane / kPrepLanesPerRow;
  const Extents& s = p.shape;
  const int64_t rows = int64_t(s.batch) * s.heads * q_pad;
  const bool valid = row < rows;  // no early return: the warp's shuffles need every lane
  const int q = int(row % q_pad);
  const int h = int(row / q_pad % s.heads);
  const int b = int(row / q_pad / s.heads);
  float delta = 0.f, lse = INFINITY, fix = 1.f, lse_in = 0.f;
  bool needs_fix = false;
  if (valid && q < s.seqlen_q) {
    const T* o = static_cast<const T*>(p.out.data) + b * p.out.batch_stride + q * p.out.row_stride + h * p.out.head_stride;
    const T* d_o = static_cast<const T*>(p.dout.data) + b * p.dout.batch_stride + q * p.dout.row_stride + h * p.dout.head_stride;
    for (int c = part; c < s.head_dim / 8; c += kPrepLanesPerRow) {
      float x[8], y[8];
      load8(o + c * 8, x);
      load8(d_o + c * 8, y);
#pragma unroll
      for (int j = 0; j < 8; ++j) delta += x[j] * y[j];
    }
    lse_in = p.lse[(int64_t(b) * s.heads + h) * s.seqlen_q + q];
    lse = lse_in == -INFINITY ? INFINITY : lse_in;
    needs_fix = p.scoring.has_bias && fabsf(lse_in) > kTrustedLse && fabsf(lse_in) < INFINITY;
  }
  for (int off = kPrepLanesPerRow / 2; off > 0; off >>= 1) delta += __shfl_xor_sync(0xffffffff, delta, off);
  unsigned pending = __ballot_sync(0xffffffff, needs_fix && part == 0);
  while (pending != 0) {
    // The row again, one key per lane at a time: sum of exp(s - lse) over the kept keys.
    const int src = __ffs(pending) - 1;
    pending &= pending - 1;
    const int fq = __shfl_sync(0xffffffff, q, src), fh = __shfl_sync(0xffffffff, h, src);
    const int fb = __shfl_sync(0xffffffff, b, src);
    const float f_lse = __shfl_sync(0xffffffff, lse_in, src);
    const Scoring& sc = p.scoring;
    const int h_kv = fh / (s.heads / s.heads_kv);
    const T* qr = static_cast<const T*>(p.q.data) + fb * p.q.batch_stride + fq * p.q.row_stride + fh * p.q.head_stride;
    const T* bias = static_cast<const T*>(sc.bias.data);
    const int diag = s.seqlen_k - s.seqlen_q;
    float sum = 0.f;
    for (int j = lane; j < s.seqlen_k; j += 32) {
      bool keep = !(sc.causal && j > fq + diag);
      if (keep && sc.mask_kind != MaskKind::kNone) {
        const int64_t at = view_offset(sc.mask, fb, fh, fq, j);
        keep = sc.mask_kind == MaskKind::kBool ? static_cast<const uint8_t*>(sc.mask.data)[at] != 0
                                               : static_cast<float>(static_cast<const T*>(sc.mask.data)[at]) != 0.f;
      }
      if (!keep) continue;
      const T* kr = static_cast<const T*>(p.k.data) + fb * p.k.batch_stride + int64_t(j) * p.k.row_stride +
                    h_kv * p.k.head_stride;
      float dot = 0.f;
      for (int d = 0; d < s.head_dim; ++d) dot += static_cast<float>(qr[d]) * static_cast<float>(kr[d]);
      float score = sc.softcap > 0.f ? sc.softcap * tanhf(dot * sc.scale / sc.softcap) : dot * sc.scale;
      score += static_cast<float>(bias[view_offset(sc.bias, fb, fh, fq, j)]);
      sum += exp2f((score - f_lse) * 1.4426950408889634f);
    }
    for (int off = 16; off > 0; off >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, off);
    if (lane == src) fix = sum > 0.f ? 1.f / sum : 1.f;
  }
  if (valid && part == 0) {
    lse_out[row] = lse;
    delta_out[row] = delta;
    fix_out[row] = fix;
  }
  if (valid) {  // dq_stride is a head-dim bucket: a multiple of 32 floats, 16-byte aligned rows
    float4* dq = reinterpret_cast<float4*>(dq_accum + row * dq_stride);
    for (int c = part; c < dq_stride / 4; c += kPrepLanesPerRow) dq[c] = make_float4(0.f, 0.f, 0.f, 0.f);
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

// dq = scale * dq_accum in q's dtype, one thread per 8 columns.
template <typename T>
__global__ void convert_dq_kernel(const BwdProblem p, const float* accum, int q_pad, int stride) {
  const Extents& s = p.shape;
  const int per_row = s.head_dim / 8;
  const int64_t chunks = int64_t(s.batch) * s.heads * s.seqlen_q * per_row;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < chunks; i += int64_t(gridDim.x) * blockDim.x) {
    const int d = int(i % per_row) * 8;
    const int64_t r = i / per_row;
    const int q = int(r % s.seqlen_q), h = int(r / s.seqlen_q % s.heads), b = int(r / s.seqlen_q / s.heads);
    const float4* src = reinterpret_cast<const float4*>(accum + ((int64_t(b) * s.heads + h) * q_pad + q) * stride + d);
    const float4 lo = src[0], hi = src[1];
    const float sc = p.scoring.scale;
    const float x[8] = {lo.x * sc, lo.y * sc, lo.z * sc, lo.w * sc, hi.x * sc, hi.y * sc, hi.z * sc, hi.w * sc};
    store8(static_cast<T*>(p.dq.data) + b * p.dq.batch_stride + q * p.dq.row_stride + h * p.dq.head_stride + d, x);
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

// A column's kept query steps, over the query heads of its kv group.
__device__ int count_column_steps(const BwdParams& params, int col) {
  const Extents& s = params.p.shape;
  const BwdColumn c = bwd_column(s, col);
  const BwdStepRange range = bwd_step_range(s, params.p.scoring.causal, c.kt * params.tile_kv);
  const bool has_mask = params.tile_class != nullptr;
  const int group = s.heads / s.heads_kv;
  int kept = 0;
  for (int g = 0; g < group; ++g) kept += bwd_head_steps(params, c.b, c.h_kv * group + g, c.kt, range, has_mask);
  return kept;
}

// Exclusive prefix sums of (a, b) over a block of kScheduleThreads, and the block's totals.
constexpr int kScheduleThreads = 1024;
__device__ inline int2 block_exclusive_scan(int2 v, int2* totals) {
  __shared__ int2 warp_sums[kScheduleThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  int2 inc = v;
  for (int off = 1; off < 32; off *= 2) {
    const int ax = __shfl_up_sync(0xffffffff, inc.x, off), ay = __shfl_up_sync(0xffffffff, inc.y, off);
    if (lane >= off) inc = make_int2(inc.x + ax, inc.y + ay);
  }
  if (lane == 31) warp_sums[warp] = inc;
  __syncthreads();
  int2 before = make_int2(0, 0), all = make_int2(0, 0);
  for (int w = 0; w < kScheduleThreads / 32; ++w) {
    if (w < warp) before = make_int2(before.x + warp_sums[w].x, before.y + warp_sums[w].y);
    all = make_int2(all.x + warp_sums[w].x, all.y + warp_sums[w].y);
  }
  __syncthreads();
  *totals = all;
  return make_int2(before.x + inc.x - v.x, before.y + inc.y - v.y);
}

// One block: each thread counts the kept steps of its run of columns; then the segment length
// from the total work, each column's items (its kept steps cut into segments) and, for columns of
// more than one item, a slot, written in column order.
__global__ void __launch_bounds__(kScheduleThreads) schedule_kernel(const BwdParams params, int target) {
  __shared__ long long warp_totals[kScheduleThreads / 32];
  const int n = params.columns, per = (n + kScheduleThreads - 1) / kScheduleThreads;
  const int begin = min(n, int(threadIdx.x) * per), end = min(n, begin + per);
  long long mine = 0;
  for (int c = begin; c < end; ++c) {
    const int steps = count_column_steps(params, c);
    params.column_steps[c] = steps;  // read back below and by finish_columns_kernel
    mine += steps;
  }
  for (int off = 16; off > 0; off >>= 1) mine += __shfl_xor_sync(0xffffffff, mine, off);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = mine;
  __syncthreads();
  long long total = 0;
  for (int w = 0; w < kScheduleThreads / 32; ++w) total += warp_totals[w];
  int segment = INT_MAX;
  if (params.max_slots > 0) {
    const long long even = (total + target - 1) / target;
    segment = int(even > kBwdMinSegmentSteps ? even : kBwdMinSegmentSteps);
  }
  auto pieces = [&](int steps) { return steps == 0 ? 0 : (steps - 1) / segment + 1; };
  int2 local = make_int2(0, 0);
  for (int c = begin; c < end; ++c) {
    const int k = pieces(params.column_steps[c]);
    local = make_int2(local.x + k, local.y + (k > 1));
  }
  int2 totals;
  int2 at = block_exclusive_scan(local, &totals);
  BwdItem* items = const_cast<BwdItem*>(params.items);
  for (int c = begin; c < end; ++c) {
    const int steps = params.column_steps[c], k = pieces(steps);
    const int slot = k > 1 ? at.y++ : -1;
    params.column_slot[c] = slot;
    for (int i = 0; i < k; ++i) {
      const int lo = i * segment;
      items[at.x++] = {c, lo, steps - lo < segment ? steps : lo + segment, slot};
    }
  }
  if (threadIdx.x == 0) *params.schedule = {totals.x, 0, totals.y};
}

// One block per slot in use: its dK, dV sums start at 0.
__global__ void clear_slots_kernel(const BwdParams params) {
  if (int(blockIdx.x) >= params.schedule->slots) return;
  const int n = 2 * params.tile_kv * params.dq_stride;
  float* slot = bwd_slot_sums(params, blockIdx.x);
  for (int i = threadIdx.x; i < n; i += blockDim.x) slot[i] = 0.f;
}

// One block per column: dK, dV of a split column from its slot, of a column nothing reaches 0;
// other columns were stored by the main kernel.
template <typename T>
__global__ void finish_columns_kernel(const BwdParams params) {
  const int col = blockIdx.x;
  const int steps = params.column_steps[col], slot = params.column_slot[col];
  if (steps != 0 && slot < 0) return;
  const BwdProblem& p = params.p;
  const Extents& s = p.shape;
  const BwdColumn c = bwd_column(s, col);
  const int stride = params.dq_stride;
  const float* dk_sum = slot >= 0 ? bwd_slot_sums(params, slot) : nullptr;
  const float* dv_sum = dk_sum ? dk_sum + params.tile_kv * stride : nullptr;
  const int per_row = s.head_dim / 8;
  for (int i = threadIdx.x; i < params.tile_kv * per_row; i += blockDim.x) {
    const int r = i / per_row, d = i % per_row * 8, key = c.kt * params.tile_kv + r;
    if (key >= s.seqlen_k) break;
    float k8[8] = {}, v8[8] = {};
    if (dk_sum != nullptr) {
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        k8[j] = dk_sum[r * stride + d + j];
        v8[j] = dv_sum[r * stride + d + j];
      }
    }
    store8(static_cast<T*>(p.dk.data) + c.b * p.dk.batch_stride + key * p.dk.row_stride + c.h_kv * p.dk.head_stride + d, k8);
    store8(static_cast<T*>(p.dv.data) + c.b * p.dv.batch_stride + key * p.dv.row_stride + c.h_kv * p.dv.head_stride + d, v8);
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
  size_t schedule = 0, columns = 0, items = 0, dkv = 0;
  int32_t n_columns = 0, max_items = 0, max_slots = 0, sm_count = 0;
  int32_t tile_kv = 0;  // keys per column (bwd_tile_kv): the one place it is chosen for a call
  size_t total() const {
    return plan + class_map + 3 * rows + dq + dbias + dq_turn + dbias_turn + schedule + 2 * columns + items + dkv;
  }
};

int sm_count_of(int device) {
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    cudaGetLastError();
    n = 1;
  }
  return n > 0 ? n : 1;
}

BwdWorkspace bwd_workspace(const BwdProblem& p, int bucket) {
  BwdWorkspace w;
  const Extents& s = p.shape;
  const size_t q_pad = size_t(s.seqlen_q + kBwdTileQ - 1) / kBwdTileQ * kBwdTileQ;
  const size_t bh = size_t(s.batch) * s.heads;
  w.tile_kv = bwd_tile_kv(bucket, p.scoring.mask_kind != MaskKind::kNone, p.scoring.has_bias);
  const size_t tile_kv = size_t(w.tile_kv);
  const size_t k_tiles = (size_t(s.seqlen_k) + tile_kv - 1) / tile_kv;
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
  // The work list. A split column keeps more than total / target steps, so fewer than `target`
  // columns are split; and every column adds at most one item beyond total / segment <= target.
  // Deterministic calls split nothing: dK and dV are then summed in one CTA, in order.
  w.n_columns = int32_t(k_tiles * s.batch * s.heads_kv);
  w.sm_count = sm_count_of(p.launch.device);
  const int32_t target = w.sm_count * kBwdItemsPerSm;
  w.max_slots = p.deterministic ? 0 : (w.n_columns < target ? w.n_columns : target);
  w.max_items = w.n_columns + (p.deterministic ? 0 : target);
  w.schedule = align256(sizeof(BwdSchedule));
  w.columns = align256(size_t(w.n_columns) * sizeof(int32_t));
  w.items = align256(size_t(w.max_items) * sizeof(BwdItem));
  w.dkv = align256(size_t(w.max_slots) * 2 * tile_kv * bucket * sizeof(float));
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
  f.tile_plan = const_cast<void*>(p.tile_plan);  // read only: the backward never builds into it
  f.tile_plan_size = p.tile_plan_size;
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
  params.tile_kv = w.tile_kv;
  dmattn_status st = DMATTN_STATUS_SUCCESS;
  // Without queries nothing is walked: no plan (the kernel only writes zero dK and dV).
  if (p.scoring.mask_kind != MaskKind::kNone && s.seqlen_q > 0) {
    // The forward's plan when the caller kept it, else built again (one pass over the mask).
    const FwdProblem f = bwd_as_fwd(p);
    st = place_tile_plan(f, params.plan, at, msg, msg_len);
    if (st == DMATTN_STATUS_SUCCESS && p.tile_plan == nullptr) st = build_tile_plan(f, params.plan, msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
    uint8_t* map = reinterpret_cast<uint8_t*>(take(w.class_map));
    params.tile_class = map;
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
  params.schedule = reinterpret_cast<BwdSchedule*>(take(w.schedule));
  params.column_steps = reinterpret_cast<int32_t*>(take(w.columns));
  params.column_slot = reinterpret_cast<int32_t*>(take(w.columns));
  params.items = reinterpret_cast<const BwdItem*>(take(w.items));
  params.dkv_accum = reinterpret_cast<float*>(take(w.dkv));
  params.columns = w.n_columns;
  params.max_items = w.max_items;
  params.max_slots = w.max_slots;
  params.sm_count = w.sm_count;

  // Everything the kernel adds into starts at zero; so does a dbias written tile by tile, since
  // tiles nothing reaches are never written.
  const char* clear_what = "clearing the backward accumulators";
  // (The dQ accumulator is zeroed by prep_rows_kernel.)
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
  constexpr int kWarpsPerBlock = 8, kRowsPerBlock = kWarpsPerBlock * kPrepRowsPerWarp;
  const int blocks = int((rows + kRowsPerBlock - 1) / kRowsPerBlock);
  if (blocks > 0) {
    with_element(p.dtype, [&](auto element) {
      prep_rows_kernel<decltype(element)><<<blocks, 32 * kWarpsPerBlock, 0, stream>>>(p, params.q_pad, lse, delta, fix,
                                                                                      params.dq_accum, params.dq_stride);
    });
    st = launch_status("backward row statistics", msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  if (params.columns == 0) return DMATTN_STATUS_SUCCESS;
  schedule_kernel<<<1, kScheduleThreads, 0, stream>>>(params, params.sm_count * kBwdItemsPerSm);
  if (params.max_slots > 0) clear_slots_kernel<<<params.max_slots, 256, 0, stream>>>(params);
  return launch_status("backward work list", msg, msg_len);
}

dmattn_status bwd_finish(const BwdParams& params, char* msg, size_t msg_len) {
  const BwdProblem& p = params.p;
  const Extents& s = p.shape;
  cudaStream_t stream = static_cast<cudaStream_t>(p.launch.stream);
  const int64_t chunks = int64_t(s.batch) * s.heads * s.seqlen_q * (s.head_dim / 8);
  if (chunks > 0) {
    with_element(p.dtype, [&](auto element) {
      convert_dq_kernel<decltype(element)><<<grid_for(chunks, 256), 256, 0, stream>>>(p, params.dq_accum, params.q_pad,
                                                                                     params.dq_stride);
    });
    const dmattn_status st = launch_status("backward dq conversion", msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  if (params.columns > 0) {
    with_element(p.dtype, [&](auto element) {
      finish_columns_kernel<decltype(element)><<<params.columns, 128, 0, stream>>>(params);
    });
    const dmattn_status st = launch_status("backward dk, dv of split columns", msg, msg_len);
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
