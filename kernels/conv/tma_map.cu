// TMA tensor maps: kernels/conv/tma_map.cuh.
#include "kernels/conv/tma_map.cuh"

#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "kernels/common.cuh"

namespace kernels {
namespace tma {

namespace {

// A driver function by name, looked up through the runtime (the binaries link cudart only);
// throws if this driver has none.
void* driver_entry_point(const char* name) {
  void* f = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  CUDA_CHECK(cudaGetDriverEntryPointByVersion(name, &f, 12000, cudaEnableDefault, &found));
  if (found != cudaDriverEntryPointSuccess || f == nullptr)
    throw std::runtime_error(std::string("wgmma: the driver has no ") + name + " (TMA needs CUDA 12+ drivers)");
  return f;
}

// The driver's TMA map encoders, looked up once.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const auto fn =
      reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(driver_entry_point("cuTensorMapEncodeTiled"));
  return fn;
}
PFN_cuTensorMapEncodeIm2col_v12000 encode_im2col() {
  static const auto fn =
      reinterpret_cast<PFN_cuTensorMapEncodeIm2col_v12000>(driver_entry_point("cuTensorMapEncodeIm2col"));
  return fn;
}

}  // namespace

// A TMA im2col map of the NHWC fp16 tensor x [N][H][W][C] for an R x R convolution with stride
// 1 and pad (R - 1) / 2 (C % 64 == 0: the launchers' check; x 16-byte aligned): each copy is
// `pixels` rows of 64 channels (128 bytes) in the 128-byte swizzle of wgmma_detail::sw128_offset,
// started where wgmma_detail::im2col_start says (its comment derives the corners). Zeros outside x.
CUtensorMap tma_map_im2col(const __half* x, int N, int H, int W, int C, int R, int pixels) {
  CUtensorMap map;
  const int pad = (R - 1) / 2;
  const cuuint64_t dims[4] = {(cuuint64_t)C, (cuuint64_t)W, (cuuint64_t)H, (cuuint64_t)N};
  const cuuint64_t strides[3] = {(cuuint64_t)C * sizeof(__half), (cuuint64_t)W * C * sizeof(__half),
                                 (cuuint64_t)H * W * C * sizeof(__half)};        // bytes, dims 1..3
  const int lower[2] = {-pad, -pad}, upper[2] = {pad - (R - 1), pad - (R - 1)};  // (w, h)
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r =
      encode_im2col()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<__half*>(x), dims, strides, lower, upper, 64,
                      (cuuint32_t)pixels, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                      CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("wgmma: cuTensorMapEncodeIm2col failed (error " + std::to_string((int)r) + ") for x " +
                             std::to_string(N) + "x" + std::to_string(H) + "x" + std::to_string(W) + "x" +
                             std::to_string(C) + ", R " + std::to_string(R) + ", " + std::to_string(pixels) +
                             " pixels per copy");
  return map;
}

// A TMA map of the fp16 row-major matrix [rows][cols] at base (cols % 8 == 0, base 16-byte
// aligned: the launchers' checks), in boxes of box_rows rows x 64 columns (128 bytes) stored in
// the 128-byte swizzle of wgmma_detail::sw128_offset (CU_TENSOR_MAP_SWIZZLE_128B: chunk c of
// row r at c ^ (r % 8) in 1024-byte atoms), elements outside the matrix read as zeros.
CUtensorMap tma_map_2d(const __half* base, int rows, int cols, int box_rows) {
  CUtensorMap map;
  const cuuint64_t dims[2] = {(cuuint64_t)cols, (cuuint64_t)rows};
  const cuuint64_t strides[1] = {(cuuint64_t)cols * sizeof(__half)};  // bytes from one row to the next
  const cuuint32_t box[2] = {64, (cuuint32_t)box_rows};
  const cuuint32_t element_strides[2] = {1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 2, const_cast<__half*>(base), dims, strides,
                                    box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("wgmma: cuTensorMapEncodeTiled failed (error " + std::to_string((int)r) + ") for a " +
                             std::to_string(rows) + " x " + std::to_string(cols) + " matrix, box " +
                             std::to_string(box_rows) + " x 64");
  return map;
}

// The halo tiles' map: x as (C, W, H, N) in boxes of (64, box_w, box_h, box_n). The box's rows
// of 128 bytes land w fastest, then h, then the image, each in the 128-byte swizzle; a box may
// start at negative w and h (the padding), which read as zeros like everything outside x.
CUtensorMap tma_map_4d(const __half* x, int N, int H, int W, int C, int box_w, int box_h, int box_n) {
  CUtensorMap map;
  const cuuint64_t dims[4] = {(cuuint64_t)C, (cuuint64_t)W, (cuuint64_t)H, (cuuint64_t)N};
  const cuuint64_t strides[3] = {(cuuint64_t)C * sizeof(__half), (cuuint64_t)W * C * sizeof(__half),
                                 (cuuint64_t)H * W * C * sizeof(__half)};  // bytes, dims 1..3
  const cuuint32_t box[4] = {64, (cuuint32_t)box_w, (cuuint32_t)box_h, (cuuint32_t)box_n};
  const cuuint32_t element_strides[4] = {1, 1, 1, 1};
  const CUresult r = encode_tiled()(&map, CU_TENSOR_MAP_DATA_TYPE_FLOAT16, 4, const_cast<__half*>(x), dims, strides,
                                    box, element_strides, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw std::runtime_error("wgmma: cuTensorMapEncodeTiled failed (error " + std::to_string((int)r) + ") for x " +
                             std::to_string(N) + "x" + std::to_string(H) + "x" + std::to_string(W) + "x" +
                             std::to_string(C) + ", box 64 x " + std::to_string(box_w) + " x " + std::to_string(box_h) +
                             " x " + std::to_string(box_n));
  return map;
}

}  // namespace tma
}  // namespace kernels
