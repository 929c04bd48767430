// fwd_kernel.cuh: the SM80-class forward attention kernel (mma.sync m16n8k16, ldmatrix, cp.async),
// compiled into every family library until an arch gets its own. One CTA computes a 128 x D output
// tile of one (batch, head). It visits only the key tiles its schedule lists (every tile up to the
// causal limit without a mask; the tile plan's kept tiles with one, tile_plan.h), in two phases: the
// fully kept tiles by code with no mask work at all, then the partly kept ones, and per tile:
//   S = Q K^T -> scores (scale, softcap, bias; causal and bounds only on tiles that need them, the
//   keep-mask only in the partial phase) -> online softmax -> O += P V.
// Loads overlap math as in FlashAttention-2: V(n) streams in during Q K(n)^T, K(n+1) with the mask
// and bias tiles of n+1 during the softmax and P V(n). Rows that keep nothing give out = 0 and
// lse = -inf.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/device_math.cuh"
#include "sm80/fragments.cuh"
#include "sm80/fwd_launch.h"
#include "sm80/launch_status.h"
#include "sm80/online_softmax.cuh"
#include "sm80/score_tile.cuh"
#include "sm80/tile_gemm.cuh"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

using namespace cute;

// Keys per step of the score loop on partial tiles (mask work): a whole plan tile, or half of one for
// D in (64, 128], where a 64-key score tile next to the 128-float output accumulator and the mask
// bookkeeping spill registers (measured on an H200, D = 128 causal: mask 1.2x and mask + bias 1.6x
// slower at 64 keys; no mask 2% and bias alone 10% faster). Fewer, wider steps pay the per-step
// costs (barriers, softmax row reductions, output rescale) half as often, which is why fully kept
// tiles, walked by code without mask work, always take whole plan tiles.
constexpr int fwd_partial_key_step(int head_dim, int tile_q) {
  return tile_q == kPlanTileQ && head_dim > 64 && head_dim <= 128 ? kPlanTileKV / 2 : kPlanTileKV;
}

// Tile shapes, layouts and copy atoms for one (dtype, head-dim bucket, query tile, key step). Query
// tiles of 128 rows (the tile plan's), 4 warps up to D = 128 and 8 beyond, so the output accumulator
// stays at 128 floats per thread; or, for Q <= 16 (decode), 16 rows and one warp, so a single query
// row does not pay for 128 (split-KV then fills the GPU with many small CTAs).
template <typename Element_, int kHeadDim_, int kTileQ_, int kTileKV_>
struct FwdConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kTileQ = kTileQ_;
  static constexpr int kTileKV = kTileKV_;
  static_assert(kTileQ == kPlanTileQ || kTileQ == kDecodeTileQ, "the plan's 128 rows, or the decode tile");
  static_assert(kPlanTileQ % kTileQ == 0, "a query tile lies inside one plan tile");
  static_assert(kPlanTileKV % kTileKV == 0, "a key step lies inside one plan tile");
  // The decode tile is one warp's 16 rows.
  static constexpr int kWarps = kTileQ == kDecodeTileQ ? 1 : kHeadDim <= 128 ? 4 : 8;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kTileQ % (16 * kWarps) == 0, "warps split the query tile in 16-row slices");
  static_assert(kHeadDim % 32 == 0 && kTileKV % 32 == 0, "tiles are whole swizzle atoms");

  using Traits = RowTileTraits<Element, kHeadDim, kThreads>;
  using MmaOp = typename Traits::MmaOp;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWarps>, _1, _1>>, Tile<Int<16 * kWarps>, _16, _16>>;

  using SmemAtom = typename Traits::SmemAtom;
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTileQ>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTileKV>, Int<kHeadDim>>{}));
  // V read as (D, kTileKV) for the P V product: the same bytes through a transposed view.
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kTileKV>>{}, GenRowMajor{})));
  using SmemLayoutVtPlain = decltype(get_nonswizzle_portion(SmemLayoutVt{}));

  using SmemCopyQK = typename Traits::SmemCopyN;
  using SmemCopyVt = typename Traits::SmemCopyT;
  using GmemCopy = typename Traits::GmemCopy;
  using GmemStore = typename Traits::GmemStore;

  using BiasTile = ScoreTile<Element, kTileQ, kTileKV, kThreads>;
  using MaskTileBool = ScoreTile<uint8_t, kTileQ, kTileKV, kThreads>;
  using MaskTileElem = ScoreTile<Element, kTileQ, kTileKV, kThreads>;

  static constexpr int kSmemQ = int(sizeof(Element)) * int(cosize(SmemLayoutQ{}));
  static constexpr int kSmemKV = int(sizeof(Element)) * int(cosize(SmemLayoutKV{}));
  static constexpr int kSmemMask = MaskTileElem::kSmemBytes > MaskTileBool::kSmemBytes ? MaskTileElem::kSmemBytes
                                                                                       : MaskTileBool::kSmemBytes;
};

