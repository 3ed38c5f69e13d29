// CPU reference of ghost batch norm (scale frozen at 1). See ghost_bn.h for the layout.
//
// Per-group statistics are accumulated in double: a group holds group*HW values per channel
// (32 * 1024 = 32768 for the prep layer), enough for fp32 sums to lose digits, and this code is
// the oracle the GPU kernels are compared against.
#include "kernels/ref/ghost_bn.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <vector>

namespace ref {

void ghost_bn_forward_train(const float* x, const float* bias, float* y, float* save_mean,
                            float* save_invstd, float* running_mean, float* running_var,
                            const GhostBNShape& s, float eps, float momentum) {
  assert(s.group > 0 && s.N % s.group == 0);
  const int C = s.C;
  const long n = (long)s.group * s.HW;  // values per channel in one group
  const long group_stride = n * C;      // a group is a contiguous block of group images
  std::vector<double> mean(C), var(C), invstd(C);
  for (int g = 0; g < s.groups(); ++g) {
    const float* xg = x + g * group_stride;
    float* yg = y + g * group_stride;
    // Two passes (mean, then centred squares): no cancellation for data with a large offset.
    std::fill(mean.begin(), mean.end(), 0.0);
    std::fill(var.begin(), var.end(), 0.0);
    for (long i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) mean[c] += xg[i * C + c];
    for (int c = 0; c < C; ++c) mean[c] /= (double)n;
    for (long i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) {
        const double d = xg[i * C + c] - mean[c];
        var[c] += d * d;
      }
    for (int c = 0; c < C; ++c) {
      var[c] /= (double)n;  // biased variance normalises the batch
      invstd[c] = 1.0 / std::sqrt(var[c] + (double)eps);
      save_mean[g * C + c] = (float)mean[c];
      save_invstd[g * C + c] = (float)invstd[c];
    }
    for (long i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c)
        yg[i * C + c] = (float)((xg[i * C + c] - mean[c]) * invstd[c] + (double)bias[c]);
    if (running_mean && running_var) {
      assert(n > 1);  // the unbiased variance needs two values
      for (int c = 0; c < C; ++c) {
        const double unbiased = var[c] * (double)n / (double)(n - 1);
        float& rm = running_mean[g * C + c];
        float& rv = running_var[g * C + c];
        rm = (float)((1.0 - momentum) * rm + (double)momentum * mean[c]);
        rv = (float)((1.0 - momentum) * rv + (double)momentum * unbiased);
      }
    }
  }
}

void ghost_bn_forward_eval(const float* x, const float* bias, const float* mean,
                           const float* var, float* y, int N, int HW, int C, float eps) {
  std::vector<double> invstd(C);
  for (int c = 0; c < C; ++c) invstd[c] = 1.0 / std::sqrt((double)var[c] + (double)eps);
  const long pixels = (long)N * HW;
  for (long i = 0; i < pixels; ++i)
    for (int c = 0; c < C; ++c)
      y[i * C + c] = (float)((x[i * C + c] - (double)mean[c]) * invstd[c] + (double)bias[c]);
}

void ghost_bn_average_groups(const float* per_group, float* avg, int G, int C) {
  for (int c = 0; c < C; ++c) {
    double sum = 0.0;
    for (int g = 0; g < G; ++g) sum += per_group[g * C + c];
    avg[c] = (float)(sum / G);
  }
}

// With the scale frozen at 1 and y = xhat + bias, xhat = (x - mean_g) * invstd:
//   dx = invstd * (dy - mean_g(dy) - xhat * mean_g(dy * xhat)),  dbias = sum over N*HW of dy.
void ghost_bn_backward(const float* dy, const float* x, const float* save_mean,
                       const float* save_invstd, float* dx, float* dbias, const GhostBNShape& s) {
  assert(s.group > 0 && s.N % s.group == 0);
  const int C = s.C;
  const long n = (long)s.group * s.HW;
  const long group_stride = n * C;
  std::vector<double> dbias_acc(C, 0.0), mean_dy(C), mean_dy_xhat(C);
  for (int g = 0; g < s.groups(); ++g) {
    const float* xg = x + g * group_stride;
    const float* dyg = dy + g * group_stride;
    float* dxg = dx + g * group_stride;
    const float* mu = save_mean + g * C;
    const float* is = save_invstd + g * C;
    std::fill(mean_dy.begin(), mean_dy.end(), 0.0);
    std::fill(mean_dy_xhat.begin(), mean_dy_xhat.end(), 0.0);
    for (long i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) {
        const double xhat = ((double)xg[i * C + c] - mu[c]) * is[c];
        mean_dy[c] += dyg[i * C + c];
        mean_dy_xhat[c] += dyg[i * C + c] * xhat;
      }
    for (int c = 0; c < C; ++c) {
      dbias_acc[c] += mean_dy[c];
      mean_dy[c] /= (double)n;
      mean_dy_xhat[c] /= (double)n;
    }
    for (long i = 0; i < n; ++i)
      for (int c = 0; c < C; ++c) {
        const double xhat = ((double)xg[i * C + c] - mu[c]) * is[c];
        dxg[i * C + c] =
            (float)(is[c] * (dyg[i * C + c] - mean_dy[c] - xhat * mean_dy_xhat[c]));
      }
  }
  for (int c = 0; c < C; ++c) dbias[c] = (float)dbias_acc[c];
}

}  // namespace ref
