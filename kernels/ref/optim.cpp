// CPU reference of the recipe's SGD-Nesterov step, weight EMA and lr schedule.
#include "kernels/ref/optim.h"

#include <cassert>

namespace ref {

void sgd_nesterov_step(float* w, float* g, float* v, long n, float lr, float wd, float momentum) {
  for (long i = 0; i < n; ++i) {
    g[i] += wd * w[i];
    g[i] *= -lr;
    v[i] = momentum * v[i] + g[i];
    w[i] += g[i] + momentum * v[i];
  }
}

void ema_update(float* ema, const float* w, long n, float rho) {
  for (long i = 0; i < n; ++i) ema[i] = rho * ema[i] + (1.0f - rho) * w[i];
}

// knots must be increasing.
float piecewise_linear(float t, const float* knots, const float* values, int count) {
  assert(count > 0);
  if (t <= knots[0]) return values[0];
  for (int i = 1; i < count; ++i) {
    if (t <= knots[i]) {
      const float f = (t - knots[i - 1]) / (knots[i] - knots[i - 1]);
      return values[i - 1] + f * (values[i] - values[i - 1]);
    }
  }
  return values[count - 1];
}

}  // namespace ref
