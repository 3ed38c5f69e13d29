// Implicit-GEMM forward convolution with wgmma (sm_90a): kernel, then launchers.
// Interface and layouts: kernels/conv/wgmma_conv.cuh. Design notes: docs/conv_kernels.md.
//
// One thread block (two warpgroups, 256 threads) computes a 128 x BlockN tile of y, walking the
// GEMM's K = R*R*C in slices of 64:
//   1. every thread issues cp.async 16-byte copies of the A slice (gathered from x: implicit
//      im2col, zero-filled in the padding) and the B slice (filter rows) into a stage, in the
//      128-byte swizzled layout wgmma reads, Stages - 1 slices ahead;
//   2. once a slice has landed (cp.async.wait_group, then fence.proxy.async so the tensor
//      cores see the generic-proxy writes, then a barrier), each warpgroup issues four
//      wgmma.m64nNk16 on its 64 rows (A and B both from shared memory through descriptors) and
//      waits for them (or, in the _async configs, for the previous slice's) before going on;
//   3. the epilogue rounds the fp32 accumulators to fp16 through shared memory and writes y
//      with 16-byte coalesced stores, as the mma.sync kernel does.
// The _ws configs split steps 1 and 2 between warpgroups (wgmma_ws_pipeline): a third
// warpgroup only issues the copies, the two MMA warpgroups only compute, and mbarriers per
// stage replace the per-slice __syncthreads.
//
// The weight-gradient kernel (after the forward's launchers) runs the same pipeline over a
// slab of 64-pixel slices with the operands pixel-major (wgmma's transposed operand mode, the
// M/N-major layout of wgmma_detail::sw128_mn_offset) and stores its fp32 partial dw straight
// from the accumulators; conv_wgrad_reduce adds the slabs.
#include "kernels/conv/wgmma_conv.cuh"

#include <cuda.h>  // CUtensorMap (the type only: the driver call goes through the runtime)

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/common.cuh"
#include "kernels/conv/conv_epilogue.cuh"
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/igemm_loader.cuh"
#include "kernels/conv/ptx_sm80.cuh"
#include "kernels/conv/ptx_sm90.cuh"
#include "kernels/conv/tma_map.cuh"
#include "kernels/conv/wgmma_halo.cuh"
#include "kernels/conv/wgmma_store.cuh"

