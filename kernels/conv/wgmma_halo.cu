// The halo-tile forward convolution (sm_90a; the configs wgmma_config_halo names): the tile,
// the kernel, then the launcher and the copy probe. Geometry: wgmma_detail::HaloGeometry
// (kernels/conv/wgmma_conv.cuh); design: docs/conv_kernels.md, "The halo tiles".
//
// The schedule is the im2col tile's persistent ping-pong (wgmma_conv.cu, pp_schedule): one block
// per SM walks the work units u = blockIdx.x, + gridDim.x, ...; one producer thread issues every
// copy by TMA; the block's unit i belongs to consumer warpgroup i % 2, which computes all of its
// 128 x 128 tile (two m64 tiles, 128 accumulators per thread) and stores it from its own sC while
// the other consumer computes the next unit; an `order` barrier per consumer makes them take
// turns. What differs is the operand A: instead of one im2col copy of 128 gathered pixels per
// (filter tap, 64-channel) slice, A is one copy of whole padded image rows per 64-channel slice
// into an A buffer, and the R * R taps' MMAs read it at shifted rows (a wgmma descriptor may
// start at any row of a 1024-byte-aligned 128-byte-swizzled tile with base offset 0: the
// "[halo]" probe on an H200). So A and B flow through two rings: 2 A buffers (32 KiB each) and
// 5 B stages (one tap's 128 filter rows x 64 channels, 16 KiB), each stage with a `full` mbarrier
// (the producer's expect_tx arrival, completed by the copy's bytes) and an `empty` one (one
// arrival per consumer warp once its MMAs have read the stage).
#include "kernels/conv/wgmma_halo.cuh"

#include <cuda.h>  // CUtensorMap

#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/common.cuh"
#include "kernels/conv/ptx_sm80.cuh"
#include "kernels/conv/ptx_sm90.cuh"
#include "kernels/conv/tma_map.cuh"
#include "kernels/conv/wgmma_store.cuh"

