// The input gradient with the BN-backward sums fused into its epilogue
// (conv_backward_data_igemm_bn_sums, conv_backward_data_wgmma_bn_sums; kernels/conv/
// conv_epilogue.cuh) and the BN + CELU backward that finishes from those sums
// (pool_bn_celu_backward_from_sums, kernels/bn.cuh), for every tile config:
//   - dx bitwise equal to the plain input gradient of the same config (the epilogue only adds);
//   - sum_dz, sum_dzx per BN group and channel against double sums on the host over the
//     downloaded dx, dout2 and BN input, with the per-value formula of kernels/bn_math.cuh;
//   - the BN backward from these sums against pool_bn_celu_backward (which
//     tests/kernels_gpu_test.cu checks against the CPU reference), through the recompute path
//     and the argmax path: dx within fp16 rounding (rel. L2 2e-3), dbias to rel. L2 1e-4;
//   - the same bits from a second launch (deterministic);
// on a recipe-like pair of layers (layer1's BN unit, 2 ghost groups, feeding layer1_res's conv)
// and odd shapes (one group, channel counts no multiple of a tile, no pool, 1x1 filters),
// each with and without dout2; plus the launchers' precondition checks (host, no GPU needed).
//
// Tolerances. dz and xhat are computed by the same arithmetic on both sides, but for the exp:
// the device's celu_grad takes __fdividef and __expf (below 1e-5 relative, kernels/common.cuh),
// the host std::exp; the sums differ in order only. On the GPU a term passes
// through at most ~150 fp32 additions (8 rows per thread, 16 slices per block, <= 128 blocks
// per group), so |error| <= 150 * 2^-24 * sum |term| ~ 1e-5 of it; 1e-4 * sum |term| (+1e-6)
// holds with a margin, where an indexing error (a wrong row, channel or group) gives O(1).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/bn.cuh"
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload;
using gpu_test::upload_half;
using kernels::BnBackwardSums;
using kernels::ConvDesc;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

const kernels::GhostBnCeluParams kPrm{1e-5f, 0.6f, 0.3f};

// A BN + CELU (+ 2x2 max-pool) unit with conv output [N][H][W][C] (bn.s), followed by a conv
// with K filters of R x R that reads the unit's output: its input gradient is the unit's dout.
struct Case {
  const char* name;
  kernels::GhostBnCeluShape s;
  int K, R;
  ConvDesc next() const { return {s.N, s.Ho(), s.Wo(), s.C, K, R}; }
};

// The host formula of kernels/bn_math.cuh for one value.
struct HostDz {
  double dz, xhat;
};
HostDz host_dz(float d, float v, float mean, float invstd, float bias, float alpha) {
  const float xh = (v - mean) * invstd;
  const float z = xh + bias;
  const float grad = z > 0.0f ? 1.0f : std::exp(z / alpha);
  return {(double)(d * grad), (double)xh};
}

enum class Kernel { kIgemm, kWgmma };

