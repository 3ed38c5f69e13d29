// GPU fused max-pool + ghost batch norm + CELU (+ residual), forward and backward.
// See kernels/bn.cuh for the math and the layouts.
//
// Training forward = pool_stats (pool, per-slice partial sums per group) -> finalize (slice sums
// in a fixed order; mean, invstd, running stats) -> apply (normalise, bias, CELU, residual).
// Backward = backward_stats (per-slice partial sums of dz and dz * xhat) -> backward_totals
// (slice sums in a fixed order) -> dbias -> backward_apply (dx, routed through the pool).
//
// Determinism: no atomics. Each statistics block writes its partial sums to its own scratch
// slot and a second kernel adds the slots in a fixed order, so a step gives bitwise the same
// result every run. (fp32 atomics made the sums depend on block timing; differences of ~1e-7
// then flipped fp16 roundings and max-pool choices downstream, and the whole step's gradients
// differed by percents from run to run: see tests/resnet9_gpu_test.cu.)
//
// Threads own channel pairs (half2) so a warp reads 64 consecutive channels (128 bytes) of
// one pixel: C must be even. Statistics are fp32; the forward sums are shifted by one sample
// of the group (its first value) so that var = E[(x-K)^2] - E[x-K]^2 does not cancel when the
// mean is large compared to the spread.
#include "kernels/bn.cuh"

#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "kernels/bn_math.cuh"
#include "kernels/common.cuh"

namespace kernels {

namespace {

// Statistics kernels: block (32, 8); x covers 32 channel pairs, y covers 8 pixels; grid
// (channel tiles, groups, slices of the group's pixels).
constexpr int kStatX = 32, kStatY = 8;
constexpr int kPairsPerTile = kStatX;  // 64 channels per block
// Aim for about this many pixels per thread in the statistics kernels.
constexpr int kPixelsPerThread = 32;
constexpr int kMaxSlices = 65535;  // grid z limit

struct Geometry {
  int N, H, W, C, P, group, Ho, Wo;
  int pix_per_group;  // group * Ho * Wo (values per channel in one group)
};

// The per-value arithmetic (bn_xhat, bn_dz, bn_dp, each rounding explicit) is in
// kernels/bn_math.cuh, shared with the conv epilogue that accumulates the backward's sums.

Geometry geometry(const GhostBnCeluShape& s) {
  Geometry g;
  g.N = s.N;
  g.H = s.H;
  g.W = s.W;
  g.C = s.C;
  g.P = s.P;
  g.group = s.group;
  g.Ho = s.Ho();
  g.Wo = s.Wo();
  g.pix_per_group = s.group * g.Ho * g.Wo;
  return g;
}

// Max over the P x P window of x for the pooled pixel (img, oy, ox), channels c, c+1. With
// P == 1 it is the value itself. `arg` receives the window position (ky * P + kx) of the
// first maximum scanning rows then columns (ref::maxpool_backward's tie rule).
__device__ __forceinline__ float2 window_max(const __half* __restrict__ x, const Geometry& g,
                                             long img, int oy, int ox, int c, int* arg0,
                                             int* arg1) {
  float2 best = make_float2(0.0f, 0.0f);
  int a0 = 0, a1 = 0;
  for (int ky = 0; ky < g.P; ky++)
    for (int kx = 0; kx < g.P; kx++) {
      const long off = ((img * g.H + (long)oy * g.P + ky) * g.W + (long)ox * g.P + kx) * g.C + c;
      const float2 v = load_half2(x + off);
      const int pos = ky * g.P + kx;
      if (pos == 0 || v.x > best.x) {
        best.x = v.x;
        a0 = pos;
      }
      if (pos == 0 || v.y > best.y) {
        best.y = v.y;
        a1 = pos;
      }
    }
  *arg0 = a0;
  *arg1 = a1;
  return best;
}

// Scratch layout (fp32, see ghost_bn_celu_scratch_bytes):
//   partial [slices][G][C][2]  one slot per statistics block (grid z = slice), no atomics
//   totals  [G][C][2]          backward only: the slices summed in a fixed order
// [..][c][0..1] are the two sums of channel c; a block's channel pair (c, c + 1) owns 4
// consecutive floats at a multiple of 4 (c even): one float4 store.
__device__ __forceinline__ void store_pair_sums(float* __restrict__ partial, const Geometry& g,
                                                int grp, int c, float4 t) {
  const int G = g.N / g.group;
  float* dst = partial + (((long)blockIdx.z * G + grp) * g.C + c) * 2;
  // (sum, sum2) of channel c, then of channel c + 1.
  *reinterpret_cast<float4*>(dst) = make_float4(t.x, t.z, t.y, t.w);
}

// Sum of the 8 rows of red[][tx] (fixed order).
__device__ __forceinline__ float4 column_sum(float4 (*red)[kStatX], int tx) {
  float4 t = red[0][tx];
  for (int j = 1; j < kStatY; j++) {
    const float4 u = red[j][tx];
    t.x += u.x;
    t.y += u.y;
    t.z += u.z;
    t.w += u.w;
  }
  return t;
}

// Forward statistics. Pools (writes `pooled` when P > 1) and writes, per (slice, group,
// channel), the slice's sum(v - K) and sum((v - K)^2) to partial[slice][g][c][0..1],
// K = x[first pixel of group][c].
__global__ void __launch_bounds__(kStatX * kStatY)
    pool_stats_kernel(const __half* __restrict__ x, __half* __restrict__ pooled, Geometry g,
                      float* __restrict__ partial) {
  __shared__ float4 red[kStatY][kStatX];
  const int cp = blockIdx.x * kPairsPerTile + threadIdx.x;  // channel pair
  const int grp = blockIdx.y;
  const bool active = 2 * cp < g.C;
  const int c = 2 * cp;
  float2 s1 = make_float2(0.0f, 0.0f), s2 = make_float2(0.0f, 0.0f);
  if (active) {
    const float2 K = load_half2(x + (long)grp * g.group * g.H * g.W * g.C + c);
    const int HWo = g.Ho * g.Wo;
    for (int p = blockIdx.z * kStatY + threadIdx.y; p < g.pix_per_group; p += gridDim.z * kStatY) {
      const int q = p / HWo;
      const int r = p - q * HWo;
      const int img = grp * g.group + q;
      const int oy = r / g.Wo, ox = r - oy * g.Wo;
      int a0, a1;
      const float2 v = window_max(x, g, img, oy, ox, c, &a0, &a1);
      if (g.P > 1) store_half2(pooled + ((long)img * HWo + r) * g.C + c, v.x, v.y);
      // Statistics of the fp16 values the rest of the layer sees (pooled is stored in fp16,
      // and max of fp16 values is exact, so v is already representable).
      const float d0 = v.x - K.x, d1 = v.y - K.y;
      s1.x += d0;
      s1.y += d1;
      s2.x += d0 * d0;
      s2.y += d1 * d1;
    }
  }
  red[threadIdx.y][threadIdx.x] = make_float4(s1.x, s1.y, s2.x, s2.y);
  __syncthreads();
  if (threadIdx.y == 0 && active) store_pair_sums(partial, g, grp, c, column_sum(red, threadIdx.x));
}

// One thread per (group, channel): the slices' sums added in slice order (double), then mean,
// invstd, running statistics (PyTorch convention).
__global__ void finalize_stats_kernel(const __half* __restrict__ x, Geometry g, int slices,
                                      const float* __restrict__ partial, float* save_mean,
                                      float* save_invstd, float* running_mean, float* running_var,
                                      float eps, float momentum) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;  // grp * C + c
  const int G = g.N / g.group;
  if (i >= G * g.C) return;
  const int grp = i / g.C, c = i % g.C;
  const float K = __half2float(x[(long)grp * g.group * g.H * g.W * g.C + c]);
  double s1 = 0.0, s2 = 0.0;
  // Unrolled so the loads of several slices are in flight at once; the adds stay in order.
#pragma unroll 8
  for (int z = 0; z < slices; z++) {
    const float* src = partial + ((long)z * G * g.C + i) * 2;
    s1 += (double)src[0];
    s2 += (double)src[1];
  }
  const double n = (double)g.pix_per_group;
  const double m1 = s1 / n;        // E[v - K]
  double var = s2 / n - m1 * m1;  // biased
  if (var < 0.0) var = 0.0;
  const float mean = (float)(K + m1);
  save_mean[i] = mean;
  save_invstd[i] = (float)(1.0 / sqrt(var + (double)eps));
  if (running_mean != nullptr && running_var != nullptr) {
    const double unbiased = n > 1.0 ? var * n / (n - 1.0) : var;
    running_mean[i] = (float)((1.0 - momentum) * running_mean[i] + (double)momentum * mean);
    running_var[i] = (float)((1.0 - momentum) * running_var[i] + (double)momentum * unbiased);
  }
}

// As finalize_stats_kernel, from plain per-group sums [G][C] of the values and of their
// squares (the fused conv + max-pool forward's epilogue, kernels/conv/implicit_gemm.cuh), not
// shifted: var = E[v^2] - E[v]^2 in double. The sums themselves are fp32; with conv outputs
// whose mean is within a few standard deviations of zero the cancellation costs a few bits of
// the variance, far below the fp16 the normalised values are stored in.
__global__ void finalize_from_sums_kernel(const float* __restrict__ sum, const float* __restrict__ sumsq,
                                          int GC, double n, float* save_mean, float* save_invstd,
                                          float* running_mean, float* running_var, float eps,
                                          float momentum) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;  // grp * C + c
  if (i >= GC) return;
  const double mean = (double)sum[i] / n;
  double var = (double)sumsq[i] / n - mean * mean;  // biased
  if (var < 0.0) var = 0.0;
  save_mean[i] = (float)mean;
  save_invstd[i] = (float)(1.0 / sqrt(var + (double)eps));
  if (running_mean != nullptr && running_var != nullptr) {
    const double unbiased = n > 1.0 ? var * n / (n - 1.0) : var;
    running_mean[i] = (float)((1.0 - momentum) * running_mean[i] + (double)momentum * mean);
    running_var[i] = (float)((1.0 - momentum) * running_var[i] + (double)momentum * unbiased);
  }
}

