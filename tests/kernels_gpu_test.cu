// GPU kernels vs the CPU reference (kernels/ref) at the recipe's real shapes, batch 512.
// Inputs are rounded to fp16 first so both sides see the same numbers; the remaining
// differences are fp16 rounding of outputs and fp32-vs-double accumulation (tolerances below).
// Every output buffer (and scratch) is poisoned with NaN bytes before the launch, so an output
// written only in part fails; the reductions are also rerun and must give the same bits.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "kernels/augment.cuh"
#include "kernels/bn.cuh"
#include "kernels/common.cuh"
#include "kernels/head.cuh"
#include "kernels/optim.cuh"
#include "kernels/ref/augment.h"
#include "kernels/ref/conv.h"
#include "kernels/ref/elementwise.h"
#include "kernels/ref/ghost_bn.h"
#include "kernels/ref/linear.h"
#include "kernels/ref/loss.h"
#include "kernels/ref/optim.h"
#include "kernels/ref/pool.h"
#include "kernels/ref/whiten.h"
#include "kernels/whiten.cuh"
#include "net/layout.h"
#include "net/recipe.h"
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
using testing_support::max_abs_diff;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

// Tolerances (relative L2 unless stated).
// fp16 outputs: rounding to fp16 costs at most 2^-11 ~ 4.9e-4 relative per value (~2.8e-4
// rms); 2e-3 leaves room for the fp32 (GPU) vs double (CPU) arithmetic before the rounding.
constexpr double kTolHalfOut = 2e-3;
// fp16 outputs of the BN backward: dx = invstd * (dz - mean(dz) - xhat * mean(dz xhat)) loses a
// little to the subtraction before the fp16 rounding.
constexpr double kTolHalfGrad = 3e-3;
// fp32 results of reductions (fp32 sums on the GPU, double on the CPU) over up to 10^5 terms.
constexpr double kTolF32Sum = 1e-5;
// fp32 results of reductions whose inputs are themselves recomputed in fp32 (dbias sums dz,
// and dz depends on the fp32 statistics): 1e-4.
constexpr double kTolF32Derived = 1e-4;
// Elementwise fp32 updates (same formula; the GPU may fuse a multiply-add): a few ulp.
constexpr double kTolF32Elementwise = 1e-5;

constexpr int kBatch = 512;
constexpr int kGroup = 32;

std::vector<uint8_t> random_bytes(long n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = (uint8_t)(gen() & 0xff);
  return v;
}

}  // namespace

// ----------------------------------------------------------------------------------- augment

TEST_CASE("prepare_dataset matches normalize_cifar + reflect_pad", "[gpu][augment]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int n = 1000, pad = 4, S = 32, Sp = S + 2 * pad;
  const net::Recipe r;
  const auto planes = random_bytes((long)n * 3 * S * S, 11);
  kernels::Normalization norm;
  for (int c = 0; c < 3; c++) {
    norm.mean[c] = r.mean[c];
    norm.std_[c] = r.std_[c];
  }
  auto d_planes = upload(planes);
  auto d_out = poisoned<__half>((size_t)n * Sp * Sp * 3);
  kernels::prepare_dataset(d_planes.get(), n, pad, norm, d_out.get(), 0);
  const auto got = download_half(d_out);
  REQUIRE(gpu_test::all_finite(got));

  std::vector<float> normed((size_t)n * S * S * 3), padded(d_out.size());
  ref::normalize_cifar(planes.data(), n, r.mean, r.std_, normed.data());
  ref::reflect_pad(normed.data(), padded.data(), n, S, S, 3, pad);
  const auto want = round_to_half(padded);
  // Same fp32 expression on both sides, so the values should be identical; one fp16 ulp at
  // |v| < 4 (2^-9) is allowed in case a compiler evaluates it differently.
  REQUIRE(max_abs_diff(got.data(), want.data(), (long)want.size()) <= 2e-3);
}

TEST_CASE("crop_flip_batch matches ref::crop_flip", "[gpu][augment]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int n = 1000, pad = 4, S = 32, Sp = S + 2 * pad;
  const auto padded = round_to_half(random_vector((long)n * Sp * Sp * 3, 12));
  std::mt19937_64 gen(13);
  std::vector<int> index(kBatch);
  for (auto& i : index) i = (int)(gen() % n);
  std::vector<kernels::CropFlipParams> params(n);
  for (auto& p : params) {
    p.dy = (int16_t)(gen() % (2 * pad + 1));
    p.dx = (int16_t)(gen() % (2 * pad + 1));
    p.flip = (int16_t)(gen() & 1);
    p.unused = 0;
  }
  auto d_padded = upload_half(padded);
  auto d_index = upload(index);
  auto d_params = upload(params);
  auto d_out = poisoned<__half>((size_t)kBatch * S * S * 3);
  kernels::crop_flip_batch(d_padded.get(), Sp, Sp, d_index.get(), d_params.get(), kBatch,
                           d_out.get(), 0);
  const auto got = download_half(d_out);
  REQUIRE(gpu_test::all_finite(got));

  // The GPU takes the parameters of the source image (params[index[b]]), the reference those
  // of the batch slot (params[b]).
  std::vector<ref::CropFlip> slot(kBatch);
  for (int b = 0; b < kBatch; b++) {
    const auto& p = params[index[b]];
    slot[b] = ref::CropFlip{p.dy, p.dx, p.flip};
  }
  std::vector<float> want(d_out.size());
  ref::crop_flip(padded.data(), Sp, Sp, 3, index.data(), slot.data(), kBatch, S, want.data());
  // A pure copy: exact.
  REQUIRE(max_abs_diff(got.data(), want.data(), (long)want.size()) == 0.0);
}

