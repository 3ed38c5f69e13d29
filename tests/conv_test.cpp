// Tests of ref::gemm and the im2col convolution against direct loops, a hand-computed case,
// and finite-difference gradients.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "kernels/ref/conv.h"
#include "tests/support.h"

using testing_support::gradient_check;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

// C = op(A) op(B) by the textbook triple loop, accumulated in double.
std::vector<float> naive_gemm(bool ta, bool tb, int M, int N, int K, const std::vector<float>& A,
                              const std::vector<float>& B) {
  std::vector<float> C((long)M * N);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double acc = 0;
      for (int k = 0; k < K; ++k) {
        const double a = ta ? A[(long)k * M + i] : A[(long)i * K + k];
        const double b = tb ? B[(long)j * K + k] : B[(long)k * N + j];
        acc += a * b;
      }
      C[(long)i * N + j] = (float)acc;
    }
  return C;
}

// Direct 7-loop convolution (NHWC, KRSC, stride 1, zero "same" padding), in double.
std::vector<float> naive_conv(const std::vector<float>& x, const std::vector<float>& w,
                              const ref::ConvShape& s) {
  std::vector<float> y(s.y_size());
  const int p = s.pad();
  for (int n = 0; n < s.N; ++n)
    for (int h = 0; h < s.H; ++h)
      for (int v = 0; v < s.W; ++v)
        for (int k = 0; k < s.K; ++k) {
          double acc = 0;
          for (int r = 0; r < s.R; ++r)
            for (int q = 0; q < s.R; ++q)
              for (int c = 0; c < s.C; ++c) {
                const int hh = h + r - p, vv = v + q - p;
                if (hh < 0 || hh >= s.H || vv < 0 || vv >= s.W) continue;
                acc += (double)x[(((long)n * s.H + hh) * s.W + vv) * s.C + c] *
                       w[(((long)k * s.R + r) * s.R + q) * s.C + c];
              }
          y[(((long)n * s.H + h) * s.W + v) * s.K + k] = (float)acc;
        }
  return y;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += (double)a[i] * b[i];
  return s;
}

}  // namespace

TEST_CASE("gemm matches the triple loop for all transposes and odd sizes", "[gemm]") {
  // Sizes cover: single element, below one micro-tile, ragged tiles, more than one K block
  // (KC = 256), more than one M block (MC = 128), and products large enough to use 2 threads
  // (both split directions: M >= N and M < N) and, on machines with more cores, 3 to 5.
  const int sizes[][3] = {{1, 1, 1},      {3, 5, 7},      {7, 13, 5},   {37, 29, 300},
                          {130, 70, 513}, {33, 301, 517}, {301, 17, 259}, {517, 61, 530}};
  uint64_t seed = 1;
  for (const auto& sz : sizes) {
    const int M = sz[0], N = sz[1], K = sz[2];
    for (int t = 0; t < 4; ++t) {
      const bool ta = t & 1, tb = t & 2;
      const auto A = random_vector((long)M * K, seed++);
      const auto B = random_vector((long)K * N, seed++);
      const auto expect = naive_gemm(ta, tb, M, N, K, A, B);
      CAPTURE(M, N, K, ta, tb);
      // fp32 sums of up to ~500 products of O(1) terms: the relative error is ~1e-7 * sqrt(K)
      // in practice, so 1e-5 leaves a wide margin while catching any indexing mistake.
      std::vector<float> C((long)M * N, 123.0f);  // garbage that must be overwritten
      ref::gemm(ta, tb, M, N, K, A.data(), B.data(), C.data(), false);
      REQUIRE(rel_l2_error(C.data(), expect.data(), (long)M * N) < 1e-5);
      // accumulate=true adds onto what is there.
      const auto C0 = random_vector((long)M * N, seed++);
      std::vector<float> D = C0;
      ref::gemm(ta, tb, M, N, K, A.data(), B.data(), D.data(), true);
      std::vector<float> expect_acc(expect);
      for (size_t i = 0; i < expect_acc.size(); ++i) expect_acc[i] += C0[i];
      REQUIRE(rel_l2_error(D.data(), expect_acc.data(), (long)M * N) < 1e-5);
    }
  }
}

