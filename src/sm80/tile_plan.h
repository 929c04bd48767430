// tile_plan.h: the schedule the forward kernel follows when a keep-mask is given (DESIGN: "Sparsity
// is scheduled, not discovered"). For each (mask batch, mask head, query tile) of the mask's *own*
// extents, one row of int32 in the workspace holding two lists of key tiles, each ascending:
//   [n_full, n_partial, full_0, full_1, ..., (free), ..., partial_1, partial_0]
// the fully kept tiles from the front of the row's k_tiles slots, the partly kept ones from its back
// (partial j at slot k_tiles - 1 - j), so both are written in one pass without knowing either count.
// Key tiles with nothing kept are absent; under causal only the entries a query can see count (a
// tile the diagonal crosses is full when everything visible in it is kept). The kernel walks the
// full tiles with no per-element mask work and the partial ones with it. A mask broadcast over
// queries (Q axis of size 1) has one query tile, built in O(K).
// Built by build_tile_plan (one pass over the mask); the same tile shape for every head dim, so the
// plan does not depend on which kernel reads it.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dmattn/dmattn.h"
#include "family/problem.h"

namespace dmattn::sm80 {

constexpr int kPlanTileQ = 128;
constexpr int kDecodeTileQ = 16;  // the forward's query tile when Q <= 16 (inside one plan tile)
constexpr int kPlanTileKV = 64;

struct TilePlan {
  int32_t* rows = nullptr;  // workspace
  int32_t batches = 0, heads = 0, q_tiles = 0, k_tiles = 0;

  __host__ __device__ int64_t row_len() const { return int64_t(k_tiles) + 2; }
  __host__ __device__ size_t bytes() const { return size_t(batches) * heads * q_tiles * row_len() * sizeof(int32_t); }
  // The plan row a CTA computing (batch b, query head h, query tile qt) follows.
  __host__ __device__ const int32_t* row(const ScoreView& mask, int b, int h, int qt) const {
    const int mb = batches == 1 ? 0 : b;
    const int mh = heads == 1 ? 0 : h / mask.head_group;
    const int mq = q_tiles == 1 ? 0 : qt;
    return rows + ((int64_t(mb) * heads + mh) * q_tiles + mq) * row_len();
  }
};

// Under causal (aligned bottom-right), one past the last key any of the query rows [row0, row0 +
// rows) sees (<= 0: none). The plan builder cuts a per-query row there and every kernel its lists, so
// the two must agree.
__host__ __device__ __forceinline__ int causal_key_end(int row0, int rows, int seqlen_q, int seqlen_k) {
  return min(seqlen_k, min(row0 + rows, seqlen_q) + seqlen_k - seqlen_q);
}

// The number of entries of an ascending list (at(j), j < n) below `limit`.
template <class At>
__host__ __device__ __forceinline__ int count_below(int n, At at, int limit) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (at(mid) < limit) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// The plan's extents for a problem's mask (rows left null).
inline TilePlan plan_extents(const FwdProblem& p) {
  const ScoreView& m = p.scoring.mask;
  TilePlan t;
  t.batches = m.shape[0];
  t.heads = m.shape[1];
  t.q_tiles = m.shape[2] == 1 ? 1 : (p.shape.seqlen_q + kPlanTileQ - 1) / kPlanTileQ;
  t.k_tiles = (p.shape.seqlen_k + kPlanTileKV - 1) / kPlanTileKV;
  return t;
}

// Launches the plan build on the problem's stream (defined in tile_plan.cu).
dmattn_status build_tile_plan(const FwdProblem& p, const TilePlan& plan, char* msg, size_t msg_len);

}  // namespace dmattn::sm80