// The configuration partial tiles step with, for a kernel whose full tiles step with Cfg.
template <class Cfg>
using FwdPartialConfig = FwdConfig<typename Cfg::Element, Cfg::kHeadDim, Cfg::kTileQ,
                                   fwd_partial_key_step(Cfg::kHeadDim, Cfg::kTileQ)>;

// Shared memory of a kernel whose full tiles step with Cfg: Q, K, V and the bias tile at that width,
// the mask tile at the partial step's.
template <class Cfg>
constexpr int fwd_smem_bytes(bool has_mask, bool has_bias) {
  return Cfg::kSmemQ + 2 * Cfg::kSmemKV + (has_bias ? Cfg::BiasTile::kSmemBytes : 0) +
         (has_mask ? FwdPartialConfig<Cfg>::kSmemMask : 0);
}

// Scores the common case in fewer instructions: no softcap, and a positive scale when no bias is added
// (the scale is then folded into the softmax's exponent). A runtime test of the softcap inside the
// loop gets if-converted into predicated instructions that take issue slots on every step whether
// they run or not (about 100 per 32-key step for D = 128), so the rare general case is its own kernel.
__host__ __device__ constexpr bool fwd_general_scores(bool has_bias, float scale, float softcap) {
  return softcap > 0.f || (!has_bias && !(scale > 0.f));
}

// Whether a mask variant walks its full tiles in a phase of their own (whole plan tiles, no mask
// code) before the partial ones. Only when the partial step is narrower: with one step width two
// phases gain nothing, and cicc left some of them uninlined (D=256 mask + bias: the output
// accumulator went through a 1376-byte stack). Not with a bias on sm_80-89: ptxas for sm_80 spills
// 17 KB there at D=128 (sm_90a ~130 bytes, sm_100a and sm_120 none), so those keep v3's single
// loop at the partial step. -DDMATTN_FWD_SM80_PHASES makes the sm_80 choice on any arch, so that a
// newer GPU can test it.
__host__ __device__ constexpr bool fwd_split_phases(bool narrower_partial_step, bool has_bias) {
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900) || defined(DMATTN_FWD_SM80_PHASES)
  return narrower_partial_step && !has_bias;
#else
  return narrower_partial_step;
#endif
}

// Which steps of a phase apply the keep-mask element by element.
enum class MaskWork { kNone, kEveryStep, kPartialSteps };

template <class T>
struct TypeTag {
  using type = T;
};