// out = celu((p - mean) * invstd + bias) (+ residual) over all pooled values, two channels per
// thread. p = window max of `in` with window P_in (1 when `in` is already pooled).
// kEval: statistics are mean/var [C]; otherwise mean/invstd per group [G][C].
// pooled_out (may be null) receives p when P_in > 1.
template <bool kEval>
__global__ void apply_kernel(const __half* __restrict__ in, Geometry g, __half* pooled_out,
                             const float* __restrict__ bias, const float* __restrict__ mean,
                             const float* __restrict__ stat2, float eps, float alpha,
                             const __half* __restrict__ residual, __half* __restrict__ out) {
  const int pairs = g.C / 2;
  const int total = g.N * g.Ho * g.Wo * pairs;  // < 2^30, checked by the launchers
  const int HWo = g.Ho * g.Wo;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const int pix = e / pairs;  // img * HWo + r
    const int c = 2 * (e - pix * pairs);
    const int img = pix / HWo;
    const int r = pix - img * HWo;
    const int oy = r / g.Wo, ox = r - oy * g.Wo;
    int a0, a1;
    const float2 v = window_max(in, g, img, oy, ox, c, &a0, &a1);
    const long off = (long)pix * g.C + c;
    if (pooled_out != nullptr && g.P > 1) store_half2(pooled_out + off, v.x, v.y);
    float m0, m1, is0, is1;
    if (kEval) {
      m0 = mean[c];
      m1 = mean[c + 1];
      is0 = 1.0f / sqrtf(stat2[c] + eps);
      is1 = 1.0f / sqrtf(stat2[c + 1] + eps);
    } else {
      const int s = (img / g.group) * g.C + c;
      m0 = mean[s];
      m1 = mean[s + 1];
      is0 = stat2[s];
      is1 = stat2[s + 1];
    }
    float y0 = celu(__fadd_rn(bn_xhat(v.x, m0, is0), bias[c]), alpha);
    float y1 = celu(__fadd_rn(bn_xhat(v.y, m1, is1), bias[c + 1]), alpha);
    if (residual != nullptr) {
      const float2 res = load_half2(residual + off);
      y0 += res.x;
      y1 += res.y;
    }
    store_half2(out + off, y0, y1);
  }
}

// Backward statistics: per (slice, group, channel) the slice's sum(dz) and sum(dz * xhat) to
// partial[slice][g][c][0..1], dz = (dout + dout2) * celu'(z), z = xhat + bias,
// xhat = (p - mean) * invstd.
__global__ void __launch_bounds__(kStatX * kStatY)
    backward_stats_kernel(const __half* __restrict__ dout, const __half* __restrict__ dout2,
                          const __half* __restrict__ p_in, Geometry g,
                          const float* __restrict__ bias, const float* __restrict__ save_mean,
                          const float* __restrict__ save_invstd, float alpha,
                          float* __restrict__ partial) {
  __shared__ float4 red[kStatY][kStatX];
  const int cp = blockIdx.x * kPairsPerTile + threadIdx.x;
  const int grp = blockIdx.y;
  const bool active = 2 * cp < g.C;
  const int c = 2 * cp;
  float2 sdz = make_float2(0.0f, 0.0f), sdzx = make_float2(0.0f, 0.0f);
  if (active) {
    const float m0 = save_mean[grp * g.C + c], m1 = save_mean[grp * g.C + c + 1];
    const float is0 = save_invstd[grp * g.C + c], is1 = save_invstd[grp * g.C + c + 1];
    const float b0 = bias[c], b1 = bias[c + 1];
    const long base = (long)grp * g.pix_per_group;  // first pooled pixel of the group
    for (int p = blockIdx.z * kStatY + threadIdx.y; p < g.pix_per_group; p += gridDim.z * kStatY) {
      const long off = (base + p) * g.C + c;
      float2 d = load_half2(dout + off);
      if (dout2 != nullptr) {
        const float2 d2 = load_half2(dout2 + off);
        d.x += d2.x;
        d.y += d2.y;
      }
      const float2 v = load_half2(p_in + off);
      const float xh0 = bn_xhat(v.x, m0, is0), xh1 = bn_xhat(v.y, m1, is1);
      const float dz0 = bn_dz(d.x, xh0, b0, alpha), dz1 = bn_dz(d.y, xh1, b1, alpha);
      sdz.x += dz0;
      sdz.y += dz1;
      sdzx.x += dz0 * xh0;
      sdzx.y += dz1 * xh1;
    }
  }
  red[threadIdx.y][threadIdx.x] = make_float4(sdz.x, sdz.y, sdzx.x, sdzx.y);
  __syncthreads();
  if (threadIdx.y == 0 && active) store_pair_sums(partial, g, grp, c, column_sum(red, threadIdx.x));
}