TEST_CASE("make_epoch_params: permutation, offsets in range, fair flips", "[gpu][augment]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int n = 50000, pad = 4;
  size_t temp_bytes = 0;
  kernels::make_epoch_params(1, 0, n, pad, nullptr, nullptr, nullptr, &temp_bytes, 0);
  REQUIRE(temp_bytes > 0);
  DeviceBuffer<char> d_temp(temp_bytes);
  // Poisoned: -1 entries would fail the permutation and range checks below.
  auto d_perm = poisoned<int>(n);
  auto d_params = poisoned<kernels::CropFlipParams>(n);

  auto draw = [&](uint64_t seed, uint64_t epoch, std::vector<int>& perm,
                  std::vector<kernels::CropFlipParams>& params) {
    size_t bytes = temp_bytes;
    kernels::make_epoch_params(seed, epoch, n, pad, d_perm.get(), d_params.get(), d_temp.get(),
                               &bytes, 0);
    perm = download(d_perm);
    params = download(d_params);
  };
  std::vector<int> perm, perm_again, perm_next;
  std::vector<kernels::CropFlipParams> params, params_again, params_next;
  draw(1234, 3, perm, params);
  draw(1234, 3, perm_again, params_again);
  draw(1234, 4, perm_next, params_next);

  std::vector<int> sorted = perm;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  REQUIRE(sorted == iota);
  // Deterministic for (seed, epoch), different for the next epoch.
  REQUIRE(perm == perm_again);
  REQUIRE(perm != perm_next);
  // A uniform permutation has 1 fixed point on average; 20 would be a broken shuffle.
  int fixed = 0;
  for (int i = 0; i < n; i++) fixed += perm[i] == i;
  REQUIRE(fixed < 20);

  std::vector<long> dy_count(2 * pad + 1, 0), dx_count(2 * pad + 1, 0);
  long flips = 0, same_as_next = 0, out_of_range = 0, not_repeated = 0;
  for (int i = 0; i < n; i++) {
    const auto& p = params[i];
    if (p.dy < 0 || p.dy > 2 * pad || p.dx < 0 || p.dx > 2 * pad || (p.flip != 0 && p.flip != 1)) {
      out_of_range++;
      continue;
    }
    not_repeated += p.dy != params_again[i].dy || p.dx != params_again[i].dx ||
                    p.flip != params_again[i].flip;
    dy_count[p.dy]++;
    dx_count[p.dx]++;
    flips += p.flip;
    same_as_next += p.dy == params_next[i].dy && p.dx == params_next[i].dx &&
                    p.flip == params_next[i].flip;
  }
  REQUIRE(out_of_range == 0);
  REQUIRE(not_repeated == 0);
  // Flips: binomial(50000, 1/2) has sd 0.0022 in the fraction; 0.01 is 4.5 sd.
  REQUIRE(std::fabs((double)flips / n - 0.5) < 0.01);
  // Each of the 9 offsets has p = 1/9 (5556 expected, sd 70): within 400 is 5.7 sd.
  for (int k = 0; k <= 2 * pad; k++) {
    REQUIRE(std::fabs((double)dy_count[k] - n / 9.0) < 400);
    REQUIRE(std::fabs((double)dx_count[k] - n / 9.0) < 400);
  }
  // Independent epochs agree on all three values with p = 1/162: ~309 expected, not most.
  REQUIRE(same_as_next < 1000);
}

// ------------------------------------------------------------------------------------ whiten

TEST_CASE("patch_covariance matches ref::patch_covariance (10,000 images)", "[gpu][whiten]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int n = 10000, S = 32;
  // Normalised-looking pixels with a per-channel offset, as real data has.
  auto x = random_vector((long)n * S * S * 3, 21, -2.0f, 2.0f);
  for (size_t i = 0; i < x.size(); i++) x[i] += 0.2f * (float)(i % 3) - 0.2f;
  x = round_to_half(x);
  auto d_x = upload_half(x);
  auto d_cov = poisoned<float>(27 * 27);
  auto d_scratch = poisoned<char>(kernels::patch_covariance_scratch_bytes(n));
  kernels::patch_covariance(d_x.get(), n, d_cov.get(), d_scratch.get(), 0);
  const auto got = download(d_cov);
  REQUIRE(gpu_test::all_finite(got));
  // Fixed-order sums: a second run gives the same bits.
  d_cov.poison();
  kernels::patch_covariance(d_x.get(), n, d_cov.get(), d_scratch.get(), 0);
  REQUIRE(bitwise_equal(download(d_cov), got));

  std::vector<double> cov_d(27 * 27);
  ref::patch_covariance(x.data(), n, S, S, 3, 3, cov_d.data());
  std::vector<float> want(cov_d.begin(), cov_d.end());
  // Products of fp16 values are exact in fp32 and every sum is double: only the final fp32
  // rounding (~6e-8 relative) remains.
  REQUIRE(rel_l2_error(got.data(), want.data(), (long)want.size()) < kTolF32Sum);
}

