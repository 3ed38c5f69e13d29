// Tests of the CPU ghost batch norm reference (kernels/ref/ghost_bn.*).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/ref/ghost_bn.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::max_abs_diff;
using testing_support::random_vector;

namespace {

// Random NHWC input with a per-channel offset and spread, so the normalisation has work to do.
std::vector<float> bn_input(const ref::GhostBNShape& s, uint64_t seed) {
  std::vector<float> x = random_vector((long)s.N * s.HW * s.C, seed);
  for (long i = 0; i < (long)x.size(); ++i) {
    const int c = (int)(i % s.C);
    x[i] = 3.0f * (c + 1) * x[i] + 2.0f * c - 1.0f;
  }
  return x;
}

struct TrainOut {
  std::vector<float> y, mean, invstd;
};

TrainOut forward_train(const std::vector<float>& x, const std::vector<float>& bias,
                       const ref::GhostBNShape& s, float eps) {
  TrainOut o;
  o.y.resize(x.size());
  o.mean.resize((size_t)s.groups() * s.C);
  o.invstd.resize(o.mean.size());
  ref::ghost_bn_forward_train(x.data(), bias.data(), o.y.data(), o.mean.data(), o.invstd.data(),
                              nullptr, nullptr, s, eps, 0.1f);
  return o;
}

}  // namespace

TEST_CASE("ghost BN: each group's output has mean == bias and unit variance", "[ghost_bn]") {
  const ref::GhostBNShape s{8, 6, 3, 2};  // 4 groups of 2 images, n = 12 values per channel
  const float eps = 1e-5f;
  const auto x = bn_input(s, 11);
  const auto bias = random_vector(s.C, 12);
  const auto o = forward_train(x, bias, s, eps);
  const long n = (long)s.group * s.HW;
  for (int g = 0; g < s.groups(); ++g)
    for (int c = 0; c < s.C; ++c) {
      double sum = 0, sq = 0;
      for (long i = 0; i < n; ++i) sum += o.y[(g * n + i) * s.C + c];
      const double m = sum / n;
      for (long i = 0; i < n; ++i) {
        const double d = o.y[(g * n + i) * s.C + c] - m;
        sq += d * d;
      }
      // Output is fp32 of magnitude ~2: mean exact to ~1e-6. Variance is var / (var + eps);
      // the input variance is >= ~0.5 here, so eps moves it by < 2e-5, hence 1e-4.
      CHECK(std::fabs(m - bias[c]) < 1e-5);
      CHECK(std::fabs(sq / n - 1.0) < 1e-4);
    }
}

TEST_CASE("ghost BN: one group equals plain batch norm", "[ghost_bn]") {
  const ref::GhostBNShape s{4, 5, 3, 4};
  const float eps = 1e-5f;
  const auto x = bn_input(s, 21);
  const auto bias = random_vector(s.C, 22);
  const auto o = forward_train(x, bias, s, eps);
  // Plain BN over all N*HW values per channel, in double.
  const long n = (long)s.N * s.HW;
  std::vector<float> expect(x.size());
  for (int c = 0; c < s.C; ++c) {
    double sum = 0, sq = 0;
    for (long i = 0; i < n; ++i) sum += x[i * s.C + c];
    const double m = sum / n;
    for (long i = 0; i < n; ++i) sq += (x[i * s.C + c] - m) * (x[i * s.C + c] - m);
    const double invstd = 1.0 / std::sqrt(sq / n + eps);
    for (long i = 0; i < n; ++i)
      expect[i * s.C + c] = (float)((x[i * s.C + c] - m) * invstd + bias[c]);
    CHECK(o.mean[c] == Approx(m).epsilon(1e-6));
    CHECK(o.invstd[c] == Approx(invstd).epsilon(1e-6));
  }
  // Both computed in double, rounded once to fp32 (outputs of magnitude < 4): 1e-6.
  CHECK(max_abs_diff(o.y.data(), expect.data(), (long)x.size()) < 1e-6);
}