// One thread per (group, channel) and sum: totals[i] = sum over slices of partial[slice][i]
// (slice order, double), i over [G][C][2].
__global__ void backward_totals_kernel(const float* __restrict__ partial, long GC2, int slices,
                                       float* __restrict__ totals) {
  const long i = blockIdx.x * (long)blockDim.x + threadIdx.x;
  if (i >= GC2) return;
  double s = 0.0;
#pragma unroll 8
  for (int z = 0; z < slices; z++) s += (double)partial[(long)z * GC2 + i];
  totals[i] = (float)s;
}

// The backward's per-group sums, sum(dz) and sum(dz * xhat) of (group, channel) i = grp * C + c
// at dz[i * stride] and dzx[i * stride]: the totals above interleaved ({totals, totals + 1, 2})
// or two [G][C] arrays ({sum_dz, sum_dzx, 1}: the conv epilogue's, *_from_sums below).
struct BwdSums {
  const float* dz;
  const float* dzx;
  int stride;
  __device__ __forceinline__ float sum_dz(long i) const { return dz[i * stride]; }
  __device__ __forceinline__ float sum_dzx(long i) const { return dzx[i * stride]; }
};
BwdSums interleaved(const float* totals) { return {totals, totals + 1, 2}; }

// dbias[c] = sum over groups of sum(dz) (the bias gradient is the sum of dz over the batch).
__global__ void dbias_kernel(const BwdSums t, int G, int C, float* __restrict__ dbias) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int grp = 0; grp < G; grp++) s += t.sum_dz((long)grp * C + c);
  dbias[c] = s;
}

// dx for every pooled value (two channels per thread):
//   dp = invstd * (dz - sum(dz) / n - xhat * sum(dz * xhat) / n)
// then routed to the first maximum of its P x P window of x (zeros elsewhere); with P == 1,
// dx = dp. Every dx value is written exactly once since H, W are multiples of P.
// kArgmax: the pooled values come from `pooled` and the window positions from `argmax`
// ([N][Ho][Wo][C] uint8, dy * P + dx, as the fused conv + max-pool forward writes them), so the
// full-resolution x is not read at all; x is then unused. Same values, same positions (the
// same first-maximum rule), so dx is bitwise the same as without.
template <bool kArgmax>
__global__ void backward_apply_kernel(const __half* __restrict__ dout,
                                      const __half* __restrict__ dout2,
                                      const __half* __restrict__ x,
                                      const __half* __restrict__ pooled,
                                      const uint8_t* __restrict__ argmax, Geometry g,
                                      const float* __restrict__ bias,
                                      const float* __restrict__ save_mean,
                                      const float* __restrict__ save_invstd, float alpha,
                                      const BwdSums t, __half* __restrict__ dx) {
  const int pairs = g.C / 2;
  const int total = g.N * g.Ho * g.Wo * pairs;  // < 2^30, checked by the launcher
  const int HWo = g.Ho * g.Wo;
  const float inv_n = 1.0f / (float)g.pix_per_group;
  for (int e = blockIdx.x * blockDim.x + threadIdx.x; e < total; e += gridDim.x * blockDim.x) {
    const int pix = e / pairs;
    const int c = 2 * (e - pix * pairs);
    const int img = pix / HWo;
    const int r = pix - img * HWo;
    const int oy = r / g.Wo, ox = r - oy * g.Wo;
    const int s = (img / g.group) * g.C + c;
    const long off = (long)pix * g.C + c;
    int a0, a1;
    float2 v;
    if (kArgmax) {
      v = load_half2(pooled + off);
      const uchar2 a = *reinterpret_cast<const uchar2*>(argmax + off);
      a0 = a.x;
      a1 = a.y;
    } else {
      v = window_max(x, g, img, oy, ox, c, &a0, &a1);
    }
    float2 d = load_half2(dout + off);
    if (dout2 != nullptr) {
      const float2 d2 = load_half2(dout2 + off);
      d.x += d2.x;
      d.y += d2.y;
    }
    const float is0 = save_invstd[s], is1 = save_invstd[s + 1];
    const float xh0 = bn_xhat(v.x, save_mean[s], is0), xh1 = bn_xhat(v.y, save_mean[s + 1], is1);
    const float dz0 = bn_dz(d.x, xh0, bias[c], alpha);
    const float dz1 = bn_dz(d.y, xh1, bias[c + 1], alpha);
    const float dp0 = bn_dp(is0, dz0, xh0, t.sum_dz(s), t.sum_dzx(s), inv_n);
    const float dp1 = bn_dp(is1, dz1, xh1, t.sum_dz(s + 1), t.sum_dzx(s + 1), inv_n);
    for (int ky = 0; ky < g.P; ky++)
      for (int kx = 0; kx < g.P; kx++) {
        const int pos = ky * g.P + kx;
        const long dx_off =
            (((long)img * g.H + (long)oy * g.P + ky) * g.W + (long)ox * g.P + kx) * g.C + c;
        store_half2(dx + dx_off, pos == a0 ? dp0 : 0.0f, pos == a1 ? dp1 : 0.0f);
      }
  }
}

// ---- Vectorised kernels: 8 channels per thread (one 16-byte load or store per pixel).
//
// The two-channel kernels above spend most of their time on instructions, not memory: per
// channel pair they divide the element index into (image, y, x, channel), reload the per-channel
// statistics and issue 4-byte accesses (the H200 run measured them at a fraction of the memory
// bandwidth; docs/results/2026-11-26-h200-gpu-check). Here a thread keeps one 8-channel slice
// for its whole life: its statistics, bias and running sums stay in registers, it walks the
// pixels of one ghost-BN group with a fixed stride, and every access is 16 bytes. Used when
// C % 8 == 0, C <= 8 * kVecThreads and the tensors are 16-byte aligned (the recipe's layers);
// same math as the two-channel kernels (the apply and backward formulas are identical; the
// statistics' partial sums are added in a different fixed order).
//
// Block: kVecThreads threads; thread t owns channel vector cv = t % CV (CV = C / 8) and pixel
// row t / CV of rows = kVecThreads / CV rows; threads past rows * CV only join the barriers.
// Grid: (blocks over the group's pooled pixels, groups).
using bn_detail::kVecThreads;
constexpr int kVecPixelsPerThread = 16;  // statistics kernels: pixels per thread, about
constexpr int kVecApplyPixelsPerThread = 8;
// ... but at least this many statistics blocks per group where the group has a pixel row for
// each: at 16 pixels per thread layer3 and layer3_res (512 pooled pixels per group, 4 rows per
// block) ran 8 per group, 128 blocks for 132 SMs. More slices cost the finalize kernels a
// longer serial sum, so the large layers keep theirs.
constexpr int kVecMinSlices = 16;

struct VecLayout {
  int cv, row, rows;
  bool active;
};

__device__ __forceinline__ VecLayout vec_layout(int C) {
  VecLayout l;
  const int CV = C / 8;
  l.rows = kVecThreads / CV;
  l.cv = threadIdx.x % CV;
  l.row = threadIdx.x / CV;
  l.active = l.row < l.rows;
  return l;
}

