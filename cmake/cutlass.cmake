# cutlass.cmake: finds the CUTLASS/CuTe headers. Order:
#   1. -DCUTLASS_DIR=<dir> or the CUTLASS_DIR environment variable (a CUTLASS source root or its include/)
#   2. the nvidia-cutlass Python package (headers under cutlass_library/source/include)
# Sets CUTLASS_INCLUDE_DIR or stops with an error that says how to get them.

function(dmattn_find_cutlass)
  set(_candidates "")
  if(CUTLASS_DIR)
    list(APPEND _candidates "${CUTLASS_DIR}" "${CUTLASS_DIR}/include")
  elseif(DEFINED ENV{CUTLASS_DIR})
    list(APPEND _candidates "$ENV{CUTLASS_DIR}" "$ENV{CUTLASS_DIR}/include")
  else()
    if(Python_EXECUTABLE)
      # find_spec locates the package without importing it (its imports need cuda-python).
      execute_process(
        COMMAND "${Python_EXECUTABLE}" -c
                "import importlib.util, pathlib; s = importlib.util.find_spec('cutlass_library'); print(pathlib.Path(s.origin).parent / 'source' / 'include' if s else '')"
        OUTPUT_VARIABLE _py_include OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
      if(_py_include)
        list(APPEND _candidates "${_py_include}")
      endif()
    endif()
  endif()
  foreach(_dir IN LISTS _candidates)
    if(EXISTS "${_dir}/cute/tensor.hpp" AND EXISTS "${_dir}/cutlass/cutlass.h")
      file(REAL_PATH "${_dir}" _dir)
      set(CUTLASS_INCLUDE_DIR "${_dir}" CACHE PATH "CUTLASS/CuTe include directory" FORCE)
      message(STATUS "dmattn: CUTLASS headers: ${_dir}")
      return()
    endif()
  endforeach()
  message(FATAL_ERROR
    "dmattn: CUTLASS headers not found (looked in: ${_candidates}).\n"
    "Install them with `pip install nvidia-cutlass` (a normal `pip install .` does this through "
    "pyproject.toml's build requirements), or pass -DCUTLASS_DIR=<CUTLASS source root>. "
    "To build without CUDA at all, pass -DDMATTN_CUDA=OFF.")
endfunction()
