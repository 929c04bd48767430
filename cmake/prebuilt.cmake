# prebuilt.cmake: reuses the libraries of an earlier build of this project instead of compiling them
# (the CUDA code does not depend on Python: a wheel build per Python links the same libraries).
# DMATTN_PREBUILT_DIR is that build's install prefix, made with DMATTN_BUILD_PYTHON=OFF and
# CMAKE_INSTALL_LIBDIR=lib (ci/build_libraries.sh). Its lib/ (libraries and CMake package) and
# include/ are installed as they are: the package config finds the header relative to itself, and
# lib/ and include/ keep the same relative places inside the wheel.

set(_prefix "${DMATTN_PREBUILT_DIR}")
if(NOT EXISTS "${_prefix}/lib/cmake/dmattn/dmattnConfig.cmake" OR NOT EXISTS "${_prefix}/include/dmattn/dmattn.h")
  message(FATAL_ERROR "DMATTN_PREBUILT_DIR=${_prefix} holds no install of dmattn (lib/cmake/dmattn, include/dmattn); "
                      "make one with ci/build_libraries.sh")
endif()
find_package(dmattn CONFIG REQUIRED PATHS "${_prefix}/lib/cmake/dmattn" NO_DEFAULT_PATH)
file(GLOB _libs "${_prefix}/lib/libdmattn*.so")
message(STATUS "dmattn: reusing the prebuilt libraries in ${_prefix}/lib: ${_libs}")
install(FILES ${_libs} DESTINATION ${DMATTN_INSTALL_LIBDIR})
install(DIRECTORY "${_prefix}/lib/cmake/dmattn/" DESTINATION ${DMATTN_INSTALL_CMAKEDIR})
install(DIRECTORY "${_prefix}/include/dmattn/" DESTINATION ${DMATTN_INSTALL_INCLUDEDIR}/dmattn)
set(DMATTN_LINK_TARGET dmattn::dmattn)