__device__ __forceinline__ void load8_f32(const float* p, float (&f)[8]) {
#pragma unroll
  for (int i = 0; i < 8; i++) f[i] = p[i];
}

// Offset of the top-left input value of pooled pixel q (global pooled index img * HWo + r),
// channel c, in the unpooled tensor [N][H][W][C], for the kP x kP window (kP = g.P, 1 or 2: the
// launchers pick the instantiation, so the window loops unroll and their loads issue together).
template <int kP>
__device__ __forceinline__ long window_origin(const Geometry& g, long q, int c) {
  if (kP == 1) return q * g.C + c;
  const int HWo = g.Ho * g.Wo;
  const long img = q / HWo;
  const int r = (int)(q - img * HWo);
  const int oy = r / g.Wo, ox = r - oy * g.Wo;
  return ((img * g.H + (long)oy * kP) * g.W + (long)ox * kP) * g.C + c;
}

// The kP x kP window of one pooled pixel's 8 channels as loaded: raw[ky * kP + kx].
template <int kP>
struct Window8 {
  uint4 raw[kP * kP];
};

template <int kP>
__device__ __forceinline__ void load_window8(const __half* __restrict__ x, const Geometry& g, long origin,
                                             Window8<kP>& w) {
#pragma unroll
  for (int ky = 0; ky < kP; ky++)
#pragma unroll
    for (int kx = 0; kx < kP; kx++) w.raw[ky * kP + kx] = load_raw8(x + origin + ((long)ky * g.W + kx) * g.C);
}

// Max over the window, 8 channels. Returns the first maximum's window position (ky * kP + kx,
// ref::maxpool_backward's tie rule: scanning rows then columns, only a larger value replaces)
// of channel i in bits 4i..4i+3.
template <int kP>
__device__ __forceinline__ uint32_t window_max8(const Window8<kP>& w, float (&best)[8]) {
  unpack8(w.raw[0], best);
  uint32_t args = 0;
#pragma unroll
  for (int pos = 1; pos < kP * kP; pos++) {
    float v[8];
    unpack8(w.raw[pos], v);
#pragma unroll
    for (int i = 0; i < 8; i++)
      if (v[i] > best[i]) {
        best[i] = v[i];
        args = (args & ~(0xFu << (4 * i))) | ((uint32_t)pos << (4 * i));
      }
  }
  return args;
}

// The vectorised kernels' pixel loop over this thread's pooled pixels p = first, first + step,
// ... < end, kBatch at a time: load(u, p) for each pixel of a batch, then use(u, p) for each,
// in the same order. A thread then has a batch's loads in flight at once instead of one
// pixel's. These kernels are not bound by memory bandwidth: they took about the same time on
// an H100 as on an H200, whose memory is 1.4x faster (docs/gpu_engine.md, "Loads in flight").
// What binds them is instruction issue (the CELU's cost, kernels/common.cuh) or memory latency
// with one 16-byte load per thread outstanding at 2 to 4 blocks of 256 threads per SM: this is
// for the latter. use() runs in the plain loop's order: a thread adds its pixels in the same
// order as without batches.
template <int kBatch, class Load, class Use>
__device__ __forceinline__ void for_pixel_batches(int first, int step, int end, Load&& load, Use&& use) {
  for (int p0 = first; p0 < end; p0 += kBatch * step) {
#pragma unroll
    for (int u = 0; u < kBatch; u++)
      if (p0 + u * step < end) load(u, p0 + u * step);
#pragma unroll
    for (int u = 0; u < kBatch; u++)
      if (p0 + u * step < end) use(u, p0 + u * step);
  }
}

// Pixels per batch: about four 16-byte loads in flight per thread (the window's kP * kP count
// as one pixel's), but at least one pixel.
template <int kLoadsPerPixel>
constexpr int kBatchFor = kLoadsPerPixel >= 4 ? 1 : 4 / kLoadsPerPixel;

// Block reduction of the per-thread sums a[8], b[8] over the rows (fixed order), written to
// partial[blockIdx.x][grp][c][0..1] for the block's C channels (the two-channel kernels'
// layout, so finalize_stats_kernel and backward_totals_kernel serve both). red: the block's
// kVecThreads slots of bn_detail::kVecRedSlot floats, per thread 8 a's then 8 b's.
constexpr int kVecRedFloats = kVecThreads * bn_detail::kVecRedSlot;
__device__ __forceinline__ void vec_store_partials(const Geometry& g, const VecLayout& l,
                                                   const float (&a)[8], const float (&b)[8],
                                                   float* red, float* __restrict__ partial) {
  using bn_detail::vec_red_offset;
  const int CV = g.C / 8;
  if (l.active) {
#pragma unroll
    for (int i = 0; i < 8; i++) {
      red[vec_red_offset(threadIdx.x, i)] = a[i];
      red[vec_red_offset(threadIdx.x, 8 + i)] = b[i];
    }
  }
  __syncthreads();
  const int G = g.N / g.group;
  const int grp = blockIdx.y;
  for (int o = threadIdx.x; o < CV * 16; o += blockDim.x) {  // sum j of channel vector cv
    const int cv = o / 16, j = o % 16;
    float t = red[vec_red_offset(cv, j)];
    for (int r = 1; r < l.rows; r++) t += red[vec_red_offset(r * CV + cv, j)];
    const int c = cv * 8 + (j & 7);
    partial[(((long)blockIdx.x * G + grp) * g.C + c) * 2 + (j >> 3)] = t;
  }
}

// Forward statistics (and the pooled tensor when kP > 1), as pool_stats_kernel: per block the
// sums of v - K and (v - K)^2 over its pixels, K = x[first pixel of the group][c].
template <int kP>
__global__ void __launch_bounds__(kVecThreads)
    pool_stats_vec_kernel(const __half* __restrict__ x, __half* __restrict__ pooled, Geometry g,
                          float* __restrict__ partial) {
  constexpr int kBatch = kBatchFor<kP * kP>;
  __shared__ float red[kVecRedFloats];
  const VecLayout l = vec_layout(g.C);
  const int grp = blockIdx.y;
  const int c = l.cv * 8;
  float s1[8], s2[8];
#pragma unroll
  for (int i = 0; i < 8; i++) s1[i] = s2[i] = 0.0f;
  if (l.active) {
    float K[8];
    load8(x + (long)grp * g.group * g.H * g.W * g.C + c, K);
    const long q0 = (long)grp * g.pix_per_group;  // the group's first pooled pixel
    Window8<kP> win[kBatch];
    for_pixel_batches<kBatch>(
        blockIdx.x * l.rows + l.row, gridDim.x * l.rows, g.pix_per_group,
        [&](int u, int p) { load_window8<kP>(x, g, window_origin<kP>(g, q0 + p, c), win[u]); },
        [&](int u, int p) {
          float v[8];
          window_max8<kP>(win[u], v);
          if (kP > 1) store8(pooled + (q0 + p) * g.C + c, v);
#pragma unroll
          for (int i = 0; i < 8; i++) {
            const float d = v[i] - K[i];
            s1[i] += d;
            s2[i] += d * d;
          }
        });
  }
  vec_store_partials(g, l, s1, s2, red, partial);
}

