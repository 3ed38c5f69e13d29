// The implicit-GEMM kernels' shared pieces (device code, included by kernels/conv/*.cu): the
// kernel parameters and the cp.async loaders that fill a pipeline stage,
//   - forward (TileLoader): an A slice (implicit im2col of x) and a B slice (filter rows);
//   - weight gradient (WgradLoader): an A slice (dy rows) and a B slice (x gathered through
//     each filter column's tap), both pixel-major.
// The mma.sync and wgmma kernels differ only in where a (row, 16-byte chunk) of a stage lives
// in shared memory, which a Layout policy gives:
//   static uint32_t Layout::a_dst(uint32_t stage, int row, int chunk)
//   static uint32_t Layout::b_dst(uint32_t stage, int row, int chunk)
// (shared-memory byte addresses; padded rows for mma.sync, the 128-byte swizzle for wgmma).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/ptx_sm80.cuh"

namespace kernels {
namespace igemm_detail {

struct IgemmParams {
  const __half* x;  // [N][H][W][C]
  const __half* w;  // [K][R][R][C] = B^T, [K][Kg]
  __half* y;        // [N][H][W][K] = [M][K]; with the pool epilogue [N][H/2][W/2][K] = [M/4][K]
  uint8_t* argmax;  // pool epilogue only, may be null: [M/4][K]
  float* partials;  // stats and BN-backward sums only: [2][gridDim.y][K] (the two sums)
  int H, W, C, K, R, pad;
  int M;   // N * H * W
  int Kg;  // R * R * C
  // The BN-backward sums epilogue only (conv_epilogue.cuh; y is then the gradient of a BN +
  // CELU output, [M][K]): the second gradient term added to y (null: none), the values BN
  // normalised in the forward ([M][K]), bias [K], the forward's save_mean / save_invstd
  // [groups][K], CELU's alpha, and the pixels per BN group (a multiple of BlockM, or M).
  const __half* bn_dout2;
  const __half* bn_in;
  const float* bn_bias;
  const float* bn_mean;
  const float* bn_invstd;
  float bn_alpha;
  int bn_group_pixels;
};

// The forward kernels' shape rules (kernels/conv/implicit_gemm.cuh: positive sizes, R odd and <= 5,
// C % 8 == 0, K % 8 == 0, every tensor below 2^31 elements); std::invalid_argument naming fn.
void require_igemm_shape(const char* fn, const ConvDesc& d);
// Those, plus non-null 16-byte aligned x, w, y and ceil(N*H*W / block_m) <= 65535 (grid y);
// then the kernel parameters (argmax and partials null).
IgemmParams make_igemm_params(const char* fn, const __half* x, const __half* w, __half* y,
                              const ConvDesc& d, int block_m);

// The fused epilogues' rules go by epilogue_m, the rows one epilogue covers and writes one
// partials row for (IgemmConfigInfo::epilogue_m: BlockM, or a cooperative wgmma tile's
// BlockM / 2, one epilogue per consumer); the messages say BlockM.
// The statistics epilogue's checks (IgemmStats, naming fn) for a forward conv d with
// epilogue_m-row epilogues; sets p.partials and returns the epilogues per group (all of them
// when there is one group).
int set_stats_params(const char* fn, IgemmParams& p, const IgemmStats& stats, const ConvDesc& d,
                     int epilogue_m);
// The max-pool epilogue's checks (H, W even, epilogue_m % 2W == 0, argmax 8-byte aligned or
// null); sets p.argmax.
void set_pool_params(const char* fn, IgemmParams& p, uint8_t* argmax, const ConvDesc& d, int epilogue_m);
// The BN-backward sums epilogue (conv_epilogue.cuh) of a dgrad run as the forward convolution
// d (its output y is the dgrad's dx, d.K its channels): checks bn (naming fn), sets p.bn_* and
// p.partials, and returns the epilogue_m-row epilogues per BN group (all of them when there is
// one group).
int set_bn_sums_params(const char* fn, IgemmParams& p, const BnBackwardSums& bn, const ConvDesc& d,
                       int epilogue_m);
// Adds per-block partials [2][grid_m][K] (already enqueued on the stream) per group of
// blocks_per_group consecutive blocks, in a fixed order (sixteen interleaved runs of rows, then
// those sums): sum_a[g][n] from the first half, sum_b[g][n] from the second, g < groups
// (<= 65535). Deterministic (no atomics).
void launch_stats_reduce(const float* partials, int grid_m, int blocks_per_group, int groups, int K,
                         float* sum_a, float* sum_b, cudaStream_t stream);
// The forward kernel with the BN-backward sums epilogue on p (from make_igemm_params and
// set_bn_sums_params, which did every check), then the partials added per group: the igemm half
// of conv_backward_data_igemm_bn_sums, which runs it on the transformed filters.
void launch_igemm_bn_sums(IgemmConfig config, const IgemmParams& p, const BnBackwardSums& bn, int groups,
                          int blocks_per_group, cudaStream_t stream);

// Copies one BlockK slice of A and of B into a pipeline stage. Each loading thread (tid: its
// index among the block's kRowStep * kChunksK loading threads) owns a fixed 16-byte chunk
// column (so one FilterTap serves all its A rows) and kARows / kBRows rows. Per A row it keeps,
// from construction, the mask of the filter taps that read inside the image (tap_mask, 0 for
// rows past M); the rows' offsets m * C are one base plus multiples of kRowStep * C, and per
// slice one tap offset (tap_delta) serves every row, so a row costs an AND, a multiply-add and
// the copy (a_offset's per-row bounds arithmetic bound the warp-specialized producers:
// docs/conv_kernels.md). T provides kChunksK (chunks per row of a slice), kRowStep (rows per
// loader pass), kARows, kBRows, kBlockK, kL1 (1: the A copies, gathered from x, go through L1
// with cp.async.ca; 0: L2 only, cp.async.cg) and kTma (true: B, the filter rows, comes by TMA
// and this loader copies A only).
template <class T, class Layout>
struct TileLoader {
  int chunk, row0;
  int k;          // first GEMM column of this thread's chunk in the next slice
  FilterTap tap;  // the filter tap of column k
  uint32_t a_base;             // m * C of row 0's output pixel; row i's is a_base + i * kRowStep * C
  uint32_t a_taps[T::kARows];  // tap_mask of row i's pixel; 0 past M
  int b_off[T::kBRows];        // offset of filter row n in w (n * Kg)
  bool b_ok[T::kBRows];

