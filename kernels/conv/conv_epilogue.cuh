// The epilogues of the forward kernels, shared by the mma.sync and the wgmma kernels (device
// code, included by kernels/conv/*.cu). Both end with the fp16 output tile in shared memory
// (sC, rows m0 .., columns n0 .., element (r, c) at CL::at(r, c): PaddedC or SwizzledC below)
// and call conv_epilogue<E>, which
//   - stores it to y (kStore),
//   - and accumulates the BN-backward sums, when y is an input gradient (kBnSums, below),
//   - or the BN statistics of y (kStats: per-group sums of y and y^2),
//   - or instead of storing y writes its 2x2 max-pool and argmax (kPool), with the statistics
//     of the pooled values (kPoolStats).
// Every reduction goes through an fp32 scratch after sC (or, SwizzledC, over it;
// epilogue_red_bytes) and per-tile partials [2][ceil(M / BlockM)][K] (row tile m0 / BlockM:
// blockIdx.y in the kernels with a tile per block, any tile of a persistent block) that
// launch_stats_reduce adds per group: no atomics, deterministic.
// The design and tests: docs/conv_kernels.md.
//
// The BN-backward sums. In the recipe a conv's input is the output of a BN + CELU (+ max-pool)
// unit, so the input gradient dgrad writes is that unit's output gradient dout. The unit's
// backward (kernels/bn.cuh, pool_bn_celu_backward) first reduces, per BN group and channel,
//   sum(dz) and sum(dz * xhat),  dz = (dout + dout2) * celu'(xhat + bias),
//   xhat = (v - mean) * invstd   (v: the value BN normalised in the forward),
// and only then can it write its dx. Those sums need dout, which this epilogue holds in shared
// memory as it stores it: accumulating them here saves the statistics pass's read of dout (and
// a launch); dout2 and v are read here instead of there. The per-value arithmetic is
// kernels/bn_math.cuh's, so dz and xhat are bitwise the backward's; only the order of the sums
// differs. pool_bn_celu_backward_from_sums then finishes the unit's backward from the sums.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/bn_math.cuh"
#include "kernels/conv/igemm_loader.cuh"
#include "kernels/conv/implicit_gemm.cuh"

