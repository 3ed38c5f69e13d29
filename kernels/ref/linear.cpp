// CPU reference fully connected layer (no bias) on top of ref::gemm.
// x [N][In], w [Out][In], y [N][Out], all row-major.
#include "kernels/ref/linear.h"

#include "kernels/ref/conv.h"

namespace ref {

void linear_forward(const float* x, const float* w, float* y, int N, int In, int Out) {
  // y[N][Out] = x[N][In] w^T
  gemm(false, true, N, Out, In, x, w, y, false);
}

void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                     int N, int In, int Out) {
  // dx[N][In] = dy[N][Out] w[Out][In]
  if (dx) gemm(false, false, N, In, Out, dy, w, dx, false);
  // dw[Out][In] = dy^T[Out][N] x[N][In]
  if (dw) gemm(true, false, Out, In, N, dy, x, dw, false);
}

}  // namespace ref
