// Small device and launch helpers shared by the kernel families (kernels/*.cu).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "engine/cuda_check.h"

namespace kernels {

template <typename T>
__host__ __device__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Blocks for a grid-stride loop over n items: one item per thread up to a cap, beyond which
// each thread loops. 4096 blocks of 256 threads keep every SM of an H100 (132 SMs) busy.
inline int grid_stride_blocks(long n, int block, int max_blocks = 4096) {
  long blocks = ceil_div(n, (long)block);
  if (blocks < 1) blocks = 1;
  return (int)(blocks < max_blocks ? blocks : max_blocks);
}

// The blocks a persistent kernel (one block per SM) launches for `tiles` tiles on the current
// device: one per SM, at most one per tile (the wgmma ping-pong and halo tiles).
inline int persistent_blocks(long long tiles) {
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return (int)std::min<long long>(tiles, std::max(1, sms));
}

// Whether p is 16-byte aligned (the vector loads and cp.async copies need it).
inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Host-side precondition check of a launcher: throws with the launcher's name, so a wrong
// shape fails at the call instead of corrupting memory.
inline void require(bool ok, const char* fn, const char* what) {
  if (!ok) throw std::invalid_argument(std::string(fn) + ": " + what);
}

__device__ __forceinline__ float warp_reduce_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ int warp_reduce_sum(int v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the whole block; every thread gets the result. blockDim.x must be a multiple of 32
// (at most 1024) and every thread of the block must call it (it synchronises). `shared` holds
// 32 floats; it may be reused after the call returns.
__device__ __forceinline__ float block_reduce_sum(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  v = warp_reduce_sum(v);
  __syncthreads();  // `shared` may still be read by a previous call
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  float total = lane < warps ? shared[lane] : 0.0f;
  return warp_reduce_sum(total);
}

// CELU (alpha > 0): x for x > 0, alpha * expm1(x / alpha) otherwise; celu_grad its derivative,
// 1 or exp(x / alpha). Every BN + CELU pass evaluates one of them per value. With libdevice's
// expm1f / expf and an IEEE division (some 35 instructions a value) those passes are bound by
// instructions rather than memory: the H100's kernel_bench times of the evaluation pass
// (docs/results/2026-11-27-h100-gpu-check/call3/kernel_bench.json) are about what ~40
// instructions per value cost on its issue slots, and more than twice what its bytes cost at
// the HBM bandwidth. So the cheap forms: y = x / alpha by __fdividef (2 ulp), exp(y) by __expf
// (a few ulp), expm1(y) by celu_expm1_nonpos. Relative errors stay below 1e-5, far below the
// fp16 rounding of what the passes store (4.9e-4); tests/kernels_gpu_test.cu checks both
// functions on the GPU against double-precision expm1 / exp. (Written without a GPU: the
// speed-up is for the next kernel_bench to show.)

// expm1(y) for y <= 0: near 0 (-1/16 < y) by its Taylor series to y^4 (truncation below 1.3e-7
// relative, and no cancellation), below that by exp(y) - 1 (|exp(y) - 1| > 0.06 there, so a
// few ulp of exp(y) stay below 3e-6 relative). The series' roundings are explicit fmas, so
// every kernel computes the same bits (see kernels/bn_math.cuh); the host build (for tests)
// uses std::exp.
// No branches here or in celu / celu_grad: both forms are computed and one is selected. A
// warp's values lie on both sides of 0 and of the limit, so branches diverged and every lane
// paid for both forms anyway, plus the branching (nvcc compiled these ternaries on expressions
// into branches: two per value). The selected value is computed exactly as before.
constexpr float kCeluSeriesLimit = 0.0625f;
__host__ __device__ inline float celu_expm1_nonpos(float y) {
  float p = fmaf(y, 1.0f / 24.0f, 1.0f / 6.0f);
  p = fmaf(y, p, 0.5f);
  p = fmaf(y, p, 1.0f);
#ifdef __CUDA_ARCH__
  const float series = __fmul_rn(y, p), by_exp = __fsub_rn(__expf(y), 1.0f);
#else
  const float series = y * p, by_exp = std::exp(y) - 1.0f;
#endif
  return y > -kCeluSeriesLimit ? series : by_exp;
}
__device__ __forceinline__ float celu(float x, float alpha) {
  const float negative = __fmul_rn(alpha, celu_expm1_nonpos(__fdividef(x, alpha)));
  return x > 0.0f ? x : negative;
}
// d celu / d x at the CELU input x.
__device__ __forceinline__ float celu_grad(float x, float alpha) {
  const float negative = __expf(__fdividef(x, alpha));
  return x > 0.0f ? 1.0f : negative;
}

__device__ __forceinline__ float2 load_half2(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}
__device__ __forceinline__ void store_half2(__half* p, float a, float b) {
  *reinterpret_cast<__half2*>(p) = __floats2half2_rn(a, b);
}

// 8 consecutive fp16 values as loaded (one 16-byte access; p must be 16-byte aligned), those
// as fp32, both at once, and back rounded to nearest. Loading raw and converting later lets a
// kernel issue several loads before it needs any of them.
__device__ __forceinline__ uint4 load_raw8(const __half* p) { return *reinterpret_cast<const uint4*>(p); }
__device__ __forceinline__ void unpack8(const uint4& u, float (&f)[8]) {
  const __half2* h = reinterpret_cast<const __half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) {
    const float2 t = __half22float2(h[i]);
    f[2 * i] = t.x;
    f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ void load8(const __half* p, float (&f)[8]) { unpack8(load_raw8(p), f); }
__device__ __forceinline__ void store8(__half* p, const float (&f)[8]) {
  uint4 u;
  __half2* h = reinterpret_cast<__half2*>(&u);
#pragma unroll
  for (int i = 0; i < 4; i++) h[i] = __floats2half2_rn(f[2 * i], f[2 * i + 1]);
  *reinterpret_cast<uint4*>(p) = u;
}

}  // namespace kernels
