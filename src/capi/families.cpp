// families.cpp: device -> family library resolution and loading (see families.h).
#include "capi/families.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <map>
#include <mutex>
#include <string>

#include "capi/build_info.h"
#include "capi/error.h"

namespace dmattn {
namespace {

// Compute capability ranges per family. SASS runs only within one major version, so sm_80 code
// serves 8.x; the newest family also carries PTX, which the driver compiles for newer GPUs.
struct FamilyRange {
  int min_cc, max_cc;
  const char* name;
};
constexpr FamilyRange kFamilies[] = {
    {80, 89, "sm80"},
    {90, 99, "sm90"},
    {100, 119, "sm100"},
    {120, 129, "sm120"},
};

bool is_built(const std::string& name) {
  for (const char* f : kBuiltFamilies)
    if (name == f) return true;
  return false;
}

std::string built_list() {
  std::string s;
  for (const char* f : kBuiltFamilies) s += (s.empty() ? "" : ", ") + std::string(f);
  return s.empty() ? "none" : s;
}

std::string cc_str(int cc) { return std::to_string(cc / 10) + "." + std::to_string(cc % 10); }

[[noreturn]] void raise(dmattn_status status, const std::string& message) { throw Failure{status, message}; }

std::string library_dir() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&dmattn_abi_version), &info) == 0 || info.dli_fname == nullptr) return "";
  std::string path = info.dli_fname;
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

const dmattn_family_table* load_family(const std::string& name) {
  static std::mutex mutex;
  static std::map<std::string, const dmattn_family_table*> loaded;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = loaded.find(name);
  if (it != loaded.end()) return it->second;
  const std::string path = library_dir() + "/libdmattn_" + name + ".so";
  void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (handle == nullptr) {
    const char* why = dlerror();
    raise(DMATTN_STATUS_UNSUPPORTED_DEVICE, "cannot load the " + name + " kernel library " + path + ": " + (why ? why : "unknown error"));
  }
  auto get = reinterpret_cast<dmattn_family_get_fn>(dlsym(handle, DMATTN_FAMILY_ENTRY));
  const dmattn_family_table* table = get ? get() : nullptr;
  if (table == nullptr || table->family_abi != DMATTN_FAMILY_ABI)
    raise(DMATTN_STATUS_INTERNAL_ERROR, path + " does not match this libdmattn (family ABI " + std::to_string(DMATTN_FAMILY_ABI) +
                                            "); reinstall flash-dmattn so both come from one build");
  loaded[name] = table;
  return table;
}

}  // namespace

std::string family_name_for_cc(int cc) {
  for (const FamilyRange& f : kFamilies)
    if (cc >= f.min_cc && cc <= f.max_cc) return f.name;
  // Newer than every family we know: the newest family's PTX is the only thing that can run.
  return cc > kFamilies[sizeof(kFamilies) / sizeof(kFamilies[0]) - 1].max_cc ? kFamilies[sizeof(kFamilies) / sizeof(kFamilies[0]) - 1].name : "";
}

const dmattn_family_table* family_for_device(int device, int* cc) {
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    raise(DMATTN_STATUS_NO_CUDA_DEVICE,
          std::string("no CUDA device: ") +
              (err != cudaSuccess ? std::string("cudaGetDeviceCount failed: ") + cudaGetErrorString(err) + " (is the NVIDIA driver installed?)"
                                  : "the driver reports 0 devices"));
  }
  if (device < 0 || device >= count)
    raise(DMATTN_STATUS_INVALID_ARGUMENT, "q: CUDA device " + std::to_string(device) + " does not exist (" + std::to_string(count) + " visible)");
  int major = 0, minor = 0;
  if ((err = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device)) != cudaSuccess ||
      (err = cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device)) != cudaSuccess)
    raise(DMATTN_STATUS_CUDA_ERROR, std::string("cudaDeviceGetAttribute failed: ") + cudaGetErrorString(err));
  *cc = major * 10 + minor;
  const std::string name = family_name_for_cc(*cc);
  if (name.empty())
    raise(DMATTN_STATUS_UNSUPPORTED_DEVICE, "compute capability " + cc_str(*cc) + " is not supported: flash-dmattn needs 8.0 or newer");
  if (!is_built(name))
    raise(DMATTN_STATUS_UNSUPPORTED_DEVICE, "compute capability " + cc_str(*cc) + " needs the " + name +
                                                " kernel library, which this build does not include (built: " + built_list() +
                                                "); rebuild with -DDMATTN_ARCHS=" + std::to_string(*cc));
  const dmattn_family_table* table = load_family(name);

  static std::mutex mutex;
  static std::map<int, std::string> probed;  // device -> "" (ok) or the failure message
  std::lock_guard<std::mutex> lock(mutex);
  auto it = probed.find(device);
  if (it == probed.end()) {
    char msg[512] = {0};
    dmattn_status st = table->probe(device, msg, sizeof(msg));
    it = probed.emplace(device, st == DMATTN_STATUS_SUCCESS ? std::string() : std::string(msg)).first;
  }
  if (!it->second.empty()) raise(DMATTN_STATUS_UNSUPPORTED_DEVICE, it->second);
  return table;
}

}  // namespace dmattn
