// Small helpers shared by the CPU and GPU trainers (net/train_cpu.cpp, net/resnet9_gpu.cu).
#pragma once
#include <chrono>

#include "net/layout.h"

namespace net {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Predicted class of one row of kClasses logits: the first index on ties, like the loss's
// correct count (kernels/ref/loss.h).
inline int argmax10(const float* z) {
  int best = 0;
  for (int k = 1; k < kClasses; ++k)
    if (z[k] > z[best]) best = k;
  return best;
}

}  // namespace net
