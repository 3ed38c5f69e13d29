// CPU reference: 2-D convolution, stride 1, "same" padding, no bias. fp32, NHWC.
//
// Layouts (all dense, row-major):
//   x  [N][H][W][C]      input activations
//   w  [K][R][R][C]      filters (cuDNN's KRSC order for NHWC tensors); R is 1 or 3
//   y  [N][H][W][K]      output, pad = (R - 1) / 2 so spatial size is unchanged
// Implemented as im2col + a cache-blocked GEMM so the tests stay quick.
#pragma once

namespace ref {

struct ConvShape {
  int N, H, W, C;  // input
  int K;           // output channels
  int R;           // filter size (1 or 3), odd
  int pad() const { return (R - 1) / 2; }
  long x_size() const { return (long)N * H * W * C; }
  long y_size() const { return (long)N * H * W * K; }
  long w_size() const { return (long)K * R * R * C; }
  // Multiply-adds of the forward pass (each of the three passes costs the same).
  double macs() const { return (double)N * H * W * K * R * R * C; }
};

// y = conv(x, w). Overwrites y.
void conv_forward(const float* x, const float* w, float* y, const ConvShape& s);
// dx = d loss / d x given dy. Overwrites dx. Computed as
//   dx = conv_forward(dy, wt) over the shape {N, H, W, K, C, R} (channels swapped), with
//   wt = conv_flip_transpose_weights(w): the same identity the GPU input gradient uses.
void conv_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s);
// wt[c][r][q][k] = w[k][R-1-r][R-1-q][c]: filters [K][R][R][C] -> [C][R][R][K], flipped in
// space. dx[n][h][v][c] = sum_{r,q,k} dy[n][h + r - pad][v + q - pad][k] * wt[c][r][q][k].
void conv_flip_transpose_weights(const float* w, float* wt, const ConvShape& s);
// dw = d loss / d w given x and dy. Overwrites dw.
void conv_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s);

// C[M][N] (+)= A[M][K] * B[K][N] (row-major; trans flags transpose the stored operand).
// Cache-blocked; used by conv and linear. accumulate=false overwrites C.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, const float* B,
          float* C, bool accumulate);

}  // namespace ref
