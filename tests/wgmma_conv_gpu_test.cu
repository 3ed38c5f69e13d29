// The wgmma (sm_90a) implicit-GEMM convolution (kernels/conv/wgmma_conv.cuh) vs the CPU
// reference, for every WgmmaConfig:
//   - forward at the recipe's six conv shapes, batch 512 (images 0..3 and 510..511 vs
//     ref::conv_forward; all outputs finite; a second launch gives the same bits);
//   - input gradient at the five 3x3 recipe shapes, batch 512 (vs ref::conv_backward_input);
//   - odd shapes for both, in full (partial tiles, C < 64 so one K slice spans several filter
//     taps, R = 1 and 5, a 1x1 image);
// plus host-only checks of what the kernel's correctness rests on: the 128-byte swizzle
// (a permutation inside each row, conflict-free columns), the matrix descriptor's bit fields,
// the accumulator fragment map (every output element exactly once), and the launchers'
// precondition checks. The GPU cases skip without a device, and on a GPU other than an
// sm_90a-capable Hopper ("SKIPPED: ... wgmma").
//
// Tolerance rel. L2 2e-3, as tests/implicit_gemm_gpu_test.cu (fp16 output rounding ~3e-4 rms).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

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

#define SKIP_WITHOUT_WGMMA()                                                                   \
  do {                                                                                         \
    if (!kernels::wgmma_supported()) {                                                         \
      std::printf("SKIPPED: this GPU or build cannot run wgmma (needs sm_90a, Hopper)\n"); \
      return;                                                                                  \
    }                                                                                          \
  } while (0)

std::string desc_str(const ConvDesc& d) {
  return std::to_string(d.N) + "x" + std::to_string(d.H) + "x" + std::to_string(d.W) + "x" +
         std::to_string(d.C) + " -> K=" + std::to_string(d.K) + " R=" + std::to_string(d.R);
}

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

// Both passes at a recipe shape, batch 512: images 0..3 and 510..511 against the CPU.
void check_recipe(int H, int C, int K, int R, int real_channels, bool dgrad, uint64_t seed) {
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
  for (WgmmaConfig config : kernels::kWgmmaConfigs) {
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
    if (!dgrad) continue;
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

// The accumulator map covers the warpgroup's 64 x N tile exactly once, for N = 64 and 128.
TEST_CASE("wgmma accumulator fragment map covers the tile once (host)", "[gpu][wgmma]") {
  using kernels::wgmma_detail::acc_coord;
  for (int n : {64, 128}) {
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
  // Spot values from the PTX layout: lane 5 of warp 2 holds row 32 + 1, columns 2, 3 first.
  CHECK(acc_coord(2, 5, 0).row == 33);
  CHECK(acc_coord(2, 5, 0).col == 2);
  CHECK(acc_coord(2, 5, 3).row == 41);
  CHECK(acc_coord(2, 5, 4).col == 10);
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
  CHECK_THROWS_AS(kernels::wgmma_config_info(static_cast<WgmmaConfig>(7)), std::invalid_argument);
  if (!kernels::wgmma_supported()) {
    // A valid shape is still refused where wgmma cannot run (no device here, or not Hopper).
    CHECK_THROWS_AS(fwd(ConvDesc{2, 4, 4, 16, 16, 3}, fake(0x10000)), std::invalid_argument);
  }
}

// ----------------------------------------------------------------------------- GPU cases

TEST_CASE("wgmma conv prep 27(pad 32)->64 1x1 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(32, 32, 64, 1, 27, /*dgrad=*/false, 1100);
}
TEST_CASE("wgmma conv layer1 64->128 3x3 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(32, 64, 128, 3, 64, true, 1110);
}
TEST_CASE("wgmma conv layer1 res 128->128 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(16, 128, 128, 3, 128, true, 1120);
}
TEST_CASE("wgmma conv layer2 128->256 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(16, 128, 256, 3, 128, true, 1130);
}
TEST_CASE("wgmma conv layer3 256->512 3x3 @8, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(8, 256, 512, 3, 256, true, 1140);
}
TEST_CASE("wgmma conv layer3 res 512->512 3x3 @4, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  check_recipe(4, 512, 512, 3, 512, true, 1150);
}

// Partial tiles (M = 75, 108; K = 24, 40, 72, 136), C < 64 (one K slice spans several taps),
// R = 1 and 5, a 1x1 image; forward and input gradient compared in full.
TEST_CASE("wgmma conv odd shapes vs reference", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {{3, 5, 5, 8, 24, 3}, {2, 6, 9, 24, 40, 3}, {5, 3, 3, 16, 8, 1},
                             {2, 6, 6, 16, 16, 5}, {4, 1, 1, 8, 8, 3}, {4, 7, 7, 40, 72, 3},
                             {1, 11, 13, 8, 136, 3}};
  uint64_t seed = 1200;
  for (const ConvDesc& d : shapes) {
    const Inputs in = make_inputs(d, d.C, seed += 10);
    std::vector<float> y_ref((long)d.N * d.H * d.W * d.K), dx_ref((long)d.N * d.H * d.W * d.C);
    ref::conv_forward(in.x.data(), in.w.data(), y_ref.data(), shape_of(d, d.N));
    ref::conv_backward_input(in.dy.data(), in.w.data(), dx_ref.data(), shape_of(d, d.N));
    auto d_x = upload_half(in.x), d_w = upload_half(in.w), d_dy = upload_half(in.dy);
    for (WgmmaConfig config : kernels::kWgmmaConfigs) {
      INFO("config " << kernels::wgmma_config_info(config).name << ", shape " << desc_str(d));
      const auto y = run_forward(d, d_x, d_w, config);
      CHECK(gpu_test::all_finite(y));
      CHECK(rel_l2_error(y.data(), y_ref.data(), (long)y.size()) <= kTol);
      const auto dx = run_dgrad(d, d_dy, d_w, config);
      CHECK(gpu_test::all_finite(dx));
      CHECK(rel_l2_error(dx.data(), dx_ref.data(), (long)dx.size()) <= kTol);
    }
  }
}