// Cfg: the full-tile phase's configuration (whole plan tiles per step). A mask variant then walks
// the partial tiles with FwdPartialConfig<Cfg> and per-element mask work.
template <class Cfg, bool kHasMask, bool kHasBias, bool kGeneralScores>
__global__ void __launch_bounds__(Cfg::kThreads) fwd_kernel(const __grid_constant__ FwdParams params) {
  using Element = typename Cfg::Element;
  constexpr int kTileQ = Cfg::kTileQ, kHeadDim = Cfg::kHeadDim;
  static_assert(Cfg::kTileKV == kPlanTileKV, "full tiles are walked a whole plan tile per step");
  using PartialCfg = FwdPartialConfig<Cfg>;
  const FwdProblem& p = params.p;
  const Extents& s = p.shape;
  const Scoring& sc = p.scoring;

  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x;
  // grid.x = query tiles x key splits. Under causal the last query tiles see the most keys: launch
  // them first so the tail is short.
  const int n_splits = params.split.splits;
  const int split = blockIdx.x % n_splits;
  const int q_tile = gridDim.x / n_splits - 1 - blockIdx.x / n_splits, h = blockIdx.y, b = blockIdx.z;
  const int row0 = q_tile * kTileQ;
  const int h_kv = h / (s.heads / s.heads_kv);
  const int head_dim = s.head_dim;
  const int diag = s.seqlen_k - s.seqlen_q;  // causal: row i sees key j iff j <= i + diag

  // Plan tiles this query tile may touch: up to its last row's causal limit and the sequence end.
  int kv_end = s.seqlen_k;
  if (sc.causal) kv_end = causal_key_end(row0, kTileQ, s.seqlen_q, s.seqlen_k);
  const int kv_tiles = kv_end > 0 ? (kv_end + kPlanTileKV - 1) / kPlanTileKV : 0;

  // The schedule, two ascending lists of key tiles (tile_plan.h): the fully kept ones, walked with
  // no per-element mask work, and the partial ones. Without a mask every tile below the limit is
  // full; with one, each list is cut at the causal limit.
  int n_full = kv_tiles, n_partial = 0;
  const int32_t* full_list = nullptr;
  const int32_t* partial_list = nullptr;  // stored descending from its end: tile j at partial_list[-j]
  if constexpr (kHasMask) {
    const int32_t* plan_row = params.plan.row(sc.mask, b, h, row0 / kPlanTileQ);
    full_list = plan_row + 2;
    partial_list = plan_row + 2 + params.plan.k_tiles - 1;
    n_full = count_below(plan_row[0], [&](int j) { return full_list[j]; }, kv_tiles);
    n_partial = count_below(plan_row[1], [&](int j) { return partial_list[-j]; }, kv_tiles);
  }
  // This CTA's share of the tiles when the key range is split: full tiles first, then partial ones.
  int tile_begin = 0, tile_end = n_full + n_partial;
  if (n_splits > 1) {
    const int per_split = (tile_end + n_splits - 1) / n_splits;
    tile_begin = min(tile_end, split * per_split);
    tile_end = min(tile_end, tile_begin + per_split);
  }

  auto row_tensor = [&](const RowView& v, int head, int rows) {
    Element* base = static_cast<Element*>(v.data) + b * v.batch_stride + head * v.head_stride;
    return make_tensor(make_gmem_ptr(base), make_shape(rows, Int<kHeadDim>{}), make_stride(v.row_stride, _1{}));
  };
  Tensor mQ = row_tensor(p.q, h, s.seqlen_q);
  Tensor mK = row_tensor(p.k, h_kv, s.seqlen_k);
  Tensor mV = row_tensor(p.v, h_kv, s.seqlen_k);
  Tensor gQ = local_tile(mQ, Shape<Int<kTileQ>, Int<kHeadDim>>{}, make_coord(q_tile, 0));  // (TILE_Q,D)

  // Shared memory: Q, K and V at the full-tile width (a partial step uses the first rows), the bias
  // tile at that width and the mask tile at the partial step's.
  Element* smem_q = reinterpret_cast<Element*>(smem);
  Element* smem_k = smem_q + cosize(typename Cfg::SmemLayoutQ{});
  Element* smem_v = smem_k + cosize(typename Cfg::SmemLayoutKV{});
  char* smem_scores = reinterpret_cast<char*>(smem_v + cosize(typename Cfg::SmemLayoutKV{}));
  Element* smem_bias = reinterpret_cast<Element*>(smem_scores);
  char* smem_mask = smem_scores + (kHasBias ? Cfg::BiasTile::kSmemBytes : 0);
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});  // (TILE_Q,D)

  typename Cfg::GmemCopy gmem_copy;
  auto gmem_thr = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = gmem_thr.partition_S(gQ);
  Tensor tQsQ = gmem_thr.partition_D(sQ);
  Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kTileQ>, Int<kHeadDim>>{}));

  typename Cfg::TiledMma mma;
  auto thr_mma = mma.get_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);  // (MMA,MMA_M,MMA_K)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kTileQ>, Int<kHeadDim>>{});
  clear(acc_o);
  auto smem_copy_q = make_tiled_copy_A(typename Cfg::SmemCopyQK{}, mma);
  auto smem_thr_q = smem_copy_q.get_thread_slice(tid);
  Tensor tSsQ = smem_thr_q.partition_S(sQ);
  Tensor tSrQ_view = smem_thr_q.retile_D(tSrQ);

  // Rows per thread do not depend on the key step, so the softmax state carries across phases.
  Tensor tScS_rows = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileQ>, Int<kPlanTileKV>>{}));
  constexpr int kRows = size<0>(decltype(rows_cols(tScS_rows.layout())){});
  OnlineSoftmax<kRows, kHasBias> softmax;

  const bool mask_bool = sc.mask_kind == MaskKind::kBool;
  // The fast form (kGeneralScores false) has no softcap, and without a bias a scale > 0 to fold.
  const float softcap = kGeneralScores ? sc.softcap : 0.f;
  const float qk_scale = softcap > 0.f ? sc.scale / softcap : sc.scale;
  constexpr bool fold_scale = !kHasBias && !kGeneralScores;
  const float softmax_mult = fold_scale ? sc.scale : 1.f;  // scores reach the softmax as raw * this

  load_tile(gmem_copy, tQgQ, tQsQ, tQcQ, s.seqlen_q - row0, head_dim);

  // One phase: entries [begin, end) of a tile list, kSteps steps of PCfg::kTileKV keys per plan
  // tile. An entry is key_tile * 2 + (fully kept); kWork says which steps apply the staged mask.
  auto run_phase = [&](auto cfg_tag, auto work, auto list_at, int begin, int end, bool list_ends) {
    using PCfg = typename decltype(cfg_tag)::type;
    constexpr MaskWork kWork = decltype(work)::value;
    constexpr int kTileKV = PCfg::kTileKV;
    constexpr int kSteps = kPlanTileKV / kTileKV;
    // Step st of this phase, encoded as entries are: key tile (of kTileKV keys) * 2 + full flag.
    auto step = [&](int st) {
      const int e = list_at(st / kSteps);
      return (((e >> 1) * kSteps + st % kSteps) << 1) | (e & 1);
    };
    const int step_begin = begin * kSteps;
    int step_end = end * kSteps;
    // A step starting past the causal/sequence end (only ever an ascending list's last tile's
    // second half).
    if (kSteps > 1 && list_ends && step_end > step_begin && (step(step_end - 1) >> 1) * kTileKV >= kv_end) --step_end;
    if (step_begin >= step_end) return;

    Tensor gK = local_tile(mK, Shape<Int<kTileKV>, Int<kHeadDim>>{}, make_coord(_, 0));  // (TILE_KV,D,n)
    Tensor gV = local_tile(mV, Shape<Int<kTileKV>, Int<kHeadDim>>{}, make_coord(_, 0));  // (TILE_KV,D,n)
    Tensor sK = make_tensor(make_smem_ptr(smem_k), typename PCfg::SmemLayoutKV{});      // (TILE_KV,D)
    Tensor sV = make_tensor(make_smem_ptr(smem_v), typename PCfg::SmemLayoutKV{});      // (TILE_KV,D)
    Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename PCfg::SmemLayoutVt{});     // (D,TILE_KV)
    Tensor sVtPlain = make_tensor(make_smem_ptr(smem_v), typename PCfg::SmemLayoutVtPlain{});
    Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY,CPY_M,CPY_K,n)
    Tensor tKsK = gmem_thr.partition_D(sK);
    Tensor tVgV = gmem_thr.partition_S(gV);
    Tensor tVsV = gmem_thr.partition_D(sV);
    Tensor tKcK = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kTileKV>, Int<kHeadDim>>{}));

    Tensor tSrK = thr_mma.partition_fragment_B(sK);         // (MMA,MMA_N,MMA_K)
    Tensor tOrVt = thr_mma.partition_fragment_B(sVtPlain);  // (MMA,MMA_D,MMA_KV)
    auto smem_copy_k = make_tiled_copy_B(typename PCfg::SmemCopyQK{}, mma);
    auto smem_thr_k = smem_copy_k.get_thread_slice(tid);
    Tensor tSsK = smem_thr_k.partition_S(sK);
    Tensor tSrK_view = smem_thr_k.retile_D(tSrK);
    auto smem_copy_v = make_tiled_copy_B(typename PCfg::SmemCopyVt{}, mma);
    auto smem_thr_v = smem_copy_v.get_thread_slice(tid);
    Tensor tOsVt = smem_thr_v.partition_S(sVt);
    Tensor tOrVt_view = smem_thr_v.retile_D(tOrVt);

    // (row, col) of every score this thread holds, in tile coordinates.
    Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileQ>, Int<kTileKV>>{}));
    Tensor coord_s = make_tensor(tScS.data(), rows_cols(tScS.layout()));
    constexpr int kCols = size<1>(decltype(coord_s.layout()){});
    static_assert(size<0>(decltype(coord_s.layout()){}) == kRows, "rows per thread do not change with the step");

    // Mask and bias tiles (score_tile.cuh); a key-broadcast operand is staged once per phase. The
    // bias tile, loaded every step, is built once; the mask tile is built where it loads and holds
    // no registers through the loop.
    using BiasTile = typename PCfg::BiasTile;
    const int bias_pitch = BiasTile::read_pitch(sc.bias);
    const int mask_pitch = mask_bool ? PCfg::MaskTileBool::read_pitch(sc.mask) : PCfg::MaskTileElem::read_pitch(sc.mask);
    const BiasTile bias_tile(sc.bias, b, h, row0, s.seqlen_q);
    auto load_bias = [&](int col0) { bias_tile.load(smem_bias, col0, s.seqlen_k - col0, tid); };
    auto load_mask = [&](int col0) {
      if (mask_bool) {
        typename PCfg::MaskTileBool(sc.mask, b, h, row0, s.seqlen_q)
            .load(reinterpret_cast<uint8_t*>(smem_mask), col0, s.seqlen_k - col0, tid);
      } else {
        typename PCfg::MaskTileElem(sc.mask, b, h, row0, s.seqlen_q)
            .load(reinterpret_cast<Element*>(smem_mask), col0, s.seqlen_k - col0, tid);
      }
    };
    // K, and the mask and bias tiles that change with the key tile, for step e.
    auto load_key_side = [&](int e) {
      const int tile = e >> 1, col0 = tile * kTileKV;
      load_tile(gmem_copy, tKgK(_, _, _, tile), tKsK, tKcK, s.seqlen_k - col0, head_dim);
      if constexpr (kHasBias) {
        if (!BiasTile::invariant(sc.bias)) load_bias(col0);
      }
      if constexpr (kWork != MaskWork::kNone) {
        if ((kWork == MaskWork::kEveryStep || !(e & 1)) && !PCfg::MaskTileBool::invariant(sc.mask)) load_mask(col0);
      }
      cp_async_fence();
    };

    if constexpr (kHasBias) {
      if (BiasTile::invariant(sc.bias)) load_bias(0);
    }
    if constexpr (kWork != MaskWork::kNone) {
      if (PCfg::MaskTileBool::invariant(sc.mask)) load_mask(0);
    }
    // The step after the current one, read from the plan a step ahead of its use.
    int e_next = step(step_begin);
    load_key_side(e_next);

    for (int i = step_begin; i < step_end; ++i) {
      const int e = e_next;
      e_next = i + 1 < step_end ? step(i + 1) : 0;
      const int tile = e >> 1, col0 = tile * kTileKV;
      const bool masked = kWork == MaskWork::kEveryStep || (kWork == MaskWork::kPartialSteps && !(e & 1));
      // Element-wise bounds, causal and mask work only where this tile needs it.
      const bool check = masked || col0 + kTileKV > s.seqlen_k || (sc.causal && col0 + kTileKV - 1 > row0 + diag);

      cp_async_wait<0>();  // K, mask and bias of this tile (and Q) have landed
      __syncthreads();
      load_tile(gmem_copy, tVgV(_, _, _, tile), tVsV, tKcK, s.seqlen_k - col0, head_dim);
      cp_async_fence();

      Tensor acc_s = partition_fragment_C(mma, Shape<Int<kTileQ>, Int<kTileKV>>{});
      clear(acc_s);
      gemm_smem(mma, acc_s, tSrQ, tSrK, tSsQ, tSsK, tSrQ_view, tSrK_view, smem_copy_q, smem_copy_k);

      // Raw products -> scores, reading the staged mask and bias before the next step's loads
      // replace them. Without bias or softcap (and scale > 0) the scale is folded into the softmax's
      // exponent and only steps that need masking touch the scores here.
      float mult = qk_scale;
      if (kGeneralScores && softcap > 0.f) {
        CUTE_UNROLL
        for (int k = 0; k < size(acc_s); ++k) acc_s(k) = softcap * fast_tanh(acc_s(k) * qk_scale);
        mult = 1.f;
      }
      Tensor scores = make_tensor(acc_s.data(), rows_cols(acc_s.layout()));  // (rows, cols)
      // checked: bounds, causal and (on partial tiles) mask; scaled: multiply by mult; bias_per_key:
      // the bias is one row (broadcast over queries), read once per column instead of per element.
      auto to_scores = [&](auto checked, auto scaled, auto bias_per_key) {
        float bias_col[kCols];
        if constexpr (kHasBias && decltype(bias_per_key)::value) {
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) bias_col[c] = static_cast<float>(smem_bias[get<1>(coord_s(0, c))]);
        }
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int tr = get<0>(coord_s(r, 0));  // row in tile
          const int row = row0 + tr;
          CUTE_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const int tc = get<1>(coord_s(r, c));
            float x = scores(r, c);
            if constexpr (decltype(scaled)::value) x *= mult;
            if constexpr (kHasBias) {
              if constexpr (decltype(bias_per_key)::value) x += bias_col[c];
              else x += static_cast<float>(smem_bias[tr * BiasTile::kPitch + tc]);
            }
            if constexpr (decltype(checked)::value) {
              const int col = col0 + tc;
              bool keep = col < s.seqlen_k && !(sc.causal && col > row + diag);
              if (kWork != MaskWork::kNone && masked) {
                const int at = tr * mask_pitch + tc;
                keep = keep && (mask_bool ? reinterpret_cast<const uint8_t*>(smem_mask)[at] != 0
                                          : static_cast<float>(reinterpret_cast<const Element*>(smem_mask)[at]) != 0.f);
              }
              x = keep ? x : -INFINITY;
            }
            scores(r, c) = x;
          }
        }
      };
      using Yes = std::true_type;
      using No = std::false_type;
      if constexpr (kHasBias) {
        if (bias_pitch == 0) {
          if (check) to_scores(Yes{}, Yes{}, Yes{});
          else to_scores(No{}, Yes{}, Yes{});
        } else {
          if (check) to_scores(Yes{}, Yes{}, No{});
          else to_scores(No{}, Yes{}, No{});
        }
      } else if constexpr (fold_scale) {
        if (check) to_scores(Yes{}, No{}, No{});
      } else {
        if (check) to_scores(Yes{}, Yes{}, No{});
        else to_scores(No{}, Yes{}, No{});
      }

      cp_async_wait<0>();  // V has landed; every thread is done with K, mask and bias
      __syncthreads();
      if (i + 1 < step_end) load_key_side(e_next);

      softmax.update(scores, acc_o, softmax_mult);
      // P in the input dtype, laid out as the A operand of P V.
      Tensor probs = convert_fragment<Element>(acc_s);
      Tensor tOrP = make_tensor(probs.data(), acc_as_a_operand(probs.layout()));
      gemm_regs_smem(mma, acc_o, tOrP, tOrVt, tOsVt, tOrVt_view, smem_copy_v);
    }
  };

  using NoMask = std::integral_constant<MaskWork, MaskWork::kNone>;
  if constexpr (!kHasMask) {
    run_phase(TypeTag<Cfg>{}, NoMask{}, [](int j) { return j * 2 + 1; }, tile_begin, tile_end, true);
  } else {
    auto full_at = [&](int j) { return full_list[j] * 2 + 1; };
    auto partial_at = [&](int j) { return partial_list[-j] * 2; };
    if constexpr (fwd_split_phases(PartialCfg::kTileKV != Cfg::kTileKV, kHasBias)) {
      // Full tiles take whole plan tiles per step without mask work, partial ones narrower steps.
      using EveryStep = std::integral_constant<MaskWork, MaskWork::kEveryStep>;
      run_phase(TypeTag<Cfg>{}, NoMask{}, full_at, min(tile_begin, n_full), min(tile_end, n_full), false);
      run_phase(TypeTag<PartialCfg>{}, EveryStep{}, partial_at, max(tile_begin, n_full) - n_full,
                max(tile_end, n_full) - n_full, tile_end == n_full + n_partial);
    } else {
      // One phase over both lists at the partial step, masking the partial tiles' steps. The
      // lists together are not ascending, so a step past the causal/sequence end is not dropped:
      // it loads zeros and its scores are all masked (one half tile of wasted work at most).
      using PartialSteps = std::integral_constant<MaskWork, MaskWork::kPartialSteps>;
      auto both_at = [&](int j) { return j < n_full ? full_at(j) : partial_at(j - n_full); };
      run_phase(TypeTag<PartialCfg>{}, PartialSteps{}, both_at, tile_begin, tile_end, false);
    }
  }
  if (tile_begin >= tile_end) cp_async_fence();  // Q's loads were issued in no phase's group

  // Epilogue: normalize, stage the tile in shared memory (over Q) and store it with 16-byte vectors.
  cp_async_wait<0>();
  __syncthreads();  // nothing reads sQ or sV any more, and no load into them is in flight
  float row_inv[kRows], row_lse[kRows];
  softmax.finish(row_inv, row_lse, softmax_mult);
  Tensor out_rows = make_tensor(acc_o.data(), rows_cols(acc_o.layout()));
  if (n_splits > 1) {
    // A split's partial result: fp32, normalized by its own sum, with its own lse (split_kv.h).
    const int64_t rows = int64_t(s.batch) * s.heads * s.seqlen_q;
    const int64_t first = (int64_t(split) * rows + (int64_t(b) * s.heads + h) * s.seqlen_q);
    Tensor out_c = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileQ>, Int<kHeadDim>>{}));
    Tensor out_c_rows = make_tensor(out_c.data(), rows_cols(out_c.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + get<0>(out_c_rows(r, 0));
      if (row >= s.seqlen_q) continue;
      float* dst = params.split.out_partial + (first + row) * kHeadDim;
      CUTE_UNROLL
      for (int c = 0; c < size<1>(out_rows); ++c) dst[get<1>(out_c_rows(r, c))] = out_rows(r, c) * row_inv[r];
      if (get<1>(out_c_rows(r, 0)) == 0) params.split.lse_partial[first + row] = row_lse[r];
    }
    return;
  }
  CUTE_UNROLL
  for (int r = 0; r < kRows; ++r) {
    CUTE_UNROLL
    for (int c = 0; c < size<1>(out_rows); ++c) out_rows(r, c) *= row_inv[r];
  }
  Tensor out_cast = convert_fragment<Element>(acc_o);
  Tensor sO = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});
  auto smem_copy_o = make_tiled_copy_C(Copy_Atom<DefaultCopy, Element>{}, mma);
  auto smem_thr_o = smem_copy_o.get_thread_slice(tid);
  copy(smem_copy_o, smem_thr_o.retile_S(out_cast), smem_thr_o.partition_D(sO));

  if (p.lse != nullptr) {
    Tensor coord_rows = make_tensor(tScS_rows.data(), rows_cols(tScS_rows.layout()));
    CUTE_UNROLL
    for (int r = 0; r < kRows; ++r) {
      const int row = row0 + get<0>(coord_rows(r, 0));
      if (get<1>(coord_rows(r, 0)) == 0 && row < s.seqlen_q) p.lse[(int64_t(b) * s.heads + h) * s.seqlen_q + row] = row_lse[r];
    }
  }
  __syncthreads();

  Tensor mO = row_tensor(p.out, h, s.seqlen_q);
  Tensor gO = local_tile(mO, Shape<Int<kTileQ>, Int<kHeadDim>>{}, make_coord(q_tile, 0));
  typename Cfg::GmemStore gmem_store;
  auto store_thr = gmem_store.get_thread_slice(tid);
  Tensor tOsO = store_thr.partition_S(sO);
  Tensor tOgO = store_thr.partition_D(gO);
  Tensor tOcO = store_thr.partition_D(make_identity_tensor(Shape<Int<kTileQ>, Int<kHeadDim>>{}));
  Tensor tOrO = make_tensor<Element>(shape(tOgO));
  copy(gmem_store, tOsO, tOrO);
  CUTE_UNROLL
  for (int m = 0; m < size<1>(tOrO); ++m) {
    CUTE_UNROLL
    for (int k = 0; k < size<2>(tOrO); ++k) {
      if (row0 + get<0>(tOcO(0, m, k)) < s.seqlen_q && get<1>(tOcO(0, m, k)) < head_dim)
        copy(gmem_store, tOrO(_, m, k), tOgO(_, m, k));
    }
  }
}

