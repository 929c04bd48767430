// tile_plan.cu: builds the forward kernel's tile plan (tile_plan.h) in one pass over the keep-mask;
// under causal, over the part of it a query tile can see: a per-query row then also leaves out the
// key tiles past its query tile's causal limit, which no kernel walks (each cuts its lists there),
// and judges the tiles the diagonal crosses by their visible entries only (a mask already ANDed
// with causal makes them full, so they run without mask work; the kernels apply causal anyway).
// One CTA per (mask batch, mask head, query tile): each warp classifies key tiles (empty, partial,
// full) with 16-byte loads where the mask allows them, stopping as soon as a tile is known to be
// partial, then warp 0 compacts the full and the partial tiles, in order, into the plan row's two lists.
#include <cuda_runtime_api.h>


#include "sm80/launch_status.h"
#include "sm80/tile_plan.h"

namespace dmattn::sm80 {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunkTiles = 4096;  // key-tile states staged in shared memory per pass

struct Bits {
  bool any = false;
  bool all = true;
};

// Zero tests on a 16-byte chunk of mask elements (bool bytes, or fp16/bf16 0/1 whose sign bit is
// ignored so -0 counts as 0). Only the first `visible` elements count (the rest lie past the causal
// limit): they read as kept for `all` and as zero for `any`.
template <int kElemBytes>
__device__ __forceinline__ void classify_chunk(uint4 v, Bits& bits, int visible = 16 / kElemBytes) {
  constexpr int kPerWord = 4 / kElemBytes;
  constexpr uint32_t kOnes = kElemBytes == 1 ? 0x01010101u : 0x00010001u;
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int n = min(max(visible - i * kPerWord, 0), kPerWord);  // visible elements of this word
    const uint32_t seen = n == kPerWord ? 0xffffffffu : (1u << (8 * kElemBytes * n)) - 1u;
    uint32_t x = w[i] & seen;
    if constexpr (kElemBytes == 2) x &= 0x7fff7fffu;
    const uint32_t y = x | (kOnes & ~seen);  // unseen elements count as kept
    bool has_zero;
    if constexpr (kElemBytes == 1) {
      has_zero = ((y - 0x01010101u) & ~y & 0x80808080u) != 0;
    } else {
      has_zero = ((y - 0x00010001u) & ~y & 0x80008000u) != 0;
    }
    bits.any |= x != 0;
    bits.all &= !has_zero;
  }
}

template <int kElemBytes>
__device__ __forceinline__ bool element_kept(const char* p) {
  if constexpr (kElemBytes == 1) return *reinterpret_cast<const uint8_t*>(p) != 0;
  else return (*reinterpret_cast<const uint16_t*>(p) & 0x7fffu) != 0;
}

// Elements i = first, first + step, ... < rows * cols of a (rows x cols) tile, one at a time; row r
// sees columns c <= last_col + r (kNoLimit: all).
constexpr int kNoLimit = 1 << 30;

template <int kElemBytes>
__device__ __forceinline__ void classify_elements(const char* tile, int64_t row_bytes, int rows, int cols, int first,
                                                  int step, Bits& bits, int last_col = kNoLimit) {
  for (int i = first; i < rows * cols; i += step) {
    const int r = i / cols, c = i % cols;
    if (c > last_col + r) continue;
    const bool kept = element_kept<kElemBytes>(tile + r * row_bytes + int64_t(c) * kElemBytes);
    bits.any |= kept;
    bits.all &= kept;
  }
}

// The state of one (rows x cols) mask tile, classified by one warp: 0 empty, 1 partial, 2 full, over
// the entries each row sees (row r: columns <= last_col + r; the causal limit).
template <int kElemBytes>
__device__ int tile_state(const char* tile, int64_t row_bytes, int rows, int cols, bool vector_ok, int lane,
                          int last_col) {
  Bits bits;
  if (vector_ok && cols == kPlanTileKV) {
    constexpr int kPerChunk = 16 / kElemBytes;
    constexpr int kChunks = kPlanTileKV / kPerChunk;  // per row
    constexpr int kGroup = 4;                         // loads in flight per lane
    const int n = rows * kChunks;
    for (int i0 = 0; i0 < n; i0 += 32 * kGroup) {
#pragma unroll
      for (int u = 0; u < kGroup; ++u) {
        const int i = i0 + u * 32 + lane;
        const int r = i / kChunks, c = (i % kChunks) * kPerChunk;
        const int visible = min(max(last_col + r - c + 1, 0), kPerChunk);
        if (i < n && visible > 0) {
          const uint4 v = __ldg(reinterpret_cast<const uint4*>(tile + r * row_bytes + c * kElemBytes));
          classify_chunk<kElemBytes>(v, bits, visible);
        }
      }
      // A tile seen to keep some and drop some is partial whatever the rest holds: stop reading it.
      // Masks chosen per row (top-k keys per query) make most tiles partial, and this skips most of
      // their bytes; empty and full tiles are still read whole, as they must be.
      if (__any_sync(0xffffffffu, bits.any) && !__all_sync(0xffffffffu, bits.all)) return 1;
    }
  } else {
    classify_elements<kElemBytes>(tile, row_bytes, rows, cols, lane, 32, bits, last_col);
  }
  const bool any = __any_sync(0xffffffffu, bits.any);
  const bool all = __all_sync(0xffffffffu, bits.all);
  return any ? (all ? 2 : 1) : 0;
}

