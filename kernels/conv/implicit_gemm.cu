// Implicit-GEMM forward convolution on the tensor cores: kernels, then launchers.
// Interface, layouts and the GEMM view: kernels/conv/implicit_gemm.cuh. Design notes and
// measurements: docs/conv_kernels.md.
//
// One thread block computes a BlockM x BlockN tile of y (BlockM output pixels, BlockN output
// channels), walking the GEMM's K = R*R*C in slices of BlockK:
//   1. cp.async copies the A slice (gathered from x: implicit im2col, zero-filled at the
//      image borders) and the B slice (filter rows) into shared memory, Stages - 1 slices
//      ahead of the one being multiplied;
//   2. each warp multiplies its WarpM x WarpN sub-tile with ldmatrix + mma.sync m16n8k16
//      (fp16 x fp16 -> fp32 accumulators in registers);
//   3. the epilogue rounds to fp16, stages the tile through shared memory and writes it with
//      16-byte coalesced stores (and, optionally, per-channel partial sums for BN statistics or
//      the BN-backward sums); or, with the fused max-pool epilogue, writes only the 2x2-pooled
//      tile, the argmax bytes and the partial sums of the pooled values. The epilogue code is
//      shared with the wgmma kernel: kernels/conv/conv_epilogue.cuh.
//
// Shared memory, per stage: sA [BlockM][BlockK + 8] and sB [BlockN][BlockK + 8] halves, both
// K-contiguous (A row-major; B is w's rows, i.e. B column-major, what mma's .col wants).
// Bank conflicts are avoided by PADDING each row by 8 halves (16 bytes): a row is then
// BlockK/8 + 1 16-byte units long, an odd number, so the 8 row addresses of one ldmatrix
// 8x8 matrix fall into 8 different 16-byte bank groups. The epilogue tile sC [BlockM][BlockN + 8]
// reuses the same memory, padded the same way for the same reason.
#include "kernels/conv/implicit_gemm.cuh"

#include <cstdint>
#include <string>

#include "kernels/common.cuh"
#include "kernels/conv/conv_epilogue.cuh"
#include "kernels/conv/igemm_loader.cuh"
#include "kernels/conv/ptx_sm80.cuh"

namespace kernels {

namespace {

using igemm_detail::a_offset;
using igemm_detail::FilterTap;

// The PTX wrappers (cp.async, ldmatrix, mma.sync m16n8k16), shared with the backward kernels.
using ptx::cp_async_16;
using ptx::cp_async_commit;
using ptx::cp_async_wait;
using ptx::ldmatrix_x4;
using ptx::mma_16816;
using ptx::smem_addr;

// ------------------------------------------------------------------------------- tile shapes

// A tile configuration as a type (CUTLASS style): block tile, warp tile, pipeline depth, and
// the minimum resident blocks per SM handed to __launch_bounds__ (it caps the registers at
// 65536 / (threads * MinBlocks) per thread).
template <int BlockM, int BlockN, int BlockK, int WarpM, int WarpN, int Stages, int MinBlocks>
struct IgemmTile {
  static constexpr int kBlockM = BlockM, kBlockN = BlockN, kBlockK = BlockK;
  static constexpr int kWarpM = WarpM, kWarpN = WarpN, kStages = Stages, kMinBlocks = MinBlocks;
  static constexpr int kL1 = 0;  // the loaders' gathered operand bypasses L1 (cp.async.cg)
  static constexpr bool kTma = false;  // the loader copies both operands
  static constexpr int kWarpsM = BlockM / WarpM, kWarpsN = BlockN / WarpN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMmaM = WarpM / 16;  // m16 tiles per warp
  static constexpr int kMmaN = WarpN / 8;   // n8 tiles per warp
  static constexpr int kMmaK = BlockK / 16;  // k16 steps per stage

  // Loaders: thread t copies the 16-byte chunk t % kChunksK of rows t / kChunksK + i * kRowStep.
  static constexpr int kChunksK = BlockK / 8;
  static constexpr int kRowStep = kThreads / kChunksK;
  static constexpr int kARows = BlockM / kRowStep;  // A rows per thread
  static constexpr int kBRows = BlockN / kRowStep;  // B rows per thread

