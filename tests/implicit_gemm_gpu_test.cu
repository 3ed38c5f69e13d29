// The hand-written implicit-GEMM forward convolution (kernels/conv/implicit_gemm.cuh) vs
// ref::conv_forward, for every tile configuration:
//   - the recipe's six conv shapes at the real batch (512): the GPU runs the whole batch, the
//     CPU reference covers the first 4 and the last 2 images (an output image depends on its
//     input image alone), every output must be written and finite, and a second launch must
//     give the same bits;
//   - odd shapes (tiny N, H != W, channel counts that are not multiples of any tile, R = 1, 3, 5,
//     a 1x1 image where every 3x3 tap but the centre is padding), compared in full;
//   - the fused BN-statistics epilogue vs sums over the stored output, one group and ghost groups;
// plus two host-only cases that need no GPU: the im2col index helpers against the definition,
// and the launchers' precondition checks.
//
// Tolerance for the outputs: rel. L2 <= 2e-3. The inputs are fp16-rounded on both sides, so
// every product is exact in fp32 (11-bit x 11-bit significands); fp32 accumulation over at
// most R*R*C = 4608 terms adds ~1e-6; the final rounding to fp16 adds at most 2^-11 = 4.9e-4
// relative per element, about 3e-4 rms. 2e-3 leaves a 7x margin; an indexing error gives O(1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using kernels::ConvDesc;
using kernels::IgemmConfig;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr double kTolOut = 2e-3;

// Raw fp16 bits -> float, and "no NaN / Inf" (exponent all ones) without converting 67 M values.
std::vector<float> to_float(const std::vector<__half>& h, long begin, long n) {
  std::vector<float> f(n);
  for (long i = 0; i < n; i++) f[i] = __half2float(h[begin + i]);
  return f;
}
bool all_finite_half(const std::vector<__half>& h) {
  for (const __half& v : h) {
    uint16_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    if ((bits & 0x7C00u) == 0x7C00u) return false;
  }
  return true;
}

struct Problem {
  ConvDesc d;
  std::vector<float> x, w;  // fp16-rounded
  long x_img() const { return (long)d.H * d.W * d.C; }
  long y_img() const { return (long)d.H * d.W * d.K; }
  long y_size() const { return (long)d.N * y_img(); }
};

// x uniform in [-1, 1) with channels >= real_channels zero (the whitening output is 27 channels
// padded to 32); w uniform in +-1/sqrt(fan_in) (PyTorch's default init), as in training.
Problem make_problem(const ConvDesc& d, int real_channels, uint64_t seed) {
  Problem p{d, {}, {}};
  p.x = random_vector((long)d.N * d.H * d.W * d.C, seed);
  for (long i = 0; i < (long)p.x.size(); i++)
    if (i % d.C >= real_channels) p.x[i] = 0.0f;
  p.x = round_to_half(p.x);
  const float bound = 1.0f / std::sqrt((float)(real_channels * d.R * d.R));
  p.w = round_to_half(random_vector((long)d.K * d.R * d.R * d.C, seed + 1, -bound, bound));
  return p;
}

// ref::conv_forward on images [first, first + count).
std::vector<float> reference(const Problem& p, int first, int count) {
  const ref::ConvShape rs{count, p.d.H, p.d.W, p.d.C, p.d.K, p.d.R};
  std::vector<float> y(rs.y_size());
  ref::conv_forward(p.x.data() + first * p.x_img(), p.w.data(), y.data(), rs);
  return y;
}