// out = celu((p - mean) * invstd + bias) (+ residual), as apply_kernel. Grid y = group (G = 1
// with kEval: mean/var [C] for every image, g.pix_per_group = all pooled pixels). p is the
// window max of `in` (window kP = g.P; 1 when `in` is already pooled); pooled_out (may be null)
// receives it when kP > 1.
template <bool kEval, int kP>
__global__ void __launch_bounds__(kVecThreads)
    apply_vec_kernel(const __half* __restrict__ in, Geometry g, __half* pooled_out,
                     const float* __restrict__ bias, const float* __restrict__ mean,
                     const float* __restrict__ stat2, float eps, float alpha,
                     const __half* __restrict__ residual, __half* __restrict__ out) {
  constexpr int kBatch = kBatchFor<kP * kP>;
  const VecLayout l = vec_layout(g.C);
  if (!l.active) return;
  const int grp = blockIdx.y;
  const int c = l.cv * 8;
  float m[8], is[8], b[8];
  load8_f32(bias + c, b);
  if (kEval) {
    load8_f32(mean + c, m);
#pragma unroll
    for (int i = 0; i < 8; i++) is[i] = 1.0f / sqrtf(stat2[c + i] + eps);
  } else {
    load8_f32(mean + (long)grp * g.C + c, m);
    load8_f32(stat2 + (long)grp * g.C + c, is);
  }
  const long q0 = (long)grp * g.pix_per_group;
  Window8<kP> win[kBatch];
  uint4 res[kBatch] = {};
  for_pixel_batches<kBatch>(
      blockIdx.x * l.rows + l.row, gridDim.x * l.rows, g.pix_per_group,
      [&](int u, int p) {
        const long q = q0 + p;
        load_window8<kP>(in, g, window_origin<kP>(g, q, c), win[u]);
        if (residual != nullptr) res[u] = load_raw8(residual + q * g.C + c);
      },
      [&](int u, int p) {
        const long off = (q0 + p) * g.C + c;
        float v[8];
        window_max8<kP>(win[u], v);
        if (pooled_out != nullptr && kP > 1) store8(pooled_out + off, v);
        float y[8];
#pragma unroll
        for (int i = 0; i < 8; i++) y[i] = celu(__fadd_rn(bn_xhat(v[i], m[i], is[i]), b[i]), alpha);
        if (residual != nullptr) {
          float r[8];
          unpack8(res[u], r);
#pragma unroll
          for (int i = 0; i < 8; i++) y[i] += r[i];
        }
        store8(out + off, y);
      });
}

// dz = (dout + dout2) * celu'(xhat + bias) and xhat for 8 channels of a pooled pixel, from its
// pooled values v and dout (and dout2 when has2) as loaded.
__device__ __forceinline__ void vec_dz(const uint4& dout, const uint4& dout2, bool has2, const float (&v)[8],
                                       const float (&m)[8], const float (&is)[8], const float (&b)[8], float alpha,
                                       float (&dz)[8], float (&xh)[8]) {
  float d[8];
  unpack8(dout, d);
  if (has2) {
    float d2[8];
    unpack8(dout2, d2);
#pragma unroll
    for (int i = 0; i < 8; i++) d[i] += d2[i];
  }
#pragma unroll
  for (int i = 0; i < 8; i++) {
    xh[i] = bn_xhat(v[i], m[i], is[i]);
    dz[i] = bn_dz(d[i], xh[i], b[i], alpha);
  }
}

// Backward statistics, as backward_stats_kernel: per block sum(dz) and sum(dz * xhat) over its
// pooled values p_in [N][Ho][Wo][C].
__global__ void __launch_bounds__(kVecThreads)
    backward_stats_vec_kernel(const __half* __restrict__ dout, const __half* __restrict__ dout2,
                              const __half* __restrict__ p_in, Geometry g,
                              const float* __restrict__ bias, const float* __restrict__ save_mean,
                              const float* __restrict__ save_invstd, float alpha,
                              float* __restrict__ partial) {
  constexpr int kBatch = kBatchFor<2>;  // p_in and dout (and dout2) per pixel
  __shared__ float red[kVecRedFloats];
  const VecLayout l = vec_layout(g.C);
  const int grp = blockIdx.y;
  const int c = l.cv * 8;
  float sdz[8], sdzx[8];
#pragma unroll
  for (int i = 0; i < 8; i++) sdz[i] = sdzx[i] = 0.0f;
  if (l.active) {
    float m[8], is[8], b[8];
    load8_f32(save_mean + (long)grp * g.C + c, m);
    load8_f32(save_invstd + (long)grp * g.C + c, is);
    load8_f32(bias + c, b);
    const long q0 = (long)grp * g.pix_per_group;
    uint4 pv[kBatch], d1[kBatch], d2[kBatch] = {};
    for_pixel_batches<kBatch>(
        blockIdx.x * l.rows + l.row, gridDim.x * l.rows, g.pix_per_group,
        [&](int u, int p) {
          const long off = (q0 + p) * g.C + c;
          pv[u] = load_raw8(p_in + off);
          d1[u] = load_raw8(dout + off);
          if (dout2 != nullptr) d2[u] = load_raw8(dout2 + off);
        },
        [&](int u, int) {
          float v[8], dz[8], xh[8];
          unpack8(pv[u], v);
          vec_dz(d1[u], d2[u], dout2 != nullptr, v, m, is, b, alpha, dz, xh);
#pragma unroll
          for (int i = 0; i < 8; i++) {
            sdz[i] += dz[i];
            sdzx[i] += dz[i] * xh[i];
          }
        });
  }
  vec_store_partials(g, l, sdz, sdzx, red, partial);
}

