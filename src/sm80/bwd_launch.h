// bwd_launch.h: the backward entry of the SM80-class family library. launch_bwd runs, on the
// problem's stream:
//   1. the tile plan of the keep-mask (the forward's, tile_plan.h) and its per-tile class map, which
//      a key-tile-major walk can read down a column (bwd_support.cu);
//   2. row statistics per (b, h, query): delta = rowsum(dO * O), the lse the kernel shifts by and a
//      correction for rows whose lse lost its log-sum to rounding (bwd_support.cu);
//   3. the work list (bwd_support.cu): per column (key tile, batch, kv head) the number of query
//      steps its plan keeps, cut into segments of about equal length so that a few busy columns
//      (a sparse per-key mask keeps whole key tiles) spread over every SM;
//   4. the main kernel (bwd_kernel.cuh): persistent CTAs take items (a column's segment) in list
//      order, dK and dV in registers, dQ added to an fp32 accumulator, dbias written or
//      accumulated by its shape;
//   5. dQ (and a reduced dbias) converted to the input dtype; dK, dV of split columns converted
//      from their fp32 sums, and of columns nothing reaches written as 0.
// The main kernel's (dtype, head-dim bucket, mask, bias) variants are stamped from
// src/instantiate/bwd.cu.in, one translation unit each.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

constexpr int kBwdTileQ = 64;  // query rows per step of the main loop (half a plan tile)
// Keys per column (the CTA's key tile). 128 halves the loads of Q and dO, the dQ additions and the
// shared-memory reads per product of a 64-key tile (its warp tiles are twice as tall; on an H100
// the dense backward ran 1.4-1.5x faster), but:
//   - it holds 128 x D of dK and dV in registers: ptxas (sm_90a) spills 132 bytes at D = 128,
//     which still pays; with a bias 224 bytes ate the whole gain until the bias variant computed
//     dP^T only after staging P^T (kScoresApart in bwd_kernel.cuh): 256 bytes of spill now, and
//     the per-key bias backward 1.43x -> 1.15x dense causal on an H200;
//   - with a mask, a column of two plan tiles is walked where either is kept, so a sparse mask of
//     scattered 64-key blocks would cost up to twice its work: masked calls keep one plan tile;
//   - it takes up to ~180 KB of shared memory (D = 128), more than sm80 (163 KB on A100, 99 KB on
//     sm86/89) or sm120 (99 KB) GPUs allow a block.
// So families whose GPUs allow a block 227 KB (sm90, sm100) take it without a mask (D <= 128); the
// rest keep one plan tile. The family library is compiled with its
// DMATTN_FAMILY_SM.
constexpr int bwd_tile_kv(int head_dim_bucket, bool has_mask, bool has_bias) {
#if defined(DMATTN_FAMILY_SM) && (DMATTN_FAMILY_SM == 90 || DMATTN_FAMILY_SM == 100)
  (void)has_bias;  // the bias no longer decides (kept in the signature: other families may need it)
  return !has_mask && head_dim_bucket <= 128 ? 128 : kPlanTileKV;
#else
  (void)head_dim_bucket;
  (void)has_mask;
  (void)has_bias;
  return kPlanTileKV;
#endif
}

// A column is (key tile, batch, kv head), numbered key tile major: under causal the longest columns
// (first key tiles) come first in the list. A column's work is its query steps (64 rows of one
// query head of the group) that the plan keeps, in (head, step) order; an item is the range
// [begin, end) of them. Columns cut into several items add dK, dV into an fp32 slot
// (slot >= 0); a column of one item stores them itself (slot -1).
struct BwdItem {
  int32_t column, begin, end, slot;
};

// The list's header, written by the scheduling kernel: items, the next item to hand out and slots
// in use.
struct BwdSchedule {
  int32_t items, next, slots;
};

// A column with fewer kept steps than this is not split: K, V loads and the dK, dV flush per item
// would outweigh the work.
constexpr int kBwdMinSegmentSteps = 8;
// Items aimed for per SM: enough for the dynamic hand-out to even out uneven columns.
constexpr int kBwdItemsPerSm = 4;

