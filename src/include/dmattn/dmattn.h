/* dmattn.h: the public C ABI of libdmattn (C99).
 *
 * Attention with a dynamic keep-mask and a trainable additive bias. Every entry point validates its
 * arguments, returns a dmattn_status and never throws; dmattn_get_last_error() explains a failure
 * (thread-local). The library allocates no device memory: callers query workspace sizes and pass
 * buffers in. Nothing here depends on a framework; tensors are DLPack-compatible descriptors.
 */
#ifndef DMATTN_DMATTN_H_
#define DMATTN_DMATTN_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define DMATTN_API __declspec(dllexport)
#else
#define DMATTN_API __attribute__((visibility("default")))
#endif

/* Bumped whenever a struct layout or an entry point's meaning changes incompatibly. Structs also
 * carry struct_size so fields can be appended without a bump. */
#define DMATTN_ABI_VERSION 1

typedef enum dmattn_status {
  DMATTN_STATUS_SUCCESS = 0,
  DMATTN_STATUS_INVALID_ARGUMENT = 1,   /* the message names the argument */
  DMATTN_STATUS_NOT_IMPLEMENTED = 2,    /* valid request, no kernel for it in this build/version */
  DMATTN_STATUS_NO_CUDA_DEVICE = 3,     /* no driver or no visible device */
  DMATTN_STATUS_UNSUPPORTED_DEVICE = 4, /* the device's arch has no kernel library in this build */
  DMATTN_STATUS_CUDA_ERROR = 5,         /* a CUDA runtime call failed; the message has its text */
  DMATTN_STATUS_INSUFFICIENT_WORKSPACE = 6,
  DMATTN_STATUS_INTERNAL_ERROR = 7
} dmattn_status;

/* ---- Tensor descriptors: field-for-field the layout of DLPack's DLTensor (a DLTensor* may be
 * passed as a dmattn_tensor*). Strides count elements, not bytes; NULL strides means compact
 * row-major. Size-1 axes may carry any stride: they are read with stride 0. */
typedef enum dmattn_device_type {
  DMATTN_DEVICE_CPU = 1,     /* kDLCPU */
  DMATTN_DEVICE_CUDA = 2     /* kDLCUDA */
} dmattn_device_type;

typedef enum dmattn_dtype_code {
  DMATTN_DTYPE_CODE_INT = 0,
  DMATTN_DTYPE_CODE_UINT = 1,
  DMATTN_DTYPE_CODE_FLOAT = 2,
  DMATTN_DTYPE_CODE_BFLOAT = 4,
  DMATTN_DTYPE_CODE_BOOL = 6
} dmattn_dtype_code;

typedef struct dmattn_device {
  int32_t device_type; /* dmattn_device_type */
  int32_t device_id;
} dmattn_device;

typedef struct dmattn_dtype {
  uint8_t code;  /* dmattn_dtype_code */
  uint8_t bits;
  uint16_t lanes;
} dmattn_dtype;

typedef struct dmattn_tensor {
  void* data;
  dmattn_device device;
  int32_t ndim;
  dmattn_dtype dtype;
  const int64_t* shape;
  const int64_t* strides;
  uint64_t byte_offset;
} dmattn_tensor;

/* ---- Forward: out = softmax(score, over kept keys) @ v, with
 *   score = scale * q.k + bias                      (softcap == 0)
 *   score = softcap * tanh(scale * q.k / softcap) + bias   (softcap > 0; the cap leaves bias alone)
 * A key is kept when the mask keeps it (bool true / float != 0) and, with causal, key j <= query i +
 * (K - Q) (aligned bottom-right). A row with nothing kept gets out = 0 and lse = -inf.
 *
 * Shapes (dense): q (B,Q,H,D); k, v (B,K,H_kv,D), H % H_kv == 0; out like q; lse (B,H,Q) fp32.
 * Shapes (varlen, cu_seqlens_q given): q (total_q,H,D); k, v (total_k,H_kv,D); lse (H,total_q);
 *   cu_seqlens_* int32 (B+1); Q and K below mean max_seqlen_q and max_seqlen_k.
 * Paged KV (block_table given, needs cu_seqlens_k): k, v (num_blocks,page_size,H_kv,D);
 *   block_table int32 (B, max_blocks_per_seq).
 * mask, bias: 4-D, each axis full or 1: (B|1, H|H_kv|1, Q|1, K|1). mask dtype bool or q's dtype;
 *   bias q's dtype. q, k, v, out fp16 or bf16, last axis contiguous, D % 8 == 0, D <= 256. */
typedef struct dmattn_fwd_args {
  uint32_t struct_size;               /* sizeof(dmattn_fwd_args) */
  const dmattn_tensor* q;
  const dmattn_tensor* k;
  const dmattn_tensor* v;
  const dmattn_tensor* mask;          /* optional (NULL) */
  const dmattn_tensor* bias;          /* optional */
  const dmattn_tensor* out;           /* written */
  const dmattn_tensor* lse;           /* optional, written */
  const dmattn_tensor* cu_seqlens_q;  /* optional: varlen */
  const dmattn_tensor* cu_seqlens_k;  /* optional: varlen; required with block_table */
  const dmattn_tensor* block_table;   /* optional: paged KV */
  int64_t max_seqlen_q;               /* varlen only */
  int64_t max_seqlen_k;               /* varlen only */
  float scale;
  float softcap;                      /* 0 = off */
  int32_t causal;                     /* 0 or 1 */
  void* workspace;                    /* device memory, >= dmattn_fwd_workspace_size bytes */
  size_t workspace_size;
  void* stream;                       /* cudaStream_t; NULL = legacy default stream */
  /* Appended fields: a caller built against an older dmattn.h passes a smaller struct_size and gets
   * them as NULL / 0. */
  void* tile_plan;                    /* optional, with a mask: device memory of >= dmattn_fwd_plan_size
                                       * bytes that receives the schedule of the mask's kept tiles; hand
                                       * it unchanged to the backward (dmattn_bwd_args.tile_plan) */
  size_t tile_plan_size;
} dmattn_fwd_args;

