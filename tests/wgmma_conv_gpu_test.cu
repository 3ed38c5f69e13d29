// The wgmma (sm_90a) implicit-GEMM convolution (kernels/conv/wgmma_conv.cuh) vs the CPU
// reference, for every WgmmaConfig:
//   - forward at the recipe's six conv shapes, batch 512 (images 0..3 and 510..511 vs
//     ref::conv_forward; all outputs finite; a second launch gives the same bits);
//   - input gradient at the five 3x3 recipe shapes, batch 512 (vs ref::conv_backward_input);
//   - weight gradient at the six recipe shapes, batch 512, over the whole batch (vs
//     ref::conv_backward_weight), at the default split count and at 3 slabs;
//   - odd shapes for all three, in full (partial tiles, C < 64 so one K slice spans several
//     filter taps, R = 1 and 5, a 1x1 image; and shapes with C, K multiples of 64 for the im2col
//     config), and the TMA configs alone on two of them ("[tma]", to run first, after the
//     TMA copies alone: one copy per start into shared memory, compared exactly with a host
//     model of the copy);
// plus host-only checks of what the kernels' correctness rests on: the 128-byte swizzle
// (a permutation inside each row, conflict-free columns), the matrix descriptors' bit fields,
// both operand layouts against the canonical layouts their descriptors name (the K-major one
// the forward uses, the M/N-major one of the weight gradient), the accumulator fragment map
// (every output element exactly once), the TMA im2col copy starts against the im2col matrix
// (through a model of the copy), the weight gradient's split choice, and the launchers'
// precondition checks. The GPU cases skip without a device, and on a GPU other than an
// sm_90a-capable Hopper ("SKIPPED: ... wgmma").
//
// Tolerance rel. L2 2e-3, as tests/implicit_gemm_gpu_test.cu (fp16 output rounding ~3e-4 rms)
// and tests/igemm_backward_gpu_test.cu (the weight gradient's fp32 sums over up to 524288
// pixels stay far below the final fp16 rounding).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <iterator>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/conv/conv_epilogue.cuh"  // the sC layouts (igemm_detail::PaddedC, SwizzledC)
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"
#include "tests/mbarrier_model.h"
#include "tests/support.h"
#include "tests/wgmma_test_util.h"

using gpu_test::bitwise_equal;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using kernels::ConvDesc;
using kernels::WgmmaConfig;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr double kTol = 2e-3;


using wgmma_test::desc_str;

// x uniform in [-1, 1) with channels >= real_channels zero, w uniform in +-1/sqrt(fan_in), dy
// uniform in +-1/64; all fp16-rounded.
struct Inputs {
  std::vector<float> x, w, dy;
};
Inputs make_inputs(const ConvDesc& d, int real_channels, uint64_t seed) {
  Inputs in;
  in.x = random_vector((long)d.N * d.H * d.W * d.C, seed);
  for (long i = 0; i < (long)in.x.size(); i++)
    if (i % d.C >= real_channels) in.x[i] = 0.0f;
  in.x = round_to_half(in.x);
  const float bound = 1.0f / std::sqrt((float)(real_channels * d.R * d.R));
  in.w = round_to_half(random_vector((long)d.K * d.R * d.R * d.C, seed + 1, -bound, bound));
  in.dy = round_to_half(random_vector((long)d.N * d.H * d.W * d.K, seed + 2, -1.0f / 64, 1.0f / 64));
  return in;
}

ref::ConvShape shape_of(const ConvDesc& d, int images) { return {images, d.H, d.W, d.C, d.K, d.R}; }

// Whether a config's launchers take a pass of shape d that gathers from a tensor with `channels`
// channels (the forward and weight gradient: C; the input gradient: K): the im2col configs need
// 64 | channels and an image at least as large as the filter.
bool accepts(WgmmaConfig config, int channels, const ConvDesc& d) {
  return kernels::wgmma_config_takes_channels(config, channels) && kernels::wgmma_config_takes_image(config, d.H, d.W, d.R);
}

