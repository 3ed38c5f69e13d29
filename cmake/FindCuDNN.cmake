# Finds cuDNN: CUDNN_ROOT (variable or environment), the CUDA toolkit directory, or the
# Python wheel nvidia-cudnn-cu13 (site-packages/nvidia/cudnn, as on the GPU machines).
# Sets CUDNN_FOUND, CUDNN_INCLUDE_DIR, CUDNN_LIBRARY.
set(_cudnn_hints)
if(DEFINED CUDNN_ROOT)
  list(APPEND _cudnn_hints ${CUDNN_ROOT})
endif()
if(DEFINED ENV{CUDNN_ROOT})
  list(APPEND _cudnn_hints $ENV{CUDNN_ROOT})
endif()
if(CUDAToolkit_LIBRARY_ROOT)
  list(APPEND _cudnn_hints ${CUDAToolkit_LIBRARY_ROOT})
endif()
find_program(_cs_python3 python3)
if(_cs_python3)
  execute_process(COMMAND ${_cs_python3} -c "import nvidia, os; print(os.path.join(nvidia.__path__[0], 'cudnn'))"
                  OUTPUT_VARIABLE _cudnn_py OUTPUT_STRIP_TRAILING_WHITESPACE ERROR_QUIET)
  if(_cudnn_py)
    list(APPEND _cudnn_hints ${_cudnn_py})
  endif()
endif()
find_path(CUDNN_INCLUDE_DIR cudnn.h HINTS ${_cudnn_hints} ${CUDAToolkit_INCLUDE_DIRS}
          PATH_SUFFIXES include)
find_library(CUDNN_LIBRARY NAMES cudnn libcudnn.so.9 HINTS ${_cudnn_hints} ${CUDAToolkit_LIBRARY_DIR}
             PATH_SUFFIXES lib lib64)
if(CUDNN_INCLUDE_DIR AND CUDNN_LIBRARY)
  set(CUDNN_FOUND ON)
  message(STATUS "cuDNN: ${CUDNN_LIBRARY} (headers ${CUDNN_INCLUDE_DIR})")
else()
  set(CUDNN_FOUND OFF)
endif()
