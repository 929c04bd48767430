// fwd_kernel.cuh: the SM80-class forward attention kernel (mma.sync m16n8k16, ldmatrix, cp.async),
// compiled into every family library until an arch gets its own. One CTA computes a kTileQ x D
// output tile of one (batch, head): for each key tile it forms S = Q K^T, turns it into scores
// (scale, softcap, bias, keep-mask, causal, sequence bounds), updates the online softmax and
// accumulates P V. Rows that keep nothing give out = 0 and lse = -inf.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <cmath>
#include <cstdio>
#include <type_traits>

#include "dmattn/dmattn.h"
#include "family/problem.h"

namespace dmattn::sm80 {

using namespace cute;

// Tile shapes, layouts and copy atoms for one (dtype, head-dim bucket).
template <typename Element_, int kHeadDim_, int kTileQ_, int kTileKV_, int kWarps_>
struct FwdConfig {
  using Element = Element_;
  static constexpr int kHeadDim = kHeadDim_;
  static constexpr int kTileQ = kTileQ_;
  static constexpr int kTileKV = kTileKV_;
  static constexpr int kWarps = kWarps_;
  static constexpr int kThreads = kWarps * 32;
  static_assert(kTileQ == 16 * kWarps, "each warp owns 16 query rows");
  static_assert(kHeadDim % 32 == 0 && kTileKV % 32 == 0, "tiles are whole swizzle atoms");

  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, SM80_16x8x16_F32F16F16F32_TN,
                                   SM80_16x8x16_F32BF16BF16F32_TN>;
  using TiledMma = TiledMMA<MMA_Atom<MmaOp>, Layout<Shape<Int<kWarps>, _1, _1>>, Tile<Int<16 * kWarps>, _16, _16>>;

  // Shared memory: rows of kSmemK elements, XOR-swizzled so ldmatrix reads are conflict-free.
  static constexpr int kSmemK = kHeadDim % 64 == 0 ? 64 : 32;
  using SmemAtom = decltype(composition(Swizzle<kSmemK == 64 ? 3 : 2, 3, 3>{},
                                        Layout<Shape<_8, Int<kSmemK>>, Stride<Int<kSmemK>, _1>>{}));
  using SmemLayoutQ = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTileQ>, Int<kHeadDim>>{}));
  using SmemLayoutKV = decltype(tile_to_shape(SmemAtom{}, Shape<Int<kTileKV>, Int<kHeadDim>>{}));
  // V read as (D, kTileKV) for the P V product: the same bytes through a transposed view.
  using SmemLayoutVt = decltype(composition(SmemLayoutKV{}, make_layout(Shape<Int<kHeadDim>, Int<kTileKV>>{}, GenRowMajor{})));
  using SmemLayoutVtPlain = decltype(get_nonswizzle_portion(SmemLayoutVt{}));

  using SmemCopyQK = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyVt = Copy_Atom<SM75_U16x8_LDSM_T, Element>;

  // Global -> shared: 16-byte cp.async per thread, kSmemK / 8 threads per row.
  static constexpr int kRowThreads = kSmemK / 8;
  using GmemCopy = decltype(make_tiled_copy(
      Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
      Layout<Shape<Int<kThreads / kRowThreads>, Int<kRowThreads>>, Stride<Int<kRowThreads>, _1>>{},
      Layout<Shape<_1, _8>>{}));

  static constexpr int kSmemBytes =
      int(sizeof(Element)) * (int(cosize(SmemLayoutQ{})) + 2 * int(cosize(SmemLayoutKV{})));
};

// ((2,2),M,N) accumulator layout -> ((2,M),(2,N)): rows and columns of the thread's values.
template <class L>
__device__ __forceinline__ auto rows_cols(L l) {
  return make_layout(make_layout(get<1>(get<0>(l)), get<1>(l)), make_layout(get<0>(get<0>(l)), get<2>(l)));
}

