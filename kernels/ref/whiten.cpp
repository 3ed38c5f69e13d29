// CPU reference of the whitening filters: patch covariance, a Jacobi eigensolver, and the
// filters V_i / sqrt(lambda_i + eps) in KRSC. Everything is accumulated in double: the
// covariance sums ~9M patches and the small eigenvalues set the largest filter gains.
#include "kernels/ref/whiten.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <vector>

namespace ref {

void symmetric_eigen(const double* a, int n, double* eigenvalues, double* vecs) {
  if (n < 1) throw std::invalid_argument("symmetric_eigen: n must be >= 1");
  // A is rotated in place towards diagonal form; V accumulates the rotations, so that at the end
  // a = V diag(A) V^T with the eigenvectors in the columns of V.
  std::vector<double> A(a, a + (size_t)n * n);
  std::vector<double> V((size_t)n * n, 0.0);
  for (int i = 0; i < n; i++) V[(size_t)i * n + i] = 1.0;

  double frob2 = 0.0;
  for (size_t i = 0; i < A.size(); i++) frob2 += A[i] * A[i];
  const double tol = 1e-14 * std::sqrt(frob2);
  const int max_sweeps = 100;  // cyclic Jacobi converges quadratically; 27x27 needs ~8-10

  for (int sweep = 0; sweep < max_sweeps; sweep++) {
    double off2 = 0.0;
    for (int p = 0; p < n; p++)
      for (int q = p + 1; q < n; q++) off2 += 2.0 * A[(size_t)p * n + q] * A[(size_t)p * n + q];
    if (std::sqrt(off2) <= tol) break;

    for (int p = 0; p < n - 1; p++) {
      for (int q = p + 1; q < n; q++) {
        const double apq = A[(size_t)p * n + q];
        if (apq == 0.0) continue;
        // Rotation J (J_pp = J_qq = c, J_pq = s, J_qp = -s) that zeroes A[p][q] in J^T A J
        // (Golub & Van Loan, sym.schur2); t is the smaller root, so |angle| <= pi/4.
        const double app = A[(size_t)p * n + p], aqq = A[(size_t)q * n + q];
        const double tau = (aqq - app) / (2.0 * apq);
        double t;
        if (std::fabs(tau) > 1e150) {
          t = 0.5 / tau;  // tau^2 would overflow; t ~ 1/(2 tau)
        } else {
          t = (tau >= 0.0 ? 1.0 : -1.0) / (std::fabs(tau) + std::sqrt(1.0 + tau * tau));
        }
        const double c = 1.0 / std::sqrt(1.0 + t * t), s = t * c;
        // A <- A J (columns p, q), then A <- J^T A (rows p, q).
        for (int k = 0; k < n; k++) {
          const double akp = A[(size_t)k * n + p], akq = A[(size_t)k * n + q];
          A[(size_t)k * n + p] = c * akp - s * akq;
          A[(size_t)k * n + q] = s * akp + c * akq;
        }
        for (int k = 0; k < n; k++) {
          const double apk = A[(size_t)p * n + k], aqk = A[(size_t)q * n + k];
          A[(size_t)p * n + k] = c * apk - s * aqk;
          A[(size_t)q * n + k] = s * apk + c * aqk;
        }
        A[(size_t)p * n + q] = 0.0;
        A[(size_t)q * n + p] = 0.0;
        for (int k = 0; k < n; k++) {
          const double vkp = V[(size_t)k * n + p], vkq = V[(size_t)k * n + q];
          V[(size_t)k * n + p] = c * vkp - s * vkq;
          V[(size_t)k * n + q] = s * vkp + c * vkq;
        }
      }
    }
  }

  // Descending eigenvalues; stable sort keeps equal eigenvalues in a reproducible order.
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int i, int j) {
    return A[(size_t)i * n + i] > A[(size_t)j * n + j];
  });
  for (int r = 0; r < n; r++) {
    const int col = order[r];
    eigenvalues[r] = A[(size_t)col * n + col];
    // Sign convention: the first largest-magnitude component is positive.
    int imax = 0;
    for (int k = 1; k < n; k++)
      if (std::fabs(V[(size_t)k * n + col]) > std::fabs(V[(size_t)imax * n + col])) imax = k;
    const double sign = V[(size_t)imax * n + col] < 0.0 ? -1.0 : 1.0;
    for (int k = 0; k < n; k++) vecs[(size_t)r * n + k] = sign * V[(size_t)k * n + col];
  }
}

