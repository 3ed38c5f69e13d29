// The halo tiles' launchers (the configs wgmma_config_halo names), called by kernels/conv/wgmma_conv.cu,
// whose public launchers check the shape first; users call those (kernels/conv/wgmma_conv.cuh).
// The geometry: wgmma_detail::HaloGeometry there; the design: docs/conv_kernels.md, "The halo
// tiles".
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/conv/wgmma_conv.cuh"

namespace kernels {
namespace wgmma_detail {

// A halo tile by its output channels per unit and B stages: 128 x 5 and 64 x 8 (epilogue tiles
// in shared memory), 128 x 10 (stores from registers). Others: std::invalid_argument.
struct HaloTileId {
  int block_n, b_stages;
};

// y = conv(x, w) with that halo tile. The caller has checked what conv_forward_wgmma checks for
// every config (shapes, alignment, the channel and image rules of the config, an sm_90a device).
void conv_forward_wgmma_halo(const __half* x, const __half* w, __half* y, const ConvDesc& d, HaloTileId tile,
                             cudaStream_t stream);

// The halo kernel's block for a tile: threads, shared memory (bytes, with the 1 KiB alignment
// reserve), B stages; and how many blocks the device keeps resident per SM (needs an sm_90a
// device).
struct HaloTileInfo {
  int threads;
  size_t smem_bytes;
  int b_stages;
};
HaloTileInfo halo_tile_info(HaloTileId tile);
int halo_blocks_per_sm(HaloTileId tile);

}  // namespace wgmma_detail
}  // namespace kernels
