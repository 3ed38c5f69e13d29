// CPU reference max-pool, window P x P, stride P, NHWC: x [N][H][W][C] -> y [N][H/P][W/P][C].
#include "kernels/ref/pool.h"

#include <algorithm>
#include <cassert>
#include <cmath>

namespace ref {

namespace {

// Offset into x of the maximum of window (n, ho, wo) for channel c. The window is scanned in
// row-major order and only a strictly larger value replaces the current one, so ties go to
// the first position; a NaN wins (and then stays) so it propagates like in PyTorch.
long argmax_window(const float* x, int n, int ho, int wo, int c, int H, int W, int C, int P) {
  long best = (((long)n * H + (long)ho * P) * W + (long)wo * P) * C + c;
  float best_v = x[best];
  for (int i = 0; i < P; ++i) {
    for (int j = 0; j < P; ++j) {
      const long idx = (((long)n * H + (long)ho * P + i) * W + (long)wo * P + j) * C + c;
      const float v = x[idx];
      if (std::isnan(best_v)) return best;
      if (v > best_v || std::isnan(v)) {
        best_v = v;
        best = idx;
      }
    }
  }
  return best;
}

}  // namespace

void maxpool_forward(const float* x, float* y, int N, int H, int W, int C, int P) {
  assert(H % P == 0 && W % P == 0);
  const int Ho = H / P, Wo = W / P;
  for (int n = 0; n < N; ++n)
    for (int ho = 0; ho < Ho; ++ho)
      for (int wo = 0; wo < Wo; ++wo)
        for (int c = 0; c < C; ++c)
          y[(((long)n * Ho + ho) * Wo + wo) * C + c] =
              x[argmax_window(x, n, ho, wo, c, H, W, C, P)];
}

void maxpool_backward(const float* x, const float* dy, float* dx, int N, int H, int W, int C,
                      int P) {
  assert(H % P == 0 && W % P == 0);
  const int Ho = H / P, Wo = W / P;
  std::fill(dx, dx + (long)N * H * W * C, 0.0f);
  // Windows do not overlap (stride = window), so each x position receives at most one dy.
  for (int n = 0; n < N; ++n)
    for (int ho = 0; ho < Ho; ++ho)
      for (int wo = 0; wo < Wo; ++wo)
        for (int c = 0; c < C; ++c)
          dx[argmax_window(x, n, ho, wo, c, H, W, C, P)] =
              dy[(((long)n * Ho + ho) * Wo + wo) * C + c];
}

}  // namespace ref