void patch_covariance(const float* x, int n, int H, int W, int C, int R, double* cov) {
  if (n < 1 || R < 1 || H < R || W < R || C < 1)
    throw std::invalid_argument("patch_covariance: need n >= 1 and images at least R x R");
  const int D = C * R * R;
  const int Ho = H - R + 1, Wo = W - R + 1;
  const double count = (double)n * Ho * Wo;
  if (count < 2.0) throw std::invalid_argument("patch_covariance: need at least 2 patches");

  // One output row of patches at a time: P [Wo][D] in double, then the upper triangle of
  // acc += P^T P as row updates (the inner j loop is contiguous and vectorises). About 0.7 s
  // single-threaded for the recipe's 10,000 32x32x3 images (9M patches).
  std::vector<double> acc((size_t)D * D, 0.0);
  std::vector<double> P((size_t)Wo * D);
  for (int img = 0; img < n; img++) {
    const float* xi = x + (size_t)img * H * W * C;
    for (int oy = 0; oy < Ho; oy++) {
      for (int ox = 0; ox < Wo; ox++) {
        double* p = &P[(size_t)ox * D];
        for (int ky = 0; ky < R; ky++)
          for (int kx = 0; kx < R; kx++)
            for (int c = 0; c < C; c++)
              p[c * R * R + ky * R + kx] = xi[((size_t)(oy + ky) * W + (ox + kx)) * C + c];
      }
      // Four patches per pass over acc: one load/store of acc per four multiply-adds.
      int ox = 0;
      for (; ox + 4 <= Wo; ox += 4) {
        const double* p0 = &P[(size_t)ox * D];
        const double *p1 = p0 + D, *p2 = p0 + 2 * D, *p3 = p0 + 3 * D;
        for (int i = 0; i < D; i++) {
          const double a0 = p0[i], a1 = p1[i], a2 = p2[i], a3 = p3[i];
          double* row = &acc[(size_t)i * D];
          for (int j = i; j < D; j++) row[j] += a0 * p0[j] + a1 * p1[j] + a2 * p2[j] + a3 * p3[j];
        }
      }
      for (; ox < Wo; ox++) {
        const double* p = &P[(size_t)ox * D];
        for (int i = 0; i < D; i++) {
          const double pi = p[i];
          double* row = &acc[(size_t)i * D];
          for (int j = i; j < D; j++) row[j] += pi * p[j];
        }
      }
    }
  }
  for (int i = 0; i < D; i++) {
    for (int j = i; j < D; j++) {
      const double v = acc[(size_t)i * D + j] / (count - 1.0);
      cov[(size_t)i * D + j] = v;
      cov[(size_t)j * D + i] = v;
    }
  }
}

void whitening_filters(const float* x, int n, int H, int W, int C, int R, float eps, float* w) {
  const int D = C * R * R;
  std::vector<double> cov((size_t)D * D), lambda(D), V((size_t)D * D);
  patch_covariance(x, n, H, W, C, R, cov.data());
  symmetric_eigen(cov.data(), D, lambda.data(), V.data());
  // Filter i in KRSC: w[i][ky][kx][c] = V_i[(c, ky, kx)] / sqrt(lambda_i + eps).
  for (int i = 0; i < D; i++) {
    const double scale = 1.0 / std::sqrt(lambda[i] + (double)eps);
    for (int ky = 0; ky < R; ky++)
      for (int kx = 0; kx < R; kx++)
        for (int c = 0; c < C; c++)
          w[(((size_t)i * R + ky) * R + kx) * C + c] =
              (float)(V[(size_t)i * D + c * R * R + ky * R + kx] * scale);
  }
}

}  // namespace ref
