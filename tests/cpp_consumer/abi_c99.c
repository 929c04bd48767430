/* Compiled as strict C99: proves dmattn.h is a C header. */
#include <dmattn/dmattn.h>

unsigned consumer_abi_version_from_c(void) {
  dmattn_fwd_args args = {0};
  args.struct_size = (uint32_t)sizeof(args);
  return dmattn_abi_version() + (args.q == NULL ? 0u : 1u);
}
