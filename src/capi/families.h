// families.h: picks and loads the arch-family kernel library for a device (the way cuDNN 9 loads
// its engine libraries): compute capability -> family name -> dlopen libdmattn_<family>.so from
// libdmattn's own directory. Loaded once per family, probed once per device.
#pragma once

#include <string>

#include "family/family.h"

namespace dmattn {

// The family whose kernels serve compute capability `cc` (major*10+minor), or "" when none can.
std::string family_name_for_cc(int cc);

// Throws Failure (NO_CUDA_DEVICE, UNSUPPORTED_DEVICE, CUDA_ERROR, INVALID_ARGUMENT) with a message.
// On success stores the device's compute capability in *cc.
const dmattn_family_table* family_for_device(int device, int* cc);

}  // namespace dmattn
