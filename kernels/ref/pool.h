// CPU reference: max-pool with window P x P and stride P (P = 2 in the layers, 4 in the head).
// Layouts: x [N][H][W][C] -> y [N][H/P][W/P][C]; H and W must be multiples of P.
#pragma once

namespace ref {

void maxpool_forward(const float* x, float* y, int N, int H, int W, int C, int P);
// Routes dy to the position of the maximum of each window (the first one on ties, scanning
// rows then columns), like PyTorch. dx is overwritten (zeros elsewhere).
void maxpool_backward(const float* x, const float* dy, float* dx, int N, int H, int W, int C,
                      int P);

}  // namespace ref
