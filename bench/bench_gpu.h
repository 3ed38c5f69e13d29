// Device-side helpers shared by the self-checking benchmarks (kernel_bench, conv_bench): the
// GPU's datasheet peaks (for "% of peak") and the CUDA-event timing loop, so both report
// numbers measured and normalised the same way.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "engine/cuda_check.h"

namespace bench {

// Datasheet peaks of the GPU, read from its name.
struct GpuPeaks {
  double tflops;  // dense fp16 tensor-core peak (fp32 accumulate)
  double tb_s;    // memory bandwidth
  std::string basis;
};

inline GpuPeaks peaks_for(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("H200")) return {989.0, 4.8, "H200 datasheet: 989 TFLOP/s dense fp16, 4.8 TB/s HBM3e"};
  if (has("H100") && (has("PCIe") || has("PCIE")))
    return {756.0, 2.0, "H100 PCIe datasheet: 756 TFLOP/s dense fp16, 2.0 TB/s HBM2e"};
  if (has("H100")) return {989.0, 3.35, "H100 SXM datasheet: 989 TFLOP/s dense fp16, 3.35 TB/s HBM3"};
  if (has("A100")) return {312.0, 2.0, "A100 datasheet: 312 TFLOP/s dense fp16, ~2.0 TB/s HBM2e"};
  return {989.0, 3.35, "unknown GPU: H100 SXM figures used (989 TFLOP/s, 3.35 TB/s)"};
}

// The timing protocol: kWarmup untimed calls, then `samples` samples of R back-to-back calls
// between two CUDA events on the default stream, R chosen so one sample lasts about
// kSampleTargetUs (a single short launch is dominated by launch overhead and event resolution).
constexpr int kWarmup = 3;
constexpr double kSampleTargetUs = 200.0;

struct Timing {
  double median_us = -1, min_us = -1;  // per call
};

inline Timing time_calls(const std::function<void()>& f, int samples) {
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  auto run = [&](int reps) {
    CUDA_CHECK(cudaEventRecord(a, 0));
    for (int i = 0; i < reps; i++) f();
    CUDA_CHECK(cudaEventRecord(b, 0));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return 1000.0 * ms / reps;
  };
  for (int i = 0; i < kWarmup; i++) f();
  CUDA_CHECK(cudaDeviceSynchronize());
  const double one_us = run(1);
  const int reps = (int)std::min(100.0, std::max(1.0, std::ceil(kSampleTargetUs / std::max(one_us, 1e-3))));
  std::vector<double> us(std::max(samples, 1));
  for (double& u : us) u = run(reps);
  std::sort(us.begin(), us.end());
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  return {us[us.size() / 2], us[0]};
}

}  // namespace bench
