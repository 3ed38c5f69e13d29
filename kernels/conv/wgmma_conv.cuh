// Implicit-GEMM convolution on Hopper's warpgroup tensor-core instructions (wgmma, sm_90a only):
// the forward, the input gradient through it, and the weight gradient. Same computations,
// layouts, GEMM views and preconditions as conv_forward_igemm (kernels/conv/implicit_gemm.cuh)
// and conv_backward_filter_igemm (kernels/conv/igemm_backward.cuh); this is the fast path that
// the portable mma.sync kernels are the baseline for. Design: docs/conv_kernels.md.
//
// Why a second kernel: on an H100, mma.sync (HMMA in SASS) cannot reach the tensor cores'
// dense peak; wgmma (HGMMA) reads both operands straight from shared memory, 64 rows per
// warpgroup per instruction, and runs asynchronously to the issuing warps.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/implicit_gemm.cuh"

namespace kernels {

// Tile configurations: BlockM 128 output pixels (two warpgroups of 64 rows; 256 in the one whose
// name says so, 128 rows per warpgroup) x BlockN output channels, BlockK 64 (one 128-byte swizzled row of fp16 per pixel or filter), 4 cp.async stages
// unless the name says otherwise. The _async configs leave one slice of MMAs running while the
// next is issued (loads then run two slices ahead instead of three). The deep ones spend the
// shared memory the 4-stage tiles leave unused (193 KiB of 227) on loads running 4 or 6
// slices ahead: more global-load latency hidden, the first suspect for the gap to cuDNN (the
// H100 run showed it is not: they are about even with the 4-stage tiles). The 3-stage 128 x 128
// tile goes the other way: at 97 KiB two of its blocks share an SM (as the 128 x 64 4-stage
// tiles' do), so one block's loads and barrier overlap the other's MMAs, this kernel having no
// producer warps of its own. wgmma_blocks_per_sm says how many the device actually runs.
enum class WgmmaConfig : int {
  k128x128x64s4,       // m64n128k16 per warpgroup: the big layers
  k128x64x64s4,        // m64n64k16: K = 64 (the prep conv), or more blocks on small grids
  k128x128x64s4Async,  // as k128x128x64s4, MMAs of two slices in flight
  k128x64x64s4Async,   // as k128x64x64s4, MMAs of two slices in flight
  k128x128x64s6Async,  // as k128x128x64s4Async with 6 stages (loads 4 slices ahead)
  k128x64x64s8Async,   // as k128x64x64s4Async with 8 stages (loads 6 slices ahead)
  k128x128x64s3,       // as k128x128x64s4 with 3 stages: two blocks per SM (with one slice of
                       // MMAs in flight, ptxas serialises the weight gradient's wgmma: C7515)
  k128x128x64s4Ws,     // as k128x128x64s4Async, warp-specialized: a producer warpgroup loads
  k128x128x64s6Ws,     // as k128x128x64s4Ws with 6 stages (loads 4 slices ahead)
  k128x256x64s4Ws,     // as k128x128x64s4Ws with 256 columns (m64n256k16: half the shared-memory
                       // reads per flop; 128 accumulators per MMA thread)
  k128x128x64s4AsyncL1,  // as k128x128x64s4Async, the gathered activations copied through L1
                         // (cp.async.ca) with the smallest carveout that holds the block: the
                         // 3x3 taps re-read neighbouring pixels, which L2 serves otherwise
  k128x128x64s4WsL1,     // as k128x128x64s4Ws, the same through L1
  k256x128x64s4Ws,       // as k128x128x64s4Ws with 256 rows (two m64 tiles per warpgroup): the
                         // 128 x 256 tile's L2 traffic per flop for the 128-channel layers,
                         // where 256 columns would be half empty
  k128x128x64s4Pp,       // persistent ping-pong (the schedule of cuDNN's Hopper kernels, seen in
                         // an H200 profile): one block per SM, a producer warpgroup whose copies
                         // arrive on mbarriers (it never waits for them), two consumer warpgroups
                         // with a 128 x 128 tile each (128 accumulators) taking turns, so one's
                         // epilogue overlaps the other's MMAs and the loads of the next tiles
  k128x128x64s4PpTma,    // as k128x128x64s4Pp, the operand that needs no gather (the forward's
                         // filter rows, the weight gradient's dy rows) copied by TMA from one
                         // producer thread: half the producer's cp.async work
  k128x128x64s4PpIm2col,  // as k128x128x64s4PpTma, both operands by TMA: the gathered one (the
                          // forward's activations, the weight gradient's x) in TMA's im2col
                          // mode, so no thread computes a gather address (cuDNN's Hopper
                          // kernels load this way). One producer thread issues every copy.
                          // Needs the gathered tensor's channels a multiple of 64
                          // (wgmma_config_channel_multiple) and an image at least as large as
                          // the filter (wgmma_config_takes_image)
  k128x128x64s4PpIm2colC2,  // as k128x128x64s4PpIm2col in clusters of two blocks that take two
                            // row tiles of the same filter tile at a time and copy half of the
                            // filter slice each, by TMA multicast into both: B's reads from L2
                            // halve (cuDNN's Hopper forward runs clusters of 8). In the weight
                            // gradient the two blocks take two filter tiles of the same output
                            // channels and share A (dy) the same way
  k128x128x64s4PpIm2colC4,  // as k128x128x64s4PpIm2colC2 in clusters of four (each block copies a
                            // quarter of B, or in the weight gradient a 32-pixel half of one of
                            // A's column blocks): by the count in docs/conv_kernels.md a 128 x 128
                            // tile at cuDNN's layer1 rate reads ~9 TB/s from L2 without sharing
  k128x128x64s4PpIm2colC8,  // the same in clusters of eight (cuDNN's Hopper forward runs eight)
  k128x64x64s4PpIm2col,     // as k128x128x64s4PpIm2col with 64 columns (m64n64k16, 64 accumulators
                            // per consumer thread): for the 64-channel outputs, where a 128 x 128
                            // tile is half empty (of the recipe, layer1's input gradient, whose
                            // best was the 128 x 64 cp.async tile, at 0.70x cuDNN on the H200)
  k128x128x64s5PpIm2col,    // as k128x128x64s4PpIm2col with 5 stages (160 KiB of copies in
                            // flight instead of 128), its two consumers sharing one epilogue
                            // buffer in turn to make room: the 4-stage tile, the fastest
                            // forward of ours at layer1 and layer2 on the H200, keeps the tensor
                            // pipe ~46% busy and its warps wait on their barriers, while sharing
                            // B across a cluster (less L2 traffic) did not make it faster. Not
                            // yet run on a GPU: wgmma_config_gpu_tested() is false
  k128x128x64s6PpIm2col,    // as k128x128x64s5PpIm2col with 6 stages (192 KiB of copies in
                            // flight), the deepest with an epilogue buffer: its one epilogue
                            // buffer is the compact one (sC swizzled instead of padded, the
                            // reduction scratch over it: igemm_detail::SwizzledC), 32 KiB where
                            // the padded one takes 42 KiB. Not yet run on a GPU
  k128x128x64s7PpIm2col,    // as k128x128x64s5PpIm2col with 7 stages (224 KiB of copies in
                            // flight, loads five slices ahead, as deep as cuDNN's Hopper forward,
                            // whose blocks hold 231 KiB), no epilogue buffer left: the consumers
                            // store y straight from their accumulators, and run the fused
                            // epilogues in the tile's last stage, which they hold until done.
                            // Not yet run on a GPU
  k128x128x64s7PpIm2colC8,  // k128x128x64s7PpIm2col in clusters of eight sharing B by TMA
                            // multicast, as k128x128x64s4PpIm2colC8: the shape of cuDNN's Hopper
                            // forward (7 stages of 128 x 128 x 64, 8-block clusters). At 4 stages
                            // the clusters were slower than one block (a stage is refilled only
                            // once all eight blocks' consumers have released it, so the slowest
                            // sets the pace); deeper stages give that wait slack. Epilogues
                            // as the 7-stage tile's. Not yet run on a GPU
  k128x64x64s9PpIm2col,     // as k128x64x64s4PpIm2col with 9 stages (216 KiB): its slices are
                            // half as much MMA work as the 128-column tile's, so its copies
                            // have half as long to land per stage; epilogues as the 7-stage
                            // tile's (the held stage, 24 KiB, takes the 16 KiB sC and its
                            // scratch over it). For layer1's input gradient
                            // (64 output channels). Not yet run on a GPU
  k128x256x64s4CoopIm2col,  // the im2col tile's copies (both operands by TMA, persistent) in a
                            // 128 x 256 tile that both consumer warpgroups compute together (the
                            // cooperative schedule, m64n256k16: 64 rows x 256 columns each), so
                            // each slice reads 48 KiB for twice the 128 x 128 tile's MMAs (a
                            // quarter less L2 and shared-memory traffic per flop; 4 stages,
                            // 192 KiB, give a copy three 1024-cycle slices to land). Stores
                            // from registers; the fused epilogues run per consumer (64 rows)
                            // in a stage it holds (two of the tile's last, one per consumer).
                            // For the passes with 256 or more output columns: the forward of
                            // layer2, layer3, layer3_res, their input gradients from layer3 on,
                            // every weight gradient. Not yet run on a GPU
  k256x128x64s4CoopIm2col,  // the cooperative tile the other way round: 256 x 128, each consumer
                            // 128 rows (two m64n128k16 tiles), the same 48 KiB per slice for
                            // the 128-column passes (layer1's and layer1_res's forward, layer2's
                            // input gradient) and, in the weight gradient, 256 output channels
                            // (layer2 on). Not yet run on a GPU
  k128x128x64PpHalo,        // the halo tile: the im2col tile's persistent ping-pong schedule
                            // and 128 x 128 tiles, but A is one TMA copy per 64-channel slice
                            // of whole padded image rows, which all R x R filter taps read at
                            // shifted offsets (wgmma_detail::HaloGeometry), instead of one
                            // im2col copy per tap: a ninth of the im2col tile's A copies at
                            // 3x3, for up to 12.5% more MMAs (positions in the padding columns
                            // at 32 x 32, more on smaller images). Forward and input gradient
                            // only, plain store (wgmma_config_weight_gradient,
                            // wgmma_config_fused_epilogues). Not yet run on a GPU
  k128x64x64PpHalo,         // the halo tile with 64 columns (m64n64k16) and 8 B stages: for
                            // the 64-channel outputs (layer1's input gradient), where 128
                            // columns would be half empty
  k128x128x64s10PpHalo,     // the 128-column halo tile with 10 B stages (the filter copies run
                            // 9 taps ahead instead of 4: the 7-stage im2col tile's question for
                            // the halo tile), storing y from registers for want of room for
                            // epilogue tiles. Not yet run on a GPU
};
constexpr WgmmaConfig kWgmmaConfigs[] = {WgmmaConfig::k128x128x64s4,      WgmmaConfig::k128x64x64s4,
                                         WgmmaConfig::k128x128x64s4Async, WgmmaConfig::k128x64x64s4Async,
                                         WgmmaConfig::k128x128x64s6Async, WgmmaConfig::k128x64x64s8Async,
                                         WgmmaConfig::k128x128x64s3,      WgmmaConfig::k128x128x64s4Ws,
                                         WgmmaConfig::k128x128x64s6Ws,    WgmmaConfig::k128x256x64s4Ws,
                                         WgmmaConfig::k128x128x64s4AsyncL1, WgmmaConfig::k128x128x64s4WsL1,
                                         WgmmaConfig::k256x128x64s4Ws,    WgmmaConfig::k128x128x64s4Pp,
                                         WgmmaConfig::k128x128x64s4PpTma, WgmmaConfig::k128x128x64s4PpIm2col,
                                         WgmmaConfig::k128x128x64s4PpIm2colC2, WgmmaConfig::k128x128x64s4PpIm2colC4,
                                         WgmmaConfig::k128x128x64s4PpIm2colC8, WgmmaConfig::k128x64x64s4PpIm2col,
                                         WgmmaConfig::k128x128x64s5PpIm2col, WgmmaConfig::k128x128x64s6PpIm2col,
                                         WgmmaConfig::k128x128x64s7PpIm2col, WgmmaConfig::k128x128x64s7PpIm2colC8,
                                         WgmmaConfig::k128x64x64s9PpIm2col,  WgmmaConfig::k128x256x64s4CoopIm2col,
                                         WgmmaConfig::k256x128x64s4CoopIm2col,
                                         WgmmaConfig::k128x128x64PpHalo,     WgmmaConfig::k128x64x64PpHalo,
                                         WgmmaConfig::k128x128x64s10PpHalo};

// The configs whose gathered operand comes by TMA in im2col mode, and those that copy by TMA at
// all (those, and the _pp_tma tile).
constexpr bool wgmma_config_im2col(WgmmaConfig config) {
  return config == WgmmaConfig::k128x128x64s4PpIm2col || config == WgmmaConfig::k128x128x64s4PpIm2colC2 ||
         config == WgmmaConfig::k128x128x64s4PpIm2colC4 || config == WgmmaConfig::k128x128x64s4PpIm2colC8 ||
         config == WgmmaConfig::k128x64x64s4PpIm2col || config == WgmmaConfig::k128x128x64s5PpIm2col ||
         config == WgmmaConfig::k128x128x64s6PpIm2col ||
         config == WgmmaConfig::k128x128x64s7PpIm2col || config == WgmmaConfig::k128x128x64s7PpIm2colC8 ||
         config == WgmmaConfig::k128x64x64s9PpIm2col ||
         config == WgmmaConfig::k128x256x64s4CoopIm2col || config == WgmmaConfig::k256x128x64s4CoopIm2col;
}
// The halo tiles copy by TMA too, tiled, and are configs of their own kernel (wgmma_halo.cu).
constexpr bool wgmma_config_halo(WgmmaConfig config) {
  return config == WgmmaConfig::k128x128x64PpHalo || config == WgmmaConfig::k128x64x64PpHalo ||
         config == WgmmaConfig::k128x128x64s10PpHalo;
}
constexpr bool wgmma_config_tma(WgmmaConfig config) {
  return config == WgmmaConfig::k128x128x64s4PpTma || wgmma_config_im2col(config) || wgmma_config_halo(config);
}

// The passes a config runs besides the forward and the input gradient (which every config runs,
// the latter through the forward kernel): the weight gradient, and the forward's and input
// gradient's fused epilogues (statistics, max-pool, BN-backward sums). The halo tiles have
// neither (yet): their launchers for those throw std::invalid_argument, which the engine
// records as a rejection like any other launcher precondition. (The fused epilogues stage a
// consumer's tile in shared memory: the tiles whose stages leave no room for that, the 7- and
// 9-stage ping-pong ones and the cooperative ones, run them in stages of the tile that the
// consumers hold until their epilogues are done.)
constexpr bool wgmma_config_weight_gradient(WgmmaConfig config) { return !wgmma_config_halo(config); }
constexpr bool wgmma_config_fused_epilogues(WgmmaConfig config) { return !wgmma_config_halo(config); }
// The configs whose weight gradient also runs stream-K (conv_backward_filter_wgmma_streamk):
// the block-wide and warp-specialized tiles that were the fastest weight gradients of ours on
// some layer on the H200 (session 10's conv_bench), so each stream-K kernel has a reason to be
// compiled.
constexpr bool wgmma_config_streamk(WgmmaConfig config) {
  return config == WgmmaConfig::k128x128x64s3 || config == WgmmaConfig::k128x128x64s4Async ||
         config == WgmmaConfig::k128x64x64s8Async || config == WgmmaConfig::k128x256x64s4Ws ||
         config == WgmmaConfig::k256x128x64s4Ws;
}

// Whether a config's kernels have passed the GPU tests on a device (a session with a GPU sets
// this when they do). The engine's selection only considers tested configs (unless asked to:
// speedrun --conv-kernels auto-untested), so a kernel that has never run cannot stop a training
// run; the tests and conv_bench run every config. The TMA tiles passed theirs on an H200 at
// 888dbe7 (docs/results/2026-11-27-h200-session10/call3); the im2col ones changed since (their
// consumers no longer fence the proxies, their copies past the last filter column start
// elsewhere: the next GPU session tests them again), and the 5-, 7- and 9-stage, cooperative
// and halo ones have not run yet.
constexpr bool wgmma_config_gpu_tested(WgmmaConfig config) {
  return !wgmma_config_im2col(config) && !wgmma_config_halo(config);
}

// The channel count of the tensor a config gathers from (the forward's C, the input gradient's
// K, the weight gradient's C) must be a multiple of this: 8 for every config (16-byte vectors),
// 64 for the im2col and halo ones, whose TMA copies 64 channels per slice. The launchers throw
// std::invalid_argument for other shapes (the engine then records the config as rejected).
constexpr int wgmma_config_channel_multiple(WgmmaConfig config) {
  return wgmma_config_im2col(config) || wgmma_config_halo(config) ? 64 : 8;
}
// That rule: whether a config takes a pass whose gathered tensor has `channels` channels.
constexpr bool wgmma_config_takes_channels(WgmmaConfig config, int channels) {
  return channels % wgmma_config_channel_multiple(config) == 0;
}
namespace wgmma_detail {

// The halo tiles' geometry (WgmmaConfig::k128x128x64PpHalo, k128x64x64PpHalo,
// kernels/conv/wgmma_halo.cu), for N images of H x W, an R x R filter (R odd), stride 1,
// pad = (R - 1) / 2. Positions are numbered along rows of width wp that include zero columns, so
// that filter tap (r, s) of the output pixel at position q reads x at position q + r * wp + s of
// one buffer that a tiled TMA box fills (zeros outside x): one box per tile and 64-channel slice
// serves every tap, each tap's 128 A rows starting at buffer row halo_tap_row(). A tile computes
// 128 consecutive positions; the ones that are no output pixel (padding columns and rows) are
// computed and not stored. Two ways to number, the one with fewer tiles chosen where both fit:
// - rows mode (images == 0): per image, wp = W + 2 pad, position q = oh * wp + ow, the
//   tiles covering positions 0 .. (H - 1) * wp + W - 1 of each image. Tap (r, s) of q reads
//   x[oh + r - pad][ow + s - pad], padded pixel (oh + r, ow + s), padded index q + r * wp + s.
//   Tile q0's box: 64 channels x wp x box_rows x 1 image at (c, -pad, q0 / wp - pad, n), whole
//   padded rows from q0 / wp on, zeros in the padding and below the image; tap (r, s) starts at
//   buffer row q0 % wp + r * wp + s. box_rows: the padded rows that (q0 % wp) + span rows can
//   touch, span = 128 + (R - 1) * (wp + 1) (the last row any tap reads is below that). 32 x 32,
//   R 3: wp 34, 9 tiles of 128 for 1024 pixels (12.5% more MMAs than the im2col tiles), box 7
//   rows = 238 buffer rows.
// - images mode (images > 0): across the batch, wp = W + pad and hp = H + pad rows per image
//   (img = hp * wp positions), position q = n * img + oh * wp + ow. Tap (r, s) of q reads
//   x[n][oh + r - pad][ow + s - pad]: with each image's rows from h = -pad and each row's
//   columns from w = -pad, that is at q + r * wp + s, a column w >= W landing on the next row's
//   zero columns and a row h >= H on the next image's zero rows, so pad zero columns per row
//   and pad zero rows per image suffice. Tile q0's box: 64 channels x wp x hp x `images` images
//   at (c, -pad, -pad, q0 / img), tap (r, s) starting at buffer row q0 % img + r * wp + s;
//   `images`: the padded images (q0 % img) + span rows can touch. For small images: 8 x 8: 81
//   positions per image (64 pixels) and boxes of 3 images = 243 rows; 4 x 4: 25 per image, 7
//   images = 175 rows (rows mode: 128 positions per image).
struct HaloGeometry {
  int pad, wp;    // pad; the row width of the numbering
  int images;     // 0: rows mode; > 0: images mode, padded images per box
  int hp;         // images mode: rows per padded image, H + pad (rows mode: 0)
  int tiles;      // 128-position tiles: rows mode per image, images mode over the batch
  int box_rows;   // rows of the box per image: rows mode the padded rows, images mode hp
  __host__ __device__ constexpr int rows() const {  // buffer rows per copy
    return box_rows * wp * (images > 0 ? images : 1);
  }
};
constexpr int kHaloTileRows = 128;  // positions per tile (two m64 tiles of one consumer)
constexpr int kHaloMaxRows = 256;   // a buffer's rows: 32 KiB (and TMA's largest box side)
// The rows mode's numbering, and the images mode's (images > 0 when its box fits).
__host__ __device__ constexpr HaloGeometry halo_rows_geometry(int H, int W, int R) {
  const int pad = (R - 1) / 2, wp = W + 2 * pad;
  const int positions = (H - 1) * wp + W;  // up to the last pixel
  const int span = kHaloTileRows + (R - 1) * (wp + 1);
  return {pad, wp, 0, 0, (positions + kHaloTileRows - 1) / kHaloTileRows, (wp - 1 + span - 1) / wp + 1};
}
__host__ __device__ constexpr HaloGeometry halo_images_geometry(int N, int H, int W, int R) {
  const int pad = (R - 1) / 2, wp = W + pad, hp = H + pad, img = hp * wp;
  const long long positions = (long long)(N - 1) * img + (H - 1) * wp + W;  // up to the last pixel
  const int span = kHaloTileRows + (R - 1) * (wp + 1);
  const int images = (img - 1 + span - 1) / img + 1;
  return {pad, wp, images * img <= kHaloMaxRows ? images : 0, hp,
          (int)((positions + kHaloTileRows - 1) / kHaloTileRows), hp};
}
// The geometry the tiles use: images mode where its box fits and it needs fewer tiles.
__host__ __device__ constexpr HaloGeometry halo_geometry(int N, int H, int W, int R) {
  const HaloGeometry rows = halo_rows_geometry(H, W, R), imgs = halo_images_geometry(N, H, W, R);
  const bool rows_fit = rows.rows() <= kHaloMaxRows;
  if (imgs.images > 0 && (!rows_fit || (long long)imgs.tiles < (long long)N * rows.tiles)) return imgs;
  return rows;
}
// Position tile t's copy (of image n in rows mode; t counts over the batch in images mode): the
// box's start (w, h, image) and the buffer row of position q0 for tap (0, 0).
struct HaloTileAt {
  int q0, w, h, n, offset;
};
__host__ __device__ constexpr HaloTileAt halo_tile_at(const HaloGeometry& g, int n, int t) {
  const int q0 = t * kHaloTileRows;
  if (g.images > 0) {
    const int img = g.hp * g.wp, n0 = q0 / img;
    return {q0, -g.pad, -g.pad, n0, q0 - n0 * img};
  }
  const int ph0 = q0 / g.wp;
  return {q0, -g.pad, ph0 - g.pad, n, q0 - ph0 * g.wp};
}
// The first buffer row of tap (r, s) for the tile.
__host__ __device__ constexpr int halo_tap_row(const HaloGeometry& g, const HaloTileAt& at, int r, int s) {
  return at.offset + r * g.wp + s;
}
// Position q of tile `at` (of image n in rows mode) as an output pixel: image, row, column, and
// whether it is one (in x: oh < H, ow < W, image < N).
struct HaloPixel {
  int n, oh, ow;
  bool valid;
};
__host__ __device__ constexpr HaloPixel halo_pixel(const HaloGeometry& g, int n, int q, int N, int H, int W) {
  int img = n, rem = q;
  if (g.images > 0) {
    img = q / (g.hp * g.wp);
    rem = q - img * (g.hp * g.wp);
  }
  const int oh = rem / g.wp, ow = rem - oh * g.wp;
  return {img, oh, ow, img < N && oh < H && ow < W};
}
// Whether a copy fits the tile's buffer (and TMA's box limits) for some batch: every recipe
// shape with R = 3 does (32 x 32: 238 rows in rows mode; 4 x 4: 175 in images mode).
__host__ __device__ constexpr bool halo_fits(int H, int W, int R) {
  return H >= 1 && W >= 1 && R >= 1 && R % 2 == 1 &&
         (halo_rows_geometry(H, W, R).rows() <= kHaloMaxRows || halo_images_geometry(1, H, W, R).images > 0);
}

}  // namespace wgmma_detail

// The image rule of the im2col configs: an H x W image at least as large as the R x R filter.
// On an H200 (docs/results/2026-11-27-h200-session10) the im2col copy of a slice past the last
// filter column faulted with an illegal instruction from a 1x1 image with R = 3
// (compute-sanitizer names the TMA instruction), while every copy from 2x2, 3x3 and 4x4 images
// landed as the model says: its start then, (w 0, h 0, n N), lies outside the copy's bounding
// box (w and h from -pad to W - 1 - pad) when W or H is at most pad. im2col_start now starts
// those copies at the box's lower corner; until that has run on a GPU ("[tma_small1]", the
// probes step of tools/gpu_check.sh) the launchers throw std::invalid_argument for images
// smaller than the filter, and the engine records the config as rejected. Every recipe image
// is 4x4 or larger. The halo tile's rule: its copy fits its buffer (wgmma_detail::halo_fits).
constexpr bool wgmma_config_takes_image(WgmmaConfig config, int H, int W, int R) {
  if (wgmma_config_halo(config)) return wgmma_detail::halo_fits(H, W, R);
  return !wgmma_config_im2col(config) || (H >= R && W >= R);
}

// Block/warp/stage sizes and shared memory of a config (warp_m x warp_n: a warpgroup's 64 rows
// are split over its 4 warps, 16 each, across all BlockN columns).
IgemmConfigInfo wgmma_config_info(WgmmaConfig config);

// Whether the current device runs the wgmma kernels: compute capability 9.0 and this binary
// carries sm_90a code for them (cudaFuncGetAttributes). False without a device.
bool wgmma_supported();

// How many blocks of a config's forward (and input-gradient) kernel, or of its weight-gradient
// kernel, the current device keeps resident per SM (cudaOccupancyMaxActiveBlocksPerMultiprocessor
// with the config's shared memory and the launchers' attributes), for benchmarks to report.
// Requires wgmma_supported() (std::invalid_argument otherwise, and for the weight gradient of a
// config without one); CUDA errors throw.
int wgmma_blocks_per_sm(WgmmaConfig config, bool weight_gradient);

// y = conv(x, w), as conv_forward_igemm (the same requirements, std::invalid_argument
// otherwise), plus wgmma_supported(). Asynchronous on `stream`; deterministic.
void conv_forward_wgmma(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                        WgmmaConfig config, cudaStream_t stream);

// The forward with the fused epilogues of conv_forward_igemm_stats and conv_forward_igemm_pool
// (kernels/conv/implicit_gemm.cuh): the same outputs, requirements and determinism, from this
// kernel (y, y_pooled bitwise the max-pool of this config's conv_forward_wgmma output). Scratch
// for the partial sums: wgmma_stats_scratch_bytes (as igemm_stats_scratch_bytes, with this
// config's epilogue_m rows per partial; the group and pool rules also go by epilogue_m, which
// is BlockM but for the cooperative tiles' BlockM / 2). Plus wgmma_supported().
size_t wgmma_stats_scratch_bytes(const ConvDesc& d, WgmmaConfig config);
void conv_forward_wgmma_stats(const __half* x, const __half* w, __half* y, const ConvDesc& d,
                              WgmmaConfig config, const IgemmStats& stats, cudaStream_t stream);
void conv_forward_wgmma_pool(const __half* x, const __half* w, __half* y_pooled, uint8_t* argmax,
                             const ConvDesc& d, WgmmaConfig config, const IgemmStats* stats,
                             cudaStream_t stream);

// dx = the input gradient, as conv_backward_data_igemm (flipped, transposed filters in
// wt_scratch of igemm_dgrad_scratch_bytes(d) bytes, then the forward kernel).
void conv_backward_data_wgmma(const __half* dy, const __half* w, __half* dx, __half* wt_scratch,
                              const ConvDesc& d, WgmmaConfig config, cudaStream_t stream);

// conv_backward_data_wgmma plus the BN-backward sums of its output (BnBackwardSums,
// kernels/conv/igemm_backward.cuh; dx is bitwise the same as without them), as
// conv_backward_data_igemm_bn_sums. Scratch for the partials: dgrad_bn_sums_scratch_bytes(d,
// wgmma_config_info(config).epilogue_m).
void conv_backward_data_wgmma_bn_sums(const __half* dy, const __half* w, __half* dx,
                                      __half* wt_scratch, const ConvDesc& d, WgmmaConfig config,
                                      const BnBackwardSums& bn, cudaStream_t stream);

// ------------------------------------------------------------------------ weight gradient
//
// The split-K GEMM of conv_backward_filter_igemm (dw[k][n] = sum_p dy[p][k] * im2col(x)[p][n],
// M = K output channels, N = R*R*C filter columns, the reduction over the N*H*W pixels split
// into slabs, fp32 partials added in slab order by a second kernel): per block BlockM = 128
// output channels (two warpgroups of 64) x BlockN (128 or 64, as the config's name says)
// filter columns, walking its slab in slices of 64 pixels. Both operands are stored
// pixel-major, as dy and x hold them (channels contiguous), which wgmma reads in its
// transposed (M- / N-major) operand mode.

// The split-K count the launcher uses when asked for `splits` (as igemm_wgrad_split, with
// 64-pixel slices for every config).
WgradSplit wgmma_wgrad_split(const ConvDesc& d, int splits);

// A split count from a cost estimate: `resident` tiles per SM at once (two where two blocks'
// shared memory fits, and for the ping-pong tiles' two consumer warpgroups; else one), each
// running a slice `resident` times slower than a lone tile, so the tile grid times the slabs
// runs in ceil(tiles / (sm_count * resident)) waves of ceil(slices / slabs) slices each, plus the fp32 partials
// (written by the GEMM, read back by the reduction) at memory bandwidth. The smallest estimate
// wins (ties: fewer slabs). The constants are rough H100 figures (docs/conv_kernels.md); the
// engine times the choice, and conv_bench also times half and twice it. 1 for a config without a
// weight gradient (wgmma_config_weight_gradient), whose launcher refuses every count.
int wgmma_wgrad_default_splits(const ConvDesc& d, WgmmaConfig config, int sm_count);

// dw = the weight gradient (overwritten), as conv_backward_filter_igemm: partials of
// igemm_wgrad_scratch_bytes(d, splits) bytes, 16-byte aligned; the same shape requirements
// (std::invalid_argument otherwise), plus wgmma_supported(). Asynchronous on `stream`;
// deterministic for a given (config, splits).
void conv_backward_filter_wgmma(const __half* x, const __half* dy, __half* dw, float* partials,
                                const ConvDesc& d, WgmmaConfig config, int splits,
                                cudaStream_t stream);

// Whether the stream-K weight gradient has passed its GPU tests (a session with a GPU sets this
// when they do); until then the engine's selection only tries it under auto-untested, as an
// untested config. conv_bench and the tests run it regardless.
constexpr bool wgmma_streamk_gpu_tested() { return false; }

// The stream-K weight gradient (WgradStreamK, kernels/conv/igemm_backward.cuh): one run per
// block the device keeps resident (the config's stream-K kernel's blocks per SM x SMs), so every
// resident block has the same number of slices whatever the tile count, and a second kernel adds
// each tile's partials in order. Against split-K's whole-tile slabs it saves the last wave's
// empty slots where tiles x slabs do not fill whole waves (layer3_res), and it writes fewer
// partial tiles where there are fewer tiles than blocks. The partials cross no tile boundary in
// L2's favour, though: runs read their own parts of dy and x, so where those do not fit in L2
// (layer1, layer2) split-K's slabs, whose tiles of one slab read the same pixels at once, should
// stay ahead; conv_bench and the engine time both.
// wgmma_wgrad_streamk_plan: the plan of a config on the current device (std::invalid_argument
// for a config without stream-K, wgmma_config_streamk, or without wgmma_supported()).
WgradStreamK wgmma_wgrad_streamk_plan(const ConvDesc& d, WgmmaConfig config);
// dw = the weight gradient (overwritten), stream-K: partials of wgrad_streamk_scratch_bytes(d,
// wgmma_wgrad_streamk_plan(d, config)) bytes, 16-byte aligned; the requirements of
// conv_backward_filter_wgmma (std::invalid_argument otherwise) plus wgmma_config_streamk.
// Asynchronous on `stream`; deterministic for a given (config, device).
void conv_backward_filter_wgmma_streamk(const __half* x, const __half* dy, __half* dw, float* partials,
                                        const ConvDesc& d, WgmmaConfig config, cudaStream_t stream);

namespace wgmma_detail {

// Hopper's shared-memory carveouts per SM, in KiB of its 256 KiB of L1 + shared memory.
constexpr int kCarveoutsKiB[] = {0, 8, 16, 32, 64, 100, 132, 164, 196, 228};
// The carveout the _l1 tiles ask for, as cudaFuncAttributePreferredSharedMemoryCarveout's
// percentage of 228 KiB: the smallest carveout that holds one block of block_bytes and its
// 1 KiB reserve, rounded down to a whole percent (the driver rounds a percentage up to the next
// carveout it has, so rounding down lands on this one); 100 when none is large enough.
inline int l1_carveout_percent(size_t block_bytes) {
  const size_t kib = (block_bytes + 1024 + 1023) / 1024;
  for (int c : kCarveoutsKiB)
    if ((size_t)c >= kib) return c * 100 / 228;
  return 100;
}

// How many slices ahead of the MMAs the loads run, with `stages` pipeline stages and
// mma_in_flight slices of MMAs left running: the most the stages allow. In the
// warp-specialized pipeline a producer thread signals slice j after issuing slice j + this, and
// one more would deadlock (tests/wgmma_conv_gpu_test.cu models the protocol).
constexpr int load_ahead(int stages, int mma_in_flight) { return stages - 1 - mma_in_flight; }

// Shared-memory layout of an operand tile: rows of 64 fp16 (128 bytes) along the GEMM's K, in
// the 128-byte swizzle wgmma reads (CUTLASS's Swizzle<3,4,3>): 8 rows form a 1024-byte atom
// (1024-byte aligned), and the 16-byte chunk c of row r sits at chunk position c ^ (r % 8).
// The XOR spreads the 8 rows of a column of chunks over all 8 positions, so cp.async stores
// of one chunk column and the tensor cores' reads both avoid bank conflicts.
__host__ __device__ inline uint32_t sw128_offset(int row, int chunk) {
  return (uint32_t)((row >> 3) * 1024 + (row & 7) * 128 + ((chunk ^ (row & 7)) << 4));
}

// The wgmma matrix descriptor of a K-major operand in that layout starting at shared-memory
// byte address `addr` (PTX "matrix descriptor format"): bits 0-13 start address >> 4, bits
// 16-29 leading-dimension byte offset >> 4 (unused for swizzled K-major layouts: 1), bits
// 32-45 stride-dimension byte offset >> 4 (1024: from one 8-row atom to the next), bits 49-51
// base offset 0 (atoms 1024-aligned), bits 62-63 swizzle mode 1 (128 bytes). Stepping k by 16
// elements inside the 128-byte row adds 32 bytes to the start address.
__host__ __device__ inline uint64_t sw128_desc(uint32_t addr) {
  return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) |
         ((uint64_t)1 << 62);
}

// The M/N-major (transposed) operand tiles of the weight gradient: `rows` rows along the GEMM's
// K (pixels), each row BlockM or BlockN fp16 along M or N (channels contiguous, as in memory),
// cut into column blocks of 64 elements (128 bytes). Column block b is a stack of rows / 8
// atoms of 8 rows x 128 bytes (1024 bytes, 1024-aligned) starting at b * rows * 128; inside it
// the 16-byte chunk c of row r sits where sw128_offset(r, c) puts it. This is the canonical
// 128-byte-swizzled M/N-major layout of the PTX ISA (CUTLASS: Swizzle<3,4,3> o
// ((8,8,m),(8,k)) : ((1,8,LBO),(64,SBO)) in fp16 elements), with LBO = rows * 128 bytes from
// one column block to the next along M/N and SBO = 1024 bytes from one 8-row atom to the next
// along K. `chunk` counts 16-byte chunks along the whole row (8 channels each).
__host__ __device__ inline uint32_t sw128_mn_offset(int row, int chunk, int rows) {
  return (uint32_t)((chunk >> 3) * rows * 128) + sw128_offset(row, chunk & 7);
}

// The wgmma matrix descriptor of an M/N-major operand in that layout starting at `addr`: as
// sw128_desc, but the leading-dimension byte offset is the column-block stride (bits 16-29,
// >> 4) and the stride-dimension byte offset the 8-row atom stride, 1024 (bits 32-45, >> 4).
// Stepping k by 16 pixels (two atoms) adds 2048 bytes to the start address.
__host__ __device__ inline uint64_t sw128_mn_desc(uint32_t addr, uint32_t column_block_bytes) {
  return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)((column_block_bytes >> 4) & 0x3FFFu) << 16) |
         ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