  __device__ TileLoader(const IgemmParams& p, int m0, int n0, unsigned tid) {
    chunk = tid % T::kChunksK;
    row0 = tid / T::kChunksK;
    k = chunk * 8;
    tap.init(k, p.C, p.R);
    // Unsigned: the offsets of rows past M may wrap, but they are never read (their mask is 0);
    // every offset read is below 2^31.
    a_base = (uint32_t)(m0 + row0) * (uint32_t)p.C;
#pragma unroll
    for (int i = 0; i < T::kARows; i++) {
      const int m = m0 + row0 + i * T::kRowStep;
      a_taps[i] = m < p.M ? tap_mask((m / p.W) % p.H, m % p.W, p.H, p.W, p.R, p.pad) : 0u;
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
    const uint32_t tap_bit = k_ok ? 1u << (tap.r * p.R + tap.s) : 0u;
    const uint32_t base = a_base + (uint32_t)tap_delta(tap, p.W, p.C, p.pad);
    const uint32_t row_step = (uint32_t)(T::kRowStep * p.C);
#pragma unroll
    for (int i = 0; i < T::kARows; i++) {
      const bool ok = (a_taps[i] & tap_bit) != 0;
      const uint32_t off = ok ? base + i * row_step : 0u;
      const uint32_t dst = Layout::a_dst(stage, row0 + i * T::kRowStep, chunk);
      if constexpr (T::kL1)  // the gathered activations through L1 (neighbouring taps re-read them)
        ptx::cp_async_16_ca(dst, p.x + off, ok);
      else
        ptx::cp_async_16(dst, p.x + off, ok);
    }
    if constexpr (!T::kTma) {
#pragma unroll
      for (int i = 0; i < T::kBRows; i++) {
        const bool ok = b_ok[i] && k_ok;
        ptx::cp_async_16(Layout::b_dst(stage, row0 + i * T::kRowStep, chunk), p.w + (ok ? b_off[i] + k : 0), ok);
      }
    }
    k += T::kBlockK;
    tap.advance(T::kBlockK, p.C, p.R);
  }
};

// ------------------------------------------------------------------------ weight gradient

// The GEMM view is in kernels/conv/igemm_backward.cuh: dw[k][n] = sum_p dy[p][k] * im2col(x)[p][n].
struct WgradParams {
  const __half* x;   // [P][C], P = N*H*W pixels
  const __half* dy;  // [P][K]
  float* partials;   // [splits][K][Ng]
  int H, W, C, K, R, pad;
  int P;                 // N * H * W
  int Ng;                // R * R * C
  int slices_per_split;  // BlockK-pixel slices per slab (blockIdx.z)
  int splits;            // slabs launched (gridDim.z)
};

// The weight-gradient launchers' preconditions (the forward's shape rules, non-null 16-byte
// aligned x, dy, dw and partials, splits in [1, 65535], ceil(K / block_m) <= 65535;
// std::invalid_argument naming fn), then the kernel parameters for a kernel that walks the
// pixels in slices of block_k, with the split count wgrad_split makes of `splits`.
WgradParams make_wgrad_params(const char* fn, const __half* x, const __half* dy, const __half* dw,
                              float* partials, const ConvDesc& d, int block_m, int block_k, int splits);

// Copies one BlockK-pixel slice of A and of B into a pipeline stage. Each loading thread (tid,
// as TileLoader's) owns a fixed 16-byte chunk column: of A a group of 8 output channels, of B a group of 8 filter columns,
// i.e. one filter tap (r, s, c..c+7) for the whole slab (decoded once). Its pixel rows advance
// by BlockK per slice through PixelCursors. T provides kAChunks / kBChunks (chunks per pixel
// row of A / B), kARowStep / kBRowStep (rows per loader pass), kARows / kBRows, kBlockK, kL1
// (1: the B copies, gathered from x, through L1) and kTma (true: A, the dy rows, comes by TMA
// and this loader copies B only).
template <class T, class Layout>
struct WgradLoader {
  int a_chunk, a_row0, b_chunk, b_row0;
  bool a_ok, b_ok;  // the chunk column lies inside [0, K) / [0, Ng)
  int a_col;        // first output channel of this thread's A chunk
  int dr, ds;       // this thread's B tap relative to the pixel (r - pad, s - pad)
  int b_delta;      // its element offset in x relative to the pixel's own p * C (tap_delta)
  PixelStep step;   // BlockK pixels as rows and a rest (no loop per row and slice)
  int pixel;        // first pixel of the next slice; row i of it is pixel + row
  PixelCursor b_px[T::kBRows];

