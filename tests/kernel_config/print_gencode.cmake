# print_gencode.cmake: prints each family's -gencode flags as cmake/archs.cmake resolves DMATTN_ARCHS,
# for tests/test_kernel_config.py: cmake -DDMATTN_ARCHS=... -P print_gencode.cmake
cmake_minimum_required(VERSION 3.25)
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/archs.cmake)
dmattn_resolve_archs()
foreach(_family IN LISTS DMATTN_BUILT_FAMILIES)
  message("GENCODE ${_family}=${DMATTN_GENCODE_${_family}}")
endforeach()