namespace kernels {

namespace {

using namespace sm90;  // the PTX wrappers (kernels/conv/ptx_sm90.cuh)
using wgmma_detail::HaloGeometry;
using wgmma_detail::sw128_desc;

// The tile: 128 positions x BlockN output channels per unit, 64-channel slices, BStages B stages.
// Shared memory: the A buffers, the B stages, the barriers, then one epilogue tile sC per
// consumer. BlockN 128: 2 x 32 + 5 x 16 + 2 x 34 KiB = 212 KiB (+ 1 KiB for aligning the base;
// a sixth B stage does not fit beside two epilogue tiles); BlockN 64 (the 64-channel outputs,
// where 128 columns would be half empty): 2 x 32 + 8 x 8 + 2 x 18 KiB = 164 KiB. With more B
// stages than leave room for the epilogue tiles (BlockN 128 with 10: 2 x 32 + 10 x 16 = 224
// KiB, the B copies run 9 taps ahead instead of 4) there are none (kDirectEpilogue): the
// consumers store y straight from their accumulators (sm90::store_acc_direct).
template <int BlockN, int BStages>
struct HaloTile {
  static constexpr int kBlockM = wgmma_detail::kHaloTileRows, kBlockN = BlockN, kBlockK = 64;
  static constexpr int kMmaThreads = 256, kThreads = 384;  // two consumer warpgroups, a producer
  static constexpr int kRowBytes = 128;                    // 64 fp16 channels
  static constexpr int kAStages = 2, kBStages = BStages;
  static constexpr int kAStageBytes = wgmma_detail::kHaloMaxRows * kRowBytes;  // 32 KiB
  static constexpr int kBStageBytes = kBlockN * kRowBytes;                     // 16 or 8 KiB
  static constexpr int kPipeBytes = kAStages * kAStageBytes + kBStages * kBStageBytes;
  static constexpr int kAccSub = kBlockN / 2;   // fp32 accumulators per m64 tile per thread
  static constexpr int kAcc = 2 * kAccSub;      // a consumer's two m64 tiles
  static constexpr int kCStride = kBlockN + 8;  // halves per sC row (padded)
  static constexpr int kEpilogueBytes = kBlockM * kCStride * 2;
  // full and empty per A buffer and per B stage, order per consumer; 8 bytes each, padded to 16.
  static constexpr int kBarrierBytes = ((2 * kAStages + 2 * kBStages + 2) * 8 + 15) & ~15;
  static constexpr bool kDirectEpilogue = (size_t)kPipeBytes + kBarrierBytes + 2 * kEpilogueBytes + 1024 > 227 * 1024;
  static constexpr size_t kSmemBytes =
      (size_t)kPipeBytes + kBarrierBytes + (kDirectEpilogue ? 0 : 2 * kEpilogueBytes) + 1024;
  static_assert(kAStageBytes % 1024 == 0 && kBStageBytes % 1024 == 0, "stages on 1024-byte swizzle atoms");
  static_assert(kEpilogueBytes % 16 == 0, "sC rows read as 16-byte vectors");
  static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
  static_assert(BlockN == 64 || BlockN == 128, "the m64n64k16 and m64n128k16 wrappers");
};
using Halo128 = HaloTile<128, 5>;
using Halo64 = HaloTile<64, 8>;
using Halo128Deep = HaloTile<128, 10>;
static_assert(!Halo128::kDirectEpilogue && !Halo64::kDirectEpilogue && Halo128Deep::kDirectEpilogue,
              "the epilogue each halo config is documented with");

template <class T>
struct HaloBarriers {
  uint32_t bars;
  __device__ uint32_t a_full(uint32_t s) const { return bars + 8u * s; }
  __device__ uint32_t a_empty(uint32_t s) const { return bars + 8u * (T::kAStages + s); }
  __device__ uint32_t b_full(uint32_t s) const { return bars + 8u * (2 * T::kAStages + s); }
  __device__ uint32_t b_empty(uint32_t s) const { return bars + 8u * (2 * T::kAStages + T::kBStages + s); }
  __device__ uint32_t order(int g) const { return bars + 8u * (2 * T::kAStages + 2 * T::kBStages + g); }
};

struct HaloParams {
  __half* y;  // [N][H][W][K]
  int N, H, W, C, K, R;
  HaloGeometry g;
  int tiles_n;  // output-channel tiles
  int units;    // position tiles (rows mode: N * g.tiles; images mode: g.tiles) * tiles_n
};

// Unit u: filter tile u % tiles_n of position tile u / tiles_n (consecutive units share their
// A rows, which then come from L2): in rows mode tile t of image n, in images mode tile t of the
// batch (n unused); `at` where its copy starts (wgmma_detail::halo_tile_at).
struct HaloWork {
  int n;
  wgmma_detail::HaloTileAt at;
  int n0;
};
template <class T>
__device__ __forceinline__ HaloWork halo_work(const HaloParams& p, int u) {
  const int nt = u % p.tiles_n, pt = u / p.tiles_n;
  const int n = p.g.images > 0 ? 0 : pt / p.g.tiles, t = p.g.images > 0 ? pt : pt - n * p.g.tiles;
  return {n, wgmma_detail::halo_tile_at(p.g, n, t), nt * T::kBlockN};
}

// The row of y [N * H * W][K] (the pixel) that position q of image n (rows mode; the batch's
// position in images mode) stores to, or -1 for a position in the padding (wgmma_detail::halo_pixel).
__device__ __forceinline__ long long halo_out_row(const HaloParams& p, int n, int q) {
  const auto px = wgmma_detail::halo_pixel(p.g, n, q, p.N, p.H, p.W);
  return px.valid ? ((long long)px.n * p.H + px.oh) * p.W + px.ow : -1LL;
}

// A consumer's two m64 accumulator tiles: registers j * kAccSub .. as the wgmma wrappers take them.
template <class T>
__device__ __forceinline__ float (&sub_acc(float (&acc)[T::kAcc], int j))[T::kAccSub] {
  return *reinterpret_cast<float(*)[T::kAccSub]>(acc + j * T::kAccSub);
}

// Grid: one block per SM (at most one per unit). Per unit and 64-channel slice cs the producer
// copies A (the unit's box at channel 64 cs, wgmma_detail::HaloGeometry) into the next A
// buffer, then for each tap (r, s) B (filter rows n0 .. n0 + BlockN - 1, columns
// (r R + s) C + 64 cs .., w as a [K][R R C] matrix) into the next B stage. A consumer's MMAs for
// slice (cs, r, s): A rows from halo_tap_row(at, r, s) of the buffer (+ 64 for the second m64
// tile), B the stage, four k16 steps of 32 bytes each. One slice of MMAs stays in flight; a B
// stage is released once the next slice's MMAs are issued and its own have completed
// (wgmma_wait<1>), an A buffer once the first slice of the next channel slice is that far.
// Parity waits are exact for the reason pp_schedule's are: the producer cannot refill a stage
// before its consumer has released it, and the order barrier keeps a consumer from waiting on a
// stage's phase before the other consumer has waited on the phase before it.
template <class T>
__global__ void __launch_bounds__(T::kThreads, 1)
    conv_fwd_wgmma_halo_kernel(const HaloParams p, const __grid_constant__ CUtensorMap tm_x,
                               const __grid_constant__ CUtensorMap tm_w) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  unsigned char* smem = smem_raw + (base - raw);
  const uint32_t a_base = base, b_base = base + T::kAStages * T::kAStageBytes;
  const HaloBarriers<T> b{base + T::kPipeBytes};
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kAStages; s++) {
      mbar_init(b.a_full(s), 1);
      mbar_init(b.a_empty(s), 4);
    }
    for (int s = 0; s < T::kBStages; s++) {
      mbar_init(b.b_full(s), 1);
      mbar_init(b.b_empty(s), 4);
    }
    mbar_init(b.order(0), 128);
    mbar_init(b.order(1), 128);
    fence_mbarrier_init_cluster();  // the inits before any TMA copy completes on them
  }
  __syncthreads();
  const int c_slices = p.C / T::kBlockK, taps = p.R * p.R;

  if (threadIdx.x >= T::kMmaThreads) {  // the producer: one thread issues every copy
    if (threadIdx.x == T::kMmaThreads) {
      const uint32_t a_bytes = (uint32_t)p.g.rows() * T::kRowBytes;  // the whole box, zeros included
      uint32_t ra = 0, rb = 0;                                       // A buffers and B stages filled so far
      for (int u = blockIdx.x; u < p.units; u += gridDim.x) {
        const HaloWork wk = halo_work<T>(p, u);
        for (int cs = 0; cs < c_slices; cs++, ra++) {
          const uint32_t sa = ra % T::kAStages;
          if (ra >= (uint32_t)T::kAStages) mbar_wait(b.a_empty(sa), (ra / T::kAStages - 1) & 1);
          mbar_arrive_expect_tx(b.a_full(sa), a_bytes);
          tma_load_4d(a_base + sa * T::kAStageBytes, &tm_x, cs * T::kBlockK, wk.at.w, wk.at.h, wk.at.n, b.a_full(sa));
          for (int tap = 0; tap < taps; tap++, rb++) {
            const uint32_t sb = rb % T::kBStages;
            if (rb >= (uint32_t)T::kBStages) mbar_wait(b.b_empty(sb), (rb / T::kBStages - 1) & 1);
            mbar_arrive_expect_tx(b.b_full(sb), T::kBStageBytes);
            tma_load_2d(b_base + sb * T::kBStageBytes, &tm_w, tap * p.C + cs * T::kBlockK, wk.n0, b.b_full(sb));
          }
        }
      }
    }
    return;  // no block-wide barrier follows: the consumers synchronise by warpgroup
  }

  const int g = threadIdx.x >> 7, tid = threadIdx.x & 127;
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;  // warp in its warpgroup
  // A consumer warp's release of a stage: one arrival (of the 4 the empty barrier counts).
  auto release = [lane](uint32_t bar) {
    if (lane == 0) mbar_arrive(bar);
  };
  // (No epilogue tiles with T::kDirectEpilogue: sC is then never used.)
  __half* sC = reinterpret_cast<__half*>(smem + T::kPipeBytes + T::kBarrierBytes + g * T::kEpilogueBytes);
  float acc[T::kAcc];
  uint32_t ra = 0, rb = 0;  // the block's A and B slices before unit i
  int i = 0;
  for (int u = blockIdx.x; u < p.units; u += gridDim.x, i++) {
    const HaloWork wk = halo_work<T>(p, u);
    if ((i & 1) != g) {  // the other consumer's unit
      ra += c_slices;
      rb += c_slices * taps;
      continue;
    }
    // My turn once the other consumer has waited for all of unit i - 1's stages.
    if (i > 0) mbar_wait(b.order(g), ((i - 1) >> 1) & 1);
#pragma unroll
    for (int e = 0; e < T::kAcc; e++) acc[e] = 0.0f;
    const uint32_t a_tile = (uint32_t)wk.at.offset * T::kRowBytes;  // tap (0, 0)'s first row
    for (int cs = 0; cs < c_slices; cs++, ra++) {
      const uint32_t sa = ra % T::kAStages;
      mbar_wait(b.a_full(sa), (ra / T::kAStages) & 1);
      const uint32_t a_stage = a_base + sa * T::kAStageBytes + a_tile;
      for (int r = 0; r < p.R; r++) {
        for (int s = 0; s < p.R; s++, rb++) {
          const uint32_t sb = rb % T::kBStages;
          mbar_wait(b.b_full(sb), (rb / T::kBStages) & 1);
          // Both operands came by TMA (async proxy): no proxy fence before the MMAs.
          const uint32_t a_tap = a_stage + (uint32_t)(r * p.g.wp + s) * T::kRowBytes;
          const uint32_t b_stage = b_base + sb * T::kBStageBytes;
          wgmma_slice<1>(acc, [&] {
#pragma unroll
            for (int kk = 0; kk < T::kBlockK / 16; kk++)
#pragma unroll
              for (int j = 0; j < 2; j++)
                wgmma_m64k16<T::kBlockN>(sub_acc<T>(acc, j), sw128_desc(a_tap + j * 64 * T::kRowBytes + kk * 32),
                                         sw128_desc(b_stage + kk * 32));
          });
          // The previous slice's MMAs have completed: its B stage, and at the first tap of a
          // channel slice the previous channel slice's A buffer, may be refilled.
          const bool first_tap = r == 0 && s == 0;
          if (cs > 0 || !first_tap) release(b.b_empty((rb - 1) % T::kBStages));
          if (cs > 0 && first_tap) release(b.a_empty((ra - 1) % T::kAStages));
        }
      }
    }
    mbar_arrive(b.order(g ^ 1));  // the other consumer's turn
    wgmma_wait<0>();
    fence_operands(acc);
    if (c_slices > 0) {
      release(b.b_empty((rb - 1) % T::kBStages));
      release(b.a_empty((ra - 1) % T::kAStages));
    }

    // Epilogue: the accumulators -> fp16 sC [128][kCStride] -> y, 16 bytes per store, for the
    // positions that are pixels (wgmma_detail::halo_pixel) and the channels that exist; or,
    // with no sC, the same straight from the registers.
    if constexpr (T::kDirectEpilogue) {
      store_acc_direct<2, T::kBlockN>(acc, p.y, p.K, wk.n0, warp, lane,
                                      [&](int row) { return halo_out_row(p, wk.n, wk.at.q0 + row); });
      continue;
    }
    warpgroup_barrier_sync(g);  // this consumer's previous epilogue has read all of sC
#pragma unroll
    for (int e = 0; e < T::kAcc; e += 2) {
      const auto at = wgmma_detail::block_acc_coord(2 * T::kBlockM, T::kBlockN, warp, lane, e);
      *reinterpret_cast<__half2*>(sC + at.row * T::kCStride + at.col) = __floats2half2_rn(acc[e], acc[e + 1]);
    }
    warpgroup_barrier_sync(g);
    constexpr int kChunks = T::kBlockN / 8;  // 16-byte chunks per row
    for (int idx = tid; idx < T::kBlockM * kChunks; idx += 128) {
      const int row = idx / kChunks, chunk = idx - row * kChunks;
      const long long out = halo_out_row(p, wk.n, wk.at.q0 + row);
      const int col = wk.n0 + chunk * 8;
      if (out >= 0 && col < p.K)
        *reinterpret_cast<uint4*>(p.y + out * p.K + col) =
            *reinterpret_cast<const uint4*>(sC + row * T::kCStride + chunk * 8);
    }
  }
}