// How the main kernel produces dbias, by the bias's shape (bwd_dbias_mode).
enum class DbiasMode : int32_t {
  kNone = 0,
  kFullDirect = 1,  // (B, H, Q, K): each element is one score's gradient, stored in the input dtype
  kFullAccum = 2,   // (B|1, H|H_kv|1, Q, K) broadcast over heads or batch: fp32 adds into dbias_accum
  kPerKey = 3,      // (.., 1, K): per (b, h, key) sums over queries into dbias_accum (B, H, K)
  // (.., Q|1, 1): a bias broadcast over keys adds the same value to every score of a row, which the
  // softmax ignores: its gradient, sum over keys of P (dP - delta) = delta - delta, is exactly 0.
  kZero = 4,
};

struct BwdParams {
  BwdProblem p;
  // With a mask: the forward's tile plan, and its class map (mask batches, heads, q_tiles, k_tiles)
  // of bytes: 0 nothing kept, 1 partly kept, 2 fully kept.
  TilePlan plan;
  const uint8_t* tile_class = nullptr;
  // Row statistics, (B, H, q_pad) each, q_pad = Q rounded up to kBwdTileQ (padding rows keep nothing).
  int32_t q_pad = 0;
  const float* lse = nullptr;    // the forward's lse; +inf for rows that keep nothing
  const float* delta = nullptr;  // rowsum(dO * O)
  const float* row_fix = nullptr;  // 1 / sum of exp(s - lse) over the row: 1 except where lse lost it (bias only)
  // dQ accumulator (B, H, q_pad, head-dim bucket), fp32, unscaled.
  float* dq_accum = nullptr;
  int32_t dq_stride = 0;  // floats per row of dq_accum (the head-dim bucket)
  DbiasMode dbias_mode = DbiasMode::kNone;
  float* dbias_accum = nullptr;
  // deterministic: per (b, h, query step) counts of dQ adds done, so CTAs add in key-tile order;
  // and for kFullAccum shared across CTAs, per (bias batch, bias head, query step, key tile).
  int32_t* dq_turn = nullptr;
  int32_t* dbias_turn = nullptr;
  // The work list: items in column order, its header, per column the kept steps and the slot
  // (-1: none), and the slots' fp32 sums (slot, {dK scaled, dV}, tile_kv keys, head-dim bucket).
  const BwdItem* items = nullptr;
  BwdSchedule* schedule = nullptr;
  int32_t* column_steps = nullptr;
  int32_t* column_slot = nullptr;
  float* dkv_accum = nullptr;
  int32_t columns = 0;
  int32_t tile_kv = 0;  // keys per column: bwd_tile_kv(head-dim bucket, mask, bias)
  int32_t max_items = 0;
  int32_t max_slots = 0;
  int32_t sm_count = 0;
};

// A column's (key tile, batch, kv head) from its number, key tile major (BwdItem).
struct BwdColumn {
  int kt, b, h_kv;
};
__host__ __device__ inline BwdColumn bwd_column(const Extents& s, int column) {
  const int per_tile = s.batch * s.heads_kv;
  return {column / per_tile, column % per_tile / s.heads_kv, column % s.heads_kv};
}

// A split column's fp32 sums in its slot: dK (scaled) at [0], dV at [tile_kv * dq_stride], each
// (tile_kv keys, head-dim bucket).
__host__ __device__ inline float* bwd_slot_sums(const BwdParams& params, int slot) {
  return params.dkv_accum + int64_t(slot) * 2 * params.tile_kv * params.dq_stride;
}

// The query steps of one key tile starting at key k0: steps [first, count) under causal, where no
// row before `first` sees a key of the tile.
struct BwdStepRange {
  int first, count;
};
__host__ __device__ inline BwdStepRange bwd_step_range(const Extents& s, bool causal, int k0) {
  const int count = (s.seqlen_q + kBwdTileQ - 1) / kBwdTileQ;
  const int diag = s.seqlen_k - s.seqlen_q;
  int first = 0;
  if (causal) {
    first = (k0 - diag > 0 ? k0 - diag : 0) / kBwdTileQ;
    first = first < count ? first : count;
  }
  return {first, count};
}

