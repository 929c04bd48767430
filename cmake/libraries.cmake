# libraries.cmake: compiles the CUDA libraries (one per arch family and libdmattn, the C ABI) and
# installs them with the header and the CMake package dmattn::dmattn. Included by CMakeLists.txt
# unless DMATTN_PREBUILT_DIR names an install of them to reuse (cmake/prebuilt.cmake).

# Every library lands in one folder so libdmattn finds its kernel libraries next to itself in the
# build tree exactly as in an install.
set(CMAKE_LIBRARY_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/lib)

# CMake must not add its own -arch flags: each family library gets explicit -gencode targets.
set(CMAKE_CUDA_ARCHITECTURES OFF)
enable_language(CUDA)
find_package(CUDAToolkit REQUIRED)
# Fatbins compressed for size (nvcc >= 12.8; its default mode compresses about 3.5x less): the
# kernels are decompressed once when a library loads, and wheels must stay under 100 MB.
set(DMATTN_FATBIN_COMPRESSION "size" CACHE STRING "nvcc --compress-mode for the kernel libraries (size, balance, speed, none)")
set(DMATTN_FATBIN_FLAGS "")
if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL 12.8)
  set(DMATTN_FATBIN_FLAGS "--compress-mode=${DMATTN_FATBIN_COMPRESSION}")
endif()
find_package(Python 3.10 COMPONENTS Interpreter)

include(cmake/archs.cmake)
include(cmake/kernels.cmake)
include(cmake/cutlass.cmake)
dmattn_resolve_archs()
dmattn_find_cutlass()
dmattn_kernel_rows("${DMATTN_BUILT_FAMILIES}" DMATTN_KERNEL_ROWS)
dmattn_table_facts("${DMATTN_KERNEL_ROWS}")
list(LENGTH DMATTN_KERNEL_ROWS _row_count)
message(STATUS "dmattn: archs ${DMATTN_BUILT_ARCHS}; families ${DMATTN_BUILT_FAMILIES}; ${_row_count} kernel-table rows")

# ---- Per-arch kernel libraries: libdmattn_<family>.so -----------------------------------------
foreach(_family IN LISTS DMATTN_BUILT_FAMILIES)
  set(_target dmattn_${_family})
  add_library(${_target} SHARED src/sm80/family.cu src/sm80/tile_plan.cu src/sm80/split_kv.cu src/sm80/bwd_support.cu)
  target_include_directories(${_target} PRIVATE src src/include ${CUTLASS_INCLUDE_DIR})
  string(REGEX REPLACE "^sm" "" _family_sm "${_family}")
  target_compile_definitions(${_target} PRIVATE DMATTN_FAMILY_NAME="${_family}" DMATTN_FAMILY_SM=${_family_sm})
  dmattn_stamp_kernels(${_target} ${_family} "${DMATTN_KERNEL_ROWS}")
  target_compile_options(${_target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:${DMATTN_GENCODE_${_family}} ${DMATTN_FATBIN_FLAGS} -O3 --expt-relaxed-constexpr -Xcompiler=-fvisibility=hidden -std=c++17>)
  set_target_properties(${_target} PROPERTIES
    CUDA_ARCHITECTURES OFF
    CUDA_RUNTIME_LIBRARY Static
    CXX_VISIBILITY_PRESET hidden
    CUDA_VISIBILITY_PRESET hidden)
  target_link_options(${_target} PRIVATE
    "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/family_exports.map" "LINKER:--exclude-libs,ALL")
  install(TARGETS ${_target} LIBRARY DESTINATION ${DMATTN_INSTALL_LIBDIR})
endforeach()

# ---- libdmattn: the C ABI ---------------------------------------------------------------------
foreach(_family IN LISTS DMATTN_BUILT_FAMILIES)
  string(APPEND DMATTN_BUILT_FAMILIES_C "\"${_family}\", ")
endforeach()
foreach(_arch IN LISTS DMATTN_BUILT_ARCHS)
  string(APPEND DMATTN_BUILT_ARCHS_C "${_arch}, ")
endforeach()
configure_file(src/capi/build_info.h.in ${CMAKE_BINARY_DIR}/generated/capi/build_info.h @ONLY)

add_library(dmattn SHARED src/capi/entry.cpp src/capi/validate.cpp src/capi/families.cpp src/capi/error.cpp)
target_include_directories(dmattn
  PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/src/include> $<INSTALL_INTERFACE:${DMATTN_INSTALL_INCLUDEDIR}>
  PRIVATE src ${CMAKE_BINARY_DIR}/generated)
# Static CUDA runtime: no libcudart dependency; the driver (libcuda.so.1) is opened at run time.
target_link_libraries(dmattn PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS})
set_target_properties(dmattn PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
target_link_options(dmattn PRIVATE
  "LINKER:--version-script=${CMAKE_CURRENT_SOURCE_DIR}/cmake/exports.map" "LINKER:--exclude-libs,ALL" "LINKER:--no-undefined")
foreach(_family IN LISTS DMATTN_BUILT_FAMILIES)
  add_dependencies(dmattn dmattn_${_family})
endforeach()

# ---- Install + CMake package: find_package(dmattn) -> dmattn::dmattn -------------------------
include(CMakePackageConfigHelpers)
install(TARGETS dmattn EXPORT dmattnTargets LIBRARY DESTINATION ${DMATTN_INSTALL_LIBDIR})
install(FILES src/include/dmattn/dmattn.h DESTINATION ${DMATTN_INSTALL_INCLUDEDIR}/dmattn)
install(EXPORT dmattnTargets NAMESPACE dmattn:: DESTINATION ${DMATTN_INSTALL_CMAKEDIR})
configure_package_config_file(cmake/dmattnConfig.cmake.in ${CMAKE_BINARY_DIR}/dmattnConfig.cmake
  INSTALL_DESTINATION ${DMATTN_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_BINARY_DIR}/dmattnConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/dmattnConfig.cmake ${CMAKE_BINARY_DIR}/dmattnConfigVersion.cmake
  DESTINATION ${DMATTN_INSTALL_CMAKEDIR})