std::vector<__half> run_igemm(const Problem& p, const DeviceBuffer<__half>& d_x,
                              const DeviceBuffer<__half>& d_w, IgemmConfig config) {
  auto d_y = poisoned<__half>(p.y_size());
  kernels::conv_forward_igemm(d_x.get(), d_w.get(), d_y.get(), p.d, config, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download(d_y);
}

std::string desc_str(const ConvDesc& d) {
  return std::to_string(d.N) + "x" + std::to_string(d.H) + "x" + std::to_string(d.W) + "x" +
         std::to_string(d.C) + " -> K=" + std::to_string(d.K) + " R=" + std::to_string(d.R);
}

// A recipe shape at batch 512: reference slices = images 0..3 and 510..511.
void check_recipe_shape(int H, int C, int K, int R, int real_channels, uint64_t seed) {
  const ConvDesc d{512, H, H, C, K, R};
  const Problem p = make_problem(d, real_channels, seed);
  const auto y_head = reference(p, 0, 4), y_tail = reference(p, d.N - 2, 2);
  auto d_x = upload_half(p.x), d_w = upload_half(p.w);
  for (IgemmConfig config : kernels::kIgemmConfigs) {
    const auto info = kernels::igemm_config_info(config);
    INFO("config " << info.name << ", shape " << desc_str(d));
    const auto y = run_igemm(p, d_x, d_w, config);
    CHECK(all_finite_half(y));
    const double e_head = rel_l2_error(to_float(y, 0, 4 * p.y_img()).data(), y_head.data(), 4 * p.y_img());
    const double e_tail =
        rel_l2_error(to_float(y, (d.N - 2) * p.y_img(), 2 * p.y_img()).data(), y_tail.data(), 2 * p.y_img());
    std::printf("igemm %-14s %s: rel_l2 images 0..3 %.2e, images 510..511 %.2e\n", info.name,
                desc_str(d).c_str(), e_head, e_tail);
    CHECK(e_head <= kTolOut);
    CHECK(e_tail <= kTolOut);
    CHECK(bitwise_equal(run_igemm(p, d_x, d_w, config), y));  // deterministic
  }
}

}  // namespace

// ------------------------------------------------------------------------ host-only checks

// FilterTap + a_offset (what the kernel's A loader uses) vs the definition of the implicit
// im2col matrix, for every row m and every 8-channel chunk k the kernel visits, walking k in
// steps of BlockK from each chunk's start as the loader does. Exact (integer) comparison.
TEST_CASE("igemm im2col index helpers match the definition (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::a_offset;
  using kernels::igemm_detail::FilterTap;
  const ConvDesc shapes[] = {{2, 5, 7, 8, 8, 3},  {1, 4, 4, 32, 8, 1},  {2, 3, 3, 16, 8, 5},
                             {1, 1, 1, 8, 8, 3},  {2, 6, 6, 40, 8, 3},  {1, 4, 4, 64, 8, 3}};
  for (const ConvDesc& d : shapes)
    for (int block_k : {32, 64}) {
      INFO(desc_str(d) << " BlockK " << block_k);
      const int M = d.N * d.H * d.W, Kg = d.R * d.R * d.C, pad = (d.R - 1) / 2;
      long mismatches = 0, visited = 0;
      for (int chunk = 0; chunk < block_k / 8; chunk++) {
        FilterTap tap;
        tap.init(chunk * 8, d.C, d.R);
        for (int k = chunk * 8; k < Kg + block_k; k += block_k, tap.advance(block_k, d.C, d.R)) {
          const bool k_ok = k < Kg;
          if ((tap.r < d.R) != k_ok) mismatches++;  // r >= R marks "past the end"
          if (!k_ok) continue;
          // The definition: k = (r * R + s) * C + c.
          const int c = k % d.C, s = (k / d.C) % d.R, r = k / d.C / d.R;
          if (tap.r != r || tap.s != s || tap.c != c) mismatches++;
          for (int m = 0; m < M; m++) {
            const int img = m / (d.H * d.W), oh = (m / d.W) % d.H, ow = m % d.W;
            const int ih = oh + r - pad, iw = ow + s - pad;
            const bool inside = ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
            const int want = inside ? ((img * d.H + ih) * d.W + iw) * d.C + c : -1;
            if (a_offset(m, oh, ow, tap, d.H, d.W, d.C, pad) != want) mismatches++;
            visited++;
          }
        }
      }
      CHECK(visited == (long)M * Kg / 8);
      CHECK(mismatches == 0);
    }
}