// One halo copy into shared memory, written back as it landed (tma_halo_probe): thread 0
// arrives on an mbarrier expecting the box's bytes and issues the copy exactly as the tile's
// producer does; every thread waits, then the block copies the bytes out.
__global__ void __launch_bounds__(128)
    tma_halo_probe_kernel(const __grid_constant__ CUtensorMap map, int c, int w, int h, int n, int bytes, uint4* out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t bar = base + (uint32_t)Halo128::kAStageBytes;
  const unsigned char* smem = smem_raw + (base - raw);
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    fence_mbarrier_init_cluster();
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(bar, (uint32_t)bytes);
    tma_load_4d(base, &map, c, w, h, n, bar);
  }
  mbar_wait(bar, 0);
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x) out[i] = *reinterpret_cast<const uint4*>(smem + 16 * i);
}

// The kernel's shared-memory attribute, set once per tile.
template <class T>
const cudaError_t& halo_kernel_attributes() {
  static const cudaError_t e = cudaFuncSetAttribute(conv_fwd_wgmma_halo_kernel<T>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, (int)T::kSmemBytes);
  return e;
}

// Calls f(tile) with the tile `id` names.
template <class F>
void with_halo_tile(wgmma_detail::HaloTileId id, F&& f) {
  if (id.block_n == 128 && id.b_stages == Halo128::kBStages) return f(Halo128{});
  if (id.block_n == 64 && id.b_stages == Halo64::kBStages) return f(Halo64{});
  if (id.block_n == 128 && id.b_stages == Halo128Deep::kBStages) return f(Halo128Deep{});
  throw std::invalid_argument("wgmma halo tile: no tile of " + std::to_string(id.block_n) + " columns with " +
                              std::to_string(id.b_stages) + " B stages");
}

}  // namespace

