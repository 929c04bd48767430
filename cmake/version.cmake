# version.cmake: the project version comes from python/flash_dmattn/_version.py, its one home.
file(STRINGS "${CMAKE_CURRENT_LIST_DIR}/../python/flash_dmattn/_version.py" _dmattn_version_line
     REGEX "^__version__ *= *\"[0-9]+\\.[0-9]+\\.[0-9]+")
string(REGEX MATCH "([0-9]+)\\.([0-9]+)\\.([0-9]+)" DMATTN_VERSION "${_dmattn_version_line}")
if(NOT DMATTN_VERSION)
  message(FATAL_ERROR "cannot read __version__ from python/flash_dmattn/_version.py")
endif()
set(DMATTN_VERSION_MAJOR ${CMAKE_MATCH_1})
set(DMATTN_VERSION_MINOR ${CMAKE_MATCH_2})
set(DMATTN_VERSION_PATCH ${CMAKE_MATCH_3})
