// The BN + CELU kernels that consume the fused conv + max-pool forward's outputs
// (kernels/bn.cuh: bn_celu_forward_train_from_sums, pool_bn_celu_backward_argmax), against the
// unfused kernels they replace (pool_bn_celu_forward_train, pool_bn_celu_backward), which
// tests/kernels_gpu_test.cu checks against the CPU reference:
//   - backward through argmax: dx and dbias bitwise equal to the unfused backward, on data with
//     many exact ties inside the pooling windows (the first-maximum rule must agree);
//   - forward from sums: the same statistics (rel. 1e-5) and outputs (within fp16 rounding) as
//     the unfused forward, given per-group sums of the pooled values;
// plus the launchers' precondition checks (host, no GPU needed).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <vector>

#include "kernels/bn.cuh"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::upload;
using gpu_test::upload_half;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

// Conv output [N][H][W][C] with values on a coarse grid (multiples of 1/4 in [-2, 2]), so
// windows often hold equal maxima; pooled and argmax by the first-maximum rule (rows, then
// columns), as ref::maxpool_backward and the fused conv epilogue.
struct PoolCase {
  kernels::GhostBnCeluShape s;
  std::vector<float> x, pooled;
  std::vector<uint8_t> argmax;
};

PoolCase make_case(const kernels::GhostBnCeluShape& s, uint64_t seed) {
  PoolCase pc{s, random_vector((long)s.N * s.H * s.W * s.C, seed, -2.0f, 2.0f), {}, {}};
  for (float& v : pc.x) v = std::round(v * 4.0f) / 4.0f;
  const int Ho = s.H / 2, Wo = s.W / 2;
  pc.pooled.resize((size_t)s.N * Ho * Wo * s.C);
  pc.argmax.resize(pc.pooled.size());
  for (int n = 0; n < s.N; n++)
    for (int oy = 0; oy < Ho; oy++)
      for (int ox = 0; ox < Wo; ox++)
        for (int c = 0; c < s.C; c++) {
          int best = 0;
          float bv = 0.0f;
          for (int t = 0; t < 4; t++) {
            const float v = pc.x[(((size_t)n * s.H + 2 * oy + t / 2) * s.W + 2 * ox + t % 2) * s.C + c];
            if (t == 0 || v > bv) {
              bv = v;
              best = t;
            }
          }
          const size_t q = (((size_t)n * Ho + oy) * Wo + ox) * s.C + c;
          pc.pooled[q] = bv;
          pc.argmax[q] = (uint8_t)best;
        }
  return pc;
}

const kernels::GhostBnCeluParams kPrm{1e-12f, 0.6f, 0.3f};

}  // namespace

TEST_CASE("fused-pool BN launchers check their preconditions (host)", "[gpu][bn_fused]") {
  auto h = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  auto f = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  const uint8_t* arg = reinterpret_cast<const uint8_t*>(0x50000);
  const kernels::GhostBnCeluShape ok{4, 8, 8, 16, 2, 2};
  auto bwd = [&](const kernels::GhostBnCeluShape& s, const uint8_t* a) {
    kernels::pool_bn_celu_backward_argmax(h(0x10000), nullptr, h(0x20000), a, f(0x30000), f(0x31000),
                                          f(0x32000), h(0x40000), f(0x33000), f(0x60000), s, kPrm, 0);
  };
  CHECK_THROWS_AS(bwd(kernels::GhostBnCeluShape{4, 8, 8, 16, 1, 2}, arg), std::invalid_argument);  // P 1
  CHECK_THROWS_AS(bwd(ok, nullptr), std::invalid_argument);
  CHECK_THROWS_AS(bwd(ok, arg + 1), std::invalid_argument);                                        // align
  CHECK_THROWS_AS(bwd(kernels::GhostBnCeluShape{4, 8, 8, 16, 2, 3}, arg), std::invalid_argument);  // 3 !| 4
  auto fwd = [&](const float* sum) {
    kernels::bn_celu_forward_train_from_sums(h(0x10000), sum, f(0x31000), f(0x32000), nullptr, h(0x40000),
                                             f(0x33000), f(0x34000), nullptr, nullptr, ok, kPrm, 0);
  };
  CHECK_THROWS_AS(fwd(nullptr), std::invalid_argument);
}

