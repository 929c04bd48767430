// error.cpp: thread-local storage for the last error message.
#include "capi/error.h"

namespace dmattn {
namespace {
thread_local std::string g_last_error;
}

dmattn_status fail(dmattn_status status, std::string message) {
  g_last_error = std::move(message);
  return status;
}

void clear_error() { g_last_error.clear(); }

const char* last_error() { return g_last_error.c_str(); }

}  // namespace dmattn