namespace kernels {

namespace {

using namespace sm90;  // the PTX wrappers (kernels/conv/ptx_sm90.cuh)
using tma::tma_map_2d;
using tma::tma_map_im2col;
using wgmma_detail::acc_coord;
using wgmma_detail::sw128_desc;
using wgmma_detail::sw128_offset;

// ------------------------------------------------------------------------------ the tile

// MmaInFlight: how many slices' MMAs a warpgroup leaves running when it moves on (0: it waits
// for each slice's MMAs; 1: the next slice's MMAs queue behind the previous ones, so the tensor
// cores never drain at the barrier, and the loads run one slice less far ahead). Stages: the
// pipeline depth (loads run Stages - 1 - MmaInFlight slices ahead). Producer 0: all 256 threads
// load and compute, a __syncthreads per slice; 1: warp-specialized, a third warpgroup (threads
// 256..383) only loads and the two MMA warpgroups only compute, handing stages over through
// mbarriers (WsBarriers, after the stages) with no block-wide barrier in the main loop.
// L1: 1 copies the gathered activations through L1 (cp.async.ca) and sizes the shared-memory
// carveout to the block, leaving the rest of the SM's 256 KiB to L1 (set_smem_attributes).
// BlockM: 128 output pixels (a warpgroup's 64 rows: one m64 MMA tile) or 256 (128 rows: two
// m64 tiles per warpgroup, each with its own accumulators and A descriptor, the same B).
// Producer 2: the persistent ping-pong schedule (the _pp configs, conv_fwd_wgmma_pp below): a
// BlockM x BlockN tile is one consumer warpgroup's (two m64 tiles), the two consumer warpgroups
// take turns on a persistent block's tiles, and each has its own sC for its epilogue (with 5
// stages the two share one, in turn: kOneEpilogue; with 6, a compact one: kCompactC). Producer
// 3: the same, with the operand that needs no gather (the forward's filter rows, the weight
// gradient's dy rows) copied by TMA from one producer thread (the _pp_tma configs). Producer 4:
// both operands by TMA, the gathered one in TMA's im2col mode; one producer thread issues all
// copies and the rest of its warpgroup idles (the _pp_im2col config). Producer 5, 6, 7: the
// same in clusters of 2, 4, 8 blocks that take tiles with the same filter rows (consecutive
// row tiles, one filter tile) at the same time, each copying its 1 / kCluster of B by TMA
// multicast into all of them (the _pp_im2col_c2, _c4, _c8 configs): B's L2 reads divide by the
// cluster size. Producer 8: persistent and cooperative (coop_schedule, the _coop_im2col
// configs): both operands by TMA as with 4, but both consumer warpgroups compute every tile
// together, each its BlockM / 2 rows (one or two m64 tiles) x all BlockN columns, so the tile
// can be 128 x 256 or 256 x 128 (128 accumulators per thread) where a ping-pong consumer's
// whole tile must fit its registers; they store it from registers (kDirectEpilogue) while the
// producer already loads the next tile's slices, and run the fused epilogues each in a stage of
// the tile that it holds (coop_schedule's kHold).
template <int BlockM, int BlockN, int MmaInFlight, int Stages, int Producer, int L1>
struct WgTile {
  static constexpr int kBlockM = BlockM, kBlockN = BlockN, kBlockK = 64, kStages = Stages;
  static constexpr int kMmaInFlight = MmaInFlight, kProducer = Producer, kL1 = L1;
  static constexpr bool kPingPong = Producer >= 2 && Producer <= 7;
  static constexpr bool kCoop = Producer == 8;
  static constexpr bool kPersistent = kPingPong || kCoop;  // conv_fwd_wgmma_pp_kernel's schedules
  static constexpr bool kTma = Producer >= 3;     // B (the filter rows) by TMA
  static constexpr bool kIm2col = Producer >= 4;  // A too (im2col): no cp.async loader at all
  // blocks per cluster, sharing B
  static constexpr int kCluster = Producer >= 5 && Producer <= 7 ? 1 << (Producer - 4) : 1;
  static constexpr int kTmaBRows = BlockN / kCluster;                        // B rows each block copies
  static constexpr int kLoadAhead = wgmma_detail::load_ahead(kStages, MmaInFlight);
  static constexpr int kMmaThreads = 256;                        // two warpgroups
  static constexpr int kSubM = kPingPong ? BlockM / 64 : BlockM / 128;  // m64 tiles per warpgroup
  static constexpr int kThreads = kMmaThreads + (Producer ? 128 : 0);
  static constexpr int kLoaderThreads = Producer ? 128 : kMmaThreads;
  static constexpr int kRowBytes = 128;        // one 64-element fp16 row per pixel / filter
  static constexpr int kChunksK = 8;           // 16-byte chunks per row
  static constexpr int kRowStep = kLoaderThreads / kChunksK;  // rows per loader pass: 32 or 16
  static constexpr int kARows = kBlockM / kRowStep, kBRows = BlockN / kRowStep;
  static constexpr int kABytes = kBlockM * kRowBytes, kBBytes = BlockN * kRowBytes;
  static constexpr int kStageBytes = kABytes + kBBytes;  // a multiple of 1024: atoms stay aligned
  static constexpr int kTmaBytes = kIm2col ? kStageBytes : kBBytes;  // the TMA copies per slice
  static_assert(kTmaBytes % 1024 == 0, "TMA boxes land on 1024-byte swizzle atoms");
  static constexpr int kAccSub = BlockN / 2;             // fp32 accumulators per m64 tile
  static constexpr int kAcc = kSubM * kAccSub;           // per thread
  static constexpr int kCStride = BlockN + 8;            // halves per padded sC row (as mma.sync)
  static constexpr int kPipeBytes = kStages * kStageBytes;
  // sC, then the epilogues' scratch (statistics, pool, BN-backward sums; conv_epilogue.cuh);
  // ping-pong: one of each per consumer warpgroup, whose 128 threads run its epilogue on its
  // tile; cooperative: each consumer runs it on its kEpilogueM = BlockM / 2 rows.
  static constexpr int kEpilogueThreads = kPersistent ? 128 : kMmaThreads;
  static constexpr int kEpilogueM = kCoop ? BlockM / 2 : BlockM;
  static constexpr int kRedBytes = igemm_detail::epilogue_red_bytes<BlockN, kEpilogueThreads>();
  static constexpr int kPaddedEpilogueBytes = kEpilogueM * kCStride * 2 + kRedBytes;
  // The compact buffer: sC swizzled, unpadded, the scratch over it (igemm_detail::SwizzledC).
  static constexpr int kCompactEpilogueBytes =
      kEpilogueM * BlockN * 2 > kRedBytes ? kEpilogueM * BlockN * 2 : kRedBytes;
  // Whether `buffers` epilogue buffers of `bytes` fit beside a ping-pong tile's stages.
  // ((2 * kStages + 4) * 8: the barriers below with epi, at most, after the padding.)
  static constexpr bool fits_beside_stages(int buffers, int bytes) {
    return (size_t)kPipeBytes + (2 * kStages + 4) * 8 + (size_t)buffers * bytes + 1024 <= 227 * 1024;
  }
  // Ping-pong: each consumer has its own epilogue buffer, unless two do not fit beside the
  // stages (the 5-stage tile): then both use one, in turn (pp_schedule's epi barrier). Where not
  // even one padded buffer fits, one compact one (kCompactC: the 6-stage tile); where not even
  // that (the 7-stage tile, the 9-stage 64-column one), none: the consumers store y straight
  // from their accumulators (sm90::store_acc_direct, kernels/conv/wgmma_store.cuh) and run the
  // fused epilogues in their tile's last stage, which they hold until done (kHeld in
  // conv_fwd_wgmma_pp_kernel). The cooperative tiles always store from registers (their one
  // tile-wide sC would not fit beside even 3 stages: docs/conv_kernels.md) and run the fused
  // epilogues in held stages too, one per consumer (coop_schedule).
  static constexpr bool kDirectEpilogue =
      kCoop || (kPingPong && !fits_beside_stages(1, kPaddedEpilogueBytes) &&
                !fits_beside_stages(1, kCompactEpilogueBytes));
  static constexpr bool kCompactC = kPingPong && !kDirectEpilogue && !fits_beside_stages(1, kPaddedEpilogueBytes);
  using CLayout = std::conditional_t<kCompactC, igemm_detail::SwizzledC<BlockN>, igemm_detail::PaddedC<kCStride>>;
  static constexpr int kEpilogueBytes = kCompactC ? kCompactEpilogueBytes : kPaddedEpilogueBytes;
  static constexpr int kRedOffset = kCompactC ? 0 : kEpilogueM * kCStride * 2;  // red's byte offset in the buffer
  static constexpr bool kOneEpilogue = kPingPong && !kDirectEpilogue && !fits_beside_stages(2, kEpilogueBytes);
  // full[], empty[] after the stages; ping-pong: also order[2] (and with one epilogue buffer
  // epi), 8 bytes each, padded to 16.
  static constexpr int kBarrierBytes =
      kPingPong ? (((2 * kStages + 2 + (kOneEpilogue ? 1 : 0)) * 8 + 15) & ~15) : Producer ? 2 * kStages * 8 : 0;
  // + 1024: the dynamic shared memory base is rounded up to the swizzle atom. Ping-pong: the
  // stages, the barriers, then the consumers' epilogue buffers (the producer keeps loading the
  // next tiles into the stages while a consumer runs its epilogue).
  static constexpr int kEpilogueBuffers = kDirectEpilogue ? 0 : kOneEpilogue ? 1 : 2;  // ping-pong
  static constexpr size_t kSmemBytes =
      kPingPong ? (size_t)kPipeBytes + kBarrierBytes + kEpilogueBuffers * kEpilogueBytes + 1024
      : kCoop   ? (size_t)kPipeBytes + kBarrierBytes + 1024  // no sC: the register epilogue
                : (size_t)(kPipeBytes + kBarrierBytes > kEpilogueBytes ? kPipeBytes + kBarrierBytes : kEpilogueBytes) +
                      1024;
  static_assert(BlockN == 64 || BlockN == 128 || (BlockN == 256 && Producer),
                "wgmma wrappers for n64, n128 and n256 (n256: 128 accumulators, with a producer)");
  static_assert((BlockM == 128 && !kPingPong) || (kAcc <= 128 && Producer),
                "two m64 tiles per warpgroup (256 rows, or a ping-pong tile): at most 128 accumulators, with a producer");
  static_assert(!kPingPong || (BlockM == 128 && MmaInFlight == 1), "ping-pong: 128-row tiles, one slice of MMAs in flight");
  static_assert(!kDirectEpilogue || BlockN % 32 == 0, "the register epilogue stores quads of 8-column blocks");
  static_assert(Producer >= 0 && Producer <= 8,
                "no producer, a producer warpgroup, ping-pong (3: B by TMA, 4: both by TMA, 5-7: and clusters), "
                "cooperative (8)");
  static_assert(!kCoop || ((BlockM == 128 || BlockM == 256) && MmaInFlight == 1),
                "cooperative: 128 or 256 rows (one or two m64 tiles per consumer), one slice in flight");
  static_assert(kTmaBRows % 8 == 0 && (kTmaBRows * kRowBytes) % 1024 == 0, "B's parts: whole swizzle atoms");
  static_assert(L1 == 0 || L1 == 1, "through L1 or not");
  static_assert(kARows * kRowStep == kBlockM && kBRows * kRowStep == BlockN, "loader: whole passes");
  static_assert(MmaInFlight == 0 || MmaInFlight == 1, "one or two slices of MMAs at a time");
  static_assert(kLoadAhead >= 1, "the loads must run ahead");
  static_assert(kStageBytes % 1024 == 0 && kABytes % 1024 == 0, "1024-byte swizzle atoms");
  static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
};

using igemm_detail::ConvEpilogue;
using igemm_detail::IgemmParams;

// Where a stage's (row, chunk) lives: sA [BlockM rows] then sB [BlockN rows] of 128 bytes each,
// in the 128-byte swizzle (wgmma_detail::sw128_offset).
template <class T>
struct Sw128Layout {
  static __device__ __forceinline__ uint32_t a_dst(uint32_t stage, int row, int chunk) {
    return stage + sw128_offset(row, chunk);
  }
  static __device__ __forceinline__ uint32_t b_dst(uint32_t stage, int row, int chunk) {
    return stage + T::kABytes + sw128_offset(row, chunk);
  }
};

// ------------------------------------------------------------------------- the main loop

// The pipeline both kernels run over their k_tiles slices: the loads run T::kLoadAhead slices
// ahead through T::kStages stages (loader.load(p, stage) issues one slice's cp.async copies
// into the stage at that shared-memory address), and for each slice that has landed
// mmas(acc, stage) issues this warpgroup's wgmma instructions on it. acc starts at zero and
// holds the result when this returns; every MMA has completed and only empty cp.async groups
// remain.
template <class T, class Loader, class Params, class Mmas>
__device__ __forceinline__ void wgmma_mainloop(Loader& loader, const Params& p, uint32_t base, int k_tiles,
                                               float (&acc)[T::kAcc], Mmas mmas) {
  // Not unrolled: with 4 or more weight-gradient slices unrolled here (the deep configs), ptxas
  // serialises the wgmma instructions (C7515, "non wgmma instructions defining accumulator
  // registers"); rolled, no kernel gets that note (checked with -Xptxas -v, CUDA 13.0).
#pragma unroll 1
  for (int s = 0; s < T::kLoadAhead; s++) {
    if (s < k_tiles) loader.load(p, base + s * T::kStageBytes);
    ptx::cp_async_commit();
  }
#pragma unroll
  for (int e = 0; e < T::kAcc; e++) acc[e] = 0.0f;

  for (int kt = 0; kt < k_tiles; kt++) {
    // Slice kt has landed (this thread's copies), is visible to the async proxy, and (barrier)
    // everyone's copies have. The stage refilled next, (kt + kLoadAhead) % Stages, was last read
    // by the MMAs of slice kt - 1 - kMmaInFlight, which every warpgroup waited for at the end of
    // an earlier iteration, before this barrier.
    ptx::cp_async_wait<T::kLoadAhead - 1>();
    fence_proxy_async();
    __syncthreads();
    const int next = kt + T::kLoadAhead;
    if (next < k_tiles) loader.load(p, base + (next % T::kStages) * T::kStageBytes);
    ptx::cp_async_commit();

    wgmma_slice<T::kMmaInFlight>(acc, [&] { mmas(acc, base + (kt % T::kStages) * T::kStageBytes); });
  }
  wgmma_wait<0>();
  fence_operands(acc);
  ptx::cp_async_wait<0>();
}

// The warp-specialized pipeline (T::kProducer): the same contract for the MMA threads
// (threadIdx.x < T::kMmaThreads: acc holds the result when this returns true), while the
// producer warpgroup loads every slice and returns false. Each stage s has two mbarriers at
// `bars` (8 bytes each): full[s] completes when all 128 producer threads' copies of the slice
// it holds have landed and been fenced for the async proxy; empty[s] (one arrival per MMA warp)
// when both warpgroups' MMAs on it have completed, so it can be refilled. A producer thread
// signals slice j once its copies of j are complete, which it learns from cp.async.wait_group
// after issuing slice j + kLoadAhead: so the loads of kLoadAhead + 1 slices overlap. That
// lead is the most the stages allow: refilling the stage of slice j + kLoadAhead needs the
// MMAs of slice j + kLoadAhead - kStages done, which the MMA warps release after waiting for
// slice j - 1 (kLoadAhead = kStages - 1 - kMmaInFlight). The caller has initialised the
// barriers (ws_init_barriers) and synchronised the block.
// Several runs in a row (the stream-K weight gradient's segments, each with its own loader):
// r0 = the slices of the earlier runs, so the stages and barrier phases continue where they
// left off, as in one long run; and kReleaseAll, so that each run's MMA warps release the
// stages of its last kMmaInFlight slices once those MMAs are done (a single run leaves them:
// nothing refills them). The two roles are ws_produce and ws_consume, for a kernel that runs
// each role's loop over its runs on its own (so that neither role's registers stay live in the
// other's code).
template <class T, class Loader, class Params>
__device__ __forceinline__ void ws_produce(Loader& loader, const Params& p, uint32_t base, uint32_t bars, int k_tiles,
                                           uint32_t r0 = 0) {
  auto full = [bars](uint32_t s) { return bars + 8u * s; };
  auto empty = [bars](uint32_t s) { return bars + 8u * (T::kStages + s); };
  for (int kt = 0; kt < k_tiles; kt++) {
    const uint32_t r = r0 + kt, s = r % T::kStages;
    if (r >= (uint32_t)T::kStages) mbar_wait(empty(s), (r / T::kStages - 1) & 1);
    loader.load(p, base + s * T::kStageBytes);
    ptx::cp_async_commit();
    if (kt >= T::kLoadAhead) {
      ptx::cp_async_wait<T::kLoadAhead>();  // slice kt - kLoadAhead has landed
      fence_proxy_async();
      mbar_arrive(full((r - T::kLoadAhead) % T::kStages));
    }
  }
  ptx::cp_async_wait<0>();
  fence_proxy_async();
  for (int j = max(0, k_tiles - T::kLoadAhead); j < k_tiles; j++) mbar_arrive(full((r0 + j) % T::kStages));
}

template <class T, bool kReleaseAll = false, class Mmas>
__device__ __forceinline__ void ws_consume(uint32_t base, uint32_t bars, int k_tiles, float (&acc)[T::kAcc], Mmas mmas,
                                           uint32_t r0 = 0) {
  auto full = [bars](uint32_t s) { return bars + 8u * s; };
  auto empty = [bars](uint32_t s) { return bars + 8u * (T::kStages + s); };
#pragma unroll
  for (int e = 0; e < T::kAcc; e++) acc[e] = 0.0f;
  const bool warp_leader = (threadIdx.x & 31) == 0;
  for (int kt = 0; kt < k_tiles; kt++) {
    const uint32_t r = r0 + kt, s = r % T::kStages;
    mbar_wait(full(s), (r / T::kStages) & 1);
    wgmma_slice<T::kMmaInFlight>(acc, [&] { mmas(acc, base + s * T::kStageBytes); });
    // The MMAs of slice kt - kMmaInFlight have completed: its stage may be refilled.
    if (kt >= T::kMmaInFlight && warp_leader) mbar_arrive(empty((r - T::kMmaInFlight) % T::kStages));
  }
  wgmma_wait<0>();
  fence_operands(acc);
  if constexpr (kReleaseAll) {
    if (warp_leader)
      for (int j = max(0, k_tiles - T::kMmaInFlight); j < k_tiles; j++) mbar_arrive(empty((r0 + j) % T::kStages));
  }
}

template <class T, class Loader, class Params, class Mmas>
__device__ __forceinline__ bool wgmma_ws_pipeline(Loader& loader, const Params& p, uint32_t base, uint32_t bars,
                                                  int k_tiles, float (&acc)[T::kAcc], Mmas mmas) {
  if (threadIdx.x >= T::kMmaThreads) {
    ws_produce<T>(loader, p, base, bars, k_tiles);
    return false;
  }
  ws_consume<T>(base, bars, k_tiles, acc, mmas);
  return true;
}

// The warp-specialized pipeline's mbarriers, after the stages: initialised by thread 0, then
// the whole block synchronises (before any thread uses them).
template <class T>
__device__ __forceinline__ uint32_t ws_init_barriers(uint32_t base) {
  const uint32_t bars = base + T::kPipeBytes;
  if (T::kProducer && threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; s++) {
      mbar_init(bars + 8u * s, T::kLoaderThreads);                   // full: every producer thread
      mbar_init(bars + 8u * (T::kStages + s), T::kMmaThreads / 32);  // empty: every MMA warp
    }
  }
  __syncthreads();
  return bars;
}

// Both pipelines behind one call: runs T's (the block-wide or the warp-specialized one) and
// returns whether this thread holds accumulators (false: a producer thread, done).
template <class T, class Loader, class Params, class Mmas>
__device__ __forceinline__ bool wgmma_pipeline(Loader& loader, const Params& p, uint32_t base, int k_tiles,
                                               float (&acc)[T::kAcc], Mmas mmas) {
  if constexpr (T::kProducer) {
    const uint32_t bars = ws_init_barriers<T>(base);
    return wgmma_ws_pipeline<T>(loader, p, base, bars, k_tiles, acc, mmas);
  } else {
    wgmma_mainloop<T>(loader, p, base, k_tiles, acc, mmas);
    return true;
  }
}

// A barrier among the threads that hold accumulators (all of them, or the MMA warpgroups once
// the producer has left).
template <class T>
__device__ __forceinline__ void mma_threads_sync() {
  if constexpr (T::kProducer)
    named_barrier_sync(T::kMmaThreads);
  else
    __syncthreads();
}

// ------------------------------------------------------------- the persistent ping-pong schedule

// One block per SM (grid: min(units, SMs)) walks the work units u = blockIdx.x, + gridDim.x,
// ... (a unit is one tile; with clusters, T::kCluster > 1, the cluster walks units u =
// cluster index, + clusters, ..., and a unit is one tile per block of the cluster, all sharing
// their B rows: work(u) gives this block's); its i-th tile is consumer warpgroup i % 2's. The producer warpgroup (threads 256..383) loads
// every tile's slices in that order through one ring of T::kStages stages: slice number r of
// the block (counting over its tiles) goes to stage r % kStages. cp.async copies arrive on the
// stage's full barrier when they land (cp_async_mbar_arrive_noinc), so the producer never
// waits for its own copies, only for a stage to be released. The consumers take turns: a
// warpgroup starts waiting for its tile's slices only once the other has waited for all of
// its previous tile's (the order barriers), then hands over and runs its epilogue while the
// other computes. That turn-taking also keeps every mbarrier wait exact: a parity wait only
// tells the phase it waits for from the one two phases earlier because no consumer waits
// for slice r before slice r - kStages has been waited for (CUTLASS's ping-pong kernel does
// the same with its order barrier).
// Barriers at `bars` (8 bytes each): full[s] (every producer thread's copies of the slice in
// stage s landed: kLoaderThreads arrivals; with T::kTma one more, producer thread 0's, which
// also expects the TMA copy's bytes; with T::kIm2col only that one), empty[s] (the MMAs on it
// completed: one arrival per warp of the consumer, of every block of the cluster), order[g]
// (the other consumer finished waiting for its tile's slices: 128 arrivals), with
// T::kOneEpilogue epi (the previous tile's epilogue is done with the shared buffer: 128
// arrivals, one phase per tile). With clusters a
// stage's B arrives from every block's producer (its multicast part), so a producer refills a
// stage only when the consumers of all blocks have released it, and full[s] counts the peers'
// bytes too (they may land before this block's producer arrives with expect_tx: the phase
// still needs that arrival).
// work(u) gives this block's tile {m0, n0, k_tiles, z} of unit u; make_loader(work, tid) a loader for it
// (load(p, stage_addr) issues one slice and steps; never called with T::kIm2col); with
// T::kTma, tma(work, kt, stage_addr, full_bar) issues slice kt's TMA copies (producer thread 0,
// after mbar_arrive_expect_tx of T::kTmaBytes); mmas(acc, stage_addr, g) issues consumer g's
// wgmma instructions on a stage; epilogue(acc, work, g, tid) stores a consumer's tile (tid:
// 0..127 in warpgroup g).
struct PpWork {
  int m0, n0, k_tiles, z;
};

// Where accumulator register e of thread `lane` of warp `warp` (0..3 in its warpgroup) lies in
// a ping-pong consumer's BlockM x BlockN tile (its two m64 tiles): block_acc_coord of a block
// twice as tall, whose first warpgroup holds rows 0 .. BlockM - 1.
template <class T>
__device__ __forceinline__ wgmma_detail::AccCoord pp_acc_coord(int warp, int lane, int e) {
  return wgmma_detail::block_acc_coord(2 * T::kBlockM, T::kBlockN, warp, lane, e);
}

template <class T>
struct PpBarriers {
  uint32_t bars;
  __device__ uint32_t full(uint32_t s) const { return bars + 8u * s; }
  __device__ uint32_t empty(uint32_t s) const { return bars + 8u * (T::kStages + s); }
  __device__ uint32_t order(int g) const { return bars + 8u * (2 * T::kStages + g); }
  __device__ uint32_t epi() const { return bars + 8u * (2 * T::kStages + 2); }  // T::kOneEpilogue only
};

template <class T, bool kHold, class Params, class WorkOf, class MakeLoader, class Tma, class Mmas, class Epilogue>
__device__ __forceinline__ void pp_schedule(const Params& p, uint32_t base, int units, WorkOf work,
                                            MakeLoader make_loader, Tma tma, Mmas mmas, Epilogue epilogue) {
  static_assert(T::kProducer >= 2 && T::kMmaInFlight == 1 && T::kLoaderThreads == 128 && T::kThreads == 384,
                "a ping-pong tile: a producer and two consumer warpgroups, one slice of MMAs in flight");
  constexpr int kCs = T::kCluster;
  const PpBarriers<T> b{base + T::kPipeBytes};
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; s++) {
      mbar_init(b.full(s), T::kIm2col ? 1 : T::kLoaderThreads + (T::kTma ? 1 : 0));
      mbar_init(b.empty(s), 4 * kCs);
    }
    mbar_init(b.order(0), 128);
    mbar_init(b.order(1), 128);
    if constexpr (T::kOneEpilogue) mbar_init(b.epi(), 128);
    // The inits before any TMA copy completes on these barriers (the async proxy) and, in a
    // cluster, before the other blocks arrive on them and copy into this one (CUTLASS's TMA
    // pipelines fence here whatever the cluster size).
    if constexpr (T::kTma) fence_mbarrier_init_cluster();
  }
  if constexpr (kCs > 1)
    cluster_sync();
  else
    __syncthreads();
  // The work units u = first, first + step, ...; a cluster's blocks walk the same ones.
  const int first = blockIdx.x / kCs, step = gridDim.x / kCs;
  // A stage is free again once the consumers of every block of the cluster have released it:
  // each block's producer refills its own copy and (kCs > 1) multicasts into the others'. A
  // consumer warp releases it with one arrival per block: lane 0 on its own barrier, or lane c
  // on block c's. The arrivals go out as one instruction of the warp: the first clustered tiles
  // had lane 0 arrive on each block in turn with release semantics at cluster scope, and ran
  // 1.8x (2 blocks) to 4x (8 blocks) slower than the same tile without a cluster on the H200
  // (session 10's conv_bench); CUTLASS's consumer_release spreads the arrivals over threads
  // too, and uses the default (CTA-scope) release, as here: what must precede a peer's refill
  // is that this warp's MMAs have read the stage (wgmma_wait), not any memory write of its own.
  auto release = [&b](uint32_t s) {
    const uint32_t lane = threadIdx.x & 31;
    if constexpr (kCs > 1) {
      if (lane < (uint32_t)kCs) mbar_arrive_remote(b.empty(s), lane);
    } else {
      if (lane == 0) mbar_arrive(b.empty(s));
    }
  };

  if (threadIdx.x >= T::kMmaThreads) {  // the producer
    const int tid = threadIdx.x - T::kMmaThreads;
    if (!T::kIm2col || tid == 0) {  // with T::kIm2col every copy is a TMA copy: thread 0 issues them
      uint32_t r = 0;
      for (int u = first; u < units; u += step) {
        const PpWork wk = work(u);
        if constexpr (T::kIm2col) {
          for (int kt = 0; kt < wk.k_tiles; kt++, r++) {
            const uint32_t s = r % T::kStages;
            if (r >= (uint32_t)T::kStages) mbar_wait<(kCs > 1)>(b.empty(s), (r / T::kStages - 1) & 1);
            mbar_arrive_expect_tx(b.full(s), T::kTmaBytes);
            tma(wk, kt, base + s * T::kStageBytes, b.full(s));
          }
        } else {
          auto loader = make_loader(wk, tid);
          for (int kt = 0; kt < wk.k_tiles; kt++, r++) {
            const uint32_t s = r % T::kStages;
            if (r >= (uint32_t)T::kStages) mbar_wait<(kCs > 1)>(b.empty(s), (r / T::kStages - 1) & 1);
            loader.load(p, base + s * T::kStageBytes);
            cp_async_mbar_arrive_noinc(b.full(s));
            if constexpr (T::kTma) {
              if (tid == 0) {
                mbar_arrive_expect_tx(b.full(s), T::kTmaBytes);
                tma(wk, kt, base + s * T::kStageBytes, b.full(s));
              }
            }
          }
        }
      }
      ptx::cp_async_wait<0>();  // none pending with T::kIm2col
    }
  } else {
    const int g = threadIdx.x >> 7, tid = threadIdx.x & 127;
    float acc[T::kAcc];
    uint32_t r = 0;  // the block's slice count before unit i
    int i = 0;
    for (int u = first; u < units; u += step, i++) {
      const PpWork wk = work(u);
      if ((i & 1) != g) {  // the other consumer's tile
        r += wk.k_tiles;
        continue;
      }
      // My turn once the other consumer has waited for all of tile i - 1's slices (the order
      // barrier's phase (i - 1) / 2: it arrives once per tile of its own).
      if (i > 0) mbar_wait(b.order(g), ((i - 1) >> 1) & 1);
#pragma unroll
      for (int e = 0; e < T::kAcc; e++) acc[e] = 0.0f;
      for (int kt = 0; kt < wk.k_tiles; kt++, r++) {
        const uint32_t s = r % T::kStages;
        mbar_wait(b.full(s), (r / T::kStages) & 1);
        // cp.async copies (generic proxy) made visible to the tensor cores (async proxy). With
        // T::kIm2col every copy is TMA, which writes through the async proxy and completes on
        // the barrier: nothing to fence (CUTLASS's TMA consumers do not), and the fence sat
        // between every full wait and its MMAs.
        if constexpr (!T::kIm2col) fence_proxy_async();
        wgmma_slice<1>(acc, [&] { mmas(acc, base + s * T::kStageBytes, g); });
        // The MMAs of the previous slice of this tile have completed: release its stage.
        if (kt > 0) release((r - 1) % T::kStages);
      }
      mbar_arrive(b.order(g ^ 1));  // the other consumer's turn
      wgmma_wait<0>();
      fence_operands(acc);
      const uint32_t last = (r - 1) % T::kStages;  // the tile's last slice's stage (k_tiles > 0)
      if (!kHold && wk.k_tiles > 0) release(last);
      // With one epilogue buffer, tile i's epilogue starts once tile i - 1's (the other
      // consumer's) is done with it: every thread of that one arrives on epi after its last
      // read of the buffer (phase i - 1).
      if constexpr (T::kOneEpilogue) {
        if (i > 0) mbar_wait(b.epi(), (i - 1) & 1);
      }
      epilogue(acc, wk, g, tid, base + last * T::kStageBytes);
      if constexpr (T::kOneEpilogue) mbar_arrive(b.epi());
      if constexpr (kHold) {
        // The epilogue used the last slice's stage as its buffer, through the generic proxy:
        // order this thread's accesses before the TMA copies (async proxy) that refill it, then
        // release it, each warp once all its lanes are done.
        fence_proxy_async();
        __syncwarp();
        if (wk.k_tiles > 0) release(last);
      }
    }
  }
  // The blocks of a cluster arrive on each other's barriers and copy into each other's shared
  // memory: none may exit while another still can.
  if constexpr (kCs > 1) cluster_sync();
}

