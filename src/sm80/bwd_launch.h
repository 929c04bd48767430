// bwd_launch.h: the backward entry of the SM80-class family library. launch_bwd runs, on the
// problem's stream:
//   1. the tile plan of the keep-mask (the forward's, tile_plan.h) and its per-tile class map, which
//      a key-tile-major walk can read down a column (bwd_support.cu);
//   2. row statistics per (b, h, query): delta = rowsum(dO * O), the lse the kernel shifts by and a
//      correction for rows whose lse lost its log-sum to rounding (bwd_support.cu);
//   3. the main kernel (bwd_kernel.cuh): one CTA per (key tile, kv head, batch), dK and dV in
//      registers, dQ added to an fp32 accumulator, dbias written or accumulated by its shape;
//   4. dQ (and a reduced dbias) converted to the input dtype.
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

constexpr int kBwdTileQ = 64;   // query rows per step of the main loop (half a plan tile)
constexpr int kBwdTileKV = 64;  // keys per CTA: one plan tile

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
};

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
