// GPU detection that works without CUDA compiled in (the CPU build) and without a driver (CI).
#pragma once
#include <string>

namespace cs {

struct GpuInfo {
  bool available = false;
  std::string reason;  // why not, when unavailable (e.g. "CUDA driver version is insufficient")
  std::string name;    // e.g. "NVIDIA H100 80GB HBM3"
  int sm_count = 0, cc_major = 0, cc_minor = 0;
  double mem_gib = 0;
};

// Any error from cudaGetDeviceCount counts as "no GPU".
GpuInfo detect_gpu();

}  // namespace cs
