// TMA tensor maps (CUtensorMap) for the wgmma kernels' copies, encoded on the host through the
// driver's cuTensorMapEncode* entry points, looked up through the runtime
// (cudaGetDriverEntryPointByVersion) so that nothing links libcuda. Each map stores its boxes
// in the 128-byte swizzle wgmma reads (wgmma_detail::sw128_offset) and reads zeros outside the
// tensor. Errors throw std::runtime_error naming the tensor.
#pragma once
#include <cuda.h>
#include <cuda_fp16.h>

namespace kernels {
namespace tma {

// An im2col map of the NHWC fp16 tensor x [N][H][W][C] for an R x R convolution with stride 1
// and pad (R - 1) / 2 (C % 64 == 0; x 16-byte aligned): each copy is `pixels` rows of 64
// channels (128 bytes), started where wgmma_detail::im2col_start says.
CUtensorMap tma_map_im2col(const __half* x, int N, int H, int W, int C, int R, int pixels);

// A tiled map of the fp16 row-major matrix [rows][cols] at base (cols % 8 == 0, base 16-byte
// aligned), in boxes of box_rows rows x 64 columns.
CUtensorMap tma_map_2d(const __half* base, int rows, int cols, int box_rows);

// A tiled map of the NHWC fp16 tensor x [N][H][W][C] (C % 8 == 0, x 16-byte aligned) as the 4-D
// tensor (C, W, H, N), in boxes of 64 channels x box_w x box_h x box_n images: a box lands as
// box_n * box_h * box_w rows of 128 bytes, w fastest, then h, then the image (the halo tiles'
// copy, kernels/conv/wgmma_halo.cu).
CUtensorMap tma_map_4d(const __half* x, int N, int H, int W, int C, int box_w, int box_h, int box_n);

}  // namespace tma
}  // namespace kernels