namespace kernels {
namespace igemm_detail {

// The layouts of sC [BlockM rows][BlockN columns] fp16. Every access is within one 16-byte
// chunk (8 columns from a multiple of 8), so a layout only places chunks.
// PaddedC: rows Stride halves apart (Stride = BlockN + 8: one 16-byte chunk of padding, an odd
// number of chunks per row, so the eight rows of a fragment store start on eight different bank
// groups); the reduction scratch `red` follows sC.
template <int Stride>
struct PaddedC {
  static constexpr bool kRedAliasesC = false;
  static constexpr int kRowHalves = Stride;  // from one row's start to the next's
  __host__ __device__ static constexpr int at(int r, int c) { return r * Stride + c; }
};
// SwizzledC: rows BlockN halves apart, unpadded, chunk k of row r at chunk k ^ (r % 8): the
// eight rows of a fragment store hit eight different chunks (conflict-free as padded), a row's
// chunks stay within the row (BlockN >= 64: at least 8 chunks). 4 KiB smaller than PaddedC at
// 128 x 128, and the reduction scratch `red` lies over sC (kRedAliasesC: the epilogues pass a
// barrier after their last read of sC before they write it): what lets an epilogue buffer fit
// beside 6 stages of 32 KiB (the 6-stage ping-pong tile, kernels/conv/wgmma_conv.cu).
template <int BlockN>
struct SwizzledC {
  static_assert(BlockN % 64 == 0, "swizzled sC: at least 8 chunks per row");
  static constexpr bool kRedAliasesC = true;
  static constexpr int kRowHalves = BlockN;
  // Row r starts at a multiple of 64 halves, so its chunk index's low three bits are bits 3-5
  // of the half index: one XOR (with r % 8, the same for all of a fragment thread's rows, which
  // lie 8 apart) flips them.
  __host__ __device__ static constexpr int at(int r, int c) { return (r * BlockN + c) ^ ((r & 7) << 3); }
  // Chunk b of row r0, where every row r0 + 8i has it too, i.e. at(r0 + 8 i, 8 b + c) =
  // chunk_at(r0, b) + 8 i * BlockN + c for c < 8: the fragment stores address a thread's rows,
  // which lie 8 apart, from one chunk offset per block b (computing at() per store made ptxas
  // keep every row's offsets live beside the accumulators, and spill).
  __host__ __device__ static constexpr int chunk_at(int r0, int b) { return r0 * BlockN + ((b ^ (r0 & 7)) << 3); }
};

// Shared memory every epilogue's reduction fits in after sC: fp32 [2][Threads / (BlockN / 8)]
// [BlockN] (the pool and BN-backward sums' scratch; the statistics' [2][Threads / (BlockN / 2)]
// [BlockN] is smaller).
template <int BlockN, int Threads>
constexpr int epilogue_red_bytes() {
  return 2 * (Threads / (BlockN / 8)) * BlockN * 4;
}

// Which partials row a tile's sums go to: its row tile mb = m0 / BlockM of mbs = ceil(M / BlockM).
struct TileRow {
  int mb, mbs;
};
template <int BlockM>
__device__ __forceinline__ TileRow tile_row(int m0, const IgemmParams& p) {
  return {m0 / BlockM, (p.M + BlockM - 1) / BlockM};
}

// The columns each of an epilogue's Threads threads reduces at the end (store_block_partials
// for columns tid, tid + Threads, ..): one where Threads >= BlockN.
template <int BlockN, int Threads>
constexpr int columns_per_thread() {
  return (BlockN + Threads - 1) / Threads;
}

// The end of every epilogue reduction, after its barrier: thread c < BlockN adds column c's
// kSlices partials of the two sums, at red[j][pos] and red[kSlices + j][pos] (fp32
// [2][kSlices][BlockN]), in slice order and writes the tile's partials
// p.partials[mb][n0 + c] and p.partials[mbs + mb][n0 + c], for columns < K.
template <int BlockN, int kSlices>
__device__ __forceinline__ void store_block_partials(const float* red, int pos, int c, int n0, TileRow row,
                                                     const IgemmParams& p) {
  const int n = n0 + c;
  if (c >= BlockN || n >= p.K) return;
  float sum_a = 0.0f, sum_b = 0.0f;
#pragma unroll
  for (int j = 0; j < kSlices; j++) {
    sum_a += red[j * BlockN + pos];
    sum_b += red[(kSlices + j) * BlockN + pos];
  }
  p.partials[(size_t)row.mb * p.K + n] = sum_a;
  p.partials[((size_t)row.mbs + row.mb) * p.K + n] = sum_b;
}

// The chunk-column epilogues' block reduction (the BN-backward sums, the pooled statistics):
// thread tid, of slice `slice`, holds the 8 sums a[] and b[] of its chunk column ch (channels
// n0 + 8 ch ..) over its rows. They go to red [2][kSlices][BlockN] fp32 (a, then b); then
// thread tid adds the kSlices partials of columns c = tid, tid + Threads, .. < BlockN (one
// column each where Threads >= BlockN; two for a cooperative consumer's 256 columns, 128
// threads) in slice order and writes the block's partials p.partials[row.mb][n0 + c] (a) and
// p.partials[row.mbs + row.mb][n0 + c] (b), for columns < K. Fixed order: deterministic.
// Within a slice row, channels ch*8 + j*4 + 0..3 sit at j*BlockN/2 + ch*4, so consecutive
// threads store consecutive float4s (no bank conflicts); the reduction's loads then have a
// 2-way conflict (a warp reads two 16-float runs BlockN/2 apart), once per block. sync(): a
// barrier over the block's epilogue threads.
template <int BlockN, int kSlices, int Threads, class Sync>
__device__ __forceinline__ void reduce_chunk_sums(const float (&a)[8], const float (&b)[8], float* red, int slice,
                                                  int ch, int tid, int n0, TileRow row, const IgemmParams& p,
                                                  Sync sync) {
  constexpr int kHalfN = BlockN / 2;
  float* ra = red + slice * BlockN + ch * 4;
  float* rb = red + (kSlices + slice) * BlockN + ch * 4;
  *reinterpret_cast<float4*>(ra) = make_float4(a[0], a[1], a[2], a[3]);
  *reinterpret_cast<float4*>(ra + kHalfN) = make_float4(a[4], a[5], a[6], a[7]);
  *reinterpret_cast<float4*>(rb) = make_float4(b[0], b[1], b[2], b[3]);
  *reinterpret_cast<float4*>(rb + kHalfN) = make_float4(b[4], b[5], b[6], b[7]);
  sync();
#pragma unroll
  for (int i = 0; i < columns_per_thread<BlockN, Threads>(); i++) {
    const int c = tid + i * Threads;
    store_block_partials<BlockN, kSlices>(red, ((c >> 2) & 1) * kHalfN + (c >> 3) * 4 + (c & 3), c, n0, row, p);
  }
}

// Writes the fp16 tile sC (BlockM x BlockN, layout CL; rows m0 .., columns n0 ..; rows m >= M and
// columns n >= K are skipped) to p.y in 16-byte chunks: thread tid (of Threads) owns the
// 8-channel chunk column tid % kChunksN and rows tid / kChunksN + i * kSlices, so consecutive
// threads write consecutive chunks of a row (coalesced) and read a row of sC (conflict-free).
// K % 8 == 0: a chunk lies wholly inside or outside [0, K).
//
// kBnSums: also this block's partial BN-backward sums (see the top of this file) over its rows,
// to p.partials[mb][n] (sum dz) and p.partials[mbs + mb][n] (sum dz * xhat; TileRow): the
// statistics epilogue's layout, so launch_stats_reduce adds them per group.
// The block's rows lie in one BN group (p.bn_group_pixels is a multiple of BlockM, or M). Each
// thread sums its rows in row order; reduce_chunk_sums adds them up through red
// [2][kSlices][BlockN] (fp32, after sC, or over it with CL::kRedAliasesC). sync() is a barrier
// over the Threads threads (__syncthreads, or a named barrier when other warps have left).
template <int BlockM, int BlockN, int Threads, class CL, bool kBnSums, class Sync>
__device__ __forceinline__ void conv_store_tile(const __half* sC, float* red, const IgemmParams& p,
                                                int m0, int n0, int tid, Sync sync) {
  constexpr int kChunksN = BlockN / 8;
  constexpr int kSlices = Threads / kChunksN;
  static_assert(Threads % kChunksN == 0, "store: a fixed chunk column per thread");
  static_assert(BlockM % kSlices == 0, "store: whole passes over the rows");
  if constexpr (!kBnSums) {
    // The plain store, the same chunks in the same order as below, written as its own loop:
    // ptxas allocates the forward kernels' registers differently otherwise (the 128 x 128 x 64
    // mma.sync tile spilled).
#pragma unroll
    for (int it = 0; it < BlockM / kSlices; it++) {
      const int idx = it * Threads + tid;
      const int r = idx / kChunksN, m = m0 + r, n = n0 + (idx % kChunksN) * 8;
      if (m < p.M && n < p.K)
        *reinterpret_cast<uint4*>(p.y + (size_t)m * p.K + n) =
            *reinterpret_cast<const uint4*>(sC + CL::at(r, (idx % kChunksN) * 8));
    }
    return;
  }
  const int ch = tid % kChunksN, row0 = tid / kChunksN;
  const int n = n0 + ch * 8;
  const bool n_ok = n < p.K;
  float s[8], ss[8], mean[8], invstd[8], bias[8];
  if constexpr (kBnSums) {
#pragma unroll
    for (int e = 0; e < 8; e++) s[e] = ss[e] = mean[e] = invstd[e] = bias[e] = 0.0f;
    if (n_ok) {
      const size_t g = (size_t)(m0 / p.bn_group_pixels) * p.K + n;
#pragma unroll
      for (int e = 0; e < 8; e++) {
        mean[e] = p.bn_mean[g + e];
        invstd[e] = p.bn_invstd[g + e];
        bias[e] = p.bn_bias[n + e];
      }
    }
  }
  // The thread's rows in batches of kBatch: first every load of the batch (sC, and dout2 and
  // bn_in from global memory, in flight together), then the stores of y and the sums. Row by
  // row, each row's global loads could not start before the previous row's store of y (which,
  // for all the compiler knows, may write what they read), so each waited out a round trip to
  // memory: on the H200 (session 10's conv_bench) the BN sums added up to 55% to the plain
  // input gradient's time at layer1 (no dout2 there), where reading bn_in (64 MB) takes about
  // 4% of it at the HBM's rate.
  constexpr int kRows = BlockM / kSlices;
  constexpr int kBatch = kRows % 4 == 0 ? 4 : kRows % 2 == 0 ? 2 : 1;
#pragma unroll
  for (int i0 = 0; i0 < kRows; i0 += kBatch) {
    uint4 v[kBatch], v2[kBatch], vx[kBatch];
    bool ok[kBatch];
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      const int r = row0 + (i0 + j) * kSlices, m = m0 + r;
      const size_t off = (size_t)m * p.K + n;
      ok[j] = m < p.M && n_ok;
      v[j] = v2[j] = vx[j] = make_uint4(0u, 0u, 0u, 0u);
      if (ok[j]) {
        v[j] = *reinterpret_cast<const uint4*>(sC + CL::at(r, ch * 8));
        if (p.bn_dout2 != nullptr) v2[j] = load_raw8(p.bn_dout2 + off);
        vx[j] = load_raw8(p.bn_in + off);
      }
    }
#pragma unroll
    for (int j = 0; j < kBatch; j++) {
      if (!ok[j]) continue;
      const size_t off = (size_t)(m0 + row0 + (i0 + j) * kSlices) * p.K + n;
      *reinterpret_cast<uint4*>(p.y + off) = v[j];
      // d = dout + dout2 from the fp16 values as stored, as the BN backward reads them.
      float d[8], d2[8], x[8];
      unpack8(v[j], d);
      if (p.bn_dout2 != nullptr) {
        unpack8(v2[j], d2);
#pragma unroll
        for (int e = 0; e < 8; e++) d[e] += d2[e];
      }
      unpack8(vx[j], x);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const float xh = bn_xhat(x[e], mean[e], invstd[e]);
        const float dz = bn_dz(d[e], xh, bias[e], p.bn_alpha);
        s[e] += dz;
        ss[e] += dz * xh;
      }
    }
  }
  if constexpr (kBnSums) {
    if constexpr (CL::kRedAliasesC) sync();  // every thread's last read of sC before red overwrites it
    reduce_chunk_sums<BlockN, kSlices, Threads>(s, ss, red, row0, ch, tid, n0, tile_row<BlockM>(m0, p), p, sync);
  }
}