  __device__ WgradLoader(const WgradParams& p, int m0, int n0, int pixel0, unsigned tid) {
    a_chunk = tid % T::kAChunks;
    a_row0 = tid / T::kAChunks;
    b_chunk = tid % T::kBChunks;
    b_row0 = tid / T::kBChunks;
    a_col = m0 + a_chunk * 8;
    a_ok = a_col < p.K;
    const int n = n0 + b_chunk * 8;
    b_ok = n < p.Ng;
    FilterTap tap;
    tap.init(b_ok ? n : 0, p.C, p.R);
    dr = tap.r - p.pad;
    ds = tap.s - p.pad;
    b_delta = tap_delta(tap, p.W, p.C, p.pad);
    step = PixelStep::of(T::kBlockK, p.H, p.W);
    pixel = pixel0;
#pragma unroll
    for (int i = 0; i < T::kBRows; i++) b_px[i].init(pixel0 + b_row0 + i * T::kBRowStep, p.H, p.W);
  }

  // Issues the copies of the next slice into the stage at shared-memory address `stage` and
  // steps to the slice after. Pixels >= P (the end of the last slab's last slice) and chunk
  // columns past K or Ng are zero-filled.
  __device__ void load(const WgradParams& p, uint32_t stage) {
    if constexpr (!T::kTma) {
#pragma unroll
      for (int i = 0; i < T::kARows; i++) {
        const int row = a_row0 + i * T::kARowStep, px = pixel + row;
        const bool ok = a_ok && px < p.P;
        ptx::cp_async_16(Layout::a_dst(stage, row, a_chunk), p.dy + (ok ? (size_t)px * p.K + a_col : 0), ok);
      }
    }
#pragma unroll
    for (int i = 0; i < T::kBRows; i++) {
      const int row = b_row0 + i * T::kBRowStep, px = pixel + row;
      // a_offset's test and offset, with the tap's part precomputed: unsigned compares catch
      // both sides of the image.
      const bool ok = b_ok && px < p.P && (unsigned)(b_px[i].oh + dr) < (unsigned)p.H &&
                      (unsigned)(b_px[i].ow + ds) < (unsigned)p.W;
      const int off = ok ? px * p.C + b_delta : 0;
      if constexpr (T::kL1)  // the gathered activations through L1, as the forward's A
        ptx::cp_async_16_ca(Layout::b_dst(stage, row, b_chunk), p.x + off, ok);
      else
        ptx::cp_async_16(Layout::b_dst(stage, row, b_chunk), p.x + off, ok);
      b_px[i].advance(step, p.H, p.W);
    }
    pixel += T::kBlockK;
  }
};

}  // namespace igemm_detail
}  // namespace kernels