// States of kGroupTiles adjacent full-width key tiles, classified together by one warp so that each
// warp-wide load reads one mask row's 512 contiguous bytes (a tile's 64 keys are only 64 or 128
// bytes of a row: one warp per tile reads short segments of many rows and reaches ~2 TB/s). Lane l
// reads chunk l % kChunks of tile l / kChunks, for every row; the lanes of a tile then combine.
template <int kElemBytes>
struct TileGroup {
  static constexpr int kChunks = kPlanTileKV * kElemBytes / 16;  // 16-byte chunks per tile row
  static constexpr int kGroupTiles = 32 / kChunks;
};

template <int kElemBytes>
__device__ int group_tile_state(const char* group, int64_t row_bytes, int rows, int lane) {
  constexpr int kChunks = TileGroup<kElemBytes>::kChunks;
  constexpr int kRowsInFlight = 4;
  Bits bits;
  const char* p = group + lane * 16;
  for (int r0 = 0; r0 < rows; r0 += kRowsInFlight) {
    uint4 v[kRowsInFlight];
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      if (r0 + u < rows) v[u] = __ldg(reinterpret_cast<const uint4*>(p + (r0 + u) * row_bytes));
    }
#pragma unroll
    for (int u = 0; u < kRowsInFlight; ++u) {
      if (r0 + u < rows) classify_chunk<kElemBytes>(v[u], bits);
    }
  }
  // Combine the kChunks lanes of each tile (aligned groups of lanes).
#pragma unroll
  for (int offset = 1; offset < kChunks; offset *= 2) {
    bits.any |= __shfl_xor_sync(0xffffffffu, bits.any, offset);
    bits.all &= __shfl_xor_sync(0xffffffffu, bits.all, offset);
  }
  return bits.any ? (bits.all ? 2 : 1) : 0;
}

