// score_tile.cuh: stages one key tile of a (batch, head) slice of a keep-mask or bias in shared
// memory, so the kernel's score loop reads it with plain shared loads instead of per-element global
// index math. Any broadcast form works:
//   - per query and per key: a (kTileQ, kTileKV) tile, 16-byte cp.async where aligned;
//   - broadcast over queries (Q axis 1, e.g. a per-key bias (B, H_kv, 1, K)): one row, read at
//     row pitch 0;
//   - broadcast over keys (K axis 1): the same for every key tile, so loaded once per CTA.
// Rows are padded by one 16-byte vector so the score loop's reads (8 rows x 4 lanes per warp) hit
// distinct banks. Entries outside the problem are 0: the kernel masks them by bounds anyway.
// A ScoreTile is cheap to build from the view: a kernel that loads one rarely can build it where it
// loads, so its pointer and strides hold no registers through the score loop.
#pragma once

#include <cute/arch/copy_sm80.hpp>
#include <cute/numeric/numeric_types.hpp>

#include <cstdint>

#include "family/problem.h"

namespace dmattn::sm80 {

// Element offset of (b, query head h, query q, key k) in a mask, bias or dbias view (broadcast axes
// have stride 0, so any index reads their one entry).
__host__ __device__ __forceinline__ int64_t view_offset(const ScoreView& v, int b, int h, int q, int k) {
  return b * v.batch_stride + int64_t(h / v.head_group) * v.head_stride + int64_t(q) * v.query_stride +
         int64_t(k) * v.key_stride;
}

template <typename T, int kTileQ, int kTileKV, int kThreads>
struct ScoreTile {
  static constexpr int kChunk = 16 / int(sizeof(T));  // elements per 16-byte vector
  static constexpr int kPitch = kTileKV + kChunk;      // elements per staged row
  static constexpr int kSmemBytes = kTileQ * kPitch * int(sizeof(T));
  static constexpr int kChunksPerRow = kTileKV / kChunk;
  static_assert(kTileKV % kChunk == 0, "whole vectors per row");

  const T* base = nullptr;  // (b, head, row0, key 0)
  int64_t query_stride = 0;
  int rows = 0;             // valid rows of this query tile (1 when broadcast over queries)
  bool per_query = false, per_key = false, vector_ok = false;

  __device__ ScoreTile(const ScoreView& v, int b, int h, int row0, int seqlen_q) {
    per_query = v.shape[2] != 1;
    per_key = v.shape[3] != 1;
    query_stride = v.query_stride;
    const int head = v.shape[1] == 1 ? 0 : h / v.head_group;
    base = static_cast<const T*>(v.data) + b * v.batch_stride + head * v.head_stride +
           (per_query ? int64_t(row0) * v.query_stride : 0);
    rows = per_query ? min(kTileQ, seqlen_q - row0) : 1;
    vector_ok = per_key && reinterpret_cast<uintptr_t>(base) % 16 == 0 && (query_stride * int64_t(sizeof(T))) % 16 == 0;
  }

  // Row pitch the score loop reads with: 0 repeats row 0 for every query.
  __device__ static int read_pitch(const ScoreView& v) { return v.shape[2] != 1 ? kPitch : 0; }
  // Loaded once per CTA (the same values for every key tile).
  __device__ static bool invariant(const ScoreView& v) { return v.shape[3] == 1; }

  // Issues the loads of key tile [col0, col0 + kTileKV) (cols_valid of them inside the problem).
  // Vector loads are cp.async (the caller fences and waits); the rest are synchronous.
  __device__ void load(T* smem, int col0, int cols_valid, int tid) const {
    const int staged_rows = per_query ? kTileQ : 1;
    for (int i = tid; i < staged_rows * kChunksPerRow; i += kThreads) {
      const int r = i / kChunksPerRow;
      const int c = (i % kChunksPerRow) * kChunk;
      T* dst = smem + r * kPitch + c;
      const T* src_row = base + r * query_stride;
      if (vector_ok && r < rows && c + kChunk <= cols_valid) {
        cute::SM80_CP_ASYNC_CACHEGLOBAL<cute::uint128_t>::copy(
            *reinterpret_cast<const cute::uint128_t*>(src_row + col0 + c), *reinterpret_cast<cute::uint128_t*>(dst));
      } else {
        CUTE_UNROLL
        for (int e = 0; e < kChunk; ++e) {
          const int col = c + e;
          dst[e] = (r < rows && col < cols_valid) ? src_row[per_key ? col0 + col : 0] : T(0);
        }
      }
    }
  }
};

}  // namespace dmattn::sm80
