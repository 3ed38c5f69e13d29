// GPU whitening: the 3x3 patch covariance of the training images (for the filters, solved on
// the host) and the fixed whitening conv 3 -> 27 (stored as 32 channels). See whiten.cuh.
#include "kernels/whiten.cuh"

#include <cstdint>

#include "kernels/common.cuh"

namespace kernels {

namespace {

constexpr int kImage = 32, kChannels = 3, kR = 3;
constexpr int kD = kChannels * kR * kR;          // 27 values per patch, ordered (c, ky, kx)
constexpr int kPairs = kD * (kD + 1) / 2;        // 378 entries of the upper triangle
constexpr int kPatchesPerRow = kImage - kR + 1;  // 30 (no padding)
constexpr int kPatchesPerImage = kPatchesPerRow * kPatchesPerRow;
constexpr int kCovThreads = 384;                 // >= kPairs, a multiple of 32
constexpr int kCovTile = 128;                    // patches staged in shared memory at a time
constexpr int kCovMaxBlocks = 264;               // 2 per SM on an H100

// Each block walks tiles of patches (grid-stride), stages them in shared memory as fp32, and
// thread t < 378 accumulates entry t of the upper triangle of sum p p^T in double (a product
// of two fp16 values is exact in fp32; the sums over ~9M patches need double). At the end each
// block writes its sums to its own row partial[block][378] (no atomics: the result does not
// depend on block timing, so the whitening filters and the whole run are reproducible).
__global__ void __launch_bounds__(kCovThreads)
    patch_covariance_kernel(const __half* __restrict__ x, long num_patches,
                            double* __restrict__ partial) {
  __shared__ float tile[kCovTile][kD];
  // Entry (i, j), i <= j, of this thread.
  int pi = 0, pj = 0;
  const bool owns_pair = threadIdx.x < kPairs;
  if (owns_pair) {
    int rem = threadIdx.x;
    while (rem >= kD - pi) {
      rem -= kD - pi;
      pi++;
    }
    pj = pi + rem;
  }
  double acc = 0.0;
  const long num_tiles = ceil_div(num_patches, (long)kCovTile);
  for (long t = blockIdx.x; t < num_tiles; t += gridDim.x) {
    const long first = t * kCovTile;
    for (int k = threadIdx.x; k < kCovTile * kD; k += blockDim.x) {
      const int lp = k / kD, d = k % kD;
      const long p = first + lp;
      float v = 0.0f;  // patches past the end contribute zero
      if (p < num_patches) {
        const long img = p / kPatchesPerImage;
        const int r = (int)(p % kPatchesPerImage);
        const int oy = r / kPatchesPerRow, ox = r % kPatchesPerRow;
        const int c = d / (kR * kR), ky = (d / kR) % kR, kx = d % kR;
        v = __half2float(x[((img * kImage + oy + ky) * kImage + ox + kx) * kChannels + c]);
      }
      tile[lp][d] = v;
    }
    __syncthreads();
    if (owns_pair) {
      for (int lp = 0; lp < kCovTile; lp++) acc += (double)(tile[lp][pi] * tile[lp][pj]);
    }
    __syncthreads();  // the tile is overwritten by the next iteration
  }
  if (owns_pair) partial[(long)blockIdx.x * kPairs + threadIdx.x] = acc;
}

// One thread per upper-triangle entry t = (i, j): the blocks' sums added in block order, divided
// by (count - 1), written to cov[i][j] and cov[j][i] (every entry of cov is written).
__global__ void patch_covariance_reduce_kernel(const double* __restrict__ partial, int blocks,
                                               double inv_count_m1, float* __restrict__ cov) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= kPairs) return;
  int pi = 0, rem = t;
  while (rem >= kD - pi) {
    rem -= kD - pi;
    pi++;
  }
  const int pj = pi + rem;
  double s = 0.0;
  for (int b = 0; b < blocks; b++) s += partial[(long)b * kPairs + t];
  const float v = (float)(s * inv_count_m1);
  cov[pi * kD + pj] = v;
  cov[pj * kD + pi] = v;
}

int covariance_blocks(int n) {
  const long tiles = ceil_div((long)n * kPatchesPerImage, (long)kCovTile);
  return (int)(tiles < kCovMaxBlocks ? tiles : kCovMaxBlocks);
}