TEST_CASE("whiten_conv_forward checks its preconditions (host)", "[gpu][whiten]") {
  // Checked before any launch, so no device is needed; the pointers are never dereferenced.
  const auto* x = reinterpret_cast<const __half*>(uintptr_t{256});
  const auto* w = reinterpret_cast<const float*>(uintptr_t{512});
  CHECK_THROWS_AS(kernels::whiten_conv_forward(x, w, reinterpret_cast<__half*>(uintptr_t{1032}), 2,
                                               false, 0),
                  std::invalid_argument);  // y not 16-byte aligned (16-byte stores)
  CHECK_THROWS_AS(kernels::whiten_conv_forward(x, w, reinterpret_cast<__half*>(uintptr_t{1024}), -1,
                                               false, 0),
                  std::invalid_argument);
  // B == 0 is a no-op, not an error.
  CHECK_NOTHROW(kernels::whiten_conv_forward(x, w, reinterpret_cast<__half*>(uintptr_t{1032}), 0,
                                             false, 0));
}

TEST_CASE("whiten_conv_forward matches ref::conv_forward (and with mirror)", "[gpu][whiten]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int S = 32, D = 27, Cp = kernels::kWhitenChannelsPadded;
  const auto x = round_to_half(random_vector((long)kBatch * S * S * 3, 31, -2.0f, 2.0f));
  const auto w = random_vector((long)D * 3 * 3 * 3, 32, -0.5f, 0.5f);
  auto d_x = upload_half(x);
  auto d_w = upload(w);
  DeviceBuffer<__half> d_y((size_t)kBatch * S * S * Cp);
  const ref::ConvShape cs{kBatch, S, S, 3, D, 3};

  for (int mirror = 0; mirror <= 1; mirror++) {
    d_y.poison();
    kernels::whiten_conv_forward(d_x.get(), d_w.get(), d_y.get(), kBatch, mirror != 0, 0);
    const auto y = download_half(d_y);
    REQUIRE(gpu_test::all_finite(y));  // all 32 channels written, padding included
    std::vector<float> src = x;
    if (mirror) ref::flip_horizontal(x.data(), src.data(), kBatch, S, S, 3);
    std::vector<float> want(cs.y_size());
    ref::conv_forward(src.data(), w.data(), want.data(), cs);
    // Channels 0..26 against the reference, 27..31 must be zero.
    std::vector<float> got27(cs.y_size());
    double pad_abs = 0.0;
    for (long p = 0; p < (long)kBatch * S * S; p++) {
      for (int k = 0; k < D; k++) got27[p * D + k] = y[p * Cp + k];
      for (int k = D; k < Cp; k++) pad_abs += std::fabs(y[p * Cp + k]);
    }
    INFO("mirror " << mirror);
    REQUIRE(rel_l2_error(got27.data(), want.data(), (long)want.size()) < kTolHalfOut);
    REQUIRE(pad_abs == 0.0);
  }
}

// ----------------------------------------------------------------- pool + ghost BN + CELU

