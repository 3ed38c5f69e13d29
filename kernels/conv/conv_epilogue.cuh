// The store of a conv tile from shared memory to y, shared by the mma.sync and the wgmma
// forward kernels (device code, included by kernels/conv/*.cu), with an optional fused
// BN-backward epilogue for when y is an input gradient that a BN + CELU backward reads next.
//
// The BN-backward sums. In the recipe a conv's input is the output of a BN + CELU (+ max-pool)
// unit, so the input gradient dgrad writes is that unit's output gradient dout. The unit's
// backward (kernels/bn.cuh, pool_bn_celu_backward) first reduces, per BN group and channel,
//   sum(dz) and sum(dz * xhat),  dz = (dout + dout2) * celu'(xhat + bias),
//   xhat = (v - mean) * invstd   (v: the value BN normalised in the forward),
// and only then can it write its dx. Those sums need dout, which this epilogue holds in shared
// memory as it stores it: accumulating them here saves the statistics pass's read of dout (and
// a launch); dout2 and v are read here instead of there. The per-value arithmetic is
// kernels/bn_math.cuh's, so dz and xhat are bitwise the backward's; only the order of the sums
// differs. pool_bn_celu_backward_from_sums then finishes the unit's backward from the sums.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/bn_math.cuh"
#include "kernels/conv/igemm_loader.cuh"