  static constexpr int kStride = BlockK + 8;   // halves per sA / sB row (padded)
  static constexpr int kCStride = BlockN + 8;  // halves per sC row (padded)
  static constexpr int kStageHalves = (BlockM + BlockN) * kStride;
  static constexpr int kPipeHalves = Stages * kStageHalves;
  static constexpr int kEpilogueHalves = BlockM * kCStride;
  // The epilogues' fp32 scratch (statistics, pool, BN-backward sums) lies right after sC
  // (kernels/conv/conv_epilogue.cuh); the pipeline's stages are larger in every config.
  static constexpr int kEpilogueBytes =
      2 * kEpilogueHalves + igemm_detail::epilogue_red_bytes<BlockN, kThreads>();
  static constexpr size_t kSmemBytes =
      (size_t)(2 * kPipeHalves > kEpilogueBytes ? 2 * kPipeHalves : kEpilogueBytes);

  static_assert(BlockM % WarpM == 0 && BlockN % WarpN == 0, "warps must tile the block");
  static_assert(WarpM % 16 == 0 && WarpN % 16 == 0, "warp tile: m16 rows, pairs of n8 columns");
  static_assert(BlockK % 16 == 0, "BlockK: whole k16 steps (also keeps the padded rows odd)");
  static_assert(kThreads % kChunksK == 0, "loader: whole rows per pass");
  static_assert(BlockM % kRowStep == 0 && BlockN % kRowStep == 0, "loader: whole passes");
  static_assert(BlockN % 8 == 0, "epilogues: 8-channel chunks");
  static_assert(Stages >= 2, "a pipeline needs two stages");
};

using Tile128x128x32 = IgemmTile<128, 128, 32, 64, 32, 4, 2>;
using Tile128x128x64 = IgemmTile<128, 128, 64, 64, 32, 3, 2>;
using Tile128x64x32 = IgemmTile<128, 64, 32, 64, 32, 4, 2>;
using Tile64x64x32 = IgemmTile<64, 64, 32, 32, 32, 4, 4>;

using igemm_detail::IgemmParams;

// Where a stage's (row, chunk) lives: sA [BlockM][kStride] then sB [BlockN][kStride] halves,
// rows padded to an odd number of 16-byte units (see the top of this file).
template <class T>
struct PaddedLayout {
  static __device__ __forceinline__ uint32_t a_dst(uint32_t stage, int row, int chunk) {
    return stage + (uint32_t)(row * T::kStride + chunk * 8) * 2;
  }
  static __device__ __forceinline__ uint32_t b_dst(uint32_t stage, int row, int chunk) {
    return stage + (uint32_t)((T::kBlockM + row) * T::kStride + chunk * 8) * 2;
  }
};
template <class T>
using TileLoader = igemm_detail::TileLoader<T, PaddedLayout<T>>;

// -------------------------------------------------------------------------------- the warps

// acc += the warp's WarpM x WarpN share of sA * sB^T for one stage.
template <class T>
__device__ __forceinline__ void warp_mma_stage(const __half* stage, int warp_m0, int warp_n0,
                                               int lane, float (&acc)[T::kMmaM][T::kMmaN][4]) {
  const __half* sA = stage;
  const __half* sB = stage + T::kBlockM * T::kStride;
  // ldmatrix.x4 row addresses (which 8x8 matrices, and which mma fragments they become:
  // igemm_detail::fwd_a_ldsm / fwd_b_ldsm; checked on the host by the tests).
  const igemm_detail::LdsmRowCol a_at = igemm_detail::fwd_a_ldsm(lane), b_at = igemm_detail::fwd_b_ldsm(lane);
  const int a_row = a_at.row, a_col = a_at.col, b_row = b_at.row, b_col = b_at.col;
#pragma unroll
  for (int kk = 0; kk < T::kMmaK; kk++) {
    uint32_t a[T::kMmaM][4], b[T::kMmaN][2];
#pragma unroll
    for (int i = 0; i < T::kMmaM; i++)
      ldmatrix_x4(a[i], smem_addr(sA + (warp_m0 + i * 16 + a_row) * T::kStride + kk * 16 + a_col));
#pragma unroll
    for (int j = 0; j < T::kMmaN; j += 2) {
      uint32_t t[4];
      ldmatrix_x4(t, smem_addr(sB + (warp_n0 + j * 8 + b_row) * T::kStride + kk * 16 + b_col));
      b[j][0] = t[0];
      b[j][1] = t[1];
      b[j + 1][0] = t[2];
      b[j + 1][1] = t[3];
    }
#pragma unroll
    for (int i = 0; i < T::kMmaM; i++)
#pragma unroll
      for (int j = 0; j < T::kMmaN; j++) mma_16816(acc[i][j], a[i], b[j][0], b[j][1]);
  }
}

// -------------------------------------------------------------------------------- the kernel

// Grid: x over output-channel tiles (fastest, so the blocks that share an A tile run together
// and read it from DRAM once), y over output-pixel tiles. Block: T::kThreads threads.
// kStats: per-block partial BN sums (of y, or with kPool of the pooled values). kPool: the fused
// 2x2 max-pool epilogue replaces the store of y (launcher checks: H, W even, BlockM % 2W == 0).
// kBnSums: y is an input gradient; per-block partial BN-backward sums (conv_epilogue.cuh).
template <class T, bool kStats, bool kPool, bool kBnSums>
__global__ void __launch_bounds__(T::kThreads, T::kMinBlocks)
    conv_fwd_igemm_kernel(const IgemmParams p) {
  static_assert(!(kBnSums && (kStats || kPool)), "the BN-backward sums are an epilogue of their own");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __half* smem = reinterpret_cast<__half*>(smem_raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int warp_m0 = (warp / T::kWarpsN) * T::kWarpM;
  const int warp_n0 = (warp % T::kWarpsN) * T::kWarpN;
  const int n0 = blockIdx.x * T::kBlockN, m0 = blockIdx.y * T::kBlockM;
  const int k_tiles = ceil_div(p.Kg, T::kBlockK);

  TileLoader<T> loader(p, m0, n0, threadIdx.x);
  // Prologue: slices 0 .. Stages-2 in flight. One commit group per slice, empty past the end,
  // so the wait count below is the same in every iteration.
#pragma unroll
  for (int s = 0; s < T::kStages - 1; s++) {
    if (s < k_tiles) loader.load(p, smem_addr(smem + s * T::kStageHalves));
    cp_async_commit();
  }

  float acc[T::kMmaM][T::kMmaN][4];
#pragma unroll
  for (int i = 0; i < T::kMmaM; i++)
#pragma unroll
    for (int j = 0; j < T::kMmaN; j++)
#pragma unroll
      for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

  for (int kt = 0; kt < k_tiles; kt++) {
    // Groups committed so far: Stages - 1 + kt; allowing Stages - 2 in flight means slices
    // 0 .. kt have landed (this thread's copies; the barrier makes it everyone's). The barrier
    // also tells us every warp is done with stage (kt - 1) % Stages, which is refilled next.
    cp_async_wait<T::kStages - 2>();
    __syncthreads();
    const int next = kt + T::kStages - 1;
    if (next < k_tiles) loader.load(p, smem_addr(smem + (next % T::kStages) * T::kStageHalves));
    cp_async_commit();
    warp_mma_stage<T>(smem + (kt % T::kStages) * T::kStageHalves, warp_m0, warp_n0, lane, acc);
  }
  cp_async_wait<0>();  // only empty groups remain; drained before sC reuses the stages
  __syncthreads();

  // Epilogue 1: accumulators -> fp16 tile sC [BlockM][kCStride]. A warp's half2 stores cover
  // rows g (8 of them, kCStride / 2 words apart = 4 banks mod 32) x 4 column pairs: no conflicts.
  __half* sC = smem;
#pragma unroll
  for (int i = 0; i < T::kMmaM; i++)
#pragma unroll
    for (int j = 0; j < T::kMmaN; j++) {
      const int r = warp_m0 + i * 16 + (lane >> 2), c = warp_n0 + j * 8 + (lane & 3) * 2;
      *reinterpret_cast<__half2*>(sC + r * T::kCStride + c) = __floats2half2_rn(acc[i][j][0], acc[i][j][1]);
      *reinterpret_cast<__half2*>(sC + (r + 8) * T::kCStride + c) =
          __floats2half2_rn(acc[i][j][2], acc[i][j][3]);
    }
  __syncthreads();

  // Epilogue 2: sC -> y (or the pooled y and argmax) in 16-byte chunks, with the statistics or
  // BN-backward sums through a scratch after sC (kernels/conv/conv_epilogue.cuh).
  static_assert(2 * T::kEpilogueHalves + igemm_detail::epilogue_red_bytes<T::kBlockN, T::kThreads>() <=
                    (int)T::kSmemBytes,
                "the epilogue's scratch fits after sC");
  using igemm_detail::ConvEpilogue;
  constexpr ConvEpilogue kEpi = kPool    ? (kStats ? ConvEpilogue::kPoolStats : ConvEpilogue::kPool)
                                : kStats   ? ConvEpilogue::kStats
                                : kBnSums  ? ConvEpilogue::kBnSums
                                           : ConvEpilogue::kStore;
  igemm_detail::conv_epilogue<kEpi, T::kBlockM, T::kBlockN, T::kThreads, igemm_detail::PaddedC<T::kCStride>>(
      sC, reinterpret_cast<float*>(smem + T::kEpilogueHalves), p, m0, n0, threadIdx.x, [] { __syncthreads(); });
}

// The partials reduction's block: kReduceChannels channels (a warp's 128 contiguous bytes of a
// partials row) x kReduceLanes lanes that split a group's rows; each thread loads kReduceBatch
// rows at a time before it adds them.
constexpr int kReduceChannels = 32, kReduceLanes = 16, kReduceBatch = 8;

// Adds the partials rows of each group: sum[g][n] (from partials[0][b][n]) and sumsq[g][n] (from
// partials[1][b][n]) over the group's rows b = g * blocks_per_group .. (< grid_m), g < groups,
// n < K. Grid (ceil(K / kReduceChannels), groups). Lane l adds rows b0 + l, b0 + l + kReduceLanes,
// ... in order, then thread (0, n) adds the lanes' sums in lane order: a fixed order for given
// (grid_m, blocks_per_group), so the result is deterministic. (One thread per (g, n) adding every
// row in turn, as before, waited out one L2 round trip per row: about 0.17 us each on the H200,
// 44 us for layer1's 256 rows per ghost group, docs/conv_kernels.md.)
__global__ void __launch_bounds__(kReduceChannels* kReduceLanes)
    igemm_stats_reduce_kernel(const float* partials, int grid_m, int blocks_per_group, int K, float* sum,
                              float* sumsq) {
  __shared__ float red[2][kReduceLanes][kReduceChannels];
  const int c = threadIdx.x % kReduceChannels, lane = threadIdx.x / kReduceChannels;
  const int n = blockIdx.x * kReduceChannels + c, g = blockIdx.y;
  const int b0 = g * blocks_per_group, b_end = min(b0 + blocks_per_group, grid_m);
  float s = 0.0f, ss = 0.0f;
  if (n < K) {
    for (int b = b0 + lane; b < b_end; b += kReduceBatch * kReduceLanes) {
      // kReduceBatch rows' loads in flight at once, then added in row order.
      float va[kReduceBatch], vb[kReduceBatch];
#pragma unroll
      for (int i = 0; i < kReduceBatch; i++) {
        const int row = b + i * kReduceLanes;
        va[i] = row < b_end ? partials[(size_t)row * K + n] : 0.0f;
        vb[i] = row < b_end ? partials[((size_t)grid_m + row) * K + n] : 0.0f;
      }
#pragma unroll
      for (int i = 0; i < kReduceBatch; i++) {
        s += va[i];
        ss += vb[i];
      }
    }
  }
  red[0][lane][c] = s;
  red[1][lane][c] = ss;
  __syncthreads();
  if (lane == 0 && n < K) {
    float a = 0.0f, q = 0.0f;
#pragma unroll
    for (int l = 0; l < kReduceLanes; l++) {
      a += red[0][l][c];
      q += red[1][l][c];
    }
    sum[(size_t)g * K + n] = a;
    sumsq[(size_t)g * K + n] = q;
  }
}

// ------------------------------------------------------------------------------- launchers

template <class T>
IgemmConfigInfo info_of(const char* name) {
  // One epilogue per block, over its tile, with all its threads.
  return {name,        T::kBlockM,  T::kBlockN,    T::kBlockK, T::kWarpM, T::kWarpN,
          T::kStages,  T::kThreads, T::kSmemBytes, T::kBlockM, T::kThreads};
}

IgemmParams make_params(const char* fn, const __half* x, const __half* w, __half* y,
                        const ConvDesc& d, const IgemmConfigInfo& cfg) {
  return igemm_detail::make_igemm_params(fn, x, w, y, d, cfg.block_m);
}

template <class T, bool kStats, bool kPool, bool kBnSums>
void launch_tile(const IgemmParams& p, cudaStream_t stream) {
  auto* kernel = conv_fwd_igemm_kernel<T, kStats, kPool, kBnSums>;
  // Above 48 KB a kernel must opt in to its dynamic shared memory; the attribute belongs to the
  // function, so once per process and instantiation is enough.
  static const cudaError_t attr = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)T::kSmemBytes);
  CUDA_CHECK(attr);
  const dim3 grid(ceil_div(p.K, T::kBlockN), ceil_div(p.M, T::kBlockM));
  kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  CUDA_CHECK_LAUNCH();
}

template <bool kStats, bool kPool, bool kBnSums = false>
void launch(IgemmConfig config, const IgemmParams& p, cudaStream_t stream) {
  switch (config) {
    case IgemmConfig::k128x128x32s4: return launch_tile<Tile128x128x32, kStats, kPool, kBnSums>(p, stream);
    case IgemmConfig::k128x128x64s3: return launch_tile<Tile128x128x64, kStats, kPool, kBnSums>(p, stream);
    case IgemmConfig::k128x64x32s4: return launch_tile<Tile128x64x32, kStats, kPool, kBnSums>(p, stream);
    case IgemmConfig::k64x64x32s4: return launch_tile<Tile64x64x32, kStats, kPool, kBnSums>(p, stream);
  }
  require(false, "conv_forward_igemm", "unknown IgemmConfig");
}

// Adds the conv kernel's per-block partials (already enqueued on `stream`) into stats.sum/sumsq.
void launch_stats_reduce(const IgemmStats& stats, const ConvDesc& d, int grid_m,
                         int blocks_per_group, cudaStream_t stream) {
  igemm_detail::launch_stats_reduce(stats.partials, grid_m, blocks_per_group, d.N / stats.group_images,
                                    d.K, stats.sum, stats.sumsq, stream);
}

}  // namespace