TEST_CASE("gemm with K = 0 writes zeros or leaves C unchanged", "[gemm]") {
  std::vector<float> C(6, 5.0f);
  ref::gemm(false, false, 2, 3, 0, nullptr, nullptr, C.data(), true);
  for (float v : C) REQUIRE(v == 5.0f);
  ref::gemm(false, false, 2, 3, 0, nullptr, nullptr, C.data(), false);
  for (float v : C) REQUIRE(v == 0.0f);
}

TEST_CASE("conv forward: hand-computed 3x3 all-ones case", "[conv]") {
  // One 3x3 image 1..9, one channel, all-ones 3x3 filter: each output is the sum of the
  // in-image neighbours (zero padding), e.g. the corner (0,0) sees 1+2+4+5 = 12.
  const ref::ConvShape s{1, 3, 3, 1, 1, 3};
  const std::vector<float> x = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  const std::vector<float> w(9, 1.0f);
  std::vector<float> y(9);
  ref::conv_forward(x.data(), w.data(), y.data(), s);
  const float expect[9] = {12, 21, 16, 27, 45, 33, 24, 39, 28};
  for (int i = 0; i < 9; ++i) REQUIRE(y[i] == expect[i]);  // small integers: exact in fp32

  // Same image with a 1x1 filter of weight 2 and two output channels (weights 2 and -1).
  const ref::ConvShape s1{1, 3, 3, 1, 2, 1};
  const std::vector<float> w1 = {2.0f, -1.0f};
  std::vector<float> y1(18);
  ref::conv_forward(x.data(), w1.data(), y1.data(), s1);
  for (int i = 0; i < 9; ++i) {
    REQUIRE(y1[2 * i] == 2 * x[i]);
    REQUIRE(y1[2 * i + 1] == -x[i]);
  }
}

TEST_CASE("conv forward matches the direct convolution", "[conv]") {
  const ref::ConvShape shapes[] = {{2, 5, 5, 3, 7, 3},  {3, 8, 8, 5, 4, 3}, {2, 6, 7, 9, 11, 3},
                                   {3, 7, 5, 13, 6, 1}, {2, 8, 8, 3, 5, 1}, {2, 5, 6, 1, 3, 3}};
  uint64_t seed = 100;
  for (const auto& s : shapes) {
    CAPTURE(s.N, s.H, s.W, s.C, s.K, s.R);
    const auto x = random_vector(s.x_size(), seed++);
    const auto w = random_vector(s.w_size(), seed++);
    std::vector<float> y(s.y_size());
    ref::conv_forward(x.data(), w.data(), y.data(), s);
    const auto expect = naive_conv(x, w, s);
    // Sums of at most 9 * 13 products in fp32 vs double: ~1e-7 relative; 1e-5 is a margin.
    REQUIRE(rel_l2_error(y.data(), expect.data(), s.y_size()) < 1e-5);
  }
}

TEST_CASE("conv backward matches finite differences", "[conv]") {
  // loss = sum(y * r) for a fixed random r, so d loss / d y = r. The loss is linear in x and
  // in w, so central differences are exact up to fp32 rounding of the forward pass; with
  // h = 1e-2 that rounding (~1e-7 * |y| per touched output, divided by 2h) stays far below the
  // 1e-2 relative tolerance. floor 1e-3 keeps near-zero gradients from inflating the ratio.
  const ref::ConvShape shapes[] = {{2, 5, 5, 3, 4, 3}, {3, 6, 7, 5, 3, 3}, {2, 5, 6, 7, 5, 1}};
  uint64_t seed = 200;
  for (const auto& s : shapes) {
    CAPTURE(s.N, s.H, s.W, s.C, s.K, s.R);
    auto x = random_vector(s.x_size(), seed++);
    auto w = random_vector(s.w_size(), seed++);
    const auto r = random_vector(s.y_size(), seed++);
    std::vector<float> dx(s.x_size()), dw(s.w_size());
    ref::conv_backward_input(r.data(), w.data(), dx.data(), s);
    ref::conv_backward_weight(x.data(), r.data(), dw.data(), s);
    std::vector<float> y(s.y_size());
    auto loss_x = [&](const std::vector<float>& xv) {
      ref::conv_forward(xv.data(), w.data(), y.data(), s);
      return dot(y, r);
    };
    auto loss_w = [&](const std::vector<float>& wv) {
      ref::conv_forward(x.data(), wv.data(), y.data(), s);
      return dot(y, r);
    };
    REQUIRE(gradient_check(loss_x, x, dx, 200, 1e-2) < 1e-2);
    REQUIRE(gradient_check(loss_w, w, dw, 200, 1e-2) < 1e-2);
  }
}