namespace {

// One BN layer: conv output [N][H][W][C] -> pool P -> ghost BN (groups of `group` images) ->
// CELU (+ residual), forward (train and eval) and backward, against the composed references,
// for both kernel variants (GhostBnCeluParams::vectorized: the 8-channel kernels where the
// shape allows, and the 2-channel ones). The references are computed once.
void check_pool_bn_celu(int N, int group, int H, int W, int C, int P, bool with_residual,
                        bool with_dout2, uint64_t seed) {
  const int G = N / group, Ho = H / P, Wo = W / P;
  const long nx = (long)N * H * W * C, np = (long)N * Ho * Wo * C;
  const net::Recipe r;
  const kernels::GhostBnCeluShape s{N, H, W, C, P, group};
  INFO("shape " << N << "x" << H << "x" << W << "x" << C << " P=" << P << " group " << group
                << " residual " << with_residual << " dout2 " << with_dout2);

  // Conv-output-like inputs with per-channel offsets and scales (so the statistics differ per
  // channel and the mean is not small compared to the spread).
  auto x = random_vector(nx, seed, -1.0f, 1.0f);
  for (long i = 0; i < nx; i++) {
    const int c = (int)(i % C);
    x[i] = x[i] * (0.5f + 0.25f * (float)(c % 4)) + 0.3f * (float)(c % 5 - 2);
  }
  x = round_to_half(x);
  const auto bias = random_vector(C, seed + 1, -0.5f, 0.5f);
  const auto residual =
      with_residual ? round_to_half(random_vector(np, seed + 2)) : std::vector<float>();
  const auto rm0 = random_vector((long)G * C, seed + 3, -0.1f, 0.1f);
  const auto rv0 = random_vector((long)G * C, seed + 4, 0.5f, 1.5f);
  const auto dout = round_to_half(random_vector(np, seed + 5));
  const auto dout2 = with_dout2 ? round_to_half(random_vector(np, seed + 6)) : std::vector<float>();
  const auto mean_c = random_vector(C, seed + 7, -0.3f, 0.3f);
  const auto var_c = random_vector(C, seed + 8, 0.3f, 2.0f);

  // Reference forward.
  std::vector<float> pooled_ref;
  if (P > 1) {
    pooled_ref.resize(np);
    ref::maxpool_forward(x.data(), pooled_ref.data(), N, H, W, C, P);
  } else {
    pooled_ref = x;
  }
  std::vector<float> z(np), mean_ref((size_t)G * C), invstd_ref((size_t)G * C);
  std::vector<float> rm_ref = rm0, rv_ref = rv0;
  const ref::GhostBNShape bs{N, Ho * Wo, C, group};
  ref::ghost_bn_forward_train(pooled_ref.data(), bias.data(), z.data(), mean_ref.data(),
                              invstd_ref.data(), rm_ref.data(), rv_ref.data(), bs, r.bn_eps,
                              r.bn_momentum);
  std::vector<float> out_ref(np);
  ref::celu_forward(z.data(), out_ref.data(), np, r.celu_alpha);
  if (with_residual) ref::add(out_ref.data(), residual.data(), out_ref.data(), np);

  // Reference backward (from the reference's statistics; the GPU uses its own saved ones).
  std::vector<float> dA = dout;
  if (with_dout2) ref::add(dA.data(), dout2.data(), dA.data(), np);
  std::vector<float> dz(np), dp(np), dbias_ref(C);
  ref::celu_backward(z.data(), dA.data(), dz.data(), np, r.celu_alpha);
  ref::ghost_bn_backward(dz.data(), pooled_ref.data(), mean_ref.data(), invstd_ref.data(),
                         dp.data(), dbias_ref.data(), bs);
  std::vector<float> dx_ref;
  if (P > 1) {
    dx_ref.resize(nx);
    ref::maxpool_backward(x.data(), dp.data(), dx_ref.data(), N, H, W, C, P);
  } else {
    dx_ref = dp;
  }

  // Reference evaluation with fixed statistics [C].
  std::vector<float> ze(np), eval_ref(np);
  ref::ghost_bn_forward_eval(pooled_ref.data(), bias.data(), mean_c.data(), var_c.data(),
                             ze.data(), N, Ho * Wo, C, r.bn_eps);
  ref::celu_forward(ze.data(), eval_ref.data(), np, r.celu_alpha);
  if (with_residual) ref::add(eval_ref.data(), residual.data(), eval_ref.data(), np);

  auto d_x = upload_half(x);
  auto d_bias = upload(bias);
  DeviceBuffer<__half> d_res;
  if (with_residual) d_res = upload_half(residual);
  DeviceBuffer<__half> d_dout = upload_half(dout), d_dout2;
  if (with_dout2) d_dout2 = upload_half(dout2);
  auto d_mean_c = upload(mean_c);
  auto d_var_c = upload(var_c);

  for (const bool vectorized : {true, false}) {
    INFO((vectorized ? "8-channel kernels (where the shape allows)" : "2-channel kernels"));
    kernels::GhostBnCeluParams prm{r.bn_eps, r.bn_momentum, r.celu_alpha};
    prm.vectorized = vectorized;
    auto d_pooled = poisoned<__half>(P > 1 ? np : 0);
    auto d_out = poisoned<__half>(np);
    auto d_dx = poisoned<__half>(nx);
    auto d_mean = poisoned<float>((size_t)G * C);
    auto d_invstd = poisoned<float>((size_t)G * C);
    auto d_dbias = poisoned<float>(C);
    auto d_rm = upload(rm0);
    auto d_rv = upload(rv0);
    // The scratch too: the kernels must write every partial-sum slot they read.
    auto d_scratch = poisoned<float>(kernels::ghost_bn_celu_scratch_bytes(s) / sizeof(float));

    kernels::pool_bn_celu_forward_train(d_x.get(), P > 1 ? d_pooled.get() : nullptr, d_bias.get(),
                                        with_residual ? d_res.get() : nullptr, d_out.get(),
                                        d_mean.get(), d_invstd.get(), d_rm.get(), d_rv.get(),
                                        d_scratch.get(), s, prm, 0);
    if (P > 1) {
      const auto pooled = download_half(d_pooled);
      REQUIRE(max_abs_diff(pooled.data(), pooled_ref.data(), np) == 0.0);  // max is exact
    }
    {
      const auto out = download_half(d_out);
      const auto mean = download(d_mean), invstd = download(d_invstd);
      const auto rm = download(d_rm), rv = download(d_rv);
      REQUIRE(gpu_test::all_finite(out));
      REQUIRE(gpu_test::all_finite(mean));
      REQUIRE(gpu_test::all_finite(invstd));
      REQUIRE(gpu_test::all_finite(rm));
      REQUIRE(gpu_test::all_finite(rv));
      REQUIRE(rel_l2_error(mean.data(), mean_ref.data(), (long)mean.size()) < kTolF32Sum);
      REQUIRE(rel_l2_error(invstd.data(), invstd_ref.data(), (long)invstd.size()) < kTolF32Sum);
      REQUIRE(rel_l2_error(rm.data(), rm_ref.data(), (long)rm.size()) < kTolF32Sum);
      REQUIRE(rel_l2_error(rv.data(), rv_ref.data(), (long)rv.size()) < kTolF32Sum);
      REQUIRE(rel_l2_error(out.data(), out_ref.data(), np) < kTolHalfOut);

      // Determinism: the same launch again (running statistics left alone) gives the same bits.
      auto d_out2 = poisoned<__half>(np);
      auto d_mean2 = poisoned<float>((size_t)G * C);
      auto d_invstd2 = poisoned<float>((size_t)G * C);
      d_scratch.poison();
      kernels::pool_bn_celu_forward_train(d_x.get(), P > 1 ? d_pooled.get() : nullptr,
                                          d_bias.get(), with_residual ? d_res.get() : nullptr,
                                          d_out2.get(), d_mean2.get(), d_invstd2.get(), nullptr,
                                          nullptr, d_scratch.get(), s, prm, 0);
      REQUIRE(bitwise_equal(download(d_mean2), mean));
      REQUIRE(bitwise_equal(download(d_invstd2), invstd));
      REQUIRE(bitwise_equal(download_half(d_out2), out));
    }

    // Backward (from the GPU's own saved statistics, as in training).
    kernels::pool_bn_celu_backward(d_dout.get(), with_dout2 ? d_dout2.get() : nullptr, d_x.get(),
                                   P > 1 ? d_pooled.get() : nullptr, d_bias.get(), d_mean.get(),
                                   d_invstd.get(), d_dx.get(), d_dbias.get(), d_scratch.get(), s,
                                   prm, 0);
    {
      const auto dx = download_half(d_dx);
      const auto dbias = download(d_dbias);
      REQUIRE(gpu_test::all_finite(dx));  // zeros where the pool did not pick: every value written
      REQUIRE(gpu_test::all_finite(dbias));
      REQUIRE(rel_l2_error(dx.data(), dx_ref.data(), nx) < kTolHalfGrad);
      REQUIRE(rel_l2_error(dbias.data(), dbias_ref.data(), C) < kTolF32Derived);

      // Determinism: the same backward again gives the same bits.
      auto d_dx2 = poisoned<__half>(nx);
      auto d_dbias2 = poisoned<float>(C);
      d_scratch.poison();
      kernels::pool_bn_celu_backward(d_dout.get(), with_dout2 ? d_dout2.get() : nullptr,
                                     d_x.get(), P > 1 ? d_pooled.get() : nullptr, d_bias.get(),
                                     d_mean.get(), d_invstd.get(), d_dx2.get(), d_dbias2.get(),
                                     d_scratch.get(), s, prm, 0);
      REQUIRE(bitwise_equal(download_half(d_dx2), dx));
      REQUIRE(bitwise_equal(download(d_dbias2), dbias));
    }

    // Evaluation with fixed statistics [C] (pooled_scratch receives the pooled input).
    auto d_pool_scratch = poisoned<__half>(P > 1 ? np : 0);
    d_out.poison();
    kernels::pool_bn_celu_forward_eval(d_x.get(), P > 1 ? d_pool_scratch.get() : nullptr,
                                       d_bias.get(), d_mean_c.get(), d_var_c.get(),
                                       with_residual ? d_res.get() : nullptr, d_out.get(), s, prm,
                                       0);
    const auto out_eval = download_half(d_out);
    REQUIRE(gpu_test::all_finite(out_eval));
    REQUIRE(rel_l2_error(out_eval.data(), eval_ref.data(), np) < kTolHalfOut);
    if (P > 1) {
      const auto ps = download_half(d_pool_scratch);
      REQUIRE(max_abs_diff(ps.data(), pooled_ref.data(), np) == 0.0);
    }
  }
}

}  // namespace