namespace wgmma_detail {

void conv_forward_wgmma_halo(const __half* x, const __half* w, __half* y, const ConvDesc& d, HaloTileId id,
                             cudaStream_t stream) {
  with_halo_tile(id, [&](auto tile) {
    using T = decltype(tile);
    CUDA_CHECK(halo_kernel_attributes<T>());
    HaloParams p{};
    p.y = y;
    p.N = d.N;
    p.H = d.H;
    p.W = d.W;
    p.C = d.C;
    p.K = d.K;
    p.R = d.R;
    p.g = halo_geometry(d.N, d.H, d.W, d.R);
    p.tiles_n = ceil_div(d.K, T::kBlockN);
    const long long units = (p.g.images > 0 ? 1LL : (long long)d.N) * p.g.tiles * p.tiles_n;
    if (units > (1LL << 30)) throw std::invalid_argument("conv_forward_wgmma_halo: too many tiles for one launch");
    p.units = (int)units;
    // x as (C, W, H, N) in boxes of whole padded rows (or images); w as a [K][R R C] matrix in
    // boxes of BlockN filter rows x 64 columns.
    const CUtensorMap tm_x =
        tma::tma_map_4d(x, d.N, d.H, d.W, d.C, p.g.wp, p.g.box_rows, p.g.images > 0 ? p.g.images : 1);
    const CUtensorMap tm_w = tma::tma_map_2d(w, d.K, d.R * d.R * d.C, T::kBlockN);
    conv_fwd_wgmma_halo_kernel<T><<<persistent_blocks(units), T::kThreads, T::kSmemBytes, stream>>>(p, tm_x, tm_w);
    CUDA_CHECK_LAUNCH();
  });
}

HaloTileInfo halo_tile_info(HaloTileId id) {
  HaloTileInfo info{};
  with_halo_tile(id, [&](auto tile) {
    using T = decltype(tile);
    info = {T::kThreads, T::kSmemBytes, T::kBStages};
  });
  return info;
}

int halo_blocks_per_sm(HaloTileId id) {
  int blocks = 0;
  with_halo_tile(id, [&](auto tile) {
    using T = decltype(tile);
    CUDA_CHECK(halo_kernel_attributes<T>());
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, conv_fwd_wgmma_halo_kernel<T>, T::kThreads,
                                                             T::kSmemBytes));
  });
  return blocks;
}

