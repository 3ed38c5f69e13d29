// Tests of the CPU elementwise references (kernels/ref/elementwise.*).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/ref/elementwise.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::random_vector;

TEST_CASE("CELU: hand values", "[elementwise]") {
  const float alpha = 0.3f;
  const std::vector<float> x = {1.0f, -0.3f, 2.5f, -3.0f};
  std::vector<float> y(x.size()), dx(x.size());
  const std::vector<float> dy = {1.0f, 1.0f, 2.0f, 2.0f};
  ref::celu_forward(x.data(), y.data(), (long)x.size(), alpha);
  ref::celu_backward(x.data(), dy.data(), dx.data(), (long)x.size(), alpha);
  // fp32 of exact double expressions: relative 1e-6.
  CHECK(y[0] == 1.0f);
  CHECK(y[1] == Approx(0.3 * (std::exp(-1.0) - 1.0)).epsilon(1e-6));
  CHECK(y[2] == 2.5f);
  CHECK(y[3] == Approx(0.3 * (std::exp(-10.0) - 1.0)).epsilon(1e-6));
  CHECK(dx[0] == 1.0f);
  CHECK(dx[1] == Approx(std::exp(-1.0)).epsilon(1e-6));
  CHECK(dx[2] == 2.0f);
  CHECK(dx[3] == Approx(2.0 * std::exp(-10.0)).epsilon(1e-6));
}

TEST_CASE("CELU: continuous with slope 1 on both sides of 0", "[elementwise]") {
  const float alpha = 0.3f;
  const std::vector<float> x = {-1e-6f, 0.0f, 1e-6f};
  std::vector<float> y(3), dx(3);
  const std::vector<float> dy = {1.0f, 1.0f, 1.0f};
  ref::celu_forward(x.data(), y.data(), 3, alpha);
  ref::celu_backward(x.data(), dy.data(), dx.data(), 3, alpha);
  // Near 0, CELU(x) = x + O(x^2 / alpha): 1e-6 inputs give 1e-6 outputs to ~2e-12.
  CHECK(y[1] == 0.0f);
  CHECK(std::fabs(y[0] + 1e-6) < 1e-11);
  CHECK(std::fabs(y[2] - 1e-6) < 1e-11);
  // Derivative: exp(x / alpha) -> 1 from the left (1 - 3e-6), exactly 1 on the right.
  CHECK(std::fabs(dx[0] - 1.0) < 1e-5);
  CHECK(std::fabs(dx[1] - 1.0) < 1e-5);
  CHECK(dx[2] == 1.0f);
}

TEST_CASE("CELU: backward matches finite differences", "[elementwise]") {
  const float alpha = 0.3f;
  const long n = 64;
  auto x = random_vector(n, 61, -2.0f, 2.0f);
  // Keep samples away from the kink at 0 so the central difference does not straddle it.
  for (auto& v : x)
    if (std::fabs(v) < 0.05f) v = v < 0 ? -0.05f : 0.05f;
  const auto r = random_vector(n, 62);
  auto loss = [&](const std::vector<float>& xx) {
    std::vector<float> y(n);
    ref::celu_forward(xx.data(), y.data(), n, alpha);
    double l = 0;
    for (long i = 0; i < n; ++i) l += (double)y[i] * r[i];
    return l;
  };
  std::vector<float> dx(n);
  ref::celu_backward(x.data(), r.data(), dx.data(), n, alpha);
  // h = 1e-3: only the perturbed element's y changes, so the fd noise is one fp32 rounding
  // (~1e-7) over 2h, ~1e-4; truncation ~h^2 / alpha^2 ~ 1e-5. Relative tolerance 1e-2.
  CHECK(gradient_check(loss, x, dx, 0, 1e-3) < 1e-2);
}

TEST_CASE("add and scale", "[elementwise]") {
  const long n = 37;
  const auto a = random_vector(n, 71), b = random_vector(n, 72);
  std::vector<float> y(n), z(n);
  ref::add(a.data(), b.data(), y.data(), n);
  ref::scale(a.data(), z.data(), n, -0.0625f);
  // One fp32 operation each: bit-exact against the same operation.
  for (long i = 0; i < n; ++i) {
    CHECK(y[i] == a[i] + b[i]);
    CHECK(z[i] == -0.0625f * a[i]);
  }
  // In place (y aliases a) works: each output depends only on the same-index inputs.
  std::vector<float> c = a;
  ref::add(c.data(), b.data(), c.data(), n);
  for (long i = 0; i < n; ++i) CHECK(c[i] == a[i] + b[i]);
}

TEST_CASE("add and scale: backward (identity / times s) matches finite differences",
          "[elementwise]") {
  // The residual add passes dy to both branches unchanged and the logit scale multiplies it by
  // s: the backward the network uses. Checked against central differences of
  // loss = sum((a + b) * r) and sum(s * a * r); both are linear, so h = 1e-2 only meets fp32
  // rounding (~1e-7 / 2h ~ 1e-5 relative). Tolerance 1e-3.
  const long n = 29;
  const float s = 1.0f / 16.0f;
  auto a = random_vector(n, 81);
  auto b = random_vector(n, 82);
  const auto r = random_vector(n, 83);
  auto add_loss = [&](const std::vector<float>& aa, const std::vector<float>& bb) {
    std::vector<float> y(n);
    ref::add(aa.data(), bb.data(), y.data(), n);
    double l = 0;
    for (long i = 0; i < n; ++i) l += (double)y[i] * r[i];
    return l;
  };
  CHECK(gradient_check([&](const std::vector<float>& aa) { return add_loss(aa, b); }, a, r, 0,
                       1e-2) < 1e-3);
  CHECK(gradient_check([&](const std::vector<float>& bb) { return add_loss(a, bb); }, b, r, 0,
                       1e-2) < 1e-3);
  std::vector<float> ds(n);
  ref::scale(r.data(), ds.data(), n, s);  // d(s * a)/da applied to r
  auto scale_loss = [&](const std::vector<float>& aa) {
    std::vector<float> y(n);
    ref::scale(aa.data(), y.data(), n, s);
    double l = 0;
    for (long i = 0; i < n; ++i) l += (double)y[i] * r[i];
    return l;
  };
  CHECK(gradient_check(scale_loss, a, ds, 0, 1e-2) < 1e-3);
}
