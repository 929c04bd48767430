// online_softmax.cuh: the running row max and row sum of a streamed softmax, for the rows one thread
// holds of an mma.sync m16n8 accumulator (each row is spread over the 4 lanes of a quad).
// Scores stay in the natural domain: exp(x - max) is computed as exp2((x - max) * log2 e), so a bias
// of finfo.min never overflows to -inf on its way (x * log2 e would), and fully masked rows (all
// -inf) keep a reference of 0 so no inf - inf appears. Rows that kept nothing end with out = 0 and
// lse = -inf.
#pragma once

#include <cute/tensor.hpp>

#include <cfloat>
#include <cmath>

#include "sm80/device_math.cuh"
#include "sm80/fragments.cuh"

namespace dmattn::sm80 {

// kRows rows per thread. Scores arrive as s / mult (mult > 0: the softmax scale folded into the
// exponent, or 1). kExactShift: scores may be near the float limits (with a bias, and then mult is
// 1), so rows whose max is too large in magnitude to scale by log2 e subtract it first; otherwise
// one fused multiply-add per element.
template <int kRows, bool kExactShift>
struct OnlineSoftmax {
  static constexpr float kLog2e = 1.4426950408889634f;
  static constexpr float kFusedShiftLimit = 8192.f;  // |ref * log2 e| the fused form is exact enough for
  float row_max[kRows];
  float row_sum[kRows];  // this thread's partial sums (reduced over the quad in finish)

  __device__ OnlineSoftmax() {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      row_max[r] = -INFINITY;
      row_sum[r] = 0.f;
    }
  }

  // scores (rows, cols) -> exp(score - running max) in place; out (acc layout) rescaled to the new max.
  template <class Scores, class Out>
  __device__ __forceinline__ void update(Scores& scores, Out& out, float mult) {
    const float mult_log2 = mult * kLog2e;
    auto out_rows = cute::make_tensor(out.data(), rows_cols(out.layout()));
    float rescale[kRows], row_ref[kRows];
    bool moved = false;  // some row's max rose, so its output so far must be rescaled
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      float tile_max = -INFINITY;
      CUTE_UNROLL
      for (int c = 0; c < cute::size<1>(scores); ++c) tile_max = fmaxf(tile_max, scores(r, c));
      const float new_max = fmaxf(row_max[r], quad_max(tile_max));
      const float ref = new_max == -INFINITY ? 0.f : new_max;
      rescale[r] = fast_exp2((row_max[r] - ref) * mult_log2);  // exactly 1 when the max held
      moved |= new_max != row_max[r];
      row_max[r] = new_max;
      row_ref[r] = ref;
    }
    // exp(x - ref) as one fused multiply-add, exp2(x * log2 e - ref * log2 e), while ref * log2 e
    // is small enough that its rounding (|ref log2 e| * 2^-24) stays below 2^-11 in the exponent.
    // Past that (a row whose kept scores all sit near a bias of -1e9, -1e30 or finfo.min) the
    // rounded product is off by up to 2^-25 |ref| (for -1e30, ~1e22: exp2 gives inf or 0), so such
    // warps shift exactly: exp2((x - ref) * log2 e). A key alone at such a score in an ordinary row
    // still gets exp2(-huge) = 0 from the fused form, its true weight in float.
    bool exact = false;
    if constexpr (kExactShift) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) exact |= !(fabsf(row_ref[r] * mult_log2) <= kFusedShiftLimit);
      exact = __any_sync(0xffffffff, exact);
    }
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float ref_log2 = row_ref[r] * mult_log2;
      float sum = 0.f;
      if (kExactShift && exact) {
        CUTE_UNROLL
        for (int c = 0; c < cute::size<1>(scores); ++c) {
          const float e = fast_exp2((scores(r, c) - row_ref[r]) * kLog2e);
          scores(r, c) = e;
          sum += e;
        }
      } else {
        CUTE_UNROLL
        for (int c = 0; c < cute::size<1>(scores); ++c) {
          const float e = fast_exp2(fmaf(scores(r, c), mult_log2, -ref_log2));
          scores(r, c) = e;
          sum += e;
        }
      }
      row_sum[r] = row_sum[r] * rescale[r] + sum;
    }
    // Once the running maxima settle most steps move none in a warp; skipping the multiply then
    // saves one instruction per output element (a warp-uniform branch, so it is not predicated).
    if (__any_sync(0xffffffff, moved)) {
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r) {
        CUTE_UNROLL
        for (int c = 0; c < cute::size<1>(out_rows); ++c) out_rows(r, c) *= rescale[r];
      }
    }
  }

  // Per row: the factor that normalizes the output (0 for a row that kept nothing) and its lse.
  __device__ __forceinline__ void finish(float (&inv)[kRows], float (&lse)[kRows], float mult) {
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const float sum = quad_sum(row_sum[r]);
      inv[r] = sum > 0.f ? 1.f / sum : 0.f;
      lse[r] = sum > 0.f ? row_max[r] * mult + logf(sum) : -INFINITY;
    }
  }
};

}  // namespace dmattn::sm80
