# archs.cmake: which compute capabilities to build and how they group into kernel-library families.
#
#   DMATTN_ARCHS  ""        -> the local GPU's compute capability if nvidia-smi reports one, else 80
#                 "all"     -> 80;90;100;120 (one per family: what wheels ship)
#                 "80;90"   -> explicit list (major*10+minor)
#
# Families (one shared library each, loaded by libdmattn at run time):
#   sm80  <- 80 86 87 89   SASS sm_XX (sm_80 code runs on every 8.x GPU)
#   sm90  <- 90            SASS sm_90a (Hopper-only instructions allowed)
#   sm100 <- 100 103 110   SASS sm_XXXf (family-portable Blackwell datacenter code)
#   sm120 <- 120 121       SASS sm_120
# The family holding the newest arch also embeds PTX for it, so newer GPUs still run, where that
# costs no extra compile pass (see dmattn_resolve_archs).

set(DMATTN_ALL_ARCHS 80 90 100 120)

function(dmattn_detect_local_arch out_var)
  set(${out_var} "" PARENT_SCOPE)
  find_program(_nvidia_smi nvidia-smi)
  if(NOT _nvidia_smi)
    return()
  endif()
  execute_process(COMMAND ${_nvidia_smi} --query-gpu=compute_cap --format=csv,noheader
                  OUTPUT_VARIABLE _caps RESULT_VARIABLE _rc ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0 OR _caps STREQUAL "")
    return()
  endif()
  string(REPLACE "\n" ";" _caps "${_caps}")
  set(_archs "")
  foreach(_cap IN LISTS _caps)
    string(STRIP "${_cap}" _cap)
    string(REPLACE "." "" _cap "${_cap}")
    list(APPEND _archs ${_cap})
  endforeach()
  list(REMOVE_DUPLICATES _archs)
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()

function(dmattn_family_of arch out_var)
  if(arch GREATER_EQUAL 80 AND arch LESS 90)
    set(${out_var} sm80 PARENT_SCOPE)
  elseif(arch GREATER_EQUAL 90 AND arch LESS 100)
    set(${out_var} sm90 PARENT_SCOPE)
  elseif(arch GREATER_EQUAL 100 AND arch LESS 120)
    set(${out_var} sm100 PARENT_SCOPE)
  elseif(arch GREATER_EQUAL 120 AND arch LESS 130)
    set(${out_var} sm120 PARENT_SCOPE)
  else()
    message(FATAL_ERROR "DMATTN_ARCHS: compute capability ${arch} is not supported (8.0 to 12.x)")
  endif()
endfunction()

# The -gencode target for one arch's SASS.
function(dmattn_sass_target arch out_var)
  if(arch EQUAL 90)
    set(${out_var} "arch=compute_90a,code=sm_90a" PARENT_SCOPE)
  elseif(arch GREATER_EQUAL 100 AND arch LESS 120)
    set(${out_var} "arch=compute_${arch}f,code=sm_${arch}f" PARENT_SCOPE)
  else()
    set(${out_var} "arch=compute_${arch},code=sm_${arch}" PARENT_SCOPE)
  endif()
endfunction()

# Resolves DMATTN_ARCHS into:
#   DMATTN_BUILT_ARCHS              sorted list of archs
#   DMATTN_BUILT_FAMILIES           families to build, in arch order
#   DMATTN_GENCODE_<family>         list of "-gencode=..." flags for that family's library
function(dmattn_resolve_archs)
  set(_archs "${DMATTN_ARCHS}")
  if(_archs STREQUAL "")
    dmattn_detect_local_arch(_archs)
    if(_archs STREQUAL "")
      set(_archs 80)
      message(STATUS "dmattn: no local GPU found; building the default arch 80 (set DMATTN_ARCHS to choose)")
    else()
      message(STATUS "dmattn: building for the local GPU's arch ${_archs}")
    endif()
  elseif(_archs STREQUAL "all")
    set(_archs ${DMATTN_ALL_ARCHS})
  endif()
  string(REPLACE "," ";" _archs "${_archs}")
  list(REMOVE_DUPLICATES _archs)
  list(SORT _archs COMPARE NATURAL)
  set(_families "")
  foreach(_arch IN LISTS _archs)
    if(NOT _arch MATCHES "^[0-9]+$")
      message(FATAL_ERROR "DMATTN_ARCHS: '${_arch}' is not a compute capability like 80 or 90")
    endif()
    dmattn_family_of(${_arch} _family)
    list(APPEND _families ${_family})
    dmattn_sass_target(${_arch} _target)
    list(APPEND _gencode_${_family} "-gencode=${_target}")
  endforeach()
  list(REMOVE_DUPLICATES _families)
  # PTX of the newest arch (plain compute_XX, portable forward) in the newest family's library, for
  # GPUs newer than every family (families.cpp sends them to sm120). Only where that arch's SASS
  # comes from plain compute_XX too (80, 120; a wheel's all-arch build ends with 120): then the PTX
  # shares the compile's front-end pass. Behind sm_90a or sm_100f it would take a second pass of
  # cicc per unit, about 45% of a unit's time (benchmarks/results/2026-12-06-cpu-build-units), for
  # PTX that only a GPU of the same family but none of its SASS targets could load.
  list(GET _archs -1 _newest)
  list(GET _families -1 _newest_family)
  dmattn_sass_target(${_newest} _newest_target)
  if(_newest_target STREQUAL "arch=compute_${_newest},code=sm_${_newest}")
    list(APPEND _gencode_${_newest_family} "-gencode=arch=compute_${_newest},code=compute_${_newest}")
  endif()
  set(DMATTN_BUILT_ARCHS "${_archs}" PARENT_SCOPE)
  set(DMATTN_BUILT_FAMILIES "${_families}" PARENT_SCOPE)
  foreach(_family IN LISTS _families)
    set(DMATTN_GENCODE_${_family} "${_gencode_${_family}}" PARENT_SCOPE)
  endforeach()
endfunction()
