// fwd_launch.h: the forward entry of the SM80-class family library. launch_fwd builds the tile plan
// when a keep-mask is given, calls the kernel variant for the mask and bias present, and merges the
// key splits when the key range was split (split_kv.h). Each
// (dtype, head-dim bucket, mask, bias) variant is defined in its own stamped translation unit
// (src/instantiate/fwd.cu.in, one per kernel-table row and variant), so they compile in parallel.
#pragma once

#include <cutlass/numeric_types.h>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/split_kv.h"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

// The kernel's parameters: the validated problem, the tile plan (with a mask) and the split-KV
// buffers (with more than one split).
struct FwdParams {
  FwdProblem p;
  TilePlan plan;
  SplitKV split;
};

template <typename Element, int kHeadDim, int kTileQ, bool kHasMask, bool kHasBias>
dmattn_status launch_fwd_variant(const FwdParams& params, char* msg, size_t msg_len);

// The variant for the mask and bias present, with the query tile kTileQ.
template <typename Element, int kHeadDim, int kTileQ>
dmattn_status launch_fwd_tile(const FwdParams& params, char* msg, size_t msg_len) {
  const bool has_mask = params.p.scoring.mask_kind != MaskKind::kNone, has_bias = params.p.scoring.has_bias;
  if (has_mask && has_bias) return launch_fwd_variant<Element, kHeadDim, kTileQ, true, true>(params, msg, msg_len);
  if (has_mask) return launch_fwd_variant<Element, kHeadDim, kTileQ, true, false>(params, msg, msg_len);
  if (has_bias) return launch_fwd_variant<Element, kHeadDim, kTileQ, false, true>(params, msg, msg_len);
  return launch_fwd_variant<Element, kHeadDim, kTileQ, false, false>(params, msg, msg_len);
}

// Workspace bytes of a forward call with this head-dim bucket (layout in split_kv.h).
inline size_t fwd_workspace_bytes(const FwdProblem& p, int head_dim_bucket) {
  return plan_workspace_bytes(p) + split_workspace_bytes(p, choose_splits(p, head_dim_bucket), head_dim_bucket);
}

template <typename Element, int kHeadDim>
dmattn_status launch_fwd(const FwdProblem& p, char* msg, size_t msg_len) {
  FwdParams params{p, TilePlan{}, SplitKV{}};
  char* workspace = static_cast<char*>(p.launch.workspace);
  const bool has_mask = p.scoring.mask_kind != MaskKind::kNone;
  if (has_mask) {
    dmattn_status st = place_tile_plan(p, params.plan, workspace, msg, msg_len);
    if (st == DMATTN_STATUS_SUCCESS) st = build_tile_plan(p, params.plan, msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  params.split.splits = choose_splits(p, kHeadDim);
  if (params.split.splits > 1) {
    const size_t rows = size_t(p.shape.batch) * p.shape.heads * p.shape.seqlen_q;
    params.split.head_dim_stride = kHeadDim;
    params.split.lse_partial = reinterpret_cast<float*>(workspace);
    params.split.out_partial = reinterpret_cast<float*>(workspace + align256(params.split.splits * rows * sizeof(float)));
  }
  const dmattn_status st = fwd_tile_q(p) == kDecodeTileQ
                               ? launch_fwd_tile<Element, kHeadDim, kDecodeTileQ>(params, msg, msg_len)
                               : launch_fwd_tile<Element, kHeadDim, kPlanTileQ>(params, msg, msg_len);
  if (st != DMATTN_STATUS_SUCCESS || params.split.splits <= 1) return st;
  return combine_splits(p, params.split, msg, msg_len);
}

}  // namespace dmattn::sm80