// ((2,2),M,N) accumulator layout -> ((2,2,2),M,N/2): the A-operand layout of the next m16n8k16, so
// P feeds the P V product straight from registers.
template <class L>
__device__ __forceinline__ auto acc_as_a_operand(L l) {
  auto split = logical_divide(l, Shape<Underscore, Underscore, _2>{});
  return make_layout(make_layout(get<0>(split), get<2, 0>(split)), get<1>(split), get<2, 1>(split));
}

// Global -> shared copy of one (rows, D) tile: vectors outside the problem (row >= rows_left or
// column >= head_dim) are zero-filled in shared memory instead of read.
template <class TiledCopy, class Src, class Dst, class Coord>
__device__ __forceinline__ void load_tile(TiledCopy const& copy_op, Src const& src, Dst& dst, Coord const& coord,
                                          int rows_left, int head_dim) {
  CUTE_UNROLL
  for (int m = 0; m < size<1>(dst); ++m) {
    CUTE_UNROLL
    for (int k = 0; k < size<2>(dst); ++k) {
      if (get<0>(coord(0, m, k)) < rows_left && get<1>(coord(0, m, k)) < head_dim) {
        copy(copy_op, src(_, m, k), dst(_, m, k));
      } else {
        clear(dst(_, m, k));
      }
    }
  }
}

// acc += A B over the K mode, both operands streamed from shared memory one k-slice ahead.
template <class Mma, class Acc, class RA, class RB, class SA, class SB, class RAView, class RBView, class CopyA,
          class CopyB>
__device__ __forceinline__ void gemm_smem(Mma& mma, Acc& acc, RA& rA, RB& rB, SA const& sA, SB const& sB,
                                          RAView& rA_view, RBView& rB_view, CopyA const& copy_a,
                                          CopyB const& copy_b) {
  copy(copy_a, sA(_, _, 0), rA_view(_, _, 0));
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) {
      copy(copy_a, sA(_, _, k + 1), rA_view(_, _, k + 1));
      copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    }
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

// acc += A B with A already in registers and B streamed from shared memory.
template <class Mma, class Acc, class RA, class RB, class SB, class RBView, class CopyB>
__device__ __forceinline__ void gemm_regs_smem(Mma& mma, Acc& acc, RA const& rA, RB& rB, SB const& sB,
                                               RBView& rB_view, CopyB const& copy_b) {
  copy(copy_b, sB(_, _, 0), rB_view(_, _, 0));
  CUTE_UNROLL
  for (int k = 0; k < size<2>(rA); ++k) {
    if (k + 1 < size<2>(rA)) copy(copy_b, sB(_, _, k + 1), rB_view(_, _, k + 1));
    gemm(mma, rA(_, _, k), rB(_, _, k), acc);
  }
}

__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}