// dx, as backward_apply_kernel (same formula, same routing through the window's first maximum):
// kArgmax (the 2x2 pool only) reads the pooled values and the window positions, otherwise the
// window maxima of x are recomputed (window kP = g.P).
template <bool kArgmax, int kP>
__global__ void __launch_bounds__(kVecThreads)
    backward_apply_vec_kernel(const __half* __restrict__ dout, const __half* __restrict__ dout2,
                              const __half* __restrict__ x, const __half* __restrict__ pooled,
                              const uint8_t* __restrict__ argmax, Geometry g,
                              const float* __restrict__ bias, const float* __restrict__ save_mean,
                              const float* __restrict__ save_invstd, float alpha,
                              const BwdSums t, __half* __restrict__ dx) {
  static_assert(!kArgmax || kP == 2, "the argmax path serves the 2x2 max-pool");
  // Loads per pixel: dout, and the pooled vector (kArgmax) or the window.
  constexpr int kBatch = kBatchFor<1 + (kArgmax ? 1 : kP * kP)>;
  const VecLayout l = vec_layout(g.C);
  if (!l.active) return;
  const int grp = blockIdx.y;
  const int c = l.cv * 8;
  const float inv_n = 1.0f / (float)g.pix_per_group;
  float m[8], is[8], b[8], t_dz[8], t_dzx[8];
  load8_f32(save_mean + (long)grp * g.C + c, m);
  load8_f32(save_invstd + (long)grp * g.C + c, is);
  load8_f32(bias + c, b);
#pragma unroll
  for (int i = 0; i < 8; i++) {
    t_dz[i] = t.sum_dz((long)grp * g.C + c + i);
    t_dzx[i] = t.sum_dzx((long)grp * g.C + c + i);
  }
  const long q0 = (long)grp * g.pix_per_group;
  Window8<kArgmax ? 1 : kP> win[kBatch];  // kArgmax: the pooled vector
  uint2 arg[kBatch] = {};
  uint4 d1[kBatch], d2[kBatch] = {};
  long origin[kBatch];
  for_pixel_batches<kBatch>(
      blockIdx.x * l.rows + l.row, gridDim.x * l.rows, g.pix_per_group,
      [&](int u, int p) {
        const long q = q0 + p, off = q * g.C + c;
        origin[u] = window_origin<kP>(g, q, c);
        if constexpr (kArgmax) {
          win[u].raw[0] = load_raw8(pooled + off);
          arg[u] = *reinterpret_cast<const uint2*>(argmax + off);
        } else {
          load_window8<kP>(x, g, origin[u], win[u]);
        }
        d1[u] = load_raw8(dout + off);
        if (dout2 != nullptr) d2[u] = load_raw8(dout2 + off);
      },
      [&](int u, int) {
        float v[8];
        uint32_t args;  // window position of channel i in bits 4i..4i+3
        if constexpr (kArgmax) {
          unpack8(win[u].raw[0], v);
          // 8 bytes, one per channel (values 0..3): byte i of a.x / a.y to nibble i / 4 + i.
          args = 0;
#pragma unroll
          for (int i = 0; i < 4; i++) {
            args |= ((arg[u].x >> (8 * i)) & 0xFu) << (4 * i);
            args |= ((arg[u].y >> (8 * i)) & 0xFu) << (4 * (4 + i));
          }
        } else {
          args = window_max8<kP>(win[u], v);
        }
        float dz[8], xh[8], dp[8];
        vec_dz(d1[u], d2[u], dout2 != nullptr, v, m, is, b, alpha, dz, xh);
#pragma unroll
        for (int i = 0; i < 8; i++) dp[i] = bn_dp(is[i], dz[i], xh[i], t_dz[i], t_dzx[i], inv_n);
#pragma unroll
        for (int ky = 0; ky < kP; ky++)
#pragma unroll
          for (int kx = 0; kx < kP; kx++) {
            const uint32_t pos = ky * kP + kx;
            float o[8];
#pragma unroll
            for (int i = 0; i < 8; i++) o[i] = ((args >> (4 * i)) & 0xFu) == pos ? dp[i] : 0.0f;
            store8(dx + origin[u] + ((long)ky * g.W + kx) * g.C, o);
          }
      });
}

void check_shape(const GhostBnCeluShape& s, const char* fn) {
  require(s.N > 0 && s.H > 0 && s.W > 0 && s.C > 0, fn, "empty shape");
  require(s.C % 2 == 0, fn, "C must be even (channel pairs are loaded as half2)");
  require(s.P == 1 || s.P == 2, fn, "pool window P must be 1 or 2");
  require(s.H % s.P == 0 && s.W % s.P == 0, fn, "H and W must be multiples of P");
  // The kernels index channel pairs of the pooled tensor with 32-bit ints (memory offsets are
  // 64-bit): 2^30 pairs leave room for the grid stride without overflow.
  require((long)s.N * (s.H / s.P) * (s.W / s.P) * (s.C / 2) < (1L << 30), fn,
          "tensor too large for 32-bit pair indices");
}

void check_groups(const GhostBnCeluShape& s, const char* fn) {
  require(s.group > 0 && s.N % s.group == 0, fn, "N must be a multiple of group");
  require(s.groups() <= 65535, fn, "at most 65535 groups (grid y)");
}

void check_aligned(const void* p, const char* fn) {
  require(((uintptr_t)p & 3) == 0, fn, "fp16 tensors must be 4-byte aligned (half2 access)");
}

void check_scratch(const void* p, const char* fn) {
  require(p != nullptr && aligned16(p), fn,
          "scratch must be non-null and 16-byte aligned (float4 stores)");
}

// Pixel slices (grid z) of the statistics kernels: enough that each thread sees about
// kPixelsPerThread pixels of its group. The scratch holds one partial-sum slot per slice.
int stats_slices(const GhostBnCeluShape& s) {
  int slices = ceil_div(s.group * s.Ho() * s.Wo(), kStatY * kPixelsPerThread);
  if (slices < 1) slices = 1;
  if (slices > kMaxSlices) slices = kMaxSlices;
  return slices;
}

dim3 stats_grid(const GhostBnCeluShape& s) {
  return dim3(ceil_div(s.C / 2, kPairsPerTile), s.groups(), stats_slices(s));
}

constexpr int kApplyThreads = 256;

// Whether the shape suits the vectorised kernels: whole 8-channel vectors, at most one per thread.
bool vec_shape_ok(const GhostBnCeluShape& s) { return s.C % 8 == 0 && s.C / 8 <= kVecThreads; }

// Whether the vectorised kernels serve this call (see their comment): prm.vectorized, a shape
// vec_shape_ok accepts, every given tensor 16-byte aligned (null entries are skipped).
bool use_vec(const GhostBnCeluShape& s, const GhostBnCeluParams& prm,
             std::initializer_list<const void*> tensors) {
  if (!prm.vectorized || !vec_shape_ok(s)) return false;
  for (const void* t : tensors)
    if (t != nullptr && !aligned16(t)) return false;
  return true;
}

// Blocks per group (grid x) of the vectorised kernels, covering pix pooled pixels with about
// per_thread pixels per thread. For the statistics kernels it is also the number of partial slots.
int vec_blocks(const GhostBnCeluShape& s, long pix, int per_thread) {
  const int rows = kVecThreads / (s.C / 8);
  long blocks = ceil_div(pix, (long)rows * per_thread);
  if (blocks < 1) blocks = 1;
  if (blocks > kMaxSlices) blocks = kMaxSlices;
  return (int)blocks;
}

int vec_slices(const GhostBnCeluShape& s) {
  const long pix = (long)s.group * s.Ho() * s.Wo();
  const int rows = kVecThreads / (s.C / 8);
  const int at_least = (int)std::min<long>(kVecMinSlices, ceil_div(pix, (long)rows));
  return std::max(vec_blocks(s, pix, kVecPixelsPerThread), at_least);
}

}  // namespace

size_t ghost_bn_celu_scratch_bytes(const GhostBnCeluShape& s) {
  // partial [slices][G][C][2] + totals [G][C][2], for whichever kernels a call uses.
  size_t slices = (size_t)stats_slices(s);
  if (vec_shape_ok(s) && s.group > 0)
    slices = std::max(slices, (size_t)vec_slices(s));
  return sizeof(float) * 2 * (size_t)s.groups() * s.C * (slices + 1);
}

namespace {

// The training forward's apply pass over the pooled values p [N][Ho][Wo][C] (window 1), with
// the per-group statistics; g is the conv output's geometry.
void apply_train(const __half* p, const Geometry& g, bool vec, const float* bias,
                 const float* save_mean, const float* save_invstd, const __half* residual,
                 __half* out, const GhostBnCeluShape& s, const GhostBnCeluParams& prm,
                 cudaStream_t stream) {
  Geometry ga = g;
  ga.P = 1;
  ga.H = g.Ho;
  ga.W = g.Wo;
  if (vec) {
    const dim3 grid(vec_blocks(s, ga.pix_per_group, kVecApplyPixelsPerThread), s.groups());
    apply_vec_kernel<false, 1><<<grid, kVecThreads, 0, stream>>>(
        p, ga, nullptr, bias, save_mean, save_invstd, prm.eps, prm.alpha, residual, out);
  } else {
    const long total = (long)s.N * g.Ho * g.Wo * (s.C / 2);
    apply_kernel<false><<<grid_stride_blocks(total, kApplyThreads), kApplyThreads, 0, stream>>>(
        p, ga, nullptr, bias, save_mean, save_invstd, prm.eps, prm.alpha, residual, out);
  }
  CUDA_CHECK_LAUNCH();
}

}  // namespace

