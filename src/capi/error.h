// error.h: the thread-local last-error message behind dmattn_get_last_error(). Every failing path
// in libdmattn goes through fail(), so a status code always comes with a message.
#pragma once

#include <string>

#include "dmattn/dmattn.h"

namespace dmattn {

// Records the message for this thread and returns `status`, so callers write `return fail(...)`.
dmattn_status fail(dmattn_status status, std::string message);
void clear_error();
const char* last_error();

// Thrown only inside libdmattn (validation); entry points catch it and turn it into a status.
struct Failure {
  dmattn_status status;
  std::string message;
};

}  // namespace dmattn