// Where accumulator register e of thread `lane` of warp `warp_in_group` lies in its
// warpgroup's m64 x N output tile (PTX: wgmma D fragment layout for .m64nNk16 f32):
// register 4j + {0, 1} at row 16 * warp + lane / 4, columns 8j + 2 (lane % 4) + {0, 1};
// register 4j + {2, 3} eight rows further down.
struct AccCoord {
  int row, col;
};
__host__ __device__ inline AccCoord acc_coord(int warp_in_group, int lane, int e) {
  const int j = e >> 2, half = (e >> 1) & 1, odd = e & 1;
  return {16 * warp_in_group + (lane >> 2) + 8 * half, 8 * j + 2 * (lane & 3) + odd};
}

// The same in a block's block_m x block_n tile, for thread `lane` of warp `warp` (0..7: warps
// 4 g .. 4 g + 3 form warpgroup g, rows block_m / 2 * g ..) and register e of its
// block_m / 128 m64 tiles' accumulators (block_n / 2 each, tile j's at j * block_n / 2 ..; tile
// j's rows 64 j .. of the warpgroup's).
__host__ __device__ inline AccCoord block_acc_coord(int block_m, int block_n, int warp, int lane, int e) {
  const int per_tile = block_n / 2, j = e / per_tile;
  const AccCoord at = acc_coord(warp & 3, lane, e - j * per_tile);
  return {(warp >> 2) * (block_m / 2) + 64 * j + at.row, at.col};
}

