// Tests of the whitening reference: Jacobi eigensolver, patch covariance, whitening filters.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "kernels/ref/whiten.h"
#include "tests/support.h"

namespace {

// max |a - V^T diag(l) V| (eigenvectors are the rows of V).
double reconstruction_error(const std::vector<double>& a, const std::vector<double>& l,
                            const std::vector<double>& V, int n) {
  double err = 0.0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = 0.0;
      for (int k = 0; k < n; k++) s += V[(size_t)k * n + i] * l[k] * V[(size_t)k * n + j];
      err = std::max(err, std::fabs(s - a[(size_t)i * n + j]));
    }
  return err;
}

// max |V V^T - I|.
double orthonormality_error(const std::vector<double>& V, int n) {
  double err = 0.0;
  for (int i = 0; i < n; i++)
    for (int j = 0; j < n; j++) {
      double s = 0.0;
      for (int k = 0; k < n; k++) s += V[(size_t)i * n + k] * V[(size_t)j * n + k];
      err = std::max(err, std::fabs(s - (i == j ? 1.0 : 0.0)));
    }
  return err;
}

// Each row's first largest-magnitude component is positive (the documented sign convention).
bool signs_fixed(const std::vector<double>& V, int n) {
  for (int i = 0; i < n; i++) {
    int imax = 0;
    for (int k = 1; k < n; k++)
      if (std::fabs(V[(size_t)i * n + k]) > std::fabs(V[(size_t)i * n + imax])) imax = k;
    if (V[(size_t)i * n + imax] <= 0.0) return false;
  }
  return true;
}

// Images whose 3x3 patches are strongly correlated: white noise, a 3x3 box blur per channel
// (neighbouring pixels correlate), then a fixed channel mix (channels correlate).
std::vector<float> correlated_images(int n, int H, int W, uint64_t seed) {
  const int C = 3;
  std::vector<float> noise = testing_support::random_vector((long)n * H * W * C, seed);
  std::vector<float> out((size_t)n * H * W * C);
  const float mix[3][3] = {{1.0f, 0.6f, 0.3f}, {0.5f, 1.0f, 0.5f}, {0.2f, 0.7f, 1.0f}};
  for (int img = 0; img < n; img++)
    for (int y = 0; y < H; y++)
      for (int x = 0; x < W; x++) {
        float blur[3] = {0.0f, 0.0f, 0.0f};
        for (int dy = -1; dy <= 1; dy++)
          for (int dx = -1; dx <= 1; dx++) {
            const int yy = std::min(std::max(y + dy, 0), H - 1);
            const int xx = std::min(std::max(x + dx, 0), W - 1);
            for (int c = 0; c < C; c++)
              blur[c] += noise[(((size_t)img * H + yy) * W + xx) * C + c] / 9.0f;
          }
        for (int c = 0; c < C; c++) {
          float v = 0.0f;
          for (int k = 0; k < C; k++) v += mix[c][k] * blur[k];
          // Add a little white noise so the smallest eigenvalues stay well above zero.
          out[(((size_t)img * H + y) * W + x) * C + c] =
              v + 0.05f * noise[(((size_t)img * H + y) * W + x) * C + (c + 1) % C];
        }
      }
  return out;
}

// Patch vector (c, ky, kx) at (oy, ox) of image img, in double.
void gather_patch(const float* x, int img, int oy, int ox, int H, int W, int C, int R,
                  double* p) {
  for (int c = 0; c < C; c++)
    for (int ky = 0; ky < R; ky++)
      for (int kx = 0; kx < R; kx++)
        p[(c * R + ky) * R + kx] = x[(((size_t)img * H + oy + ky) * W + ox + kx) * C + c];
}

}  // namespace