// The persistent cooperative schedule (T::kCoop): one block per SM walks the work units u =
// blockIdx.x, + gridDim.x, ... as in pp_schedule, but both consumer warpgroups compute every
// unit, each its half of the tile (mmas(acc, stage, g) issues consumer g's MMAs), then both
// store it (epilogue(acc, work, g, tid), from registers) while the producer thread already
// copies the next unit's slices into the stages they have released. One ring of T::kStages
// stages, slice number r of the block (over its units) in stage r % kStages; per stage a
// `full` mbarrier (one arrival: the producer's expect_tx, completed by the TMA copies' bytes)
// and an `empty` one (one arrival per consumer warp, 8: both warpgroups must have read the
// stage). Parity waits are exact: a consumer waits for slice r only after it has read slice
// r - kStages, and the producer refills that stage only once both consumers have released slice
// r - kStages, so a full barrier is at most one phase ahead of the wait; an empty barrier's
// next phase cannot start before its current one completes, since a consumer's release of slice
// r + kStages needs that slice copied, which needs the current phase (slice r) complete. This
// is the warp-specialized pipeline's protocol (wgmma_ws_pipeline, whose host model covers it)
// over the block's slices of all its units, with TMA copies instead of cp.async.
// kHold (the fused epilogues, which stage a consumer's half of the tile in shared memory): each
// consumer keeps one stage of the unit through its epilogue, consumer g the one of slice
// k_tiles - 1 - g, and runs its epilogue there (its compact sC fits a stage: the static_assert
// in conv_fwd_wgmma_pp_kernel). Both consumers' MMAs read every stage, so neither writes one
// before both are past a common barrier after their last MMAs; then each releases the other's
// stage (read, never written by it) and, after its epilogue, its own. With one slice per unit
// (R * R * C = 64) the two share that stage in turn: consumer 1's epilogue after consumer 0's,
// a second common barrier between them. tests/wgmma_coop_model_test.cpp models this.
template <class T, bool kHold, class Params, class WorkOf, class Tma, class Mmas, class Epilogue>
__device__ __forceinline__ void coop_schedule(const Params& p, uint32_t base, int units, WorkOf work, Tma tma,
                                              Mmas mmas, Epilogue epilogue) {
  static_assert(T::kProducer == 8 && T::kCoop && T::kIm2col && T::kMmaInFlight == 1 && T::kThreads == 384,
                "a cooperative tile: both operands by TMA, one slice of MMAs in flight, a producer warpgroup");
  const uint32_t bars = base + T::kPipeBytes;
  auto full = [bars](uint32_t s) { return bars + 8u * s; };
  auto empty = [bars](uint32_t s) { return bars + 8u * (T::kStages + s); };
  if (threadIdx.x == 0) {
    for (int s = 0; s < T::kStages; s++) {
      mbar_init(full(s), 1);
      mbar_init(empty(s), T::kMmaThreads / 32);
    }
    fence_mbarrier_init_cluster();  // the inits before any TMA copy completes on them
  }
  __syncthreads();
  if (threadIdx.x >= T::kMmaThreads) {  // the producer: one thread issues every copy
    if (threadIdx.x == T::kMmaThreads) {
      uint32_t r = 0;
      for (int u = blockIdx.x; u < units; u += gridDim.x) {
        const PpWork wk = work(u);
        for (int kt = 0; kt < wk.k_tiles; kt++, r++) {
          const uint32_t s = r % T::kStages;
          if (r >= (uint32_t)T::kStages) mbar_wait(empty(s), (r / T::kStages - 1) & 1);
          mbar_arrive_expect_tx(full(s), T::kTmaBytes);
          tma(wk, kt, base + s * T::kStageBytes, full(s));
        }
      }
    }
    return;  // no block-wide barrier follows
  }
  const int g = threadIdx.x >> 7, tid = threadIdx.x & 127;
  const bool warp_leader = (threadIdx.x & 31) == 0;
  float acc[T::kAcc];
  uint32_t r = 0;
  for (int u = blockIdx.x; u < units; u += gridDim.x) {
    const PpWork wk = work(u);
#pragma unroll
    for (int e = 0; e < T::kAcc; e++) acc[e] = 0.0f;
    for (int kt = 0; kt < wk.k_tiles; kt++, r++) {
      const uint32_t s = r % T::kStages;
      mbar_wait(full(s), (r / T::kStages) & 1);
      // Both operands came by TMA (async proxy): no proxy fence before the MMAs.
      wgmma_slice<1>(acc, [&] { mmas(acc, base + s * T::kStageBytes, g); });
      // The previous slice's MMAs have completed: release its stage (kHold: not consumer 1's
      // held one, the unit's last but one).
      if (kt > 0 && !(kHold && kt == wk.k_tiles - 1) && warp_leader) mbar_arrive(empty((r - 1) % T::kStages));
    }
    wgmma_wait<0>();
    fence_operands(acc);
    if constexpr (!kHold) {
      if (wk.k_tiles > 0 && warp_leader) mbar_arrive(empty((r - 1) % T::kStages));
      epilogue(acc, wk, g, tid, 0u);  // no held stage
    } else {
      // Every MMA of both consumers on the unit's stages has completed (k_tiles > 0: the
      // launcher's Kg > 0).
      mma_threads_sync<T>();
      const bool two = wk.k_tiles >= 2;
      const uint32_t mine = (r - 1 - (two ? g : 0)) % T::kStages;
      if (two && warp_leader) mbar_arrive(empty((r - 2 + g) % T::kStages));  // the other's
      if (!two && g == 1) mma_threads_sync<T>();  // one stage: after consumer 0's epilogue
      epilogue(acc, wk, g, tid, base + mine * T::kStageBytes);
      // The epilogue wrote the stage through the generic proxy: order this thread's accesses
      // before the TMA copies (async proxy) that refill it, then release it, each warp once all
      // its lanes are done.
      fence_proxy_async();
      __syncwarp();
      if (warp_leader) mbar_arrive(empty(mine));
      if (!two && g == 0) mma_threads_sync<T>();  // consumer 1's turn in the one stage
    }
  }
}

// The persistent kernels' schedule: ping-pong (pp_schedule) or cooperative (coop_schedule, which
// has no cp.async loader: make_loader unused). kHold: a consumer keeps a stage of its tile
// through its epilogue, which uses it as its buffer (the fused epilogues of the tiles with no
// epilogue buffer), and releases it after: the ping-pong consumer its tile's last stage, the
// cooperative ones one stage each (coop_schedule).
template <class T, bool kHold = false, class Params, class WorkOf, class MakeLoader, class Tma, class Mmas,
          class Epilogue>
__device__ __forceinline__ void persistent_schedule(const Params& p, uint32_t base, int units, WorkOf work,
                                                    MakeLoader make_loader, Tma tma, Mmas mmas, Epilogue epilogue) {
  if constexpr (T::kCoop)
    coop_schedule<T, kHold>(p, base, units, work, tma, mmas, epilogue);
  else
    pp_schedule<T, kHold>(p, base, units, work, make_loader, tma, mmas, epilogue);
}

// ---------------------------------------------------------------------------- the kernel

// The accumulators of m64 tile j of a thread's kSubM (registers j * kAccSub .. + kAccSub - 1),
// as the array the wgmma wrappers take.
template <class T>
__device__ __forceinline__ float (&sub_acc(float (&acc)[T::kAcc], int j))[T::kAccSub] {
  return *reinterpret_cast<float(*)[T::kAccSub]>(acc + j * T::kAccSub);
}