TEST_CASE("ghost BN: hand case with two groups and running statistics", "[ghost_bn]") {
  // N = 2 images of HW = 2 pixels, C = 1, group = 1. Group 0: {1, 3} -> mean 2, var 1.
  // Group 1: {2, 6} -> mean 4, var 4. Unbiased variances (n = 2): 2 and 8.
  const ref::GhostBNShape s{2, 2, 1, 1};
  const float eps = 1e-5f, momentum = 0.1f;
  const std::vector<float> x = {1, 3, 2, 6}, bias = {0.5f};
  std::vector<float> y(4), mean(2), invstd(2), rm = {0.0f, 1.0f}, rv = {1.0f, 2.0f};
  ref::ghost_bn_forward_train(x.data(), bias.data(), y.data(), mean.data(), invstd.data(),
                              rm.data(), rv.data(), s, eps, momentum);
  const double i0 = 1.0 / std::sqrt(1.0 + eps), i1 = 1.0 / std::sqrt(4.0 + eps);
  // fp32 results of exact double expressions: relative 1e-6.
  CHECK(y[0] == Approx(0.5 - i0).epsilon(1e-6));
  CHECK(y[1] == Approx(0.5 + i0).epsilon(1e-6));
  CHECK(y[2] == Approx(0.5 - 2 * i1).epsilon(1e-6));
  CHECK(y[3] == Approx(0.5 + 2 * i1).epsilon(1e-6));
  CHECK(mean[0] == 2.0f);
  CHECK(mean[1] == 4.0f);
  CHECK(invstd[0] == Approx(i0).epsilon(1e-6));
  CHECK(invstd[1] == Approx(i1).epsilon(1e-6));
  CHECK(rm[0] == Approx(0.9 * 0.0 + 0.1 * 2).epsilon(1e-6));  // 0.2
  CHECK(rm[1] == Approx(0.9 * 1.0 + 0.1 * 4).epsilon(1e-6));  // 1.3
  CHECK(rv[0] == Approx(0.9 * 1.0 + 0.1 * 2).epsilon(1e-6));  // 1.1
  CHECK(rv[1] == Approx(0.9 * 2.0 + 0.1 * 8).epsilon(1e-6));  // 2.6
}

TEST_CASE("ghost BN: running statistics match a direct computation", "[ghost_bn]") {
  const ref::GhostBNShape s{6, 7, 4, 3};  // 2 groups, n = 21
  const float eps = 1e-5f, momentum = 0.1f;
  const int G = s.groups();
  const auto x = bn_input(s, 31);
  const auto bias = random_vector(s.C, 32);
  auto rm = random_vector((long)G * s.C, 33);
  auto rv = random_vector((long)G * s.C, 34, 0.5f, 2.0f);
  const auto rm0 = rm, rv0 = rv;
  std::vector<float> y(x.size()), mean((size_t)G * s.C), invstd(mean.size());
  ref::ghost_bn_forward_train(x.data(), bias.data(), y.data(), mean.data(), invstd.data(),
                              rm.data(), rv.data(), s, eps, momentum);
  const long n = (long)s.group * s.HW;
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < s.C; ++c) {
      double sum = 0;
      for (long i = 0; i < n; ++i) sum += x[(g * n + i) * s.C + c];
      const double m = sum / n;
      double sq = 0;
      for (long i = 0; i < n; ++i) {
        const double d = x[(g * n + i) * s.C + c] - m;
        sq += d * d;
      }
      const double unbiased = sq / (n - 1);
      const int k = g * s.C + c;
      // Both sides in double, then fp32: relative 1e-6 (absolute floor for means near 0).
      CHECK(rm[k] == Approx(0.9 * rm0[k] + 0.1 * m).epsilon(1e-6).margin(1e-7));
      CHECK(rv[k] == Approx(0.9 * rv0[k] + 0.1 * unbiased).epsilon(1e-6));
    }
}

