// problem.h: the validated, normalized description of one attention call, handed from libdmattn's
// C ABI layer to an arch-family kernel library. Built only by capi/validate.cpp: every field here
// has been checked, broadcast axes carry stride 0, and strides count elements.
#pragma once

#include <cstddef>
#include <cstdint>

namespace dmattn {

enum class DType : int32_t { kF16 = 0, kBF16 = 1 };
enum class MaskKind : int32_t { kNone = 0, kBool = 1, kSameAsQ = 2 };

// A (batch, row, head, D) operand with a contiguous last axis: q, k, v, out and their gradients.
// For varlen problems batch_stride is unused (rows are global token indices).
struct RowView {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t row_stride = 0;
  int64_t head_stride = 0;
};

// A (batch, head, query, key) operand of any broadcast form: mask, bias, dbias. Head index for query
// head h is h / head_group (head_group = H / H_kv for a per-kv-head tensor). Broadcast axes have
// stride 0; key_stride is 0 (key-broadcast) or 1.
struct ScoreView {
  void* data = nullptr;
  int64_t batch_stride = 0;
  int64_t head_stride = 0;
  int64_t query_stride = 0;
  int64_t key_stride = 0;
  int32_t head_group = 1;
  int32_t shape[4] = {0, 0, 0, 0};  // the tensor's own shape (dbias reduces into it)
};

struct Extents {
  int32_t batch = 0;
  int32_t seqlen_q = 0;   // max_seqlen_q for varlen
  int32_t seqlen_k = 0;   // max_seqlen_k for varlen
  int32_t heads = 0;
  int32_t heads_kv = 0;
  int32_t head_dim = 0;
  // varlen / paged (device pointers, or null)
  const int32_t* cu_seqlens_q = nullptr;
  const int32_t* cu_seqlens_k = nullptr;
  const int32_t* block_table = nullptr;
  int64_t block_table_stride = 0;
  int32_t page_size = 0;
  int64_t total_q = 0;
  int64_t total_k = 0;
};

struct Scoring {
  float scale = 1.f;
  float softcap = 0.f;   // 0 = off
  bool causal = false;
  MaskKind mask_kind = MaskKind::kNone;
  ScoreView mask;
  bool has_bias = false;
  ScoreView bias;
};

struct Launch {
  int32_t device = 0;
  int32_t compute_capability = 0;  // major * 10 + minor
  void* stream = nullptr;
  void* workspace = nullptr;
  size_t workspace_size = 0;
};

struct FwdProblem {
  DType dtype = DType::kBF16;
  Extents shape;
  Scoring scoring;
  RowView q, k, v, out;
  float* lse = nullptr;            // (B,H,Q) compact, or (H,total_q) for varlen; may be null
  // The caller's memory for the mask's tile plan (null: the plan lives in the workspace). In a
  // backward problem it holds the plan the forward wrote.
  void* tile_plan = nullptr;
  size_t tile_plan_size = 0;
  bool nothing_to_write = false;   // out and lse are empty: the call is a no-op
  Launch launch;
};

struct BwdProblem {
  DType dtype = DType::kBF16;
  Extents shape;
  Scoring scoring;
  RowView q, k, v, out, dout, dq, dk, dv;
  const float* lse = nullptr;
  bool has_dbias = false;
  ScoreView dbias;
  bool deterministic = false;
  const void* tile_plan = nullptr;  // the forward's tile plan for these inputs, or null (build it again)
  size_t tile_plan_size = 0;
  bool nothing_to_write = false;   // dq, dk, dv and dbias are all empty: the call is a no-op
  Launch launch;
};

inline const char* dtype_name(DType t) { return t == DType::kF16 ? "fp16" : "bf16"; }

}  // namespace dmattn
