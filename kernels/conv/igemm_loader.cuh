// The forward implicit-GEMM kernels' shared pieces (device code, included by
// kernels/conv/implicit_gemm.cu and kernels/conv/wgmma_conv.cu): the kernel parameters and
// the cp.async loader that gathers an A slice (implicit im2col of x) and a B slice (filter
// rows) into a pipeline stage. The kernels differ only in where a (row, 16-byte chunk) of a
// stage lives in shared memory, which a Layout policy gives:
//   static uint32_t Layout::a_dst(uint32_t stage, int row, int chunk)
//   static uint32_t Layout::b_dst(uint32_t stage, int row, int chunk)
// (shared-memory byte addresses; padded rows for mma.sync, the 128-byte swizzle for wgmma).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/ptx_sm80.cuh"

namespace kernels {
namespace igemm_detail {

struct IgemmParams {
  const __half* x;  // [N][H][W][C]
  const __half* w;  // [K][R][R][C] = B^T, [K][Kg]
  __half* y;        // [N][H][W][K] = [M][K]; with the pool epilogue [N][H/2][W/2][K] = [M/4][K]
  uint8_t* argmax;  // pool epilogue only, may be null: [M/4][K]
  float* partials;  // stats only: [2][gridDim.y][K] (sums, then sums of squares)
  int H, W, C, K, R, pad;
  int M;   // N * H * W
  int Kg;  // R * R * C
};

// The forward kernels' shape rules (kernels/conv/implicit_gemm.cuh: positive sizes, R odd,
// C % 8 == 0, K % 8 == 0, every tensor below 2^31 elements); std::invalid_argument naming fn.
void require_igemm_shape(const char* fn, const ConvDesc& d);
// Those, plus non-null 16-byte aligned x, w, y and ceil(N*H*W / block_m) <= 65535 (grid y);
// then the kernel parameters (argmax and partials null).
IgemmParams make_igemm_params(const char* fn, const __half* x, const __half* w, __half* y,
                              const ConvDesc& d, int block_m);

// Copies one BlockK slice of A and of B into a pipeline stage. Each thread owns a fixed 16-byte
// chunk column (so one FilterTap serves all its A rows) and kARows / kBRows rows; the output
// pixel of each A row is decoded once, at construction. T provides kChunksK (chunks per row
// of a slice), kRowStep (rows per loader pass), kARows, kBRows and kBlockK.
template <class T, class Layout>
struct TileLoader {
  int chunk, row0;
  int k;          // first GEMM column of this thread's chunk in the next slice
  FilterTap tap;  // the filter tap of column k
  int a_m[T::kARows], a_oh[T::kARows], a_ow[T::kARows];
  bool a_ok[T::kARows];
  int b_off[T::kBRows];  // offset of filter row n in w (n * Kg)
  bool b_ok[T::kBRows];

  __device__ TileLoader(const IgemmParams& p, int m0, int n0) {
    chunk = threadIdx.x % T::kChunksK;
    row0 = threadIdx.x / T::kChunksK;
    k = chunk * 8;
    tap.init(k, p.C, p.R);
#pragma unroll
    for (int i = 0; i < T::kARows; i++) {
      const int m = m0 + row0 + i * T::kRowStep;
      a_ok[i] = m < p.M;
      a_m[i] = a_ok[i] ? m : 0;
      a_ow[i] = a_m[i] % p.W;
      a_oh[i] = (a_m[i] / p.W) % p.H;
    }
#pragma unroll
    for (int i = 0; i < T::kBRows; i++) {
      const int n = n0 + row0 + i * T::kRowStep;
      b_ok[i] = n < p.K;
      b_off[i] = b_ok[i] ? n * p.Kg : 0;
    }
  }

  // Issues the copies of the next slice into the stage at shared-memory address `stage` and
  // steps to the slice after. Out-of-image taps, rows past M or K and columns past Kg are
  // zero-filled (Kg % 8 == 0: a chunk is wholly inside or wholly past the end).
  __device__ void load(const IgemmParams& p, uint32_t stage) {
    const bool k_ok = k < p.Kg;
#pragma unroll
    for (int i = 0; i < T::kARows; i++) {
      const int off = (a_ok[i] && k_ok) ? a_offset(a_m[i], a_oh[i], a_ow[i], tap, p.H, p.W, p.C, p.pad) : -1;
      ptx::cp_async_16(Layout::a_dst(stage, row0 + i * T::kRowStep, chunk), p.x + (off >= 0 ? off : 0), off >= 0);
    }
#pragma unroll
    for (int i = 0; i < T::kBRows; i++) {
      const bool ok = b_ok[i] && k_ok;
      ptx::cp_async_16(Layout::b_dst(stage, row0 + i * T::kRowStep, chunk), p.w + (ok ? b_off[i] + k : 0), ok);
    }
    k += T::kBlockK;
    tap.advance(T::kBlockK, p.C, p.R);
  }
};

}  // namespace igemm_detail
}  // namespace kernels