/* ---- Backward: gradients of the forward above. dk, dv are summed over the query heads of a kv
 * group; dbias (optional) comes back in exactly the bias's shape (broadcast axes summed). The
 * mask has no gradient. deterministic = 1 makes dq, dk, dv, dbias bitwise reproducible. */
typedef struct dmattn_bwd_args {
  uint32_t struct_size;               /* sizeof(dmattn_bwd_args) */
  const dmattn_tensor* dout;          /* like out */
  const dmattn_tensor* q;
  const dmattn_tensor* k;
  const dmattn_tensor* v;
  const dmattn_tensor* mask;          /* optional */
  const dmattn_tensor* bias;          /* optional */
  const dmattn_tensor* out;           /* the forward's output */
  const dmattn_tensor* lse;           /* the forward's lse */
  const dmattn_tensor* dq;            /* written, like q */
  const dmattn_tensor* dk;            /* written, like k */
  const dmattn_tensor* dv;            /* written, like v */
  const dmattn_tensor* dbias;         /* optional, written, like bias (needs bias) */
  const dmattn_tensor* cu_seqlens_q;
  const dmattn_tensor* cu_seqlens_k;
  const dmattn_tensor* block_table;   /* optional: paged KV (dk, dv then have k's paged shape) */
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;
  float scale;
  float softcap;
  int32_t causal;
  int32_t deterministic;
  void* workspace;
  size_t workspace_size;
  void* stream;
  /* Appended fields (see dmattn_fwd_args). */
  const void* tile_plan;              /* optional: the tile_plan the forward wrote for these same inputs
                                       * (mask, shapes, causal); the backward then walks it instead of
                                       * reading the mask again. Memory from any other call gives wrong
                                       * gradients. NULL: the backward builds it. Unused without a mask. */
  size_t tile_plan_size;
} dmattn_bwd_args;

/* ---- What this build holds. */
#define DMATTN_MAX_LIST 32

typedef enum dmattn_dtype_flag {
  DMATTN_DTYPE_FLAG_FP16 = 1u << 0,
  DMATTN_DTYPE_FLAG_BF16 = 1u << 1
} dmattn_dtype_flag;

typedef struct dmattn_capabilities {
  uint32_t struct_size;               /* caller sets sizeof(dmattn_capabilities) */
  int32_t num_archs;
  int32_t archs[DMATTN_MAX_LIST];     /* compute capabilities with SASS, e.g. 80, 90 */
  int32_t num_families;
  char families[8][16];               /* kernel libraries built, e.g. "sm80", "sm90" */
  int32_t num_head_dims;
  int32_t head_dims[DMATTN_MAX_LIST]; /* head-dim buckets with kernels */
  uint32_t dtypes;                    /* dmattn_dtype_flag bits */
} dmattn_capabilities;

/* ---- Entry points. */
DMATTN_API uint32_t dmattn_abi_version(void);
DMATTN_API const char* dmattn_version_string(void);  /* "major.minor.patch" */
DMATTN_API void dmattn_version(int32_t* major, int32_t* minor, int32_t* patch);
DMATTN_API const char* dmattn_status_name(dmattn_status status);

/* Thread-local message of the last failing call on this thread ("" when none). */
DMATTN_API const char* dmattn_get_last_error(void);

DMATTN_API dmattn_status dmattn_get_capabilities(dmattn_capabilities* caps);
/* The kernel table compiled in, one row per line: "sm80:fwd:bf16:128". Static storage. */
DMATTN_API const char* dmattn_kernel_table(void);

/* SUCCESS when kernels can run on CUDA device `device`; otherwise NO_CUDA_DEVICE,
 * UNSUPPORTED_DEVICE or CUDA_ERROR, with the reason in dmattn_get_last_error(). */
DMATTN_API dmattn_status dmattn_check_device(int32_t device);

DMATTN_API dmattn_status dmattn_fwd_workspace_size(const dmattn_fwd_args* args, size_t* bytes);
DMATTN_API dmattn_status dmattn_fwd(const dmattn_fwd_args* args);
/* Bytes of dmattn_fwd_args.tile_plan for these arguments (0 without a mask: no plan). */
DMATTN_API dmattn_status dmattn_fwd_plan_size(const dmattn_fwd_args* args, size_t* bytes);
DMATTN_API dmattn_status dmattn_bwd_workspace_size(const dmattn_bwd_args* args, size_t* bytes);
DMATTN_API dmattn_status dmattn_bwd(const dmattn_bwd_args* args);

#ifdef __cplusplus
}
#endif

#endif /* DMATTN_DMATTN_H_ */
