// GPU head: maxpool 4x4 (4x4 -> 1x1), linear C -> 10 without bias, times scale.
// Loss: softmax cross-entropy with label smoothing, forward and backward in one kernel.
// CPU references: kernels/ref/pool.h, linear.h, elementwise.h (scale), loss.h.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kernels {

// x [N][4][4][C] fp16 -> feat [N][C] fp32 (max over the 16 pixels), logits [N][10] fp32 =
// scale * feat W^T, w [10][C] fp32. When accumulate, logits += (for the TTA average).
void head_forward(const __half* x, const float* w, float* feat, float* logits, int N, int C,
                  float scale, bool accumulate, cudaStream_t stream);

// dlogits [N][10] -> dx [N][4][4][C] fp16 (to the max position, first on ties), dw [10][C] fp32
// (overwritten).
void head_backward(const __half* x, const float* feat, const float* w, const float* dlogits,
                   __half* dx, float* dw, int N, int C, float scale, cudaStream_t stream);

// loss_sum (device scalar, fp32) = sum over the batch of the smoothed cross-entropy;
// dlogits [N][K] (may be null) as ref::xent_smooth_forward_backward; correct (device int, may
// be null) = number of argmax hits. All outputs overwritten.
void xent_smooth_forward_backward(const float* logits, const uint8_t* labels, int N, int K,
                                  float smoothing, float* dlogits, float* loss_sum, int* correct,
                                  cudaStream_t stream);

}  // namespace kernels