// One block per kRowsPerBlock output rows of one image: the input rows they need (zero padded
// to 34 columns, mirrored when asked) and the 27 filters sit in shared memory. Thread t computes
// 8 consecutive output channels (vector t % 4) of one pixel (t / 4) and writes them with one
// 16-byte store, so a warp writes 8 whole pixels (512 contiguous bytes); channels 27..31 are
// the zero padding. The filters are stored tap-major ([27 taps][32 outputs]) so that a thread's
// 8 weights of a tap are 32 contiguous bytes: two 16-byte loads, each hitting 4 addresses per
// warp (one per channel vector, broadcast to the lanes that share it), where one 4-byte load
// per weight made 8 shared-memory loads per 8 FMAs and bound the kernel (~80 us per step on the
// H200, docs/results/2026-11-27-h200-session7/call2, "whiten"). The sums are the same FMAs in
// the same order.
constexpr int kRowsPerBlock = 2;
constexpr int kVecPerPixel = kWhitenChannelsPadded / 8;               // 4
constexpr int kConvThreads = kRowsPerBlock * kImage * kVecPerPixel;  // 256
__global__ void __launch_bounds__(kConvThreads)
    whiten_conv_kernel(const __half* __restrict__ x, const float* __restrict__ w,
                       __half* __restrict__ y, bool mirror) {
  constexpr int Cout = kWhitenChannelsPadded;
  constexpr int kInRows = kRowsPerBlock + kR - 1;
  __shared__ __align__(16) float s_w[kD][Cout];             // [3][3][3] taps x 32 outputs, 27..31 zero
  __shared__ float s_in[kInRows][kImage + 2][kChannels];    // rows oy0-1..oy0+kRowsPerBlock
  constexpr int kBlocksPerImage = kImage / kRowsPerBlock;
  const int b = blockIdx.x / kBlocksPerImage, oy0 = (blockIdx.x % kBlocksPerImage) * kRowsPerBlock;
  // Filled in s_w's own order, so a warp's stores go to 32 consecutive words (no bank
  // conflict); w (KRSC: [27 outputs][27 taps], 3.4 KB, L1-resident after the first blocks) is
  // read transposed. Walking w's order instead made each warp's stores up to 27-way bank
  // conflicts (rows of 32 words: one bank for all taps of an output), the likely reason why
  // kernel_bench on the H200 (docs/results/2026-11-27-h200-session10/call1) took longer for
  // that version than the H100 (docs/results/2026-11-27-h100-gpu-check/call3) for the one
  // before it, while the kernels it left unchanged ran faster on the H200.
  for (int i = threadIdx.x; i < Cout * kD; i += blockDim.x) {
    const int tap = i / Cout, o = i % Cout;
    s_w[tap][o] = o < kD ? w[o * kD + tap] : 0.0f;
  }
  for (int i = threadIdx.x; i < kInRows * (kImage + 2) * kChannels; i += blockDim.x) {
    const int c = i % kChannels, col = (i / kChannels) % (kImage + 2), r = i / (kChannels * (kImage + 2));
    const int iy = oy0 + r - 1, ix = col - 1;
    float v = 0.0f;  // zero padding
    if (iy >= 0 && iy < kImage && ix >= 0 && ix < kImage) {
      const int sx = mirror ? kImage - 1 - ix : ix;
      v = __half2float(x[(((long)b * kImage + iy) * kImage + sx) * kChannels + c]);
    }
    s_in[r][col][c] = v;
  }
  __syncthreads();
  const int kv = threadIdx.x % kVecPerPixel;
  const int pix = threadIdx.x / kVecPerPixel;  // 0 .. kRowsPerBlock * 32 - 1
  const int ry = pix / kImage, ox = pix % kImage;
  float acc[8];
#pragma unroll
  for (int j = 0; j < 8; j++) acc[j] = 0.0f;
  for (int ky = 0; ky < kR; ky++)
    for (int kx = 0; kx < kR; kx++)
#pragma unroll
      for (int c = 0; c < kChannels; c++) {
        const float v = s_in[ry + ky][ox + kx][c];
        const float4* wv = reinterpret_cast<const float4*>(&s_w[(ky * kR + kx) * kChannels + c][kv * 8]);
        const float4 w0 = wv[0], w1 = wv[1];
        const float wj[8] = {w0.x, w0.y, w0.z, w0.w, w1.x, w1.y, w1.z, w1.w};
#pragma unroll
        for (int j = 0; j < 8; j++) acc[j] += wj[j] * v;
      }
  store8(y + (((long)b * kImage + oy0 + ry) * kImage + ox) * Cout + kv * 8, acc);
}

}  // namespace

size_t patch_covariance_scratch_bytes(int n) {
  require(n >= 1, "patch_covariance_scratch_bytes", "need n >= 1 images");
  return sizeof(double) * kPairs * (size_t)covariance_blocks(n);
}

void patch_covariance(const __half* x, int n, float* cov, void* scratch, cudaStream_t stream) {
  require(n >= 1, "patch_covariance", "need n >= 1 images");
  require(scratch != nullptr && ((uintptr_t)scratch & 7) == 0, "patch_covariance",
          "scratch must be non-null and 8-byte aligned");
  const long num_patches = (long)n * kPatchesPerImage;
  const int blocks = covariance_blocks(n);
  double* partial = static_cast<double*>(scratch);
  patch_covariance_kernel<<<blocks, kCovThreads, 0, stream>>>(x, num_patches, partial);
  CUDA_CHECK_LAUNCH();
  patch_covariance_reduce_kernel<<<ceil_div(kPairs, 128), 128, 0, stream>>>(
      partial, blocks, 1.0 / ((double)num_patches - 1.0), cov);
  CUDA_CHECK_LAUNCH();
}

void whiten_conv_forward(const __half* x, const float* w, __half* y, int B, bool mirror,
                         cudaStream_t stream) {
  require(B >= 0, "whiten_conv_forward", "B must be >= 0");
  if (B == 0) return;
  require(aligned16(y), "whiten_conv_forward", "y must be 16-byte aligned (16-byte stores)");
  whiten_conv_kernel<<<B * (kImage / kRowsPerBlock), kConvThreads, 0, stream>>>(x, w, y, mirror);
  CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