// Grid: x over output-channel tiles, y over 128-pixel tiles. As many blocks share an SM as its
// shared memory allows (one or two, wgmma_blocks_per_sm); __launch_bounds__ promises ptxas only
// one, so it does not cap the registers (they allow two anyway, see set_smem_attributes).
// E: the epilogue (conv_epilogue.cuh): y stored, + BN-backward sums (y an input gradient),
// + BN statistics, or the fused 2x2 max-pool (+ statistics of the pooled values).
template <class T, ConvEpilogue E = ConvEpilogue::kStore>
__global__ void __launch_bounds__(T::kThreads, 1) conv_fwd_wgmma_kernel(const IgemmParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  unsigned char* smem = smem_raw + (base - raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp >> 2;  // warpgroup: rows BlockM / 2 * group .. + BlockM / 2 - 1
  const int n0 = blockIdx.x * T::kBlockN, m0 = blockIdx.y * T::kBlockM;
  const int k_tiles = ceil_div(p.Kg, T::kBlockK);

  // The loading threads: all of them, or the producer warpgroup (numbered from 0).
  igemm_detail::TileLoader<T, Sw128Layout<T>> loader(p, m0, n0, threadIdx.x % T::kLoaderThreads);
  float acc[T::kAcc];
  // A: this warpgroup's BlockM / 2 pixel rows, 64 per m64 tile; B: all BlockN filter rows;
  // K-major, +32 bytes per k16.
  const bool mma_thread = wgmma_pipeline<T>(loader, p, base, k_tiles, acc, [group](float (&a)[T::kAcc], uint32_t stage) {
    const uint32_t a_addr = stage + group * (T::kBlockM / 2) * T::kRowBytes, b_addr = stage + T::kABytes;
#pragma unroll
    for (int kk = 0; kk < T::kBlockK / 16; kk++)
#pragma unroll
      for (int j = 0; j < T::kSubM; j++)
        wgmma_m64k16<T::kBlockN>(sub_acc<T>(a, j), sw128_desc(a_addr + j * 64 * T::kRowBytes + kk * 32),
                                 sw128_desc(b_addr + kk * 32));
  });
  if (!mma_thread) return;
  mma_threads_sync<T>();  // every warpgroup is done with the stages before sC overwrites them

  // Epilogue: accumulators -> fp16 sC (padded rows) -> y in 16-byte chunks (coalesced).
  static_assert(!T::kCompactC, "the compact epilogue buffer is the ping-pong tiles'");
  __half* sC = reinterpret_cast<__half*>(smem);
#pragma unroll
  for (int e = 0; e < T::kAcc; e += 2) {
    const auto at = wgmma_detail::block_acc_coord(T::kBlockM, T::kBlockN, warp, lane, e);
    *reinterpret_cast<__half2*>(sC + T::CLayout::at(at.row, at.col)) = __floats2half2_rn(acc[e], acc[e + 1]);
  }
  mma_threads_sync<T>();
  // sC -> y (or the pooled y) in 16-byte chunks (coalesced), with the epilogue's sums through
  // the scratch after sC.
  igemm_detail::conv_epilogue<E, T::kBlockM, T::kBlockN, T::kMmaThreads, typename T::CLayout>(
      sC, reinterpret_cast<float*>(smem + T::kRedOffset), p, m0, n0, threadIdx.x, [] { mma_threads_sync<T>(); });
}

// The ping-pong forward's work units for an M x K output: one per tile, or with clusters one
// per kCluster row tiles of a filter tile.
template <class T>
__host__ __device__ inline int pp_fwd_units(int M, int K) {
  return ceil_div(K, T::kBlockN) * ceil_div(ceil_div(M, T::kBlockM), T::kCluster);
}

// The persistent ping-pong forward (T::kPingPong; pp_schedule): tile t covers output pixels
// m0 = (t / tiles_n) * BlockM .. and channels n0 = (t % tiles_n) * BlockN .. (consecutive tiles
// share their pixels, so their A slices come from L2). A consumer warpgroup's MMAs: both m64
// tiles of its 128 rows against all BlockN filter rows per k16. Its epilogue: the accumulators
// to fp16 in its own sC, then conv_epilogue with the warpgroup's 128 threads, while the other
// consumer computes (or, kDirectEpilogue, straight from the registers, and the fused epilogues
// in the tile's last stage: kHeld below). The cooperative tile
// (T::kCoop; coop_schedule) runs the same units, consumer g computing its BlockM / 2 rows of
// each (one or two m64 tiles) and storing them from registers, or running the fused epilogues
// on them (kEpilogueM rows, its 128 threads) in a stage it holds.
// tm_b (T::kTma only): the filters w as a [K][Kg] matrix, boxes of BlockN rows x 64 columns in
// the 128-byte swizzle (tma_map_2d): B of slice kt of tile (m0, n0) is the box at (kt * 64, n0).
// tm_a (T::kIm2col only): x in im2col mode, BlockM pixels x 64 channels in the same swizzle
// (tma_map_im2col): A of slice kt of tile m0 starts at im2col_start(m0, kt * 64).
// With clusters (T::kCluster blocks) unit u is the row tiles (u / tiles_n) * kCluster + rank of
// the filter tile u % tiles_n, block `rank` taking its own; tm_b's boxes are then kTmaBRows
// rows, block `rank` copying rows n0 + rank * kTmaBRows .. of B into every block of the cluster.
// Row tiles past M (the last unit's, when the row tiles do not divide by kCluster) are computed
// on zeros (their A starts past the last image) and not stored.
template <class T, ConvEpilogue E = ConvEpilogue::kStore>
__global__ void __launch_bounds__(T::kThreads, 1)
    conv_fwd_wgmma_pp_kernel(const IgemmParams p, const __grid_constant__ CUtensorMap tm_a,
                             const __grid_constant__ CUtensorMap tm_b) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;  // swizzle atoms need 1024-byte alignment
  unsigned char* smem = smem_raw + (base - raw);
  const int tiles_n = ceil_div(p.K, T::kBlockN);
  const int units = pp_fwd_units<T>(p.M, p.K);
  const int k_tiles = ceil_div(p.Kg, T::kBlockK);
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;  // warp in its warpgroup
  const int rank = T::kCluster > 1 ? (int)cluster_ctarank() : 0;
  // The fused epilogues of a tile with no epilogue buffer run in a stage of the tile held
  // through the epilogue (persistent_schedule's kHold: a ping-pong consumer's last, one per
  // cooperative consumer), in the compact layout (a stage of 128 pixel rows holds a 128-row sC,
  // the scratch over it; a cooperative stage of 48 KiB a consumer's 32 KiB).
  constexpr bool kHeld = T::kDirectEpilogue && E != ConvEpilogue::kStore;
  static_assert(!kHeld || (T::kEpilogueM * T::kBlockN * 2 <= T::kStageBytes && T::kRedBytes <= T::kStageBytes),
                "a held stage holds a consumer's compact sC and the scratch over it");
  constexpr bool kSwizzledC = kHeld || T::kCompactC;
  using CL = std::conditional_t<kHeld, igemm_detail::SwizzledC<T::kBlockN>, typename T::CLayout>;
  persistent_schedule<T, kHeld>(
      p, base, units,
      [=](int u) {
        return PpWork{((u / tiles_n) * T::kCluster + rank) * T::kBlockM, (u % tiles_n) * T::kBlockN, k_tiles, 0};
      },
      [&p](const PpWork& wk, int tid) { return igemm_detail::TileLoader<T, Sw128Layout<T>>(p, wk.m0, wk.n0, tid); },
      [&](const PpWork& wk, int kt, uint32_t stage, uint32_t bar) {
        if constexpr (T::kIm2col)
          tma_load_im2col(stage, &tm_a,
                          wgmma_detail::im2col_start(wk.m0, kt * T::kBlockK, p.M / (p.H * p.W), p.H, p.W, p.C, p.R),
                          bar);
        if constexpr (T::kCluster > 1)
          tma_load_2d_multicast(stage + T::kABytes + rank * T::kTmaBRows * T::kRowBytes, &tm_b, kt * T::kBlockK,
                                wk.n0 + rank * T::kTmaBRows, bar, (uint16_t)((1u << T::kCluster) - 1));
        else
          tma_load_2d(stage + T::kABytes, &tm_b, kt * T::kBlockK, wk.n0, bar);
      },
      [](float (&a)[T::kAcc], uint32_t stage, int g) {
        // A: the tile's 128 pixel rows, 64 per m64 tile (cooperative: this consumer's BlockM / 2);
        // B: all BlockN filter rows; K-major, +32 bytes per k16.
        const uint32_t a_rows = stage + (T::kCoop ? g * (T::kBlockM / 2) * T::kRowBytes : 0);
#pragma unroll
        for (int kk = 0; kk < T::kBlockK / 16; kk++)
#pragma unroll
          for (int j = 0; j < T::kSubM; j++)
            wgmma_m64k16<T::kBlockN>(sub_acc<T>(a, j), sw128_desc(a_rows + j * 64 * T::kRowBytes + kk * 32),
                                     sw128_desc(stage + T::kABytes + kk * 32));
      },
      [&](float (&a)[T::kAcc], const PpWork& wk, int g, int tid, uint32_t last_stage) {
        // This consumer's first row. None past the output: a cluster's row tile past it (see
        // above), a cooperative consumer's half of the last row tile; that consumer writes
        // no partials either (each of the ceil(M / kEpilogueM) partials rows has rows < M).
        const int m0 = wk.m0 + (T::kCoop ? g * T::kEpilogueM : 0);
        if (m0 >= p.M) return;
        if constexpr (T::kDirectEpilogue && !kHeld) {
          static_assert(E == ConvEpilogue::kStore, "the register epilogue only stores y");
          const int M = p.M;
          store_acc_direct<T::kSubM, T::kBlockN>(a, p.y, p.K, wk.n0, warp, lane,
                                                 [=](int row) { return m0 + row < M ? (long long)(m0 + row) : -1LL; });
          return;
        }
        unsigned char* epi = kHeld ? smem + (last_stage - base)
                                   : smem + T::kPipeBytes + T::kBarrierBytes +
                                         (T::kOneEpilogue ? 0 : g) * T::kEpilogueBytes;
        __half* sC = reinterpret_cast<__half*>(epi);
        // This consumer's previous epilogue has read all of sC; with a held stage, every warp's
        // MMAs have read the stage (a warp's wgmma_wait covers its own part of the warpgroup's
        // MMAs, which all read the whole of B; the cooperative schedule has passed a barrier of
        // both consumers already).
        warpgroup_barrier_sync(g);
        if constexpr (kSwizzledC) {
          // Swizzled sC: this thread's rows r0 + 64 j + 8 h (pp_acc_coord) share one chunk
          // offset per 8-column block b (SwizzledC::chunk_at), its column pair 2 (lane % 4) + {0, 1}.
          const int r0 = 16 * warp + (lane >> 2);
#pragma unroll
          for (int b = 0; b < T::kBlockN / 8; b++) {
            __half* const chunk = sC + CL::chunk_at(r0, b) + 2 * (lane & 3);
#pragma unroll
            for (int j = 0; j < T::kSubM; j++)
#pragma unroll
              for (int h = 0; h < 2; h++) {
                const int e = j * T::kAccSub + 4 * b + 2 * h;
                *reinterpret_cast<__half2*>(chunk + (64 * j + 8 * h) * T::kBlockN) = __floats2half2_rn(a[e], a[e + 1]);
              }
          }
        } else {
#pragma unroll
          for (int e = 0; e < T::kAcc; e += 2) {
            const auto at = pp_acc_coord<T>(warp, lane, e);
            *reinterpret_cast<__half2*>(sC + CL::at(at.row, at.col)) = __floats2half2_rn(a[e], a[e + 1]);
          }
        }
        warpgroup_barrier_sync(g);
        igemm_detail::conv_epilogue<E, T::kEpilogueM, T::kBlockN, T::kEpilogueThreads, CL>(
            sC, reinterpret_cast<float*>(epi + (kHeld ? 0 : T::kRedOffset)), p, m0, wk.n0, tid,
            [g] { warpgroup_barrier_sync(g); });
      });
}

// The forward kernel of a tile: the persistent one (ping-pong or cooperative) for the _pp and _coop tiles.
template <class T, ConvEpilogue E = ConvEpilogue::kStore>
constexpr auto fwd_kernel() {
  if constexpr (T::kPersistent)
    return conv_fwd_wgmma_pp_kernel<T, E>;
  else
    return conv_fwd_wgmma_kernel<T, E>;
}

// A launch configuration of `clusters` clusters of `cluster` blocks along x (the _c2 tile's
// persistent grid); not copyable, since `config` points to `attr`.
struct ClusterLaunch {
  cudaLaunchAttribute attr[1];
  cudaLaunchConfig_t config;
  ClusterLaunch(int clusters, int cluster, int threads, size_t smem, cudaStream_t stream) : attr{}, config{} {
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = (unsigned)cluster;
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    config.gridDim = dim3((unsigned)(clusters * cluster));
    config.blockDim = dim3((unsigned)threads);
    config.dynamicSmemBytes = smem;
    config.stream = stream;
    config.attrs = attr;
    config.numAttrs = 1;
  }
  ClusterLaunch(const ClusterLaunch&) = delete;
  ClusterLaunch& operator=(const ClusterLaunch&) = delete;
};

// How many clusters of `cluster` such blocks the device runs at once (cudaOccupancyMaxActiveClusters;
// a persistent clustered grid launches no more). Throws if not one fits.
template <class Kernel>
int max_active_clusters(Kernel* kernel, int cluster, int threads, size_t smem) {
  const ClusterLaunch launch(1, cluster, threads, smem, nullptr);
  int clusters = 0;
  CUDA_CHECK(cudaOccupancyMaxActiveClusters(&clusters, kernel, &launch.config));
  if (clusters < 1)
    throw std::runtime_error("wgmma: not one cluster of " + std::to_string(cluster) + " blocks of " +
                             std::to_string(threads) + " threads and " + std::to_string(smem) +
                             " bytes of shared memory fits this device");
  return clusters;
}

// Launches Kernel, a persistent ping-pong kernel of tile T, over `units` work units: one block
// per SM (at most one per unit), or with T::kCluster > 1 as many clusters as the device runs at
// once (at most one per unit; counted once per kernel).
template <class T, auto* Kernel, class... Args>
void launch_persistent(int units, cudaStream_t stream, const Args&... args) {
  if constexpr (T::kCluster > 1) {
    static const int max_clusters = max_active_clusters(Kernel, T::kCluster, T::kThreads, T::kSmemBytes);
    const ClusterLaunch launch(std::min(units, max_clusters), T::kCluster, T::kThreads, T::kSmemBytes, stream);
    CUDA_CHECK(cudaLaunchKernelEx(&launch.config, Kernel, args...));
  } else {
    Kernel<<<dim3(persistent_blocks(units)), T::kThreads, T::kSmemBytes, stream>>>(args...);
  }
}


// ------------------------------------------------------------------------- TMA copy probes

// One TMA copy exactly as the TMA tiles issue it, for the "[tma]" tests (tma_im2col_probe,
// tma_tile_probe): thread 0 initialises one mbarrier, arrives on it expecting `bytes` (the
// whole box, or with kMode 2 every block's part) and issues the copy into 1024-byte aligned
// shared memory; every thread waits for the barrier's first phase, then the block writes the
// bytes as they landed (still swizzled) to out + rank * bytes. kMode 0: the 2-D box at (c0, c1);
// 1: the im2col copy at `at`; 2: a cluster of bytes / (part_rows * 128) blocks, block `rank`
// copying the box at (c0, c1 + rank * part_rows) by multicast into all of them at
// part_rows * 128 * rank bytes.
template <int kMode>
__global__ void __launch_bounds__(128) tma_probe_kernel(const __grid_constant__ CUtensorMap map,
                                                        wgmma_detail::Im2colStart at, int c0, int c1, int part_rows,
                                                        int bytes, uint4* out) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t bar = base + (uint32_t)bytes;  // bytes: a multiple of 1024
  const unsigned char* smem = smem_raw + (base - raw);
  const uint32_t rank = kMode == 2 ? cluster_ctarank() : 0;
  if (threadIdx.x == 0) {
    mbar_init(bar, 1);
    fence_mbarrier_init_cluster();
  }
  if constexpr (kMode == 2)
    cluster_sync();  // the peer's multicast completes on this block's barrier
  else
    __syncthreads();
  if (threadIdx.x == 0) {
    mbar_arrive_expect_tx(bar, (uint32_t)bytes);
    if constexpr (kMode == 0) tma_load_2d(base, &map, c0, c1, bar);
    if constexpr (kMode == 1) tma_load_im2col(base, &map, at, bar);
    if constexpr (kMode == 2) {
      const uint32_t blocks = (uint32_t)bytes / ((uint32_t)part_rows * 128u);
      tma_load_2d_multicast(base + rank * (uint32_t)part_rows * 128u, &map, c0, c1 + (int)rank * part_rows, bar,
                            (uint16_t)((1u << blocks) - 1));
    }
  }
  mbar_wait(bar, 0);
  for (int i = threadIdx.x; i < bytes / 16; i += blockDim.x)
    out[rank * (uint32_t)(bytes / 16) + i] = *reinterpret_cast<const uint4*>(smem + 16 * i);
  if constexpr (kMode == 2) cluster_sync();  // no block leaves while the other's copy may still write into it
}