void tma_halo_probe(const __half* x, const ConvDesc& d, int box_w, int box_h, int box_n, int c, int w, int h, int n,
                    __half* out, cudaStream_t stream) {
  const char* fn = "tma_halo_probe";
  require(x != nullptr && out != nullptr && aligned16(x) && aligned16(out), fn, "x and out: non-null, 16-byte aligned");
  require(d.N > 0 && d.H > 0 && d.W > 0 && d.C > 0 && d.C % 64 == 0, fn, "needs a non-empty x with C a multiple of 64");
  require(box_w >= 1 && box_w <= 256 && box_h >= 1 && box_h <= 256 && box_n >= 1 && box_n <= 256 &&
              box_w * box_h * box_n <= kHaloMaxRows,
          fn, "box_w, box_h, box_n in [1, 256] with box_w * box_h * box_n at most kHaloMaxRows");
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  const int bytes = box_w * box_h * box_n * Halo128::kRowBytes;
  const size_t smem = (size_t)Halo128::kAStageBytes + 8 + 1024;
  CUDA_CHECK(cudaFuncSetAttribute(tma_halo_probe_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  const CUtensorMap map = tma::tma_map_4d(x, d.N, d.H, d.W, d.C, box_w, box_h, box_n);
  tma_halo_probe_kernel<<<1, 128, smem, stream>>>(map, c, w, h, n, bytes, reinterpret_cast<uint4*>(out));
  CUDA_CHECK_LAUNCH();
}

}  // namespace wgmma_detail

}  // namespace kernels
