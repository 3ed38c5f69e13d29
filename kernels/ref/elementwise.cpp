// CPU reference of the elementwise ops (CELU, residual add, scale).
#include "kernels/ref/elementwise.h"

#include <cmath>

namespace ref {

void celu_forward(const float* x, float* y, long n, float alpha) {
  for (long i = 0; i < n; ++i)
    y[i] = x[i] > 0.0f ? x[i] : alpha * std::expm1(x[i] / alpha);  // expm1: exact near 0
}

void celu_backward(const float* x, const float* dy, float* dx, long n, float alpha) {
  for (long i = 0; i < n; ++i) dx[i] = x[i] > 0.0f ? dy[i] : dy[i] * std::exp(x[i] / alpha);
}

void add(const float* a, const float* b, float* y, long n) {
  for (long i = 0; i < n; ++i) y[i] = a[i] + b[i];
}

void scale(const float* x, float* y, long n, float s) {
  for (long i = 0; i < n; ++i) y[i] = s * x[i];
}

}  // namespace ref