__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Reads one element of a broadcast (batch, head, query, key) operand as float.
template <typename T>
__device__ __forceinline__ float score_operand(const ScoreView& v, int b, int h, int row, int col) {
  const T* ptr = static_cast<const T*>(v.data) + b * v.batch_stride + (h / v.head_group) * v.head_stride +
                 row * v.query_stride + col * v.key_stride;
  return static_cast<float>(*ptr);
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads) fwd_kernel(const __grid_constant__ FwdProblem p) {
  using Element = typename Cfg::Element;
  constexpr int kTileQ = Cfg::kTileQ, kTileKV = Cfg::kTileKV, kHeadDim = Cfg::kHeadDim;
  constexpr float kLog2e = 1.4426950408889634f;

  extern __shared__ __align__(128) char smem[];
  const int tid = threadIdx.x;
  const int q_tile = blockIdx.x, h = blockIdx.y, b = blockIdx.z;
  const Extents& s = p.shape;
  const Scoring& sc = p.scoring;
  const int row0 = q_tile * kTileQ;
  const int h_kv = h / (s.heads / s.heads_kv);
  const int head_dim = s.head_dim;

  // Causal: row i sees key j iff j <= i + (K - Q); this tile's last row bounds the key range.
  int kv_end = s.seqlen_k;
  if (sc.causal) kv_end = min(kv_end, row0 + kTileQ + s.seqlen_k - s.seqlen_q);
  const int kv_tiles = kv_end > 0 ? (kv_end + kTileKV - 1) / kTileKV : 0;

  auto row_tensor = [&](const RowView& v, int head, int rows) {
    Element* base = static_cast<Element*>(v.data) + b * v.batch_stride + head * v.head_stride;
    return make_tensor(make_gmem_ptr(base), make_shape(rows, Int<kHeadDim>{}), make_stride(v.row_stride, _1{}));
  };
  Tensor mQ = row_tensor(p.q, h, s.seqlen_q);
  Tensor mK = row_tensor(p.k, h_kv, s.seqlen_k);
  Tensor mV = row_tensor(p.v, h_kv, s.seqlen_k);
  Tensor gQ = local_tile(mQ, Shape<Int<kTileQ>, Int<kHeadDim>>{}, make_coord(q_tile, 0));  // (TILE_Q,D)
  Tensor gK = local_tile(mK, Shape<Int<kTileKV>, Int<kHeadDim>>{}, make_coord(_, 0));      // (TILE_KV,D,n)
  Tensor gV = local_tile(mV, Shape<Int<kTileKV>, Int<kHeadDim>>{}, make_coord(_, 0));      // (TILE_KV,D,n)

  Element* smem_q = reinterpret_cast<Element*>(smem);
  Element* smem_k = smem_q + cosize(typename Cfg::SmemLayoutQ{});
  Element* smem_v = smem_k + cosize(typename Cfg::SmemLayoutKV{});
  Tensor sQ = make_tensor(make_smem_ptr(smem_q), typename Cfg::SmemLayoutQ{});    // (TILE_Q,D)
  Tensor sK = make_tensor(make_smem_ptr(smem_k), typename Cfg::SmemLayoutKV{});   // (TILE_KV,D)
  Tensor sV = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutKV{});   // (TILE_KV,D)
  Tensor sVt = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutVt{});  // (D,TILE_KV)
  Tensor sVtPlain = make_tensor(make_smem_ptr(smem_v), typename Cfg::SmemLayoutVtPlain{});

  typename Cfg::GmemCopy gmem_copy;
  auto gmem_thr = gmem_copy.get_thread_slice(tid);
  Tensor tQgQ = gmem_thr.partition_S(gQ);
  Tensor tQsQ = gmem_thr.partition_D(sQ);
  Tensor tKgK = gmem_thr.partition_S(gK);  // (CPY,CPY_M,CPY_K,n)
  Tensor tKsK = gmem_thr.partition_D(sK);
  Tensor tVgV = gmem_thr.partition_S(gV);
  Tensor tVsV = gmem_thr.partition_D(sV);
  Tensor tQcQ = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kTileQ>, Int<kHeadDim>>{}));
  Tensor tKcK = gmem_thr.partition_S(make_identity_tensor(Shape<Int<kTileKV>, Int<kHeadDim>>{}));

  typename Cfg::TiledMma mma;
  auto thr_mma = mma.get_slice(tid);
  Tensor tSrQ = thr_mma.partition_fragment_A(sQ);         // (MMA,MMA_M,MMA_K)
  Tensor tSrK = thr_mma.partition_fragment_B(sK);         // (MMA,MMA_N,MMA_K)
  Tensor tOrVt = thr_mma.partition_fragment_B(sVtPlain);  // (MMA,MMA_D,MMA_KV)
  Tensor acc_o = partition_fragment_C(mma, Shape<Int<kTileQ>, Int<kHeadDim>>{});
  clear(acc_o);

  auto smem_copy_q = make_tiled_copy_A(typename Cfg::SmemCopyQK{}, mma);
  auto smem_thr_q = smem_copy_q.get_thread_slice(tid);
  Tensor tSsQ = smem_thr_q.partition_S(sQ);
  Tensor tSrQ_view = smem_thr_q.retile_D(tSrQ);
  auto smem_copy_k = make_tiled_copy_B(typename Cfg::SmemCopyQK{}, mma);
  auto smem_thr_k = smem_copy_k.get_thread_slice(tid);
  Tensor tSsK = smem_thr_k.partition_S(sK);
  Tensor tSrK_view = smem_thr_k.retile_D(tSrK);
  auto smem_copy_v = make_tiled_copy_B(typename Cfg::SmemCopyVt{}, mma);
  auto smem_thr_v = smem_copy_v.get_thread_slice(tid);
  Tensor tOsVt = smem_thr_v.partition_S(sVt);
  Tensor tOrVt_view = smem_thr_v.retile_D(tOrVt);

  // (row, col) of every score this thread holds, in tile coordinates.
  Tensor tScS = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileQ>, Int<kTileKV>>{}));
  Tensor coord_s = make_tensor(tScS.data(), rows_cols(tScS.layout()));
  constexpr int kRows = size<0>(decltype(coord_s.layout()){});
  constexpr int kCols = size<1>(decltype(coord_s.layout()){});
  float row_max[kRows], row_sum[kRows];
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    row_max[i] = -INFINITY;
    row_sum[i] = 0.f;
  }

  load_tile(gmem_copy, tQgQ, tQsQ, tQcQ, s.seqlen_q - row0, head_dim);
  cp_async_fence();

  const bool has_mask = sc.mask_kind != MaskKind::kNone;
  const float softcap = sc.softcap;
  const float qk_scale = softcap > 0.f ? sc.scale / softcap : sc.scale;
  for (int n = 0; n < kv_tiles; ++n) {
    const int col0 = n * kTileKV;
    load_tile(gmem_copy, tKgK(_, _, _, n), tKsK, tKcK, s.seqlen_k - col0, head_dim);
    cp_async_fence();
    load_tile(gmem_copy, tVgV(_, _, _, n), tVsV, tKcK, s.seqlen_k - col0, head_dim);
    cp_async_fence();
    cp_async_wait<1>();  // Q and this K have landed; V may still be in flight
    __syncthreads();

    Tensor acc_s = partition_fragment_C(mma, Shape<Int<kTileQ>, Int<kTileKV>>{});
    clear(acc_s);
    gemm_smem(mma, acc_s, tSrQ, tSrK, tSsQ, tSsK, tSrQ_view, tSrK_view, smem_copy_q, smem_copy_k);

    Tensor scores = make_tensor(acc_s.data(), rows_cols(acc_s.layout()));  // (rows, cols)
    CUTE_UNROLL
    for (int i = 0; i < kRows; ++i) {
      const int row = row0 + get<0>(coord_s(i, 0));
      float tile_max = -INFINITY;
      CUTE_UNROLL
      for (int j = 0; j < kCols; ++j) {
        const int col = col0 + get<1>(coord_s(i, j));
        float x = scores(i, j) * qk_scale;
        if (softcap > 0.f) x = softcap * tanhf(x);
        bool keep = row < s.seqlen_q && col < s.seqlen_k && !(sc.causal && col > row + s.seqlen_k - s.seqlen_q);
        if (keep && has_mask) {
          keep = sc.mask_kind == MaskKind::kBool ? score_operand<uint8_t>(sc.mask, b, h, row, col) != 0.f
                                                 : score_operand<Element>(sc.mask, b, h, row, col) != 0.f;
        }
        if (keep && sc.has_bias) x += score_operand<Element>(sc.bias, b, h, row, col);
        x = keep ? x : -INFINITY;
        scores(i, j) = x;
        tile_max = fmaxf(tile_max, x);
      }
      const float new_max = fmaxf(row_max[i], quad_max(tile_max));
      // A row that has kept nothing yet has max -inf; measure from 0 so no inf - inf appears.
      const float ref = new_max == -INFINITY ? 0.f : new_max;
      const float rescale = exp2f((row_max[i] - ref) * kLog2e);
      row_max[i] = new_max;
      float tile_sum = 0.f;
      CUTE_UNROLL
      for (int j = 0; j < kCols; ++j) {
        const float e = exp2f((scores(i, j) - ref) * kLog2e);
        scores(i, j) = e;
        tile_sum += e;
      }
      row_sum[i] = row_sum[i] * rescale + tile_sum;
      Tensor out_rows = make_tensor(acc_o.data(), rows_cols(acc_o.layout()));
      CUTE_UNROLL
      for (int j = 0; j < size<1>(out_rows); ++j) out_rows(i, j) *= rescale;
    }

    // P in the input dtype, laid out as the A operand of P V.
    Tensor probs = make_tensor<Element>(acc_s.layout());
    CUTE_UNROLL
    for (int i = 0; i < size(acc_s); ++i) probs(i) = static_cast<Element>(acc_s(i));
    Tensor tOrP = make_tensor(probs.data(), acc_as_a_operand(probs.layout()));

    cp_async_wait<0>();
    __syncthreads();
    gemm_regs_smem(mma, acc_o, tOrP, tOrVt, tOsVt, tOrVt_view, smem_copy_v);
    __syncthreads();  // the next tile's loads overwrite sK and sV
  }

  // Epilogue: normalize, write out and lse (straight from registers, bounds-checked).
  Tensor mO = row_tensor(p.out, h, s.seqlen_q);
  Tensor gO = local_tile(mO, Shape<Int<kTileQ>, Int<kHeadDim>>{}, make_coord(q_tile, 0));
  Tensor tOgO = thr_mma.partition_C(gO);
  Tensor tOcO = thr_mma.partition_C(make_identity_tensor(Shape<Int<kTileQ>, Int<kHeadDim>>{}));
  Tensor out_rows = make_tensor(acc_o.data(), rows_cols(acc_o.layout()));
  Tensor out_g = make_tensor(tOgO.data(), rows_cols(tOgO.layout()));
  Tensor out_c = make_tensor(tOcO.data(), rows_cols(tOcO.layout()));
  CUTE_UNROLL
  for (int i = 0; i < kRows; ++i) {
    const float sum = quad_sum(row_sum[i]);
    const float inv = sum > 0.f ? 1.f / sum : 0.f;
    const int row = row0 + get<0>(out_c(i, 0));
    if (row >= s.seqlen_q) continue;
    CUTE_UNROLL
    for (int j = 0; j < size<1>(out_rows); ++j) {
      if (get<1>(out_c(i, j)) < head_dim) out_g(i, j) = static_cast<Element>(out_rows(i, j) * inv);
    }
    if (p.lse != nullptr && get<1>(out_c(i, 0)) == 0) {
      p.lse[(int64_t(b) * s.heads + h) * s.seqlen_q + row] = sum > 0.f ? row_max[i] + logf(sum) : -INFINITY;
    }
  }
}

