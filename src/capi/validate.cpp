// validate.cpp: argument checks for dmattn_fwd / dmattn_bwd. Messages start with the argument's
// name as the ABI spells it (q, k, v, mask, bias, out, lse, dout, dq, dk, dv, dbias, cu_seqlens_q,
// ...), state the rule, and show what was passed.
#include "capi/validate.h"

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "capi/error.h"

namespace dmattn {
namespace {

constexpr int kMaxHeadDim = 256;
constexpr int kVectorElems = 8;   // 16-byte vectors of 2-byte elements
constexpr int kVectorBytes = 16;

[[noreturn]] void invalid(const std::string& message) {
  throw Failure{DMATTN_STATUS_INVALID_ARGUMENT, message};
}

std::string shape_str(const dmattn_tensor* t) {
  std::ostringstream os;
  os << "(";
  for (int i = 0; i < t->ndim; ++i) os << (i ? ", " : "") << t->shape[i];
  os << (t->ndim == 1 ? ",)" : ")");
  return os.str();
}

std::string dtype_str(dmattn_dtype d) {
  const char* base = "?";
  switch (d.code) {
    case DMATTN_DTYPE_CODE_INT: base = "int"; break;
    case DMATTN_DTYPE_CODE_UINT: base = "uint"; break;
    case DMATTN_DTYPE_CODE_FLOAT: base = "float"; break;
    case DMATTN_DTYPE_CODE_BFLOAT: base = "bfloat"; break;
    case DMATTN_DTYPE_CODE_BOOL: return "bool";
    default: break;
  }
  std::string s = std::string(base) + std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

bool same_dtype(dmattn_dtype a, dmattn_dtype b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

bool is_dtype(dmattn_dtype d, uint8_t code, uint8_t bits) {
  return d.code == code && d.bits == bits && d.lanes == 1;
}

// One argument under inspection: name, descriptor and its (possibly implied) strides.
class Arg {
 public:
  Arg(const char* name, const dmattn_tensor* t) : name_(name), t_(t) {
    if (t_ == nullptr) return;
    if (t_->ndim < 0 || t_->ndim > 8) invalid(std::string(name_) + ": ndim " + std::to_string(t_->ndim) + " is out of range");
    if (t_->ndim > 0 && t_->shape == nullptr) invalid(std::string(name_) + ": shape is NULL");
    strides_.resize(t_->ndim);
    int64_t compact = 1;
    for (int i = t_->ndim - 1; i >= 0; --i) {
      if (t_->shape[i] < 0) invalid(std::string(name_) + ": negative size in shape " + shape_str(t_));
      strides_[i] = t_->strides ? t_->strides[i] : compact;
      compact *= t_->shape[i];
    }
  }

  bool present() const { return t_ != nullptr; }
  const char* name() const { return name_; }
  const dmattn_tensor* tensor() const { return t_; }
  int ndim() const { return t_->ndim; }
  int64_t size(int i) const { return t_->shape[i]; }
  // Stride of axis i, 0 for size-1 axes (they are read as broadcast).
  int64_t stride(int i) const { return t_->shape[i] == 1 ? 0 : strides_[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int i = 0; i < t_->ndim; ++i) n *= t_->shape[i];
    return n;
  }
  dmattn_dtype dtype() const { return t_->dtype; }
  void* data() const {
    return t_->data ? static_cast<char*>(t_->data) + t_->byte_offset : nullptr;
  }
  std::string shape_string() const { return shape_str(t_); }

  void require_present(const char* why = nullptr) const {
    if (t_ == nullptr) invalid(std::string(name_) + ": is required" + (why ? std::string(" ") + why : std::string()));
  }

  void require_ndim(int n, const char* axes) const {
    if (t_->ndim != n)
      invalid(std::string(name_) + ": expected " + std::to_string(n) + " dimensions " + axes + ", got " +
              std::to_string(t_->ndim) + " with shape " + shape_string());
  }

  void require_cuda(const dmattn_device& device) const {
    if (t_->device.device_type != DMATTN_DEVICE_CUDA)
      invalid(std::string(name_) + ": must be a CUDA tensor (device_type " + std::to_string(DMATTN_DEVICE_CUDA) +
              "), got device_type " + std::to_string(t_->device.device_type));
    if (t_->device.device_id != device.device_id)
      invalid(std::string(name_) + ": is on CUDA device " + std::to_string(t_->device.device_id) +
              " but q is on CUDA device " + std::to_string(device.device_id));
  }

  void require_data() const {
    if (numel() > 0 && t_->data == nullptr) invalid(std::string(name_) + ": data pointer is NULL");
  }

  // Strides of axes with size > 1 must be non-negative; write targets must also not overlap.
  void require_nonnegative_strides() const {
    for (int i = 0; i < t_->ndim; ++i)
      if (t_->shape[i] > 1 && strides_[i] < 0)
        invalid(std::string(name_) + ": negative stride " + std::to_string(strides_[i]) + " on axis " + std::to_string(i));
  }

  void require_last_contiguous(const char* hint = "call .contiguous()") const {
    int last = t_->ndim - 1;
    if (t_->shape[last] > 1 && strides_[last] != 1)
      invalid(std::string(name_) + ": last dimension must be contiguous (stride 1), got stride " +
              std::to_string(strides_[last]) + "; " + hint);
  }

  // 16-byte vector loads along the last axis: aligned base and row strides that keep alignment.
  void require_vector_aligned() const {
    auto addr = reinterpret_cast<uintptr_t>(data());
    if (addr % kVectorBytes != 0)
      invalid(std::string(name_) + ": data pointer must be 16-byte aligned (got address ending in 0x" +
              [&] { std::ostringstream os; os << std::hex << (addr & 0xff); return os.str(); }() + ")");
    for (int i = 0; i + 1 < t_->ndim; ++i)
      if (t_->shape[i] > 1 && strides_[i] % kVectorElems != 0)
        invalid(std::string(name_) + ": stride of axis " + std::to_string(i) + " must be a multiple of 8 elements, got " +
                std::to_string(strides_[i]));
  }

  void require_shape(const std::vector<int64_t>& expect, const char* axes) const {
    bool ok = static_cast<int>(expect.size()) == t_->ndim;
    for (int i = 0; ok && i < t_->ndim; ++i) ok = t_->shape[i] == expect[i];
    if (!ok) {
      std::ostringstream os;
      os << name_ << ": expected shape " << axes << " = (";
      for (size_t i = 0; i < expect.size(); ++i) os << (i ? ", " : "") << expect[i];
      os << "), got " << shape_string();
      invalid(os.str());
    }
  }

  // Outputs written by many threads must be laid out without aliasing: compact row-major.
  void require_compact() const {
    if (numel() == 0) return;  // strides of an empty tensor mean nothing
    int64_t expect = 1;
    for (int i = t_->ndim - 1; i >= 0; --i) {
      if (t_->shape[i] > 1 && strides_[i] != expect)
        invalid(std::string(name_) + ": must be contiguous (compact row-major), got stride " + std::to_string(strides_[i]) +
                " on axis " + std::to_string(i));
      expect *= t_->shape[i];
    }
  }

  void require_same_dtype(const Arg& other) const {
    if (!same_dtype(t_->dtype, other.dtype()))
      invalid(std::string(name_) + ": dtype " + dtype_str(t_->dtype) + " differs from " + other.name() + "'s " +
              dtype_str(other.dtype()));
  }

  void require_dtype(uint8_t code, uint8_t bits, const char* what) const {
    if (!is_dtype(t_->dtype, code, bits))
      invalid(std::string(name_) + ": dtype must be " + what + ", got " + dtype_str(t_->dtype));
  }

 private:
  const char* name_;
  const dmattn_tensor* t_;
  std::vector<int64_t> strides_;
};

DType attention_dtype(const Arg& q) {
  if (is_dtype(q.dtype(), DMATTN_DTYPE_CODE_FLOAT, 16)) return DType::kF16;
  if (is_dtype(q.dtype(), DMATTN_DTYPE_CODE_BFLOAT, 16)) return DType::kBF16;
  invalid(std::string(q.name()) + ": dtype must be float16 or bfloat16, got " + dtype_str(q.dtype()));
}

// A q/k/v-like operand: fp16/bf16, on q's device, last axis contiguous, vector-aligned rows.
void check_row_operand(const Arg& a, const Arg& q) {
  a.require_cuda(q.tensor()->device);
  a.require_data();
  a.require_nonnegative_strides();
  a.require_last_contiguous();
  a.require_vector_aligned();
  if (&a != &q) a.require_same_dtype(q);
}

RowView row_view(const Arg& a, bool varlen) {
  RowView r;
  r.data = a.data();
  if (varlen) {  // (total, heads, D)
    r.row_stride = a.stride(0);
    r.head_stride = a.stride(1);
  } else {       // (batch, rows, heads, D)
    r.batch_stride = a.stride(0);
    r.row_stride = a.stride(1);
    r.head_stride = a.stride(2);
  }
  return r;
}

void check_finite_params(float scale, float softcap, int32_t causal) {
  if (!std::isfinite(scale)) invalid("scale: must be finite, got " + std::to_string(scale));
  if (!std::isfinite(softcap) || softcap < 0.f)
    invalid("softcap: must be finite and >= 0 (0 disables it), got " + std::to_string(softcap));
  if (causal != 0 && causal != 1) invalid("causal: must be 0 or 1, got " + std::to_string(causal));
}

// mask / bias / dbias: 4-D (B|1, H|H_kv|1, Q|1, K|1).
ScoreView score_view(const Arg& a, const Extents& s) {
  a.require_ndim(4, "(batch|1, num_heads|num_kv_heads|1, seqlen_q|1, seqlen_k|1)");
  const int64_t expect_b = s.batch, expect_q = s.seqlen_q, expect_k = s.seqlen_k;
  const int64_t b = a.size(0), h = a.size(1), q = a.size(2), k = a.size(3);
  bool ok = (b == expect_b || b == 1) && (h == s.heads || h == s.heads_kv || h == 1) &&
            (q == expect_q || q == 1) && (k == expect_k || k == 1);
  if (!ok) {
    std::ostringstream os;
    os << a.name() << ": shape " << a.shape_string() << " is not a broadcast form of (batch, num_heads, seqlen_q, seqlen_k) = ("
       << expect_b << ", " << s.heads << ", " << expect_q << ", " << expect_k << "): each axis must be its full size or 1"
       << " (the head axis may also be num_kv_heads = " << s.heads_kv << ")";
    invalid(os.str());
  }
  a.require_nonnegative_strides();
  a.require_last_contiguous("make the key axis contiguous, or give it size 1 to broadcast");
  ScoreView v;
  v.data = a.data();
  v.batch_stride = a.stride(0);
  v.head_stride = a.stride(1);
  v.query_stride = a.stride(2);
  v.key_stride = a.stride(3);
  v.head_group = (h == s.heads || h == 1) ? 1 : s.heads / s.heads_kv;
  for (int i = 0; i < 4; ++i) v.shape[i] = static_cast<int32_t>(a.size(i));
  return v;
}

int32_t checked_int32(int64_t value, const char* what) {
  if (value < 0 || value > INT32_MAX) invalid(std::string(what) + ": " + std::to_string(value) + " is out of range");
  return static_cast<int32_t>(value);
}

// Fills shape and checks q/k/v (and paged/varlen metadata). Shared by forward and backward.
struct CommonArgs {
  const dmattn_tensor *q, *k, *v, *mask, *bias, *cu_seqlens_q, *cu_seqlens_k, *block_table;
  int64_t max_seqlen_q, max_seqlen_k;
  float scale, softcap;
  int32_t causal;
};

struct Common {
  DType dtype;
  Extents shape;
  Scoring scoring;
  bool varlen = false;
  dmattn_device device;
};

void check_seqlens(const Arg& cu, const Arg& q, int64_t batch_plus_one) {
  cu.require_ndim(1, "(batch + 1,)");
  cu.require_dtype(DMATTN_DTYPE_CODE_INT, 32, "int32");
  cu.require_cuda(q.tensor()->device);
  cu.require_data();
  cu.require_compact();
  if (batch_plus_one >= 0 && cu.size(0) != batch_plus_one)
    invalid(std::string(cu.name()) + ": has " + std::to_string(cu.size(0)) + " entries but cu_seqlens_q has " +
            std::to_string(batch_plus_one) + "; both are (batch + 1,)");
  if (cu.size(0) < 1) invalid(std::string(cu.name()) + ": must have at least 1 entry (batch + 1)");
}

Common validate_common(const CommonArgs& c) {
  Common out;
  Arg q("q", c.q), k("k", c.k), v("v", c.v);
  q.require_present();
  k.require_present();
  v.require_present();
  Arg cu_q("cu_seqlens_q", c.cu_seqlens_q), cu_k("cu_seqlens_k", c.cu_seqlens_k), table("block_table", c.block_table);
  out.varlen = cu_q.present() || cu_k.present();
  if (out.varlen && !(cu_q.present() && cu_k.present()))
    invalid(std::string(cu_q.present() ? "cu_seqlens_k" : "cu_seqlens_q") +
            ": varlen attention needs both cu_seqlens_q and cu_seqlens_k");
  if (table.present() && !out.varlen) invalid("block_table: paged KV needs cu_seqlens_q and cu_seqlens_k (varlen)");
  const bool paged = table.present();

  out.dtype = attention_dtype(q);
  if (q.tensor()->device.device_type != DMATTN_DEVICE_CUDA)
    invalid(std::string("q: must be a CUDA tensor (device_type ") + std::to_string(DMATTN_DEVICE_CUDA) +
            "), got device_type " + std::to_string(q.tensor()->device.device_type));
  out.device = q.tensor()->device;

  if (out.varlen) {
    q.require_ndim(3, "(total_q, num_heads, head_dim)");
    if (paged) k.require_ndim(4, "(num_blocks, page_size, num_kv_heads, head_dim)");
    else k.require_ndim(3, "(total_k, num_kv_heads, head_dim)");
  } else {
    q.require_ndim(4, "(batch, seqlen_q, num_heads, head_dim)");
    k.require_ndim(4, "(batch, seqlen_k, num_kv_heads, head_dim)");
  }
  v.require_ndim(k.ndim(), "like k");
  for (int i = 0; i < k.ndim(); ++i)
    if (v.size(i) != k.size(i)) invalid("v: shape " + v.shape_string() + " must equal k's shape " + k.shape_string());

  Extents& s = out.shape;
  const int qd = q.ndim();
  s.heads = checked_int32(q.size(qd - 2), "q: num_heads");
  s.head_dim = checked_int32(q.size(qd - 1), "q: head_dim");
  s.heads_kv = checked_int32(k.size(k.ndim() - 2), "k: num_kv_heads");
  if (k.size(k.ndim() - 1) != s.head_dim)
    invalid("k: head_dim " + std::to_string(k.size(k.ndim() - 1)) + " differs from q's head_dim " + std::to_string(s.head_dim));
  if (s.head_dim % kVectorElems != 0 || s.head_dim < kVectorElems || s.head_dim > kMaxHeadDim)
    invalid("q: head_dim must be a multiple of 8 between 8 and 256, got " + std::to_string(s.head_dim));
  if (s.heads_kv == 0 || s.heads % s.heads_kv != 0)
    invalid("k: num_kv_heads (" + std::to_string(s.heads_kv) + ") must divide num_heads (" + std::to_string(s.heads) + ")");

  check_row_operand(q, q);
  check_row_operand(k, q);
  check_row_operand(v, q);

  if (out.varlen) {
    check_seqlens(cu_q, q, -1);
    check_seqlens(cu_k, q, cu_q.size(0));
    s.batch = checked_int32(cu_q.size(0) - 1, "cu_seqlens_q: batch");
    s.seqlen_q = checked_int32(c.max_seqlen_q, "max_seqlen_q");
    s.seqlen_k = checked_int32(c.max_seqlen_k, "max_seqlen_k");
    s.cu_seqlens_q = static_cast<const int32_t*>(cu_q.data());
    s.cu_seqlens_k = static_cast<const int32_t*>(cu_k.data());
    s.total_q = q.size(0);
    s.total_k = paged ? 0 : k.size(0);
    if (paged) {
      table.require_ndim(2, "(batch, max_blocks_per_seq)");
      table.require_dtype(DMATTN_DTYPE_CODE_INT, 32, "int32");
      table.require_cuda(q.tensor()->device);
      table.require_data();
      table.require_last_contiguous();
      if (table.size(0) != s.batch)
        invalid("block_table: first axis " + std::to_string(table.size(0)) + " must equal batch " + std::to_string(s.batch));
      s.block_table = static_cast<const int32_t*>(table.data());
      s.block_table_stride = table.stride(0);
      s.page_size = checked_int32(k.size(1), "k: page_size");
      if (s.page_size == 0) invalid("k: page_size (axis 1) must be > 0 for paged KV");
    }
  } else {
    s.batch = checked_int32(q.size(0), "q: batch");
    s.seqlen_q = checked_int32(q.size(1), "q: seqlen_q");
    s.seqlen_k = checked_int32(k.size(1), "k: seqlen_k");
    if (k.size(0) != q.size(0))
      invalid("k: batch " + std::to_string(k.size(0)) + " differs from q's batch " + std::to_string(q.size(0)));
  }

  check_finite_params(c.scale, c.softcap, c.causal);
  Scoring& sc = out.scoring;
  sc.scale = c.scale;
  sc.softcap = c.softcap;
  sc.causal = c.causal != 0;

  Arg mask("mask", c.mask), bias("bias", c.bias);
  if (mask.present()) {
    if (is_dtype(mask.dtype(), DMATTN_DTYPE_CODE_BOOL, 8)) sc.mask_kind = MaskKind::kBool;
    else if (same_dtype(mask.dtype(), q.dtype())) sc.mask_kind = MaskKind::kSameAsQ;
    else invalid("mask: dtype must be bool or q's dtype (" + dtype_str(q.dtype()) + "), got " + dtype_str(mask.dtype()));
    mask.require_cuda(q.tensor()->device);
    mask.require_data();
    sc.mask = score_view(mask, s);
  }
  if (bias.present()) {
    bias.require_same_dtype(q);
    bias.require_cuda(q.tensor()->device);
    bias.require_data();
    sc.has_bias = true;
    sc.bias = score_view(bias, s);
  }
  return out;
}

void check_output(const Arg& o, const Arg& like, const Arg& q) {
  o.require_present();
  for (int i = 0; i < like.ndim(); ++i) {
    if (o.ndim() != like.ndim() || o.size(i) != like.size(i))
      invalid(std::string(o.name()) + ": shape " + o.shape_string() + " must equal " + like.name() + "'s shape " +
              like.shape_string());
  }
  check_row_operand(o, q);
  // A stride of 0 on an output axis of size > 1 would make threads race on one element.
  for (int i = 0; i < o.ndim(); ++i)
    if (o.size(i) > 1 && o.stride(i) == 0) invalid(std::string(o.name()) + ": output axis " + std::to_string(i) + " has stride 0");
}

void check_lse(const Arg& lse, const Common& c) {
  lse.require_dtype(DMATTN_DTYPE_CODE_FLOAT, 32, "float32");
  lse.require_cuda(c.device);
  lse.require_data();
  const Extents& s = c.shape;
  if (c.varlen) lse.require_shape({s.heads, s.total_q}, "(num_heads, total_q)");
  else lse.require_shape({s.batch, s.heads, s.seqlen_q}, "(batch, num_heads, seqlen_q)");
  lse.require_compact();
}

// struct_size is sizeof(ArgsT), or the size before the appended tile_plan fields (a caller built
// against the older dmattn.h).
template <typename ArgsT>
void check_struct(const ArgsT* args, const char* type_name) {
  if (args == nullptr) invalid(std::string("args: NULL ") + type_name + " pointer");
  if (args->struct_size != sizeof(ArgsT) && args->struct_size != offsetof(ArgsT, tile_plan))
    invalid(std::string("args: struct_size is ") + std::to_string(args->struct_size) + " but this libdmattn expects sizeof(" +
            type_name + ") = " + std::to_string(sizeof(ArgsT)) + "; rebuild against the dmattn.h of this library (ABI " +
            std::to_string(DMATTN_ABI_VERSION) + ")");
}

// The appended tile_plan fields, (NULL, 0) for an older caller's struct.
template <typename ArgsT, typename Plan>
void read_tile_plan(const ArgsT* a, Plan& plan, size_t& size) {
  if (a->struct_size < sizeof(ArgsT)) return;
  if (a->tile_plan == nullptr && a->tile_plan_size > 0) invalid("tile_plan: NULL with tile_plan_size > 0");
  if (a->tile_plan != nullptr && reinterpret_cast<uintptr_t>(a->tile_plan) % 16 != 0)
    invalid("tile_plan: must be 16-byte aligned");
  plan = a->tile_plan;
  size = a->tile_plan_size;
}

Launch launch_of(const Common& c, void* stream, void* workspace, size_t workspace_size) {
  Launch l;
  l.device = c.device.device_id;
  l.stream = stream;
  l.workspace = workspace;
  l.workspace_size = workspace_size;
  return l;
}

}  // namespace

FwdProblem validate_fwd(const dmattn_fwd_args* a) {
  check_struct(a, "dmattn_fwd_args");
  Common c = validate_common({a->q, a->k, a->v, a->mask, a->bias, a->cu_seqlens_q, a->cu_seqlens_k, a->block_table,
                              a->max_seqlen_q, a->max_seqlen_k, a->scale, a->softcap, a->causal});
  Arg q("q", a->q), out("out", a->out), lse("lse", a->lse);
  check_output(out, q, q);
  FwdProblem p;
  p.dtype = c.dtype;
  p.shape = c.shape;
  p.scoring = c.scoring;
  p.q = row_view(q, c.varlen);
  p.k = row_view(Arg("k", a->k), c.varlen && a->block_table == nullptr);
  p.v = row_view(Arg("v", a->v), c.varlen && a->block_table == nullptr);
  p.out = row_view(out, c.varlen);
  if (lse.present()) {
    check_lse(lse, c);
    p.lse = static_cast<float*>(lse.data());
  }
  p.nothing_to_write = out.numel() == 0;
  read_tile_plan(a, p.tile_plan, p.tile_plan_size);
  if (a->workspace_size > 0 && a->workspace == nullptr) invalid("workspace: NULL with workspace_size > 0");
  p.launch = launch_of(c, a->stream, a->workspace, a->workspace_size);
  return p;
}

BwdProblem validate_bwd(const dmattn_bwd_args* a) {
  check_struct(a, "dmattn_bwd_args");
  Common c = validate_common({a->q, a->k, a->v, a->mask, a->bias, a->cu_seqlens_q, a->cu_seqlens_k, a->block_table,
                              a->max_seqlen_q, a->max_seqlen_k, a->scale, a->softcap, a->causal});
  Arg q("q", a->q), k("k", a->k), v("v", a->v), out("out", a->out), dout("dout", a->dout), lse("lse", a->lse);
  Arg dq("dq", a->dq), dk("dk", a->dk), dv("dv", a->dv), dbias("dbias", a->dbias), bias("bias", a->bias);
  out.require_present();
  check_output(out, q, q);
  dout.require_present();
  check_output(dout, q, q);
  check_output(dq, q, q);
  check_output(dk, k, q);
  check_output(dv, v, q);
  lse.require_present("(the forward's log-sum-exp)");
  check_lse(lse, c);
  if (a->deterministic != 0 && a->deterministic != 1)
    invalid("deterministic: must be 0 or 1, got " + std::to_string(a->deterministic));

  BwdProblem p;
  p.dtype = c.dtype;
  p.shape = c.shape;
  p.scoring = c.scoring;
  const bool kv_rows = c.varlen && a->block_table == nullptr;  // paged k/v are (blocks, page, H_kv, D)
  p.q = row_view(q, c.varlen);
  p.k = row_view(k, kv_rows);
  p.v = row_view(v, kv_rows);
  p.out = row_view(out, c.varlen);
  p.dout = row_view(dout, c.varlen);
  p.dq = row_view(dq, c.varlen);
  p.dk = row_view(dk, kv_rows);
  p.dv = row_view(dv, kv_rows);
  p.lse = static_cast<const float*>(lse.data());
  if (dbias.present()) {
    if (!bias.present()) invalid("dbias: given without bias");
    dbias.require_shape({bias.size(0), bias.size(1), bias.size(2), bias.size(3)}, "like bias");
    dbias.require_same_dtype(q);
    dbias.require_cuda(c.device);
    dbias.require_data();
    dbias.require_compact();
    p.has_dbias = true;
    p.dbias = score_view(dbias, c.shape);
  }
  p.deterministic = a->deterministic != 0;
  read_tile_plan(a, p.tile_plan, p.tile_plan_size);
  p.nothing_to_write = dq.numel() == 0 && dk.numel() == 0 && dv.numel() == 0 && (!dbias.present() || dbias.numel() == 0);
  if (a->workspace_size > 0 && a->workspace == nullptr) invalid("workspace: NULL with workspace_size > 0");
  p.launch = launch_of(c, a->stream, a->workspace, a->workspace_size);
  return p;
}

}  // namespace dmattn