// The register epilogue of the tiles with no shared memory left for an sC (kDirectEpilogue in
// wgmma_conv.cu and wgmma_halo.cu; sm90::store_acc_direct in wgmma_store.cuh) stores y straight
// from the accumulators in 16-byte chunks. In
// the D fragment (acc_coord) the four lanes q = 0..3 of a quad hold, per row, 2 columns of each
// 8-column block: lane q's v[i] (one fp16 pair, as 32 bits) is columns 8 (4J + i) + 2q, +1 of
// four consecutive blocks 4J .. 4J + 3. A 4 x 4 transpose inside the quad (v[i] of lane q <->
// v[q] of lane i) leaves lane q with block 4J + q whole, v[l] being columns 8 (4J + q) + 2l,
// +1: eight consecutive channels, one 16-byte store, so a quad writes 64 contiguous bytes per
// row instead of four 16-byte pieces of four sectors.
// Two butterfly stages, m = 1 then m = 2 (the shuffle's lane mask), each sending two values to
// the partner lane q ^ m: quad_send_slot(q, m, k) is the k-th (k = 0, 1) slot lane q sends, the
// one whose bit m differs from q's, and the k-th value received goes into the same slot (the
// partner sends the slots lane q keeps, in the same order, moved by m). Device code selects the
// slot with a predicate on q's bit, not an index, so that v stays in registers.
__host__ __device__ constexpr int quad_send_slot(int q, int m, int k) { return (~q & m) | (k * (3 ^ m)); }