// Host side: launches the kernel for one (dtype, head-dim bucket) on the problem's stream.
template <typename Element, int kHeadDim>
dmattn_status launch_fwd(const FwdProblem& p, char* msg, size_t msg_len) {
  using Cfg = FwdConfig<Element, kHeadDim, 64, (kHeadDim <= 128 ? 64 : 32), 4>;
  auto kernel = fwd_kernel<Cfg>;
  constexpr int smem = Cfg::kSmemBytes;
  if (smem > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) {
      snprintf(msg, msg_len, "forward kernel (head_dim bucket %d) needs %d bytes of shared memory: %s", kHeadDim,
               smem, cudaGetErrorString(err));
      return DMATTN_STATUS_CUDA_ERROR;
    }
  }
  dim3 grid((p.shape.seqlen_q + Cfg::kTileQ - 1) / Cfg::kTileQ, p.shape.heads, p.shape.batch);
  kernel<<<grid, Cfg::kThreads, smem, static_cast<cudaStream_t>(p.launch.stream)>>>(p);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    snprintf(msg, msg_len, "forward kernel launch failed: %s", cudaGetErrorString(err));
    return DMATTN_STATUS_CUDA_ERROR;
  }
  return DMATTN_STATUS_SUCCESS;
}

}  // namespace dmattn::sm80