template <int kElemBytes>
__global__ void __launch_bounds__(kThreads) build_tile_plan_kernel(const ScoreView mask, int seqlen_q, int seqlen_k,
                                                                  bool causal, const TilePlan plan) {
  __shared__ uint8_t states[kChunkTiles];
  const int qt = blockIdx.x, mh = blockIdx.y, mb = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool per_query = mask.shape[2] != 1;
  const bool per_key = mask.shape[3] != 1;
  const int row0 = per_query ? qt * kPlanTileQ : 0;
  const int rows = per_query ? min(kPlanTileQ, seqlen_q - row0) : 1;
  const int64_t row_bytes = mask.query_stride * kElemBytes;
  const char* base = static_cast<const char*>(mask.data) +
                     (mb * mask.batch_stride + mh * mask.head_stride + row0 * mask.query_stride) * kElemBytes;
  const bool vector_ok = per_key && (reinterpret_cast<uintptr_t>(base) % 16 == 0) && (row_bytes % 16 == 0);

  int32_t* out = plan.rows + ((int64_t(mb) * plan.heads + mh) * plan.q_tiles + qt) * plan.row_len();
  int32_t* slots = out + 2;
  // Under causal a per-query tile's rows see no key past its last row's limit (bottom-right), so
  // the tiles beyond are left out unread: half of a square causal mask's bytes. A per-key row serves
  // every query tile and is read whole.
  // Key tiles below `seen_whole` are seen whole by every row; the ones above it, up to the cut, are
  // crossed by the diagonal and classified over the entries their rows see.
  int k_tiles = plan.k_tiles, seen_whole = plan.k_tiles;
  const int diag = seqlen_k - seqlen_q;  // row i sees key j iff j <= i + diag
  if (causal && per_query) {
    const int kv_end = causal_key_end(row0, kPlanTileQ, seqlen_q, seqlen_k);
    k_tiles = kv_end > 0 ? min(k_tiles, (kv_end + kPlanTileKV - 1) / kPlanTileKV) : 0;
    seen_whole = min(k_tiles, max(row0 + diag + 1, 0) / kPlanTileKV);
  }
  int n_full = 0, n_partial = 0;  // warp 0's running counts
  for (int chunk0 = 0; chunk0 < k_tiles; chunk0 += kChunkTiles) {
    const int chunk_tiles = min(kChunkTiles, k_tiles - chunk0);
    // Whole groups of full-width tiles (per-query masks with 16-byte rows): one warp per group.
    constexpr int kGroupTiles = TileGroup<kElemBytes>::kGroupTiles, kChunks = TileGroup<kElemBytes>::kChunks;
    int grouped = 0;
    if (vector_ok && per_query) {
      const int full_tiles = max(0, min(min(chunk_tiles, seen_whole - chunk0), (seqlen_k - chunk0 * kPlanTileKV) / kPlanTileKV));
      grouped = full_tiles / kGroupTiles * kGroupTiles;
      for (int g = warp * kGroupTiles; g < grouped; g += kWarps * kGroupTiles) {
        const char* group = base + int64_t(chunk0 + g) * kPlanTileKV * kElemBytes;
        const int state = group_tile_state<kElemBytes>(group, row_bytes, rows, lane);
        if (lane % kChunks == 0) states[g + lane / kChunks] = static_cast<uint8_t>(state);
      }
    }
    // A per-key keep list (one mask row): one thread per tile, so the few bytes per tile of many
    // tiles are in flight at once (one warp per tile would serialize K / 64 short reads).
    if (!per_query && per_key) {
      for (int t = threadIdx.x; t < chunk_tiles; t += kThreads) {
        const int col0 = (chunk0 + t) * kPlanTileKV;
        const int cols = min(kPlanTileKV, seqlen_k - col0);
        const char* tile = base + int64_t(col0) * kElemBytes;
        Bits bits;
        if (vector_ok && cols == kPlanTileKV) {
#pragma unroll
          for (int c = 0; c < kChunks; ++c) classify_chunk<kElemBytes>(__ldg(reinterpret_cast<const uint4*>(tile) + c), bits);
        } else {
          classify_elements<kElemBytes>(tile, row_bytes, 1, cols, 0, 1, bits);
        }
        states[t] = static_cast<uint8_t>(bits.any ? (bits.all ? 2 : 1) : 0);
      }
      grouped = chunk_tiles;
    }
    // The rest one warp per tile.
    for (int t = grouped + warp; t < chunk_tiles; t += kWarps) {
      const int col0 = (chunk0 + t) * kPlanTileKV;
      const int cols = per_key ? min(kPlanTileKV, seqlen_k - col0) : 1;
      const char* tile = base + (per_key ? int64_t(col0) * kElemBytes : 0);
      const int last_col = chunk0 + t < seen_whole ? kNoLimit : row0 + diag - col0;  // row 0's last key in the tile
      const int state = tile_state<kElemBytes>(tile, row_bytes, rows, cols, vector_ok, lane, last_col);
      if (lane == 0) states[t] = static_cast<uint8_t>(state);
    }
    __syncthreads();
    if (warp == 0) {
      for (int t0 = 0; t0 < chunk_tiles; t0 += 32) {
        const int t = t0 + lane;
        const int state = t < chunk_tiles ? states[t] : 0;
        const uint32_t below = (1u << lane) - 1u;
        const uint32_t full = __ballot_sync(0xffffffffu, state == 2);
        const uint32_t partial = __ballot_sync(0xffffffffu, state == 1);
        if (state == 2) slots[n_full + __popc(full & below)] = chunk0 + t;
        if (state == 1) slots[plan.k_tiles - 1 - (n_partial + __popc(partial & below))] = chunk0 + t;
        n_full += __popc(full);
        n_partial += __popc(partial);
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[0] = n_full;
    out[1] = n_partial;
  }
}

}  // namespace

dmattn_status build_tile_plan(const FwdProblem& p, const TilePlan& plan, char* msg, size_t msg_len) {
  const dim3 grid(plan.q_tiles, plan.heads, plan.batches);
  cudaStream_t stream = static_cast<cudaStream_t>(p.launch.stream);
  if (p.scoring.mask_kind == MaskKind::kBool) {
    build_tile_plan_kernel<1><<<grid, kThreads, 0, stream>>>(p.scoring.mask, p.shape.seqlen_q, p.shape.seqlen_k,
                                                             p.scoring.causal, plan);
  } else {
    build_tile_plan_kernel<2><<<grid, kThreads, 0, stream>>>(p.scoring.mask, p.shape.seqlen_q, p.shape.seqlen_k,
                                                             p.scoring.causal, plan);
  }
  return launch_status("tile plan kernel", msg, msg_len);
}

}  // namespace dmattn::sm80