// The BN statistics epilogue (after conv_store_tile stored the tile): this block's partial
// sum and sum of squares of each of its columns over its rows m < M, from the fp16 values in
// sC, to p.partials[mb][n] and p.partials[mbs + mb][n] (TileRow), through red
// [2][kStatSlices][BlockN] fp32 (as conv_store_tile's). sync(): as conv_store_tile's.
template <int BlockM, int BlockN, int Threads, class CL, class Sync>
__device__ __forceinline__ void conv_stats_tile(const __half* sC, float* red, const IgemmParams& p, int m0,
                                                int n0, int tid, Sync sync) {
  constexpr int kStatSlices = Threads / (BlockN / 2);
  static_assert(Threads % (BlockN / 2) == 0, "stats: whole slices of column pairs");
  // Thread t sums column pair t % kPairs over
  // rows t / kPairs, + kStatSlices, ... (consecutive threads read consecutive words); the
  // kStatSlices partials of a column are then added in slice order. Fixed order: deterministic.
  constexpr int kPairs = BlockN / 2;
  const int pair = tid % kPairs, slice = tid / kPairs;
  const int rows = min(BlockM, p.M - m0);
  float2 s = make_float2(0.0f, 0.0f), ss = make_float2(0.0f, 0.0f);
  for (int r = slice; r < rows; r += kStatSlices) {
    const float2 v = __half22float2(*reinterpret_cast<const __half2*>(sC + CL::at(r, 2 * pair)));
    s.x += v.x;
    s.y += v.y;
    ss.x += v.x * v.x;
    ss.y += v.y * v.y;
  }
  if constexpr (CL::kRedAliasesC) sync();  // every thread's last read of sC before red overwrites it
  *reinterpret_cast<float2*>(red + slice * BlockN + 2 * pair) = s;
  *reinterpret_cast<float2*>(red + (kStatSlices + slice) * BlockN + 2 * pair) = ss;
  sync();
#pragma unroll
  for (int i = 0; i < columns_per_thread<BlockN, Threads>(); i++)
    store_block_partials<BlockN, kStatSlices>(red, tid + i * Threads, tid + i * Threads, n0, tile_row<BlockM>(m0, p),
                                              p);
}