TEST_CASE("conv forward and weight gradient on a chunked batch", "[conv]") {
  // Enough images that the im2col buffer (64 MB) is filled in several chunks, and
  // conv_backward_weight accumulates across them: 40 images of 32x32x64 with R = 3 are 94 MB
  // of columns.
  const ref::ConvShape s{40, 32, 32, 64, 2, 3};
  const auto x = random_vector(s.x_size(), 300);
  const auto dy = random_vector(s.y_size(), 301);
  const auto w = random_vector(s.w_size(), 302);
  std::vector<float> y(s.y_size());
  ref::conv_forward(x.data(), w.data(), y.data(), s);
  const auto y_expect = naive_conv(x, w, s);
  // 576-term fp32 dot products: ~1e-7 relative; 1e-5 is a margin.
  REQUIRE(rel_l2_error(y.data(), y_expect.data(), s.y_size()) < 1e-5);

  std::vector<float> dw(s.w_size());
  ref::conv_backward_weight(x.data(), dy.data(), dw.data(), s);
  // dw[k][r][q][c] = sum_{n,h,v} dy[n][h][v][k] * x[n][h+r-p][v+q-p][c], in double.
  std::vector<float> expect(s.w_size());
  const int p = s.pad();
  for (int k = 0; k < s.K; ++k)
    for (int r = 0; r < s.R; ++r)
      for (int q = 0; q < s.R; ++q)
        for (int c = 0; c < s.C; c += 9) {  // a sample of channels keeps the loop quick
          double acc = 0;
          for (int n = 0; n < s.N; ++n)
            for (int h = 0; h < s.H; ++h)
              for (int v = 0; v < s.W; ++v) {
                const int hh = h + r - p, vv = v + q - p;
                if (hh < 0 || hh >= s.H || vv < 0 || vv >= s.W) continue;
                acc += (double)dy[(((long)n * s.H + h) * s.W + v) * s.K + k] *
                       x[(((long)n * s.H + hh) * s.W + vv) * s.C + c];
              }
          expect[(((long)k * s.R + r) * s.R + q) * s.C + c] = (float)acc;
        }
  // Each entry sums ~40k products of O(1) random terms (value ~ sqrt(40k) = 200); fp32
  // accumulation in K blocks of 256 keeps the relative error ~1e-6; allow 1e-4.
  double num = 0, den = 0;
  for (long i = 0; i < s.w_size(); ++i) {
    if ((i % s.C) % 9 != 0) continue;
    num += ((double)dw[i] - expect[i]) * ((double)dw[i] - expect[i]);
    den += (double)expect[i] * expect[i];
  }
  REQUIRE(std::sqrt(num / den) < 1e-4);
}

TEST_CASE("conv forward speed (informational)", "[conv][timing]") {
  const ref::ConvShape s{32, 16, 16, 32, 32, 3};
  const auto x = random_vector(s.x_size(), 400);
  const auto w = random_vector(s.w_size(), 401);
  std::vector<float> y(s.y_size());
  ref::conv_forward(x.data(), w.data(), y.data(), s);  // warm-up: page in the buffers
  const int iters = 5;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) ref::conv_forward(x.data(), w.data(), y.data(), s);
  const double sec =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
  std::printf("conv_forward N=32 H=W=16 C=K=32 R=3: %.2f ms, %.1f GFLOP/s\n", sec * 1e3,
              2 * s.macs() / sec * 1e-9);
  SUCCEED();
}
