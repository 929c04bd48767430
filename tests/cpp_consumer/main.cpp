// Prints what a C++ user sees first: the version, the ABI version, the compiled archs and whether a
// CUDA device can run the kernels (the status name and the library's message when it cannot).
#include <dmattn/dmattn.h>

#include <cstdio>

extern "C" unsigned consumer_abi_version_from_c(void);

int main() {
  std::printf("dmattn version %s abi %u\n", dmattn_version_string(), consumer_abi_version_from_c());
  dmattn_capabilities caps{};
  caps.struct_size = sizeof(caps);
  if (dmattn_get_capabilities(&caps) != DMATTN_STATUS_SUCCESS) {
    std::printf("capabilities failed: %s\n", dmattn_get_last_error());
    return 1;
  }
  std::printf("archs");
  for (int i = 0; i < caps.num_archs; ++i) std::printf(" %d", caps.archs[i]);
  std::printf("\n");
  dmattn_status st = dmattn_check_device(0);
  std::printf("device 0: %s %s\n", dmattn_status_name(st), dmattn_get_last_error());
  return 0;
}
