// bwd_kernel.cuh: the SM80-class backward attention kernel (mma.sync m16n8k16, ldmatrix, cp.async).
// One CTA per (key tile of bwd_tile_kv keys, kv head, batch) holds K and V of its tile in shared
// memory and dK, dV in registers, and walks the query heads of its kv group, and for each the
// 64-row query steps whose plan tiles keep something of its keys (fully kept ones with no mask
// work). Per step, with keys as the M dimension of every product that stays on chip:
//   S^T = K Q^T, dP^T = V dO^T -> P^T = exp(S^T - lse) (masks, bias, softcap), dS^T = P^T (dP^T - delta)
//   -> P^T, dS^T staged in shared memory -> dV += P^T dO, dK += dS^T Q -> dQ_step = dS K, added to an
//   fp32 accumulator (in key-tile order per query step when deterministic).
// With a mask or a bias, dP^T is computed only once P^T is staged (and dV added), so the two score
// tiles are never live together (kScoresApart below).
// Q, dO and the row statistics are double-buffered up to D = 128: the next step's stream in during
// the whole of this one; past it Q and dO have one buffer, refilled once dK's product has read them
// (BwdConfig::kRowBuffers). Its mask and bias tiles (one buffer) load once this step's are read.
// dbias is written, accumulated or summed by the bias's shape (DbiasMode).
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <type_traits>

#include "dmattn/dmattn.h"
#include "family/problem.h"
#include "sm80/bwd_launch.h"
#include "sm80/device_math.cuh"
#include "sm80/fragments.cuh"
#include "sm80/launch_status.h"
#include "sm80/score_tile.cuh"
#include "sm80/tile_gemm.cuh"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {

using namespace cute;

template <typename Element_, int kHeadDim_, int kTileKV_>
struct BwdConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kTileQ = kBwdTileQ;
  static constexpr int kTileKV = kTileKV_;
  // 8 warps: 4 along M x 2 along N for every product. With 64-key tiles dK and dV (64 x D each) take
  // D / 4 floats per thread apiece and S^T, dP^T 16 each: about 96 accumulator floats at D = 128
  // (4 warps would double that and spill); 128-key tiles double all four (192 at D = 128) for
  // warp tiles twice as tall. Because the warps split N, a warp's P^T rows do not hold all the
  // queries dV's product sums over, so P^T and dS^T go through shared memory.
  static constexpr int kWarps = 8;
  static constexpr int kThreads = kWarps * 32;
  // CTAs an SM should hold: two where the accumulators are small (64 x 64 keys x D <= 64: dK, dV,
  // S^T and dP^T take 64 floats per thread), so a latency-bound step has 16 warps to switch between
  // (measured on an H200: 29% faster for the masked D=64 kernel, despite ~100 bytes of spill at the
  // 128-register cap). Only where two such CTAs fit in shared memory and this was measured (sm90;
  // sm100 has sm90's 227 KB): on 99 KB GPUs the cap would cost registers for no second CTA.
#if defined(DMATTN_FAMILY_SM) && (DMATTN_FAMILY_SM == 90 || DMATTN_FAMILY_SM == 100)
  static constexpr int kMinBlocks = kHeadDim <= 64 && kTileKV == 64 ? 2 : 1;
#else
  static constexpr int kMinBlocks = 1;
