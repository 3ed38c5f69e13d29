// Hand-written implicit-GEMM convolution on the tensor cores (mma.sync m16n8k16, sm_80+):
// the forward pass, fp16 activations and filters, fp32 accumulation, fp16 output.
// The engine picks it per layer against cuDNN (engine/conv_select.h) and for its fused
// epilogues (net/resnet9_gpu.h options); see docs/conv_kernels.md for the design, the tile
// configurations and what is measured.
//
// Layouts as in the CPU reference (kernels/ref/conv.h), stride 1, pad (R - 1) / 2:
//   x  [N][H][W][C]   input activations (NHWC)
//   w  [K][R][R][C]   filters (KRSC)
//   y  [N][H][W][K]   output, same spatial size as x
// GEMM view: y[m][n] = sum_k A[m][k] * B[k][n] with
//   m = (img * H + oh) * W + ow    output pixel,      M = N * H * W
//   n                              output channel,    N_gemm = K
//   k = (r * R + s) * C + c        filter tap and input channel, K_gemm = R * R * C
//   A[m][k] = x[img][oh + r - pad][ow + s - pad][c]   (0 outside the image: the zero padding)
//   B[k][n] = w[n][r][s][c]                            (so B is w read as an [K][R*R*C] matrix)
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace kernels {

// One convolution's shape (the same fields as cs::ConvDesc in engine/conv_cudnn.h).
struct ConvDesc {
  int N, H, W, C;  // input [N][H][W][C]
  int K, R;        // filters [K][R][R][C]; output [N][H][W][K]
};

// Tile configurations: BlockM output pixels x BlockN output channels per thread block, BlockK
// GEMM columns (a slice of R*R*C) per pipeline stage, Stages cp.async stages in flight.
enum class IgemmConfig : int {
  k128x128x32s4,  // 8 warps (2 x 4) of 64x32: the big layers (layer1, layer2)
  k128x128x64s3,  // the same warps, a K slice twice as deep: half the barriers per flop
  k128x64x32s4,   // 4 warps (2 x 2) of 64x32: K = 64 (the 1x1 prep conv)
  k64x64x32s4,    // 4 warps (2 x 2) of 32x32: small grids (layer3 @8, layer3_res @4)
};
constexpr IgemmConfig kIgemmConfigs[] = {IgemmConfig::k128x128x32s4, IgemmConfig::k128x128x64s3,
                                         IgemmConfig::k128x64x32s4, IgemmConfig::k64x64x32s4};

struct IgemmConfigInfo {
  const char* name;  // e.g. "128x128x32_s4"
  int block_m, block_n, block_k;
  int warp_m, warp_n;
  int stages, threads;
  size_t smem_bytes;  // dynamic shared memory per block
  // One fused epilogue's rows and threads (statistics, max-pool, BN-backward sums; the partial
  // sums are per epilogue_m rows, so the scratch sizes and the group and pool rules go by it):
  // the block's tile and threads, a wgmma ping-pong consumer's tile (128 rows, its 128
  // threads), or a cooperative wgmma consumer's half of the tile (block_m / 2 rows, 128).
  int epilogue_m, epilogue_threads;
};
IgemmConfigInfo igemm_config_info(IgemmConfig config);

// y = conv(x, w). Overwrites y. Requirements (checked, std::invalid_argument otherwise):
// C % 8 == 0 and K % 8 == 0 (every copy is a 16-byte vector of 8 channels); x, w, y 16-byte
// aligned; R odd and <= 5 (the loaders keep the filter taps in a 32-bit mask); every tensor
// below 2^31 elements (32-bit indexing); ceil(M / BlockM) <= 65535 (the grid's y dimension).
// y must not overlap x or w. Any M, K, R*R*C: partial tiles are predicated. Asynchronous on
// `stream`; deterministic (no atomics).
void conv_forward_igemm(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                        IgemmConfig config, cudaStream_t stream);

// Optional fused epilogue for BN statistics: per group of images and output channel, the sum
// and the sum of squares of y as stored (the fp16-rounded values), in fp32.
//   sum[g][k] = sum over images g*group_images .. (g+1)*group_images-1 and all pixels of y,
//   sumsq[g][k] likewise of y^2;  g < N / group_images.
// Ghost BN with groups of 32 images: group_images = 32; plain BN over the batch: group_images
// = N. Each thread block writes a partial sum of its BlockM rows to `partials` (scratch of
// igemm_stats_scratch_bytes(d, config) bytes) and a second small kernel adds the partials of
// each group in a fixed order, so the result is deterministic.
struct IgemmStats {
  float* sum;         // [N / group_images][K]
  float* sumsq;       // [N / group_images][K]
  float* partials;    // scratch
  int group_images;   // divides N; when N / group_images > 1, group_images*H*W % BlockM == 0
};
size_t igemm_stats_scratch_bytes(const ConvDesc& d, IgemmConfig config);
// conv_forward_igemm plus the statistics above (y is bitwise the same as without them).
void conv_forward_igemm_stats(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                              IgemmConfig config, const IgemmStats& stats, cudaStream_t stream);

// Fused conv + 2x2 stride-2 max-pool (layer1, layer2, layer3 of the recipe: conv -> pool ->
// ghost BN -> CELU). The full-resolution output is never written:
//   y_pooled [N][H/2][W/2][K] fp16: the max over each 2x2 window of the fp16-ROUNDED conv
//     output, i.e. bitwise maxpool(conv_forward_igemm(x, w)) with the same config.
//   argmax   [N][H/2][W/2][K] uint8 (may be null: not written): the window position dy * 2 + dx
//     the value came from. Ties go to the first maximum scanning rows then columns (only a
//     strictly larger value replaces the running max), ref::maxpool_backward's rule, so
//     ref::maxpool_backward and a backward that routes dy through argmax agree.
//   NaN: as kernels/ref/pool.cpp, the first NaN in scan order wins (y_pooled NaN, argmax its
//     position): NaN propagates like PyTorch. (Only NaN or Inf inputs produce a NaN here.)
//   stats (may be null): IgemmStats as above but over the POOLED values, per group of images:
//     sum[g][k] over the (H/2)*(W/2) pooled pixels of each image of group g. Scratch: the same
//     size as the unpooled epilogue's, igemm_stats_scratch_bytes(d, config). Deterministic.
// Requirements (checked, std::invalid_argument), on top of conv_forward_igemm's (with y_pooled
// in y's place; y_pooled, argmax must not overlap x, w or each other):
//   H and W even;
//   BlockM % (2 * W) == 0: a block's BlockM output pixels (which start at a multiple of BlockM,
//     hence of 2W, and H is even) are whole pairs of output rows of one image each, so every
//     2x2 window lies in one block's tile. Nothing else: M need not be a multiple of BlockM (the
//     last tile is predicated), and a tile may hold row pairs of two images;
//   argmax, when given, 8-byte aligned (one 8-byte store per 8 channels);
//   with stats and N / group_images > 1: group_images * H * W % BlockM == 0 (each block's rows,
//     hence its pooled pixels, lie in one group), as for conv_forward_igemm_stats.
// Which configs fit (BlockM 128 or 64, so 2W must divide it): W <= 32 with every config, W = 64
// only with the BlockM = 128 ones. The recipe's pooled layers at batch 512, ghost groups of 32
// images, fit every config: layer1 64->128 @32x32 (2W = 64), layer2 128->256 @16x16 (2W = 32),
// layer3 256->512 @8x8 (2W = 16; 32 * 64 = 2048 pixels per group). docs/conv_kernels.md says
// which config is meant for which layer.
void conv_forward_igemm_pool(const __half* x, const __half* w, __half* y_pooled, uint8_t* argmax,
                             const ConvDesc& d, IgemmConfig config, const IgemmStats* stats,
                             cudaStream_t stream);

namespace igemm_detail {

// Where the 8 channels A[m][k .. k+7] of the implicit im2col matrix come from: the filter tap
// (r, s) and first channel c of GEMM column k = (r * R + s) * C + c. A thread block walks k in
// steps of BlockK; advance() does it without divisions. r >= R means k >= R*R*C (past the end).
// __host__ __device__ so tests/implicit_gemm_gpu_test.cu checks it on the host.
struct FilterTap {
  int r, s, c;
  __host__ __device__ void init(int k, int C, int R) {
    const int rs = k / C;
    c = k - rs * C;
    r = rs / R;
    s = rs - r * R;
  }
  __host__ __device__ void advance(int step, int C, int R) {
    c += step;
    while (c >= C) {  // once per step when C >= step; C / step times for thin inputs
      c -= C;
      if (++s == R) {
        s = 0;
        ++r;
      }
    }
  }
};

// Element offset in x of A[m][k] for output pixel m = (img, oh, ow) and tap t (with t.r < R),
// or -1 when the tap falls into the zero padding. Input pixel (img, oh + dr, ow + ds) is pixel
// m + dr * W + ds of the flattened [N*H*W] pixel index, which is valid once the bounds hold.
__host__ __device__ inline int a_offset(int m, int oh, int ow, const FilterTap& t, int H, int W,
                                        int C, int pad) {
  const int dr = t.r - pad, ds = t.s - pad;
  const int ih = oh + dr, iw = ow + ds;
  if (ih < 0 || ih >= H || iw < 0 || iw >= W) return -1;
  return (m + dr * W + ds) * C + t.c;
}

// a_offset split so that the forward loaders spend a few instructions per row and slice (the
// H200 profile of the warp-specialized tiles had their producer bound by this arithmetic):
// per row, once per tile, the taps t = r * R + s that read inside the image for output pixel
// (oh, ow) as a bit mask (R <= 5: at most 25 taps in 32 bits; the launchers require it), and
// per slice the offset of the thread's tap relative to the pixel's own m * C. Then
//   a_offset(m, oh, ow, tap, ...) == ((tap_mask(...) >> (tap.r * R + tap.s)) & 1)
//                                    ? m * C + tap_delta(tap, ...) : -1.
__host__ __device__ inline uint32_t tap_mask(int oh, int ow, int H, int W, int R, int pad) {
  uint32_t cols = 0;  // bit s: the tap's column lies inside the image
  for (int s = 0; s < R; s++) {
    const int iw = ow + s - pad;
    if (iw >= 0 && iw < W) cols |= 1u << s;
  }
  uint32_t mask = 0;
  for (int r = 0; r < R; r++) {
    const int ih = oh + r - pad;
    if (ih >= 0 && ih < H) mask |= cols << (r * R);
  }
  return mask;
}
__host__ __device__ inline int tap_delta(const FilterTap& t, int W, int C, int pad) {
  return ((t.r - pad) * W + (t.s - pad)) * C + t.c;
}

// ldmatrix.x4 (non-transposing) row addresses of the forward kernel's warp tile, for operands
// stored K-contiguous in shared memory (sA [m][k], sB [n][k]). Lane l addresses row l % 8 of
// matrix l / 8; (row, col) is relative to the fragment's top-left corner.
//   A (one m16 x k16 tile): matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15),
//     (m 8-15, k 8-15) -> mma's a[0..3].
//   B (two n8 tiles x k16): matrices (n 0-7, k 0-7), (n 0-7, k 8-15), (n 8-15, k 0-7),
//     (n 8-15, k 8-15) -> b[j][0], b[j][1], b[j+1][0], b[j+1][1].
// __host__ __device__ so the host test pushes them through ldmatrix's semantics.
struct LdsmRowCol {
  int row, col;
};
__host__ __device__ inline LdsmRowCol fwd_a_ldsm(int lane) { return {lane & 15, (lane >> 4) * 8}; }
__host__ __device__ inline LdsmRowCol fwd_b_ldsm(int lane) {
  return {(lane & 7) + (lane >> 4) * 8, ((lane >> 3) & 1) * 8};
}

// The fused max-pool epilogue's indexing. A block's tile holds output pixels m0 .. m0+BlockM-1
// with m0 a multiple of 2W (H, W even): whole pairs of output rows. Row pair j of the flattened
// [N*H] rows is pooled row j of the flattened [N*H/2] pooled rows, so the tile's pooled pixels
// are the contiguous range m0/4 .. m0/4 + BlockM/4 - 1, and pooled pixel m0/4 + q is the max
// over the tile rows pool_window_row(q, W) + {0, 1, W, W + 1} (positions 0, 1, 2, 3 = dy*2+dx).
__host__ __device__ inline int pool_window_row(int q, int W) {
  const int half_w = W >> 1;
  const int pair = q / half_w;  // row pair within the tile
  const int wo = q - pair * half_w;
  return pair * 2 * W + 2 * wo;
}

// The window position (dy * 2 + dx) max-pool picks from v0..v3 in scan order (0,0), (0,1),
// (1,0), (1,1): a later value replaces the running max only when strictly larger, so ties keep
// the first; a NaN replaces any non-NaN and is never replaced (the first NaN wins), exactly as
// kernels/ref/pool.cpp. fp16 -> fp32 is exact, so comparing the converted values is comparing
// the fp16 values. `v != v` is the NaN test (no fast-math anywhere in the build).
__host__ __device__ inline bool pool_replaces(float best, float v) {
  return best == best && (v > best || v != v);
}
__host__ __device__ inline int pool2x2_argmax(float v0, float v1, float v2, float v3) {
  int arg = 0;
  float best = v0;
  if (pool_replaces(best, v1)) {
    arg = 1;
    best = v1;
  }
  if (pool_replaces(best, v2)) {
    arg = 2;
    best = v2;
  }
  if (pool_replaces(best, v3)) arg = 3;
  return arg;
}

}  // namespace igemm_detail

}  // namespace kernels