// The fused 2x2 max-pool epilogue (instead of conv_store_tile): the tile's rows are whole
// pairs of output rows (the launcher checks BlockM % 2W == 0; H, W even). Writes the pooled
// tile to p.y ([M / 4][K]), the argmax bytes to p.argmax (when not null) and with kStats the
// partial sums of the pooled values through red [2][kPoolSlices][BlockN] fp32 (as conv_store_tile's).
template <int BlockM, int BlockN, int Threads, class CL, bool kStats, class Sync>
__device__ __forceinline__ void conv_pool_tile(const __half* sC, float* red, const IgemmParams& p, int m0,
                                               int n0, int tid, Sync sync) {
  constexpr int kChunksN = BlockN / 8;
  constexpr int kPooledRows = BlockM / 4;
  constexpr int kPoolSlices = Threads / kChunksN;
  static_assert(Threads % kChunksN == 0, "pool: a fixed chunk column per thread");
  static_assert(kPooledRows % kPoolSlices == 0, "pool: whole passes over the pooled rows");
  // The tile's rows are whole pairs of output rows (m0 % 2W == 0), so pooled pixel m0/4 + q
  // is the max over sC rows pool_window_row(q, W) + {0, 1, W, W + 1}. Thread t owns the
  // 8-channel chunk t % kChunksN of pooled rows q = t / kChunksN + i * kPoolSlices: per row it
  // reads four 16-byte chunks of sC (8 consecutive threads read one 128-byte row segment: no
  // bank conflicts), writes 16 bytes of y_pooled and 8 bytes of argmax (consecutive threads
  // along a pooled row: coalesced). K % 8 == 0: a chunk is wholly inside or outside [0, K).
  const int ch = tid % kChunksN, q0 = tid / kChunksN;
  const int n = n0 + ch * 8;
  const bool n_ok = n < p.K;
  const int pooled0 = m0 / 4, pooled_end = p.M / 4;  // M = N*H*W, a multiple of 4
  float s[8], ss[8];
#pragma unroll
  for (int e = 0; e < 8; e++) s[e] = ss[e] = 0.0f;
#pragma unroll
  for (int it = 0; it < kPooledRows / kPoolSlices; it++) {
    const int q = q0 + it * kPoolSlices;
    const int pooled = pooled0 + q;
    // The window's rows are < M exactly when its pooled pixel is < M / 4 (M = N*H*W is a
    // multiple of 2W, so the last tile holds whole row pairs too).
    if (pooled < pooled_end) {
      const int wr = pool_window_row(q, p.W);
      alignas(16) __half v[4][8];  // window position dy * 2 + dx, channel
      *reinterpret_cast<uint4*>(v[0]) = *reinterpret_cast<const uint4*>(sC + CL::at(wr, ch * 8));
      *reinterpret_cast<uint4*>(v[1]) = *reinterpret_cast<const uint4*>(sC + CL::at(wr + 1, ch * 8));
      *reinterpret_cast<uint4*>(v[2]) = *reinterpret_cast<const uint4*>(sC + CL::at(wr + p.W, ch * 8));
      *reinterpret_cast<uint4*>(v[3]) = *reinterpret_cast<const uint4*>(sC + CL::at(wr + p.W + 1, ch * 8));
      alignas(16) __half out[8];
      uint32_t arg_lo = 0, arg_hi = 0;  // argmax bytes of channels 0..3, 4..7 (little-endian)
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const int a = pool2x2_argmax(__half2float(v[0][e]), __half2float(v[1][e]),
                                     __half2float(v[2][e]), __half2float(v[3][e]));
        // The picked element's own bits (not a recomputed max: keeps -0 vs +0 and NaN as is).
        out[e] = a == 0 ? v[0][e] : a == 1 ? v[1][e] : a == 2 ? v[2][e] : v[3][e];
        if (e < 4)
          arg_lo |= (uint32_t)a << (8 * e);
        else
          arg_hi |= (uint32_t)a << (8 * (e - 4));
        if constexpr (kStats) {
          const float f = __half2float(out[e]);
          s[e] += f;
          ss[e] += f * f;
        }
      }
      if (n_ok) {
        const size_t off = (size_t)pooled * p.K + n;
        *reinterpret_cast<uint4*>(p.y + off) = *reinterpret_cast<const uint4*>(out);
        if (p.argmax != nullptr)
          *reinterpret_cast<uint2*>(p.argmax + off) = make_uint2(arg_lo, arg_hi);
      }
    }
  }

  // Thread t's 8 column sums and sums of squares (over its pooled rows, in row order), slice
  // t / kChunksN, then the block's partials.
  if constexpr (kStats) {
    if constexpr (CL::kRedAliasesC) sync();  // every thread's last read of sC before red overwrites it
    reduce_chunk_sums<BlockN, kPoolSlices, Threads>(s, ss, red, q0, ch, tid, n0, tile_row<BlockM>(m0, p), p, sync);
  }
}