TEST_CASE("pool_bn_celu prep: 32x32x64, no pool", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 32, 32, 64, 1, false, false, 100);
}

TEST_CASE("pool_bn_celu layer1: 32x32x128, pool 2, with dout2", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 32, 32, 128, 2, false, true, 200);
}

TEST_CASE("pool_bn_celu layer1 res1: 16x16x128, no pool", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 16, 16, 128, 1, false, false, 300);
}

TEST_CASE("pool_bn_celu layer1 res2: 16x16x128, residual", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 16, 16, 128, 1, true, false, 400);
}

TEST_CASE("pool_bn_celu layer2: 16x16x256, pool 2", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 16, 16, 256, 2, false, false, 500);
}

TEST_CASE("pool_bn_celu layer3: 8x8x512, pool 2, with dout2", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 8, 8, 512, 2, false, true, 600);
}

TEST_CASE("pool_bn_celu layer3 res2: 4x4x512, residual and dout2", "[gpu][bn][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(kBatch, kGroup, 4, 4, 512, 1, true, true, 700);
}

// Shapes off the recipe: channel counts whose 8-channel vectors do not divide the block
// (C = 24, 40: idle threads), C not a multiple of 8 (C = 6: the 2-channel kernels serve both
// variants), few images, small groups, H != W.
TEST_CASE("pool_bn_celu odd shapes", "[gpu][bn]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_bn_celu(6, 3, 6, 4, 24, 2, false, true, 800);
  check_pool_bn_celu(4, 2, 5, 7, 40, 1, true, false, 900);
  check_pool_bn_celu(4, 4, 6, 6, 6, 2, true, true, 1000);
  check_pool_bn_celu(4, 2, 4, 2, 8, 2, false, false, 1100);
}

namespace {

// The CELU inputs of the accuracy checks below: x = y * alpha for y on a fine grid over
// [-40, 0] (denser near 0 and around the series limit), plus 0 and a few positive values.
std::vector<float> celu_test_inputs(float alpha) {
  std::vector<float> x;
  for (int i = 0; i <= 400000; i++) x.push_back(-40.0f * (float)i / 400000.0f * alpha);
  for (int i = 1; i <= 20000; i++) x.push_back(-1e-7f * (float)i * alpha);  // down to -2e-3
  for (int i = -2000; i <= 2000; i++) x.push_back((-kernels::kCeluSeriesLimit + 1e-6f * (float)i) * alpha);
  for (float v : {0.0f, 1e-6f, 0.5f, 3.0f}) x.push_back(v);
  return x;
}

// Largest relative error of got[i] against want(x[i]) in double (|want| > 0; where want is 0,
// got must be 0 too).
template <class F>
double max_rel_error(const std::vector<float>& x, const std::vector<float>& got, F want) {
  double worst = 0;
  for (size_t i = 0; i < x.size(); i++) {
    const double w = want((double)x[i]);
    const double e = w == 0 ? std::fabs((double)got[i]) : std::fabs((double)got[i] - w) / std::fabs(w);
    worst = std::max(worst, e);
  }
  return worst;
}

__global__ void celu_eval_kernel(const float* x, int n, float alpha, float* y, float* dy) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    y[i] = kernels::celu(x[i], alpha);
    dy[i] = kernels::celu_grad(x[i], alpha);
  }
}

}  // namespace

