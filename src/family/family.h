// family.h: the table each arch-family kernel library (libdmattn_sm80.so, ...) exports to libdmattn.
// libdmattn validates, picks the family for the device's compute capability, dlopens it and calls
// through this table. Both sides are built together, so C++ types cross it; DMATTN_FAMILY_ABI guards
// against a stale library next to a newer libdmattn.
#pragma once

#include <cstddef>
#include <cstdint>

#include "dmattn/dmattn.h"
#include "family/problem.h"

#define DMATTN_FAMILY_ABI 2
#define DMATTN_FAMILY_ENTRY "dmattn_family_get"

extern "C" {

// Failures write a message into (msg, msg_len); libdmattn turns it into the thread's last error.
typedef struct dmattn_family_table {
  uint32_t family_abi;
  const char* name;  // "sm80"
  // SUCCESS when this library holds a kernel image the device can run.
  dmattn_status (*probe)(int32_t device, char* msg, size_t msg_len);
  dmattn_status (*fwd_workspace_size)(const dmattn::FwdProblem*, size_t* bytes, char* msg, size_t msg_len);
  dmattn_status (*fwd)(const dmattn::FwdProblem*, char* msg, size_t msg_len);
  dmattn_status (*bwd_workspace_size)(const dmattn::BwdProblem*, size_t* bytes, char* msg, size_t msg_len);
  dmattn_status (*bwd)(const dmattn::BwdProblem*, char* msg, size_t msg_len);
  // Bytes of the caller-held tile plan of a forward problem (0 without a mask).
  dmattn_status (*fwd_plan_size)(const dmattn::FwdProblem*, size_t* bytes, char* msg, size_t msg_len);
} dmattn_family_table;

typedef const dmattn_family_table* (*dmattn_family_get_fn)(void);

}  // extern "C"