// Launches tma_probe_kernel<kMode> with one block (for kMode 2, one cluster of `cluster`).
template <int kMode>
void launch_tma_probe(const CUtensorMap& map, const wgmma_detail::Im2colStart& at, int c0, int c1, int part_rows,
                      int bytes, int cluster, __half* out, cudaStream_t stream) {
  auto* kernel = tma_probe_kernel<kMode>;
  const size_t smem = (size_t)bytes + 8 + 1024;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
  uint4* dst = reinterpret_cast<uint4*>(out);
  if constexpr (kMode == 2) {
    const ClusterLaunch launch(1, cluster, 128, smem, stream);
    CUDA_CHECK(cudaLaunchKernelEx(&launch.config, kernel, map, at, c0, c1, part_rows, bytes, dst));
  } else {
    kernel<<<1, 128, smem, stream>>>(map, at, c0, c1, part_rows, bytes, dst);
  }
  CUDA_CHECK_LAUNCH();
}

// The probes of a halo tile's shifted operands (wgmma_detail::wgmma_shift_probe, _mn): one
// warpgroup stores A then B, rows of 64 fp16 each, in the 128-byte swizzle, 1024-byte aligned
// (row r, chunk c at sw128_offset(r, c)), then runs four m64n64k16 wgmma and stores d [64][64].
// K-major (kMn false): A has 72 rows, B 64, d = A[shift .. shift + 63] x B^T over the 64
// columns, A's descriptor starting `shift` rows (shift * 128 bytes) into its tile with
// `base_offset` in the descriptor's bits 49-51. M/N-major (kMn true, the weight gradient's
// operand mode, the reduction down the rows): A has 64 rows, B 72, d[m][n] = sum over k < 64 of
// A[k][m] B[shift + k][n], B's descriptor starting `shift` rows into its tile; a k16 step is 16
// rows, two 8-row atoms (2048 bytes), and with one 64-column block the leading-dimension offset
// (the column-block stride) is never used.
template <bool kMn>
struct ShiftProbe {
  static constexpr int kARows = kMn ? 64 : 72, kBRows = kMn ? 72 : 64;
  static constexpr int kSmemBytes = (kARows + kBRows) * 128 + 1024;  // + base alignment
};
template <bool kMn>
__global__ void __launch_bounds__(128) wgmma_shift_probe_kernel(const __half* __restrict__ a,
                                                                const __half* __restrict__ b, int shift,
                                                                int base_offset, float* __restrict__ d) {
  constexpr int kARows = ShiftProbe<kMn>::kARows, kBRows = ShiftProbe<kMn>::kBRows;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  unsigned char* smem = smem_raw + (base - raw);
  for (int i = threadIdx.x; i < (kARows + kBRows) * 8; i += blockDim.x) {
    const int row = i / 8, chunk = i % 8;
    const bool is_a = row < kARows;
    const __half* src = is_a ? a + (size_t)row * 64 + chunk * 8 : b + (size_t)(row - kARows) * 64 + chunk * 8;
    const uint32_t dst = is_a ? sw128_offset(row, chunk) : kARows * 128 + sw128_offset(row - kARows, chunk);
    *reinterpret_cast<uint4*>(smem + dst) = *reinterpret_cast<const uint4*>(src);
  }
  fence_proxy_async();  // the generic-proxy stores, before the tensor cores read them
  __syncthreads();
  float acc[32];
#pragma unroll
  for (int e = 0; e < 32; e++) acc[e] = 0.0f;
  fence_operands(acc);
  wgmma_fence();
#pragma unroll
  for (int kk = 0; kk < 4; kk++) {
    if constexpr (kMn)
      wgmma_m64k16<64, 1>(acc, wgmma_detail::sw128_mn_desc(base + kk * 2048, kARows * 128),
                          wgmma_detail::sw128_mn_desc(base + kARows * 128 + shift * 128 + kk * 2048, kBRows * 128));
    else
      wgmma_m64k16<64>(acc, sw128_desc(base + shift * 128 + kk * 32) | ((uint64_t)(base_offset & 7) << 49),
                       sw128_desc(base + kARows * 128 + kk * 32));
  }
  wgmma_commit();
  wgmma_wait<0>();
  fence_operands(acc);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
  for (int e = 0; e < 32; e++) {
    const auto at = acc_coord(warp, lane, e);
    d[at.row * 64 + at.col] = acc[e];
  }
}

// ---------------------------------------------------------------------------- launchers

// Each WgmmaConfig's tile parameters (BlockM, BlockN, MmaInFlight, Stages, Producer, L1), for either
// kernel's tile template: calls f(Tile<...>{}) (the tiles are empty types carrying their
// constants).
template <template <int, int, int, int, int, int> class Tile, class F>
void with_tile(WgmmaConfig config, F&& f) {
  switch (config) {
    case WgmmaConfig::k128x128x64s4: return f(Tile<128, 128, 0, 4, 0, 0>{});
    case WgmmaConfig::k128x64x64s4: return f(Tile<128, 64, 0, 4, 0, 0>{});
    case WgmmaConfig::k128x128x64s4Async: return f(Tile<128, 128, 1, 4, 0, 0>{});
    case WgmmaConfig::k128x64x64s4Async: return f(Tile<128, 64, 1, 4, 0, 0>{});
    case WgmmaConfig::k128x128x64s6Async: return f(Tile<128, 128, 1, 6, 0, 0>{});
    case WgmmaConfig::k128x64x64s8Async: return f(Tile<128, 64, 1, 8, 0, 0>{});
    case WgmmaConfig::k128x128x64s3: return f(Tile<128, 128, 0, 3, 0, 0>{});
    case WgmmaConfig::k128x128x64s4Ws: return f(Tile<128, 128, 1, 4, 1, 0>{});
    case WgmmaConfig::k128x128x64s6Ws: return f(Tile<128, 128, 1, 6, 1, 0>{});
    case WgmmaConfig::k128x256x64s4Ws: return f(Tile<128, 256, 1, 4, 1, 0>{});
    case WgmmaConfig::k128x128x64s4AsyncL1: return f(Tile<128, 128, 1, 4, 0, 1>{});
    case WgmmaConfig::k128x128x64s4WsL1: return f(Tile<128, 128, 1, 4, 1, 1>{});
    case WgmmaConfig::k256x128x64s4Ws: return f(Tile<256, 128, 1, 4, 1, 0>{});
    case WgmmaConfig::k128x128x64s4Pp: return f(Tile<128, 128, 1, 4, 2, 0>{});
    case WgmmaConfig::k128x128x64s4PpTma: return f(Tile<128, 128, 1, 4, 3, 0>{});
    case WgmmaConfig::k128x128x64s4PpIm2col: return f(Tile<128, 128, 1, 4, 4, 0>{});
    case WgmmaConfig::k128x128x64s4PpIm2colC2: return f(Tile<128, 128, 1, 4, 5, 0>{});
    case WgmmaConfig::k128x128x64s4PpIm2colC4: return f(Tile<128, 128, 1, 4, 6, 0>{});
    case WgmmaConfig::k128x128x64s4PpIm2colC8: return f(Tile<128, 128, 1, 4, 7, 0>{});
    case WgmmaConfig::k128x64x64s4PpIm2col: return f(Tile<128, 64, 1, 4, 4, 0>{});
    case WgmmaConfig::k128x128x64s5PpIm2col: return f(Tile<128, 128, 1, 5, 4, 0>{});
    case WgmmaConfig::k128x128x64s6PpIm2col: return f(Tile<128, 128, 1, 6, 4, 0>{});
    case WgmmaConfig::k128x128x64s7PpIm2col: return f(Tile<128, 128, 1, 7, 4, 0>{});
    case WgmmaConfig::k128x128x64s7PpIm2colC8: return f(Tile<128, 128, 1, 7, 7, 0>{});
    case WgmmaConfig::k128x64x64s9PpIm2col: return f(Tile<128, 64, 1, 9, 4, 0>{});
    case WgmmaConfig::k128x256x64s4CoopIm2col: return f(Tile<128, 256, 1, 4, 8, 0>{});
    case WgmmaConfig::k256x128x64s4CoopIm2col: return f(Tile<256, 128, 1, 4, 8, 0>{});
    case WgmmaConfig::k128x128x64PpHalo:  // their own kernel (wgmma_halo.cu): the launchers branch before
    case WgmmaConfig::k128x64x64PpHalo:
    case WgmmaConfig::k128x128x64s10PpHalo:
      throw std::logic_error("wgmma: the halo tiles have no WgTile");
  }
  throw std::invalid_argument("wgmma: unknown WgmmaConfig " + std::to_string(static_cast<int>(config)));
}

const char* config_name(WgmmaConfig config) {
  switch (config) {
    case WgmmaConfig::k128x128x64s4: return "wgmma_128x128x64_s4";
    case WgmmaConfig::k128x64x64s4: return "wgmma_128x64x64_s4";
    case WgmmaConfig::k128x128x64s4Async: return "wgmma_128x128x64_s4_async";
    case WgmmaConfig::k128x64x64s4Async: return "wgmma_128x64x64_s4_async";
    case WgmmaConfig::k128x128x64s6Async: return "wgmma_128x128x64_s6_async";
    case WgmmaConfig::k128x64x64s8Async: return "wgmma_128x64x64_s8_async";
    case WgmmaConfig::k128x128x64s3: return "wgmma_128x128x64_s3";
    case WgmmaConfig::k128x128x64s4Ws: return "wgmma_128x128x64_s4_ws";
    case WgmmaConfig::k128x128x64s6Ws: return "wgmma_128x128x64_s6_ws";
    case WgmmaConfig::k128x256x64s4Ws: return "wgmma_128x256x64_s4_ws";
    case WgmmaConfig::k128x128x64s4AsyncL1: return "wgmma_128x128x64_s4_async_l1";
    case WgmmaConfig::k128x128x64s4WsL1: return "wgmma_128x128x64_s4_ws_l1";
    case WgmmaConfig::k256x128x64s4Ws: return "wgmma_256x128x64_s4_ws";
    case WgmmaConfig::k128x128x64s4Pp: return "wgmma_128x128x64_s4_pp";
    case WgmmaConfig::k128x128x64s4PpTma: return "wgmma_128x128x64_s4_pp_tma";
    case WgmmaConfig::k128x128x64s4PpIm2col: return "wgmma_128x128x64_s4_pp_im2col";
    case WgmmaConfig::k128x128x64s4PpIm2colC2: return "wgmma_128x128x64_s4_pp_im2col_c2";
    case WgmmaConfig::k128x128x64s4PpIm2colC4: return "wgmma_128x128x64_s4_pp_im2col_c4";
    case WgmmaConfig::k128x128x64s4PpIm2colC8: return "wgmma_128x128x64_s4_pp_im2col_c8";
    case WgmmaConfig::k128x64x64s4PpIm2col: return "wgmma_128x64x64_s4_pp_im2col";
    case WgmmaConfig::k128x128x64s5PpIm2col: return "wgmma_128x128x64_s5_pp_im2col";
    case WgmmaConfig::k128x128x64s6PpIm2col: return "wgmma_128x128x64_s6_pp_im2col";
    case WgmmaConfig::k128x128x64s7PpIm2col: return "wgmma_128x128x64_s7_pp_im2col";
    case WgmmaConfig::k128x128x64s7PpIm2colC8: return "wgmma_128x128x64_s7_pp_im2col_c8";
    case WgmmaConfig::k128x64x64s9PpIm2col: return "wgmma_128x64x64_s9_pp_im2col";
    case WgmmaConfig::k128x256x64s4CoopIm2col: return "wgmma_128x256x64_s4_coop_im2col";
    case WgmmaConfig::k256x128x64s4CoopIm2col: return "wgmma_256x128x64_s4_coop_im2col";
    case WgmmaConfig::k128x128x64PpHalo: return "wgmma_128x128x64_pp_halo";
    case WgmmaConfig::k128x64x64PpHalo: return "wgmma_128x64x64_pp_halo";
    case WgmmaConfig::k128x128x64s10PpHalo: return "wgmma_128x128x64_s10_pp_halo";
  }
  throw std::invalid_argument("wgmma_config_info: unknown WgmmaConfig " + std::to_string(static_cast<int>(config)));
}

// A kernel's shared-memory attributes, set once per kernel (its launcher keeps the result in a
// static): the dynamic size above the 48 KiB default, and the shared-memory carveout. Without
// L1 (cp.async.cg reads bypass it) the largest, so that two blocks of the tiles with at most
// 97 KiB fit one SM (the carveout is a hint the driver may otherwise size for one block).
// Registers allow two blocks of every 256-thread tile: ptxas gives those kernels at most 124
// per thread (tools/ptxas_check.sh prints them), and 2 x 256 threads x 128 is the SM's 64 K.
// With L1 (the _l1 tiles) the smallest carveout that holds one block, the rest of the SM's
// 256 KiB being L1 (wgmma_detail::l1_carveout_percent).
template <class Kernel>
cudaError_t set_smem_attributes(Kernel* kernel, size_t bytes, bool l1) {
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
  if (e != cudaSuccess) return e;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                              l1 ? wgmma_detail::l1_carveout_percent(bytes) : (int)cudaSharedmemCarveoutMaxShared);
}

