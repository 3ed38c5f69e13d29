// Tests of the CPU label-smoothed cross-entropy (kernels/ref/loss.*).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/ref/loss.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::random_vector;

namespace {

// Plain double-precision reference: loss of one row with logits z[0..K), label t, smoothing s.
double row_loss(const double* z, int K, int t, double s) {
  double sum_exp = 0;
  for (int k = 0; k < K; ++k) sum_exp += std::exp(z[k]);
  const double lse = std::log(sum_exp);
  double mean_nll = 0;
  for (int k = 0; k < K; ++k) mean_nll += (lse - z[k]) / K;
  return (1 - s) * (lse - z[t]) + s * mean_nll;
}

}  // namespace

TEST_CASE("xent: hand-computed tiny case", "[loss]") {
  // N = 2, K = 3, s = 0.2. Row 1 has logits near 1000: exp would overflow unless the row
  // maximum is subtracted. Its expected value uses the same row shifted by -1000 (the loss
  // and softmax are shift invariant), all integers so the fp32 logits are exact.
  const std::vector<float> z = {1.0f, 2.0f, 0.5f, 1000.0f, 998.0f, 1001.0f};
  const std::vector<uint8_t> t = {0, 2};
  const double s = 0.2;
  const double row0[3] = {1.0, 2.0, 0.5}, row1[3] = {0.0, -2.0, 1.0};
  const double expect = row_loss(row0, 3, 0, s) + row_loss(row1, 3, 2, s);
  std::vector<float> dz(6);
  int correct = -1;
  const double loss = ref::xent_smooth_forward_backward(z.data(), t.data(), 2, 3, 0.2f,
                                                        dz.data(), &correct);
  // Computed in double from exact logits; s = 0.2f differs from 0.2 by ~1.5e-8 relative: 1e-7.
  CHECK(loss == Approx(expect).epsilon(1e-7));
  CHECK(correct == 1);  // row 0 predicts class 1 (label 0); row 1 predicts class 2 (label 2)
  // dz row 1 = softmax(0, -2, 1) - 0.8 * onehot(2) - 0.2 / 3; fp32 output: relative 1e-6.
  const double e0 = std::exp(0.0), e1 = std::exp(-2.0), e2 = std::exp(1.0), se = e0 + e1 + e2;
  CHECK(dz[3] == Approx(e0 / se - s / 3).epsilon(1e-6));
  CHECK(dz[4] == Approx(e1 / se - s / 3).epsilon(1e-6));
  CHECK(dz[5] == Approx(e2 / se - (1 - s) - s / 3).epsilon(1e-6));
  for (float v : dz) CHECK(std::isfinite(v));
}

TEST_CASE("xent: smoothing 0 is plain cross-entropy", "[loss]") {
  const int N = 5, K = 10;
  const auto z = random_vector((long)N * K, 81, -4.0f, 4.0f);
  const std::vector<uint8_t> t = {3, 0, 9, 9, 5};
  double expect = 0;
  for (int i = 0; i < N; ++i) {
    double sum_exp = 0;
    for (int k = 0; k < K; ++k) sum_exp += std::exp((double)z[i * K + k]);
    expect += -std::log(std::exp((double)z[i * K + t[i]]) / sum_exp);
  }
  std::vector<float> dz((size_t)N * K);
  const double loss =
      ref::xent_smooth_forward_backward(z.data(), t.data(), N, K, 0.0f, dz.data(), nullptr);
  // Same double arithmetic in a different order: relative 1e-12.
  CHECK(loss == Approx(expect).epsilon(1e-12));
  // Gradient is softmax - onehot.
  for (int i = 0; i < N; ++i) {
    double sum_exp = 0;
    for (int k = 0; k < K; ++k) sum_exp += std::exp((double)z[i * K + k]);
    for (int k = 0; k < K; ++k) {
      const double g = std::exp((double)z[i * K + k]) / sum_exp - (k == t[i] ? 1.0 : 0.0);
      CHECK(std::fabs(dz[i * K + k] - g) < 1e-7);  // one fp32 rounding of values in [-1, 1]
    }
  }
}

TEST_CASE("xent: gradient matches finite differences and rows sum to 0", "[loss]") {
  const int N = 4, K = 10;
  auto z = random_vector((long)N * K, 91, -3.0f, 3.0f);
  const std::vector<uint8_t> t = {1, 7, 7, 0};
  std::vector<float> dz((size_t)N * K);
  ref::xent_smooth_forward_backward(z.data(), t.data(), N, K, 0.2f, dz.data(), nullptr);
  auto loss = [&](const std::vector<float>& zz) {
    return ref::xent_smooth_forward_backward(zz.data(), t.data(), N, K, 0.2f, nullptr, nullptr);
  };
  // The loss is in double, so the only fp32 noise is the perturbed logit itself (h is
  // rounded to fp32 around |z| <= 3: ~2e-7 absolute over 2h = 2e-3, ~1e-4 relative);
  // truncation ~h^2 ~ 1e-6. Relative tolerance 1e-3.
  CHECK(gradient_check(loss, z, dz, 0, 1e-3) < 1e-3);
  // Softmax sums to 1 and the targets (0.8 onehot + 0.2 / K) sum to 1.
  for (int i = 0; i < N; ++i) {
    double sum = 0;
    for (int k = 0; k < K; ++k) sum += dz[i * K + k];
    CHECK(std::fabs(sum) < 1e-6);  // K fp32 roundings of values < 1
  }
}

TEST_CASE("xent: correct count", "[loss]") {
  const int N = 6, K = 4;
  // Predictions (argmax per row): 2, 0, 3, 1, 1, 0 (row 5 ties 0 and 3: first index wins).
  const std::vector<float> z = {0, 1, 5, 2,  9, 1, 1, 1,  -1, -2, -3, 0,
                                0, 4, 3, 2,  1, 2, 0, 0,  7, 0, 0, 7};
  const std::vector<uint8_t> t = {2, 0, 1, 1, 3, 0};  // rows 0, 1, 3, 5 are correct
  int correct = -1;
  ref::xent_smooth_forward_backward(z.data(), t.data(), N, K, 0.2f, nullptr, &correct);
  CHECK(correct == 4);
}