// The plan's class map of (b, query head h): one byte per plan tile, (q_tiles, k_tiles) row major.
__host__ __device__ inline const uint8_t* bwd_class_map(const BwdParams& params, int b, int h) {
  const TilePlan& plan = params.plan;
  const int mb = plan.batches == 1 ? 0 : b;
  const int mh = plan.heads == 1 ? 0 : h / params.p.scoring.mask.head_group;
  return params.tile_class + (int64_t(mb) * plan.heads + mh) * plan.q_tiles * plan.k_tiles;
}

// The class of column kt for plan query tile qt: 0 nothing kept, 1 partly, 2 fully. Masked calls
// cut columns as the plan cuts key tiles (bwd_tile_kv).
__host__ __device__ inline int bwd_tile_class(const BwdParams& params, const uint8_t* map, int qt, int kt) {
  return map[int64_t(qt) * params.plan.k_tiles + kt];
}

// Kept steps of (b, h) in key tile kt's column: all of its step range without a mask or with a mask
// broadcast over queries (one class for the column), else those whose plan tile keeps something.
__host__ __device__ inline int bwd_head_steps(const BwdParams& params, int b, int h, int kt, BwdStepRange r,
                                              bool has_mask) {
  if (r.first >= r.count) return 0;
  if (!has_mask) return r.count - r.first;
  const uint8_t* map = bwd_class_map(params, b, h);
  if (params.plan.q_tiles == 1) return bwd_tile_class(params, map, 0, kt) != 0 ? r.count - r.first : 0;
  int kept = 0;
  constexpr int kStepsPerTile = kPlanTileQ / kBwdTileQ;
  for (int qt = r.first / kStepsPerTile; qt * kStepsPerTile < r.count; ++qt) {
    if (bwd_tile_class(params, map, qt, kt) == 0) continue;
    const int lo = qt * kStepsPerTile > r.first ? qt * kStepsPerTile : r.first;
    const int hi = (qt + 1) * kStepsPerTile < r.count ? (qt + 1) * kStepsPerTile : r.count;
    kept += hi - lo;
  }
  return kept;
}

template <typename Element, int kHeadDim, bool kHasMask, bool kHasBias>
dmattn_status launch_bwd_variant(const BwdParams& params, char* msg, size_t msg_len);

// The forward problem with the same inputs (the tile plan is built from it).
FwdProblem bwd_as_fwd(const BwdProblem& p);

// Workspace bytes of a backward call with this head-dim bucket, and the buffers carved from it.
size_t bwd_workspace_bytes(const BwdProblem& p, int head_dim_bucket);
dmattn_status bwd_prepare(const BwdProblem& p, int head_dim_bucket, BwdParams& params, char* msg, size_t msg_len);
dmattn_status bwd_finish(const BwdParams& params, char* msg, size_t msg_len);

template <typename Element, int kHeadDim>
dmattn_status launch_bwd(const BwdProblem& p, char* msg, size_t msg_len) {
  BwdParams params{};
  dmattn_status st = bwd_prepare(p, kHeadDim, params, msg, msg_len);
  if (st != DMATTN_STATUS_SUCCESS) return st;
  const bool has_mask = p.scoring.mask_kind != MaskKind::kNone, has_bias = p.scoring.has_bias;
  if (has_mask && has_bias) st = launch_bwd_variant<Element, kHeadDim, true, true>(params, msg, msg_len);
  else if (has_mask) st = launch_bwd_variant<Element, kHeadDim, true, false>(params, msg, msg_len);
  else if (has_bias) st = launch_bwd_variant<Element, kHeadDim, false, true>(params, msg, msg_len);
  else st = launch_bwd_variant<Element, kHeadDim, false, false>(params, msg, msg_len);
  if (st != DMATTN_STATUS_SUCCESS) return st;
  return bwd_finish(params, msg, msg_len);
}

}  // namespace dmattn::sm80