// One lane's part of the transpose, `shfl(value, m)` returning lane q ^ m's `value` (device:
// __shfl_xor_sync over the warp; a host test runs the four lanes' steps in lockstep instead,
// through quad_send / quad_receive below).
__host__ __device__ inline uint32_t quad_send(const uint32_t (&v)[4], int q, int m, int k) {
  return (q & m) ? v[(m == 1 ? 2 * k : k)] : v[(m == 1 ? 2 * k + 1 : k + 2)];
}
__host__ __device__ inline void quad_receive(uint32_t (&v)[4], int q, int m, int k, uint32_t value) {
  if (q & m)
    v[m == 1 ? 2 * k : k] = value;
  else
    v[m == 1 ? 2 * k + 1 : k + 2] = value;
}

// Where a TMA im2col copy starts (the _pp_im2col configs): the copy of `pixels` rows of 64
// channels that holds rows m0 .. of the im2col matrix A[m][k] = x[img][oh + r - pad][ow + s -
// pad][c] (m = (img * H + oh) * W + ow, k = (r * R + s) * C + c; zero outside the image) in
// columns k0 .. k0 + 63, one filter tap's channels (C % 64 == 0, k0 % 64 == 0). The tensor map
// (tma_map_im2col in wgmma_conv.cu) views x as a 4-D tensor (C, W, H, N) with the pixel box's
// lower corner at (-pad, -pad) and its upper corner at (pad - (R - 1), pad - (R - 1)), so its
// box spans W x H positions per image, one per output pixel; the copy walks them from the
// start (w fastest, then h, then the image: as m counts) and reads the pixel at each position
// plus the offsets (s, r), zeros outside x (also past the last image). So the start is output
// pixel m0's window corner (ow - pad, oh - pad, img) and the offsets are the slice's tap; the
// channel coordinate is the slice's first channel. Columns k0 >= R * R * C (the weight
// gradient's column blocks past its last filter column) start in image N, past the last one,
// at the box's lower corner (-pad, -pad): all zeros. A start must lie inside the box (w and h
// from -pad to W - 1 - pad): (0, 0, N), which these copies had until session 10, faulted on an
// H200 for a 1x1 image with R = 3 (wgmma_config_takes_image). The same coordinates serve the
// weight gradient's B (pixels as rows, filter columns as k).
struct Im2colStart {
  int c, w, h, n;
  uint16_t off_w, off_h;
};
__host__ __device__ inline Im2colStart im2col_start(int m0, int k0, int N, int H, int W, int C, int R) {
  const int pad = (R - 1) / 2;
  if (k0 >= R * R * C) return {0, -pad, -pad, N, 0, 0};
  const int tap = k0 / C, r = tap / R;
  const int img = m0 / (H * W), rem = m0 - img * (H * W), oh = rem / W;
  return {k0 - tap * C, rem - oh * W - pad, oh - pad, img, (uint16_t)(tap - r * R), (uint16_t)r};
}