// The vectorised BN statistics kernels' block reduction (bn_detail::vec_red_offset): for every
// channel count they take (C = 8 .. 2048 in steps of 8), each warp's store of each sum hits 32
// different banks (4-byte words), the slots of the block's threads do not overlap, and they fit
// the kVecThreads * kVecRedSlot floats the kernels declare.
TEST_CASE("ghost-BN vector statistics: the block reduction's stores are conflict-free (host)", "[gpu][bn]") {
  using namespace kernels::bn_detail;
  // Warp-wide stores (one per warp and sum j) whose 4-byte words share a bank, over every C.
  auto conflicted_stores = [](auto offset) {
    int conflicted = 0;
    for (int C = 8; C / 8 <= kVecThreads; C += 8) {
      const int CV = C / 8, active = kVecThreads / CV * CV;  // whole pixel rows of CV threads
      for (int warp0 = 0; warp0 < active; warp0 += 32)
        for (int j = 0; j < 16; j++) {
          std::vector<int> banks;
          for (int t = warp0; t < std::min(warp0 + 32, active); t++) banks.push_back(offset(t, j) % 32);
          std::sort(banks.begin(), banks.end());
          conflicted += std::adjacent_find(banks.begin(), banks.end()) != banks.end();
        }
    }
    return conflicted;
  };
  CHECK(conflicted_stores([](int t, int j) { return vec_red_offset(t, j); }) == 0);
  // The check's control: the unpadded slots of 16 floats it replaced conflict.
  CHECK(conflicted_stores([](int t, int j) { return t * 16 + j; }) > 0);
  std::vector<int> used(kVecThreads * kVecRedSlot, 0);
  for (int t = 0; t < kVecThreads; t++)
    for (int j = 0; j < 16; j++) used.at(vec_red_offset(t, j))++;
  CHECK(*std::max_element(used.begin(), used.end()) == 1);
}

// The series and exp branches of the fast expm1 (the host build: std::exp for the exp branch),
// against double-precision expm1 on both sides of the series limit and down to -40.
TEST_CASE("celu's expm1 for y <= 0 matches expm1 (host)", "[gpu][bn]") {
  const std::vector<float> x = celu_test_inputs(1.0f);
  std::vector<float> got, nonpos;
  for (float v : x)
    if (v <= 0.0f) nonpos.push_back(v), got.push_back(kernels::celu_expm1_nonpos(v));
  CHECK(max_rel_error(nonpos, got, [](double y) { return std::expm1(y); }) < 2e-6);
  // The series alone, where it is used: truncation below 1.3e-7 plus a few float roundings.
  std::vector<float> near, got_near;
  for (float v : nonpos)
    if (v > -kernels::kCeluSeriesLimit) near.push_back(v), got_near.push_back(kernels::celu_expm1_nonpos(v));
  CHECK(near.size() > 1000);
  CHECK(max_rel_error(near, got_near, [](double y) { return std::expm1(y); }) < 4e-7);
}

// The device's celu and celu_grad (__fdividef, __expf and the series) against double precision,
// for the recipe's alpha and for 1: relative error below 1e-5 (fp16 outputs round at 4.9e-4);
// for celu_grad where x / alpha >= -16 (BN outputs are within a few standard deviations, and
// past that __fdividef's 2 ulp, times |x / alpha|, grow in exp's relative error; the values
// there are below 1.2e-7, and their absolute error is checked).
TEST_CASE("celu and celu_grad on the GPU match double precision", "[gpu][bn]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  for (float alpha : {0.3f, 1.0f}) {
    INFO("alpha " << alpha);
    const std::vector<float> x = celu_test_inputs(alpha);
    const int n = (int)x.size();
    auto d_x = upload(x);
    auto d_y = poisoned<float>(x.size()), d_dy = poisoned<float>(x.size());
    celu_eval_kernel<<<256, 256>>>(d_x.get(), n, alpha, d_y.get(), d_dy.get());
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> y = download(d_y), dy = download(d_dy);
    const double a = alpha;
    CHECK(max_rel_error(x, y, [a](double v) { return v > 0 ? v : a * std::expm1(v / a); }) < 1e-5);
    std::vector<float> x_in, dy_in;
    double far_abs = 0;
    for (size_t i = 0; i < x.size(); i++) {
      if (x[i] >= -16.0f * alpha) {
        x_in.push_back(x[i]);
        dy_in.push_back(dy[i]);
      } else {
        far_abs = std::max(far_abs, std::fabs((double)dy[i] - std::exp((double)x[i] / a)));
      }
    }
    CHECK(max_rel_error(x_in, dy_in, [a](double v) { return v > 0 ? 1.0 : std::exp(v / a); }) < 1e-5);
    CHECK(far_abs < 1e-11);
  }
}

