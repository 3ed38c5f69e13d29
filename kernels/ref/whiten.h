// CPU reference: the fixed whitening filters of the ResNet-9 "prep" layer.
//
// From n images x [n][H][W][C] (normalised, NHWC) take every R x R patch that fits (no padding),
// as a vector of D = C*R*R values ordered (c, ky, kx) like PyTorch's unfold of NCHW data.
// Covariance S = X^T X / (count - 1) (not mean-centred, as in the published code).
// Eigen-decomposition S = V diag(lambda) V^T; filter i = V_i / sqrt(lambda_i + eps), eigenvalues
// in descending order. Filters are returned in our conv layout [D][R][R][C] (KRSC), K = D.
#pragma once

namespace ref {

// Symmetric eigensolver (cyclic Jacobi). a [n][n] symmetric (not modified). Writes
// eigenvalues [n] in descending order and eigenvectors as rows of vecs [n][n]
// (vecs[i] belongs to eigenvalues[i]); each eigenvector's sign is fixed so its largest-magnitude
// component is positive, so results are reproducible.
void symmetric_eigen(const double* a, int n, double* eigenvalues, double* vecs);

// Patch covariance [D][D], D = C*R*R, ordered (c, ky, kx).
void patch_covariance(const float* x, int n, int H, int W, int C, int R, double* cov);

// Whitening filters w [D][R][R][C] from images (n of them; the recipe uses 10,000).
void whitening_filters(const float* x, int n, int H, int W, int C, int R, float eps, float* w);

}  // namespace ref
