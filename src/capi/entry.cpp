// entry.cpp: the dmattn_* entry points. Each one validates (validate.cpp), resolves the family for
// the device (families.cpp) and calls it; no exception crosses the ABI and every failure leaves a
// message in the thread's last error.
#include <cstring>
#include <string>

#include "capi/build_info.h"
#include "capi/error.h"
#include "capi/families.h"
#include "capi/validate.h"
#include "dmattn/dmattn.h"

namespace dmattn {
namespace {

constexpr size_t kMsgLen = 1024;

// Runs `body` and turns any escape into a status + message. `body` returns a dmattn_status.
template <typename Body>
dmattn_status guarded(const char* entry, Body&& body) {
  try {
    clear_error();
    return body();
  } catch (const Failure& f) {
    return fail(f.status, f.message);
  } catch (const std::exception& e) {
    return fail(DMATTN_STATUS_INTERNAL_ERROR, std::string(entry) + ": internal error: " + e.what());
  } catch (...) {
    return fail(DMATTN_STATUS_INTERNAL_ERROR, std::string(entry) + ": internal error");
  }
}

dmattn_status from_family(dmattn_status st, const char* msg) {
  return st == DMATTN_STATUS_SUCCESS ? st : fail(st, msg[0] ? msg : dmattn_status_name(st));
}

template <typename Problem>
const dmattn_family_table* resolve(Problem& p) {
  return family_for_device(p.launch.device, &p.launch.compute_capability);
}

// The family table's entries for one direction (forward or backward).
template <typename Problem>
using SizeEntry = dmattn_status (*dmattn_family_table::*)(const Problem*, size_t*, char*, size_t);
template <typename Problem>
using RunEntry = dmattn_status (*dmattn_family_table::*)(const Problem*, char*, size_t);

// validate -> (nothing to write: done) -> family for the device -> a size it answers (workspace, plan).
template <typename Args, typename Problem>
dmattn_status workspace_size(const char* entry, const Args* args, size_t* bytes, Problem (*validate)(const Args*),
                             SizeEntry<Problem> size_entry) {
  return guarded(entry, [&] {
    if (bytes == nullptr) return fail(DMATTN_STATUS_INVALID_ARGUMENT, "bytes: NULL pointer");
    *bytes = 0;
    Problem p = validate(args);
    if (p.nothing_to_write) return DMATTN_STATUS_SUCCESS;
    const dmattn_family_table* family = resolve(p);
    char msg[kMsgLen] = {0};
    return from_family((family->*size_entry)(&p, bytes, msg, sizeof(msg)), msg);
  });
}

// validate -> (nothing to write: done) -> family -> workspace check -> launch.
template <typename Args, typename Problem>
dmattn_status run(const char* entry, const Args* args, Problem (*validate)(const Args*), SizeEntry<Problem> size_entry,
                  RunEntry<Problem> run_entry) {
  return guarded(entry, [&] {
    Problem p = validate(args);
    if (p.nothing_to_write) return DMATTN_STATUS_SUCCESS;
    const dmattn_family_table* family = resolve(p);
    char msg[kMsgLen] = {0};
    size_t need = 0;
    dmattn_status st = (family->*size_entry)(&p, &need, msg, sizeof(msg));
    if (st != DMATTN_STATUS_SUCCESS) return from_family(st, msg);
    if (p.launch.workspace_size < need)
      return fail(DMATTN_STATUS_INSUFFICIENT_WORKSPACE, "workspace: " + std::to_string(p.launch.workspace_size) +
                                                            " bytes given, " + entry + " needs " + std::to_string(need));
    return from_family((family->*run_entry)(&p, msg, sizeof(msg)), msg);
  });
}

}  // namespace
}  // namespace dmattn

using namespace dmattn;