TEST_CASE("bn_average_groups matches ref::ghost_bn_average_groups", "[gpu][bn]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int G = kBatch / kGroup, C = 512;
  const auto per_group = random_vector((long)G * C, 800, 0.0f, 2.0f);
  auto d_in = upload(per_group);
  auto d_avg = poisoned<float>(C);
  kernels::bn_average_groups(d_in.get(), d_avg.get(), G, C, 0);
  const auto got = download(d_avg);
  REQUIRE(gpu_test::all_finite(got));
  std::vector<float> want(C);
  ref::ghost_bn_average_groups(per_group.data(), want.data(), G, C);
  REQUIRE(rel_l2_error(got.data(), want.data(), C) < kTolF32Sum);
}

// -------------------------------------------------------------------------------- head, loss

TEST_CASE("head forward/backward match maxpool 4 + linear + scale", "[gpu][head]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int N = kBatch, C = 512, K = net::kClasses;
  const float scale = net::Recipe().logit_scale;
  const auto x = round_to_half(random_vector((long)N * 16 * C, 900));
  const float bound = 1.0f / std::sqrt((float)C);
  const auto w = random_vector((long)K * C, 901, -bound, bound);
  const auto dlogits = random_vector((long)N * K, 902);
  auto d_x = upload_half(x);
  auto d_w = upload(w);
  auto d_dlogits = upload(dlogits);
  auto d_feat = poisoned<float>((size_t)N * C);
  auto d_logits = poisoned<float>((size_t)N * K);
  auto d_dw = poisoned<float>((size_t)K * C);
  auto d_dx = poisoned<__half>((size_t)N * 16 * C);

  kernels::head_forward(d_x.get(), d_w.get(), d_feat.get(), d_logits.get(), N, C, scale, false, 0);
  const auto feat = download(d_feat);
  const auto logits = download(d_logits);
  REQUIRE(gpu_test::all_finite(feat));
  REQUIRE(gpu_test::all_finite(logits));
  std::vector<float> feat_ref((size_t)N * C), lin((size_t)N * K), logits_ref((size_t)N * K);
  ref::maxpool_forward(x.data(), feat_ref.data(), N, 4, 4, C, 4);
  ref::linear_forward(feat_ref.data(), w.data(), lin.data(), N, C, K);
  ref::scale(lin.data(), logits_ref.data(), (long)N * K, scale);
  REQUIRE(max_abs_diff(feat.data(), feat_ref.data(), (long)feat.size()) == 0.0);
  REQUIRE(rel_l2_error(logits.data(), logits_ref.data(), (long)N * K) < kTolF32Sum);

  // accumulate = true adds (the TTA sum): a second call doubles the logits.
  kernels::head_forward(d_x.get(), d_w.get(), d_feat.get(), d_logits.get(), N, C, scale, true, 0);
  const auto logits2 = download(d_logits);
  std::vector<float> twice(logits_ref.size());
  for (size_t i = 0; i < twice.size(); i++) twice[i] = 2.0f * logits_ref[i];
  REQUIRE(rel_l2_error(logits2.data(), twice.data(), (long)twice.size()) < kTolF32Sum);

  kernels::head_backward(d_x.get(), d_feat.get(), d_w.get(), d_dlogits.get(), d_dx.get(),
                         d_dw.get(), N, C, scale, 0);
  const auto dx = download_half(d_dx);
  const auto dw = download(d_dw);
  REQUIRE(gpu_test::all_finite(dx));  // zeros off the max: all 16 pixels written
  REQUIRE(gpu_test::all_finite(dw));
  std::vector<float> dlin((size_t)N * K), dfeat((size_t)N * C), dw_ref((size_t)K * C),
      dx_ref(x.size());
  ref::scale(dlogits.data(), dlin.data(), (long)N * K, scale);
  ref::linear_backward(feat_ref.data(), w.data(), dlin.data(), dfeat.data(), dw_ref.data(), N, C,
                       K);
  ref::maxpool_backward(x.data(), dfeat.data(), dx_ref.data(), N, 4, 4, C, 4);
  REQUIRE(rel_l2_error(dx.data(), dx_ref.data(), (long)dx.size()) < kTolHalfOut);
  REQUIRE(rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size()) < kTolF32Sum);
}

TEST_CASE("xent_smooth_forward_backward matches the reference", "[gpu][loss]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const int K = net::kClasses;
  const float smoothing = net::Recipe().label_smoothing;
  for (int N : {kBatch, 10000}) {
    INFO("N " << N);
    const auto logits = random_vector((long)N * K, 1000 + N, -4.0f, 4.0f);
    std::mt19937_64 gen(1001 + N);
    std::vector<uint8_t> labels(N);
    for (auto& l : labels) l = (uint8_t)(gen() % K);
    auto d_logits = upload(logits);
    auto d_labels = upload(labels);
    auto d_dlogits = poisoned<float>((size_t)N * K);
    auto d_loss = poisoned<float>(1);
    auto d_correct = poisoned<int>(1);
    kernels::xent_smooth_forward_backward(d_logits.get(), d_labels.get(), N, K, smoothing,
                                          d_dlogits.get(), d_loss.get(), d_correct.get(), 0);
    const auto dlogits = download(d_dlogits);
    const float loss = download(d_loss)[0];
    const int correct = download(d_correct)[0];
    REQUIRE(gpu_test::all_finite(dlogits));
    REQUIRE(std::isfinite(loss));
    std::vector<float> dlogits_ref((size_t)N * K);
    int correct_ref = -1;
    const double loss_ref = ref::xent_smooth_forward_backward(
        logits.data(), labels.data(), N, K, smoothing, dlogits_ref.data(), &correct_ref);
    // fp32 per-row math and an fp32 block sum of N row losses vs double: ~1e-6 relative.
    REQUIRE(std::fabs(loss - loss_ref) / loss_ref < kTolF32Sum);
    REQUIRE(rel_l2_error(dlogits.data(), dlogits_ref.data(), (long)N * K) < kTolF32Sum);
    REQUIRE(correct == correct_ref);
  }
}

