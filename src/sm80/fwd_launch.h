// fwd_launch.h: the forward launchers the SM80-class family library holds, one per kernel-table row
// (each defined in its own stamped translation unit, src/instantiate/fwd.cu.in).
#pragma once

#include <cutlass/numeric_types.h>

#include "dmattn/dmattn.h"
#include "family/problem.h"

namespace dmattn::sm80 {

template <typename Element, int kHeadDim>
dmattn_status launch_fwd(const FwdProblem& p, char* msg, size_t msg_len);

}  // namespace dmattn::sm80