std::vector<float> run_forward(const ConvDesc& d, const gpu_test::DeviceBuffer<__half>& x,
                               const gpu_test::DeviceBuffer<__half>& w, WgmmaConfig config) {
  auto y = poisoned<__half>((size_t)d.N * d.H * d.W * d.K);
  kernels::conv_forward_wgmma(x.get(), w.get(), y.get(), d, config, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(y);
}

std::vector<float> run_dgrad(const ConvDesc& d, const gpu_test::DeviceBuffer<__half>& dy,
                             const gpu_test::DeviceBuffer<__half>& w, WgmmaConfig config) {
  auto dx = poisoned<__half>((size_t)d.N * d.H * d.W * d.C);
  auto wt = poisoned<__half>(kernels::igemm_dgrad_scratch_bytes(d) / sizeof(__half));
  kernels::conv_backward_data_wgmma(dy.get(), w.get(), dx.get(), wt.get(), d, config, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(dx);
}

std::vector<float> run_wgrad(const ConvDesc& d, const gpu_test::DeviceBuffer<__half>& x,
                             const gpu_test::DeviceBuffer<__half>& dy, WgmmaConfig config, int splits) {
  auto dw = poisoned<__half>((size_t)d.K * d.R * d.R * d.C);
  auto part = poisoned<float>(kernels::igemm_wgrad_scratch_bytes(d, splits) / sizeof(float));
  kernels::conv_backward_filter_wgmma(x.get(), dy.get(), dw.get(), part.get(), d, config, splits, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(dw);
}

// The stream-K weight gradient (wgmma_config_streamk configs), its scratch from the device's plan.
std::vector<float> run_wgrad_streamk(const ConvDesc& d, const gpu_test::DeviceBuffer<__half>& x,
                                     const gpu_test::DeviceBuffer<__half>& dy, WgmmaConfig config) {
  auto dw = poisoned<__half>((size_t)d.K * d.R * d.R * d.C);
  const kernels::WgradStreamK plan = kernels::wgmma_wgrad_streamk_plan(d, config);
  auto part = poisoned<float>(kernels::wgrad_streamk_scratch_bytes(d, plan) / sizeof(float));
  kernels::conv_backward_filter_wgmma_streamk(x.get(), dy.get(), dw.get(), part.get(), d, config, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(dw);
}

int sm_count() {
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// The weight gradient at a recipe shape, batch 512, against the CPU over the whole batch
// (computed once for every config and split count); the default split count twice must give
// the same bits.
void check_wgrad_recipe(int H, int C, int K, int R, int real_channels, uint64_t seed) {
  const ConvDesc d{512, H, H, C, K, R};
  const Inputs in = make_inputs(d, real_channels, seed);
  std::vector<float> dw_ref((size_t)K * R * R * C);
  ref::conv_backward_weight(in.x.data(), in.dy.data(), dw_ref.data(), shape_of(d, d.N));
  auto d_x = upload_half(in.x), d_dy = upload_half(in.dy);
  const int sms = sm_count();
  for (WgmmaConfig config : kernels::kWgmmaConfigs) {
    // The launcher's checks have their own tests.
    if (!accepts(config, C, d) || !kernels::wgmma_config_weight_gradient(config)) continue;
    const auto info = kernels::wgmma_config_info(config);
    const int dflt = kernels::wgmma_wgrad_default_splits(d, config, sms);
    for (int splits : {dflt, 3}) {
      INFO("wgrad config " << info.name << ", shape " << desc_str(d) << ", splits " << splits);
      const auto dw = run_wgrad(d, d_x, d_dy, config, splits);
      CHECK(gpu_test::all_finite(dw));
      const double e = rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size());
      std::printf("wgmma wgrad %-20s %s splits %d: rel_l2 %.2e\n", info.name, desc_str(d).c_str(), splits, e);
      CHECK(e <= kTol);
      if (splits == dflt) CHECK(bitwise_equal(run_wgrad(d, d_x, d_dy, config, splits), dw));
    }
    if (kernels::wgmma_config_streamk(config)) {
      INFO("wgrad config " << info.name << ", shape " << desc_str(d) << ", stream-K");
      const auto dw = run_wgrad_streamk(d, d_x, d_dy, config);
      CHECK(gpu_test::all_finite(dw));
      const double e = rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size());
      const kernels::WgradStreamK plan = kernels::wgmma_wgrad_streamk_plan(d, config);
      std::printf("wgmma wgrad %-20s %s stream-K (%d runs of %d slices, %d slots): rel_l2 %.2e\n", info.name,
                  desc_str(d).c_str(), plan.workers, plan.run, plan.slots, e);
      CHECK(e <= kTol);
      CHECK(bitwise_equal(run_wgrad_streamk(d, d_x, d_dy, config), dw));
    }
  }
}

// Both passes at a recipe shape, batch 512: images 0..3 and 510..511 against the CPU.
// The configs this file tests: all but the halo tiles, which tests/wgmma_halo_gpu_test.cu runs
// through the same checks (wgmma_test_util.h) in a process of its own (tools/gpu_check.sh's
// shards): a new kernel that traps takes only its own shard's CUDA context with it.
std::vector<WgmmaConfig> main_configs() {
  std::vector<WgmmaConfig> configs;
  for (WgmmaConfig c : kernels::kWgmmaConfigs)
    if (!kernels::wgmma_config_halo(c)) configs.push_back(c);
  return configs;
}

void check_recipe(int H, int C, int K, int R, int real_channels, bool dgrad, uint64_t seed,
                  const std::vector<WgmmaConfig>& configs = main_configs()) {
  const ConvDesc d{512, H, H, C, K, R};
  const Inputs in = make_inputs(d, real_channels, seed);
  const long x_img = (long)H * H * C, y_img = (long)H * H * K;
  std::vector<float> y_head(4 * y_img), y_tail(2 * y_img), dx_head(4 * x_img), dx_tail(2 * x_img);
  ref::conv_forward(in.x.data(), in.w.data(), y_head.data(), shape_of(d, 4));
  ref::conv_forward(in.x.data() + (d.N - 2) * x_img, in.w.data(), y_tail.data(), shape_of(d, 2));
  if (dgrad) {
    ref::conv_backward_input(in.dy.data(), in.w.data(), dx_head.data(), shape_of(d, 4));
    ref::conv_backward_input(in.dy.data() + (d.N - 2) * y_img, in.w.data(), dx_tail.data(), shape_of(d, 2));
  }
  auto d_x = upload_half(in.x), d_w = upload_half(in.w), d_dy = upload_half(in.dy);
  for (WgmmaConfig config : configs) {
    if (!accepts(config, C, d)) continue;
    const auto info = kernels::wgmma_config_info(config);
    INFO("config " << info.name << ", shape " << desc_str(d));
    const auto y = run_forward(d, d_x, d_w, config);
    CHECK(gpu_test::all_finite(y));
    const double e0 = rel_l2_error(y.data(), y_head.data(), 4 * y_img);
    const double e1 = rel_l2_error(y.data() + (d.N - 2) * y_img, y_tail.data(), 2 * y_img);
    std::printf("wgmma fwd %-22s %s: rel_l2 %.2e, %.2e\n", info.name, desc_str(d).c_str(), e0, e1);
    CHECK(e0 <= kTol);
    CHECK(e1 <= kTol);
    CHECK(bitwise_equal(run_forward(d, d_x, d_w, config), y));
    if (!dgrad || !accepts(config, K, d)) continue;
    const auto dx = run_dgrad(d, d_dy, d_w, config);
    CHECK(gpu_test::all_finite(dx));
    const double f0 = rel_l2_error(dx.data(), dx_head.data(), 4 * x_img);
    const double f1 = rel_l2_error(dx.data() + (d.N - 2) * x_img, dx_tail.data(), 2 * x_img);
    std::printf("wgmma dgrad %-20s %s: rel_l2 %.2e, %.2e\n", info.name, desc_str(d).c_str(), f0, f1);
    CHECK(f0 <= kTol);
    CHECK(f1 <= kTol);
  }
}

}  // namespace

// ------------------------------------------------------------------------ host-only checks

// The 128-byte swizzle: inside each 128-byte row the 8 chunks are a permutation of the row's 8
// slots (nothing leaves its row, no two chunks collide), and the 8 rows of an atom put any one
// chunk column into 8 different 16-byte bank groups (conflict-free column access).
TEST_CASE("wgmma 128-byte swizzle is a conflict-free permutation (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::sw128_offset;
  long bad = 0;
  for (int row = 0; row < 256; row++) {
    std::set<uint32_t> slots;
    for (int c = 0; c < 8; c++) {
      const uint32_t off = sw128_offset(row, c);
      if (off % 16 != 0 || off / 128 != (uint32_t)row) bad++;  // 16-byte aligned, in its own row
      slots.insert(off);
    }
    if (slots.size() != 8) bad++;
  }
  for (int atom = 0; atom < 16; atom++)
    for (int c = 0; c < 8; c++) {
      std::set<uint32_t> groups;
      for (int r = 0; r < 8; r++) groups.insert((sw128_offset(atom * 8 + r, c) / 16) % 8);
      if (groups.size() != 8) bad++;
    }
  CHECK(bad == 0);
  // The swizzle is the address-bit XOR wgmma applies: bits 4-6 ^= bits 7-9.
  for (uint32_t off = 0; off < 8192; off += 16) {
    const int row = (int)(off / 128), c = (int)((off % 128) / 16);
    const uint32_t sw = off ^ (((off >> 7) & 7) << 4);
    CHECK(sw128_offset(row, c) == sw);
  }
}

TEST_CASE("wgmma matrix descriptor fields (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::sw128_desc;
  const uint32_t addr = 0x12400;  // a 1024-aligned shared-memory address
  const uint64_t d = sw128_desc(addr);
  CHECK((d & 0x3FFF) == (addr >> 4));          // start address >> 4
  CHECK(((d >> 16) & 0x3FFF) == 1);            // leading byte offset (unused when swizzled)
  CHECK(((d >> 32) & 0x3FFF) == 1024 / 16);    // stride byte offset: one 8-row atom
  CHECK(((d >> 49) & 0x7) == 0);               // base offset
  CHECK((d >> 62) == 1);                       // 128-byte swizzle
  CHECK(sw128_desc(addr + 32) - d == 2);       // k += 16 elements: +32 bytes
  // No stray bits outside the fields.
  CHECK((d & ~((0x3FFFull) | (0x3FFFull << 16) | (0x3FFFull << 32) | (0x7ull << 49) | (0x3ull << 62))) == 0);
}

// Where wgmma reads element (mn, k) of an operand of 64 or 128 rows along M/N and 16 along K,
// given its descriptor, following the canonical 128-byte-swizzled layouts of the PTX ISA as
// CUTLASS writes them (cute/atom/mma_traits_sm90_gmma.hpp, in fp16 elements, T = 8):
//   K-major:   Swizzle<3,4,3> o ((8,m),(T,2)) : ((8T,SBO),(1,T))
//   M/N-major: Swizzle<3,4,3> o ((T,8,m),(8,k)) : ((1,T,LBO),(8T,SBO))
// then the swizzle on the byte address: bits 4-6 ^= bits 7-9. An independent model of the
// hardware's reading, to hold the kernels' store addresses against.
uint32_t canonical_sw128_address(uint64_t desc, bool mn_major, int mn, int k) {
  const uint32_t start = (uint32_t)(desc & 0x3FFF) << 4;
  const uint32_t lbo = (uint32_t)((desc >> 16) & 0x3FFF) << 4, sbo = (uint32_t)((desc >> 32) & 0x3FFF) << 4;
  uint32_t off;
  if (mn_major)
    off = (mn % 8) * 2 + ((mn / 8) % 8) * 16 + (mn / 64) * lbo + (k % 8) * 128 + (k / 8) * sbo;
  else
    off = (mn % 8) * 128 + (mn / 8) * sbo + (k % 8) * 2 + (k / 8) * 16;
  const uint32_t addr = start + off;
  return addr ^ (((addr >> 7) & 7) << 4);
}

// The forward's K-major tiles (GPU-validated) under the model: row mn, element k of a stage
// operand is where sw128_offset puts it, for all four k16 steps of a 64-wide slice. This
// checks the model on a layout known to work before it is used on the weight gradient's.
TEST_CASE("wgmma K-major tiles match the canonical layout of their descriptors (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::sw128_desc;
  using kernels::wgmma_detail::sw128_offset;
  const uint32_t base = 0x8000;
  long bad = 0;
  for (int kk = 0; kk < 4; kk++) {
    const uint64_t desc = sw128_desc(base + kk * 32);
    for (int mn = 0; mn < 256; mn++)  // up to the n256 tiles' B
      for (int k = 0; k < 16; k++) {
        const int kg = kk * 16 + k;  // element of the 64-wide row
        const uint32_t stored = base + sw128_offset(mn, kg / 8) + (kg % 8) * 2;
        if (canonical_sw128_address(desc, false, mn, k) != stored) bad++;
      }
  }
  CHECK(bad == 0);
}

// The weight gradient's M/N-major tiles: the loader stores pixel row k, channel chunk c of a
// stage operand at sw128_mn_offset(k, c, 64); each warpgroup's A descriptor (its 64 output
// channels) and the B descriptor (64, 128 or 256 filter columns) must read every (mn, k) of
// every k16 step from exactly there.
TEST_CASE("wgmma M/N-major tiles match the canonical layout of their descriptors (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::sw128_mn_desc;
  using kernels::wgmma_detail::sw128_mn_offset;
  constexpr int kRows = 64, kColumnBlock = kRows * 128;
  const uint32_t stage = 0x8000;
  long bad = 0;
  for (int kk = 0; kk < kRows / 16; kk++) {
    // A: two warpgroups, each with BlockM / 128 m64 tiles of 64 channels (BlockM 128 or 256);
    // tile j of warpgroup g reads column block g * BlockM / 128 + j.
    for (int block_m : {128, 256})
      for (int group = 0; group < 2; group++)
        for (int j = 0; j < block_m / 128; j++) {
          const int column_block = group * (block_m / 128) + j;
          const uint64_t desc = sw128_mn_desc(stage + column_block * kColumnBlock + kk * 2048, kColumnBlock);
          for (int m = 0; m < 64; m++)
            for (int k = 0; k < 16; k++) {
              const int ch = column_block * 64 + m, row = kk * 16 + k;
              const uint32_t stored = stage + sw128_mn_offset(row, ch / 8, kRows) + (ch % 8) * 2;
              if (canonical_sw128_address(desc, true, m, k) != stored) bad++;
            }
        }
    for (int n_tile : {64, 128, 256}) {  // B: the whole BlockN in one descriptor
      const uint64_t desc = sw128_mn_desc(stage + kk * 2048, kColumnBlock);
      for (int n = 0; n < n_tile; n++)
        for (int k = 0; k < 16; k++) {
          const uint32_t stored = stage + sw128_mn_offset(kk * 16 + k, n / 8, kRows) + (n % 8) * 2;
          if (canonical_sw128_address(desc, true, n, k) != stored) bad++;
        }
    }
  }
  CHECK(bad == 0);
  // The layout is a permutation of the stage: 128 channels x 64 pixels fill 16 KiB exactly once.
  std::set<uint32_t> slots;
  for (int row = 0; row < kRows; row++)
    for (int c = 0; c < 16; c++) slots.insert(sw128_mn_offset(row, c, kRows));
  CHECK(slots.size() == 16u * kRows);
  CHECK(*slots.rbegin() == 16u * kRows * 16 - 16);
  // Descriptor fields: LBO = the column-block stride, SBO = one atom, 128-byte swizzle.
  const uint64_t d = sw128_mn_desc(0x12400, kColumnBlock);
  CHECK((d & 0x3FFF) == (0x12400 >> 4));
  CHECK(((d >> 16) & 0x3FFF) == kColumnBlock / 16);
  CHECK(((d >> 32) & 0x3FFF) == 1024 / 16);
  CHECK((d >> 62) == 1);
}

// The split choice: a launched count (not rounded away by wgmma_wgrad_split), at most 8 waves of
// blocks, and on the recipe's long pixel reductions enough slabs to give at least half the SMs
// of an H100 (132) a block.
TEST_CASE("wgmma wgrad split choice (host)", "[gpu][wgmma]") {
  const ConvDesc shapes[] = {{512, 32, 32, 32, 64, 1},   {512, 32, 32, 64, 128, 3}, {512, 16, 16, 128, 128, 3},
                             {512, 16, 16, 128, 256, 3}, {512, 8, 8, 256, 512, 3},  {512, 4, 4, 512, 512, 3},
                             {3, 5, 5, 8, 24, 3},        {1, 1, 1, 8, 8, 1}};
  for (const ConvDesc& d : shapes)
    for (WgmmaConfig config : kernels::kWgmmaConfigs) {
      const auto info = kernels::wgmma_config_info(config);
      INFO(desc_str(d) << " " << info.name);
      const int s = kernels::wgmma_wgrad_default_splits(d, config, 132);
      CHECK(s >= 1);
      if (!kernels::wgmma_config_weight_gradient(config)) {  // the halo tile: no weight gradient
        CHECK(s == 1);
        continue;
      }
      CHECK(kernels::wgmma_wgrad_split(d, s).splits == s);
      const long tiles = (long)((d.K + 127) / 128) * ((d.R * d.R * d.C + info.block_n - 1) / info.block_n);
      CHECK(tiles * s <= 8 * 132 + tiles);
      if (d.N == 512 && tiles < 132) CHECK(tiles * s >= 132 / 2);
    }
}

// A model of wgmma_ws_pipeline's protocol (kernels/conv/wgmma_conv.cu), run over random
// interleavings: P producer threads and C MMA warps, each stepping on its own; a producer's
// copies of a slice land at random times but in order; MMAs complete at random times but in
// order; mbarriers complete a phase at `count` arrivals and try_wait.parity passes once the
// phase of that parity is over. The slices come in runs of `segs` (one call of the pipeline
// each, the stages and phases continuing from run to run, as the stream-K weight gradient's
// segments); at the end of each run a producer drains its copies and signals the rest, and with
// release_all (kReleaseAll) the MMA warps wait for their MMAs and release the run's last stages.
// Asserted: every run finishes (no deadlock), an MMA warp reads a stage only when every
// producer's copy of its slice has landed there, and no copy is issued into, or lands in, a
// stage whose MMAs on an older slice are still pending. With a lead one larger than
// wgmma_detail::load_ahead the same model deadlocks, and so do several runs without release_all
// (the controls).
namespace ws_model {

using model::Barrier;

// "ok", "deadlock" or a description of the race.
std::string run(int S, int F, int L, const std::vector<int>& segs, int P, int C, unsigned seed,
                bool release_all = false) {
  std::mt19937 rng(seed);
  std::vector<Barrier> full(S, Barrier{P}), empty(S, Barrier{C});
  struct Copy { int slice; bool landed; };
  std::vector<std::vector<Copy>> copies(P);             // per producer, in issue order
  std::vector<std::vector<int>> landed(S, std::vector<int>(P, -1));  // stage -> producer -> slice
  std::vector<std::vector<int>> reading(S);              // stage -> slices with MMAs pending
  // r: the slice (over all runs); g, kt, first: the run, the slice in it, its first slice.
  struct Prod { int r = 0, g = 0, kt = 0, first = 0, pc = 0; };  // pc: 0 issue, 1 signal, 2 drain, 3 done
  struct Mma { int r = 0, g = 0, kt = 0, first = 0, pc = 0; std::vector<int> pending; };  // pc: 0 wait, 1 mma wait, 2 done
  std::vector<Prod> prod(P);
  std::vector<Mma> mma(C);
  auto all_landed = [&](int p, int keep) {
    const int n = (int)copies[p].size() - keep;
    for (int i = 0; i < n; i++)
      if (!copies[p][i].landed) return false;
    return true;
  };
  auto next = [](auto& x) { x.r++, x.kt++; };  // one slice on (the run ends after its last)
  for (int step = 0; step < 1000000; step++) {
    // Every enabled action, then one at random.
    std::vector<std::pair<int, int>> acts;  // (kind, index)
    for (int p = 0; p < P; p++) {
      if (prod[p].pc != 3) acts.push_back({0, p});
      for (const Copy& c : copies[p])
        if (!c.landed) { acts.push_back({1, p}); break; }
    }
    for (int c = 0; c < C; c++) {
      if (mma[c].pc != 2) acts.push_back({2, c});
      if (!mma[c].pending.empty()) acts.push_back({3, c});
    }
    bool moved = false;
    std::shuffle(acts.begin(), acts.end(), rng);
    for (auto [kind, i] : acts) {
      if (kind == 1) {  // producer i's oldest pending copy lands
        for (Copy& c : copies[i])
          if (!c.landed) {
            const int st = c.slice % S;
            for (int r : reading[st])
              if (r != c.slice)
                return "copy of slice " + std::to_string(c.slice) + " lands while slice " + std::to_string(r) +
                       " is read";
            c.landed = true;
            landed[st][i] = c.slice;
            break;
          }
        moved = true;
      } else if (kind == 3) {  // MMA warp i's oldest MMAs complete
        const int sl = mma[i].pending.front();
        mma[i].pending.erase(mma[i].pending.begin());
        auto& r = reading[sl % S];
        r.erase(std::find(r.begin(), r.end(), sl));
        moved = true;
      } else if (kind == 0) {
        Prod& p = prod[i];
        if (p.pc == 0) {
          if (p.kt >= segs[p.g]) { p.pc = 2; moved = true; }
          else if (p.r < S || empty[p.r % S].passed((p.r / S - 1) & 1)) {
            if (!reading[p.r % S].empty())
              return "slice " + std::to_string(p.r) + " issued into a stage being read";
            landed[p.r % S][i] = -1;
            copies[i].push_back({p.r, false});
            if (p.kt >= L) p.pc = 1; else next(p);
            moved = true;
          }
        } else if (p.pc == 1 && all_landed(i, L)) {  // cp.async.wait_group L, fence, arrive
          full[(p.r - L) % S].arrive();
          next(p);
          p.pc = 0, moved = true;
        } else if (p.pc == 2 && all_landed(i, 0)) {  // the run's end: wait for all, signal the rest
          const int n = segs[p.g];
          for (int j = std::max(0, n - L); j < n; j++) full[(p.first + j) % S].arrive();
          p.g++, p.kt = 0, p.first = p.r;
          p.pc = p.g == (int)segs.size() ? 3 : 0, moved = true;
        }
      } else {
        Mma& m = mma[i];
        if (m.pc == 0) {
          if (m.kt >= segs[m.g]) {  // the run's end: wgmma.wait_group 0 (and kReleaseAll)
            if (m.pending.empty()) {
              const int n = segs[m.g];
              if (release_all)
                for (int j = std::max(0, n - F); j < n; j++) empty[(m.first + j) % S].arrive();
              m.g++, m.kt = 0, m.first = m.r;
              if (m.g == (int)segs.size()) m.pc = 2;
              moved = true;
            }
          } else if (full[m.r % S].passed((m.r / S) & 1)) {
            for (int p = 0; p < P; p++)
              if (landed[m.r % S][p] != m.r)
                return "slice " + std::to_string(m.r) + " read before it landed";
            m.pending.push_back(m.r);
            reading[m.r % S].push_back(m.r);
            m.pc = 1, moved = true;
          }
        } else if (m.pc == 1 && (int)m.pending.size() <= F) {  // wgmma.wait_group F, then release
          if (m.kt >= F) empty[(m.r - F) % S].arrive();
          next(m);
          m.pc = 0, moved = true;
        }
      }
      if (moved) break;
    }
    if (!moved) {
      for (const Prod& p : prod)
        if (p.pc != 3) return "deadlock";
      for (const Mma& m : mma)
        if (m.pc != 2) return "deadlock";
      return "ok";
    }
  }
  return "no end";
}

}  // namespace ws_model

TEST_CASE("wgmma warp-specialized pipeline protocol: no deadlock, no stage race (host model)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::load_ahead;
  int deadlocks_one_ahead = 0;
  for (int S : {3, 4, 6})
    for (int F : {0, 1})
      for (int K : {1, 2, 3, 7, 13}) {
        if (load_ahead(S, F) < 1) continue;
        for (unsigned seed = 0; seed < 40; seed++) {
          INFO("stages " << S << " mma_in_flight " << F << " slices " << K << " seed " << seed);
          CHECK(ws_model::run(S, F, load_ahead(S, F), {K}, 3, 2, seed) == "ok");
          if (ws_model::run(S, F, load_ahead(S, F) + 1, {K}, 3, 2, seed) == "deadlock") deadlocks_one_ahead++;
        }
      }
  CHECK(deadlocks_one_ahead > 0);
}

// The stream-K weight gradient calls the pipeline once per segment, continuing the stages and
// phases (r0) and releasing each segment's last stages (kReleaseAll): runs of segments of 1 to
// 9 slices, which start at every stage offset, with the 4- and 6-stage warp-specialized tiles'
// lead. Without the releases the producer waits for stages no one frees.
TEST_CASE("wgmma warp-specialized pipeline over several segments: no deadlock, no race (host model)",
          "[gpu][wgmma]") {
  using kernels::wgmma_detail::load_ahead;
  const std::vector<std::vector<int>> runs = {{1, 1, 1, 1, 1}, {2, 9}, {5, 3, 1}, {9, 1, 4}, {3, 3, 3, 3}, {7, 2}};
  int deadlocks_without_release = 0;
  for (int S : {4, 6})
    for (int F : {0, 1})
      for (const auto& segs : runs)
        for (unsigned seed = 0; seed < 30; seed++) {
          INFO("stages " << S << " mma_in_flight " << F << " segments " << segs.size() << " first " << segs[0]
                         << " seed " << seed);
          CHECK(ws_model::run(S, F, load_ahead(S, F), segs, 3, 2, seed, true) == "ok");
          if (ws_model::run(S, F, load_ahead(S, F), segs, 3, 2, seed, false) == "deadlock")
            deadlocks_without_release++;
        }
  CHECK(deadlocks_without_release > 0);
}

// The accumulator map covers the warpgroup's 64 x N tile exactly once, for N = 64, 128 and 256.
TEST_CASE("wgmma accumulator fragment map covers the tile once (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::acc_coord;
  for (int n : {64, 128, 256}) {
    std::vector<int> hits(64 * n, 0);
    for (int warp = 0; warp < 4; warp++)
      for (int lane = 0; lane < 32; lane++)
        for (int e = 0; e < n / 2; e++) {
          const auto at = acc_coord(warp, lane, e);
          REQUIRE(at.row >= 0);
          REQUIRE(at.row < 64);
          REQUIRE(at.col >= 0);
          REQUIRE(at.col < n);
          hits[at.row * n + at.col]++;
        }
    long wrong = 0;
    for (int h : hits) wrong += h != 1;
    CHECK(wrong == 0);
  }
  // A block's tile: two warpgroups, each with block_m / 128 m64 tiles of its own accumulators.
  for (int block_m : {128, 256})
    for (int n : {64, 128, 256}) {
      if (block_m * n > 128 * 256) continue;  // at most 128 accumulators per thread
      INFO("block " << block_m << " x " << n);
      std::vector<int> hits(block_m * n, 0);
      const int acc = block_m / 128 * n / 2;
      for (int warp = 0; warp < 8; warp++)
        for (int lane = 0; lane < 32; lane++)
          for (int e = 0; e < acc; e++) {
            const auto at = kernels::wgmma_detail::block_acc_coord(block_m, n, warp, lane, e);
            REQUIRE(at.row >= 0);
            REQUIRE(at.row < block_m);
            REQUIRE(at.col >= 0);
            REQUIRE(at.col < n);
            hits[at.row * n + at.col]++;
          }
      long wrong = 0;
      for (int h : hits) wrong += h != 1;
      CHECK(wrong == 0);
    }
  // Register 64 of a 256 x 128 tile's thread: its second m64 tile, 64 rows down.
  CHECK(kernels::wgmma_detail::block_acc_coord(256, 128, 5, 5, 64).row == 128 + 64 + 16 + 1);
  // Spot values from the PTX layout: lane 5 of warp 2 holds row 32 + 1, columns 2, 3 first.
  CHECK(acc_coord(2, 5, 0).row == 33);
  CHECK(acc_coord(2, 5, 0).col == 2);
  CHECK(acc_coord(2, 5, 3).row == 41);
  CHECK(acc_coord(2, 5, 4).col == 10);
}

// The epilogue buffer's sC layouts (conv_epilogue.cuh): the padded one of most tiles and the
// swizzled one of the compact buffer (the 6-stage ping-pong tile) and of the held stages (the 7-
// and 9-stage tiles' fused epilogues). Each places every element of
// a BlockM x BlockN tile once, inside its own row, a 16-byte chunk's 8 columns together; a
// warp's fragment stores (4 bytes per lane, a ping-pong consumer's accumulators) hit 32
// different banks, and the epilogues' 16-byte row reads (8 consecutive chunks of a row per
// quarter warp, one 128-byte wavefront) 8 different 16-byte bank groups.
template <class CL>
void check_c_layout(int block_m, int block_n) {
  INFO("sC " << block_m << " x " << block_n);
  const int stride = CL::kRowHalves;
  std::vector<int> hits((size_t)block_m * stride, 0);
  long misplaced = 0, split = 0;
  for (int r = 0; r < block_m; r++)
    for (int c = 0; c < block_n; c++) {
      const int at = CL::at(r, c);
      misplaced += at < r * stride || at >= r * stride + block_n;
      split += at != CL::at(r, c & ~7) + (c & 7) || CL::at(r, c & ~7) % 8 != 0;
      if (at >= 0 && at < (int)hits.size()) hits[at]++;
    }
  CHECK(misplaced == 0);
  CHECK(split == 0);
  CHECK(std::count(hits.begin(), hits.end(), 1) == (long)block_m * block_n);
  long conflicts = 0;
  for (int warp = 0; warp < 4; warp++)
    for (int e = 0; e < (block_m / 64) * block_n / 2; e += 2) {
      std::set<int> banks;
      for (int lane = 0; lane < 32; lane++) {
        const auto at = kernels::wgmma_detail::block_acc_coord(2 * block_m, block_n, warp, lane, e);
        banks.insert(CL::at(at.row, at.col) / 2 % 32);  // a half2 per lane: one 4-byte word
      }
      conflicts += banks.size() != 32;
    }
  CHECK(conflicts == 0);
  long read_conflicts = 0;
  for (int r = 0; r < block_m; r++)
    for (int k0 = 0; k0 < block_n / 8; k0 += 8) {
      std::set<int> groups;
      for (int k = k0; k < k0 + 8; k++) groups.insert(CL::at(r, 8 * k) / 8 % 8);
      read_conflicts += groups.size() != 8;
    }
  CHECK(read_conflicts == 0);
}

TEST_CASE("wgmma epilogue sC layouts: padded and swizzled, conflict-free (host)", "[gpu][wgmma]") {
  using kernels::igemm_detail::PaddedC;
  using kernels::igemm_detail::SwizzledC;
  check_c_layout<PaddedC<136>>(128, 128);
  check_c_layout<PaddedC<72>>(128, 64);
  check_c_layout<SwizzledC<128>>(128, 128);
  check_c_layout<SwizzledC<64>>(128, 64);
  check_c_layout<SwizzledC<256>>(64, 256);  // a cooperative consumer's rows
  // Unpadded rows without the swizzle would put a fragment store's 8 rows on one bank group.
  CHECK(SwizzledC<128>::kRowHalves == 128);
  CHECK(SwizzledC<128>::at(1, 0) == 128 + 8);  // chunk 0 of row 1 at chunk 1
  CHECK(SwizzledC<128>::at(3, 8) == 3 * 128 + 2 * 8);  // chunk 1 of row 3 at chunk 1 ^ 3
  CHECK(SwizzledC<128>::at(9, 64) == 9 * 128 + 9 * 8);  // chunk 8 of row 9 at 8 | (0 ^ 1)
  // The fragment stores' chunk offsets (chunk_at: one per 8-column block for all of a thread's
  // rows, which lie 8 apart) agree with at().
  long chunk_wrong = 0;
  for (int r0 = 0; r0 < 64; r0++)
    for (int i = 0; r0 + 8 * i < 128; i++)
      for (int c = 0; c < 128; c++)
        chunk_wrong += SwizzledC<128>::chunk_at(r0, c / 8) + 8 * i * 128 + c % 8 != SwizzledC<128>::at(r0 + 8 * i, c);
  for (int r0 = 0; r0 < 8; r0++)  // a cooperative consumer's 64 x 256
    for (int i = 0; r0 + 8 * i < 64; i++)
      for (int c = 0; c < 256; c++)
        chunk_wrong += SwizzledC<256>::chunk_at(r0, c / 8) + 8 * i * 256 + c % 8 != SwizzledC<256>::at(r0 + 8 * i, c);
  CHECK(chunk_wrong == 0);
  // The compact fragment stores (conv_fwd_wgmma_pp_kernel) write register e = j * N / 2 + 4 b
  // + 2 h (and e + 1) of a consumer thread at row r0 + 64 j + 8 h, columns 8 b + 2 (lane % 4)
  // (+ 1), r0 = 16 warp + lane / 4: where pp_acc_coord puts it. (The cooperative consumers' the
  // same: 128 x 128 as two m64 tiles, 64 x 256 as one.)
  long frag_wrong = 0;
  for (int n : {64, 128, 256})
    for (int warp = 0; warp < 4; warp++)
      for (int lane = 0; lane < 32; lane++)
        for (int j = 0; j < (n == 256 ? 1 : 2); j++)
          for (int b = 0; b < n / 8; b++)
            for (int h = 0; h < 2; h++)
              for (int odd = 0; odd < 2; odd++) {
                const int e = j * n / 2 + 4 * b + 2 * h + odd;
                const auto at = kernels::wgmma_detail::block_acc_coord(256, n, warp, lane, e);
                frag_wrong += at.row != 16 * warp + lane / 4 + 64 * j + 8 * h || at.col != 8 * b + 2 * (lane % 4) + odd;
              }
  CHECK(frag_wrong == 0);
  CHECK(SwizzledC<128>::kRedAliasesC);
  CHECK_FALSE(PaddedC<136>::kRedAliasesC);
}

// The register epilogue (sm90::store_acc_direct, the tiles with no sC): the quad transpose, run
// for the four lanes of a quad in lockstep as the shuffles do, must leave lane q holding 8-column
// block 4J + q of its row whole, columns in order, for every row half and block group of an
// m64 x 128 tile, starting from the registers acc_coord says hold those columns.
TEST_CASE("wgmma register epilogue: the quad transpose gathers 16-byte chunks (host model)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::acc_coord;
  using kernels::wgmma_detail::quad_receive;
  using kernels::wgmma_detail::quad_send;
  using kernels::wgmma_detail::quad_send_slot;
  // The send slots: the two whose bit m differs from the lane's, ascending.
  for (int q = 0; q < 4; q++)
    for (int m : {1, 2}) {
      CHECK((quad_send_slot(q, m, 0) & m) != (q & m));
      CHECK((quad_send_slot(q, m, 1) & m) != (q & m));
      CHECK(quad_send_slot(q, m, 0) < quad_send_slot(q, m, 1));
    }
  constexpr int kN = 128;
  auto code = [](int row, int col) { return (uint32_t)(row * 1000 + col); };  // a pair by its first column
  long wrong = 0, checked = 0;
  for (int warp = 0; warp < 4; warp++)
    for (int quad = 0; quad < 8; quad++)
      for (int h = 0; h < 2; h++)
        for (int g4 = 0; g4 < kN / 32; g4++) {
          uint32_t v[4][4];
          for (int q = 0; q < 4; q++)
            for (int i = 0; i < 4; i++) {
              const int e = 4 * (4 * g4 + i) + 2 * h;  // store_acc_direct's register of (block, half)
              const auto at = acc_coord(warp, 4 * quad + q, e);
              const auto next = acc_coord(warp, 4 * quad + q, e + 1);
              REQUIRE(next.row == at.row);
              REQUIRE(next.col == at.col + 1);
              v[q][i] = code(at.row, at.col);
            }
          for (int m = 1; m <= 2; m *= 2)
            for (int k = 0; k < 2; k++) {
              uint32_t sent[4];
              for (int q = 0; q < 4; q++) sent[q] = quad_send(v[q], q, m, k);
              for (int q = 0; q < 4; q++) quad_receive(v[q], q, m, k, sent[q ^ m]);
            }
          const int row = 16 * warp + quad + 8 * h;
          for (int q = 0; q < 4; q++)
            for (int l = 0; l < 4; l++, checked++) wrong += v[q][l] != code(row, 8 * (4 * g4 + q) + 2 * l);
        }
  CHECK(checked == 4 * 8 * 2 * (kN / 32) * 16);
  CHECK(wrong == 0);
}

TEST_CASE("wgmma launchers check their preconditions (host)", "[gpu][wgmma]") {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  const WgmmaConfig cfg = WgmmaConfig::k128x64x64s4;
  auto fwd = [&](const ConvDesc& d, __half* x) { kernels::conv_forward_wgmma(x, fake(0x20000), fake(0x30000), d, cfg, 0); };
  CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 12, 16, 3}, fake(0x10000)), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 20, 3}, fake(0x10000)), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 16, 2}, fake(0x10000)), std::invalid_argument);  // even R
  CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10008)), std::invalid_argument);  // align
  CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 16, 3}, nullptr), std::invalid_argument);
  CHECK_THROWS_AS(kernels::wgmma_config_info(static_cast<WgmmaConfig>(99)), std::invalid_argument);
  auto wgrad = [&](const ConvDesc& d, __half* x, int splits) {
    kernels::conv_backward_filter_wgmma(x, fake(0x20000), fake(0x30000), reinterpret_cast<float*>(0x40000), d,
                                        cfg, splits, 0);
  };
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 12, 16, 3}, fake(0x10000), 1), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 20, 3}, fake(0x10000), 1), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 2}, fake(0x10000), 1), std::invalid_argument);  // even R
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10008), 1), std::invalid_argument);  // align
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 3}, nullptr, 1), std::invalid_argument);
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10000), 0), std::invalid_argument);      // no slab
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10000), 65536), std::invalid_argument);  // grid z
  // Stream-K: only the configs that have it (cfg has not), and the plan likewise.
  CHECK_THROWS_AS(kernels::conv_backward_filter_wgmma_streamk(fake(0x10000), fake(0x20000), fake(0x30000),
                                                              reinterpret_cast<float*>(0x40000),
                                                              ConvDesc{2, 4, 4, 16, 16, 3}, cfg, 0),
                  std::invalid_argument);
  CHECK_THROWS_AS(kernels::wgmma_wgrad_streamk_plan(ConvDesc{2, 4, 4, 16, 16, 3}, cfg), std::invalid_argument);
  for (WgmmaConfig c : kernels::kWgmmaConfigs)
    if (kernels::wgmma_config_streamk(c))
      CHECK_THROWS_AS(kernels::conv_backward_filter_wgmma_streamk(fake(0x10008), fake(0x20000), fake(0x30000),
                                                                  reinterpret_cast<float*>(0x40000),
                                                                  ConvDesc{2, 4, 4, 16, 16, 3}, c, 0),
                      std::invalid_argument);  // align
  // The fused epilogues' own rules (conv_forward_igemm_pool's and _stats'), checked before
  // anything runs.
  auto pool = [&](const ConvDesc& d, uint8_t* arg) {
    kernels::conv_forward_wgmma_pool(fake(0x10000), fake(0x20000), fake(0x30000), arg, d, cfg, nullptr, 0);
  };
  CHECK_THROWS_AS(pool(ConvDesc{2, 5, 4, 16, 16, 3}, nullptr), std::invalid_argument);  // H odd
  CHECK_THROWS_AS(pool(ConvDesc{2, 4, 128, 16, 16, 3}, nullptr), std::invalid_argument);  // 2W > BlockM
  CHECK_THROWS_AS(pool(ConvDesc{2, 4, 4, 16, 16, 3}, reinterpret_cast<uint8_t*>(0x40004)),
                  std::invalid_argument);  // argmax alignment
  float* f = reinterpret_cast<float*>(0x50000);
  CHECK_THROWS_AS(kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000),
                                                    ConvDesc{4, 5, 5, 16, 16, 3}, cfg, {f, f + 64, f + 128, 1}, 0),
                  std::invalid_argument);  // 4 groups of 25 pixels: not whole blocks
  CHECK_THROWS_AS(kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000),
                                                    ConvDesc{4, 8, 8, 16, 16, 3}, cfg, {f, f + 64, nullptr, 2}, 0),
                  std::invalid_argument);  // no scratch
  // The im2col config copies one filter tap's 64 channels of the gathered tensor per slice:
  // its launchers refuse other channel counts (checked before the device, so here too).
  const WgmmaConfig im2col = WgmmaConfig::k128x128x64s4PpIm2col;
  CHECK(kernels::wgmma_config_channel_multiple(im2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s4PpIm2colC2) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s4PpIm2colC4) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s4PpIm2colC8) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x64x64s4PpIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s5PpIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s6PpIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s7PpIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x128x64s7PpIm2colC8) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x64x64s9PpIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k128x256x64s4CoopIm2col) == 64);
  CHECK(kernels::wgmma_config_channel_multiple(WgmmaConfig::k256x128x64s4CoopIm2col) == 64);
  // The deep ping-pong tiles have fused epilogues: in the compact buffer (6 stages) or in the
  // tile's held last stage (7 and 9); so do the cooperative ones, one held stage per consumer.
  for (const WgmmaConfig deep : {WgmmaConfig::k128x128x64s5PpIm2col, WgmmaConfig::k128x128x64s6PpIm2col,
                                 WgmmaConfig::k128x128x64s7PpIm2col, WgmmaConfig::k128x128x64s7PpIm2colC8,
                                 WgmmaConfig::k128x64x64s9PpIm2col, WgmmaConfig::k128x256x64s4CoopIm2col,
                                 WgmmaConfig::k256x128x64s4CoopIm2col})
    CHECK(kernels::wgmma_config_fused_epilogues(deep));
  // A fused epilogue's rows and threads: the block's (two warpgroups), a ping-pong consumer's
  // tile, a cooperative consumer's half of the tile. The partials, the ghost-group rule and the
  // pool's row-pair rule go by those rows.
  for (WgmmaConfig c : kernels::kWgmmaConfigs) {
    const auto info = kernels::wgmma_config_info(c);
    INFO(info.name);
    const bool coop = c == WgmmaConfig::k128x256x64s4CoopIm2col || c == WgmmaConfig::k256x128x64s4CoopIm2col;
    const bool persistent = info.threads == 384 && (coop || std::string(info.name).find("_pp") != std::string::npos);
    CHECK(info.epilogue_m == (coop ? info.block_m / 2 : info.block_m));
    CHECK(info.epilogue_threads == (persistent ? 128 : 256));
  }
  for (const WgmmaConfig coop : {WgmmaConfig::k128x256x64s4CoopIm2col, WgmmaConfig::k256x128x64s4CoopIm2col}) {
    INFO(kernels::wgmma_config_info(coop).name);
    CHECK(kernels::wgmma_config_weight_gradient(coop));
  }
  {
    float* f = reinterpret_cast<float*>(0x50000);
    // 128 x 256: 64-row epilogues, so 2W = 128 (W = 64) is refused as 2W = 64 is not.
    CHECK_THROWS_WITH(kernels::conv_forward_wgmma_pool(fake(0x10000), fake(0x20000), fake(0x30000), nullptr,
                                                       ConvDesc{1, 2, 64, 64, 64, 3},
                                                       WgmmaConfig::k128x256x64s4CoopIm2col, nullptr, 0),
                      Catch::Contains("multiple of 2 * W"));
    // 256 x 128: 128-row epilogues, so ghost groups of 64 pixels are refused.
    CHECK_THROWS_WITH(
        kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000), ConvDesc{4, 8, 8, 64, 64, 3},
                                          WgmmaConfig::k256x128x64s4CoopIm2col, {f, f + 64, f + 128, 1}, 0),
        Catch::Contains("multiple of BlockM"));
    CHECK(kernels::wgmma_stats_scratch_bytes(ConvDesc{4, 8, 8, 64, 64, 3}, WgmmaConfig::k128x256x64s4CoopIm2col) ==
          2 * (256 / 64) * 64 * sizeof(float));
    // More groups than the partials reduction's grid takes (65535), which only the 64-row
    // epilogues of a 128-row grid can reach: 70000 images of 8 x 8 pixels, one group each.
    CHECK_THROWS_WITH(
        kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000), ConvDesc{70000, 8, 8, 64, 64, 3},
                                          WgmmaConfig::k128x256x64s4CoopIm2col, {f, f + 64, f + 128, 1}, 0),
        Catch::Contains("65535 groups"));
  }
  for (WgmmaConfig c : kernels::kWgmmaConfigs) CHECK_NOTHROW(kernels::wgmma_config_info(c));  // lists vs tiles
  CHECK(kernels::wgmma_config_channel_multiple(cfg) == 8);
  CHECK_THROWS_WITH(kernels::conv_forward_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), ConvDesc{2, 4, 4, 32, 64, 3},
                                                im2col, 0),
                    Catch::Contains("multiple of 64"));
  CHECK_THROWS_WITH(kernels::conv_backward_data_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), fake(0x40000),
                                                      ConvDesc{2, 4, 4, 64, 32, 3}, im2col, 0),
                    Catch::Contains("multiple of 64"));  // dgrad gathers dy: K channels
  // And an image at least as large as the filter (wgmma_config_takes_image: from a 1x1 image
  // with a 3x3 filter an im2col copy faulted on an H200).
  CHECK_FALSE(kernels::wgmma_config_takes_image(im2col, 1, 1, 3));
  CHECK_FALSE(kernels::wgmma_config_takes_image(WgmmaConfig::k128x64x64s4PpIm2col, 8, 2, 3));
  CHECK(kernels::wgmma_config_takes_image(im2col, 3, 3, 3));
  CHECK(kernels::wgmma_config_takes_image(im2col, 1, 1, 1));
  CHECK(kernels::wgmma_config_takes_image(cfg, 1, 1, 3));
  CHECK_THROWS_WITH(kernels::conv_forward_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), ConvDesc{4, 1, 1, 64, 64, 3},
                                                im2col, 0),
                    Catch::Contains("at least as large as the filter"));
  CHECK_THROWS_WITH(kernels::conv_backward_data_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), fake(0x40000),
                                                      ConvDesc{4, 2, 2, 64, 64, 3}, im2col, 0),
                    Catch::Contains("at least as large as the filter"));
  CHECK_THROWS_WITH(kernels::conv_backward_filter_wgmma(fake(0x10000), fake(0x20000), fake(0x30000),
                                                        reinterpret_cast<float*>(0x40000), ConvDesc{2, 4, 4, 32, 64, 3},
                                                        im2col, 1, 0),
                    Catch::Contains("multiple of 64"));
  CHECK_THROWS_WITH(kernels::conv_forward_wgmma_pool(fake(0x10000), fake(0x20000), fake(0x30000), nullptr,
                                                     ConvDesc{2, 4, 4, 32, 64, 3}, im2col, nullptr, 0),
                    Catch::Contains("multiple of 64"));
  // The TMA probes ("[tma]") check what they are given before the device.
  CHECK_THROWS_WITH(kernels::wgmma_detail::tma_im2col_probe(fake(0x10000), ConvDesc{2, 4, 4, 32, 64, 3}, 128, {},
                                                            fake(0x20000), 0),
                    Catch::Contains("multiple of 64"));
  CHECK_THROWS_WITH(kernels::wgmma_detail::tma_im2col_probe(fake(0x10000), ConvDesc{2, 4, 4, 64, 64, 3}, 100, {},
                                                            fake(0x20000), 0),
                    Catch::Contains("pixels"));
  CHECK_THROWS_WITH(kernels::wgmma_detail::tma_tile_probe(fake(0x10000), 64, 64, 512, 0, 0, 1, fake(0x20000), 0),
                    Catch::Contains("box_rows"));
  CHECK_THROWS_WITH(kernels::wgmma_detail::tma_tile_probe(fake(0x10000), 64, 64, 64, 0, 0, 3, fake(0x20000), 0),
                    Catch::Contains("cluster"));
  // The halo probe ("[halo]", tests/wgmma_halo_probe_gpu_test.cu) too.
  float* fake_d = reinterpret_cast<float*>(0x30000);
  CHECK_THROWS_WITH(kernels::wgmma_detail::wgmma_shift_probe(fake(0x10000), fake(0x20000), 9, 1, fake_d, 0),
                    Catch::Contains("shift"));
  CHECK_THROWS_WITH(kernels::wgmma_detail::wgmma_shift_probe(fake(0x10000), fake(0x20000), 3, 8, fake_d, 0),
                    Catch::Contains("base_offset"));
  CHECK_THROWS_WITH(kernels::wgmma_detail::wgmma_shift_probe(nullptr, fake(0x20000), 3, 3, fake_d, 0),
                    Catch::Contains("non-null"));
  if (!kernels::wgmma_supported()) {
    // A valid shape is still refused where wgmma cannot run (no device here, or not Hopper).
    CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10000)), std::invalid_argument);
    CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10000), 1), std::invalid_argument);
    CHECK_THROWS_AS(kernels::wgmma_blocks_per_sm(cfg, false), std::invalid_argument);
    CHECK_THROWS_AS(kernels::wgmma_detail::tma_tile_probe(fake(0x10000), 64, 64, 64, 0, 0, 2, fake(0x20000), 0),
                    std::invalid_argument);
    CHECK_THROWS_AS(kernels::wgmma_detail::wgmma_shift_probe(fake(0x10000), fake(0x20000), 3, 3, fake_d, 0),
                    std::invalid_argument);
  }
}

