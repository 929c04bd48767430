// split_kv.h: splitting the key range of each query tile over several CTAs (as flash-decoding does)
// when the grid of query tiles alone would leave SMs idle: decode (Q = 1) over long caches, or few
// heads and short queries. Each split writes its partial output (normalized by its own sum) and its
// lse to the workspace; combine_splits merges them with weights exp(lse_i - lse).
//
// Workspace layout of a forward call: [tile plan (if a mask), 256-byte aligned][split lse][split out].
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdio>
#include <cstdint>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

constexpr int kMaxSplits = 32;  // one lse per lane in the combine kernel
constexpr size_t kMaxSplitWorkspace = size_t(256) << 20;

struct SplitKV {
  int32_t splits = 1;
  int32_t head_dim_stride = 0;     // floats per row of out_partial (the head-dim bucket)
  float* lse_partial = nullptr;    // (splits, B, H, Q)
  float* out_partial = nullptr;    // (splits, B, H, Q, head_dim_stride)
};

inline int sm_count(int device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int n = 0;
  if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device) != cudaSuccess || n <= 0) {
    cudaGetLastError();
    n = 1;
  }
  if (device >= 0 && device < 64) cached[device] = n;
  return n;
}

inline size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// The forward's query tile for a problem: 16 rows (one warp) for Q <= 16, else the plan's 128.
inline int fwd_tile_q(const FwdProblem& p) { return p.shape.seqlen_q <= kDecodeTileQ ? kDecodeTileQ : kPlanTileQ; }

// Splits for a problem (1: no split): enough CTAs for about two 128-row (or eight 16-row) CTAs per
// SM, at least 4 key tiles per split, at most kMaxSplits, and partial results within
// kMaxSplitWorkspace.
inline int choose_splits(const FwdProblem& p, int head_dim_bucket) {
  if (p.shape.cu_seqlens_q != nullptr) return 1;
  const int tile_q = fwd_tile_q(p);
  const int64_t q_tiles = (p.shape.seqlen_q + tile_q - 1) / tile_q;
  const int64_t ctas = q_tiles * p.shape.heads * p.shape.batch;
  const int64_t target = int64_t(sm_count(p.launch.device)) * (tile_q == kDecodeTileQ ? 8 : 2);
  if (2 * ctas > target) return 1;
  const int64_t k_tiles = (p.shape.seqlen_k + kPlanTileKV - 1) / kPlanTileKV;
  int64_t splits = (target + ctas - 1) / ctas;
  if (splits > k_tiles / 4) splits = k_tiles / 4;
  if (splits > kMaxSplits) splits = kMaxSplits;
  const int64_t rows = int64_t(p.shape.batch) * p.shape.heads * p.shape.seqlen_q;
  while (splits > 1 && size_t(splits) * rows * (head_dim_bucket + 1) * sizeof(float) > kMaxSplitWorkspace) --splits;
  return splits > 1 ? int(splits) : 1;
}

inline size_t split_workspace_bytes(const FwdProblem& p, int splits, int head_dim_bucket) {
  if (splits <= 1) return 0;
  const size_t rows = size_t(p.shape.batch) * p.shape.heads * p.shape.seqlen_q;
  return align256(splits * rows * sizeof(float)) + splits * rows * head_dim_bucket * sizeof(float);
}

inline size_t plan_workspace_bytes(const FwdProblem& p) {
  // A caller-held plan (tile_plan) takes no workspace.
  return p.scoring.mask_kind != MaskKind::kNone && p.tile_plan == nullptr ? align256(plan_extents(p).bytes()) : 0;
}

// Where a problem's tile plan lives: the caller's tile_plan, checked against its size, or else the
// workspace at `workspace`, which is then advanced past it.
inline dmattn_status place_tile_plan(const FwdProblem& p, TilePlan& plan, char*& workspace, char* msg, size_t msg_len) {
  plan = plan_extents(p);
  if (p.tile_plan == nullptr) {
    plan.rows = reinterpret_cast<int32_t*>(workspace);
    workspace += plan_workspace_bytes(p);
    return DMATTN_STATUS_SUCCESS;
  }
  if (p.tile_plan_size < plan.bytes()) {
    std::snprintf(msg, msg_len, "tile_plan: %zu bytes given, this mask's plan needs %zu (dmattn_fwd_plan_size)",
                  p.tile_plan_size, plan.bytes());
    return DMATTN_STATUS_INSUFFICIENT_WORKSPACE;
  }
  plan.rows = static_cast<int32_t*>(p.tile_plan);
  return DMATTN_STATUS_SUCCESS;
}

// Merges the splits into out and lse (defined in split_kv.cu).
dmattn_status combine_splits(const FwdProblem& p, const SplitKV& split, char* msg, size_t msg_len);

}  // namespace dmattn::sm80
