// GPU optimiser and weight averaging over all parameters in one launch (multi-tensor).
// CPU reference: kernels/ref/optim.h.
//
// Parameters are one flat fp32 array (net/layout.h). Conv weights also have an fp16 copy
// (same offsets, in w_half) that the convolutions read; cuDNN writes their gradients in fp16
// (g_half). Other tensors (BN biases, head) have fp32 gradients (g). The table says which.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace kernels {

constexpr int kMaxTensors = 32;

struct TensorTable {
  int count;
  long offset[kMaxTensors];
  long size[kMaxTensors];
  int group[kMaxTensors];      // 0: weights, 1: BN biases (its own lr and wd)
  int grad_half[kMaxTensors];  // 1: gradient in g_half and fp16 copy in w_half
};

// The learning rate comes from the device: lr_table[step * 2 + group], step = *step_counter,
// so a captured CUDA graph replays with the right schedule; the kernel does not advance the
// counter (advance_step does). Update as ref::sgd_nesterov_step with wd[group].
void sgd_nesterov_multi(float* w, __half* w_half, const float* g, const __half* g_half, float* v,
                        const TensorTable& table, const float* lr_table, const int* step_counter,
                        float wd0, float wd1, float momentum, cudaStream_t stream);

// *step_counter += 1 (one thread; keeps the schedule on the device).
void advance_step(int* step_counter, cudaStream_t stream);

// ema = rho * ema + (1 - rho) * w over n floats.
void ema_update(float* ema, const float* w, long n, float rho, cudaStream_t stream);

// y = (half) x over n floats.
void cast_f32_to_f16(const float* x, __half* y, long n, cudaStream_t stream);

}  // namespace kernels