// TMA's im2col copy as the PTX ISA and the driver API describe it, modelled on the host: the
// map's pixel box spans, per image, w in [lower_w, W - 1 + upper_w] and h likewise (corners as
// tma_map_im2col sets them: -pad and pad - (R - 1)); a copy of `pixels` rows starts at the
// position (at.w, at.h, at.n), steps w fastest, wraps to the box's next row, then to the next
// image, and row i holds channels at.c .. at.c + 63 of the pixel at its position plus the
// offsets (at.off_w, at.off_h), zeros outside x (past the last image included).
std::vector<float> tma_im2col_model(const std::vector<float>& x, const ConvDesc& d, kernels::wgmma_detail::Im2colStart at,
                                    int pixels) {
  const int pad = (d.R - 1) / 2, lower = -pad, upper = pad - (d.R - 1);
  // The start must lie inside the bounding box: one outside faulted on an H200 (session 10).
  INFO("im2col start (w " << at.w << ", h " << at.h << ") in the box [" << lower << ", " << d.W - 1 + upper << "] x ["
                          << lower << ", " << d.H - 1 + upper << "]");
  CHECK((at.w >= lower && at.w <= d.W - 1 + upper && at.h >= lower && at.h <= d.H - 1 + upper));
  std::vector<float> tile((size_t)pixels * 64, 0.0f);
  int w = at.w, h = at.h, n = at.n;
  for (int i = 0; i < pixels; i++) {
    const int iw = w + at.off_w, ih = h + at.off_h;
    if (n >= 0 && n < d.N && ih >= 0 && ih < d.H && iw >= 0 && iw < d.W)
      for (int c = 0; c < 64; c++)
        if (at.c + c < d.C) tile[(size_t)i * 64 + c] = x[(((size_t)n * d.H + ih) * d.W + iw) * d.C + at.c + c];
    if (++w > d.W - 1 + upper) {
      w = lower;
      if (++h > d.H - 1 + upper) {
        h = lower;
        n++;
      }
    }
  }
  return tile;
}