namespace igemm_detail {

void require_igemm_shape(const char* fn, const ConvDesc& d) {
  require(d.N > 0 && d.H > 0 && d.W > 0 && d.C > 0 && d.K > 0, fn, "every dimension must be positive");
  require(d.R > 0 && d.R % 2 == 1, fn, "R must be odd (pad (R - 1) / 2 keeps the size)");
  require(d.R <= 5, fn, "R must be at most 5 (the loaders keep the R*R filter taps in a 32-bit mask)");
  require(d.C % 8 == 0, fn, "C must be a multiple of 8 (16-byte vectors of 8 fp16 channels)");
  require(d.K % 8 == 0, fn, "K must be a multiple of 8 (16-byte vectors of 8 fp16 channels)");
  const long long pixels = (long long)d.N * d.H * d.W;
  const long long int_max = 2147483647LL;
  require(pixels * d.C <= int_max && pixels * d.K <= int_max &&
              (long long)d.K * d.R * d.R * d.C <= int_max,
          fn, "tensors must have fewer than 2^31 elements (32-bit indexing)");
}

IgemmParams make_igemm_params(const char* fn, const __half* x, const __half* w, __half* y,
                              const ConvDesc& d, int block_m) {
  require_igemm_shape(fn, d);
  require(x != nullptr && w != nullptr && y != nullptr, fn, "null tensor");
  require(aligned16(x) && aligned16(w) && aligned16(y), fn, "x, w and y must be 16-byte aligned");
  const long long pixels = (long long)d.N * d.H * d.W;
  require(ceil_div(pixels, (long long)block_m) <= 65535, fn,
          "too many output pixels for the grid's y dimension (ceil(N*H*W / BlockM) > 65535)");
  IgemmParams p{};
  p.x = x;
  p.w = w;
  p.y = y;
  p.argmax = nullptr;
  p.partials = nullptr;
  p.H = d.H;
  p.W = d.W;
  p.C = d.C;
  p.K = d.K;
  p.R = d.R;
  p.pad = (d.R - 1) / 2;
  p.M = (int)pixels;
  p.Kg = d.R * d.R * d.C;
  return p;
}

void launch_stats_reduce(const float* partials, int grid_m, int blocks_per_group, int groups, int K,
                         float* sum_a, float* sum_b, cudaStream_t stream) {
  const dim3 grid(ceil_div(K, kReduceChannels), groups);
  igemm_stats_reduce_kernel<<<grid, kReduceChannels * kReduceLanes, 0, stream>>>(partials, grid_m, blocks_per_group,
                                                                                 K, sum_a, sum_b);
  CUDA_CHECK_LAUNCH();
}

int set_stats_params(const char* fn, IgemmParams& p, const IgemmStats& stats, const ConvDesc& d,
                     int epilogue_m) {
  require(stats.sum != nullptr && stats.sumsq != nullptr && stats.partials != nullptr, fn,
          "null statistics buffer");
  require(stats.group_images > 0 && d.N % stats.group_images == 0, fn,
          "group_images must divide N");
  const int groups = d.N / stats.group_images;
  const int group_pixels = stats.group_images * d.H * d.W;
  // Each block's rows must lie in one group, so its partial belongs to one group.
  require(groups == 1 || group_pixels % epilogue_m == 0, fn,
          "with several groups, group_images * H * W must be a multiple of BlockM");
  require(groups <= 65535, fn, "at most 65535 groups (the reduction's grid)");
  p.partials = stats.partials;
  return groups == 1 ? ceil_div(p.M, epilogue_m) : group_pixels / epilogue_m;
}

void set_pool_params(const char* fn, IgemmParams& p, uint8_t* argmax, const ConvDesc& d, int epilogue_m) {
  require(d.H % 2 == 0 && d.W % 2 == 0, fn, "H and W must be even (2x2 stride-2 pool)");
  // m0 = blockIdx.y * BlockM is then a multiple of 2W, and an image's H*W pixels are whole row
  // pairs (H even): every tile is whole row pairs, every 2x2 window inside one tile.
  require(epilogue_m % (2 * d.W) == 0, fn,
          "BlockM must be a multiple of 2 * W (whole pairs of output rows per block)");
  require(argmax == nullptr || (reinterpret_cast<uintptr_t>(argmax) & 7) == 0, fn,
          "argmax must be 8-byte aligned");
  p.argmax = argmax;
}

int set_bn_sums_params(const char* fn, IgemmParams& p, const BnBackwardSums& bn, const ConvDesc& d,
                       int epilogue_m) {
  require(bn.bn_in != nullptr && bn.bias != nullptr && bn.save_mean != nullptr &&
              bn.save_invstd != nullptr,
          fn, "BN sums: bn_in, bias, save_mean and save_invstd are needed");
  require(bn.sum_dz != nullptr && bn.sum_dzx != nullptr && bn.partials != nullptr, fn,
          "BN sums: null sum_dz, sum_dzx or partials");
  require(aligned16(bn.bn_in) && (bn.dout2 == nullptr || aligned16(bn.dout2)), fn,
          "BN sums: bn_in and dout2 must be 16-byte aligned");
  require(bn.alpha > 0.0f, fn, "BN sums: CELU's alpha must be positive");
  require(bn.group_images > 0 && d.N % bn.group_images == 0, fn,
          "BN sums: group_images must divide N");
  const int groups = d.N / bn.group_images;
  const long long group_pixels = (long long)bn.group_images * d.H * d.W;
  require(groups == 1 || group_pixels % epilogue_m == 0, fn,
          "BN sums: with several groups, group_images * H * W must be a multiple of BlockM");
  require(groups <= 65535, fn, "BN sums: at most 65535 groups (the reduction's grid)");
  p.bn_dout2 = bn.dout2;
  p.bn_in = bn.bn_in;
  p.bn_bias = bn.bias;
  p.bn_mean = bn.save_mean;
  p.bn_invstd = bn.save_invstd;
  p.bn_alpha = bn.alpha;
  p.bn_group_pixels = (int)group_pixels;
  p.partials = bn.partials;
  const int grid_m = ceil_div(p.M, epilogue_m);
  return groups == 1 ? grid_m : (int)(group_pixels / epilogue_m);
}

void launch_igemm_bn_sums(IgemmConfig config, const IgemmParams& p, const BnBackwardSums& bn, int groups,
                          int blocks_per_group, cudaStream_t stream) {
  launch<false, false, true>(config, p, stream);
  launch_stats_reduce(bn.partials, ceil_div(p.M, igemm_config_info(config).epilogue_m), blocks_per_group, groups, p.K,
                      bn.sum_dz, bn.sum_dzx, stream);
}

}  // namespace igemm_detail