// The epilogues a forward kernel can end with, after the fp16 tile is in sC and every thread
// has passed a barrier: y stored (kStore), + the BN-backward sums (kBnSums), + the BN
// statistics (kStats), or the fused max-pool (kPool) + its statistics (kPoolStats).
enum class ConvEpilogue { kStore, kBnSums, kStats, kPool, kPoolStats };

template <ConvEpilogue E, int BlockM, int BlockN, int Threads, class CL, class Sync>
__device__ __forceinline__ void conv_epilogue(const __half* sC, float* red, const IgemmParams& p, int m0, int n0,
                                              int tid, Sync sync) {
  if constexpr (E == ConvEpilogue::kPool || E == ConvEpilogue::kPoolStats) {
    conv_pool_tile<BlockM, BlockN, Threads, CL, E == ConvEpilogue::kPoolStats>(sC, red, p, m0, n0, tid, sync);
  } else {
    conv_store_tile<BlockM, BlockN, Threads, CL, E == ConvEpilogue::kBnSums>(sC, red, p, m0, n0, tid, sync);
    if constexpr (E == ConvEpilogue::kStats) conv_stats_tile<BlockM, BlockN, Threads, CL>(sC, red, p, m0, n0, tid, sync);
  }
}

}  // namespace igemm_detail
}  // namespace kernels