// im2col_start against the definition of the im2col matrix, through that model: for every tile
// of 128 rows (the forward's A), of 64 rows (the weight gradient's B, pixels as rows) and of 256
// rows (the 256 x 128 cooperative tile's A), every 64-column slice, including one past the last
// column (all zeros), on odd and recipe-like shapes with C a multiple of 64 (R = 1, 3, 5;
// partial last tiles; a 1x1 image; images shorter than a tile, so copies cross images).
TEST_CASE("wgmma im2col copy starts give the im2col matrix (host model)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::im2col_start;
  const ConvDesc shapes[] = {{3, 5, 5, 64, 8, 3}, {2, 6, 9, 64, 8, 3}, {5, 3, 3, 128, 8, 1}, {2, 6, 6, 64, 8, 5},
                             {4, 1, 1, 64, 8, 3}, {1, 11, 13, 64, 8, 3}, {3, 32, 32, 64, 8, 3}, {9, 4, 4, 128, 8, 3},
                             {5, 8, 8, 64, 8, 5}};
  for (const ConvDesc& d : shapes) {
    INFO(desc_str(d));
    std::vector<float> x((size_t)d.N * d.H * d.W * d.C);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)(i + 1);  // distinct, never zero
    const int M = d.N * d.H * d.W, Kg = d.R * d.R * d.C, pad = (d.R - 1) / 2;
    auto a = [&](int m, int k) -> float {  // the im2col matrix, by definition
      if (m >= M || k >= Kg) return 0.0f;
      const int img = m / (d.H * d.W), oh = (m / d.W) % d.H, ow = m % d.W;
      const int tap = k / d.C, c = k % d.C, ih = oh + tap / d.R - pad, iw = ow + tap % d.R - pad;
      if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) return 0.0f;
      return x[(((size_t)img * d.H + ih) * d.W + iw) * d.C + c];
    };
    long bad = 0, checked = 0;
    for (int pixels : {128, 64, 256})
      for (int m0 = 0; m0 < M; m0 += pixels)
        for (int k0 = 0; k0 <= Kg; k0 += 64) {
          const auto tile = tma_im2col_model(x, d, im2col_start(m0, k0, d.N, d.H, d.W, d.C, d.R), pixels);
          for (int i = 0; i < pixels; i++)
            for (int c = 0; c < 64; c++, checked++)
              if (tile[(size_t)i * 64 + c] != a(m0 + i, k0 + c)) bad++;
        }
    CHECK(checked > 0);
    CHECK(bad == 0);
  }
}