IgemmConfigInfo igemm_config_info(IgemmConfig config) {
  switch (config) {
    case IgemmConfig::k128x128x32s4: return info_of<Tile128x128x32>("128x128x32_s4");
    case IgemmConfig::k128x128x64s3: return info_of<Tile128x128x64>("128x128x64_s3");
    case IgemmConfig::k128x64x32s4: return info_of<Tile128x64x32>("128x64x32_s4");
    case IgemmConfig::k64x64x32s4: return info_of<Tile64x64x32>("64x64x32_s4");
  }
  throw std::invalid_argument("igemm_config_info: unknown IgemmConfig " +
                              std::to_string(static_cast<int>(config)));
}

void conv_forward_igemm(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                        IgemmConfig config, cudaStream_t stream) {
  const IgemmConfigInfo cfg = igemm_config_info(config);
  const IgemmParams p = make_params("conv_forward_igemm", x, w, y, d, cfg);
  launch<false, false>(config, p, stream);
}

size_t igemm_stats_scratch_bytes(const ConvDesc& d, IgemmConfig config) {
  const IgemmConfigInfo cfg = igemm_config_info(config);
  const long long grid_m = ceil_div((long long)d.N * d.H * d.W, (long long)cfg.epilogue_m);
  return 2 * (size_t)grid_m * (size_t)d.K * sizeof(float);
}