// ------------------------------------------------------------------------ optimiser, EMA

TEST_CASE("sgd_nesterov_multi over the real layout matches ref::sgd_nesterov_step",
          "[gpu][optim]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const net::Layout L = net::make_layout(1.0f, kBatch / kGroup);
  const net::Recipe r;
  const long n = L.num_params;
  kernels::TensorTable table{};
  table.count = (int)L.params.size();
  REQUIRE(table.count <= kernels::kMaxTensors);
  for (int t = 0; t < table.count; t++) {
    const auto& p = L.params[t];
    table.offset[t] = p.offset;
    table.size[t] = p.size;
    table.group[t] = p.is_bn_bias ? 1 : 0;
    table.grad_half[t] = p.shape.size() == 4 ? 1 : 0;  // conv filters: cuDNN's fp16 gradients
  }
  const auto w0 = random_vector(n, 1100, -0.1f, 0.1f);
  const auto v0 = random_vector(n, 1101, -0.01f, 0.01f);
  const auto g32 = random_vector(n, 1102);
  const auto g16 = round_to_half(random_vector(n, 1103));  // different values: catches mixups
  // lr per (step, group); large enough that the update stands out of the fp32 rounding of w.
  const std::vector<float> lr_table = {0.01f, 0.1f, 0.02f, 0.2f, 0.03f, 0.3f, 0.04f, 0.4f};
  const int step = 2;
  const float wd0 = r.wd_weights(), wd1 = r.wd_bn_bias();

  auto d_w = upload(w0);
  auto d_v = upload(v0);
  auto d_g = upload(g32);
  auto d_g16 = upload_half(g16);
  DeviceBuffer<__half> d_w16(n);
  d_w16.zero();  // must stay zero where the gradient is fp32
  auto d_lr = upload(lr_table);
  auto d_step = upload(std::vector<int>{step});
  kernels::sgd_nesterov_multi(d_w.get(), d_w16.get(), d_g.get(), d_g16.get(), d_v.get(), table,
                              d_lr.get(), d_step.get(), wd0, wd1, r.momentum, 0);
  kernels::advance_step(d_step.get(), 0);
  const auto w = download(d_w), v = download(d_v);
  const auto w16 = download_half(d_w16);
  REQUIRE(download(d_step)[0] == step + 1);

  std::vector<float> w_ref = w0, v_ref = v0;
  for (int t = 0; t < table.count; t++) {
    const long off = table.offset[t], size = table.size[t];
    const int grp = table.group[t];
    std::vector<float> g(size);
    for (long i = 0; i < size; i++) g[i] = table.grad_half[t] ? g16[off + i] : g32[off + i];
    ref::sgd_nesterov_step(w_ref.data() + off, g.data(), v_ref.data() + off, size,
                           lr_table[step * 2 + grp], grp ? wd1 : wd0, r.momentum);
  }
  // Compare the updates, not the weights (the update is small next to w).
  std::vector<float> dw(n), dw_ref(n);
  for (long i = 0; i < n; i++) {
    dw[i] = w[i] - w0[i];
    dw_ref[i] = w_ref[i] - w0[i];
  }
  REQUIRE(rel_l2_error(dw.data(), dw_ref.data(), n) < kTolF32Elementwise);
  REQUIRE(rel_l2_error(v.data(), v_ref.data(), n) < kTolF32Elementwise);
  for (int t = 0; t < table.count; t++) {
    INFO("tensor " << L.params[t].name);
    const long off = table.offset[t], size = table.size[t];
    double worst = 0.0;
    for (long i = 0; i < size; i++) {
      const float want = table.grad_half[t] ? __half2float(__float2half_rn(w[off + i])) : 0.0f;
      worst = std::max(worst, (double)std::fabs(w16[off + i] - want));
    }
    REQUIRE(worst == 0.0);  // the fp16 copy is exactly the rounded new weight
  }
}

TEST_CASE("ema_update and cast_f32_to_f16 match the reference", "[gpu][optim]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const long n = net::make_layout(1.0f, kBatch / kGroup).num_params;
  const float rho = net::Recipe().ema_rho_applied();
  const auto ema0 = random_vector(n, 1200);
  const auto w = random_vector(n, 1201);
  auto d_ema = upload(ema0);
  auto d_w = upload(w);
  kernels::ema_update(d_ema.get(), d_w.get(), n, rho, 0);
  const auto ema = download(d_ema);
  std::vector<float> ema_ref = ema0;
  ref::ema_update(ema_ref.data(), w.data(), n, rho);
  REQUIRE(rel_l2_error(ema.data(), ema_ref.data(), n) < kTolF32Elementwise);

  auto d_h = poisoned<__half>(n);
  kernels::cast_f32_to_f16(d_w.get(), d_h.get(), n, 0);
  const auto h = download_half(d_h);
  REQUIRE(max_abs_diff(h.data(), round_to_half(w).data(), n) == 0.0);
}