// Probes of the TMA copies the _pp_tma and _pp_im2col tiles rest on (tests/wgmma_conv_gpu_test.cu,
// "[tma]": the first thing to run on a GPU after a change to them). One block issues one copy
// into shared memory as the tiles do (same maps, same PTX) and writes the bytes it produced,
// still in the 128-byte swizzle, to out (16-byte aligned); the test unswizzles them with
// sw128_offset and compares them with a model of the copy, so a wrong start convention or
// swizzle shows as which rows went where, not as a wrong convolution.
// tma_im2col_probe: the im2col map of x (tma_map_im2col: d's N, H, W, C % 64 == 0, R; `pixels`
// rows of 64 channels per copy, a multiple of 8 up to 256), one copy starting at `at`; out:
// pixels x 64 halves (swizzled).
// tma_tile_probe: the 2-D map of the fp16 matrix m [rows][cols] (cols % 8 == 0) in boxes of
// box_rows x 64 columns, one box at column col0, row row0; out: box_rows x 64 halves. With
// cluster 2, 4 or 8 (1: none), a cluster of that many blocks, block r copying the box at (col0,
// row0 + r * box_rows) into all of them at row r * box_rows (the clustered tiles' shared
// operand); out: each block's cluster * box_rows x 64 halves, block 0's first.
// Both need wgmma_supported() (std::invalid_argument otherwise); a copy that never completes
// traps (the kernel's barrier wait has the tiles' spin limit).
void tma_im2col_probe(const __half* x, const ConvDesc& d, int pixels, const Im2colStart& at, __half* out,
                      cudaStream_t stream);
