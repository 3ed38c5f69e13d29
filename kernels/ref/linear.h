// CPU reference: fully connected layer without bias, y = x W^T.
// x [N][In], w [Out][In] (PyTorch's layout), y [N][Out].
#pragma once

namespace ref {

void linear_forward(const float* x, const float* w, float* y, int N, int In, int Out);
// dx = dy W (overwritten); dw = dy^T x (overwritten). Either output may be null to skip it.
void linear_backward(const float* x, const float* w, const float* dy, float* dx, float* dw,
                     int N, int In, int Out);

}  // namespace ref
