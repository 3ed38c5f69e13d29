// Tests of the CPU optimiser references (kernels/ref/optim.*) and the recipe's schedule
// helpers (net::Recipe in net/recipe.h).
#include <catch2/catch.hpp>

#include <cmath>
#include <vector>

#include "kernels/ref/optim.h"
#include "net/recipe.h"
#include "tests/support.h"

using testing_support::random_vector;

TEST_CASE("SGD Nesterov: hand values over two steps", "[optim]") {
  // w = 1, v = 0, lr 0.1, wd 0.5, momentum 0.9.
  // Step 1, g = 2: g = 2 + 0.5 = 2.5; g = -0.25; v = -0.25; w = 1 - 0.25 - 0.225 = 0.525.
  // Step 2, g = 1: g = 1 + 0.2625 = 1.2625; g = -0.12625; v = -0.225 - 0.12625 = -0.35125;
  //                w = 0.525 - 0.12625 - 0.316125 = 0.082625.
  float w = 1.0f, v = 0.0f, g = 2.0f;
  ref::sgd_nesterov_step(&w, &g, &v, 1, 0.1f, 0.5f, 0.9f);
  // A few fp32 operations on values of order 1: relative 1e-6.
  CHECK(g == Approx(-0.25).epsilon(1e-6));
  CHECK(v == Approx(-0.25).epsilon(1e-6));
  CHECK(w == Approx(0.525).epsilon(1e-6));
  g = 1.0f;
  ref::sgd_nesterov_step(&w, &g, &v, 1, 0.1f, 0.5f, 0.9f);
  CHECK(g == Approx(-0.12625).epsilon(1e-6));
  CHECK(v == Approx(-0.35125).epsilon(1e-6));
  CHECK(w == Approx(0.082625).epsilon(1e-5));  // cancellation in 0.525 - 0.44: 1e-5
}

TEST_CASE("SGD Nesterov: equals the PyTorch form at constant lr", "[optim]") {
  // torch.optim.SGD(nesterov=True): d = g + wd*w; buf = m*buf + d; w -= lr*(d + m*buf).
  // With constant lr, v = -lr * buf, so the two forms give the same w at every step.
  const long n = 16;
  const float lr = 0.05f, wd = 0.01f, m = 0.9f;
  auto w = random_vector(n, 101);
  std::vector<float> v(n, 0.0f);
  std::vector<double> w_ref(w.begin(), w.end()), buf(n, 0.0);
  for (int step = 0; step < 5; ++step) {
    auto g = random_vector(n, 200 + step);
    for (long i = 0; i < n; ++i) {
      const double d = g[i] + (double)wd * w_ref[i];
      buf[i] = m * buf[i] + d;
      w_ref[i] -= lr * (d + m * buf[i]);
    }
    ref::sgd_nesterov_step(w.data(), g.data(), v.data(), n, lr, wd, m);
    for (long i = 0; i < n; ++i) {
      // fp32 against double over 5 steps on values of order 1: absolute 1e-6.
      CHECK(std::fabs(w[i] - w_ref[i]) < 1e-6);
      CHECK(std::fabs(v[i] + lr * buf[i]) < 1e-6);
    }
  }
}

TEST_CASE("EMA update: hand values", "[optim]") {
  std::vector<float> ema = {1.0f, -2.0f}, w = {3.0f, 2.0f};
  ref::ema_update(ema.data(), w.data(), 2, 0.9f);
  // 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * -2 + 0.1 * 2 = -1.6. fp32: relative 1e-6.
  CHECK(ema[0] == Approx(1.2).epsilon(1e-6));
  CHECK(ema[1] == Approx(-1.6).epsilon(1e-6));
  ref::ema_update(ema.data(), w.data(), 2, 0.0f);  // rho 0 copies the weights
  CHECK(ema[0] == 3.0f);
  CHECK(ema[1] == 2.0f);
}

TEST_CASE("piecewise linear: the recipe's lr schedule", "[optim]") {
  const float knots[3] = {0, 2, 8}, values[3] = {0, 1, 0.1f};
  auto at = [&](float t) { return ref::piecewise_linear(t, knots, values, 3); };
  // fp32 interpolation: absolute 1e-6.
  CHECK(std::fabs(at(-1.0f) - 0.0) < 1e-6);
  CHECK(std::fabs(at(0.0f) - 0.0) < 1e-6);
  CHECK(std::fabs(at(1.0f) - 0.5) < 1e-6);
  CHECK(std::fabs(at(2.0f) - 1.0) < 1e-6);
  CHECK(std::fabs(at(5.0f) - 0.55) < 1e-6);
  CHECK(std::fabs(at(8.0f) - 0.1) < 1e-6);
  CHECK(std::fabs(at(10.0f) - 0.1) < 1e-6);
}

TEST_CASE("recipe: learning rates, weight decays and EMA rate", "[optim]") {
  const net::Recipe r;
  REQUIRE(r.batch == 512);
  const int spe = 97;  // e.g. 50000 / 512
  // fp32 schedule arithmetic: relative 1e-6.
  // Step 0 is epoch 1/97 (steps counted from 1), on the ramp 0 -> 1 over 2 epochs.
  CHECK(r.lr_weights(0, spe) == Approx(0.5 / 97.0 / 512.0).epsilon(1e-6));
  CHECK(r.lr_weights(193, spe) == Approx(1.0 / 512.0).epsilon(1e-6));     // epoch 2: peak
  CHECK(r.lr_weights(484, spe) == Approx(0.55 / 512.0).epsilon(1e-6));    // epoch 5
  CHECK(r.lr_weights(969, spe) == Approx(0.1 / 512.0).epsilon(1e-6));     // epoch 10: held
  CHECK(r.lr_bn_bias(193, spe) == Approx(64.0 / 512.0).epsilon(1e-6));
  CHECK(r.lr_bn_bias(0, spe) == Approx(64.0 * r.lr_weights(0, spe)).epsilon(1e-6));
  CHECK(r.wd_weights() == Approx(5e-4 * 512).epsilon(1e-6));
  CHECK(r.wd_bn_bias() == Approx(5e-4 * 512 / 64).epsilon(1e-6));
  CHECK(r.ema_rho_applied() == Approx(std::pow(0.99, 5)).epsilon(1e-6));
}
