// fwd_launch.h: the forward entry of the SM80-class family library. launch_fwd builds the tile plan
// when a keep-mask is given, then calls the kernel variant for the mask and bias present. Each
// (dtype, head-dim bucket, mask, bias) variant is defined in its own stamped translation unit
// (src/instantiate/fwd.cu.in, one per kernel-table row and variant), so they compile in parallel.
#pragma once

#include <cutlass/numeric_types.h>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

// The kernel's parameters: the validated problem and, with a mask, its tile plan.
struct FwdParams {
  FwdProblem p;
  TilePlan plan;
};

template <typename Element, int kHeadDim, bool kHasMask, bool kHasBias>
dmattn_status launch_fwd_variant(const FwdParams& params, char* msg, size_t msg_len);

// The plan lives in the workspace (fwd_workspace_size asks plan_extents for its size).
template <typename Element, int kHeadDim>
dmattn_status launch_fwd(const FwdProblem& p, char* msg, size_t msg_len) {
  FwdParams params{p, TilePlan{}};
  const bool has_mask = p.scoring.mask_kind != MaskKind::kNone;
  if (has_mask) {
    params.plan = plan_extents(p);
    params.plan.rows = static_cast<int32_t*>(p.launch.workspace);
    const dmattn_status st = build_tile_plan(p, params.plan, msg, msg_len);
    if (st != DMATTN_STATUS_SUCCESS) return st;
  }
  if (has_mask && p.scoring.has_bias) return launch_fwd_variant<Element, kHeadDim, true, true>(params, msg, msg_len);
  if (has_mask) return launch_fwd_variant<Element, kHeadDim, true, false>(params, msg, msg_len);
  if (p.scoring.has_bias) return launch_fwd_variant<Element, kHeadDim, false, true>(params, msg, msg_len);
  return launch_fwd_variant<Element, kHeadDim, false, false>(params, msg, msg_len);
}

}  // namespace dmattn::sm80
