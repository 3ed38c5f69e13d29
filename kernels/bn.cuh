// GPU fused max-pool + ghost batch norm + CELU (+ residual add), forward and backward.
// CPU reference: kernels/ref/pool.h, ghost_bn.h, elementwise.h (composed).
//
// Forward (training), per conv output x [N][H][W][C] fp16:
//   p   = maxpool_P(x)                    [N][H/P][W/P][C]  (P = 1: no pool, p = x)
//   per group g of `group` images: mean_g, var_g (biased) over images x pixels, fp32
//   out = celu((p - mean_g) * invstd_g + bias, alpha) (+ residual)
// Saved for backward: p (when P > 1; the caller's buffer), save_mean / save_invstd [G][C].
// Running statistics [G][C] updated in PyTorch convention (unbiased variance).
// C must be even (channel pairs are accessed as half2) and fp16 tensors 4-byte aligned.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kernels {

struct GhostBnCeluShape {
  int N, H, W, C;  // conv output (before pooling)
  int P;           // pool window and stride: 1 (none) or 2
  int group;       // images per BN group; N % group == 0
  int groups() const { return N / group; }
  int Ho() const { return H / P; }
  int Wo() const { return W / P; }
};

struct GhostBnCeluParams {
  float eps, momentum, alpha;
  // Use the 8-channels-per-thread kernels where the shape and alignment allow (C % 8 == 0,
  // C <= 2048, tensors 16-byte aligned; the argmax 8-byte aligned); false forces the
  // two-channel kernels, which take any even C and 4-byte alignment. Same math either way; the
  // statistics' sums are added in a different order.
  bool vectorized = true;
};

// Scratch the forward and backward need, from the arena: fp32 per-block partial sums of the
// statistics ([slices][G][C][2]) and their totals ([G][C][2]). The kernels write every slot they
// read (no zeroing needed) and add the partials in a fixed order, so the results are bitwise
// reproducible (no atomics). 16-byte aligned. One scratch may serve every layer in turn (its
// contents do not outlive a call), given calls on one stream.
size_t ghost_bn_celu_scratch_bytes(const GhostBnCeluShape& s);

// pooled is written only when P > 1 (with P == 1 it is ignored: pass x or null).
// residual (may be null) has the output's shape. running_* may be null (not updated).
void pool_bn_celu_forward_train(const __half* x, __half* pooled, const float* bias,
                                const __half* residual, __half* out, float* save_mean,
                                float* save_invstd, float* running_mean, float* running_var,
                                float* scratch, const GhostBnCeluShape& s,
                                const GhostBnCeluParams& prm, cudaStream_t stream);

// Evaluation: statistics mean/var [C] (averaged over groups); no state is changed; any N
// (s.group is not used). pooled_scratch [N][Ho][Wo][C] receives the pooled input when P > 1;
// it may be null (one pass pools on the fly) and is ignored when P == 1.
void pool_bn_celu_forward_eval(const __half* x, __half* pooled_scratch, const float* bias,
                               const float* mean, const float* var, const __half* residual,
                               __half* out, const GhostBnCeluShape& s,
                               const GhostBnCeluParams& prm, cudaStream_t stream);

// Backward. dout [N][Ho][Wo][C]; dout2 (may be null) is added to dout first (the residual
// branch's gradient). Writes dx [N][H][W][C] (zeros where the pool did not pick) and
// dbias [C] fp32 (overwritten). x, pooled, save_* as saved by the forward (pooled is ignored
// when P == 1: the pooled values are x).
void pool_bn_celu_backward(const __half* dout, const __half* dout2, const __half* x,
                           const __half* pooled, const float* bias, const float* save_mean,
                           const float* save_invstd, __half* dx, float* dbias, float* scratch,
                           const GhostBnCeluShape& s, const GhostBnCeluParams& prm,
                           cudaStream_t stream);

