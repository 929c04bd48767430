// tile_gemm.cuh: the copy and product steps every SM80-class kernel is built from: a bounds-checked
// global -> shared tile load and mma.sync products streamed from shared memory (ldmatrix), one
// k-slice ahead of the math.
#pragma once

#include <cute/tensor.hpp>
#include <cutlass/numeric_types.h>

#include <type_traits>

namespace dmattn::sm80 {

using namespace cute;

// What every kernel's (rows, D) tiles share: the mma.sync atom for the dtype, the XOR-swizzled
// shared-memory atom (rows of kSmemK elements, conflict-free for ldmatrix), and 16-byte global
// copies with kSmemK / 8 threads per row.
template <typename Element, int kHeadDim, int kThreads>
struct RowTileTraits {
  using MmaOp = std::conditional_t<std::is_same_v<Element, cutlass::half_t>, SM80_16x8x16_F32F16F16F32_TN,
                                   SM80_16x8x16_F32BF16BF16F32_TN>;
  static constexpr int kSmemK = kHeadDim % 64 == 0 ? 64 : 32;
  using SmemAtom = decltype(composition(Swizzle<kSmemK == 64 ? 3 : 2, 3, 3>{},
                                        Layout<Shape<_8, Int<kSmemK>>, Stride<Int<kSmemK>, _1>>{}));
  using SmemCopyN = Copy_Atom<SM75_U32x4_LDSM_N, Element>;
  using SmemCopyT = Copy_Atom<SM75_U16x8_LDSM_T, Element>;
  static constexpr int kRowThreads = kSmemK / 8;
  using GmemThreads = Layout<Shape<Int<kThreads / kRowThreads>, Int<kRowThreads>>, Stride<Int<kRowThreads>, _1>>;
  using GmemCopy = decltype(make_tiled_copy(Copy_Atom<SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>, Element>{},
                                            GmemThreads{}, Layout<Shape<_1, _8>>{}));
  using GmemStore = decltype(make_tiled_copy(Copy_Atom<UniversalCopy<cute::uint128_t>, Element>{}, GmemThreads{},
                                             Layout<Shape<_1, _8>>{}));
};

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

// acc += A B for tiles sA (M, K) and sB (N, K) in shared memory, each read with its ldmatrix copy
// (transposed views with the .trans atom). The register fragments are shaped after like_a and like_b,
// the tiles' layouts without the swizzle (a transposed swizzled view cannot shape a fragment).
template <class Mma, class Acc, class SA, class SB, class LikeA, class LikeB, class CopyA, class CopyB>
__device__ __forceinline__ void gemm_tiles(Mma& mma, Acc& acc, SA const& sA, SB const& sB, LikeA const& like_a,
                                           LikeB const& like_b, CopyA const& copy_a, CopyB const& copy_b) {
  auto thr_mma = mma.get_slice(threadIdx.x);
  Tensor rA = thr_mma.partition_fragment_A(like_a);
  Tensor rB = thr_mma.partition_fragment_B(like_b);
  auto thr_a = copy_a.get_thread_slice(threadIdx.x);
  auto thr_b = copy_b.get_thread_slice(threadIdx.x);
  Tensor rA_view = thr_a.retile_D(rA);
  Tensor rB_view = thr_b.retile_D(rB);
  gemm_smem(mma, acc, rA, rB, thr_a.partition_S(sA), thr_b.partition_S(sB), rA_view, rB_view, copy_a, copy_b);
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

}  // namespace dmattn::sm80