namespace kernels {
namespace igemm_detail {

// Shared memory the BN-backward sums need after sC: fp32 [2][Threads / (BlockN / 8)][BlockN].
template <int BlockN, int Threads>
constexpr int bn_sums_red_bytes() {
  return 2 * (Threads / (BlockN / 8)) * BlockN * 4;
}

// Writes the fp16 tile sC [BlockM][CStride] (rows m0 .., columns n0 ..; rows m >= M and
// columns n >= K are skipped) to p.y in 16-byte chunks: thread tid (of Threads) owns the
// 8-channel chunk column tid % kChunksN and rows tid / kChunksN + i * kSlices, so consecutive
// threads write consecutive chunks of a row (coalesced) and read a row of sC (conflict-free).
// K % 8 == 0: a chunk lies wholly inside or outside [0, K).
//
// kBnSums: also this block's partial BN-backward sums (see the top of this file) over its rows,
// to p.partials[blockIdx.y][n] (sum dz) and p.partials[gridDim.y + blockIdx.y][n]
// (sum dz * xhat): the statistics epilogue's layout, so igemm_stats_reduce adds them per group.
// The block's rows lie in one BN group (p.bn_group_pixels is a multiple of BlockM, or M). Each
// thread sums its rows in row order; its 8 column sums go to red [2][kSlices][BlockN] (fp32,
// must not overlap sC; channels ch*8 + j*4 + 0..3 at j*BlockN/2 + ch*4: consecutive threads
// store consecutive float4s), and after sync() thread c < BlockN adds column c's kSlices
// partials in slice order. Fixed order: deterministic. sync() is a barrier over the Threads
// threads (__syncthreads, or a named barrier when other warps have left).
template <int BlockM, int BlockN, int Threads, int CStride, bool kBnSums, class Sync>
__device__ __forceinline__ void conv_store_tile(const __half* sC, float* red, const IgemmParams& p,
                                                int m0, int n0, int tid, Sync sync) {
  constexpr int kChunksN = BlockN / 8;
  constexpr int kSlices = Threads / kChunksN;
  static_assert(Threads % kChunksN == 0, "store: a fixed chunk column per thread");
  static_assert(BlockM % kSlices == 0, "store: whole passes over the rows");
  static_assert(!kBnSums || Threads >= BlockN, "BN sums: a thread per column for the reduction");
  if constexpr (!kBnSums) {
    // The plain store, the same chunks in the same order as below, written as its own loop:
    // ptxas allocates the forward kernels' registers differently otherwise (the 128 x 128 x 64
    // mma.sync tile spilled).
#pragma unroll
    for (int it = 0; it < BlockM / kSlices; it++) {
      const int idx = it * Threads + tid;
      const int r = idx / kChunksN, m = m0 + r, n = n0 + (idx % kChunksN) * 8;
      if (m < p.M && n < p.K)
        *reinterpret_cast<uint4*>(p.y + (size_t)m * p.K + n) =
            *reinterpret_cast<const uint4*>(sC + r * CStride + (idx % kChunksN) * 8);
    }
    return;
  }
  const int ch = tid % kChunksN, row0 = tid / kChunksN;
  const int n = n0 + ch * 8;
  const bool n_ok = n < p.K;
  float s[8], ss[8], mean[8], invstd[8], bias[8];
  if constexpr (kBnSums) {
#pragma unroll
    for (int e = 0; e < 8; e++) s[e] = ss[e] = mean[e] = invstd[e] = bias[e] = 0.0f;
    if (n_ok) {
      const size_t g = (size_t)(m0 / p.bn_group_pixels) * p.K + n;
#pragma unroll
      for (int e = 0; e < 8; e++) {
        mean[e] = p.bn_mean[g + e];
        invstd[e] = p.bn_invstd[g + e];
        bias[e] = p.bn_bias[n + e];
      }
    }
  }
#pragma unroll
  for (int i = 0; i < BlockM / kSlices; i++) {
    const int r = row0 + i * kSlices, m = m0 + r;
    if (m < p.M && n_ok) {
      const uint4 v = *reinterpret_cast<const uint4*>(sC + r * CStride + ch * 8);
      const size_t off = (size_t)m * p.K + n;
      *reinterpret_cast<uint4*>(p.y + off) = v;
      if constexpr (kBnSums) {
        // d = dout + dout2 from the fp16 values as stored, as the BN backward reads them.
        float d[8], x[8];
        const __half2* h = reinterpret_cast<const __half2*>(&v);
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const float2 t = __half22float2(h[e]);
          d[2 * e] = t.x;
          d[2 * e + 1] = t.y;
        }
        if (p.bn_dout2 != nullptr) {
          float d2[8];
          load8(p.bn_dout2 + off, d2);
#pragma unroll
          for (int e = 0; e < 8; e++) d[e] += d2[e];
        }
        load8(p.bn_in + off, x);
#pragma unroll
        for (int e = 0; e < 8; e++) {
          const float xh = bn_xhat(x[e], mean[e], invstd[e]);
          const float dz = bn_dz(d[e], xh, bias[e], p.bn_alpha);
          s[e] += dz;
          ss[e] += dz * xh;
        }
      }
    }
  }
  if constexpr (kBnSums) {
    constexpr int kHalfN = BlockN / 2;
    float* rs = red + row0 * BlockN + ch * 4;
    float* rss = red + (kSlices + row0) * BlockN + ch * 4;
    *reinterpret_cast<float4*>(rs) = make_float4(s[0], s[1], s[2], s[3]);
    *reinterpret_cast<float4*>(rs + kHalfN) = make_float4(s[4], s[5], s[6], s[7]);
    *reinterpret_cast<float4*>(rss) = make_float4(ss[0], ss[1], ss[2], ss[3]);
    *reinterpret_cast<float4*>(rss + kHalfN) = make_float4(ss[4], ss[5], ss[6], ss[7]);
    sync();
    const int c = tid, nc = n0 + c;
    if (c < BlockN && nc < p.K) {
      const int pos = ((c >> 2) & 1) * kHalfN + (c >> 3) * 4 + (c & 3);
      float sum = 0.0f, sumx = 0.0f;
#pragma unroll
      for (int j = 0; j < kSlices; j++) {
        sum += red[j * BlockN + pos];
        sumx += red[(kSlices + j) * BlockN + pos];
      }
      p.partials[(size_t)blockIdx.y * p.K + nc] = sum;
      p.partials[((size_t)gridDim.y + blockIdx.y) * p.K + nc] = sumx;
    }
  }
}

}  // namespace igemm_detail
}  // namespace kernels