void pool_bn_celu_forward_train(const __half* x, __half* pooled, const float* bias,
                                const __half* residual, __half* out, float* save_mean,
                                float* save_invstd, float* running_mean, float* running_var,
                                float* scratch, const GhostBnCeluShape& s,
                                const GhostBnCeluParams& prm, cudaStream_t stream) {
  const char* fn = "pool_bn_celu_forward_train";
  check_shape(s, fn);
  check_groups(s, fn);
  require(s.P == 1 || pooled != nullptr, fn, "pooled is needed when P > 1");
  check_aligned(x, fn);
  check_aligned(out, fn);
  if (s.P > 1) check_aligned(pooled, fn);
  if (residual != nullptr) check_aligned(residual, fn);
  check_scratch(scratch, fn);
  const Geometry g = geometry(s);
  const bool vec = use_vec(s, prm, {x, out, s.P > 1 ? pooled : nullptr, residual});
  // Every partial slot is written by the statistics kernel: no memset needed.
  const int slices = vec ? vec_slices(s) : stats_slices(s);
  if (vec)
    (s.P == 2 ? pool_stats_vec_kernel<2> : pool_stats_vec_kernel<1>)<<<dim3(slices, s.groups()), kVecThreads, 0,
                                                                          stream>>>(x, pooled, g, scratch);
  else
    pool_stats_kernel<<<stats_grid(s), dim3(kStatX, kStatY), 0, stream>>>(x, pooled, g, scratch);
  CUDA_CHECK_LAUNCH();
  const int GC = s.groups() * s.C;
  finalize_stats_kernel<<<ceil_div(GC, 256), 256, 0, stream>>>(x, g, slices, scratch, save_mean,
                                                               save_invstd, running_mean,
                                                               running_var, prm.eps, prm.momentum);
  CUDA_CHECK_LAUNCH();
  const __half* p = s.P > 1 ? pooled : x;
  apply_train(p, g, vec, bias, save_mean, save_invstd, residual, out, s, prm, stream);
}

void bn_celu_forward_train_from_sums(const __half* pooled, const float* sum, const float* sumsq,
                                     const float* bias, const __half* residual, __half* out,
                                     float* save_mean, float* save_invstd, float* running_mean,
                                     float* running_var, const GhostBnCeluShape& s,
                                     const GhostBnCeluParams& prm, cudaStream_t stream) {
  const char* fn = "bn_celu_forward_train_from_sums";
  check_shape(s, fn);
  check_groups(s, fn);
  require(pooled != nullptr && sum != nullptr && sumsq != nullptr, fn, "pooled and the sums are needed");
  check_aligned(pooled, fn);
  check_aligned(out, fn);
  if (residual != nullptr) check_aligned(residual, fn);
  const Geometry g = geometry(s);
  const int GC = s.groups() * s.C;
  finalize_from_sums_kernel<<<ceil_div(GC, 256), 256, 0, stream>>>(
      sum, sumsq, GC, (double)g.pix_per_group, save_mean, save_invstd, running_mean, running_var,
      prm.eps, prm.momentum);
  CUDA_CHECK_LAUNCH();
  const bool vec = use_vec(s, prm, {pooled, out, residual});
  apply_train(pooled, g, vec, bias, save_mean, save_invstd, residual, out, s, prm, stream);
}

void pool_bn_celu_forward_eval(const __half* x, __half* pooled_scratch, const float* bias,
                               const float* mean, const float* var, const __half* residual,
                               __half* out, const GhostBnCeluShape& s,
                               const GhostBnCeluParams& prm, cudaStream_t stream) {
  const char* fn = "pool_bn_celu_forward_eval";
  // Evaluation uses no groups, so any N works (the test set is not a multiple of 32).
  GhostBnCeluShape se = s;
  se.group = 1;
  check_shape(se, fn);
  check_aligned(x, fn);
  check_aligned(out, fn);
  if (s.P > 1 && pooled_scratch != nullptr) check_aligned(pooled_scratch, fn);
  if (residual != nullptr) check_aligned(residual, fn);
  Geometry g = geometry(se);
  if (use_vec(se, prm, {x, out, s.P > 1 ? pooled_scratch : nullptr, residual})) {
    // One "group" of every image: the statistics are per channel.
    g.pix_per_group = s.N * g.Ho * g.Wo;
    (s.P == 2 ? apply_vec_kernel<true, 2> : apply_vec_kernel<true, 1>)<<<
        vec_blocks(se, g.pix_per_group, kVecApplyPixelsPerThread), kVecThreads, 0, stream>>>(x, g, pooled_scratch, bias, mean, var, prm.eps,
                                          prm.alpha, residual, out);
  } else {
    const long total = (long)s.N * g.Ho * g.Wo * (s.C / 2);
    apply_kernel<true><<<grid_stride_blocks(total, kApplyThreads), kApplyThreads, 0, stream>>>(
        x, g, pooled_scratch, bias, mean, var, prm.eps, prm.alpha, residual, out);
  }
  CUDA_CHECK_LAUNCH();
}