void conv_forward_igemm_stats(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                              IgemmConfig config, const IgemmStats& stats, cudaStream_t stream) {
  const char* fn = "conv_forward_igemm_stats";
  const IgemmConfigInfo cfg = igemm_config_info(config);
  IgemmParams p = make_params(fn, x, w, y, d, cfg);
  const int blocks_per_group = igemm_detail::set_stats_params(fn, p, stats, d, cfg.epilogue_m);
  launch<true, false>(config, p, stream);
  launch_stats_reduce(stats, d, ceil_div(p.M, cfg.epilogue_m), blocks_per_group, stream);
}

void conv_forward_igemm_pool(const __half* x, const __half* w, __half* y_pooled, uint8_t* argmax,
                             const ConvDesc& d, IgemmConfig config, const IgemmStats* stats,
                             cudaStream_t stream) {
  const char* fn = "conv_forward_igemm_pool";
  const IgemmConfigInfo cfg = igemm_config_info(config);
  IgemmParams p = make_params(fn, x, w, y_pooled, d, cfg);
  igemm_detail::set_pool_params(fn, p, argmax, d, cfg.epilogue_m);
  if (stats == nullptr) {
    launch<false, true>(config, p, stream);
    return;
  }
  const int blocks_per_group = igemm_detail::set_stats_params(fn, p, *stats, d, cfg.epilogue_m);
  launch<true, true>(config, p, stream);
  launch_stats_reduce(*stats, d, ceil_div(p.M, cfg.epilogue_m), blocks_per_group, stream);
}

}  // namespace kernels