TEST_CASE("ghost BN: backward matches finite differences", "[ghost_bn]") {
  const ref::GhostBNShape s{4, 3, 2, 2};  // 2 groups, n = 6
  const float eps = 1e-5f;
  auto x = bn_input(s, 41);
  auto bias = random_vector(s.C, 42);
  const auto r = random_vector((long)x.size(), 43);
  // loss = sum(y * r) in double, so dy = r.
  auto loss = [&](const std::vector<float>& xx, const std::vector<float>& bb) {
    const auto o = forward_train(xx, bb, s, eps);
    double l = 0;
    for (size_t i = 0; i < o.y.size(); ++i) l += (double)o.y[i] * r[i];
    return l;
  };
  const auto o = forward_train(x, bias, s, eps);
  std::vector<float> dx(x.size()), dbias(s.C);
  ref::ghost_bn_backward(r.data(), x.data(), o.mean.data(), o.invstd.data(), dx.data(),
                         dbias.data(), s);
  // fp32 forward: y rounding ~1e-7 * 24 terms over 2h = 2e-2 gives fd noise ~1e-4 against
  // gradients of order 0.1..1; h = 1e-2 keeps the O(h^2) truncation (inputs spread over ~3
  // units) small too. Relative tolerance 1e-2 with a 1e-3 floor for near-zero components.
  const double err_x = gradient_check(
      [&](const std::vector<float>& xx) { return loss(xx, bias); }, x, dx, 0, 1e-2);
  CHECK(err_x < 1e-2);
  const double err_b = gradient_check(
      [&](const std::vector<float>& bb) { return loss(x, bb); }, bias, dbias, 0, 1e-2);
  CHECK(err_b < 1e-2);
  // dbias is exactly the sum of dy over all N*HW positions.
  for (int c = 0; c < s.C; ++c) {
    double sum = 0;
    for (long i = 0; i < (long)s.N * s.HW; ++i) sum += r[i * s.C + c];
    CHECK(dbias[c] == Approx(sum).epsilon(1e-6));
  }
}

TEST_CASE("ghost BN: eval forward and group averaging", "[ghost_bn]") {
  const int N = 3, HW = 4, C = 3, G = 4;
  const float eps = 1e-5f;
  const auto x = random_vector((long)N * HW * C, 51, -3.0f, 3.0f);
  const auto bias = random_vector(C, 52);
  const auto per_group_mean = random_vector((long)G * C, 53);
  const auto per_group_var = random_vector((long)G * C, 54, 0.1f, 3.0f);
  std::vector<float> mean(C), var(C);
  ref::ghost_bn_average_groups(per_group_mean.data(), mean.data(), G, C);
  ref::ghost_bn_average_groups(per_group_var.data(), var.data(), G, C);
  for (int c = 0; c < C; ++c) {
    double m = 0, v = 0;
    for (int g = 0; g < G; ++g) {
      m += per_group_mean[g * C + c];
      v += per_group_var[g * C + c];
    }
    // Averages of 4 fp32 values: relative 1e-6, absolute floor for means near 0.
    CHECK(mean[c] == Approx(m / G).epsilon(1e-6).margin(1e-7));
    CHECK(var[c] == Approx(v / G).epsilon(1e-6));
  }
  std::vector<float> y(x.size());
  ref::ghost_bn_forward_eval(x.data(), bias.data(), mean.data(), var.data(), y.data(), N, HW, C,
                             eps);
  for (long i = 0; i < (long)x.size(); ++i) {
    const int c = (int)(i % C);
    const double expect = (x[i] - (double)mean[c]) / std::sqrt((double)var[c] + eps) + bias[c];
    // |y| < ~15 here; one fp32 rounding: absolute 1e-5.
    CHECK(std::fabs(y[i] - expect) < 1e-5);
  }
}