// Runs every config of one kernel family (igemm, or wgmma on an sm_90a Hopper) on case c.
void run_case(const Case& c, bool with_dout2, uint64_t seed, Kernel family) {
  const kernels::GhostBnCeluShape& s = c.s;
  const ConvDesc d = c.next();
  INFO(c.name << ": N " << s.N << " conv out " << s.H << "x" << s.W << "x" << s.C << " P " << s.P
               << " group " << s.group << ", next conv K " << c.K << " R " << c.R
               << (with_dout2 ? ", with dout2" : ""));
  const long x_n = (long)s.N * s.H * s.W * s.C;
  const long out_n = (long)s.N * s.Ho() * s.Wo() * s.C;  // the unit's output = dgrad's dx
  const long dy_n = (long)s.N * s.Ho() * s.Wo() * c.K;
  const long w_n = (long)c.K * c.R * c.R * s.C;
  const int G = s.groups();
  const long GC = (long)G * s.C;

  // The unit's forward on a random conv output, for its pooled values and saved statistics.
  auto d_x = upload_half(round_to_half(random_vector(x_n, seed, -2.0f, 2.0f)));
  auto d_bias = upload(random_vector(s.C, seed + 1, -0.5f, 0.5f));
  auto d_pooled = poisoned<__half>(out_n), d_out = poisoned<__half>(out_n);
  DeviceBuffer<float> d_mean(GC), d_invstd(GC);
  DeviceBuffer<float> d_bn_scratch(kernels::ghost_bn_celu_scratch_bytes(s) / sizeof(float));
  DeviceBuffer<uint8_t> d_arg(s.P == 2 ? out_n : 1);
  kernels::pool_bn_celu_forward_train(d_x.get(), d_pooled.get(), d_bias.get(), nullptr, d_out.get(), d_mean.get(),
                                      d_invstd.get(), nullptr, nullptr, d_bn_scratch.get(), s, kPrm, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  const std::vector<float> x = download_half(d_x);
  // The BN input: the pooled values (P == 2) or the conv output itself.
  const std::vector<float> bn_in = s.P == 2 ? download_half(d_pooled) : x;
  const __half* d_bn_in = s.P == 2 ? d_pooled.get() : d_x.get();
  if (s.P == 2) {  // argmax by the first-maximum rule, for the argmax path
    std::vector<uint8_t> arg(out_n);
    for (long q = 0; q < out_n; q++) {
      const long ch = q % s.C, pix = q / s.C, ox = pix % s.Wo(), oy = (pix / s.Wo()) % s.Ho(),
                 n = pix / ((long)s.Wo() * s.Ho());
      int best = 0;
      float bv = 0.0f;
      for (int t = 0; t < 4; t++) {
        const float v = x[(((n * s.H) + 2 * oy + t / 2) * s.W + 2 * ox + t % 2) * s.C + ch];
        if (t == 0 || v > bv) {
          bv = v;
          best = t;
        }
      }
      arg[q] = (uint8_t)best;
    }
    CUDA_CHECK(cudaMemcpy(d_arg.get(), arg.data(), out_n, cudaMemcpyHostToDevice));
  }
  const std::vector<float> mean = download(d_mean), invstd = download(d_invstd), bias = download(d_bias);

  // The next conv's output gradient and filters, and the residual gradient term.
  auto d_dy = upload_half(round_to_half(random_vector(dy_n, seed + 2, -1.0f, 1.0f)));
  const float bound = 1.0f / std::sqrt((float)(s.C * c.R * c.R));
  auto d_w = upload_half(round_to_half(random_vector(w_n, seed + 3, -bound, bound)));
  const std::vector<float> dout2 = round_to_half(random_vector(out_n, seed + 4, -0.5f, 0.5f));
  auto d_dout2 = upload_half(dout2);
  DeviceBuffer<__half> d_wt(kernels::igemm_dgrad_scratch_bytes(d) / sizeof(__half));

  std::vector<std::pair<Kernel, int>> configs;
  if (family == Kernel::kIgemm)
    for (kernels::IgemmConfig cfg : kernels::kIgemmConfigs) configs.push_back({Kernel::kIgemm, (int)cfg});
  else
    for (kernels::WgmmaConfig cfg : kernels::kWgmmaConfigs)
      if (kernels::wgmma_config_fused_epilogues(cfg)) configs.push_back({Kernel::kWgmma, (int)cfg});
  int ran = 0;
  for (const auto& kc : configs) {
    const Kernel kernel = kc.first;
    const int cfg = kc.second;
    const kernels::IgemmConfigInfo info = kernel == Kernel::kIgemm
                                              ? kernels::igemm_config_info((kernels::IgemmConfig)cfg)
                                              : kernels::wgmma_config_info((kernels::WgmmaConfig)cfg);
    INFO("config " << info.name);
    // The group rule: each block's rows in one group.
    if (G > 1 && (long)s.group * s.Ho() * s.Wo() % info.epilogue_m != 0) continue;
    // The wgmma im2col config gathers dy through TMA, 64 of its K channels per copy.
    if (kernel == Kernel::kWgmma && !kernels::wgmma_config_takes_channels((kernels::WgmmaConfig)cfg, d.K)) continue;
    ++ran;
    DeviceBuffer<float> d_partials(kernels::dgrad_bn_sums_scratch_bytes(d, info.epilogue_m) / sizeof(float));
    auto dx_plain = poisoned<__half>(out_n), dx_fused = poisoned<__half>(out_n);
    auto sum_dz = poisoned<float>(GC), sum_dzx = poisoned<float>(GC);
    const BnBackwardSums bn{with_dout2 ? d_dout2.get() : nullptr, d_bn_in, d_bias.get(), d_mean.get(),
                            d_invstd.get(), kPrm.alpha, sum_dz.get(), sum_dzx.get(), d_partials.get(), s.group};
    auto fused = [&] {
      if (kernel == Kernel::kIgemm)
        kernels::conv_backward_data_igemm_bn_sums(d_dy.get(), d_w.get(), dx_fused.get(), d_wt.get(), d,
                                                  (kernels::IgemmConfig)cfg, bn, 0);
      else
        kernels::conv_backward_data_wgmma_bn_sums(d_dy.get(), d_w.get(), dx_fused.get(), d_wt.get(), d,
                                                  (kernels::WgmmaConfig)cfg, bn, 0);
    };
    if (kernel == Kernel::kIgemm)
      kernels::conv_backward_data_igemm(d_dy.get(), d_w.get(), dx_plain.get(), d_wt.get(), d,
                                        (kernels::IgemmConfig)cfg, 0);
    else
      kernels::conv_backward_data_wgmma(d_dy.get(), d_w.get(), dx_plain.get(), d_wt.get(), d,
                                        (kernels::WgmmaConfig)cfg, 0);
    fused();
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto plain_bits = download(dx_plain), fused_bits = download(dx_fused);
    {
      INFO("dx with the BN sums vs without: " << gpu_test::bitwise_mismatch(plain_bits, fused_bits));
      CHECK(bitwise_equal(plain_bits, fused_bits));
    }
    const std::vector<float> dout = download_half(dx_fused);
    REQUIRE(gpu_test::all_finite(dout));
    const std::vector<float> got_dz = download(sum_dz), got_dzx = download(sum_dzx);

    // Double sums on the host, with sum |term| for the tolerance.
    std::vector<double> want_dz(GC, 0.0), want_dzx(GC, 0.0), abs_dz(GC, 0.0), abs_dzx(GC, 0.0);
    const long pix_per_group = (long)s.group * s.Ho() * s.Wo();
    for (long q = 0; q < out_n; q++) {
      const long ch = q % s.C, grp = (q / s.C) / pix_per_group, gi = grp * s.C + ch;
      const float dsum = dout[q] + (with_dout2 ? dout2[q] : 0.0f);
      const HostDz h = host_dz(dsum, bn_in[q], mean[gi], invstd[gi], bias[ch], kPrm.alpha);
      want_dz[gi] += h.dz;
      want_dzx[gi] += h.dz * h.xhat;
      abs_dz[gi] += std::fabs(h.dz);
      abs_dzx[gi] += std::fabs(h.dz * h.xhat);
    }
    long bad = 0;
    std::string first;
    for (long i = 0; i < GC; i++) {
      const bool ok = std::isfinite(got_dz[i]) && std::isfinite(got_dzx[i]) &&
                      std::fabs(got_dz[i] - want_dz[i]) <= 1e-4 * abs_dz[i] + 1e-6 &&
                      std::fabs(got_dzx[i] - want_dzx[i]) <= 1e-4 * abs_dzx[i] + 1e-6;
      if (!ok && bad++ == 0)
        first = "group " + std::to_string(i / s.C) + " channel " + std::to_string(i % s.C) + ": sum_dz " +
                std::to_string(got_dz[i]) + " vs " + std::to_string(want_dz[i]) + ", sum_dzx " +
                std::to_string(got_dzx[i]) + " vs " + std::to_string(want_dzx[i]);
    }
    INFO(bad << " of " << GC << " sums off; first: " << first);
    CHECK(bad == 0);

    // The unit's backward from these sums vs computing them itself.
    const __half* d2 = with_dout2 ? d_dout2.get() : nullptr;
    auto dx_ref = poisoned<__half>(x_n);
    auto db_ref = poisoned<float>(s.C);
    kernels::pool_bn_celu_backward(dx_fused.get(), d2, d_x.get(), d_pooled.get(), d_bias.get(), d_mean.get(),
                                   d_invstd.get(), dx_ref.get(), db_ref.get(), d_bn_scratch.get(), s, kPrm, 0);
    for (const bool via_argmax : {false, true}) {
      if (via_argmax && s.P != 2) continue;
      INFO((via_argmax ? "from sums, argmax path" : "from sums, recompute path"));
      auto dx_fs = poisoned<__half>(x_n);
      auto db_fs = poisoned<float>(s.C);
      kernels::pool_bn_celu_backward_from_sums(dx_fused.get(), d2, via_argmax ? nullptr : d_x.get(), d_pooled.get(),
                                               via_argmax ? d_arg.get() : nullptr, sum_dz.get(), sum_dzx.get(),
                                               d_bias.get(), d_mean.get(), d_invstd.get(), dx_fs.get(),
                                               db_fs.get(), s, kPrm, 0);
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto want = download_half(dx_ref), got = download_half(dx_fs);
      REQUIRE(gpu_test::all_finite(got));
      CHECK(rel_l2_error(got.data(), want.data(), x_n) <= 2e-3);
      const auto dbw = download(db_ref), dbg = download(db_fs);
      CHECK(rel_l2_error(dbg.data(), dbw.data(), s.C) <= 1e-4);
    }

    // Deterministic: a second launch gives the same bits.
    fused();
    CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(bitwise_equal(download(sum_dz), got_dz));
    CHECK(bitwise_equal(download(sum_dzx), got_dzx));
    CHECK(bitwise_equal(download(dx_fused), fused_bits));
  }
  CHECK(ran > 0);
}

}  // namespace

