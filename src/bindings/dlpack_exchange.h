// dlpack_exchange.h: the C function table that DLPack >= 1.2 producers (torch >= 2.10 among them)
// publish as a "dlpack_exchange_api" capsule on their tensor type (__dlpack_c_exchange_api__).
// It fills a non-owning DLTensor from a Python tensor and reports the producer's current stream,
// each in tens of nanoseconds, without Python-level __dlpack__ calls or stream synchronization.
// Declared here from the DLPack specification; dmattn_tensor has DLTensor's layout.
#pragma once

#include <Python.h>

#include <cstdint>

#include "dmattn/dmattn.h"

namespace dlpack_exchange {

struct Version {
  uint32_t major;
  uint32_t minor;
};

struct Header {
  Version version;
  Header* prev_api;
};

// Only the entries flash-dmattn calls have real signatures; the others keep their slots.
struct Api {
  Header header;
  void* managed_tensor_allocator;
  void* managed_tensor_from_py_object_no_sync;
  void* managed_tensor_to_py_object_no_sync;
  int (*dltensor_from_py_object_no_sync)(void* py_object, dmattn_tensor* out);  // 0 ok, -1 + Python error
  int (*current_work_stream)(int32_t device_type, int32_t device_id, void** out_stream);
};

constexpr uint32_t kSupportedMajor = 1;

// The table for `type`, or nullptr when the type publishes none (or an incompatible one). The
// answer is cached per type; clears any Python error the lookup raised.
inline const Api* api_for(PyTypeObject* type) {
  static PyTypeObject* cached_type = nullptr;
  static const Api* cached_api = nullptr;
  if (type == cached_type) return cached_api;
  const Api* api = nullptr;
  PyObject* capsule = PyObject_GetAttrString(reinterpret_cast<PyObject*>(type), "__dlpack_c_exchange_api__");
  if (capsule != nullptr && PyCapsule_CheckExact(capsule)) {
    auto* candidate = static_cast<const Api*>(PyCapsule_GetPointer(capsule, "dlpack_exchange_api"));
    // Walk back to a version we understand; the table is static in the producer, so the pointer
    // stays valid for the life of the process.
    for (const Header* h = candidate ? &candidate->header : nullptr; h != nullptr; h = h->prev_api) {
      if (h->version.major == kSupportedMajor && h->version.minor >= 2) {
        api = reinterpret_cast<const Api*>(h);
        break;
      }
    }
  }
  Py_XDECREF(capsule);
  PyErr_Clear();
  if (api != nullptr && (api->dltensor_from_py_object_no_sync == nullptr || api->current_work_stream == nullptr))
    api = nullptr;
  cached_type = type;
  cached_api = api;
  return api;
}

}  // namespace dlpack_exchange
