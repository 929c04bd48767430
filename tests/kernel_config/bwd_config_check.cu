// bwd_config_check.cu: host-side checks of the backward kernel's compile-time configuration, for
// every head-dim bucket and key-tile width, run on a machine without a GPU (tests/test_kernel_config.py):
//   - the dQ product's K^T chunks (BwdConfig::SmemLayoutKVTChunk at an element offset) address the
//     same shared memory as the whole tile's transposed view, element by element;
//   - the shared memory each variant asks for fits the GPUs its family library serves, where the
//     launcher does not answer NOT_IMPLEMENTED for it instead.
// Prints one line per configuration and exits 1 on any failure.
#include <cstdio>

#include "sm80/bwd_kernel.cuh"

namespace {

using namespace dmattn::sm80;

constexpr int kSm90BlockSmem = 227 * 1024;  // H100/H200 (and sm100): the opt-in limit of one block
constexpr int kA100BlockSmem = 163 * 1024;

int failures = 0;

void expect(bool ok, const char* what, int d, int tile_kv) {
  if (!ok) {
    std::printf("FAIL D=%d tile_kv=%d: %s\n", d, tile_kv, what);
    ++failures;
  }
}

template <int kHeadDim, int kTileKV>
void check_config() {
  using Cfg = BwdConfig<cutlass::bfloat16_t, kHeadDim, kTileKV>;
  typename Cfg::SmemLayoutKV kv;
  typename Cfg::template RowsLayoutT<kTileKV> kvt;  // the whole tile read transposed
  typename Cfg::SmemLayoutKVTChunk chunk;
  int mismatches = 0;
  for (int c = 0; c < kHeadDim / Cfg::kDqChunk; ++c)
    for (int d = 0; d < Cfg::kDqChunk; ++d)
      for (int r = 0; r < kTileKV; ++r) {
        const int whole = kvt(c * Cfg::kDqChunk + d, r);
        mismatches += whole != Cfg::dq_chunk_offset(c) + chunk(d, r) || whole != kv(r, c * Cfg::kDqChunk + d);
      }
  expect(mismatches == 0, "a dQ chunk's K^T view addresses other elements than the whole tile's", kHeadDim, kTileKV);
  const int most = Cfg::smem_bytes(true, true);
  std::printf("D=%d tile_kv=%d dq_chunk=%d row_buffers=%d smem none/mask/bias/both %d/%d/%d/%d chunk mismatches %d\n",
              kHeadDim, kTileKV, Cfg::kDqChunk, Cfg::kRowBuffers, Cfg::smem_bytes(false, false),
              Cfg::smem_bytes(true, false), Cfg::smem_bytes(false, true), most, mismatches);
  // sm90/sm100 run every variant (128-key columns only unmasked, bwd_tile_kv).
  if (kTileKV == 64) expect(most <= kSm90BlockSmem, "a 64-key variant does not fit an H100 block", kHeadDim, kTileKV);
  else expect(Cfg::smem_bytes(false, true) <= kSm90BlockSmem, "an unmasked 128-key variant does not fit", kHeadDim, kTileKV);
  // On an A100 every 64-key variant up to D = 192, and D = 256 without both mask and bias.
  if (kTileKV == 64) {
    const int a100 = kHeadDim <= 192 ? most : Cfg::smem_bytes(true, false);
    expect(a100 <= kA100BlockSmem, "a variant meant for the A100 does not fit its block", kHeadDim, kTileKV);
  }
}

}  // namespace

int main() {
  check_config<32, 64>();
  check_config<64, 64>();
  check_config<96, 64>();
  check_config<128, 64>();
  check_config<192, 64>();
  check_config<256, 64>();
  check_config<64, 128>();
  check_config<128, 128>();
  std::printf("%d failures\n", failures);
  return failures != 0;
}