TEST_CASE("dgrad BN-sums launchers check their preconditions (host)", "[gpu][igemm][bn_sums]") {
  auto h = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  auto f = [](uintptr_t a) { return reinterpret_cast<float*>(a); };
  const ConvDesc d{64, 16, 16, 128, 128, 3};
  const BnBackwardSums ok{nullptr, h(0x10000), f(0x20000), f(0x21000), f(0x22000), 0.3f,
                          f(0x23000), f(0x24000), f(0x25000), 32};
  auto igemm = [&](const BnBackwardSums& bn) {
    kernels::conv_backward_data_igemm_bn_sums(h(0x30000), h(0x40000), h(0x50000), h(0x60000), d,
                                              kernels::IgemmConfig::k128x128x32s4, bn, 0);
  };
  auto wgmma = [&](const BnBackwardSums& bn) {
    kernels::conv_backward_data_wgmma_bn_sums(h(0x30000), h(0x40000), h(0x50000), h(0x60000), d,
                                              kernels::WgmmaConfig::k128x128x64s4, bn, 0);
  };
  for (auto launch : {std::function<void(const BnBackwardSums&)>(igemm), std::function<void(const BnBackwardSums&)>(wgmma)}) {
    BnBackwardSums bn = ok;
    bn.bn_in = nullptr;
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.bn_in = h(0x10002);  // not 16-byte aligned
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.dout2 = h(0x10008);
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.sum_dzx = nullptr;
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.save_invstd = nullptr;
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.alpha = 0.0f;
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.group_images = 24;  // does not divide 64
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
    bn = ok;
    bn.group_images = 16;  // 16 x 16 x 16 = 4096 pixels per group: fine
    bn.sum_dz = nullptr;
    CHECK_THROWS_AS(launch(bn), std::invalid_argument);
  }
  // Several groups whose pixels are no multiple of BlockM: 1 x 5 x 5 = 25.
  BnBackwardSums one = ok;
  one.group_images = 1;
  const ConvDesc odd{4, 5, 5, 128, 128, 3};
  CHECK_THROWS_AS(kernels::conv_backward_data_igemm_bn_sums(h(0x30000), h(0x40000), h(0x50000), h(0x60000), odd,
                                                            kernels::IgemmConfig::k128x128x32s4, one, 0),
                  std::invalid_argument);
  // More groups than the partials reduction's grid takes (65535), which only an epilogue of fewer
  // rows than its block's tile can reach (the 128 x 256 cooperative tile's 64): 70000 images of
  // 8 x 8 pixels, one group each.
  CHECK_THROWS_WITH(kernels::conv_backward_data_wgmma_bn_sums(h(0x30000), h(0x40000), h(0x50000), h(0x60000),
                                                              ConvDesc{70000, 8, 8, 64, 64, 3},
                                                              kernels::WgmmaConfig::k128x256x64s4CoopIm2col, one, 0),
                    Catch::Contains("65535 groups"));
  // The BN backward from sums.
  const kernels::GhostBnCeluShape s{4, 8, 8, 16, 2, 2};
  auto from_sums = [&](const float* sum_dz, const uint8_t* arg, const __half* x) {
    kernels::pool_bn_celu_backward_from_sums(h(0x10000), nullptr, x, h(0x20000), arg, sum_dz, f(0x31000),
                                             f(0x32000), f(0x33000), f(0x34000), h(0x40000), f(0x35000), s,
                                             kPrm, 0);
  };
  const uint8_t* arg = reinterpret_cast<const uint8_t*>(0x50000);
  CHECK_THROWS_AS(from_sums(nullptr, arg, nullptr), std::invalid_argument);       // no sums
  CHECK_THROWS_AS(from_sums(f(0x30000), nullptr, nullptr), std::invalid_argument);  // neither x nor argmax
  CHECK_THROWS_AS(from_sums(f(0x30000), arg + 1, nullptr), std::invalid_argument);  // argmax alignment
}