// Launches tile T's forward kernel with epilogue E (its grid, or the persistent one).
template <class T, ConvEpilogue E = ConvEpilogue::kStore>
void launch_tile(const IgemmParams& p, cudaStream_t stream) {
  auto* kernel = fwd_kernel<T, E>();
  static const cudaError_t attr = set_smem_attributes(kernel, T::kSmemBytes, T::kL1 != 0);
  CUDA_CHECK(attr);
  if constexpr (T::kPersistent) {
    // The filters as a [K][Kg] matrix for the TMA tiles, x in im2col mode for the im2col tile;
    // unused (zero) maps otherwise.
    const CUtensorMap tm_a =
        T::kIm2col ? tma_map_im2col(p.x, p.M / (p.H * p.W), p.H, p.W, p.C, p.R, T::kBlockM) : CUtensorMap{};
    const CUtensorMap tm_b = T::kTma ? tma_map_2d(p.w, p.K, p.Kg, T::kTmaBRows) : CUtensorMap{};
    launch_persistent<T, fwd_kernel<T, E>()>(pp_fwd_units<T>(p.M, p.K), stream, p, tm_a, tm_b);
  } else {
    const dim3 grid(ceil_div(p.K, T::kBlockN), ceil_div(p.M, T::kBlockM));
    kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

// ------------------------------------------------------------------- weight gradient

using igemm_detail::WgradParams;

// BlockM 128 output channels (warpgroup g: channels 64 g .. 64 g + 63; with BlockM 256 two
// 64-channel m64 tiles per warpgroup, channels 128 g .. 128 g + 127) x BlockN filter columns
// x BlockK 64 pixels; MmaInFlight, Stages, Producer and L1 (here for B, the x gather) as in
// WgTile. The loader
// (igemm_detail::WgradLoader) gives each loading thread one 16-byte chunk column of A (8
// channels of dy) and of B (8 filter columns: one tap) and kARows / kBRows pixel rows of it per
// slice.
template <int BlockM, int BlockN, int MmaInFlight, int Stages, int Producer, int L1>
struct WgWgradTile {
  static constexpr int kBlockM = BlockM, kBlockN = BlockN, kBlockK = 64, kStages = Stages;
  static constexpr int kMmaInFlight = MmaInFlight, kProducer = Producer, kL1 = L1;
  static constexpr bool kPingPong = Producer >= 2 && Producer <= 7;  // the tile is one consumer warpgroup's
  static constexpr bool kCoop = Producer == 8;  // both consumers compute each tile, 64 channels each
  static constexpr bool kPersistent = kPingPong || kCoop;
  static constexpr bool kTma = Producer >= 3;       // A (the dy rows) by TMA
  static constexpr bool kIm2col = Producer >= 4;    // B (x) too, in im2col mode: no loader
  // Producer 5, 6, 7: clusters of 2, 4, 8 blocks that take the same output channels and slab
  // for consecutive filter tiles, each copying its 1 / kCluster of A (dy) into all of them by
  // multicast: kTmaAParts pieces of kTmaARows pixel rows (whole 64-pixel column blocks when
  // the cluster has no more blocks than A has column blocks, else an equal piece of one).
  static constexpr int kCluster = Producer >= 5 && Producer <= 7 ? 1 << (Producer - 4) : 1;
  static constexpr int kAColumnBlocks = BlockM / 64;
  static constexpr int kTmaARows = kCluster <= kAColumnBlocks ? 64 : 64 * kAColumnBlocks / kCluster;
  static constexpr int kTmaAParts = kAColumnBlocks * (64 / kTmaARows) / kCluster;  // per block
  static_assert(kTmaAParts * kCluster * kTmaARows == kAColumnBlocks * 64 && kTmaARows % 8 == 0,
                "A splits over the cluster in whole 8-pixel swizzle atoms");
  // m64 tiles (64-channel column blocks) per warpgroup
  static constexpr int kSubM = kPingPong ? BlockM / 64 : BlockM / 128;
  static_assert(Producer >= 0 && Producer <= 8,
                "no producer, a producer warpgroup, ping-pong (3: A by TMA, 4 to 7: both by TMA), cooperative (8)");
  static_assert(!kCoop || ((BlockM == 128 || BlockM == 256) && MmaInFlight == 1),
                "cooperative: 128 or 256 channels (one or two m64 tiles per consumer), one slice in flight");
  static constexpr int kLoadAhead = wgmma_detail::load_ahead(kStages, MmaInFlight);
  static constexpr int kMmaThreads = 256;
  static constexpr int kThreads = kMmaThreads + (Producer ? 128 : 0);
  static constexpr int kLoaderThreads = Producer ? 128 : kMmaThreads;
  static constexpr int kAChunks = kBlockM / 8, kBChunks = BlockN / 8;  // chunks per pixel row
  static constexpr int kARowStep = kLoaderThreads / kAChunks, kBRowStep = kLoaderThreads / kBChunks;
  static constexpr int kARows = kBlockK / kARowStep, kBRows = kBlockK / kBRowStep;
  static constexpr int kColumnBlockBytes = kBlockK * 128;  // 64 channels x 64 pixels: the LBO
  static constexpr int kABytes = (kBlockM / 64) * kColumnBlockBytes;
  static constexpr int kBBytes = (BlockN / 64) * kColumnBlockBytes;
  static constexpr int kStageBytes = kABytes + kBBytes;
  static constexpr int kTmaBytes = kIm2col ? kStageBytes : kABytes;  // the TMA copies per slice
  static_assert(kTmaBytes % 1024 == 0, "TMA boxes land on 1024-byte swizzle atoms");
  static constexpr int kAccSub = BlockN / 2, kAcc = kSubM * kAccSub;
  static constexpr int kPipeBytes = kStages * kStageBytes;
  // full[], empty[] after the stages (ping-pong: and order[2])
  static constexpr int kBarrierBytes = kPingPong ? (2 * kStages + 2) * 8 : Producer ? 2 * kStages * 8 : 0;
  static constexpr bool kOneEpilogue = false;  // its epilogue stores from registers (pp_schedule)
  static_assert(!kOneEpilogue, "no epilogue buffer to share");
  static constexpr size_t kSmemBytes = (size_t)kPipeBytes + kBarrierBytes + 1024;  // + base alignment
  static_assert(BlockN == 64 || BlockN == 128 || (BlockN == 256 && Producer),
                "wgmma wrappers for n64, n128 and n256 (n256: 128 accumulators, with a producer)");
  static_assert((BlockM == 128 && !kPingPong) || (kAcc <= 128 && Producer),
                "two m64 tiles per warpgroup (256 channels, or a ping-pong tile): at most 128 accumulators, with a producer");
  static_assert(!kPingPong || (BlockM == 128 && MmaInFlight == 1), "ping-pong: 128-channel tiles, one slice of MMAs in flight");
  static_assert(MmaInFlight == 0 || MmaInFlight == 1, "one or two slices of MMAs at a time");
  static_assert(kLoadAhead >= 1, "the loads must run ahead");
  static_assert(kARows * kARowStep == kBlockK && kBRows * kBRowStep == kBlockK, "loader: whole passes");
  static_assert(kColumnBlockBytes % 1024 == 0 && kABytes % 1024 == 0, "1024-byte swizzle atoms");
  static_assert(kSmemBytes <= 227 * 1024, "a Hopper block has at most 227 KiB of shared memory");
};

template <class T>
struct Sw128MnLayout {
  static __device__ __forceinline__ uint32_t a_dst(uint32_t stage, int row, int chunk) {
    return stage + wgmma_detail::sw128_mn_offset(row, chunk, T::kBlockK);
  }
  static __device__ __forceinline__ uint32_t b_dst(uint32_t stage, int row, int chunk) {
    return stage + T::kABytes + wgmma_detail::sw128_mn_offset(row, chunk, T::kBlockK);
  }
};

// A weight-gradient warpgroup's MMAs on one stage: A its T::kSubM 64-channel column blocks
// from a_block0 on (one per m64 tile), B all BlockN filter columns (LBO to the next column
// block); M/N-major, +2048 bytes (two 8-pixel atoms) per k16.
template <class T>
__device__ __forceinline__ void wgrad_mmas(float (&a)[T::kAcc], uint32_t stage, int a_block0) {
  const uint32_t a_addr = stage + a_block0 * T::kColumnBlockBytes, b_addr = stage + T::kABytes;
#pragma unroll
  for (int kk = 0; kk < T::kBlockK / 16; kk++)
#pragma unroll
    for (int j = 0; j < T::kSubM; j++)
      wgmma_m64k16<T::kBlockN, 1>(
          sub_acc<T>(a, j),
          wgmma_detail::sw128_mn_desc(a_addr + j * T::kColumnBlockBytes + kk * 2048, T::kColumnBlockBytes),
          wgmma_detail::sw128_mn_desc(b_addr + kk * 2048, T::kColumnBlockBytes));
}

// A block's fp32 accumulators as the partial dw tile at (m0, n0) of out [K][Ng], straight from
// the registers: a quad of lanes writes 32 contiguous bytes of one row; rows < K and columns <
// Ng only (Ng % 8 == 0 and columns come in pairs, so a pair is wholly inside or outside).
template <class T>
__device__ __forceinline__ void store_wgrad_partial(const float (&acc)[T::kAcc], float* out, int m0, int n0, int K,
                                                    int Ng, int warp, int lane) {
#pragma unroll
  for (int e = 0; e < T::kAcc; e += 2) {
    const auto at = wgmma_detail::block_acc_coord(T::kBlockM, T::kBlockN, warp, lane, e);
    const int m = m0 + at.row, n = n0 + at.col;
    if (m < K && n < Ng) *reinterpret_cast<float2*>(out + (size_t)m * Ng + n) = make_float2(acc[e], acc[e + 1]);
  }
}

// Grid: x over filter-column tiles, y over output-channel tiles, z over pixel slabs (as the
// mma.sync wgrad kernel). The main loop is the forward kernel's; only the operands differ.
template <class T>
__global__ void __launch_bounds__(T::kThreads, 1) conv_wgrad_wgmma_kernel(const WgradParams p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp >> 2;
  const int n0 = blockIdx.x * T::kBlockN, m0 = blockIdx.y * T::kBlockM;
  const int slice0 = blockIdx.z * p.slices_per_split;
  const int k_tiles = min(p.slices_per_split, ceil_div(p.P, T::kBlockK) - slice0);

  igemm_detail::WgradLoader<T, Sw128MnLayout<T>> loader(p, m0, n0, slice0 * T::kBlockK,
                                                       threadIdx.x % T::kLoaderThreads);
  float acc[T::kAcc];
  // Warpgroup g: the column blocks of its kSubM m64 tiles.
  const bool mma_thread = wgmma_pipeline<T>(loader, p, base, k_tiles, acc, [group](float(&a)[T::kAcc], uint32_t stage) {
    wgrad_mmas<T>(a, stage, group * T::kSubM);
  });
  if (!mma_thread) return;
  // Epilogue: this slab's partial dw.
  store_wgrad_partial<T>(acc, p.partials + (size_t)blockIdx.z * p.K * p.Ng, m0, n0, p.K, p.Ng, warp, lane);
}

// Blocks per SM the stream-K kernel is compiled for (__launch_bounds__): two where two blocks'
// shared memory fits (the 3-stage tile), so that its segment loop cannot take the registers that
// two blocks need (ptxas gave it 140 of the 128 they allow).
template <class T>
constexpr int kStreamKMinBlocks = 2 * (T::kSmemBytes + 1024) <= 228 * 1024 ? 2 : 1;

// The stream-K weight gradient (WgradStreamK): block w walks the segments of run w, each a
// part of one output tile, through the same pipeline as conv_wgrad_wgmma_kernel (the
// warp-specialized one continues its stages and barrier phases from segment to segment; the
// block-wide one starts afresh after a block barrier), and stores each segment's partial tile
// into its slot of p.partials ([plan.slots][K][Ng]). The block-wide and warp-specialized tiles
// (not the persistent ones, which have their own unit schedule).
template <class T>
__global__ void __launch_bounds__(T::kThreads, kStreamKMinBlocks<T>)
    conv_wgrad_wgmma_streamk_kernel(const WgradParams p, const WgradStreamK plan) {
  static_assert(!T::kPersistent, "stream-K: the block-wide and warp-specialized tiles");
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int group = warp >> 2;
  auto mmas = [group](float(&a)[T::kAcc], uint32_t stage) { wgrad_mmas<T>(a, stage, group * T::kSubM); };
  auto tile_m0 = [&](const WgradSegment& sg) { return (sg.tile / plan.tiles_n) * T::kBlockM; };
  auto tile_n0 = [&](const WgradSegment& sg) { return (sg.tile % plan.tiles_n) * T::kBlockN; };
  float acc[T::kAcc];
  if constexpr (T::kProducer) {
    // Each role walks the segments on its own: the producer loads them all, the MMA warps
    // compute and store them; the stages and phases run on over the segments (r0).
    const uint32_t bars = ws_init_barriers<T>(base);
    uint32_t r0 = 0;  // slices of the earlier segments
    if (threadIdx.x >= T::kMmaThreads) {
      for (int j = 0; j < plan.segments; j++) {
        const WgradSegment sg = plan.segment(blockIdx.x, j);
        if (sg.k_tiles == 0) break;
        igemm_detail::WgradLoader<T, Sw128MnLayout<T>> loader(p, tile_m0(sg), tile_n0(sg), sg.slice0 * T::kBlockK,
                                                              threadIdx.x - T::kMmaThreads);
        ws_produce<T>(loader, p, base, bars, sg.k_tiles, r0);
        r0 += sg.k_tiles;
      }
      return;
    }
    for (int j = 0; j < plan.segments; j++) {
      const WgradSegment sg = plan.segment(blockIdx.x, j);
      if (sg.k_tiles == 0) break;
      ws_consume<T, true>(base, bars, sg.k_tiles, acc, mmas, r0);
      r0 += sg.k_tiles;
      store_wgrad_partial<T>(acc, p.partials + (size_t)sg.slot * p.K * p.Ng, tile_m0(sg), tile_n0(sg), p.K, p.Ng, warp,
                             lane);
    }
  } else {
    for (int j = 0; j < plan.segments; j++) {
      const WgradSegment sg = plan.segment(blockIdx.x, j);
      if (sg.k_tiles == 0) break;
      igemm_detail::WgradLoader<T, Sw128MnLayout<T>> loader(p, tile_m0(sg), tile_n0(sg), sg.slice0 * T::kBlockK,
                                                            threadIdx.x);
      // Every warpgroup's MMAs of the previous segment have completed (each waited for its
      // own) before any thread refills the stages.
      if (j > 0) __syncthreads();
      wgmma_mainloop<T>(loader, p, base, sg.k_tiles, acc, mmas);
      store_wgrad_partial<T>(acc, p.partials + (size_t)sg.slot * p.K * p.Ng, tile_m0(sg), tile_n0(sg), p.K, p.Ng, warp,
                             lane);
    }
  }
}

// The ping-pong weight gradient's work units: one per tile, or with clusters one per kCluster
// filter tiles of an output-channel tile and slab.
template <class T>
__host__ __device__ inline int pp_wgrad_units(int K, int Ng, int splits) {
  return ceil_div(ceil_div(Ng, T::kBlockN), T::kCluster) * ceil_div(K, T::kBlockM) * splits;
}

// The persistent ping-pong weight gradient (T::kPingPong; pp_schedule): tile t covers filter
// columns n0 = (t % tiles_n) * BlockN .., output channels m0 = ((t / tiles_n) % tiles_m) * BlockM
// .. and slab z = t / (tiles_n * tiles_m) (consecutive tiles share their slab's dy slices). A
// consumer warpgroup computes both 64-channel column blocks of its tile and stores the slab's
// partial dw from the accumulators, as conv_wgrad_wgmma_kernel. The cooperative tile (T::kCoop;
// coop_schedule): consumer g computes and stores its BlockM / 2 channels of every tile.
// tm_a (T::kTma only): dy as a [P][K] matrix, boxes of 64 pixels x 64 channels in the 128-byte
// swizzle: column block j of A in slice kt of tile (m0, slab z) is the box at (m0 + 64 j,
// (z * slices_per_split + kt) * 64), which is sw128_mn_offset's layout.
// tm_b (T::kIm2col only): x in im2col mode, 64 pixels x 64 channels: column block j of B (filter
// columns n0 + 64 j .., one tap) in that slice starts at im2col_start(pixel, n0 + 64 j), the
// pixels as the im2col matrix's rows, the same layout.
// With clusters (T::kCluster blocks) unit u is, in slab z and output-channel tile m, the filter
// tiles (u % pairs) * kCluster + rank (pairs = ceil(tiles_n / kCluster)), block `rank` taking its
// own and copying A's parts rank * kTmaAParts .. (kTmaARows pixel rows each, in A's column
// blocks taken in order) into every block of the cluster (multicast). Filter tiles past Ng (the
// last unit's, when kCluster does not divide tiles_n) are computed on zeros (their im2col copies
// start past the last image) and not stored.
template <class T>
__global__ void __launch_bounds__(T::kThreads, 1)
    conv_wgrad_wgmma_pp_kernel(const WgradParams p, const __grid_constant__ CUtensorMap tm_a,
                               const __grid_constant__ CUtensorMap tm_b) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t raw = ptx::smem_addr(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const int pairs = ceil_div(ceil_div(p.Ng, T::kBlockN), T::kCluster), tiles_m = ceil_div(p.K, T::kBlockM);
  const int units = pp_wgrad_units<T>(p.K, p.Ng, p.splits);
  const int slices = ceil_div(p.P, T::kBlockK);
  const int lane = threadIdx.x & 31, warp = (threadIdx.x >> 5) & 3;
  const int rank = T::kCluster > 1 ? (int)cluster_ctarank() : 0;
  persistent_schedule<T>(
      p, base, units,
      [=](int u) {
        const int z = u / (pairs * tiles_m);
        return PpWork{((u / pairs) % tiles_m) * T::kBlockM, ((u % pairs) * T::kCluster + rank) * T::kBlockN,
                      max(0, min(p.slices_per_split, slices - z * p.slices_per_split)), z};
      },
      [&p](const PpWork& wk, int tid) {
        return igemm_detail::WgradLoader<T, Sw128MnLayout<T>>(p, wk.m0, wk.n0, wk.z * p.slices_per_split * T::kBlockK,
                                                             tid);
      },
      [&](const PpWork& wk, int kt, uint32_t stage, uint32_t bar) {
        const int pixel = (wk.z * p.slices_per_split + kt) * T::kBlockK;
        if constexpr (T::kCluster > 1) {
#pragma unroll
          for (int i = 0; i < T::kTmaAParts; i++) {
            const int row0 = (rank * T::kTmaAParts + i) * T::kTmaARows;  // in A's column blocks, in order
            const int j = row0 / 64, r = row0 % 64;                       // column block, its first row
            tma_load_2d_multicast(stage + j * T::kColumnBlockBytes + r * 128, &tm_a, wk.m0 + 64 * j, pixel + r, bar,
                                  (uint16_t)((1u << T::kCluster) - 1));
          }
        } else {
#pragma unroll
          for (int j = 0; j < T::kBlockM / 64; j++)
            tma_load_2d(stage + j * T::kColumnBlockBytes, &tm_a, wk.m0 + 64 * j, pixel, bar);
        }
        if constexpr (T::kIm2col) {
#pragma unroll
          for (int j = 0; j < T::kBlockN / 64; j++)
            tma_load_im2col(stage + T::kABytes + j * T::kColumnBlockBytes, &tm_b,
                            wgmma_detail::im2col_start(pixel, wk.n0 + 64 * j, p.P / (p.H * p.W), p.H, p.W, p.C, p.R),
                            bar);
        }
      },
      [](float (&a)[T::kAcc], uint32_t stage, int g) {
        // A: both column blocks of the tile's channels, one per m64 tile (cooperative: this
        // consumer's kSubM ones).
        wgrad_mmas<T>(a, stage, T::kCoop ? g * T::kSubM : 0);
      },
      [&](float (&a)[T::kAcc], const PpWork& wk, int g, int, uint32_t) {
        if (wk.n0 >= p.Ng) return;  // a cluster's filter tile past Ng (see above)
        float* out = p.partials + (size_t)wk.z * p.K * p.Ng;
        const int m0 = wk.m0 + (T::kCoop ? g * T::kBlockM / 2 : 0);  // this consumer's first channel
#pragma unroll
        for (int e = 0; e < T::kAcc; e += 2) {
          const auto at = pp_acc_coord<T>(warp, lane, e);
          const int m = m0 + at.row, n = wk.n0 + at.col;
          if (m < p.K && n < p.Ng) *reinterpret_cast<float2*>(out + (size_t)m * p.Ng + n) = make_float2(a[e], a[e + 1]);
        }
      });
}

template <class T>
constexpr auto wgrad_kernel() {
  if constexpr (T::kPersistent)
    return conv_wgrad_wgmma_pp_kernel<T>;
  else
    return conv_wgrad_wgmma_kernel<T>;
}

template <class T>
void launch_wgrad_tile(const WgradParams& p, cudaStream_t stream) {
  auto* kernel = wgrad_kernel<T>();
  static const cudaError_t attr = set_smem_attributes(kernel, T::kSmemBytes, T::kL1 != 0);
  CUDA_CHECK(attr);
  if constexpr (T::kPersistent) {
    // dy as a [P][K] matrix in boxes of 64 pixels for the TMA tiles (kTmaARows: fewer for the
    // clusters that split a column block), x in im2col mode (64 pixels per copy) for the im2col
    // tiles; unused (zero) maps otherwise.
    const CUtensorMap tm_a = T::kTma ? tma_map_2d(p.dy, p.P, p.K, T::kTmaARows) : CUtensorMap{};
    const CUtensorMap tm_b =
        T::kIm2col ? tma_map_im2col(p.x, p.P / (p.H * p.W), p.H, p.W, p.C, p.R, T::kBlockK) : CUtensorMap{};
    launch_persistent<T, wgrad_kernel<T>()>(pp_wgrad_units<T>(p.K, p.Ng, p.splits), stream, p, tm_a, tm_b);
  } else {
    const dim3 grid(ceil_div(p.Ng, T::kBlockN), ceil_div(p.K, T::kBlockM), p.splits);
    kernel<<<grid, T::kThreads, T::kSmemBytes, stream>>>(p);
  }
  CUDA_CHECK_LAUNCH();
}

// The config's rules for a launch of shape d: wgmma_config_channel_multiple's for the tensor it
// gathers from (`channels` of them) and wgmma_config_takes_image's for d's image and filter,
// naming fn: std::invalid_argument otherwise.
void require_config_takes(const char* fn, WgmmaConfig config, int channels, const ConvDesc& d) {
  if (!wgmma_config_takes_channels(config, channels))
    throw std::invalid_argument(std::string(fn) + ": " + config_name(config) + " needs the gathered tensor's channels (" +
                                std::to_string(channels) + ") to be a multiple of " +
                                std::to_string(wgmma_config_channel_multiple(config)));
  if (!wgmma_config_takes_image(config, d.H, d.W, d.R))
    throw std::invalid_argument(std::string(fn) + ": " + config_name(config) + " does not take a " + std::to_string(d.H) +
                                "x" + std::to_string(d.W) + " image with a " + std::to_string(d.R) + "x" +
                                std::to_string(d.R) + " filter (" +
                                (wgmma_config_halo(config) ? "a tile's rows of padded image exceed its buffer"
                                                           : "it needs an image at least as large as the filter") +
                                "): use another config");
}
// A halo config's tile (wgmma_halo.cuh): output channels per unit and B stages.
wgmma_detail::HaloTileId halo_tile_id(WgmmaConfig config) {
  switch (config) {
    case WgmmaConfig::k128x128x64PpHalo: return {128, 5};
    case WgmmaConfig::k128x64x64PpHalo: return {64, 8};
    case WgmmaConfig::k128x128x64s10PpHalo: return {128, 10};
    default: throw std::logic_error(std::string("wgmma: ") + config_name(config) + " is no halo tile");
  }
}

// The pass rules (wgmma_config_weight_gradient, wgmma_config_fused_epilogues), naming fn.
void require_weight_gradient(const char* fn, WgmmaConfig config) {
  if (!wgmma_config_weight_gradient(config))
    throw std::invalid_argument(std::string(fn) + ": " + config_name(config) + " has no weight gradient: use another config");
}
void require_streamk(const char* fn, WgmmaConfig config) {
  if (!wgmma_config_streamk(config))
    throw std::invalid_argument(std::string(fn) + ": " + config_name(config) +
                                " has no stream-K weight gradient (wgmma_config_streamk): use split-K");
}
void require_fused_epilogues(const char* fn, WgmmaConfig config) {
  if (!wgmma_config_fused_epilogues(config))
    throw std::invalid_argument(std::string(fn) + ": " + config_name(config) +
                                " has no fused epilogues (statistics, max-pool, BN-backward sums): use another config");
}

}  // namespace

IgemmConfigInfo wgmma_config_info(WgmmaConfig config) {
  const char* name = config_name(config);
  if (wgmma_config_halo(config)) {
    // 128 positions x BlockN channels; a warp's rows: 16 of each of its consumer's two m64 tiles;
    // its B stages as the stages.
    const wgmma_detail::HaloTileId id = halo_tile_id(config);
    const wgmma_detail::HaloTileInfo h = wgmma_detail::halo_tile_info(id);
    return {name,      wgmma_detail::kHaloTileRows, id.block_n, 64,           32,
            id.block_n, h.b_stages,                 h.threads,  h.smem_bytes, wgmma_detail::kHaloTileRows,
            128};
  }
  IgemmConfigInfo info{};
  with_tile<WgTile>(config, [&](auto t) {
    using T = decltype(t);
    // A warp's rows: 16 of each of its warpgroup's m64 tiles.
    info = {name,          T::kBlockM,    T::kBlockN,     T::kBlockK,    16 * T::kSubM,
            T::kBlockN,    T::kStages,    T::kThreads,    T::kSmemBytes, T::kEpilogueM,
            T::kEpilogueThreads};
    // The header's lists of TMA and im2col configs (the channel rule, the tested flag) must
    // name exactly the tiles that copy that way (every test asks for each config's info).
    if (T::kTma != wgmma_config_tma(config) || T::kIm2col != wgmma_config_im2col(config))
      throw std::logic_error(std::string("wgmma_config_info: ") + name +
                             ": wgmma_config_tma / wgmma_config_im2col disagree with its tile");
  });
  return info;
}

bool wgmma_supported() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) {
    cudaGetLastError();  // no device: clear the error, answer no
    return false;
  }
  int major = 0, minor = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (major != 9 || minor != 0) return false;
  // The kernel's code for this device must be the sm_90a build (binaryVersion 90), not PTX
  // JIT-compiled from the sm_80 fallback, where the wgmma instructions are compiled out.
  cudaFuncAttributes fa{};
  if (cudaFuncGetAttributes(&fa, conv_fwd_wgmma_kernel<WgTile<128, 128, 0, 4, 0, 0>>) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return fa.binaryVersion == 90;
}