TEST_CASE("pool_bn_celu_backward_argmax equals pool_bn_celu_backward bitwise", "[gpu][bn_fused]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  // The recipe's pooled layers at a reduced batch (2 ghost groups), and an odd small shape.
  const kernels::GhostBnCeluShape shapes[] = {{64, 32, 32, 128, 2, 32}, {64, 16, 16, 256, 2, 32},
                                              {64, 8, 8, 512, 2, 32},   {6, 6, 10, 24, 2, 3}};
  uint64_t seed = 40;
  for (const auto& s : shapes) {
    INFO("N " << s.N << " H " << s.H << " W " << s.W << " C " << s.C << " group " << s.group);
    const PoolCase pc = make_case(s, seed += 10);
    const long pooled_n = (long)pc.pooled.size(), x_n = (long)pc.x.size();
    const long GC = (long)s.groups() * s.C;
    auto d_x = upload_half(pc.x), d_pooled = upload_half(pc.pooled);
    auto d_arg = upload(pc.argmax);
    auto d_bias = upload(random_vector(s.C, seed + 1, -0.5f, 0.5f));
    auto d_dout = upload_half(random_vector(pooled_n, seed + 2));
    auto d_dout2 = upload_half(random_vector(pooled_n, seed + 3));
    DeviceBuffer<float> d_mean(GC), d_invstd(GC);
    DeviceBuffer<float> d_scratch(kernels::ghost_bn_celu_scratch_bytes(s) / sizeof(float));
    // Saved statistics from the unfused forward (its pooled output must equal ours).
    auto d_p = poisoned<__half>(pooled_n), d_out = poisoned<__half>(pooled_n);
    kernels::pool_bn_celu_forward_train(d_x.get(), d_p.get(), d_bias.get(), nullptr, d_out.get(), d_mean.get(),
                                        d_invstd.get(), nullptr, nullptr, d_scratch.get(), s, kPrm, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(download_half(d_p) == pc.pooled);

    for (const bool vectorized : {true, false})
    for (bool with_dout2 : {false, true}) {
      INFO("dout2 " << with_dout2 << (vectorized ? ", 8-channel kernels" : ", 2-channel kernels"));
      kernels::GhostBnCeluParams prm = kPrm;
      prm.vectorized = vectorized;
      auto dx_a = poisoned<__half>(x_n), dx_b = poisoned<__half>(x_n);
      auto db_a = poisoned<float>(s.C), db_b = poisoned<float>(s.C);
      const __half* dout2 = with_dout2 ? d_dout2.get() : nullptr;
      kernels::pool_bn_celu_backward(d_dout.get(), dout2, d_x.get(), d_pooled.get(), d_bias.get(), d_mean.get(),
                                     d_invstd.get(), dx_a.get(), db_a.get(), d_scratch.get(), s, prm, 0);
      kernels::pool_bn_celu_backward_argmax(d_dout.get(), dout2, d_pooled.get(), d_arg.get(), d_bias.get(),
                                            d_mean.get(), d_invstd.get(), dx_b.get(), db_b.get(), d_scratch.get(),
                                            s, prm, 0);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto a = download(dx_a), b = download(dx_b);
      CHECK(gpu_test::all_finite(download_half(dx_b)));
      INFO("dx: " << gpu_test::bitwise_mismatch(a, b));
      CHECK(bitwise_equal(a, b));
      const auto dba = download(db_a), dbb = download(db_b);
      INFO("dbias: " << gpu_test::bitwise_mismatch(dba, dbb));
      CHECK(bitwise_equal(dba, dbb));
    }
  }
}

TEST_CASE("bn_celu_forward_train_from_sums matches pool_bn_celu_forward_train", "[gpu][bn_fused]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const kernels::GhostBnCeluShape shapes[] = {{64, 32, 32, 128, 2, 32}, {64, 8, 8, 512, 2, 32}, {6, 6, 10, 24, 2, 3}};
  uint64_t seed = 80;
  for (const auto& s : shapes) {
    INFO("N " << s.N << " H " << s.H << " W " << s.W << " C " << s.C << " group " << s.group);
    PoolCase pc = make_case(s, seed += 10);
    // Shift the values so the mean is not zero: the plain sums must cope with an offset.
    for (float& v : pc.x) v += 1.5f;
    for (float& v : pc.pooled) v += 1.5f;
    const long pooled_n = (long)pc.pooled.size();
    const int G = s.groups(), Ho = s.H / 2, Wo = s.W / 2;
    const long GC = (long)G * s.C;
    // Per-group sums of the pooled values, as the fused conv epilogue provides them.
    std::vector<double> sd(GC, 0.0), ssd(GC, 0.0);
    for (long q = 0; q < pooled_n; q++) {
      const long img = q / ((long)Ho * Wo * s.C);
      const long i = (img / s.group) * s.C + q % s.C;
      sd[i] += pc.pooled[q];
      ssd[i] += (double)pc.pooled[q] * pc.pooled[q];
    }
    std::vector<float> sum(sd.begin(), sd.end()), sumsq(ssd.begin(), ssd.end());
    auto d_x = upload_half(pc.x), d_pooled = upload_half(pc.pooled);
    auto d_sum = upload(sum), d_sumsq = upload(sumsq);
    auto d_bias = upload(random_vector(s.C, seed + 1, -0.5f, 0.5f));
    auto d_res = upload_half(random_vector(pooled_n, seed + 2));
    const auto rm0 = random_vector(GC, seed + 3), rv0 = random_vector(GC, seed + 4, 0.5f, 2.0f);
    auto rm_a = upload(rm0), rv_a = upload(rv0), rm_b = upload(rm0), rv_b = upload(rv0);
    DeviceBuffer<float> d_scratch(kernels::ghost_bn_celu_scratch_bytes(s) / sizeof(float));
    auto mean_a = poisoned<float>(GC), inv_a = poisoned<float>(GC), mean_b = poisoned<float>(GC),
         inv_b = poisoned<float>(GC);
    auto out_a = poisoned<__half>(pooled_n), out_b = poisoned<__half>(pooled_n), p_a = poisoned<__half>(pooled_n);
    kernels::pool_bn_celu_forward_train(d_x.get(), p_a.get(), d_bias.get(), d_res.get(), out_a.get(), mean_a.get(),
                                        inv_a.get(), rm_a.get(), rv_a.get(), d_scratch.get(), s, kPrm, 0);
    kernels::bn_celu_forward_train_from_sums(d_pooled.get(), d_sum.get(), d_sumsq.get(), d_bias.get(), d_res.get(),
                                             out_b.get(), mean_b.get(), inv_b.get(), rm_b.get(), rv_b.get(), s,
                                             kPrm, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    // Statistics: the two differ only in the order and precision of the sums (fp32 partials
    // vs host double rounded to fp32): ~1e-7 relative; 1e-5 leaves room.
    auto rel_close = [](const std::vector<float>& a, const std::vector<float>& b, double tol) {
      for (size_t i = 0; i < a.size(); i++)
        if (!(std::fabs(a[i] - b[i]) <= tol * std::max(1.0f, std::fabs(b[i])))) return false;
      return true;
    };
    CHECK(rel_close(download(mean_b), download(mean_a), 1e-5));
    CHECK(rel_close(download(inv_b), download(inv_a), 1e-5));
    CHECK(rel_close(download(rm_b), download(rm_a), 1e-5));
    CHECK(rel_close(download(rv_b), download(rv_a), 1e-5));
    // Outputs: fp16, so a statistics difference of 1e-5 can move a value by one rounding step.
    const auto oa = download_half(out_a), ob = download_half(out_b);
    CHECK(gpu_test::all_finite(ob));
    const double e = rel_l2_error(ob.data(), oa.data(), pooled_n);
    std::printf("bn from sums N%d H%d C%d: out rel_l2 %.2e\n", s.N, s.H, s.C, e);
    CHECK(e <= 1e-3);
  }
}