TEST_CASE("symmetric_eigen: known 2x2 and 3x3 cases", "[whiten]") {
  // All values below are exact up to a few ulps; 1e-12 leaves room for the rotations' rounding.
  const double tol = 1e-12;
  SECTION("2x2 [[2,1],[1,2]]: eigenvalues 3, 1") {
    const std::vector<double> a = {2, 1, 1, 2};
    std::vector<double> l(2), V(4);
    ref::symmetric_eigen(a.data(), 2, l.data(), V.data());
    CHECK(l[0] == Approx(3.0).margin(tol));
    CHECK(l[1] == Approx(1.0).margin(tol));
    const double r = 1.0 / std::sqrt(2.0);
    // (1, 1)/sqrt(2) has a tie in magnitude; either sign satisfies the convention up to
    // rounding, so compare up to sign for both.
    CHECK(std::fabs(std::fabs(V[0]) - r) < tol);
    CHECK(std::fabs(V[0] - V[1]) < tol);
    CHECK(std::fabs(std::fabs(V[2]) - r) < tol);
    CHECK(std::fabs(V[2] + V[3]) < tol);
  }
  SECTION("3x3 diagonal: sorted, unit vectors") {
    const std::vector<double> a = {1, 0, 0, 0, 5, 0, 0, 0, 3};
    std::vector<double> l(3), V(9);
    ref::symmetric_eigen(a.data(), 3, l.data(), V.data());
    CHECK(l == std::vector<double>{5, 3, 1});
    CHECK(V == std::vector<double>{0, 1, 0, 0, 0, 1, 1, 0, 0});
  }
  SECTION("3x3 second-difference matrix: eigenvalues 2+sqrt2, 2, 2-sqrt2") {
    const std::vector<double> a = {2, -1, 0, -1, 2, -1, 0, -1, 2};
    std::vector<double> l(3), V(9);
    ref::symmetric_eigen(a.data(), 3, l.data(), V.data());
    const double s2 = std::sqrt(2.0);
    CHECK(l[0] == Approx(2.0 + s2).margin(tol));
    CHECK(l[1] == Approx(2.0).margin(tol));
    CHECK(l[2] == Approx(2.0 - s2).margin(tol));
    // (1, -sqrt2, 1)/2 has its largest component negative: the convention flips it.
    const std::vector<double> v0 = {-0.5, s2 / 2, -0.5}, v2 = {0.5, s2 / 2, 0.5};
    for (int k = 0; k < 3; k++) {
      CHECK(std::fabs(V[k] - v0[k]) < tol);
      CHECK(std::fabs(V[6 + k] - v2[k]) < tol);
    }
    // (1, 0, -1)/sqrt2: a magnitude tie, so only up to sign.
    CHECK(std::fabs(std::fabs(V[3]) - 1.0 / s2) < tol);
    CHECK(std::fabs(V[4]) < tol);
    CHECK(std::fabs(V[3] + V[5]) < tol);
  }
}

TEST_CASE("symmetric_eigen: random symmetric matrices", "[whiten]") {
  const int n = GENERATE(1, 5, 27, 40);
  std::mt19937_64 gen(1234 + n);
  std::normal_distribution<double> dist(0.0, 1.0);

  SECTION("general symmetric (mixed signs)") {
    std::vector<double> a((size_t)n * n);
    for (int i = 0; i < n; i++)
      for (int j = 0; j <= i; j++) a[(size_t)i * n + j] = a[(size_t)j * n + i] = dist(gen);
    std::vector<double> l(n), V((size_t)n * n);
    ref::symmetric_eigen(a.data(), n, l.data(), V.data());
    // Entries are O(1) and the solver stops at off-norm < 1e-14 |A|_F: 1e-10 is generous
    // for double rounding over ~10 sweeps of O(n^3) rotations.
    CHECK(reconstruction_error(a, l, V, n) < 1e-10);
    CHECK(orthonormality_error(V, n) < 1e-10);
    CHECK(std::is_sorted(l.rbegin(), l.rend()));
    CHECK(signs_fixed(V, n));
    // The trace is invariant.
    double tr = 0.0, sum = 0.0;
    for (int i = 0; i < n; i++) {
      tr += a[(size_t)i * n + i];
      sum += l[i];
    }
    CHECK(std::fabs(tr - sum) < 1e-10);
  }
  SECTION("covariance-like with repeated and zero eigenvalues") {
    // A = Q diag(d) Q^T with Q orthonormal (Gram-Schmidt of a random matrix) and
    // d = 4, 4, 4, 1, 1, 0, 0, ... : degenerate spectra must still give orthonormal vectors.
    std::vector<double> Q((size_t)n * n);
    for (auto& q : Q) q = dist(gen);
    for (int i = 0; i < n; i++) {
      for (int j = 0; j < i; j++) {
        double d = 0.0;
        for (int k = 0; k < n; k++) d += Q[(size_t)i * n + k] * Q[(size_t)j * n + k];
        for (int k = 0; k < n; k++) Q[(size_t)i * n + k] -= d * Q[(size_t)j * n + k];
      }
      double norm = 0.0;
      for (int k = 0; k < n; k++) norm += Q[(size_t)i * n + k] * Q[(size_t)i * n + k];
      for (int k = 0; k < n; k++) Q[(size_t)i * n + k] /= std::sqrt(norm);
    }
    std::vector<double> d(n, 0.0);
    for (int i = 0; i < n; i++) d[i] = i < 3 ? 4.0 : (i < 5 ? 1.0 : 0.0);
    std::vector<double> a((size_t)n * n, 0.0);
    for (int i = 0; i < n; i++)
      for (int j = 0; j < n; j++)
        for (int k = 0; k < n; k++)
          a[(size_t)i * n + j] += Q[(size_t)k * n + i] * d[k] * Q[(size_t)k * n + j];
    std::vector<double> l(n), V((size_t)n * n);
    ref::symmetric_eigen(a.data(), n, l.data(), V.data());
    CHECK(reconstruction_error(a, l, V, n) < 1e-10);
    CHECK(orthonormality_error(V, n) < 1e-10);
    for (int i = 0; i < n; i++) CHECK(std::fabs(l[i] - d[i]) < 1e-10);
    CHECK(signs_fixed(V, n));
  }
}

