// CPU reference: the recipe's optimiser and weight averaging, for n parameters.
#pragma once

namespace ref {

// SGD with Nesterov momentum in the form of the "How to train your ResNet" code:
//   g += wd * w;  g *= -lr;  v = momentum * v + g;  w += g + momentum * v
// g is used as scratch (it holds -lr * (g + wd*w) afterwards).
void sgd_nesterov_step(float* w, float* g, float* v, long n, float lr, float wd, float momentum);

// Exponential moving average: ema = rho * ema + (1 - rho) * w.
void ema_update(float* ema, const float* w, long n, float rho);

// Piecewise-linear schedule through (knots[i], values[i]), constant beyond the ends.
float piecewise_linear(float t, const float* knots, const float* values, int count);

}  // namespace ref
