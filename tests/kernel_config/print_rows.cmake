# print_rows.cmake: prints a family's kernel-table rows (FAMILY, default sm90) as cmake/kernels.cmake
# makes them, for tests/test_kernel_config.py: cmake [-DNAME=VALUE...] -P print_rows.cmake
cmake_minimum_required(VERSION 3.25)
# CMakeLists.txt caches these as "" unless given: so must a script.
foreach(_var DMATTN_HEAD_DIMS DMATTN_KERNELS)
  if(NOT DEFINED ${_var})
    set(${_var} "")
  endif()
endforeach()
include(${CMAKE_CURRENT_LIST_DIR}/../../cmake/kernels.cmake)
if(NOT DEFINED FAMILY)
  set(FAMILY sm90)
endif()
dmattn_kernel_rows("${FAMILY}" _rows)
message("ROWS=${_rows}")
