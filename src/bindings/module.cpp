// module.cpp: the nanobind module flash_dmattn._C, a mechanical binding of the dmattn_* C ABI.
// Tensors arrive through DLPack: through the producer's C exchange table when its type publishes
// one (torch >= 2.10: no Python call, no stream sync, ~0.1 us a tensor), otherwise as capsules or
// objects with __dlpack__. The stream is the caller's integer handle, or None for the producer's
// current stream. The GIL is released around every library call, and status codes become
// ValueError / NotImplementedError / RuntimeError carrying the library's message.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <cstdint>
#include <string>

#include "bindings/dlpack_exchange.h"
#include "dmattn/dmattn.h"

namespace nb = nanobind;

namespace {

// One tensor argument: keeps the imported ndarray alive and exposes it as a dmattn_tensor.
class Tensor {
 public:
  Tensor() = default;
  Tensor(nb::handle h, const char* name) { reset(h, name); }
  void reset(nb::handle h, const char* name) {
    present_ = false;
    exchange_ = nullptr;
    if (h.is_none()) return;
    if (const dlpack_exchange::Api* api = dlpack_exchange::api_for(Py_TYPE(h.ptr()))) {
      // Non-owning view, valid while the caller's object lives (the whole call).
      if (api->dltensor_from_py_object_no_sync(h.ptr(), &t_) != 0) throw nb::python_error();
      present_ = true;
      exchange_ = api;
      return;
    }
    if (!nb::try_cast(h, array_, /*convert=*/false))
      throw nb::type_error((std::string(name) + ": expected a tensor supporting DLPack").c_str());
    present_ = true;
    const int nd = static_cast<int>(array_.ndim());
    if (nd > kMaxDims) throw nb::value_error((std::string(name) + ": more than 8 dimensions").c_str());
    for (int i = 0; i < nd; ++i) {
      shape_[i] = static_cast<int64_t>(array_.shape(i));
      strides_[i] = static_cast<int64_t>(array_.stride(i));
    }
    nb::dlpack::dtype dt = array_.dtype();
    t_.data = array_.data();
    t_.device = {array_.device_type(), array_.device_id()};
    t_.ndim = nd;
    t_.dtype = {dt.code, dt.bits, dt.lanes};
    t_.shape = shape_;
    t_.strides = strides_;
    t_.byte_offset = 0;
  }
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  const dmattn_tensor* get() const { return present_ ? &t_ : nullptr; }
  void* data() const { return present_ ? static_cast<char*>(t_.data) + t_.byte_offset : nullptr; }
  size_t nbytes() const {
    if (!present_) return 0;
    size_t n = (t_.dtype.bits * t_.dtype.lanes + 7) / 8;
    for (int i = 0; i < t_.ndim; ++i) n *= static_cast<size_t>(t_.shape[i]);
    return n;
  }
  // The producer's current stream on this tensor's device, when it came through the exchange table.
  bool current_stream(void** stream) const {
    return exchange_ != nullptr && exchange_->current_work_stream(t_.device.device_type, t_.device.device_id, stream) == 0;
  }

