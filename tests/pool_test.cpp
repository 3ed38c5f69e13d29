// Tests of the P x P / stride P max-pool: hand cases for P = 2 and 4, the tie rule, NaN
// propagation and a finite-difference gradient check.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/ref/pool.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::random_vector;

TEST_CASE("maxpool forward: hand-computed cases", "[pool]") {
  // One 4x4 image, two channels: channel 0 holds 0..15 in row-major order, channel 1 its
  // negation, so the maxima sit at opposite corners of each window.
  std::vector<float> x(4 * 4 * 2);
  for (int i = 0; i < 16; ++i) {
    x[2 * i] = (float)i;
    x[2 * i + 1] = -(float)i;
  }
  std::vector<float> y2(2 * 2 * 2);
  ref::maxpool_forward(x.data(), y2.data(), 1, 4, 4, 2, 2);
  // P = 2 windows: {0,1,4,5} {2,3,6,7} {8,9,12,13} {10,11,14,15}.
  const float expect2[8] = {5, 0, 7, -2, 13, -8, 15, -10};
  for (int i = 0; i < 8; ++i) REQUIRE(y2[i] == expect2[i]);

  std::vector<float> y4(2);
  ref::maxpool_forward(x.data(), y4.data(), 1, 4, 4, 2, 4);
  REQUIRE(y4[0] == 15.0f);
  REQUIRE(y4[1] == 0.0f);

  // Backward with P = 2 routes each dy to the window's maximum: channel 0 to the bottom-right
  // of each window, channel 1 to the top-left.
  const std::vector<float> dy = {1, 2, 3, 4, 5, 6, 7, 8};
  std::vector<float> dx(x.size(), -1.0f);  // garbage that must be overwritten
  ref::maxpool_backward(x.data(), dy.data(), dx.data(), 1, 4, 4, 2, 2);
  std::vector<float> expect_dx(x.size(), 0.0f);
  const int pos0[4] = {5, 7, 13, 15}, pos1[4] = {0, 2, 8, 10};
  for (int wi = 0; wi < 4; ++wi) {
    expect_dx[2 * pos0[wi]] = dy[2 * wi];
    expect_dx[2 * pos1[wi] + 1] = dy[2 * wi + 1];
  }
  REQUIRE(dx == expect_dx);
}

TEST_CASE("maxpool backward: ties go to the first maximum in row-major order", "[pool]") {
  // Two images, one channel, 2x2 windows (PyTorch's rule: the first position scanned, rows
  // then columns, that holds the maximum gets the whole gradient).
  //   image 0: all four equal -> top-left
  //   image 1: max 3 at (0,1) and (1,0) -> (0,1)
  const std::vector<float> x = {2, 2, 2, 2, 1, 3, 3, 0};
  const std::vector<float> dy = {1.5f, -2.5f};
  std::vector<float> y(2), dx(8);
  ref::maxpool_forward(x.data(), y.data(), 2, 2, 2, 1, 2);
  REQUIRE(y[0] == 2.0f);
  REQUIRE(y[1] == 3.0f);
  ref::maxpool_backward(x.data(), dy.data(), dx.data(), 2, 2, 2, 1, 2);
  const std::vector<float> expect = {1.5f, 0, 0, 0, 0, -2.5f, 0, 0};
  REQUIRE(dx == expect);

  // P = 4 with the maximum repeated at (1,2) and (2,1): the row-major first is (1,2).
  std::vector<float> x4(16, 0.0f);
  x4[1 * 4 + 2] = 1.0f;
  x4[2 * 4 + 1] = 1.0f;
  const float dy4 = 7.0f;
  std::vector<float> dx4(16);
  ref::maxpool_backward(x4.data(), &dy4, dx4.data(), 1, 4, 4, 1, 4);
  for (int i = 0; i < 16; ++i) REQUIRE(dx4[i] == (i == 1 * 4 + 2 ? 7.0f : 0.0f));
}

TEST_CASE("maxpool propagates NaN", "[pool]") {
  // A NaN anywhere in a window is the window's output (as in PyTorch), so divergence shows.
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {1, nan, 5, 2};
  float y = 0;
  ref::maxpool_forward(x.data(), &y, 1, 2, 2, 1, 2);
  REQUIRE(std::isnan(y));
}

TEST_CASE("maxpool backward matches finite differences", "[pool]") {
  // Distinct values 0.1 apart (a shuffled ramp) so no window has a near-tie: with h = 1e-2 a
  // perturbation never changes the argmax, the loss sum(y * r) is locally linear and the
  // central difference is exact up to fp32 rounding (tolerance 1e-2 relative).
  for (int P : {2, 4}) {
    CAPTURE(P);
    const int N = 2, H = 8, W = 8, C = 3;
    const long n = (long)N * H * W * C, m = n / (P * P);
    std::vector<float> x(n);
    std::iota(x.begin(), x.end(), 0.0f);
    std::mt19937_64 gen(30 + P);
    std::shuffle(x.begin(), x.end(), gen);
    for (auto& v : x) v = (v - n / 2) * 0.1f;
    const auto r = random_vector(m, 40 + P);
    std::vector<float> dx(n), y(m);
    ref::maxpool_backward(x.data(), r.data(), dx.data(), N, H, W, C, P);
    auto loss = [&](const std::vector<float>& xv) {
      ref::maxpool_forward(xv.data(), y.data(), N, H, W, C, P);
      double s = 0;
      for (long i = 0; i < m; ++i) s += (double)y[i] * r[i];
      return s;
    };
    REQUIRE(gradient_check(loss, x, dx, 0, 1e-2) < 1e-2);
    // Exactly one nonzero per window: the gradient is a routing, not a spread.
    REQUIRE(std::count_if(dx.begin(), dx.end(), [](float v) { return v != 0.0f; }) == m);
  }
}