// The _l1 tiles' carveout: the percentage, rounded up by the driver to the next carveout it
// has, must land on the smallest carveout that holds the block and its 1 KiB reserve (any less
// and the block would not fit; any more and L1 loses what the tile gives it).
TEST_CASE("wgmma L1 tiles ask for the smallest carveout that holds the block (host)", "[gpu][wgmma]") {
  auto driver_carveout = [](int percent) {  // KiB the driver picks for a percentage of 228 KiB
    for (int c : kernels::wgmma_detail::kCarveoutsKiB)
      if (c * 100 >= percent * 228) return c;
    return 228;
  };
  for (size_t bytes = 0; bytes + 1024 <= 228 * 1024; bytes += 256) {
    INFO(bytes << " bytes");
    const size_t need = bytes + 1024;
    const int got = driver_carveout(kernels::wgmma_detail::l1_carveout_percent(bytes));
    CHECK((size_t)got * 1024 >= need);
    int smallest = 228;
    for (int c : kernels::wgmma_detail::kCarveoutsKiB)
      if ((size_t)c * 1024 >= need) {
        smallest = c;
        break;
      }
    CHECK(got == smallest);
  }
  int l1_tiles = 0;
  for (WgmmaConfig config : kernels::kWgmmaConfigs) {
    const std::string name = kernels::wgmma_config_info(config).name;
    if (name.size() > 3 && name.compare(name.size() - 3, 3, "_l1") == 0) ++l1_tiles;
  }
  CHECK(l1_tiles == 2);
}