 private:
  static constexpr int kMaxDims = 8;
  nb::ndarray<> array_;
  const dlpack_exchange::Api* exchange_ = nullptr;
  bool present_ = false;
  dmattn_tensor t_{};
  int64_t shape_[kMaxDims] = {0};
  int64_t strides_[kMaxDims] = {0};
};

[[noreturn]] void raise_status(dmattn_status st) {
  std::string msg = std::string(dmattn_get_last_error()) + " [" + dmattn_status_name(st) + "]";
  PyObject* type = PyExc_RuntimeError;
  if (st == DMATTN_STATUS_INVALID_ARGUMENT) type = PyExc_ValueError;
  else if (st == DMATTN_STATUS_NOT_IMPLEMENTED) type = PyExc_NotImplementedError;
  PyErr_SetString(type, msg.c_str());
  throw nb::python_error();
}

// Calls the library without the GIL; the status and its thread-local message stay on this thread.
template <typename Fn>
void call(Fn&& fn) {
  dmattn_status st;
  {
    nb::gil_scoped_release release;
    st = fn();
  }
  if (st != DMATTN_STATUS_SUCCESS) raise_status(st);
}

// An explicit stream handle, or None: the current stream of q's producer (exchange table only).
void* stream_of(nb::handle h, const Tensor& q) {
  if (!h.is_none()) return reinterpret_cast<void*>(nb::cast<uintptr_t>(h));
  void* stream = nullptr;
  if (!q.current_stream(&stream)) {
    if (PyErr_Occurred()) throw nb::python_error();
    throw nb::value_error("stream: None needs tensors whose type publishes __dlpack_c_exchange_api__; pass the stream handle");
  }
  return stream;
}

// The workspace argument is None (no launch: a size query), a tensor, or a callable
// alloc(nbytes) -> tensor that is called only when the library asks for workspace. The callable
// form lets one crossing query, allocate (with the caller's allocator) and launch.
template <typename Args, typename SizeFn>
void bind_workspace(nb::handle ws, Tensor& holder, Args& args, SizeFn size_fn) {
  args.workspace = nullptr;
  args.workspace_size = 0;
  if (ws.is_none()) return;
  if (PyCallable_Check(ws.ptr())) {
    size_t bytes = 0;
    call([&] { return size_fn(&args, &bytes); });
    if (bytes == 0) return;
    holder.reset(ws(bytes), "workspace");
  } else {
    holder.reset(ws, "workspace");
  }
  args.workspace = holder.data();
  args.workspace_size = holder.nbytes();
}

// The caller-held tile plan (a byte tensor, or None).
template <typename Args>
void bind_plan(nb::handle h, Tensor& holder, Args& args) {
  holder.reset(h, "tile_plan");
  args.tile_plan = holder.data();
  args.tile_plan_size = holder.nbytes();
}

struct FwdCall {
  Tensor q, k, v, mask, bias, out, lse, cu_q, cu_k, table, workspace, plan;
  dmattn_fwd_args args{};
  FwdCall(nb::handle q_, nb::handle k_, nb::handle v_, nb::handle mask_, nb::handle bias_, nb::handle out_,
          nb::handle lse_, nb::handle cu_q_, nb::handle cu_k_, nb::handle table_, int64_t max_q, int64_t max_k,
          float scale, float softcap, bool causal, nb::handle ws_, nb::handle stream_, nb::handle plan_ = nb::none())
      : q(q_, "q"), k(k_, "k"), v(v_, "v"), mask(mask_, "mask"), bias(bias_, "bias"), out(out_, "out"),
        lse(lse_, "lse"), cu_q(cu_q_, "cu_seqlens_q"), cu_k(cu_k_, "cu_seqlens_k"), table(table_, "block_table") {
    args.struct_size = sizeof(args);
    args.q = q.get(); args.k = k.get(); args.v = v.get();
    args.mask = mask.get(); args.bias = bias.get(); args.out = out.get(); args.lse = lse.get();
    args.cu_seqlens_q = cu_q.get(); args.cu_seqlens_k = cu_k.get(); args.block_table = table.get();
    args.max_seqlen_q = max_q; args.max_seqlen_k = max_k;
    args.scale = scale; args.softcap = softcap; args.causal = causal ? 1 : 0;
    args.stream = stream_of(stream_, q);
    bind_plan(plan_, plan, args);  // before the workspace: a caller-held plan takes none
    bind_workspace(ws_, workspace, args, dmattn_fwd_workspace_size);
  }
};

struct BwdCall {
  Tensor dout, q, k, v, mask, bias, out, lse, dq, dk, dv, dbias, cu_q, cu_k, table, workspace, plan;
  dmattn_bwd_args args{};
  BwdCall(nb::handle dout_, nb::handle q_, nb::handle k_, nb::handle v_, nb::handle mask_, nb::handle bias_,
          nb::handle out_, nb::handle lse_, nb::handle dq_, nb::handle dk_, nb::handle dv_, nb::handle dbias_,
          nb::handle cu_q_, nb::handle cu_k_, nb::handle table_, int64_t max_q, int64_t max_k, float scale,
          float softcap, bool causal, bool deterministic, nb::handle ws_, nb::handle stream_,
          nb::handle plan_ = nb::none())
      : dout(dout_, "dout"), q(q_, "q"), k(k_, "k"), v(v_, "v"), mask(mask_, "mask"), bias(bias_, "bias"),
        out(out_, "out"), lse(lse_, "lse"), dq(dq_, "dq"), dk(dk_, "dk"), dv(dv_, "dv"), dbias(dbias_, "dbias"),
        cu_q(cu_q_, "cu_seqlens_q"), cu_k(cu_k_, "cu_seqlens_k"), table(table_, "block_table") {
    args.struct_size = sizeof(args);
    args.dout = dout.get(); args.q = q.get(); args.k = k.get(); args.v = v.get();
    args.mask = mask.get(); args.bias = bias.get(); args.out = out.get(); args.lse = lse.get();
    args.dq = dq.get(); args.dk = dk.get(); args.dv = dv.get(); args.dbias = dbias.get();
    args.cu_seqlens_q = cu_q.get(); args.cu_seqlens_k = cu_k.get(); args.block_table = table.get();
    args.max_seqlen_q = max_q; args.max_seqlen_k = max_k;
    args.scale = scale; args.softcap = softcap; args.causal = causal ? 1 : 0;
    args.deterministic = deterministic ? 1 : 0;
    args.stream = stream_of(stream_, q);
    bind_plan(plan_, plan, args);
    bind_workspace(ws_, workspace, args, dmattn_bwd_workspace_size);
  }
};

void expect_arity(const nb::args& a, size_t n, const char* fn, size_t optional = 0) {
  if (a.size() < n || a.size() > n + optional)
    throw nb::type_error((std::string(fn) + "() takes " + std::to_string(n) +
                          (optional ? " or " + std::to_string(n + optional) : std::string()) +
                          " positional arguments, got " + std::to_string(a.size())).c_str());
}
// Trailing optional positional argument i, or None.
nb::handle optional_arg(const nb::args& a, size_t i) { return i < a.size() ? a[i] : nb::handle(Py_None); }
float f32(nb::handle h) { return nb::cast<float>(h); }
int64_t i64(nb::handle h) { return nb::cast<int64_t>(h); }
bool flag(nb::handle h) { return nb::cast<bool>(h); }

size_t fwd_workspace(FwdCall& c) {
  size_t bytes = 0;
  call([&] { return dmattn_fwd_workspace_size(&c.args, &bytes); });
  return bytes;
}

size_t bwd_workspace(BwdCall& c) {
  size_t bytes = 0;
  call([&] { return dmattn_bwd_workspace_size(&c.args, &bytes); });
  return bytes;
}

nb::dict info() {
  dmattn_capabilities caps{};
  caps.struct_size = sizeof(caps);
  call([&] { return dmattn_get_capabilities(&caps); });
  nb::list archs, families, head_dims, dtypes, kernels;
  for (int i = 0; i < caps.num_archs; ++i) archs.append(caps.archs[i]);
  for (int i = 0; i < caps.num_families; ++i) families.append(std::string(caps.families[i]));
  for (int i = 0; i < caps.num_head_dims; ++i) head_dims.append(caps.head_dims[i]);
  if (caps.dtypes & DMATTN_DTYPE_FLAG_FP16) dtypes.append("float16");
  if (caps.dtypes & DMATTN_DTYPE_FLAG_BF16) dtypes.append("bfloat16");
  std::string table = dmattn_kernel_table();
  size_t start = 0;
  while (start < table.size()) {
    size_t end = table.find('\n', start);
    if (end == std::string::npos) end = table.size();
    if (end > start) kernels.append(table.substr(start, end - start));
    start = end + 1;
  }
  nb::dict d;
  d["version"] = std::string(dmattn_version_string());
  d["abi_version"] = dmattn_abi_version();
  d["archs"] = archs;
  d["families"] = families;
  d["head_dims"] = head_dims;
  d["dtypes"] = dtypes;
  d["kernels"] = kernels;
  return d;
}

nb::object device_unavailable_reason(int32_t device) {
  dmattn_status st;
  {
    nb::gil_scoped_release release;
    st = dmattn_check_device(device);
  }
  if (st == DMATTN_STATUS_SUCCESS) return nb::none();
  return nb::str((std::string(dmattn_get_last_error()) + " [" + dmattn_status_name(st) + "]").c_str());
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flash-dmattn's binding of the libdmattn C ABI (internal: use flash_dmattn.backends.cuda)";
  m.def("version", [] { return std::string(dmattn_version_string()); });
  m.def("abi_version", [] { return dmattn_abi_version(); });
  m.def("info", &info);
  m.def("device_unavailable_reason", &device_unavailable_reason);

  // Hot entries take positional arguments only (nb::args): optional tensors may be None, and the
  // argument order is the one python/flash_dmattn/backends/cuda.py uses.
  m.def("fwd_workspace_size", [](nb::args a) {  // q k v mask bias out lse scale softcap causal
    expect_arity(a, 10, "fwd_workspace_size");
    FwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], nb::none(), nb::none(), nb::none(), 0, 0, f32(a[7]),
              f32(a[8]), flag(a[9]), nb::none(), nb::int_(0));
    return fwd_workspace(c);
  });
  m.def("fwd_plan_size", [](nb::args a) {  // q k v mask bias out lse scale softcap causal
    expect_arity(a, 10, "fwd_plan_size");
    FwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], nb::none(), nb::none(), nb::none(), 0, 0, f32(a[7]),
              f32(a[8]), flag(a[9]), nb::none(), nb::int_(0));
    size_t bytes = 0;
    call([&] { return dmattn_fwd_plan_size(&c.args, &bytes); });
    return bytes;
  });
  m.def("fwd", [](nb::args a) {  // q k v mask bias out lse workspace scale softcap causal stream [tile_plan]
    expect_arity(a, 12, "fwd", 1);
    FwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], nb::none(), nb::none(), nb::none(), 0, 0, f32(a[8]),
              f32(a[9]), flag(a[10]), a[7], a[11], optional_arg(a, 12));
    call([&] { return dmattn_fwd(&c.args); });
  });
  // q k v mask bias out lse cu_q cu_k block_table max_q max_k scale softcap causal [workspace stream]
  m.def("varlen_fwd_workspace_size", [](nb::args a) {
    expect_arity(a, 15, "varlen_fwd_workspace_size");
    FwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], i64(a[10]), i64(a[11]), f32(a[12]),
              f32(a[13]), flag(a[14]), nb::none(), nb::int_(0));
    return fwd_workspace(c);
  });
  m.def("varlen_fwd", [](nb::args a) {
    expect_arity(a, 17, "varlen_fwd");
    FwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], i64(a[10]), i64(a[11]), f32(a[12]),
              f32(a[13]), flag(a[14]), a[15], a[16]);
    call([&] { return dmattn_fwd(&c.args); });
  });
  // dout q k v mask bias out lse dq dk dv dbias scale softcap causal deterministic
  m.def("bwd_workspace_size", [](nb::args a) {
    expect_arity(a, 16, "bwd_workspace_size");
    BwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], nb::none(), nb::none(),
              nb::none(), 0, 0, f32(a[12]), f32(a[13]), flag(a[14]), flag(a[15]), nb::none(), nb::int_(0));
    return bwd_workspace(c);
  });
  // dout q k v mask bias out lse dq dk dv dbias workspace scale softcap causal deterministic stream
  //   [tile_plan]
  m.def("bwd", [](nb::args a) {
    expect_arity(a, 18, "bwd", 1);
    BwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], nb::none(), nb::none(),
              nb::none(), 0, 0, f32(a[13]), f32(a[14]), flag(a[15]), flag(a[16]), a[12], a[17], optional_arg(a, 18));
    call([&] { return dmattn_bwd(&c.args); });
  });
  // dout q k v mask bias out lse dq dk dv dbias cu_q cu_k block_table max_q max_k scale softcap causal
  //   deterministic [workspace stream]
  m.def("varlen_bwd_workspace_size", [](nb::args a) {
    expect_arity(a, 21, "varlen_bwd_workspace_size");
    BwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14],
              i64(a[15]), i64(a[16]), f32(a[17]), f32(a[18]), flag(a[19]), flag(a[20]), nb::none(), nb::int_(0));
    return bwd_workspace(c);
  });
  m.def("varlen_bwd", [](nb::args a) {
    expect_arity(a, 23, "varlen_bwd");
    BwdCall c(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7], a[8], a[9], a[10], a[11], a[12], a[13], a[14],
              i64(a[15]), i64(a[16]), f32(a[17]), f32(a[18]), flag(a[19]), flag(a[20]), a[21], a[22]);
    call([&] { return dmattn_bwd(&c.args); });
  });
}
