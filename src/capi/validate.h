// validate.h: turns the ABI's argument structs into checked FwdProblem / BwdProblem descriptions.
// Every rule a kernel relies on (dtype, rank, shape, broadcast form, strides, alignment, device) is
// checked here, once, with a message that names the argument; kernels never re-validate.
#pragma once

#include "dmattn/dmattn.h"
#include "family/problem.h"

namespace dmattn {

// Throw Failure{DMATTN_STATUS_INVALID_ARGUMENT, "<argument>: <what is wrong>"} on bad input.
// The returned problem has no launch.compute_capability yet (filled once the device is known).
FwdProblem validate_fwd(const dmattn_fwd_args* args);
BwdProblem validate_bwd(const dmattn_bwd_args* args);

}  // namespace dmattn
