#include "engine/gpu_info.h"

#ifdef CS_HAVE_CUDA
#include <cuda_runtime.h>
#endif

namespace cs {

GpuInfo detect_gpu() {
  GpuInfo info;
#ifdef CS_HAVE_CUDA
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    cudaGetLastError();  // clear the sticky error so later CPU work is unaffected
    info.reason = cudaGetErrorString(err);
    return info;
  }
  if (count == 0) {
    info.reason = "no CUDA device found";
    return info;
  }
  cudaDeviceProp prop{};
  err = cudaGetDeviceProperties(&prop, 0);
  if (err != cudaSuccess) {
    info.reason = cudaGetErrorString(err);
    return info;
  }
  info.available = true;
  info.name = prop.name;
  info.sm_count = prop.multiProcessorCount;
  info.cc_major = prop.major;
  info.cc_minor = prop.minor;
  info.mem_gib = (double)prop.totalGlobalMem / (1024.0 * 1024.0 * 1024.0);
#else
  info.reason = "built without CUDA";
#endif
  return info;
}

}  // namespace cs