// Two blocks of a config share an SM wherever their shared memory fits (228 KiB per SM, 1 KiB
// of it reserved per block): the registers never stop them (ptxas gives every wgmma kernel at
// most 128 per thread, tools/ptxas_check.sh) and the launchers ask for the largest carveout
// (the _l1 tiles for the smallest that holds one block: 129 KiB, one block either way).
// The 3-stage 128 x 128 tile exists for this.
TEST_CASE("wgmma blocks per SM follow from shared memory", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  for (WgmmaConfig config : kernels::kWgmmaConfigs) {
    const auto info = kernels::wgmma_config_info(config);
    const int expected = 2 * (info.smem_bytes + 1024) <= 228 * 1024 ? 2 : 1;
    for (bool wgrad : {false, true}) {
      INFO(info.name << (wgrad ? " weight gradient" : " forward") << ", " << info.smem_bytes << " bytes");
      if (wgrad && !kernels::wgmma_config_weight_gradient(config)) {
        CHECK_THROWS_AS(kernels::wgmma_blocks_per_sm(config, wgrad), std::invalid_argument);
        continue;
      }
      CHECK(kernels::wgmma_blocks_per_sm(config, wgrad) == expected);
    }
  }
  CHECK(kernels::wgmma_blocks_per_sm(WgmmaConfig::k128x128x64s3, false) == 2);
}

