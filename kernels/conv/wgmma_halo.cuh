// The halo tiles' launchers (WgmmaConfig::k128x128x64PpHalo, k128x64x64PpHalo), called by kernels/conv/wgmma_conv.cu,
// whose public launchers check the shape first; users call those (kernels/conv/wgmma_conv.cuh).
// The geometry: wgmma_detail::HaloGeometry there; the design: docs/conv_kernels.md, "The halo
// tile".
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/conv/wgmma_conv.cuh"

namespace kernels {
namespace wgmma_detail {

// y = conv(x, w) with the halo tile of block_n (128 or 64) output channels. The caller has
// checked what conv_forward_wgmma checks for every config (shapes, alignment, the channel and
// image rules of the config, an sm_90a device).
void conv_forward_wgmma_halo(const __half* x, const __half* w, __half* y, const ConvDesc& d, int block_n,
                             cudaStream_t stream);

// The halo kernel's block for block_n output channels: threads, shared memory (bytes, with the
// 1 KiB alignment reserve), B stages; and how many blocks the device keeps resident per SM
// (needs an sm_90a device).
struct HaloTileInfo {
  int threads;
  size_t smem_bytes;
  int b_stages;
};
HaloTileInfo halo_tile_info(int block_n);
int halo_blocks_per_sm(int block_n);

}  // namespace wgmma_detail
}  // namespace kernels