extern "C" {

uint32_t dmattn_abi_version(void) { return DMATTN_ABI_VERSION; }

const char* dmattn_version_string(void) { return kVersionString; }

void dmattn_version(int32_t* major, int32_t* minor, int32_t* patch) {
  if (major) *major = kVersionMajor;
  if (minor) *minor = kVersionMinor;
  if (patch) *patch = kVersionPatch;
}

const char* dmattn_status_name(dmattn_status status) {
  switch (status) {
    case DMATTN_STATUS_SUCCESS: return "DMATTN_STATUS_SUCCESS";
    case DMATTN_STATUS_INVALID_ARGUMENT: return "DMATTN_STATUS_INVALID_ARGUMENT";
    case DMATTN_STATUS_NOT_IMPLEMENTED: return "DMATTN_STATUS_NOT_IMPLEMENTED";
    case DMATTN_STATUS_NO_CUDA_DEVICE: return "DMATTN_STATUS_NO_CUDA_DEVICE";
    case DMATTN_STATUS_UNSUPPORTED_DEVICE: return "DMATTN_STATUS_UNSUPPORTED_DEVICE";
    case DMATTN_STATUS_CUDA_ERROR: return "DMATTN_STATUS_CUDA_ERROR";
    case DMATTN_STATUS_INSUFFICIENT_WORKSPACE: return "DMATTN_STATUS_INSUFFICIENT_WORKSPACE";
    case DMATTN_STATUS_INTERNAL_ERROR: return "DMATTN_STATUS_INTERNAL_ERROR";
  }
  return "DMATTN_STATUS_UNKNOWN";
}

const char* dmattn_get_last_error(void) { return last_error(); }

dmattn_status dmattn_get_capabilities(dmattn_capabilities* caps) {
  return guarded("dmattn_get_capabilities", [&] {
    if (caps == nullptr) return fail(DMATTN_STATUS_INVALID_ARGUMENT, "caps: NULL pointer");
    if (caps->struct_size != sizeof(dmattn_capabilities))
      return fail(DMATTN_STATUS_INVALID_ARGUMENT, "caps: struct_size must be sizeof(dmattn_capabilities) = " +
                                                      std::to_string(sizeof(dmattn_capabilities)));
    std::memset(reinterpret_cast<char*>(caps) + sizeof(caps->struct_size), 0, sizeof(*caps) - sizeof(caps->struct_size));
    for (int a : kBuiltArchs)
      if (a && caps->num_archs < DMATTN_MAX_LIST) caps->archs[caps->num_archs++] = a;
    for (const char* f : kBuiltFamilies)
      if (f && caps->num_families < 8) std::strncpy(caps->families[caps->num_families++], f, 15);
    for (int d : kHeadDims)
      if (d && caps->num_head_dims < DMATTN_MAX_LIST) caps->head_dims[caps->num_head_dims++] = d;
    caps->dtypes = kDtypeFlags;
    return DMATTN_STATUS_SUCCESS;
  });
}

const char* dmattn_kernel_table(void) { return kKernelTable; }

dmattn_status dmattn_check_device(int32_t device) {
  return guarded("dmattn_check_device", [&] {
    int cc = 0;
    family_for_device(device, &cc);
    return DMATTN_STATUS_SUCCESS;
  });
}

dmattn_status dmattn_fwd_workspace_size(const dmattn_fwd_args* args, size_t* bytes) {
  return workspace_size("dmattn_fwd_workspace_size", args, bytes, validate_fwd, &dmattn_family_table::fwd_workspace_size);
}

dmattn_status dmattn_fwd(const dmattn_fwd_args* args) {
  return run("dmattn_fwd", args, validate_fwd, &dmattn_family_table::fwd_workspace_size, &dmattn_family_table::fwd);
}

dmattn_status dmattn_fwd_plan_size(const dmattn_fwd_args* args, size_t* bytes) {
  return workspace_size("dmattn_fwd_plan_size", args, bytes, validate_fwd, &dmattn_family_table::fwd_plan_size);
}

dmattn_status dmattn_bwd_workspace_size(const dmattn_bwd_args* args, size_t* bytes) {
  return workspace_size("dmattn_bwd_workspace_size", args, bytes, validate_bwd, &dmattn_family_table::bwd_workspace_size);
}

dmattn_status dmattn_bwd(const dmattn_bwd_args* args) {
  return run("dmattn_bwd", args, validate_bwd, &dmattn_family_table::bwd_workspace_size, &dmattn_family_table::bwd);
}

}  // extern "C"