template <typename Element, int kHeadDim, int kTileQ, bool kHasMask, bool kHasBias>
dmattn_status launch_fwd_variant(const FwdParams& params, char* msg, size_t msg_len) {
  using Cfg = FwdConfig<Element, kHeadDim, kTileQ, kPlanTileKV>;
  const FwdProblem& p = params.p;
  const bool general = fwd_general_scores(kHasBias, p.scoring.scale, p.scoring.softcap);
  auto kernel = general ? fwd_kernel<Cfg, kHasMask, kHasBias, true> : fwd_kernel<Cfg, kHasMask, kHasBias, false>;
  constexpr int smem = fwd_smem_bytes<Cfg>(kHasMask, kHasBias);
  static std::atomic<uint64_t> smem_allowed[2];  // per kernel: devices already configured
  cudaError_t err = allow_smem(kernel, smem, p.launch.device, smem_allowed[general]);
  if (err != cudaSuccess) {
    snprintf(msg, msg_len, "forward kernel (head_dim bucket %d) needs %d bytes of shared memory: %s", kHeadDim, smem,
             cudaGetErrorString(err));
    return DMATTN_STATUS_CUDA_ERROR;
  }
  dim3 grid((p.shape.seqlen_q + Cfg::kTileQ - 1) / Cfg::kTileQ * params.split.splits, p.shape.heads, p.shape.batch);
  kernel<<<grid, Cfg::kThreads, smem, static_cast<cudaStream_t>(p.launch.stream)>>>(params);
  return launch_status("forward kernel", msg, msg_len);
}

}  // namespace dmattn::sm80