namespace {

// Calls f(Tile{}) with the weight-gradient tile of a stream-K config (wgmma_config_streamk; the
// same tiles as with_tile's, which the launchers check against wgmma_config_info), so that only
// these configs instantiate the stream-K kernel.
template <class F>
void with_streamk_tile(WgmmaConfig config, F&& f) {
  switch (config) {
    case WgmmaConfig::k128x128x64s3: return f(WgWgradTile<128, 128, 0, 3, 0, 0>{});
    case WgmmaConfig::k128x128x64s4Async: return f(WgWgradTile<128, 128, 1, 4, 0, 0>{});
    case WgmmaConfig::k128x64x64s8Async: return f(WgWgradTile<128, 64, 1, 8, 0, 0>{});
    case WgmmaConfig::k128x256x64s4Ws: return f(WgWgradTile<128, 256, 1, 4, 1, 0>{});
    case WgmmaConfig::k256x128x64s4Ws: return f(WgWgradTile<256, 128, 1, 4, 1, 0>{});
    default: break;
  }
  throw std::logic_error(std::string("wgmma: with_streamk_tile lacks ") + config_name(config) +
                         ", which wgmma_config_streamk lists");
}

}  // namespace

int wgmma_blocks_per_sm(WgmmaConfig config, bool weight_gradient) {
  require(wgmma_supported(), "wgmma_blocks_per_sm", "needs a Hopper GPU and this binary's sm_90a code");
  if (wgmma_config_halo(config)) {
    require_weight_gradient("wgmma_blocks_per_sm", config);
    return wgmma_detail::halo_blocks_per_sm(halo_tile_id(config));
  }
  int blocks = 0;
  auto occupancy = [&](auto* kernel, int threads, size_t smem, bool l1) {
    CUDA_CHECK(set_smem_attributes(kernel, smem, l1));
    CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, threads, smem));
  };
  if (weight_gradient)
    with_tile<WgWgradTile>(config, [&](auto t) {
      using T = decltype(t);
      occupancy(wgrad_kernel<T>(), T::kThreads, T::kSmemBytes, T::kL1 != 0);
    });
  else
    with_tile<WgTile>(config, [&](auto t) {
      using T = decltype(t);
      occupancy(fwd_kernel<T>(), T::kThreads, T::kSmemBytes, T::kL1 != 0);
    });
  return blocks;
}