// The launchers reject what the kernel cannot do before touching the GPU (no device needed:
// the pointers below are never dereferenced).
TEST_CASE("igemm launchers check their preconditions (host)", "[gpu][igemm]") {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  __half* x = fake(0x10000);
  __half* w = fake(0x20000);
  __half* y = fake(0x30000);
  const ConvDesc ok{2, 4, 4, 16, 16, 3};
  const IgemmConfig cfg = IgemmConfig::k64x64x32s4;
  auto fwd = [&](const __half* xx, const __half* ww, __half* yy, const ConvDesc& d) {
    kernels::conv_forward_igemm(xx, ww, yy, d, cfg, 0);
  };
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 12, 16, 3}), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 16, 20, 3}), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 16, 16, 2}), std::invalid_argument);  // even R
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{0, 4, 4, 16, 16, 3}), std::invalid_argument);  // empty
  CHECK_THROWS_AS(fwd(fake(0x10008), w, y, ok), std::invalid_argument);                // x align
  CHECK_THROWS_AS(fwd(x, fake(0x20002), y, ok), std::invalid_argument);                // w align
  CHECK_THROWS_AS(fwd(x, w, fake(0x30004), ok), std::invalid_argument);                // y align
  CHECK_THROWS_AS(fwd(nullptr, w, y, ok), std::invalid_argument);
  // 2^31 elements of x: beyond 32-bit indexing.
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{1 << 16, 64, 64, 8, 8, 1}), std::invalid_argument);
  CHECK_THROWS_AS(kernels::conv_forward_igemm(x, w, y, ok, static_cast<IgemmConfig>(99), 0),
                  std::invalid_argument);

  float* f = reinterpret_cast<float*>(0x40000);
  const kernels::IgemmStats good{f, f, f, 2};
  auto stats = [&](const ConvDesc& d, const kernels::IgemmStats& s) {
    kernels::conv_forward_igemm_stats(x, w, y, d, cfg, s, 0);
  };
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, f, f, 3}), std::invalid_argument);  // 3 !| 2
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, nullptr, f, 2}), std::invalid_argument);
  // Two groups of one 4x4 image = 16 pixels each: a 64-row block would straddle groups.
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, f, f, 1}), std::invalid_argument);
  CHECK_THROWS_AS(stats(ConvDesc{2, 4, 4, 12, 16, 3}, good), std::invalid_argument);  // C % 8
  CHECK(kernels::igemm_stats_scratch_bytes(ConvDesc{3, 5, 5, 8, 24, 3}, cfg) ==
        2 * 2 * 24 * sizeof(float));  // ceil(75 / 64) = 2 blocks of rows, sums + squares
}

// ----------------------------------------------------------------------- recipe shapes (GPU)

TEST_CASE("igemm conv prep 27(pad 32)->64 1x1 @32, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(32, 32, 64, 1, 27, 110);
}

TEST_CASE("igemm conv layer1 64->128 3x3 @32, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(32, 64, 128, 3, 64, 120);
}

TEST_CASE("igemm conv layer1 res 128->128 3x3 @16, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(16, 128, 128, 3, 128, 130);
}

TEST_CASE("igemm conv layer2 128->256 3x3 @16, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(16, 128, 256, 3, 128, 140);
}

TEST_CASE("igemm conv layer3 256->512 3x3 @8, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(8, 256, 512, 3, 256, 150);
}

TEST_CASE("igemm conv layer3 res 512->512 3x3 @4, batch 512", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(4, 512, 512, 3, 512, 160);
}

// -------------------------------------------------------------------------- odd shapes (GPU)

// Partial tiles everywhere: M, K and R*R*C not multiples of any BlockM / BlockN / BlockK
// (e.g. M = 75, K = 24, R*R*C = 72), C < BlockK (several taps per K slice), R = 5, a 1x1
// image. Compared in full.
TEST_CASE("igemm conv odd shapes vs reference", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const ConvDesc shapes[] = {{3, 5, 5, 8, 24, 3},   {2, 6, 9, 24, 40, 3}, {5, 3, 3, 16, 8, 1},
                             {2, 6, 6, 16, 16, 5},  {4, 1, 1, 8, 8, 3},   {4, 7, 7, 40, 72, 3},
                             {1, 11, 13, 8, 136, 3}};
  uint64_t seed = 200;
  for (const ConvDesc& d : shapes) {
    const Problem p = make_problem(d, d.C, seed += 10);
    const auto y_ref = reference(p, 0, d.N);
    auto d_x = upload_half(p.x), d_w = upload_half(p.w);
    for (IgemmConfig config : kernels::kIgemmConfigs) {
      INFO("config " << kernels::igemm_config_info(config).name << ", shape " << desc_str(d));
      const auto y = run_igemm(p, d_x, d_w, config);
      CHECK(all_finite_half(y));
      const double e = rel_l2_error(to_float(y, 0, p.y_size()).data(), y_ref.data(), p.y_size());
      CHECK(e <= kTolOut);
    }
  }
}