#endif
  static_assert(kHeadDim % 32 == 0 && kHeadDim <= 256, "head-dim buckets are multiples of 32 up to 256");
  static_assert(kHeadDim <= 128 || kHeadDim % 64 == 0, "past 128 the dQ product runs in 64-column chunks");
  // Past D = 128, K, V and two buffers each of Q and dO alone take 192 KB at D = 256 (over sm90's
  // 227 KB with P^T, dS^T and the mask and bias tiles; over an A100's 163 KB at D = 192): one buffer
  // of Q and dO, refilled after dK's product, the last to read them, so the next step's rows land
  // during the dQ product and its additions.
  static constexpr int kRowBuffers = kHeadDim <= 128 ? 2 : 1;
  // The dQ product's columns per pass: its (64 queries x D) accumulator is live beside dK and dV,
  // which at D = 256 already hold 128 floats per thread; 64 columns a pass keep it at 16.
  static constexpr int kDqChunk = kHeadDim <= 128 ? kHeadDim : 64;
  static_assert(kTileKV == 64 || kTileKV == 128, "whole 64-row warp-layout repeats");

  using Traits = RowTileTraits<Element, kHeadDim, kThreads>;
  using MmaOp = typename Traits::MmaOp;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<_4, _2, _1>>, Tile<_64, _32, _16>>;

  // (rows, D) tiles: Q and dO (kTileQ rows), K and V (kTileKV rows); read transposed as (D, rows)
  // for the products that sum over their rows.
  using SmemAtom = typename Traits::SmemAtom;
  template <int kRowsN, int kCols = kHeadDim>
  using RowsLayout = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kRowsN>, Int<kCols>>{}));
  template <int kRowsN, int kCols = kHeadDim>
  using RowsLayoutT =
      decltype(composition(RowsLayout<kRowsN, kCols>{}, make_layout(Shape<Int<kCols>, Int<kRowsN>>{}, GenRowMajor{})));
  using SmemLayoutRows = RowsLayout<kTileQ>;
  using SmemLayoutRowsT = RowsLayoutT<kTileQ>;
  using SmemLayoutRowsTPlain = decltype(get_nonswizzle_portion(SmemLayoutRowsT{}));
  using SmemLayoutKV = RowsLayout<kTileKV>;
  // Columns [c * kDqChunk, +kDqChunk) of K, read transposed for the dQ product. The tile is laid out
  // in whole swizzle atoms of kSmemK columns, column blocks outermost, so such a chunk starts
  // c * kTileKV * kDqChunk elements in and is laid out as a (kTileKV, kDqChunk) tile of its own (the
  // offset leaves the swizzle's bits alone).
  static_assert(kDqChunk == kHeadDim || kDqChunk % Traits::kSmemK == 0, "chunks of whole swizzle atoms");
  using SmemLayoutKVTChunk = RowsLayoutT<kTileKV, kDqChunk>;
  using SmemLayoutKVTChunkPlain = decltype(get_nonswizzle_portion(SmemLayoutKVTChunk{}));
  static constexpr int dq_chunk_offset(int chunk) { return chunk * kTileKV * kDqChunk; }
  // (keys, queries) tiles: P^T and dS^T; dS^T read transposed as (queries, keys) for dQ.
  using SmemAtomPdS = decltype(composition(Swizzle<3, 3, 3>{}, Layout<Shape<_8, Int<kTileQ>>, Stride<Int<kTileQ>, _1>>{}));
  using SmemLayoutPdS = decltype(tile_to_shape(SmemAtomPdS{}, Shape<Int<kTileKV>, Int<kTileQ>>{}));
  using SmemLayoutPdST =
      decltype(composition(SmemLayoutPdS{}, make_layout(Shape<Int<kTileQ>, Int<kTileKV>>{}, GenRowMajor{})));
  using SmemLayoutPdSTPlain = decltype(get_nonswizzle_portion(SmemLayoutPdST{}));

  using SmemCopyN = typename Traits::SmemCopyN;
  using SmemCopyT = typename Traits::SmemCopyT;
  using GmemCopy = typename Traits::GmemCopy;
  using GmemStore = typename Traits::GmemStore;

  // Mask and bias tiles, staged as (queries, keys) like the tensors they come from.
  using BiasTile = ScoreTile<Element, kTileQ, kTileKV, kThreads>;
  using MaskTileBool = ScoreTile<uint8_t, kTileQ, kTileKV, kThreads>;
  using MaskTileElem = ScoreTile<Element, kTileQ, kTileKV, kThreads>;

  static constexpr int kSmemRows = int(sizeof(Element)) * int(cosize(SmemLayoutRows{}));
  static constexpr int kSmemKV = int(sizeof(Element)) * int(cosize(SmemLayoutKV{}));
  static constexpr int kSmemPdS = int(sizeof(Element)) * int(cosize(SmemLayoutPdS{}));
  static constexpr int kSmemStats = 3 * kTileQ * 4;          // lse, delta, row fix of one step
  static constexpr int kSmemReduce = 2 * kTileKV * 4;        // per-key dbias sums across warps
  static constexpr int kSmemList = (kThreads + kWarps) * 4;  // one chunk of the step list, warp counts
  static constexpr int kSmemMask = MaskTileElem::kSmemBytes > MaskTileBool::kSmemBytes ? MaskTileElem::kSmemBytes
                                                                                       : MaskTileBool::kSmemBytes;
  static constexpr int smem_bytes(bool has_mask, bool has_bias) {
    // K, V; Q and dO kRowBuffers times, the row statistics twice (the next step's land during this one).
    return 2 * kSmemKV + 2 * kRowBuffers * kSmemRows + 2 * kSmemPdS + 2 * kSmemStats + kSmemReduce + kSmemList +
           (has_bias ? BiasTile::kSmemBytes : 0) + (has_mask ? kSmemMask : 0);
  }
};

// The softcap's tanh is the only per-call option tested inside the loop; without it the scores need
// no tanh and dS no (1 - t^2) factor, so the common case is its own kernel (as in the forward).
__host__ __device__ constexpr bool bwd_general_scores(float softcap) { return softcap > 0.f; }

// dst[0] += a, dst[1] += b in global fp32 (dst 8-byte aligned): one vector reduction on sm_90+.
__device__ __forceinline__ void add_pair(float* dst, float a, float b) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v2.f32 [%0], {%1, %2};" ::"l"(dst), "f"(a), "f"(b) : "memory");
#else
  atomicAdd(dst, a);
  atomicAdd(dst + 1, b);
#endif
}

// Thread 0 waits until *turn reaches `value` (an earlier CTA's adds are done); the CTA follows.
__device__ __forceinline__ void wait_turn(const int32_t* turn, int value) {
  if (threadIdx.x == 0) {
    while (atomicAdd(const_cast<int32_t*>(turn), 0) != value) __nanosleep(64);
    __threadfence();
  }
  __syncthreads();
}

// Every thread's adds are visible device-wide before the CTA passes the turn on.
__device__ __forceinline__ void pass_turn(int32_t* turn) {
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) atomicAdd(turn, 1);
}