namespace {

// The backward's reductions, shared by both backward launchers: per-slice partial sums of dz
// and dz * xhat over the pooled values p, their totals per group (written after the partial
// slots), and dbias. Returns the totals.
float* backward_reductions(const __half* dout, const __half* dout2, const __half* p, const float* bias,
                           const float* save_mean, const float* save_invstd, float* dbias,
                           float* scratch, const GhostBnCeluShape& s, const Geometry& g, bool vec,
                           const GhostBnCeluParams& prm, cudaStream_t stream) {
  const int slices = vec ? vec_slices(s) : stats_slices(s);
  const long GC2 = 2L * s.groups() * s.C;
  float* totals = scratch + (long)slices * GC2;  // after the partial slots
  if (vec)
    backward_stats_vec_kernel<<<dim3(slices, s.groups()), kVecThreads, 0, stream>>>(
        dout, dout2, p, g, bias, save_mean, save_invstd, prm.alpha, scratch);
  else
    backward_stats_kernel<<<stats_grid(s), dim3(kStatX, kStatY), 0, stream>>>(
        dout, dout2, p, g, bias, save_mean, save_invstd, prm.alpha, scratch);
  CUDA_CHECK_LAUNCH();
  backward_totals_kernel<<<(int)ceil_div(GC2, 256L), 256, 0, stream>>>(scratch, GC2, slices,
                                                                        totals);
  CUDA_CHECK_LAUNCH();
  dbias_kernel<<<ceil_div(s.C, 256), 256, 0, stream>>>(interleaved(totals), s.groups(), s.C, dbias);
  CUDA_CHECK_LAUNCH();
  return totals;
}

// dx from the sums: the apply kernel of the argmax path (argmax != null: the pooled values and
// the window positions are read) or of the recompute path (the window maxima of x).
void backward_apply(const __half* dout, const __half* dout2, const __half* x, const __half* pooled,
                    const uint8_t* argmax, const float* bias, const float* save_mean,
                    const float* save_invstd, const BwdSums& t, __half* dx,
                    const GhostBnCeluShape& s, const Geometry& g, bool vec,
                    const GhostBnCeluParams& prm, cudaStream_t stream) {
  const bool arg = argmax != nullptr;
  if (vec) {
    const dim3 grid(vec_blocks(s, g.pix_per_group, kVecApplyPixelsPerThread), s.groups());
    auto* kernel = arg          ? backward_apply_vec_kernel<true, 2>
                   : s.P == 2 ? backward_apply_vec_kernel<false, 2>
                              : backward_apply_vec_kernel<false, 1>;
    kernel<<<grid, kVecThreads, 0, stream>>>(dout, dout2, x, pooled, argmax, g, bias, save_mean,
                                             save_invstd, prm.alpha, t, dx);
  } else {
    const long total = (long)s.N * g.Ho * g.Wo * (s.C / 2);
    auto* kernel = arg ? backward_apply_kernel<true> : backward_apply_kernel<false>;
    kernel<<<grid_stride_blocks(total, kApplyThreads), kApplyThreads, 0, stream>>>(
        dout, dout2, x, pooled, argmax, g, bias, save_mean, save_invstd, prm.alpha, t, dx);
  }
  CUDA_CHECK_LAUNCH();
}

// The argmax path's checks (pool_bn_celu_backward_argmax, and _from_sums with an argmax).
void check_argmax_inputs(const GhostBnCeluShape& s, const __half* pooled, const uint8_t* argmax,
                         const char* fn) {
  require(s.P == 2, fn, "the argmax path is for the 2x2 max-pool (P == 2)");
  require(pooled != nullptr && argmax != nullptr, fn, "pooled and argmax are needed");
  require(((uintptr_t)argmax & 1) == 0, fn, "argmax must be 2-byte aligned (channel pairs)");
  check_aligned(pooled, fn);
}

}  // namespace

void pool_bn_celu_backward(const __half* dout, const __half* dout2, const __half* x,
                           const __half* pooled, const float* bias, const float* save_mean,
                           const float* save_invstd, __half* dx, float* dbias, float* scratch,
                           const GhostBnCeluShape& s, const GhostBnCeluParams& prm,
                           cudaStream_t stream) {
  const char* fn = "pool_bn_celu_backward";
  check_shape(s, fn);
  check_groups(s, fn);
  require(s.P == 1 || pooled != nullptr, fn, "pooled is needed when P > 1");
  check_aligned(dout, fn);
  check_aligned(x, fn);
  check_aligned(dx, fn);
  if (dout2 != nullptr) check_aligned(dout2, fn);
  if (s.P > 1) check_aligned(pooled, fn);
  check_scratch(scratch, fn);
  const Geometry g = geometry(s);
  // With P == 1 the pooled values are x itself (the forward does not write `pooled` then).
  const __half* p = s.P > 1 ? pooled : x;
  const bool vec = use_vec(s, prm, {dout, dout2, x, s.P > 1 ? pooled : nullptr, dx});
  const float* totals = backward_reductions(dout, dout2, p, bias, save_mean, save_invstd, dbias,
                                            scratch, s, g, vec, prm, stream);
  backward_apply(dout, dout2, x, nullptr, nullptr, bias, save_mean, save_invstd,
                 interleaved(totals), dx, s, g, vec, prm, stream);
}

void pool_bn_celu_backward_argmax(const __half* dout, const __half* dout2, const __half* pooled,
                                  const uint8_t* argmax, const float* bias,
                                  const float* save_mean, const float* save_invstd, __half* dx,
                                  float* dbias, float* scratch, const GhostBnCeluShape& s,
                                  const GhostBnCeluParams& prm, cudaStream_t stream) {
  const char* fn = "pool_bn_celu_backward_argmax";
  check_shape(s, fn);
  check_groups(s, fn);
  check_argmax_inputs(s, pooled, argmax, fn);
  check_aligned(dout, fn);
  check_aligned(dx, fn);
  if (dout2 != nullptr) check_aligned(dout2, fn);
  check_scratch(scratch, fn);
  const Geometry g = geometry(s);
  // The vectorised kernel reads 8 argmax bytes at a time.
  const bool vec = use_vec(s, prm, {dout, dout2, pooled, dx}) && ((uintptr_t)argmax & 7) == 0;
  const float* totals = backward_reductions(dout, dout2, pooled, bias, save_mean, save_invstd,
                                            dbias, scratch, s, g, vec, prm, stream);
  backward_apply(dout, dout2, nullptr, pooled, argmax, bias, save_mean, save_invstd,
                 interleaved(totals), dx, s, g, vec, prm, stream);
}

void pool_bn_celu_backward_from_sums(const __half* dout, const __half* dout2, const __half* x,
                                     const __half* pooled, const uint8_t* argmax,
                                     const float* sum_dz, const float* sum_dzx, const float* bias,
                                     const float* save_mean, const float* save_invstd, __half* dx,
                                     float* dbias, const GhostBnCeluShape& s,
                                     const GhostBnCeluParams& prm, cudaStream_t stream) {
  const char* fn = "pool_bn_celu_backward_from_sums";
  check_shape(s, fn);
  check_groups(s, fn);
  require(sum_dz != nullptr && sum_dzx != nullptr, fn, "sum_dz and sum_dzx are needed");
  if (argmax != nullptr) {
    check_argmax_inputs(s, pooled, argmax, fn);
  } else {
    require(x != nullptr, fn, "x is needed without argmax");
    require(s.P == 1 || pooled != nullptr, fn, "pooled is needed when P > 1");
    check_aligned(x, fn);
    if (s.P > 1) check_aligned(pooled, fn);
  }
  check_aligned(dout, fn);
  check_aligned(dx, fn);
  if (dout2 != nullptr) check_aligned(dout2, fn);
  const Geometry g = geometry(s);
  const bool vec = argmax != nullptr
                       ? use_vec(s, prm, {dout, dout2, pooled, dx}) && ((uintptr_t)argmax & 7) == 0
                       : use_vec(s, prm, {dout, dout2, x, s.P > 1 ? pooled : nullptr, dx});
  const BwdSums t{sum_dz, sum_dzx, 1};
  dbias_kernel<<<ceil_div(s.C, 256), 256, 0, stream>>>(t, s.groups(), s.C, dbias);
  CUDA_CHECK_LAUNCH();
  backward_apply(dout, dout2, x, pooled, argmax, bias, save_mean, save_invstd, t, dx, s, g, vec,
                 prm, stream);
}

__global__ void bn_average_groups_kernel(const float* __restrict__ per_group,
                                         float* __restrict__ avg, int G, int C) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  float s = 0.0f;
  for (int grp = 0; grp < G; grp++) s += per_group[(long)grp * C + c];
  avg[c] = s / (float)G;
}

void bn_average_groups(const float* per_group, float* avg, int G, int C, cudaStream_t stream) {
  require(G > 0 && C > 0, "bn_average_groups", "need G, C > 0");
  bn_average_groups_kernel<<<ceil_div(C, 256), 256, 0, stream>>>(per_group, avg, G, C);
  CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