// ----------------------------------------------------------------------------- GPU cases

TEST_CASE("wgmma conv prep 27(pad 32)->64 1x1 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(32, 32, 64, 1, 27, /*dgrad=*/false, 1100);
}
TEST_CASE("wgmma conv layer1 64->128 3x3 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(32, 64, 128, 3, 64, true, 1110);
}
TEST_CASE("wgmma conv layer1 res 128->128 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(16, 128, 128, 3, 128, true, 1120);
}
TEST_CASE("wgmma conv layer2 128->256 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(16, 128, 256, 3, 128, true, 1130);
}
TEST_CASE("wgmma conv layer3 256->512 3x3 @8, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(8, 256, 512, 3, 256, true, 1140);
}
TEST_CASE("wgmma conv layer3 res 512->512 3x3 @4, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe(4, 512, 512, 3, 512, true, 1150);
}

TEST_CASE("wgmma wgrad prep 27(pad 32)->64 1x1 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(32, 32, 64, 1, 27, 1300);
}
TEST_CASE("wgmma wgrad layer1 64->128 3x3 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(32, 64, 128, 3, 64, 1310);
}
TEST_CASE("wgmma wgrad layer1 res 128->128 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(16, 128, 128, 3, 128, 1320);
}
TEST_CASE("wgmma wgrad layer2 128->256 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(16, 128, 256, 3, 128, 1330);
}
TEST_CASE("wgmma wgrad layer3 256->512 3x3 @8, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(8, 256, 512, 3, 256, 1340);
}
TEST_CASE("wgmma wgrad layer3 res 512->512 3x3 @4, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_wgrad_recipe(4, 512, 512, 3, 512, 1350);
}

namespace {

// One shape, forward, input and weight gradient (1 and 2 slabs) compared in full, for each of
// `configs` that takes it (accepts).
void check_odd_shape(const ConvDesc& d, uint64_t seed, const std::vector<WgmmaConfig>& configs) {
  const Inputs in = make_inputs(d, d.C, seed);
  std::vector<float> y_ref((long)d.N * d.H * d.W * d.K), dx_ref((long)d.N * d.H * d.W * d.C);
  std::vector<float> dw_ref((long)d.K * d.R * d.R * d.C);
  ref::conv_forward(in.x.data(), in.w.data(), y_ref.data(), shape_of(d, d.N));
  ref::conv_backward_input(in.dy.data(), in.w.data(), dx_ref.data(), shape_of(d, d.N));
  ref::conv_backward_weight(in.x.data(), in.dy.data(), dw_ref.data(), shape_of(d, d.N));
  auto d_x = upload_half(in.x), d_w = upload_half(in.w), d_dy = upload_half(in.dy);
  for (WgmmaConfig config : configs) {
    INFO("config " << kernels::wgmma_config_info(config).name << ", shape " << desc_str(d));
    if (accepts(config, d.K, d)) {
      const auto dx = run_dgrad(d, d_dy, d_w, config);
      CHECK(gpu_test::all_finite(dx));
      CHECK(rel_l2_error(dx.data(), dx_ref.data(), (long)dx.size()) <= kTol);
    }
    if (!accepts(config, d.C, d)) {
      // Refused by the launcher, before anything runs (an image smaller than the filter: the
      // im2col configs' image rule).
      if (kernels::wgmma_config_takes_channels(config, d.C))
        CHECK_THROWS_AS(run_forward(d, d_x, d_w, config), std::invalid_argument);
      continue;
    }
    const auto y = run_forward(d, d_x, d_w, config);
    CHECK(gpu_test::all_finite(y));
    CHECK(rel_l2_error(y.data(), y_ref.data(), (long)y.size()) <= kTol);
    if (!kernels::wgmma_config_weight_gradient(config)) {
      CHECK_THROWS_AS(run_wgrad(d, d_x, d_dy, config, 1), std::invalid_argument);
      continue;
    }
    for (int splits : {1, 2}) {
      const auto dw = run_wgrad(d, d_x, d_dy, config, splits);
      CHECK(gpu_test::all_finite(dw));
      CHECK(rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size()) <= kTol);
    }
    if (kernels::wgmma_config_streamk(config)) {
      INFO("stream-K");
      const auto dw = run_wgrad_streamk(d, d_x, d_dy, config);
      CHECK(gpu_test::all_finite(dw));
      CHECK(rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size()) <= kTol);
    }
  }
}

}  // namespace

// Partial tiles (M = 75, 108; K = 24, 40, 72, 136), C < 64 (one K slice spans several taps),
// R = 1 and 5, a 1x1 image; forward, input and weight gradient compared in full. The last six
// have C and K multiples of 64 for the im2col configs (which take no other): copies that cross
// images and run past the last one, a partial last column tile (K = 192), weight-gradient
// column blocks past the last filter column (R * R * C = 576, 1600), R = 1 and 5, a 1x1 image,
// and three row tiles (M = 300) of two filter tiles, so the clustered tile's last unit has a
// row tile past M.
TEST_CASE("wgmma conv odd shapes vs reference", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {{3, 5, 5, 8, 24, 3},    {2, 6, 9, 24, 40, 3},   {5, 3, 3, 16, 8, 1},
                             {2, 6, 6, 16, 16, 5},   {4, 1, 1, 8, 8, 3},     {4, 7, 7, 40, 72, 3},
                             {1, 11, 13, 8, 136, 3}, {3, 5, 5, 64, 64, 3},   {2, 6, 9, 64, 192, 3},
                             {5, 3, 3, 128, 64, 1},  {2, 6, 6, 64, 128, 5},  {4, 1, 1, 64, 64, 3},
                             {3, 10, 10, 64, 192, 3}};
  uint64_t seed = 1200;
  for (const ConvDesc& d : shapes) check_odd_shape(d, seed += 10, main_configs());
}

namespace {

using wgmma_test::landed;

// Where the 64 values row(0) .. row(63) of a copied row came from, for a failure's message: the
// pixel of x whose channels c0 .. c0 + 63 they are (x random, so one pixel matches), "zeros", or
// "no pixel of x".
template <class Row>
std::string row_source(Row row, const std::vector<float>& x, const ConvDesc& d, int c0) {
  bool zeros = true;
  for (int c = 0; c < 64; c++) zeros = zeros && row(c) == 0.0f;
  if (zeros) return "zeros";
  for (int n = 0; n < d.N; n++)
    for (int h = 0; h < d.H; h++)
      for (int w = 0; w < d.W; w++) {
        bool same = true;
        for (int c = 0; c < 64 && same; c++) same = row(c) == x[(((size_t)n * d.H + h) * d.W + w) * d.C + c0 + c];
        if (same) return "pixel (n " + std::to_string(n) + ", h " + std::to_string(h) + ", w " + std::to_string(w) + ")";
      }
  return "no pixel of x";
}

}  // namespace