// ---------------------------------------------------------------- statistics epilogue (GPU)

// conv_forward_igemm_stats: y bitwise equal to conv_forward_igemm's, and the per-group,
// per-channel sum / sum of squares equal to double-precision sums over that y.
// Tolerance: the kernel adds in fp32 along a path of at most BlockM / 4 rows per thread (<= 32),
// 4 slices per block and the blocks of a group (<= 4 here: groups of <= 256 pixels); a sum
// whose every term passes through at most n additions errs by at most n * 2^-24 * sum |terms|,
// here <= 40 * 6e-8 = 2.4e-6 of sum |y| (sum y^2 for the squares). 1e-5 is above that bound;
// a missing or doubled row gives far more.
TEST_CASE("igemm conv fused BN statistics vs CPU sums", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  struct Case {
    ConvDesc d;
    int group_images;
  };
  const Case cases[] = {
      {{3, 5, 5, 8, 24, 3}, 3},        // one group, partial row and column tiles
      {{8, 8, 8, 64, 128, 3}, 2},      // 4 ghost groups of 128 pixels
      {{8, 8, 8, 32, 64, 1}, 4},       // the prep conv's shape, 2 groups
      {{4, 16, 16, 128, 256, 3}, 1},   // 4 groups of one 16x16 image (256 pixels)
  };
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  uint64_t seed = 300;
  for (const Case& cs : cases) {
    const ConvDesc& d = cs.d;
    const Problem p = make_problem(d, d.C, seed += 10);
    const int groups = d.N / cs.group_images;
    const long group_pixels = (long)cs.group_images * d.H * d.W;
    const auto y_ref = reference(p, 0, d.N);
    auto d_x = upload_half(p.x), d_w = upload_half(p.w);
    for (IgemmConfig config : kernels::kIgemmConfigs) {
      INFO("config " << kernels::igemm_config_info(config).name << ", shape " << desc_str(d)
                     << ", group_images " << cs.group_images);
      const auto y_plain = run_igemm(p, d_x, d_w, config);
      auto d_y = poisoned<__half>(p.y_size());
      auto d_sum = poisoned<float>((size_t)groups * d.K), d_sumsq = poisoned<float>((size_t)groups * d.K);
      auto d_part = poisoned<float>(kernels::igemm_stats_scratch_bytes(d, config) / sizeof(float));
      kernels::conv_forward_igemm_stats(d_x.get(), d_w.get(), d_y.get(), d, config,
                                        {d_sum.get(), d_sumsq.get(), d_part.get(), cs.group_images}, stream);
      CUDA_CHECK(cudaStreamSynchronize(stream));
      const auto y = download(d_y);
      CHECK(bitwise_equal(y, y_plain));
      const auto yf = to_float(y, 0, p.y_size());
      CHECK(rel_l2_error(yf.data(), y_ref.data(), p.y_size()) <= kTolOut);

      const auto sum = download(d_sum), sumsq = download(d_sumsq);
      long bad = 0;
      double worst = 0.0;
      for (int g = 0; g < groups; g++)
        for (int k = 0; k < d.K; k++) {
          double s = 0.0, sa = 0.0, ss = 0.0;
          for (long q = g * group_pixels; q < (g + 1) * group_pixels; q++) {
            const double v = yf[q * d.K + k];
            s += v;
            sa += std::fabs(v);
            ss += v * v;
          }
          const double e_s = std::fabs(sum[g * d.K + k] - s) / std::max(sa, 1e-30);
          const double e_ss = std::fabs(sumsq[g * d.K + k] - ss) / std::max(ss, 1e-30);
          worst = std::max(worst, std::max(e_s, e_ss));
          if (!(e_s <= 1e-5 && e_ss <= 1e-5)) bad++;  // also catches NaN (poison left)
        }
      std::printf("igemm stats %-14s %s, %d group(s): worst rel error %.2e\n",
                  kernels::igemm_config_info(config).name, desc_str(d).c_str(), groups, worst);
      CHECK(bad == 0);
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}