template <class Cfg, bool kHasMask, bool kHasBias, bool kGeneralScores>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks) bwd_kernel(const __grid_constant__ BwdParams params) {
  using Element = typename Cfg::Element;
  constexpr int kTileQ = Cfg::kTileQ, kTileKV = Cfg::kTileKV, kHeadDim = Cfg::kHeadDim;
  constexpr float kLog2e = 1.4426950408889634f;
  const BwdProblem& p = params.p;
  const Extents& s = p.shape;
  const Scoring& sc = p.scoring;
  const DbiasMode dbias_mode = params.dbias_mode;

  extern __shared__ __align__(128) char smem[];
  __shared__ int item_taken;
  const int tid = threadIdx.x;
  const int group = s.heads / s.heads_kv;
  const int diag = s.seqlen_k - s.seqlen_q;  // causal: row i sees key j iff j <= i + diag
  const int head_dim = s.head_dim;
  const int q_steps_pad = params.q_pad / kTileQ;
  const int k_tiles = (s.seqlen_k + kTileKV - 1) / kTileKV;
  // The current item's column (key tile kt at key k0, batch b, kv head h_kv) and its query steps
  // [first_step, n_steps): set per item, read by the lambdas below.
  int kt = 0, b = 0, h_kv = 0, k0 = 0, first_step = 0, n_steps = 0;

  Element* smem_k = reinterpret_cast<Element*>(smem);
  Element* smem_v = smem_k + cosize(typename Cfg::SmemLayoutKV{});
  constexpr int kRowsElems = cosize(typename Cfg::SmemLayoutRows{});
  constexpr int kRowBuffers = Cfg::kRowBuffers;
  Element* smem_q = smem_v + cosize(typename Cfg::SmemLayoutKV{});  // kRowBuffers buffers
  Element* smem_do = smem_q + kRowBuffers * kRowsElems;  // kRowBuffers buffers
  Element* smem_p = smem_do + kRowBuffers * kRowsElems;
  Element* smem_ds = smem_p + cosize(typename Cfg::SmemLayoutPdS{});
  float* smem_stats = reinterpret_cast<float*>(smem_ds + cosize(typename Cfg::SmemLayoutPdS{}));
  float* smem_reduce = smem_stats + 2 * 3 * kTileQ;  // stats: two buffers
  int32_t* smem_list = reinterpret_cast<int32_t*>(smem_reduce + 2 * kTileKV);
  int32_t* smem_counts = smem_list + Cfg::kThreads;
  char* smem_scores = reinterpret_cast<char*>(smem_counts + Cfg::kWarps);
  Element* smem_bias = reinterpret_cast<Element*>(smem_scores);
  char* smem_mask = smem_scores + (kHasBias ? Cfg::BiasTile::kSmemBytes : 0);

  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Cfg::SmemLayoutKV{});
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutKV{});
  Tensor sRowsTPlain = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutRowsTPlain{});
  Tensor sKVTChunkPlain = make_tensor(make_smem_ptr(smem_k), typename Cfg::SmemLayoutKVTChunkPlain{});
  Tensor sP = make_tensor(make_smem_ptr(smem_p), typename Cfg::SmemLayoutPdS{});
  Tensor sdS = make_tensor(make_smem_ptr(smem_ds), typename Cfg::SmemLayoutPdS{});
  Tensor sdST = make_tensor(make_smem_ptr(smem_ds), typename Cfg::SmemLayoutPdST{});
  Tensor sdSTPlain = make_tensor(make_smem_ptr(smem_ds), typename Cfg::SmemLayoutPdSTPlain{});

  typename Cfg::TiledMma mma;
  auto thr_mma = mma.get_slice(tid);
  auto copy_a_n = make_tiled_copy_A(typename Cfg::SmemCopyN{}, mma);
  auto copy_b_n = make_tiled_copy_B(typename Cfg::SmemCopyN{}, mma);
  auto copy_a_t = make_tiled_copy_A(typename Cfg::SmemCopyT{}, mma);
  auto copy_b_t = make_tiled_copy_B(typename Cfg::SmemCopyT{}, mma);

  using KVShape = Shape<Int<kTileKV>, Int<kHeadDim>>;
  using ScoreShape = Shape<Int<kTileKV>, Int<kTileQ>>;  // (keys, queries)
  Tensor acc_dk = partition_fragment_C(mma, KVShape{});
  Tensor acc_dv = partition_fragment_C(mma, KVShape{});

  // (key, query) of every S^T value this thread holds, in tile coordinates.
  Tensor coord_s_acc = thr_mma.partition_C(make_identity_tensor(ScoreShape{}));
  Tensor coord_s = make_tensor(coord_s_acc.data(), rows_cols(coord_s_acc.layout()));
  constexpr int kRows = size<0>(decltype(coord_s.layout()){});
  constexpr int kCols = size<1>(decltype(coord_s.layout()){});
  // Which of the 2 warps along N this is: columns come in 8-wide slices, one per N warp in turn.
  const int warp_n = get<1>(coord_s(0, 0)) / 8 % 2;

  typename Cfg::GmemCopy gmem_copy;
  auto gmem_thr = gmem_copy.get_thread_slice(tid);
  auto row_tensor = [&](const RowView& v, int head, int rows) {
    Element* base = static_cast<Element*>(v.data) + b * v.batch_stride + head * v.head_stride;
    return make_tensor(make_gmem_ptr(base), make_shape(rows, Int<kHeadDim>{}), make_stride(v.row_stride, _1{}));
  };
  // Rows [tile * n, +n) of (b, head) of a (rows, D) operand into an (n, D) shared-memory tile
  // (cp.async); n is the tile's: kTileQ for Q and dO, kTileKV for K and V.
  auto load_rows = [&](const RowView& v, int head, int rows, int tile, auto& smem_tile) {
    using TileShape = Shape<Int<size<0>(decltype(smem_tile.layout()){})>, Int<kHeadDim>>;
    constexpr int kN = size<0>(TileShape{});
    Tensor g = local_tile(row_tensor(v, head, rows), TileShape{}, make_coord(tile, 0));
    Tensor t = gmem_thr.partition_D(smem_tile);
    load_tile(gmem_copy, gmem_thr.partition_S(g), t, gmem_thr.partition_S(make_identity_tensor(TileShape{})),
              rows - tile * kN, head_dim);
  };
  auto load_kv = [&]() {
    load_rows(p.k, h_kv, s.seqlen_k, kt, sK);
    load_rows(p.v, h_kv, s.seqlen_k, kt, sV);
    cp_async_fence();
  };

  const bool mask_bool = sc.mask_kind == MaskKind::kBool;
  const bool mask_per_query = kHasMask && sc.mask.shape[2] != 1;
  const bool bias_per_query = kHasBias && sc.bias.shape[2] != 1;
  const int mask_pitch = mask_per_query ? (mask_bool ? Cfg::MaskTileBool::kPitch : Cfg::MaskTileElem::kPitch) : 0;
  const int bias_pitch = bias_per_query ? Cfg::BiasTile::kPitch : 0;
  const float softcap = kGeneralScores ? sc.softcap : 0.f;
  const float qk_scale = kGeneralScores ? sc.scale / softcap : sc.scale;
  const float scale_log2 = sc.scale * kLog2e;
  // The order of a step's products: S^T and dP^T back to back, or (with mask or bias work on the
  // scores) apart, P^T staged in between, so the two score tiles are never live together. Apart
  // frees registers (a 128-key column's dK and dV already take 128 floats per thread at D = 128:
  // the per-key bias could take such columns only so) and measured 10% faster for a D=64 sparse
  // mask; together measured 4% faster for dense D=64 (H200, 2026-12-03).
  constexpr bool kScoresApart = kHasMask || kHasBias;

  // Mask and bias tiles of (head h, rows from row0) for this CTA's keys.
  auto load_mask = [&](int h, int row0) {
    if (mask_bool) {
      typename Cfg::MaskTileBool(sc.mask, b, h, row0, s.seqlen_q)
          .load(reinterpret_cast<uint8_t*>(smem_mask), k0, s.seqlen_k - k0, tid);
    } else {
      typename Cfg::MaskTileElem(sc.mask, b, h, row0, s.seqlen_q)
          .load(reinterpret_cast<Element*>(smem_mask), k0, s.seqlen_k - k0, tid);
    }
  };
  auto load_bias = [&](int h, int row0) {
    typename Cfg::BiasTile(sc.bias, b, h, row0, s.seqlen_q).load(smem_bias, k0, s.seqlen_k - k0, tid);
  };

  // What one query step loads into buffer buf: Q, dO (into buffer 0 if they have one) and the row
  // statistics. An entry is step * 2 + (its plan tile is fully kept).
  auto load_step_rows = [&](int h, int entry, int buf) {
    const int step = entry >> 1, q0 = step * kTileQ;
    const int rows_at = (kRowBuffers == 2 ? buf : 0) * kRowsElems;
    Tensor sQ = make_tensor(make_smem_ptr(smem_q + rows_at), typename Cfg::SmemLayoutRows{});
    Tensor sdO = make_tensor(make_smem_ptr(smem_do + rows_at), typename Cfg::SmemLayoutRows{});
    float* stats = smem_stats + buf * 3 * kTileQ;
    load_rows(p.q, h, s.seqlen_q, step, sQ);
    load_rows(p.dout, h, s.seqlen_q, step, sdO);
    if (tid < 3 * kTileQ / 4) {
      const int which = tid / (kTileQ / 4), chunk = tid % (kTileQ / 4);
      const float* src = which == 0 ? params.lse : which == 1 ? params.delta : params.row_fix;
      src += (int64_t(b) * s.heads + h) * params.q_pad + q0 + chunk * 4;
      SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(*reinterpret_cast<const cute::uint128_t*>(src),
                                                       *reinterpret_cast<cute::uint128_t*>(stats + which * kTileQ + chunk * 4));
    }
    cp_async_fence();
  };
  // And its per-query mask and bias tiles (one buffer: loaded once the previous step has read them).
  auto load_step_tiles = [&](int h, int entry) {
    const int q0 = (entry >> 1) * kTileQ;
    if constexpr (kHasMask) {
      if (mask_per_query && !(entry & 1)) load_mask(h, q0);
    }
    if constexpr (kHasBias) {
      if (bias_per_query) load_bias(h, q0);
    }
    cp_async_fence();
  };

  // The number of key tiles before this one that add to the dQ rows of `step` (its turn there).
  auto dq_rank = [&](int h, int step) -> int {
    if constexpr (!kHasMask) {
      return kt;
    } else {
      static_assert(kTileKV == kPlanTileKV, "masked columns are plan tiles");
      const TilePlan& plan = params.plan;
      const int32_t* row = plan.row(sc.mask, b, h, step * kTileQ / kPlanTileQ);
      const int32_t* full = row + 2;
      const int32_t* partial = row + 2 + plan.k_tiles - 1;
      return count_below(row[0], [&](int j) { return full[j]; }, kt) +
             count_below(row[1], [&](int j) { return partial[-j]; }, kt);
    }
  };

  float dbias_rows[kRows];  // kPerKey: this thread's sums of dS over queries, per key row

  // Two fp32 accumulators, converted to the element type, into two shared-memory tiles.
  auto stage_pair = [&](auto const& acc_a, auto const& acc_b, auto& s_a, auto& s_b) {
    auto copy_c = make_tiled_copy_C(Copy_Atom<DefaultCopy, Element>{}, mma);
    auto thr_c = copy_c.get_thread_slice(tid);
    Tensor a_cast = convert_fragment<Element>(acc_a);
    Tensor b_cast = convert_fragment<Element>(acc_b);
    copy(copy_c, thr_c.retile_S(a_cast), thr_c.partition_D(s_a));
    copy(copy_c, thr_c.retile_S(b_cast), thr_c.partition_D(s_b));
  };

  auto run_step = [&](int h, int entry, int next_entry, int buf) {
    const int step = entry >> 1, q0 = step * kTileQ;
    const int rows_at = (kRowBuffers == 2 ? buf : 0) * kRowsElems;
    Tensor sQ = make_tensor(make_smem_ptr(smem_q + rows_at), typename Cfg::SmemLayoutRows{});
    Tensor sdO = make_tensor(make_smem_ptr(smem_do + rows_at), typename Cfg::SmemLayoutRows{});
    Tensor sQt = make_tensor(make_smem_ptr(smem_q + rows_at), typename Cfg::SmemLayoutRowsT{});
    Tensor sdOt = make_tensor(make_smem_ptr(smem_do + rows_at), typename Cfg::SmemLayoutRowsT{});
    const float* stats = smem_stats + buf * 3 * kTileQ;
    const bool masked = kHasMask && !(entry & 1);
    const bool check = masked || k0 + kTileKV > s.seqlen_k || (sc.causal && k0 + kTileKV - 1 > q0 + diag);
    // deterministic kFullAccum across CTAs: this step's dbias tile is added in (b, h) order.
    int32_t* dbias_turn = nullptr;
    if (params.dbias_turn != nullptr) {
      const ScoreView& dv = p.dbias;
      const int heads_per = s.heads / dv.shape[1];
      const int bb = dv.shape[0] == 1 ? 0 : b, hb = h / heads_per;
      dbias_turn = params.dbias_turn + ((int64_t(bb) * dv.shape[1] + hb) * q_steps_pad + step) * k_tiles + kt;
      const int rank = (dv.shape[0] == 1 ? b : 0) * heads_per + h % heads_per;
      if (tid == 0)
        while (atomicAdd(dbias_turn, 0) != rank) __nanosleep(64);
    }
    cp_async_wait<0>();  // this step's loads (and K, V, per-head tiles) have landed
    __syncthreads();
    // The next step's rows stream into the other buffer, last read by the previous step.
    if (kRowBuffers == 2 && next_entry >= 0) load_step_rows(h, next_entry, buf ^ 1);

    Tensor acc_s = partition_fragment_C(mma, ScoreShape{});   // S^T (keys, queries)
    Tensor acc_dp = partition_fragment_C(mma, ScoreShape{});  // dP^T
    clear(acc_s);
    gemm_tiles(mma, acc_s, sK, sQ, sK, sQ, copy_a_n, copy_b_n);
    auto dp_product = [&]() {
      clear(acc_dp);
      gemm_tiles(mma, acc_dp, sV, sdO, sV, sdO, copy_a_n, copy_b_n);
    };
    // Without score work the two independent products run back to back and hide each other's
    // latency; with it (kScoresApart) dP^T waits until P^T is staged.
    if constexpr (!kScoresApart) dp_product();

    // P^T element by element. Columns are queries: their statistics come from the stage.
    Tensor st = make_tensor(acc_s.data(), rows_cols(acc_s.layout()));
    // The softcap's tanh of every score, kept for dS's chain factor (general kernel only).
    auto tanh_frag = make_fragment_like(acc_s);
    Tensor tanh_s = make_tensor(tanh_frag.data(), rows_cols(tanh_frag.layout()));
    // bias_per_key: a (.., 1, K) bias is one value per key, i.e. per row of S^T, read once a row.
    auto scores_to_probs = [&](auto bias_per_key) {
      bool fix_any = false;  // any column of the step with a row fix (bias only)
      if constexpr (kHasBias) {
        CUTE_UNROLL
        for (int c = 0; c < kCols; ++c) fix_any |= stats[2 * kTileQ + get<1>(coord_s(0, c))] != 1.f;
        fix_any = __any_sync(0xffffffff, fix_any);
      }
      float bias_rows[kRows];
      CUTE_UNROLL
      for (int r = 0; r < kRows; ++r)
        bias_rows[r] = decltype(bias_per_key)::value ? static_cast<float>(smem_bias[get<0>(coord_s(r, 0))]) : 0.f;
      // Column (query) outer: a column's statistics are live for its own rows only, not across the
      // whole tile (with 128-row steps, 16 columns per thread, holding them all spilled).
      CUTE_UNROLL
      for (int c = 0; c < kCols; ++c) {
        const int tq = get<1>(coord_s(0, c));
        const int row = q0 + tq;
        const float lse = stats[tq];
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int tk = get<0>(coord_s(r, c));
          const int key = k0 + tk;
          const float raw = st(r, c);
          float prob;
          if constexpr (kHasBias || kGeneralScores) {
            float x;
            if constexpr (kGeneralScores) {
              const float t = fast_tanh(raw * qk_scale);
              tanh_s(r, c) = t;
              x = softcap * t;
            } else {
              x = raw * sc.scale;
            }
            if constexpr (kHasBias) {
              x += decltype(bias_per_key)::value ? bias_rows[r] : static_cast<float>(smem_bias[tq * bias_pitch + tk]);
            }
            // Exact shift: x and lse may both sit near a bias of finfo.min.
            prob = fast_exp2((x - lse) * kLog2e);
          } else {
            prob = fast_exp2(fmaf(raw, scale_log2, -lse * kLog2e));
          }
          if (check) {
            bool keep = key < s.seqlen_k && !(sc.causal && key > row + diag);
            if (kHasMask && masked) {
              const int at = tq * mask_pitch + tk;
              keep = keep && (mask_bool ? reinterpret_cast<const uint8_t*>(smem_mask)[at] != 0
                                        : static_cast<float>(reinterpret_cast<const Element*>(smem_mask)[at]) != 0.f);
            }
            prob = keep ? prob : 0.f;
          }
          if (kHasBias && fix_any) prob *= stats[2 * kTileQ + tq];
          st(r, c) = prob;
        }
      }
    };
    if (kHasBias && bias_pitch == 0) scores_to_probs(std::true_type{});
    else scores_to_probs(std::false_type{});

    // P^T in the input dtype, staged for dV. Apart, dS below reads it back from these registers (16
    // of them, against 32 for the fp32 tile), so it uses the same rounded P as dV does.
    Tensor probs = convert_fragment<Element>(acc_s);
    Tensor probs_rc = make_tensor(probs.data(), rows_cols(probs.layout()));
    auto copy_c = make_tiled_copy_C(Copy_Atom<DefaultCopy, Element>{}, mma);
    auto thr_c = copy_c.get_thread_slice(tid);
    copy(copy_c, thr_c.retile_S(probs), thr_c.partition_D(sP));
    if constexpr (kScoresApart) {
      __syncthreads();  // P^T staged; this step's mask and bias tiles are no longer read
      if (next_entry >= 0) load_step_tiles(h, next_entry);
      gemm_tiles(mma, acc_dv, sP, sdOt, sP, sRowsTPlain, copy_a_n, copy_b_t);  // dV += P^T dO
      dp_product();
    }

    // dS^T = P^T (dP^T - delta), and dbias from it by the bias's shape (one loop per mode).
    Tensor dpt = make_tensor(acc_dp.data(), rows_cols(acc_dp.layout()));
    auto probs_to_ds = [&](auto mode) {
      constexpr DbiasMode kMode = decltype(mode)::value;
      const ScoreView& dbv = p.dbias;
      // Column outer, as in scores_to_probs (a row's dbias sum still adds its columns in order).
      CUTE_UNROLL
      for (int c = 0; c < kCols; ++c) {
        const int tq = get<1>(coord_s(0, c));
        const int row = q0 + tq;
        const float delta = stats[kTileQ + tq];
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) {
          const int tk = get<0>(coord_s(r, c));
          const int key = k0 + tk;
          const float prob = kScoresApart ? static_cast<float>(probs_rc(r, c)) : st(r, c);
          float ds = prob * (dpt(r, c) - delta);
          // The bias's gradient is dS before the softcap's chain factor.
          if constexpr (kMode == DbiasMode::kPerKey) {
            dbias_rows[r] += ds;
          } else if constexpr (kMode == DbiasMode::kFullDirect) {
            if (row < s.seqlen_q && key < s.seqlen_k)
              static_cast<Element*>(dbv.data)[view_offset(dbv, b, h, row, key)] = static_cast<Element>(ds);
          } else if constexpr (kMode == DbiasMode::kFullAccum) {
            // The accumulator is laid out as the (compact) dbias is.
            if (row < s.seqlen_q && key < s.seqlen_k && ds != 0.f)
              atomicAdd(params.dbias_accum + view_offset(dbv, b, h, row, key), ds);
          }
          if constexpr (kGeneralScores) ds *= 1.f - tanh_s(r, c) * tanh_s(r, c);  // d(c tanh(x / c)) / dx
          dpt(r, c) = ds;
        }
      }
    };
    using NoDbias = std::integral_constant<DbiasMode, DbiasMode::kNone>;
    if constexpr (kHasBias) {
      if (dbias_mode == DbiasMode::kPerKey) probs_to_ds(std::integral_constant<DbiasMode, DbiasMode::kPerKey>{});
      else if (dbias_mode == DbiasMode::kFullDirect)
        probs_to_ds(std::integral_constant<DbiasMode, DbiasMode::kFullDirect>{});
      else if (dbias_mode == DbiasMode::kFullAccum)
        probs_to_ds(std::integral_constant<DbiasMode, DbiasMode::kFullAccum>{});
      else probs_to_ds(NoDbias{});
    } else {
      probs_to_ds(NoDbias{});
    }
    Tensor ds_cast = convert_fragment<Element>(acc_dp);
    copy(copy_c, thr_c.retile_S(ds_cast), thr_c.partition_D(sdS));
    if (dbias_turn != nullptr) pass_turn(dbias_turn);
    else __syncthreads();  // dS^T (and P^T) staged

    if constexpr (!kScoresApart) gemm_tiles(mma, acc_dv, sP, sdOt, sP, sRowsTPlain, copy_a_n, copy_b_t);  // dV += P^T dO
    gemm_tiles(mma, acc_dk, sdS, sQt, sdS, sRowsTPlain, copy_a_n, copy_b_t);  // dK += dS^T Q
    // Back to back only without mask and bias: no per-query tiles to load, and the next step's
    // first barrier already keeps its loads and stage writes behind this step's reads.
    static_assert(kScoresApart || (!kHasMask && !kHasBias), "per-query tiles load after a barrier");

    if constexpr (kRowBuffers == 1) {
      __syncthreads();  // every warp is done with Q and dO: the next step's may land in their buffer
      if (next_entry >= 0) load_step_rows(h, next_entry, buf ^ 1);
    }

    // dQ = dS K, kDqChunk columns of D a pass, each pass's values added as soon as they are made.
    using DqShape = Shape<Int<kTileQ>, Int<Cfg::kDqChunk>>;  // (queries, a chunk of D)
    int32_t* dq_turn = nullptr;
    CUTE_UNROLL
    for (int chunk = 0; chunk < kHeadDim / Cfg::kDqChunk; ++chunk) {
      Tensor sKt = make_tensor(make_smem_ptr(smem_k + Cfg::dq_chunk_offset(chunk)), typename Cfg::SmemLayoutKVTChunk{});
      Tensor acc_dq = partition_fragment_C(mma, DqShape{});
      clear(acc_dq);
      gemm_tiles(mma, acc_dq, sdST, sKt, sdSTPlain, sKVTChunkPlain, copy_a_t, copy_b_t);
      if (chunk == 0 && params.dq_turn != nullptr) {
        dq_turn = params.dq_turn + (int64_t(b) * s.heads + h) * q_steps_pad + step;
        wait_turn(dq_turn, dq_rank(h, step));
      }
      Tensor coord_dq_acc = thr_mma.partition_C(make_identity_tensor(DqShape{}));
      float* dq_rows = params.dq_accum + ((int64_t(b) * s.heads + h) * params.q_pad + q0) * params.dq_stride +
                       chunk * Cfg::kDqChunk;
      // Accumulator values come in pairs of adjacent columns.
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dq); i += 2)
        add_pair(dq_rows + get<0>(coord_dq_acc(i)) * params.dq_stride + get<1>(coord_dq_acc(i)), acc_dq(i),
                 acc_dq(i + 1));
    }
    if (dq_turn != nullptr) pass_turn(dq_turn);
  };

  // A column's kept steps over the heads of its group, in (head, step) order, compacted in chunks
  // of kThreads steps; run those with index in [lo, hi). Returns with every load landed.
  auto walk_column = [&](int lo, int hi) {
    int seen = 0;
    for (int g = 0; g < group && seen < hi; ++g) {
      const int h = h_kv * group + g;
      if (!kHasMask || params.plan.q_tiles == 1) {  // the head's count without reading its column
        const int kept = bwd_head_steps(params, b, h, kt, BwdStepRange{first_step, n_steps}, kHasMask);
        if (seen + kept <= lo) {
          seen += kept;
          continue;
        }
      }
      // The previous head's per-head tiles are neither read nor still landing.
      cp_async_wait<0>();
      __syncthreads();
      if constexpr (kHasBias) {
        CUTE_UNROLL
        for (int r = 0; r < kRows; ++r) dbias_rows[r] = 0.f;
        if (!bias_per_query) load_bias(h, 0);
      }
      if constexpr (kHasMask) {
        if (!mask_per_query) load_mask(h, 0);
      }
      const uint8_t* map = nullptr;
      if constexpr (kHasMask) map = bwd_class_map(params, b, h);
      bool ran = false;
      for (int chunk0 = first_step; chunk0 < n_steps && seen < hi; chunk0 += Cfg::kThreads) {
        // This chunk's steps that keep something, compacted in order (without a mask: all of them).
        int n = min(Cfg::kThreads, n_steps - chunk0);
        if constexpr (kHasMask) {
          const int step = chunk0 + tid;
          int entry = -1;
          if (step < n_steps) {
            const int qt = params.plan.q_tiles == 1 ? 0 : step * kTileQ / kPlanTileQ;
            const int cls = bwd_tile_class(params, map, qt, kt);
            if (cls != 0) entry = step * 2 + (cls == 2);
          }
          const unsigned ballot = __ballot_sync(0xffffffff, entry >= 0);
          const int warp = tid / 32, lane = tid % 32;
          __syncthreads();  // the previous chunk's list is no longer read
          if (lane == 0) smem_counts[warp] = __popc(ballot);
          __syncthreads();
          int offset = 0;
          n = 0;
          for (int w = 0; w < Cfg::kWarps; ++w) {
            offset += w < warp ? smem_counts[w] : 0;
            n += smem_counts[w];
          }
          if (entry >= 0) smem_list[offset + __popc(ballot & ((1u << lane) - 1))] = entry;
          __syncthreads();
        }
        auto entry_at = [&](int i) { return kHasMask ? smem_list[i] : (chunk0 + i) * 2 + 1; };
        const int i0 = max(0, lo - seen), i1 = min(n, hi - seen);
        seen += n;
        if (i0 >= i1) continue;
        ran = true;
        // The previous chunk's last step may have run on buffer 0 and have warps still reading its Q
        // and dO (no barrier follows dK's product there): without a mask nothing else orders this
        // load after them.
        if constexpr (!kHasMask) __syncthreads();
        load_step_rows(h, entry_at(i0), 0);
        load_step_tiles(h, entry_at(i0));
        for (int i = i0; i < i1; ++i) run_step(h, entry_at(i), i + 1 < i1 ? entry_at(i + 1) : -1, (i - i0) & 1);
      }
      if constexpr (kHasBias) {
        if (dbias_mode == DbiasMode::kPerKey && ran) {
          // Row sums over the quad, then over the 2 warps along queries; added, since a split
          // column's items each bring their part (the accumulator starts at 0).
          CUTE_UNROLL
          for (int r = 0; r < kRows; ++r) {
            const float v = quad_sum(dbias_rows[r]);
            if ((tid % 4) == 0) smem_reduce[warp_n * kTileKV + get<0>(coord_s(r, 0))] = v;
          }
          __syncthreads();
          if (tid < kTileKV && k0 + tid < s.seqlen_k)
            atomicAdd(params.dbias_accum + (int64_t(b) * s.heads + h) * s.seqlen_k + k0 + tid,
                      smem_reduce[tid] + smem_reduce[kTileKV + tid]);
          __syncthreads();
        }
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  };

  typename Cfg::GmemStore gmem_store;
  auto store_thr = gmem_store.get_thread_slice(tid);
  Tensor cOut = store_thr.partition_D(make_identity_tensor(KVShape{}));
  auto store_rows = [&](const RowView& view, auto const& src) {
    Tensor g = local_tile(row_tensor(view, h_kv, s.seqlen_k), KVShape{}, make_coord(kt, 0));
    Tensor tS = store_thr.partition_S(src);
    Tensor tG = store_thr.partition_D(g);
    Tensor tR = make_tensor<Element>(shape(tG));
    copy(gmem_store, tS, tR);
    CUTE_UNROLL
    for (int m = 0; m < size<1>(tR); ++m) {
      CUTE_UNROLL
      for (int k = 0; k < size<2>(tR); ++k) {
        if (k0 + get<0>(cOut(0, m, k)) < s.seqlen_k && get<1>(cOut(0, m, k)) < head_dim)
          copy(gmem_store, tR(_, m, k), tG(_, m, k));
      }
    }
  };
  // dK (scaled) and dV of the item: a column of one item stores them through shared memory (over K
  // and V) with 16-byte stores; a split column's items add them into its fp32 slot.
  auto finish_item = [&](int slot) {
    CUTE_UNROLL
    for (int i = 0; i < size(acc_dk); ++i) acc_dk(i) *= sc.scale;
    if (slot >= 0) {
      Tensor coord_kv = thr_mma.partition_C(make_identity_tensor(KVShape{}));
      float* dk_sum = bwd_slot_sums(params, slot);
      float* dv_sum = dk_sum + kTileKV * params.dq_stride;
      CUTE_UNROLL
      for (int i = 0; i < size(acc_dk); i += 2) {
        const int at = get<0>(coord_kv(i)) * params.dq_stride + get<1>(coord_kv(i));
        add_pair(dk_sum + at, acc_dk(i), acc_dk(i + 1));
        add_pair(dv_sum + at, acc_dv(i), acc_dv(i + 1));
      }
      return;
    }
    stage_pair(acc_dk, acc_dv, sK, sV);
    __syncthreads();
    store_rows(p.dk, sK);
    store_rows(p.dv, sV);
  };

  // Persistent: items are taken in list order (longest columns first under causal), so a CTA
  // waiting for a turn only waits for items taken before its own, held by running CTAs.
  for (;;) {
    __syncthreads();  // the previous item's epilogue is done with shared memory and item_taken
    if (tid == 0) item_taken = atomicAdd(&params.schedule->next, 1);
    __syncthreads();
    const int index = item_taken;
    if (index >= params.schedule->items) break;
    const BwdItem item = params.items[index];
    const BwdColumn column = bwd_column(s, item.column);
    kt = column.kt;
    b = column.b;
    h_kv = column.h_kv;
    k0 = kt * kTileKV;
    const BwdStepRange range = bwd_step_range(s, sc.causal, k0);
    first_step = range.first;
    n_steps = range.count;
    load_kv();
    clear(acc_dk);
    clear(acc_dv);
    walk_column(item.begin, item.end);
    finish_item(item.slot);
  }
}

template <typename Element, int kHeadDim, bool kHasMask, bool kHasBias>
dmattn_status launch_bwd_variant(const BwdParams& params, char* msg, size_t msg_len) {
  using Cfg = BwdConfig<Element, kHeadDim, bwd_tile_kv(kHeadDim, kHasMask, kHasBias)>;
  const BwdProblem& p = params.p;
  const bool general = bwd_general_scores(p.scoring.softcap);
  auto kernel = general ? bwd_kernel<Cfg, kHasMask, kHasBias, true> : bwd_kernel<Cfg, kHasMask, kHasBias, false>;
  constexpr int smem = Cfg::smem_bytes(kHasMask, kHasBias);
  static std::atomic<uint64_t> smem_allowed[2];
  cudaError_t err = allow_smem(kernel, smem, p.launch.device, smem_allowed[general]);
  if (err != cudaSuccess) {
    cudaGetLastError();
    snprintf(msg, msg_len,
             "the backward kernel (head_dim bucket %d%s%s) needs %d bytes of shared memory, more than this GPU "
             "allows a block (%s); not implemented for this GPU yet",
             kHeadDim, kHasMask ? ", mask" : "", kHasBias ? ", bias" : "", smem, cudaGetErrorString(err));
    return DMATTN_STATUS_NOT_IMPLEMENTED;
  }
  if (params.tile_kv != Cfg::kTileKV) {  // the support kernels and this kernel must cut columns alike
    snprintf(msg, msg_len, "internal error: backward columns of %d keys prepared, the kernel takes %d", params.tile_kv,
             Cfg::kTileKV);
    return DMATTN_STATUS_INTERNAL_ERROR;
  }
  if (params.columns == 0) return DMATTN_STATUS_SUCCESS;  // no keys: dq (and dbias) come out 0
  int per_sm = 0;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Cfg::kThreads, smem);
  if (err != cudaSuccess || per_sm < 1) {
    cudaGetLastError();
    per_sm = 1;
  }
  const int grid = std::min(params.max_items, per_sm * params.sm_count);
  kernel<<<grid, Cfg::kThreads, smem, static_cast<cudaStream_t>(p.launch.stream)>>>(params);
  return launch_status("backward kernel", msg, msg_len);
}

}  // namespace dmattn::sm80