// ---- with the fused conv + 2x2 max-pool forward (kernels/conv/implicit_gemm.cuh,
// conv_forward_igemm_pool), which writes the pooled tensor, a uint8 argmax per pooled value and
// the per-group sums of the pooled values and of their squares:

// Training forward from those sums: save_mean/save_invstd [G][C], running statistics, and
// out = celu((pooled - mean) * invstd + bias) (+ residual). s is the conv output's shape (P is
// 1 or 2; only pix_per_group and the pooled sizes are used); sum, sumsq [G][C] fp32 over the
// pooled values of each group. Same math as pool_bn_celu_forward_train up to the order of the
// statistics' sums (fp32 rounding).
void bn_celu_forward_train_from_sums(const __half* pooled, const float* sum, const float* sumsq,
                                     const float* bias, const __half* residual, __half* out,
                                     float* save_mean, float* save_invstd, float* running_mean,
                                     float* running_var, const GhostBnCeluShape& s,
                                     const GhostBnCeluParams& prm, cudaStream_t stream);

// pool_bn_celu_backward with the window positions read from argmax [N][Ho][Wo][C] (dy * 2 + dx
// of the first maximum) and the pooled values from `pooled`, so the conv output is not
// re-read. s.P must be 2. dx and dbias are bitwise those of pool_bn_celu_backward when argmax
// holds the first-maximum positions of x.
void pool_bn_celu_backward_argmax(const __half* dout, const __half* dout2, const __half* pooled,
                                  const uint8_t* argmax, const float* bias,
                                  const float* save_mean, const float* save_invstd, __half* dx,
                                  float* dbias, float* scratch, const GhostBnCeluShape& s,
                                  const GhostBnCeluParams& prm, cudaStream_t stream);

// ---- with the input gradient that produces dout accumulating the backward's sums in its
// epilogue (conv_backward_data_igemm_bn_sums / _wgmma_bn_sums, kernels/conv/):

// pool_bn_celu_backward (argmax null: the window maxima of x are recomputed) or
// pool_bn_celu_backward_argmax (argmax given: pooled and argmax are read, x is not) with the
// per-group sums given instead of computed: sum_dz, sum_dzx [G][C] fp32, sum(dz) and
// sum(dz * xhat) over each group's pooled values, dz = (dout + dout2) * celu'(xhat + bias). The
// statistics pass over dout, dout2 and the pooled values is skipped, and no scratch is needed.
// dx and dbias equal those of the two launchers above up to the order of the sums (fp32
// rounding).
void pool_bn_celu_backward_from_sums(const __half* dout, const __half* dout2, const __half* x,
                                     const __half* pooled, const uint8_t* argmax,
                                     const float* sum_dz, const float* sum_dzx, const float* bias,
                                     const float* save_mean, const float* save_invstd, __half* dx,
                                     float* dbias, const GhostBnCeluShape& s,
                                     const GhostBnCeluParams& prm, cudaStream_t stream);

// Averages per-group running statistics [G][C] into [C] (for evaluation).
void bn_average_groups(const float* per_group, float* avg, int G, int C, cudaStream_t stream);

namespace bn_detail {

// Threads per block of the vectorised kernels (kernels/bn.cu).
constexpr int kVecThreads = 256;

// The vectorised statistics kernels' block reduction (kernels/bn.cu, vec_store_partials): thread
// t (channel vector t % CV, pixel row t / CV) puts its 16 sums (8 channels, two sums each) into
// shared-memory slot t, kVecRedSlot floats apart, and sum j at vec_red_offset(t, j). 17 and not
// 16: a warp's store of sum j then hits 32 different banks, t * 17 running through every
// residue mod 32 for 32 consecutive t, whatever C; with 16, every even thread's slot started on
// bank 0 and every odd one's on bank 16, a 16-way conflict for each of a thread's 16 stores.
constexpr int kVecRedSlot = 17;
__host__ __device__ constexpr int vec_red_offset(int thread, int j) { return thread * kVecRedSlot + j; }

}  // namespace bn_detail
}  // namespace kernels
