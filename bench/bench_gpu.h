// Device-side helpers shared by the self-checking benchmarks (kernel_bench, conv_bench): the
// GPU's datasheet peaks (for "% of peak") and the CUDA-event timing loop, so both report
// numbers measured and normalised the same way.
#pragma once
#include <cuda_runtime.h>

#include <functional>
#include <string>

#include "engine/gpu_context.h"

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

// The timing protocol (cs::time_calls, engine/gpu_context.h) on the default stream:
// kWarmup untimed calls, then `samples` samples of R back-to-back calls between two CUDA
// events (enqueued while the stream is held, so host-side cost is not timed), R chosen so that
// one sample lasts about kSampleTargetUs.
constexpr int kWarmup = 3;
constexpr double kSampleTargetUs = 200.0;

using Timing = cs::CallTiming;

inline Timing time_calls(const std::function<void()>& f, int samples) {
  return cs::time_calls(f, 0, samples, kWarmup, kSampleTargetUs);
}

}  // namespace bench
