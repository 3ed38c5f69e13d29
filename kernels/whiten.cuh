// GPU whitening: patch covariance for the filters, and the fixed 3x3 conv 3->27.
// CPU reference: kernels/ref/whiten.h (patch_covariance; the conv is ref::conv_forward).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

namespace kernels {

// Channels of the whitening output as stored on the GPU: 27 filters padded with zeros to 32
// so the following 1x1 conv gets a tensor-core friendly channel count.
constexpr int kWhitenChannelsPadded = 32;

// cov [27][27] (fp32, ordered (c, ky, kx) like ref::patch_covariance) = X^T X / (count - 1) over
// all 3x3 patches (no padding) of x [n][32][32][3] fp16. Overwrites every entry of cov.
// scratch: patch_covariance_scratch_bytes(n) bytes (8-byte aligned, e.g. from the arena) for
// the per-block partial sums, which are added in a fixed order: the result is bitwise
// reproducible (no atomics).
size_t patch_covariance_scratch_bytes(int n);
void patch_covariance(const __half* x, int n, float* cov, void* scratch, cudaStream_t stream);

// y [B][32][32][32] fp16 = conv3x3 pad 1 of x [B][32][32][3] with w [27][3][3][3] fp32 (KRSC),
// channels 27..31 zero. mirror = true reads x mirrored horizontally (test-time augmentation).
// y must be 16-byte aligned (8 channels per store).
void whiten_conv_forward(const __half* x, const float* w, __half* y, int B, bool mirror,
                         cudaStream_t stream);

}  // namespace kernels
