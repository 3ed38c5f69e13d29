// CPU reference: elementwise ops of the ResNet-9 (any layout; n elements).
#pragma once

namespace ref {

// CELU: y = x for x > 0, alpha * (exp(x / alpha) - 1) otherwise. The recipe uses alpha = 0.3.
void celu_forward(const float* x, float* y, long n, float alpha);
// dx = dy * (x > 0 ? 1 : exp(x / alpha)). Takes the CELU input x. Overwrites dx.
void celu_backward(const float* x, const float* dy, float* dx, long n, float alpha);
// y = a + b (residual add; its backward passes dy to both branches unchanged).
void add(const float* a, const float* b, float* y, long n);
// y = s * x.
void scale(const float* x, float* y, long n, float s);

}  // namespace ref