namespace {

// TMA's im2col copies of x of shape d (random, from seed), 128-row (forward A), 64-row
// (weight-gradient B) and 256-row (the 256 x 128 cooperative tile's A), at the first, a middle
// and the last row tile and filter taps first, middle, last and past the last, against
// tma_im2col_model (see the test below).
void check_im2col_copies(const ConvDesc& d, uint64_t seed) {
  using kernels::wgmma_detail::im2col_start;
  const std::vector<float> x = round_to_half(random_vector((long)d.N * d.H * d.W * d.C, seed));
  const auto d_x = upload_half(x);
  const int M = d.N * d.H * d.W, Kg = d.R * d.R * d.C;
  for (int pixels : {128, 64, 256}) {
    const int last_m0 = (M - 1) / pixels * pixels;
    for (int m0 : {0, std::min(pixels / 2 + 8, last_m0), last_m0})
      for (int k0 : {0, d.C, (d.R * d.R / 2) * d.C + 64 % d.C, Kg - 64, Kg}) {
        const auto at = im2col_start(m0, k0, d.N, d.H, d.W, d.C, d.R);
        INFO(desc_str(d) << ", " << pixels << " pixels, m0 " << m0 << ", k0 " << k0 << ": start (c " << at.c << ", w "
                         << at.w << ", h " << at.h << ", n " << at.n << "), offsets (" << at.off_w << ", "
                         << at.off_h << ")");
        auto out = poisoned<__half>((size_t)pixels * 64);
        kernels::wgmma_detail::tma_im2col_probe(d_x.get(), d, pixels, at, out.get(), 0);
        CUDA_CHECK(cudaDeviceSynchronize());
        const std::vector<float> raw = download_half(out);
        const std::vector<float> model = tma_im2col_model(x, d, at, pixels);
        int bad_rows = 0;
        std::string first;
        for (int i = 0; i < pixels; i++) {
          bool ok = true;
          for (int c = 0; c < 64; c++) ok = ok && landed(raw, i, c) == model[(size_t)i * 64 + c];
          if (ok) continue;
          if (bad_rows++ < 4)
            first += "\n  row " + std::to_string(i) + ": landed " +
                     row_source([&](int c) { return landed(raw, i, c); }, x, d, at.c) + ", model " +
                     row_source([&](int c) { return model[(size_t)i * 64 + c]; }, x, d, at.c);
        }
        INFO("first differing rows:" << first);
        CHECK(bad_rows == 0);
      }
  }
}

}  // namespace

// TMA's im2col copy, as tma_map_im2col sets it up and the _pp_im2col tiles issue it, against the
// host model of tma_im2col_model (which the im2col-start test holds to the im2col matrix): one
// copy per start, the landed bytes unswizzled and compared exactly, for 128-row (forward A) and
// 64-row (weight-gradient B) copies at the first, a middle and the last row tile and filter taps
// first, middle, last and past the last. On a mismatch the first rows say which pixel landed
// where the model expected which, so a wrong corner or start convention can be read off.
TEST_CASE("wgmma TMA im2col copy lands as the model says", "[gpu][wgmma][tma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {{3, 5, 5, 64, 8, 3}, {3, 10, 10, 128, 8, 3}, {2, 6, 6, 64, 8, 5}, {5, 3, 3, 128, 8, 1},
                             {4, 8, 8, 64, 8, 3}};
  uint64_t seed = 1300;
  for (const ConvDesc& d : shapes) check_im2col_copies(d, seed++);
}

// The same copies from images smaller than, as large as and one larger than a 3x3 filter. On an
// H200 (session 10) the 2x2, 3x3 and 4x4 ones landed as the model says and the 1x1 one faulted
// (illegal instruction, at the copy past the last filter column, which im2col_start then
// started at (w 0, h 0, n N), outside the bounding box when W <= pad; the model now checks
// that every start lies inside, and im2col_start starts that copy at the box's lower corner).
// A faulting copy leaves the process's CUDA context unusable, so these are hidden and one per
// image size: a GPU session runs each in its own process (tools/gpu_check.sh's probes step).
// If the 1x1 one passes, the image rule (wgmma_config_takes_image) can go.
namespace {

// The copies from four images of size x size pixels, 64 channels, a 3x3 filter.
void check_small_image_copies(int size) {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_im2col_copies({4, size, size, 64, 8, 3}, 1309 + (uint64_t)size);
}

}  // namespace

TEST_CASE("wgmma TMA im2col copy from a 1x1 image, 3x3 filter", "[.][tma_small1]") { check_small_image_copies(1); }
TEST_CASE("wgmma TMA im2col copy from a 2x2 image, 3x3 filter", "[.][tma_small2]") { check_small_image_copies(2); }
TEST_CASE("wgmma TMA im2col copy from a 3x3 image, 3x3 filter", "[.][tma_small3]") { check_small_image_copies(3); }
TEST_CASE("wgmma TMA im2col copy from a 4x4 image, 3x3 filter", "[.][tma_small4]") { check_small_image_copies(4); }

// TMA's tiled copy of a matrix (tma_map_2d: the _pp_tma tiles' B, the weight gradient's A), and
// its multicast in clusters of 2, 4, 8 (the _c2, _c4, _c8 tiles' shared operand, each block
// copying its part into all): the landed bytes unswizzled and compared exactly with the
// matrix's box, zeros past its last row, at the box sizes the tiles use, for boxes at the
// first rows, past the last row, and at column blocks past the first.
TEST_CASE("wgmma TMA tiled box and its multicast land as the model says", "[gpu][wgmma][tma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const int rows = 300, cols = 576;
  const std::vector<float> m = round_to_half(random_vector((long)rows * cols, 1350));
  const auto d_m = upload_half(m);
  auto value = [&](int r, int c) { return r < rows && c < cols ? m[(size_t)r * cols + c] : 0.0f; };
  struct Box {
    int box_rows, col0, row0;
  };
  for (int cluster : {1, 2, 4, 8}) {
    // The boxes the tiles copy: the forward's B (128 / cluster filter rows per block) and the
    // weight gradient's A (64 pixels, or 64 * 2 / cluster of one column block per block).
    const int big = 128 / cluster, small = std::min(64, 128 / cluster);
    for (const Box& b : {Box{big, 0, 0}, Box{small, 64, 128}, Box{big, 512, 256}, Box{small, 448, 280}}) {
      const int copied = cluster * b.box_rows, blocks = cluster;
      INFO("cluster " << cluster << ", " << b.box_rows << "-row box at column " << b.col0 << ", row " << b.row0);
      auto out = poisoned<__half>((size_t)blocks * copied * 64);
      kernels::wgmma_detail::tma_tile_probe(d_m.get(), rows, cols, b.box_rows, b.col0, b.row0, cluster, out.get(), 0);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> all = download_half(out);
      for (int blk = 0; blk < blocks; blk++) {
        INFO("block " << blk);
        const std::vector<float> raw(all.begin() + (size_t)blk * copied * 64, all.begin() + (size_t)(blk + 1) * copied * 64);
        long bad = 0;
        int first_bad = -1;
        for (int i = 0; i < copied; i++)
          for (int c = 0; c < 64; c++)
            if (landed(raw, i, c) != value(b.row0 + i, b.col0 + c)) {
              if (first_bad < 0) first_bad = i;
              bad++;
            }
        INFO("first differing row " << first_bad);
        CHECK(bad == 0);
      }
    }
  }
}

// The TMA configs alone on two odd shapes (M = 75: a partial tile whose copies cross images and
// run past the last one; R * R * C = 576: a weight-gradient column block past the last filter
// column; M = 300, K = 192: units of two row tiles of one of two filter tiles for the clustered
// tile, the last with a row tile past M), all three passes: the first thing to run on a GPU
// after a change to them. A TMA copy
// that never completes traps its kernel (mbar_wait's spin limit) and ends the test process, so
// this runs before, and apart from, the [wgmma] shard (docs/conv_kernels.md, "Next GPU
// sessions").
TEST_CASE("wgmma TMA tiles on two odd shapes vs reference", "[gpu][wgmma][tma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const std::vector<WgmmaConfig> tma = {WgmmaConfig::k128x128x64s4PpTma, WgmmaConfig::k128x128x64s4PpIm2col,
                                        WgmmaConfig::k128x128x64s4PpIm2colC2, WgmmaConfig::k128x128x64s4PpIm2colC4,
                                        WgmmaConfig::k128x128x64s4PpIm2colC8, WgmmaConfig::k128x64x64s4PpIm2col,
                                        WgmmaConfig::k128x128x64s5PpIm2col, WgmmaConfig::k128x128x64s6PpIm2col,
                                        WgmmaConfig::k128x128x64s7PpIm2col, WgmmaConfig::k128x128x64s7PpIm2colC8,
                                        WgmmaConfig::k128x64x64s9PpIm2col, WgmmaConfig::k128x256x64s4CoopIm2col,
                                        WgmmaConfig::k256x128x64s4CoopIm2col};
  check_odd_shape({3, 5, 5, 64, 64, 3}, 1190, tma);
  check_odd_shape({3, 10, 10, 64, 192, 3}, 1195, tma);
}

// The checks above for other test files (tests/wgmma_test_util.h).
namespace wgmma_test {
void recipe_vs_reference(int H, int C, int K, int R, int real_channels, bool dgrad, uint64_t seed,
                         const std::vector<WgmmaConfig>& configs) {
  check_recipe(H, C, K, R, real_channels, dgrad, seed, configs);
}
void odd_shape_vs_reference(const ConvDesc& d, uint64_t seed, const std::vector<WgmmaConfig>& configs) {
  check_odd_shape(d, seed, configs);
}
void check_refuses_fused_epilogues(WgmmaConfig config) {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  float* f = reinterpret_cast<float*>(0x50000);
  CHECK_THROWS_WITH(kernels::conv_forward_wgmma_pool(fake(0x10000), fake(0x20000), fake(0x30000), nullptr,
                                                     ConvDesc{2, 4, 4, 64, 64, 3}, config, nullptr, 0),
                    Catch::Contains("no fused epilogues"));
  CHECK_THROWS_WITH(kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000),
                                                      ConvDesc{4, 8, 8, 64, 64, 3}, config, {f, f + 64, f + 128, 2}, 0),
                    Catch::Contains("no fused epilogues"));
  CHECK_THROWS_WITH(kernels::conv_backward_data_wgmma_bn_sums(fake(0x10000), fake(0x20000), fake(0x30000),
                                                              fake(0x40000), ConvDesc{4, 8, 8, 64, 64, 3}, config,
                                                              {}, 0),
                    Catch::Contains("no fused epilogues"));
}
}  // namespace wgmma_test
