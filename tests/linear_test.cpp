// Tests of the bias-free linear layer: forward against a direct loop, backward against
// finite differences, and the null-output skips.
#include <catch2/catch.hpp>

#include <vector>

#include "kernels/ref/linear.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double)a[i] * b[i];
  return s;
}

}  // namespace

TEST_CASE("linear forward: hand-computed case", "[linear]") {
  // x = [[1, 2, 3]], w = [[1, 0, -1], [2, 2, 2]] -> y = [[1 - 3, 2 + 4 + 6]] = [[-2, 12]].
  const std::vector<float> x = {1, 2, 3};
  const std::vector<float> w = {1, 0, -1, 2, 2, 2};
  std::vector<float> y(2);
  ref::linear_forward(x.data(), w.data(), y.data(), 1, 3, 2);
  REQUIRE(y[0] == -2.0f);  // small integers: exact in fp32
  REQUIRE(y[1] == 12.0f);
}

TEST_CASE("linear forward matches the direct loop", "[linear]") {
  // The head's shape (512 -> 10) on a few images, plus odd sizes.
  const int shapes[][3] = {{7, 512, 10}, {3, 5, 7}, {33, 65, 17}};
  uint64_t seed = 10;
  for (const auto& sh : shapes) {
    const int N = sh[0], In = sh[1], Out = sh[2];
    CAPTURE(N, In, Out);
    const auto x = random_vector((long)N * In, seed++);
    const auto w = random_vector((long)Out * In, seed++);
    std::vector<float> y((long)N * Out), expect((long)N * Out);
    for (int n = 0; n < N; ++n)
      for (int o = 0; o < Out; ++o) {
        double acc = 0;
        for (int i = 0; i < In; ++i) acc += (double)x[(long)n * In + i] * w[(long)o * In + i];
        expect[(long)n * Out + o] = (float)acc;
      }
    ref::linear_forward(x.data(), w.data(), y.data(), N, In, Out);
    // fp32 dot products of <= 512 O(1) terms vs double: ~1e-7 relative; 1e-5 is a margin.
    REQUIRE(rel_l2_error(y.data(), expect.data(), (long)N * Out) < 1e-5);
  }
}

TEST_CASE("linear backward matches finite differences", "[linear]") {
  // loss = sum(y * r) with fixed random r: linear in x and w, so central differences with
  // h = 1e-2 are exact up to fp32 rounding of y (far below the 1e-2 relative tolerance).
  const int N = 5, In = 37, Out = 11;
  auto x = random_vector((long)N * In, 20);
  auto w = random_vector((long)Out * In, 21);
  const auto r = random_vector((long)N * Out, 22);
  std::vector<float> dx((long)N * In), dw((long)Out * In), y((long)N * Out);
  ref::linear_backward(x.data(), w.data(), r.data(), dx.data(), dw.data(), N, In, Out);
  auto loss_x = [&](const std::vector<float>& xv) {
    ref::linear_forward(xv.data(), w.data(), y.data(), N, In, Out);
    return dot(y, r);
  };
  auto loss_w = [&](const std::vector<float>& wv) {
    ref::linear_forward(x.data(), wv.data(), y.data(), N, In, Out);
    return dot(y, r);
  };
  REQUIRE(gradient_check(loss_x, x, dx, 0, 1e-2) < 1e-2);
  REQUIRE(gradient_check(loss_w, w, dw, 0, 1e-2) < 1e-2);

  // Either output may be skipped; the other one must be unchanged by the skip.
  std::vector<float> dx2((long)N * In), dw2((long)Out * In);
  ref::linear_backward(x.data(), w.data(), r.data(), dx2.data(), nullptr, N, In, Out);
  ref::linear_backward(x.data(), w.data(), r.data(), nullptr, dw2.data(), N, In, Out);
  REQUIRE(dx2 == dx);
  REQUIRE(dw2 == dw);
}