void tma_tile_probe(const __half* m, int rows, int cols, int box_rows, int col0, int row0, int cluster, __half* out,
                    cudaStream_t stream);

// tma_halo_probe: the halo tiles' copy (tma_map_4d of x as (C, W, H, N) in boxes of 64 channels
// x box_w x box_h x box_n images; d's C % 64 == 0), one box at (c, w, h, n), coordinates as the
// tiles give them (w and h may be negative: zeros); out: box_n * box_h * box_w x 64 halves
// (swizzled, 128-byte rows w fastest, then h, then the image). box_w, box_h, box_n in [1, 256],
// their product <= kHaloMaxRows.
void tma_halo_probe(const __half* x, const ConvDesc& d, int box_w, int box_h, int box_n, int c, int w, int h, int n,
                    __half* out, cudaStream_t stream);

// A probe for a halo tile (docs/conv_kernels.md, "Next GPU sessions"): d [64][64] fp32 =
// A[shift .. shift + 63] x B^T over 64 columns, where a [72][64] and b [64][64] are fp16 row-major
// and one warpgroup reads A through a K-major 128-byte-swizzle descriptor that starts `shift`
// rows (shift * 128 bytes, 0..8) into the swizzled tile, with `base_offset` (0..7) in the
// descriptor's base-offset field. On an H200 base offset 0 gave A's rows shift.. for every
// shift and (start address >> 7) & 7 did not (tests/wgmma_halo_probe_gpu_test.cu): a halo
// tile's per-tap operands can start at any row of an aligned tile. Needs wgmma_supported().
void wgmma_shift_probe(const __half* a, const __half* b, int shift, int base_offset, float* d, cudaStream_t stream);

// The same question for the weight gradient's M/N-major operands, whose reduction runs over
// pixel rows (a halo weight gradient would start each filter tap's x operand some pixel rows
// into one buffer): d [64][64] fp32 = sum over k < 64 of A[k][m] * B[shift + k][n], a [64][64]
// and b [72][64] fp16 row-major (row = pixel, 64 channels), both stored as one 64-channel column
// block of the 128-byte swizzle (sw128_mn_offset's layout), read by m64n64k16 in the transposed
// mode with B's descriptor (sw128_mn_desc) starting `shift` rows (0..8) into its tile. Not yet
// run on a GPU (tests/wgmma_halo_probe_gpu_test.cu, "[halo_mn]"). Needs wgmma_supported().
void wgmma_shift_probe_mn(const __half* a, const __half* b, int shift, float* d, cudaStream_t stream);

}  // namespace wgmma_detail

}  // namespace kernels
