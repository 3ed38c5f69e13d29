// The register epilogue of the ping-pong wgmma tiles with no shared memory left for an
// epilogue buffer (the 7-stage im2col tile in kernels/conv/wgmma_conv.cu, the 10-stage halo tile
// in kernels/conv/wgmma_halo.cu): a consumer warpgroup's 128 x BlockN tile of fp32 accumulators
// (two m64 tiles, the wgmma D fragment layout of wgmma_detail::acc_coord) to fp16 y straight
// from registers, in 16-byte chunks.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/conv/wgmma_conv.cuh"  // wgmma_detail::quad_send, quad_receive

namespace kernels {
namespace sm90 {

// Per m64 tile j, row half h and group of four 8-column blocks, the lanes of each quad transpose
// their fp16 pairs (wgmma_detail::quad_send / quad_receive: two butterfly stages of two
// shuffles) so that lane q holds block 4 g4 + q of its row whole and stores it as one 16-byte
// chunk: a quad writes 64 contiguous bytes of a row. out_row(row) gives the tile row's output
// row of y [*][K] (a pixel), or a negative value for a row that is not stored (past the last
// pixel, or a halo position in the padding); chunks past K are not stored (K % 8 == 0: a chunk
// is wholly inside or outside). Every lane takes part in the shuffles. acc: kSubM * kBlockN / 2
// registers, m64 tile j's at j * kBlockN / 2; warp: 0..3 in the warpgroup.
template <int kSubM, int kBlockN, class OutRow>
__device__ __forceinline__ void store_acc_direct(const float* acc, __half* y, int K, int n0, int warp, int lane,
                                                 OutRow out_row) {
  static_assert(kBlockN % 32 == 0, "quads of 8-column blocks");
  constexpr int kAccSub = kBlockN / 2;
  const int q = lane & 3;
#pragma unroll
  for (int j = 0; j < kSubM; j++)
#pragma unroll
    for (int h = 0; h < 2; h++) {
      const long long row = out_row(64 * j + 16 * warp + (lane >> 2) + 8 * h);
#pragma unroll
      for (int g4 = 0; g4 < kBlockN / 32; g4++) {
        uint32_t v[4];
#pragma unroll
        for (int i = 0; i < 4; i++) {
          const int e = j * kAccSub + 4 * (4 * g4 + i) + 2 * h;  // acc_coord's register of (block, half)
          const __half2 pair = __floats2half2_rn(acc[e], acc[e + 1]);
          v[i] = *reinterpret_cast<const uint32_t*>(&pair);
        }
#pragma unroll
        for (int m = 1; m <= 2; m *= 2)
#pragma unroll
          for (int k = 0; k < 2; k++)
            wgmma_detail::quad_receive(v, q, m, k,
                                       __shfl_xor_sync(0xffffffffu, wgmma_detail::quad_send(v, q, m, k), m));
        const int col = n0 + 8 * (4 * g4 + q);
        if (row >= 0 && col < K) *reinterpret_cast<uint4*>(y + row * K + col) = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
}

}  // namespace sm90
}  // namespace kernels