// The recipe's layer1 unit at a reduced batch (2 ghost groups) into layer1_res's conv: tagged
// [recipe] so the sanitizer runs of tools/gpu_check.sh leave it to the odd shapes.
namespace {

const Case kLayer1{"layer1", {64, 32, 32, 128, 2, 32}, 128, 3};
// One group, pooled, channel counts no multiple of a tile, a partial last tile; no pool (the
// residual units) with 2 groups of 2 images x 8 x 8 = 128 pixels and 1x1 filters; no pool, 5x5
// filters, K below the tile.
const Case kOdd[] = {
    {"one group, pooled, C 24", {3, 10, 6, 24, 2, 3}, 40, 3},
    {"no pool, 2 groups, 1x1", {4, 8, 8, 72, 1, 2}, 136, 1},
    {"no pool, one group, 5x5", {2, 7, 9, 16, 1, 2}, 8, 5},
    {"one group, pooled, K 64 (the wgmma im2col config too)", {3, 10, 6, 16, 2, 3}, 64, 3},
};

void run_odd(Kernel family) {
  uint64_t seed = 300;
  for (const Case& c : kOdd) {
    run_case(c, false, seed += 10, family);
    run_case(c, true, seed += 10, family);
  }
}

}  // namespace


TEST_CASE("dgrad BN sums (igemm): recipe layer1 unit into layer1_res's conv, 2 ghost groups",
          "[gpu][igemm][bn_sums][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  run_case(kLayer1, false, 100, Kernel::kIgemm);
  run_case(kLayer1, true, 200, Kernel::kIgemm);
}

TEST_CASE("dgrad BN sums (igemm): odd shapes", "[gpu][igemm][bn_sums]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  run_odd(Kernel::kIgemm);
}

TEST_CASE("dgrad BN sums (wgmma): recipe layer1 unit into layer1_res's conv, 2 ghost groups",
          "[gpu][wgmma][bn_sums][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  run_case(kLayer1, false, 100, Kernel::kWgmma);
  run_case(kLayer1, true, 200, Kernel::kWgmma);
}

TEST_CASE("dgrad BN sums (wgmma): odd shapes", "[gpu][wgmma][bn_sums]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  run_odd(Kernel::kWgmma);
}