namespace wgmma_detail {

void tma_im2col_probe(const __half* x, const ConvDesc& d, int pixels, const Im2colStart& at, __half* out,
                      cudaStream_t stream) {
  const char* fn = "tma_im2col_probe";
  require(x != nullptr && out != nullptr && aligned16(x) && aligned16(out), fn, "x and out: non-null, 16-byte aligned");
  require(d.N > 0 && d.H > 0 && d.W > 0 && d.C > 0 && d.C % 64 == 0, fn, "needs a non-empty x with C a multiple of 64");
  require(d.R >= 1 && d.R % 2 == 1 && d.R <= 5, fn, "R must be 1, 3 or 5");
  require(pixels >= 8 && pixels <= 256 && pixels % 8 == 0, fn, "pixels must be a multiple of 8 in [8, 256]");
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  launch_tma_probe<1>(tma_map_im2col(x, d.N, d.H, d.W, d.C, d.R, pixels), at, 0, 0, 0, pixels * 128, 1, out, stream);
}

void tma_tile_probe(const __half* m, int rows, int cols, int box_rows, int col0, int row0, int cluster, __half* out,
                    cudaStream_t stream) {
  const char* fn = "tma_tile_probe";
  require(m != nullptr && out != nullptr && aligned16(m) && aligned16(out), fn, "m and out: non-null, 16-byte aligned");
  require(rows > 0 && cols > 0 && cols % 8 == 0, fn, "needs a non-empty matrix with cols a multiple of 8");
  require(box_rows >= 8 && box_rows <= 256 && box_rows % 8 == 0, fn, "box_rows must be a multiple of 8 in [8, 256]");
  require(cluster == 1 || cluster == 2 || cluster == 4 || cluster == 8, fn, "cluster must be 1, 2, 4 or 8");
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  const CUtensorMap map = tma_map_2d(m, rows, cols, box_rows);
  if (cluster > 1)
    launch_tma_probe<2>(map, Im2colStart{}, col0, row0, box_rows, cluster * box_rows * 128, cluster, out, stream);
  else
    launch_tma_probe<0>(map, Im2colStart{}, col0, row0, box_rows, box_rows * 128, 1, out, stream);
}

void wgmma_shift_probe(const __half* a, const __half* b, int shift, int base_offset, float* d, cudaStream_t stream) {
  const char* fn = "wgmma_shift_probe";
  require(a != nullptr && b != nullptr && d != nullptr && aligned16(a) && aligned16(b), fn,
          "a, b and d: non-null, a and b 16-byte aligned");
  require(shift >= 0 && shift <= 8, fn, "shift must be in [0, 8]");
  require(base_offset >= 0 && base_offset <= 7, fn, "base_offset must be in [0, 7]");
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  wgmma_shift_probe_kernel<false><<<1, 128, ShiftProbe<false>::kSmemBytes, stream>>>(a, b, shift, base_offset, d);
  CUDA_CHECK_LAUNCH();
}

void wgmma_shift_probe_mn(const __half* a, const __half* b, int shift, float* d, cudaStream_t stream) {
  const char* fn = "wgmma_shift_probe_mn";
  require(a != nullptr && b != nullptr && d != nullptr && aligned16(a) && aligned16(b), fn,
          "a, b and d: non-null, a and b 16-byte aligned");
  require(shift >= 0 && shift <= 8, fn, "shift must be in [0, 8]");
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  wgmma_shift_probe_kernel<true><<<1, 128, ShiftProbe<true>::kSmemBytes, stream>>>(a, b, shift, 0, d);
  CUDA_CHECK_LAUNCH();
}

}  // namespace wgmma_detail

void conv_forward_wgmma(const __half* x, const __half* w, __half* y, const ConvDesc& d, WgmmaConfig config,
                        cudaStream_t stream) {
  const char* fn = "conv_forward_wgmma";
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  const IgemmParams p = igemm_detail::make_igemm_params(fn, x, w, y, d, cfg.block_m);
  require_config_takes(fn, config, d.C, d);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  if (wgmma_config_halo(config)) return wgmma_detail::conv_forward_wgmma_halo(x, w, y, d, halo_tile_id(config), stream);
  with_tile<WgTile>(config, [&](auto t) { launch_tile<decltype(t)>(p, stream); });
}

size_t wgmma_stats_scratch_bytes(const ConvDesc& d, WgmmaConfig config) {
  const long long grid_m = ceil_div((long long)d.N * d.H * d.W, (long long)wgmma_config_info(config).epilogue_m);
  return 2 * (size_t)grid_m * (size_t)d.K * sizeof(float);
}

void conv_forward_wgmma_stats(const __half* x, const __half* w, __half* y, const ConvDesc& d, WgmmaConfig config,
                              const IgemmStats& stats, cudaStream_t stream) {
  const char* fn = "conv_forward_wgmma_stats";
  require_fused_epilogues(fn, config);
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  IgemmParams p = igemm_detail::make_igemm_params(fn, x, w, y, d, cfg.block_m);
  const int blocks_per_group = igemm_detail::set_stats_params(fn, p, stats, d, cfg.epilogue_m);
  require_config_takes(fn, config, d.C, d);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  with_tile<WgTile>(config, [&](auto t) { launch_tile<decltype(t), ConvEpilogue::kStats>(p, stream); });
  igemm_detail::launch_stats_reduce(stats.partials, ceil_div(p.M, cfg.epilogue_m), blocks_per_group,
                                    d.N / stats.group_images, d.K, stats.sum, stats.sumsq, stream);
}

void conv_forward_wgmma_pool(const __half* x, const __half* w, __half* y_pooled, uint8_t* argmax, const ConvDesc& d,
                             WgmmaConfig config, const IgemmStats* stats, cudaStream_t stream) {
  const char* fn = "conv_forward_wgmma_pool";
  require_fused_epilogues(fn, config);
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  IgemmParams p = igemm_detail::make_igemm_params(fn, x, w, y_pooled, d, cfg.block_m);
  igemm_detail::set_pool_params(fn, p, argmax, d, cfg.epilogue_m);
  const int blocks_per_group = stats ? igemm_detail::set_stats_params(fn, p, *stats, d, cfg.epilogue_m) : 0;
  require_config_takes(fn, config, d.C, d);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  if (stats == nullptr) {
    with_tile<WgTile>(config, [&](auto t) { launch_tile<decltype(t), ConvEpilogue::kPool>(p, stream); });
    return;
  }
  with_tile<WgTile>(config, [&](auto t) { launch_tile<decltype(t), ConvEpilogue::kPoolStats>(p, stream); });
  igemm_detail::launch_stats_reduce(stats->partials, ceil_div(p.M, cfg.epilogue_m), blocks_per_group,
                                    d.N / stats->group_images, d.K, stats->sum, stats->sumsq, stream);
}

void conv_backward_data_wgmma(const __half* dy, const __half* w, __half* dx, __half* wt_scratch, const ConvDesc& d,
                              WgmmaConfig config, cudaStream_t stream) {
  const char* fn = "conv_backward_data_wgmma";
  require(wt_scratch != nullptr && aligned16(wt_scratch), fn,
          "wt_scratch must be 16-byte aligned");
  require(d.C % 8 == 0 && d.K % 8 == 0, fn, "C and K must be multiples of 8");
  require_config_takes(fn, config, d.K, d);  // dy, with K channels, is the gathered tensor
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  // As a forward convolution: input dy with K channels, C filters, output dx.
  const ConvDesc as_forward{d.N, d.H, d.W, d.K, d.C, d.R};
  conv_flip_transpose_weights(w, wt_scratch, d, stream);
  conv_forward_wgmma(dy, wt_scratch, dx, as_forward, config, stream);
}

void conv_backward_data_wgmma_bn_sums(const __half* dy, const __half* w, __half* dx, __half* wt_scratch,
                                      const ConvDesc& d, WgmmaConfig config, const BnBackwardSums& bn,
                                      cudaStream_t stream) {
  const char* fn = "conv_backward_data_wgmma_bn_sums";
  require_fused_epilogues(fn, config);
  require(wt_scratch != nullptr && aligned16(wt_scratch), fn, "wt_scratch must be 16-byte aligned");
  const ConvDesc as_forward{d.N, d.H, d.W, d.K, d.C, d.R};
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  IgemmParams p = igemm_detail::make_igemm_params(fn, dy, w, dx, as_forward, cfg.block_m);
  const int blocks_per_group = igemm_detail::set_bn_sums_params(fn, p, bn, as_forward, cfg.epilogue_m);
  require_config_takes(fn, config, d.K, d);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  conv_flip_transpose_weights(w, wt_scratch, d, stream);
  p.w = wt_scratch;
  with_tile<WgTile>(config, [&](auto t) { launch_tile<decltype(t), ConvEpilogue::kBnSums>(p, stream); });
  igemm_detail::launch_stats_reduce(bn.partials, ceil_div(p.M, cfg.epilogue_m), blocks_per_group,
                                    d.N / bn.group_images, d.C, bn.sum_dz, bn.sum_dzx, stream);
}

// ------------------------------------------------------------------- weight gradient

WgradSplit wgmma_wgrad_split(const ConvDesc& d, int splits) {
  return wgrad_split(d, WgWgradTile<128, 128, 0, 4, 0, 0>::kBlockK, splits);
}

int wgmma_wgrad_default_splits(const ConvDesc& d, WgmmaConfig config, int sm_count) {
  // Rough H100 figures: a 128 x 128 x 64 slice (2 * 128 * 128 * 64 flop) takes ~0.45 us on one
  // SM (about 60 % of its share of the dense fp16 peak), larger tiles in proportion; HBM moves
  // ~3 bytes per ns.
  // Tiles an SM computes at once (`resident`): two where two blocks' shared memory fits (the
  // registers never stop them: the test of wgmma_blocks_per_sm); two for the persistent
  // ping-pong tiles too, whose one block per SM has two consumer warpgroups taking every other
  // unit (with one unit per block, one of them idles); else one. Those tiles share the SM's
  // tensor cores, so a wave holds sms * resident of them, each taking `resident` times a lone
  // tile's time per slice: the estimate then asks for enough slabs to fill every slot, not just
  // every SM (the H200 conv_bench: the 3-stage tile at layer1 took 344 us at the one-per-SM
  // count and 247 us at twice that).
  if (!wgmma_config_weight_gradient(config)) return 1;  // its launcher refuses any count
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  int resident = 1;
  with_tile<WgWgradTile>(config, [&](auto t) {
    using T = decltype(t);
    resident = T::kPingPong || 2 * (T::kSmemBytes + 1024) <= 228 * 1024 ? 2 : 1;
  });
  const double slice_ns = 450.0 * resident * cfg.block_m * cfg.block_n / (128.0 * 128.0);
  constexpr double kBytesPerNs = 3000.0;
  const long long tiles = ceil_div((long long)d.K, (long long)cfg.block_m) *
                          ceil_div((long long)d.R * d.R * d.C, (long long)cfg.block_n);
  const long long slices = ceil_div((long long)d.N * d.H * d.W, (long long)cfg.block_k);
  const long long slots = (long long)std::max(1, sm_count) * resident;
  const double partial_bytes = 8.0 * d.K * d.R * d.R * d.C;  // per slab: written, then read
  const long long max_splits = std::min<long long>({slices, 65535, 8 * slots});
  int best = 1;
  double best_ns = -1;
  for (long long s = 1; s <= max_splits; s++) {
    const WgradSplit split = wgmma_wgrad_split(d, (int)s);
    if (split.splits != s) continue;  // the same as a smaller count
    const long long waves = ceil_div(tiles * s, slots);
    const double ns = (double)waves * split.slices_per_split * slice_ns + s * partial_bytes / kBytesPerNs;
    if (best_ns < 0 || ns < best_ns) {
      best_ns = ns;
      best = (int)s;
    }
  }
  return best;
}

void conv_backward_filter_wgmma(const __half* x, const __half* dy, __half* dw, float* partials,
                                const ConvDesc& d, WgmmaConfig config, int splits,
                                cudaStream_t stream) {
  const char* fn = "conv_backward_filter_wgmma";
  require_weight_gradient(fn, config);
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  const WgradParams p =
      igemm_detail::make_wgrad_params(fn, x, dy, dw, partials, d, cfg.block_m, cfg.block_k, splits);
  require_config_takes(fn, config, d.C, d);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  with_tile<WgWgradTile>(config, [&](auto t) { launch_wgrad_tile<decltype(t)>(p, stream); });
  igemm_detail::conv_wgrad_reduce(partials, dw, (long)d.K * p.Ng, p.splits, stream);
}

WgradStreamK wgmma_wgrad_streamk_plan(const ConvDesc& d, WgmmaConfig config) {
  const char* fn = "wgmma_wgrad_streamk_plan";
  require_streamk(fn, config);
  require(wgmma_supported(), fn, "needs a Hopper GPU (compute capability 9.0) and this binary's sm_90a code");
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  int per_sm = 0;
  with_streamk_tile(config, [&](auto t) {
    using T = decltype(t);
    if (T::kBlockM != cfg.block_m || T::kBlockN != cfg.block_n || T::kStages != cfg.stages)
      throw std::logic_error(std::string("wgmma: the stream-K tile of ") + config_name(config) +
                             " differs from the config's");
    // Once per tile (the launcher asks on every call), as the smem attribute.
    static const int blocks = [] {
      auto* kernel = conv_wgrad_wgmma_streamk_kernel<T>;
      int n = 0;
      CUDA_CHECK(set_smem_attributes(kernel, T::kSmemBytes, T::kL1 != 0));
      CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&n, kernel, T::kThreads, T::kSmemBytes));
      return n;
    }();
    per_sm = blocks;
  });
  int device = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return wgrad_streamk(d, cfg.block_m, cfg.block_n, cfg.block_k, std::max(1, per_sm) * std::max(1, sms));
}

void conv_backward_filter_wgmma_streamk(const __half* x, const __half* dy, __half* dw, float* partials,
                                        const ConvDesc& d, WgmmaConfig config, cudaStream_t stream) {
  const char* fn = "conv_backward_filter_wgmma_streamk";
  require_streamk(fn, config);
  const IgemmConfigInfo cfg = wgmma_config_info(config);
  const WgradParams p = igemm_detail::make_wgrad_params(fn, x, dy, dw, partials, d, cfg.block_m, cfg.block_k, 1);
  require_config_takes(fn, config, d.C, d);
  const WgradStreamK plan = wgmma_wgrad_streamk_plan(d, config);
  with_streamk_tile(config, [&](auto t) {
    using T = decltype(t);
    conv_wgrad_wgmma_streamk_kernel<T><<<plan.workers, T::kThreads, T::kSmemBytes, stream>>>(p, plan);
    CUDA_CHECK_LAUNCH();
  });
  igemm_detail::conv_wgrad_streamk_reduce(partials, dw, d.K, p.Ng, cfg.block_m, cfg.block_n, plan, stream);
}

}  // namespace kernels