TEST_CASE("patch_covariance matches a direct sum over patches", "[whiten]") {
  const int n = 3, H = 6, W = 7;
  const int C = GENERATE(1, 3), R = GENERATE(1, 2, 3);
  const int D = C * R * R;
  std::vector<float> x = testing_support::random_vector((long)n * H * W * C, 7 + C * 10 + R);
  std::vector<double> cov((size_t)D * D);
  ref::patch_covariance(x.data(), n, H, W, C, R, cov.data());

  std::vector<double> expect((size_t)D * D, 0.0), p(D);
  long count = 0;
  for (int img = 0; img < n; img++)
    for (int oy = 0; oy + R <= H; oy++)
      for (int ox = 0; ox + R <= W; ox++, count++) {
        gather_patch(x.data(), img, oy, ox, H, W, C, R, p.data());
        for (int i = 0; i < D; i++)
          for (int j = 0; j < D; j++) expect[(size_t)i * D + j] += p[i] * p[j];
      }
  REQUIRE(count == (long)n * (H - R + 1) * (W - R + 1));
  double err = 0.0;
  for (int i = 0; i < D * D; i++) {
    err = std::max(err, std::fabs(cov[i] - expect[i] / (count - 1)));
    CHECK(cov[i] == cov[(i % D) * D + i / D]);  // exactly symmetric
  }
  // Both sums are in double over exact float->double products; only the order differs.
  CHECK(err < 1e-12);
}

TEST_CASE("whitening_filters: layout is KRSC of V_i / sqrt(lambda_i + eps)", "[whiten]") {
  const int n = 4, H = 10, W = 9, C = 3, R = 3, D = 27;
  const float eps = 1e-2f;
  std::vector<float> x = correlated_images(n, H, W, 11);
  std::vector<float> w((size_t)D * R * R * C);
  ref::whitening_filters(x.data(), n, H, W, C, R, eps, w.data());

  std::vector<double> cov((size_t)D * D), l(D), V((size_t)D * D);
  ref::patch_covariance(x.data(), n, H, W, C, R, cov.data());
  ref::symmetric_eigen(cov.data(), D, l.data(), V.data());
  double err = 0.0;
  for (int i = 0; i < D; i++)
    for (int ky = 0; ky < R; ky++)
      for (int kx = 0; kx < R; kx++)
        for (int c = 0; c < C; c++) {
          const double expect = V[(size_t)i * D + c * 9 + ky * 3 + kx] / std::sqrt(l[i] + eps);
          const double got = w[(((size_t)i * R + ky) * R + kx) * C + c];
          err = std::max(err, std::fabs(got - expect) / std::max(std::fabs(expect), 1e-30));
        }
  // Same computation in double, rounded to float once: within float's half-ulp (6e-8).
  CHECK(err < 1e-7);
}

TEST_CASE("whitening_filters whiten the patches of correlated images", "[whiten]") {
  const int n = 64, H = 20, W = 20, C = 3, R = 3, D = 27;
  const float eps = 1e-2f;  // the recipe's value
  std::vector<float> x = correlated_images(n, H, W, 99);
  std::vector<float> w((size_t)D * R * R * C);
  ref::whitening_filters(x.data(), n, H, W, C, R, eps, w.data());

  std::vector<double> cov((size_t)D * D), l(D), V((size_t)D * D);
  ref::patch_covariance(x.data(), n, H, W, C, R, cov.data());
  ref::symmetric_eigen(cov.data(), D, l.data(), V.data());
  // The test only means something if the patches are far from white: the spectrum spans
  // orders of magnitude, and some eigenvalues are comparable to eps.
  REQUIRE(l[0] / l[D - 1] > 100.0);
  REQUIRE(l[D - 1] < 10.0 * eps);

  // z_i = <w_i, patch>, the whitening conv applied at every valid position.
  std::vector<double> zcov((size_t)D * D, 0.0), p(D), z(D);
  long count = 0;
  for (int img = 0; img < n; img++)
    for (int oy = 0; oy + R <= H; oy++)
      for (int ox = 0; ox + R <= W; ox++, count++) {
        gather_patch(x.data(), img, oy, ox, H, W, C, R, p.data());
        for (int i = 0; i < D; i++) {
          double s = 0.0;
          for (int ky = 0; ky < R; ky++)
            for (int kx = 0; kx < R; kx++)
              for (int c = 0; c < C; c++)
                s += (double)w[(((size_t)i * R + ky) * R + kx) * C + c] * p[c * 9 + ky * 3 + kx];
          z[i] = s;
        }
        for (int i = 0; i < D; i++)
          for (int j = 0; j < D; j++) zcov[(size_t)i * D + j] += z[i] * z[j];
      }
  // In exact arithmetic zcov = diag(lambda / (lambda + eps)). The filters are rounded to
  // float (relative 6e-8); with lambda_max / eps ~ 1e3 the cross terms pick up errors of
  // order 6e-8 * sqrt(lambda_max / eps) ~ 2e-6, so 1e-4 absolute is a safe bound.
  double err = 0.0;
  for (int i = 0; i < D; i++)
    for (int j = 0; j < D; j++) {
      const double expect = i == j ? l[i] / (l[i] + eps) : 0.0;
      err = std::max(err, std::fabs(zcov[(size_t)i * D + j] / (count - 1) - expect));
    }
  CHECK(err < 1e-4);
}
