// The hand-written implicit-GEMM forward convolution (kernels/conv/implicit_gemm.cuh) vs
// ref::conv_forward, for every tile configuration:
//   - the recipe's six conv shapes at the real batch (512): the GPU runs the whole batch, the
//     CPU reference covers the first 4 and the last 2 images (an output image depends on its
//     input image alone), every output must be written and finite, and a second launch must
//     give the same bits;
//   - odd shapes (tiny N, H != W, channel counts that are not multiples of any tile, R = 1, 3, 5,
//     a 1x1 image where every 3x3 tap but the centre is padding), compared in full;
//   - the fused BN-statistics epilogue vs sums over the stored output, one group and ghost groups;
//   - the fused max-pool epilogue (conv_forward_igemm_pool), for every config that accepts the
//     shape: y_pooled bitwise equal to ref::maxpool_forward of the same config's unfused fp16
//     output, argmax equal to ref::maxpool_backward's pick (the tie rule), y_pooled the same
//     bits with and without argmax / stats, the pooled statistics vs double sums; recipe shapes
//     at batch 512 and small odd ones, including integer-valued ones full of ties;
// the statistics and max-pool epilogues also on the wgmma forward (conv_forward_wgmma_stats,
// conv_forward_wgmma_pool: the same epilogue code, kernels/conv/conv_epilogue.cuh), every wgmma
// config, tagged [wgmma] (skipped but on an sm_90a Hopper);
// plus host-only cases that need no GPU: the im2col and max-pool index helpers and the pool's
// tie rule against their definitions, and the launchers' precondition checks.
//
// Tolerance for the outputs: rel. L2 <= 2e-3. The inputs are fp16-rounded on both sides, so
// every product is exact in fp32 (11-bit x 11-bit significands); fp32 accumulation over at
// most R*R*C = 4608 terms adds ~1e-6; the final rounding to fp16 adds at most 2^-11 = 4.9e-4
// relative per element, about 3e-4 rms. 2e-3 leaves a 7x margin; an indexing error gives O(1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/ref/conv.h"
#include "kernels/ref/pool.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using kernels::ConvDesc;
using kernels::IgemmConfig;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr double kTolOut = 2e-3;

// Raw fp16 bits -> float, and "no NaN / Inf" (exponent all ones) without converting 67 M values.
std::vector<float> to_float(const std::vector<__half>& h, long begin, long n) {
  std::vector<float> f(n);
  for (long i = 0; i < n; i++) f[i] = __half2float(h[begin + i]);
  return f;
}
bool all_finite_half(const std::vector<__half>& h) {
  for (const __half& v : h) {
    uint16_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    if ((bits & 0x7C00u) == 0x7C00u) return false;
  }
  return true;
}

struct Problem {
  ConvDesc d;
  std::vector<float> x, w;  // fp16-rounded
  long x_img() const { return (long)d.H * d.W * d.C; }
  long y_img() const { return (long)d.H * d.W * d.K; }
  long y_size() const { return (long)d.N * y_img(); }
};

// x uniform in [-1, 1) with channels >= real_channels zero (the whitening output is 27 channels
// padded to 32); w uniform in +-1/sqrt(fan_in) (PyTorch's default init), as in training.
Problem make_problem(const ConvDesc& d, int real_channels, uint64_t seed) {
  Problem p{d, {}, {}};
  p.x = random_vector((long)d.N * d.H * d.W * d.C, seed);
  for (long i = 0; i < (long)p.x.size(); i++)
    if (i % d.C >= real_channels) p.x[i] = 0.0f;
  p.x = round_to_half(p.x);
  const float bound = 1.0f / std::sqrt((float)(real_channels * d.R * d.R));
  p.w = round_to_half(random_vector((long)d.K * d.R * d.R * d.C, seed + 1, -bound, bound));
  return p;
}

// ref::conv_forward on images [first, first + count).
std::vector<float> reference(const Problem& p, int first, int count) {
  const ref::ConvShape rs{count, p.d.H, p.d.W, p.d.C, p.d.K, p.d.R};
  std::vector<float> y(rs.y_size());
  ref::conv_forward(p.x.data() + first * p.x_img(), p.w.data(), y.data(), rs);
  return y;
}

// A forward kernel under test: an igemm config, or a wgmma config (Hopper; the same epilogues
// from kernels/conv/conv_epilogue.cuh, so the same tests).
struct FwdKernel {
  bool wgmma;
  int config;
  kernels::IgemmConfigInfo info() const {
    return wgmma ? kernels::wgmma_config_info((kernels::WgmmaConfig)config)
                 : kernels::igemm_config_info((IgemmConfig)config);
  }
  const char* family() const { return wgmma ? "wgmma" : "igemm"; }
  // Whether it takes an input of C channels (the wgmma im2col config needs 64 | C).
  bool accepts(int C) const {
    return !wgmma || kernels::wgmma_config_takes_channels((kernels::WgmmaConfig)config, C);
  }
  void plain(const __half* x, const __half* w, __half* y, const ConvDesc& d, cudaStream_t s) const {
    if (wgmma)
      kernels::conv_forward_wgmma(x, w, y, d, (kernels::WgmmaConfig)config, s);
    else
      kernels::conv_forward_igemm(x, w, y, d, (IgemmConfig)config, s);
  }
  void stats(const __half* x, const __half* w, __half* y, const ConvDesc& d, const kernels::IgemmStats& st,
             cudaStream_t s) const {
    if (wgmma)
      kernels::conv_forward_wgmma_stats(x, w, y, d, (kernels::WgmmaConfig)config, st, s);
    else
      kernels::conv_forward_igemm_stats(x, w, y, d, (IgemmConfig)config, st, s);
  }
  void pool(const __half* x, const __half* w, __half* y, uint8_t* arg, const ConvDesc& d,
            const kernels::IgemmStats* st, cudaStream_t s) const {
    if (wgmma)
      kernels::conv_forward_wgmma_pool(x, w, y, arg, d, (kernels::WgmmaConfig)config, st, s);
    else
      kernels::conv_forward_igemm_pool(x, w, y, arg, d, (IgemmConfig)config, st, s);
  }
  size_t stats_scratch_bytes(const ConvDesc& d) const {
    return wgmma ? kernels::wgmma_stats_scratch_bytes(d, (kernels::WgmmaConfig)config)
                 : kernels::igemm_stats_scratch_bytes(d, (IgemmConfig)config);
  }
};
std::vector<FwdKernel> fwd_kernels(bool wgmma) {
  std::vector<FwdKernel> k;
  if (wgmma)
    for (kernels::WgmmaConfig c : kernels::kWgmmaConfigs)
      if (kernels::wgmma_config_fused_epilogues(c)) k.push_back({true, (int)c});  // not the halo tile
  else
    for (IgemmConfig c : kernels::kIgemmConfigs) k.push_back({false, (int)c});
  return k;
}

std::vector<__half> run_fwd(const Problem& p, const DeviceBuffer<__half>& d_x, const DeviceBuffer<__half>& d_w,
                            const FwdKernel& kernel) {
  auto d_y = poisoned<__half>(p.y_size());
  kernel.plain(d_x.get(), d_w.get(), d_y.get(), p.d, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download(d_y);
}
std::vector<__half> run_igemm(const Problem& p, const DeviceBuffer<__half>& d_x,
                              const DeviceBuffer<__half>& d_w, IgemmConfig config) {
  return run_fwd(p, d_x, d_w, {false, (int)config});
}

using gpu_test::desc_str;

// A recipe shape at batch 512: reference slices = images 0..3 and 510..511.
void check_recipe_shape(int H, int C, int K, int R, int real_channels, uint64_t seed) {
  const ConvDesc d{512, H, H, C, K, R};
  const Problem p = make_problem(d, real_channels, seed);
  const auto y_head = reference(p, 0, 4), y_tail = reference(p, d.N - 2, 2);
  auto d_x = upload_half(p.x), d_w = upload_half(p.w);
  for (IgemmConfig config : kernels::kIgemmConfigs) {
    const auto info = kernels::igemm_config_info(config);
    INFO("config " << info.name << ", shape " << desc_str(d));
    const auto y = run_igemm(p, d_x, d_w, config);
    CHECK(all_finite_half(y));
    const double e_head = rel_l2_error(to_float(y, 0, 4 * p.y_img()).data(), y_head.data(), 4 * p.y_img());
    const double e_tail =
        rel_l2_error(to_float(y, (d.N - 2) * p.y_img(), 2 * p.y_img()).data(), y_tail.data(), 2 * p.y_img());
    std::printf("igemm %-14s %s: rel_l2 images 0..3 %.2e, images 510..511 %.2e\n", info.name,
                desc_str(d).c_str(), e_head, e_tail);
    CHECK(e_head <= kTolOut);
    CHECK(e_tail <= kTolOut);
    CHECK(bitwise_equal(run_igemm(p, d_x, d_w, config), y));  // deterministic
  }
}

// ---------------------------------------------------------------- fused max-pool helpers

bool pool_accepts(const ConvDesc& d, const kernels::IgemmConfigInfo& info) {
  return d.H % 2 == 0 && d.W % 2 == 0 && info.epilogue_m % (2 * d.W) == 0;
}

// x and w with integer values in {-1, 0, 1}: every conv output is a small integer, exact in
// fp32 and fp16, so 2x2 windows often hold equal maxima and the tie rule decides the argmax.
Problem make_integer_problem(const ConvDesc& d, uint64_t seed) {
  Problem p{d, random_vector((long)d.N * d.H * d.W * d.C, seed),
            random_vector((long)d.K * d.R * d.R * d.C, seed + 1)};
  for (float& v : p.x) v = std::round(v);
  for (float& v : p.w) v = std::round(v);
  return p;
}

// The host max-pool of one config's unfused fp16 output y: the pooled fp16 values and, per
// pooled value, the window position dy * 2 + dx the reference picks (255 if it picks none or
// several, which never matches the kernel's 0..3). Image by image (layer1's y is 67 M values):
// ref::maxpool_forward gives the values; ref::maxpool_backward with dy = 1 writes a 1 at the
// picked position of each window and 0 elsewhere, so the tie rule is the reference's own.
struct HostPool {
  std::vector<__half> y;
  std::vector<uint8_t> arg;
  long ties = 0;  // windows whose maximum occurs more than once
};
HostPool host_pool(const std::vector<__half>& y, const ConvDesc& d) {
  const int Ho = d.H / 2, Wo = d.W / 2;
  const long in_img = (long)d.H * d.W * d.K, out_img = (long)Ho * Wo * d.K;
  HostPool hp;
  hp.y.resize(d.N * out_img);
  hp.arg.resize(d.N * out_img);
  std::vector<float> pooled(out_img), ones(out_img, 1.0f), dx(in_img);
  for (int img = 0; img < d.N; img++) {
    const std::vector<float> yf = to_float(y, img * in_img, in_img);
    ref::maxpool_forward(yf.data(), pooled.data(), 1, d.H, d.W, d.K, 2);
    ref::maxpool_backward(yf.data(), ones.data(), dx.data(), 1, d.H, d.W, d.K, 2);
    for (int ho = 0; ho < Ho; ho++)
      for (int wo = 0; wo < Wo; wo++)
        for (int k = 0; k < d.K; k++) {
          const long o = ((long)ho * Wo + wo) * d.K + k;
          int arg = 255, picked = 0, at_max = 0;
          for (int pos = 0; pos < 4; pos++) {
            const long i = ((long)(2 * ho + pos / 2) * d.W + 2 * wo + pos % 2) * d.K + k;
            if (dx[i] != 0.0f) {
              arg = pos;
              picked++;
            }
            if (yf[i] == pooled[o]) at_max++;
          }
          hp.y[img * out_img + o] = __float2half_rn(pooled[o]);  // exact: an fp16 value
          hp.arg[img * out_img + o] = picked == 1 ? (uint8_t)arg : 255;
          if (at_max > 1) hp.ties++;
        }
  }
  return hp;
}

struct PoolOut {
  std::vector<__half> y;
  std::vector<uint8_t> arg;        // empty when run without argmax
  std::vector<float> sum, sumsq;  // empty when run without stats
};

// The kernel's fused conv + max-pool into poisoned outputs; argmax when with_argmax, statistics
// with groups of group_images images when group_images > 0.
PoolOut run_pool(const Problem& p, const DeviceBuffer<__half>& d_x, const DeviceBuffer<__half>& d_w,
                 const FwdKernel& kernel, bool with_argmax, int group_images, cudaStream_t stream) {
  const ConvDesc& d = p.d;
  const size_t pooled = (size_t)p.y_size() / 4;
  auto d_y = poisoned<__half>(pooled);
  DeviceBuffer<uint8_t> d_arg;
  if (with_argmax) d_arg = poisoned<uint8_t>(pooled);
  DeviceBuffer<float> d_sum, d_sumsq, d_part;
  if (group_images > 0) {
    const size_t n = (size_t)(d.N / group_images) * d.K;
    d_sum = poisoned<float>(n);
    d_sumsq = poisoned<float>(n);
    d_part = poisoned<float>(kernel.stats_scratch_bytes(d) / sizeof(float));
  }
  const kernels::IgemmStats st{d_sum.get(), d_sumsq.get(), d_part.get(), group_images};
  kernel.pool(d_x.get(), d_w.get(), d_y.get(), with_argmax ? d_arg.get() : nullptr, d,
              group_images > 0 ? &st : nullptr, stream);
  CUDA_CHECK(cudaStreamSynchronize(stream));
  PoolOut out;
  out.y = download(d_y);
  if (with_argmax) out.arg = download(d_arg);
  if (group_images > 0) {
    out.sum = download(d_sum);
    out.sumsq = download(d_sumsq);
  }
  return out;
}

// Images per statistics group for the odd shapes: the smallest proper divisor g of N whose
// groups the config can split (g * H * W % BlockM == 0), so several groups get tested where the
// shape allows; else N (one group).
int odd_stats_group(const ConvDesc& d, int epilogue_m) {
  for (int g = 1; g < d.N; g++)
    if (d.N % g == 0 && ((long)g * d.H * d.W) % epilogue_m == 0) return g;
  return d.N;
}

// One config on one problem: the fused conv + max-pool with argmax and stats vs the host
// max-pool of the same config's plain forward output (y_pooled bitwise, argmax exactly); without
// argmax, without stats, without both: the same y_pooled bits (and argmax bits, statistics bits);
// the statistics vs double sums over the pooled values. Returns the host's tie count.
//
// Statistics tolerance: a term passes through at most n = (BlockM/4) / slices + slices + blocks
// per group fp32 additions (per-thread rows, the block's slices, the reduce kernel), so the
// error is at most about n * 2^-24 of sum |y| (of sum y^2 for the squares). The tolerance is
// max(1e-5, 2 * n * 2^-24): 1e-5 (as in the stats test) for the odd shapes and layer3; more
// for the recipe's many-block groups (layer2: n <= 145, 1.7e-5; layer1: 32 images of 32x32 are
// 256 or 512 blocks, n <= 529, 6.3e-5). A missing or doubled pooled row gives far more.
long check_pool(const Problem& p, const DeviceBuffer<__half>& d_x, const DeviceBuffer<__half>& d_w,
                const FwdKernel& kernel, int group_images, cudaStream_t stream) {
  const ConvDesc& d = p.d;
  const auto info = kernel.info();
  INFO("config " << info.name << ", shape " << desc_str(d) << ", group_images " << group_images);
  const auto y = run_fwd(p, d_x, d_w, kernel);
  CHECK(all_finite_half(y));
  const HostPool want = host_pool(y, d);

  const PoolOut full = run_pool(p, d_x, d_w, kernel, true, group_images, stream);
  long y_bad = 0, arg_bad = 0;
  for (size_t i = 0; i < want.y.size(); i++) {
    if (std::memcmp(&full.y[i], &want.y[i], sizeof(__half)) != 0) y_bad++;
    if (full.arg[i] != want.arg[i]) arg_bad++;
  }
  CHECK(y_bad == 0);
  CHECK(arg_bad == 0);

  const PoolOut plain = run_pool(p, d_x, d_w, kernel, false, 0, stream);
  const PoolOut arg_only = run_pool(p, d_x, d_w, kernel, true, 0, stream);
  const PoolOut stats_only = run_pool(p, d_x, d_w, kernel, false, group_images, stream);
  CHECK(bitwise_equal(plain.y, full.y));
  CHECK(bitwise_equal(arg_only.y, full.y));
  CHECK(bitwise_equal(stats_only.y, full.y));
  CHECK(arg_only.arg == full.arg);
  CHECK(bitwise_equal(stats_only.sum, full.sum));
  CHECK(bitwise_equal(stats_only.sumsq, full.sumsq));

  // Double sums over the reference's pooled values, group by group, pixel-major.
  const int groups = d.N / group_images;
  const long group_pixels = (long)group_images * (d.H / 2) * (d.W / 2);
  // The epilogue's threads and rows: an igemm block's, a wgmma block's two MMA warpgroups', a
  // ping-pong or cooperative consumer's (IgemmConfigInfo::epilogue_threads, epilogue_m).
  const int em = info.epilogue_m;
  const int slices = info.epilogue_threads / (info.block_n / 8);
  const int blocks_per_group = groups == 1 ? (int)((d.N * (long)d.H * d.W + em - 1) / em)
                                           : (int)((long)group_images * d.H * d.W / em);
  const double n_add = em / 4 / slices + slices + blocks_per_group;
  const double tol = std::max(1e-5, 2.0 * n_add * std::ldexp(1.0, -24));
  long bad = 0;
  double worst = 0.0;
  std::vector<double> s(d.K), sa(d.K), ss(d.K);
  for (int g = 0; g < groups; g++) {
    std::fill(s.begin(), s.end(), 0.0);
    std::fill(sa.begin(), sa.end(), 0.0);
    std::fill(ss.begin(), ss.end(), 0.0);
    for (long q = g * group_pixels; q < (g + 1) * group_pixels; q++)
      for (int k = 0; k < d.K; k++) {
        const double v = __half2float(want.y[q * d.K + k]);
        s[k] += v;
        sa[k] += std::fabs(v);
        ss[k] += v * v;
      }
    for (int k = 0; k < d.K; k++) {
      const double e_s = std::fabs(full.sum[g * d.K + k] - s[k]) / std::max(sa[k], 1e-30);
      const double e_ss = std::fabs(full.sumsq[g * d.K + k] - ss[k]) / std::max(ss[k], 1e-30);
      worst = std::max(worst, std::max(e_s, e_ss));
      if (!(e_s <= tol && e_ss <= tol)) bad++;  // also catches NaN (poison left)
    }
  }
  CHECK(bad == 0);
  std::printf("%s pool %-14s %s: y_pooled mismatches %ld, argmax mismatches %ld, ties %ld, "
              "%d group(s) stats worst rel error %.2e (tol %.1e)\n",
              kernel.family(), info.name, desc_str(d).c_str(), y_bad, arg_bad, want.ties, groups, worst, tol);
  return want.ties;
}

// A pooled recipe layer at batch 512 with ghost groups of 32 images, every config of the family
// (each fits the recipe's pooled layers, see the header).
void check_recipe_pool(int H, int C, int K, uint64_t seed, bool wgmma = false) {
  const ConvDesc d{512, H, H, C, K, 3};
  const Problem p = make_problem(d, C, seed);
  auto d_x = upload_half(p.x), d_w = upload_half(p.w);
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  for (const FwdKernel& kernel : fwd_kernels(wgmma)) {
    if (!kernel.accepts(C)) continue;
    CHECK(pool_accepts(d, kernel.info()));
    check_pool(p, d_x, d_w, kernel, 32, stream);
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

// The fused statistics epilogue on small shapes (one group and ghost groups), every config of
// the family: y bitwise the plain launch's, and the sums vs double sums over the stored y.
void check_stats_epilogue(bool wgmma);

// The fused max-pool epilogue on odd shapes, uniform and integer (tie-heavy) values, every
// config of the family that accepts the shape.
void check_pool_odd_shapes(bool wgmma);

}  // namespace

// ------------------------------------------------------------------------ host-only checks

// FilterTap + a_offset (what the kernel's A loader uses) vs the definition of the implicit
// im2col matrix, for every row m and every 8-channel chunk k the kernel visits, walking k in
// steps of BlockK from each chunk's start as the loader does. Exact (integer) comparison.
TEST_CASE("igemm im2col index helpers match the definition (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::a_offset;
  using kernels::igemm_detail::FilterTap;
  const ConvDesc shapes[] = {{2, 5, 7, 8, 8, 3},  {1, 4, 4, 32, 8, 1},  {2, 3, 3, 16, 8, 5},
                             {1, 1, 1, 8, 8, 3},  {2, 6, 6, 40, 8, 3},  {1, 4, 4, 64, 8, 3}};
  for (const ConvDesc& d : shapes)
    for (int block_k : {32, 64}) {
      INFO(desc_str(d) << " BlockK " << block_k);
      const int M = d.N * d.H * d.W, Kg = d.R * d.R * d.C, pad = (d.R - 1) / 2;
      long mismatches = 0, visited = 0;
      for (int chunk = 0; chunk < block_k / 8; chunk++) {
        FilterTap tap;
        tap.init(chunk * 8, d.C, d.R);
        for (int k = chunk * 8; k < Kg + block_k; k += block_k, tap.advance(block_k, d.C, d.R)) {
          const bool k_ok = k < Kg;
          if ((tap.r < d.R) != k_ok) mismatches++;  // r >= R marks "past the end"
          if (!k_ok) continue;
          // The definition: k = (r * R + s) * C + c.
          const int c = k % d.C, s = (k / d.C) % d.R, r = k / d.C / d.R;
          if (tap.r != r || tap.s != s || tap.c != c) mismatches++;
          for (int m = 0; m < M; m++) {
            const int img = m / (d.H * d.W), oh = (m / d.W) % d.H, ow = m % d.W;
            const int ih = oh + r - pad, iw = ow + s - pad;
            const bool inside = ih >= 0 && ih < d.H && iw >= 0 && iw < d.W;
            const int want = inside ? ((img * d.H + ih) * d.W + iw) * d.C + c : -1;
            if (a_offset(m, oh, ow, tap, d.H, d.W, d.C, pad) != want) mismatches++;
            // The loader's split form: the pixel's tap mask and the tap's offset.
            const bool bit = (kernels::igemm_detail::tap_mask(oh, ow, d.H, d.W, d.R, pad) >> (tap.r * d.R + tap.s)) & 1u;
            const int split = bit ? m * d.C + kernels::igemm_detail::tap_delta(tap, d.W, d.C, pad) : -1;
            if (split != want) mismatches++;
            visited++;
          }
        }
      }
      CHECK(visited == (long)M * Kg / 8);
      CHECK(mismatches == 0);
    }
}

// The forward kernel's ldmatrix addresses, pushed through the PTX semantics of ldmatrix (lane l
// receives, of matrix j, S_j[l / 4][2 * (l % 4)] and + 1, where row i of S_j starts at the
// address lane 8j + i supplied) and compared with mma.m16n8k16's fragment layout (docs in
// kernels/conv/ptx_sm80.cuh). sA holds A[m][k], sB holds B^T[n][k]; each element encodes its
// (row, k) so a misplaced row or column shows. Exact.
TEST_CASE("igemm forward ldmatrix addressing yields the mma fragments (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::fwd_a_ldsm;
  using kernels::igemm_detail::fwd_b_ldsm;
  auto code = [](int row, int k) { return row * 100 + k; };
  auto ldsm = [&](auto coord_of, int lane, int j, int half) {
    const int g = lane / 4, t = lane % 4;
    const auto r = coord_of(8 * j + g);  // the lane that addressed row g of matrix j
    return code(r.row, r.col + 2 * t + half);
  };
  long bad = 0;
  for (int lane = 0; lane < 32; lane++) {
    const int g = lane / 4, t = lane % 4;
    for (int half = 0; half < 2; half++) {
      // a[j]: m = g (+8 for j = 1, 3), k = 2t + half (+8 for j = 2, 3).
      for (int j = 0; j < 4; j++)
        if (ldsm(fwd_a_ldsm, lane, j, half) != code(g + (j & 1) * 8, 2 * t + half + (j >> 1) * 8)) bad++;
      // Registers b[0][0], b[0][1], b[1][0], b[1][1]: n = g (+8 for the second n8 tile),
      // k = 2t + half (+8 for the second register of a tile).
      for (int j = 0; j < 4; j++)
        if (ldsm(fwd_b_ldsm, lane, j, half) != code(g + (j >> 1) * 8, 2 * t + half + (j & 1) * 8)) bad++;
    }
  }
  CHECK(bad == 0);
}

// The launchers reject what the kernel cannot do before touching the GPU (no device needed:
// the pointers below are never dereferenced).
TEST_CASE("igemm launchers check their preconditions (host)", "[gpu][igemm]") {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  __half* x = fake(0x10000);
  __half* w = fake(0x20000);
  __half* y = fake(0x30000);
  const ConvDesc ok{2, 4, 4, 16, 16, 3};
  const IgemmConfig cfg = IgemmConfig::k64x64x32s4;
  auto fwd = [&](const __half* xx, const __half* ww, __half* yy, const ConvDesc& d) {
    kernels::conv_forward_igemm(xx, ww, yy, d, cfg, 0);
  };
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 12, 16, 3}), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 16, 20, 3}), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 4, 4, 16, 16, 2}), std::invalid_argument);  // even R
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{2, 8, 8, 16, 16, 7}), std::invalid_argument);  // R > 5
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{0, 4, 4, 16, 16, 3}), std::invalid_argument);  // empty
  CHECK_THROWS_AS(fwd(fake(0x10008), w, y, ok), std::invalid_argument);                // x align
  CHECK_THROWS_AS(fwd(x, fake(0x20002), y, ok), std::invalid_argument);                // w align
  CHECK_THROWS_AS(fwd(x, w, fake(0x30004), ok), std::invalid_argument);                // y align
  CHECK_THROWS_AS(fwd(nullptr, w, y, ok), std::invalid_argument);
  // 2^31 elements of x: beyond 32-bit indexing.
  CHECK_THROWS_AS(fwd(x, w, y, ConvDesc{1 << 16, 64, 64, 8, 8, 1}), std::invalid_argument);
  CHECK_THROWS_AS(kernels::conv_forward_igemm(x, w, y, ok, static_cast<IgemmConfig>(99), 0),
                  std::invalid_argument);

  float* f = reinterpret_cast<float*>(0x40000);
  const kernels::IgemmStats good{f, f, f, 2};
  auto stats = [&](const ConvDesc& d, const kernels::IgemmStats& s) {
    kernels::conv_forward_igemm_stats(x, w, y, d, cfg, s, 0);
  };
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, f, f, 3}), std::invalid_argument);  // 3 !| 2
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, nullptr, f, 2}), std::invalid_argument);
  // Two groups of one 4x4 image = 16 pixels each: a 64-row block would straddle groups.
  CHECK_THROWS_AS(stats(ok, kernels::IgemmStats{f, f, f, 1}), std::invalid_argument);
  CHECK_THROWS_AS(stats(ConvDesc{2, 4, 4, 12, 16, 3}, good), std::invalid_argument);  // C % 8
  CHECK(kernels::igemm_stats_scratch_bytes(ConvDesc{3, 5, 5, 8, 24, 3}, cfg) ==
        2 * 2 * 24 * sizeof(float));  // ceil(75 / 64) = 2 blocks of rows, sums + squares
}

// ----------------------------------------------------------------------- recipe shapes (GPU)

TEST_CASE("igemm conv prep 27(pad 32)->64 1x1 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(32, 32, 64, 1, 27, 110);
}

TEST_CASE("igemm conv layer1 64->128 3x3 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(32, 64, 128, 3, 64, 120);
}

TEST_CASE("igemm conv layer1 res 128->128 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(16, 128, 128, 3, 128, 130);
}

TEST_CASE("igemm conv layer2 128->256 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(16, 128, 256, 3, 128, 140);
}

TEST_CASE("igemm conv layer3 256->512 3x3 @8, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(8, 256, 512, 3, 256, 150);
}

TEST_CASE("igemm conv layer3 res 512->512 3x3 @4, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_shape(4, 512, 512, 3, 512, 160);
}

// -------------------------------------------------------------------------- odd shapes (GPU)

// Partial tiles everywhere: M, K and R*R*C not multiples of any BlockM / BlockN / BlockK
// (e.g. M = 75, K = 24, R*R*C = 72), C < BlockK (several taps per K slice), R = 5, a 1x1
// image. Compared in full.
TEST_CASE("igemm conv odd shapes vs reference", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const ConvDesc shapes[] = {{3, 5, 5, 8, 24, 3},   {2, 6, 9, 24, 40, 3}, {5, 3, 3, 16, 8, 1},
                             {2, 6, 6, 16, 16, 5},  {4, 1, 1, 8, 8, 3},   {4, 7, 7, 40, 72, 3},
                             {1, 11, 13, 8, 136, 3}};
  uint64_t seed = 200;
  for (const ConvDesc& d : shapes) {
    const Problem p = make_problem(d, d.C, seed += 10);
    const auto y_ref = reference(p, 0, d.N);
    auto d_x = upload_half(p.x), d_w = upload_half(p.w);
    for (IgemmConfig config : kernels::kIgemmConfigs) {
      INFO("config " << kernels::igemm_config_info(config).name << ", shape " << desc_str(d));
      const auto y = run_igemm(p, d_x, d_w, config);
      CHECK(all_finite_half(y));
      const double e = rel_l2_error(to_float(y, 0, p.y_size()).data(), y_ref.data(), p.y_size());
      CHECK(e <= kTolOut);
    }
  }
}

// ---------------------------------------------------------------- statistics epilogue (GPU)

// conv_forward_igemm_stats: y bitwise equal to conv_forward_igemm's, and the per-group,
// per-channel sum / sum of squares equal to double-precision sums over that y.
// Tolerance: the kernel adds in fp32 along a path of at most BlockM / 4 rows per thread (<= 32),
// 4 slices per block and the blocks of a group (<= 4 here: groups of <= 256 pixels); a sum
// whose every term passes through at most n additions errs by at most n * 2^-24 * sum |terms|,
// here <= 40 * 6e-8 = 2.4e-6 of sum |y| (sum y^2 for the squares). 1e-5 is above that bound;
// a missing or doubled row gives far more.
namespace {

void check_stats_epilogue(bool wgmma) {
  struct Case {
    ConvDesc d;
    int group_images;
  };
  const Case cases[] = {
      {{3, 5, 5, 8, 24, 3}, 3},        // one group, partial row and column tiles
      {{8, 8, 8, 64, 128, 3}, 2},      // 4 ghost groups of 128 pixels
      {{8, 8, 8, 32, 64, 1}, 4},       // the prep conv's shape, 2 groups
      {{4, 16, 16, 128, 256, 3}, 1},   // 4 groups of one 16x16 image (256 pixels)
      // 1x1 on 64 channels (one 64-wide slice: the cooperative tiles' two consumers take turns
      // in the one stage), a partial last tile (180 pixels: the 128 x 256 cooperative tile's
      // last consumer has no rows); then 4 groups of 64 pixels, which only the 64-row
      // epilogues split (igemm's 64 x 64 tile, the 128 x 256 cooperative tile's consumers).
      {{5, 6, 6, 64, 256, 1}, 5},
      {{8, 4, 8, 64, 256, 1}, 2},
  };
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  uint64_t seed = 300;
  for (const Case& cs : cases) {
    const ConvDesc& d = cs.d;
    const Problem p = make_problem(d, d.C, seed += 10);
    const int groups = d.N / cs.group_images;
    const long group_pixels = (long)cs.group_images * d.H * d.W;
    const auto y_ref = reference(p, 0, d.N);
    auto d_x = upload_half(p.x), d_w = upload_half(p.w);
    for (const FwdKernel& kernel : fwd_kernels(wgmma)) {
      const auto info = kernel.info();
      // Several groups need each block's rows in one group.
      if (groups > 1 && group_pixels % info.epilogue_m != 0) continue;
      if (!kernel.accepts(d.C)) continue;
      INFO("config " << info.name << ", shape " << desc_str(d) << ", group_images " << cs.group_images);
      const auto y_plain = run_fwd(p, d_x, d_w, kernel);
      auto d_y = poisoned<__half>(p.y_size());
      auto d_sum = poisoned<float>((size_t)groups * d.K), d_sumsq = poisoned<float>((size_t)groups * d.K);
      auto d_part = poisoned<float>(kernel.stats_scratch_bytes(d) / sizeof(float));
      kernel.stats(d_x.get(), d_w.get(), d_y.get(), d, {d_sum.get(), d_sumsq.get(), d_part.get(), cs.group_images},
                   stream);
      CUDA_CHECK(cudaStreamSynchronize(stream));
      const auto y = download(d_y);
      CHECK(bitwise_equal(y, y_plain));
      const auto yf = to_float(y, 0, p.y_size());
      CHECK(rel_l2_error(yf.data(), y_ref.data(), p.y_size()) <= kTolOut);

      const auto sum = download(d_sum), sumsq = download(d_sumsq);
      long bad = 0;
      double worst = 0.0;
      for (int g = 0; g < groups; g++)
        for (int k = 0; k < d.K; k++) {
          double s = 0.0, sa = 0.0, ss = 0.0;
          for (long q = g * group_pixels; q < (g + 1) * group_pixels; q++) {
            const double v = yf[q * d.K + k];
            s += v;
            sa += std::fabs(v);
            ss += v * v;
          }
          const double e_s = std::fabs(sum[g * d.K + k] - s) / std::max(sa, 1e-30);
          const double e_ss = std::fabs(sumsq[g * d.K + k] - ss) / std::max(ss, 1e-30);
          worst = std::max(worst, std::max(e_s, e_ss));
          if (!(e_s <= 1e-5 && e_ss <= 1e-5)) bad++;  // also catches NaN (poison left)
        }
      std::printf("%s stats %-14s %s, %d group(s): worst rel error %.2e\n", kernel.family(), info.name,
                  desc_str(d).c_str(), groups, worst);
      CHECK(bad == 0);
    }
  }
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

TEST_CASE("igemm conv fused BN statistics vs CPU sums", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_stats_epilogue(false);
}

// ------------------------------------------------------------ fused max-pool epilogue (host)

// pool_window_row (which sC rows form pooled pixel m0/4 + q) vs the definition of the pooled
// pixel, for every block and every pooled row of shapes with H, W even and each BlockM the
// launcher accepts; every output pixel must belong to exactly one window. And pool2x2_argmax
// (the tie / NaN rule the kernel applies) vs ref::maxpool_forward / ref::maxpool_backward on
// every 2x2 window of {-inf, -1, -0, +0, 1, +inf, NaN}. Exact comparisons.
TEST_CASE("igemm max-pool index helper and tie rule match the definition (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::pool2x2_argmax;
  using kernels::igemm_detail::pool_window_row;
  struct Shape {
    int N, H, W;
  };
  const Shape shapes[] = {{3, 6, 4},  {2, 10, 8}, {1, 2, 64}, {2, 4, 2},  {3, 2, 16},
                          {2, 14, 2}, {2, 4, 32}, {4, 4, 8},  {3, 32, 32}, {3, 8, 8}};
  for (const Shape& sh : shapes)
    for (int block_m : {64, 128}) {
      if (block_m % (2 * sh.W) != 0) continue;
      INFO(sh.N << "x" << sh.H << "x" << sh.W << " BlockM " << block_m);
      const int M = sh.N * sh.H * sh.W, Ho = sh.H / 2, Wo = sh.W / 2;
      std::vector<int> covered(M, 0);
      long mismatches = 0, outside = 0;
      for (int m0 = 0; m0 < M; m0 += block_m)
        for (int q = 0; q < block_m / 4 && m0 / 4 + q < M / 4; q++) {
          const int row = pool_window_row(q, sh.W);
          const int pooled = m0 / 4 + q;
          const int img = pooled / (Ho * Wo), ho = (pooled / Wo) % Ho, wo = pooled % Wo;
          const int want = (img * sh.H + 2 * ho) * sh.W + 2 * wo;  // the window's (0, 0) pixel
          if (m0 + row != want) mismatches++;
          if (row < 0 || row + sh.W + 1 >= block_m) outside++;  // the window must lie in the tile
          for (int off : {0, 1, sh.W, sh.W + 1})
            if (want + off < M) covered[want + off]++;
        }
      CHECK(mismatches == 0);
      CHECK(outside == 0);
      CHECK(std::count(covered.begin(), covered.end(), 1) == M);
    }

  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float values[] = {-inf, -1.0f, -0.0f, 0.0f, 1.0f, inf, nan};
  long arg_bad = 0, value_bad = 0, windows = 0;
  for (float a : values)
    for (float b : values)
      for (float c : values)
        for (float e : values) {
          const float x[4] = {a, b, c, e};  // a 1x2x2x1 tensor: positions dy * 2 + dx
          const float ones[1] = {1.0f};
          float y[1], dx[4];
          ref::maxpool_forward(x, y, 1, 2, 2, 1, 2);
          ref::maxpool_backward(x, ones, dx, 1, 2, 2, 1, 2);
          int want = -1;
          for (int pos = 0; pos < 4; pos++)
            if (dx[pos] != 0.0f) want = pos;
          const int got = pool2x2_argmax(a, b, c, e);
          if (got != want) arg_bad++;
          // The kernel stores the picked element's bits: they must be the reference's value
          // (sign of zero included; NaN for NaN).
          const bool same = std::isnan(y[0]) ? std::isnan(x[got])
                                             : std::memcmp(&x[got], &y[0], sizeof(float)) == 0;
          if (!same) value_bad++;
          windows++;
        }
  CHECK(windows == 7 * 7 * 7 * 7);
  CHECK(arg_bad == 0);
  CHECK(value_bad == 0);
}

// conv_forward_igemm_pool rejects what the epilogue cannot do before touching the GPU (no device
// needed: the pointers are never dereferenced).
TEST_CASE("igemm pool launcher checks its preconditions (host)", "[gpu][igemm]") {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  __half* x = fake(0x10000);
  __half* w = fake(0x20000);
  __half* y = fake(0x30000);
  uint8_t* arg = reinterpret_cast<uint8_t*>(0x50000);
  float* f = reinterpret_cast<float*>(0x40000);
  const ConvDesc ok{2, 4, 4, 16, 16, 3};
  const IgemmConfig c64 = IgemmConfig::k64x64x32s4, c128 = IgemmConfig::k128x128x32s4;
  auto pool = [&](const ConvDesc& d, IgemmConfig cfg, __half* yy, uint8_t* aa,
                  const kernels::IgemmStats* st) {
    kernels::conv_forward_igemm_pool(x, w, yy, aa, d, cfg, st, 0);
  };
  auto shape = [&](const ConvDesc& d) { pool(d, c64, y, arg, nullptr); };
  // Each case must be refused by its own check: the message names the reason.
  auto refused = [](const auto& call, const char* why) {
    try {
      call();
    } catch (const std::invalid_argument& e) {
      return std::string(e.what()).find(why) != std::string::npos;
    }
    return false;
  };
  CHECK(refused([&] { shape(ConvDesc{2, 5, 4, 16, 16, 3}); }, "H and W must be even"));
  CHECK(refused([&] { shape(ConvDesc{2, 4, 5, 16, 16, 3}); }, "H and W must be even"));
  CHECK(refused([&] { shape(ConvDesc{2, 4, 6, 16, 16, 3}); }, "multiple of 2 * W"));   // 64 % 12
  CHECK(refused([&] { shape(ConvDesc{1, 2, 64, 16, 16, 3}); }, "multiple of 2 * W"));  // 64 % 128
  CHECK(refused([&] { pool(ok, c64, y, arg + 4, nullptr); }, "argmax must be 8-byte aligned"));
  CHECK(refused([&] { pool(ok, c64, nullptr, arg, nullptr); }, "null tensor"));
  CHECK(refused([&] { pool(ok, c64, fake(0x30002), arg, nullptr); }, "16-byte aligned"));
  // The conv's own preconditions hold here too.
  CHECK(refused([&] { shape(ConvDesc{2, 4, 4, 12, 16, 3}); }, "C must be a multiple of 8"));
  CHECK(refused([&] { shape(ConvDesc{2, 4, 4, 16, 20, 3}); }, "K must be a multiple of 8"));
  CHECK(refused([&] { shape(ConvDesc{2, 4, 4, 16, 16, 2}); }, "R must be odd"));
  CHECK_THROWS_AS(pool(ok, static_cast<IgemmConfig>(99), y, arg, nullptr), std::invalid_argument);
  // Statistics: a null buffer, a group size that does not divide N, groups a block would
  // straddle (two groups of one 4x4 image = 16 pixels; of one 8x8 image = 64 pixels fit
  // BlockM = 64 but not 128).
  const kernels::IgemmStats null_sum{nullptr, f, f, 1}, three{f, f, f, 3}, one{f, f, f, 1};
  CHECK(refused([&] { pool(ok, c64, y, arg, &null_sum); }, "null statistics buffer"));
  CHECK(refused([&] { pool(ok, c64, y, arg, &three); }, "group_images must divide N"));
  CHECK(refused([&] { pool(ok, c64, y, arg, &one); }, "multiple of BlockM"));
  const ConvDesc two_8x8{2, 8, 8, 16, 16, 3};
  CHECK(refused([&] { pool(two_8x8, c128, y, arg, &one); }, "multiple of BlockM"));
}

// ----------------------------------------------------------- fused max-pool epilogue (GPU)

TEST_CASE("igemm conv+pool layer1 64->128 3x3 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_pool(32, 64, 128, 400);
}

TEST_CASE("igemm conv+pool layer2 128->256 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_pool(16, 128, 256, 410);
}

TEST_CASE("igemm conv+pool layer3 256->512 3x3 @8, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_recipe_pool(8, 256, 512, 420);
}

// Partial tiles (M = 72, 160; K = 24, 40, 72, 136), H != W, W from 2 to 64 (W = 64 only with
// BlockM = 128), tiles holding row pairs of two images (6x4 images = 24 pixels), R = 1, 3, 5,
// one group and ghost groups; each shape with uniform values and with integer values in
// {-1, 0, 1} (many tied windows, so the argmax tie rule is exercised: checked that ties occur).
namespace {

void check_pool_odd_shapes(bool wgmma) {
  const ConvDesc shapes[] = {{3, 6, 4, 8, 24, 3},   {2, 10, 8, 24, 40, 3}, {3, 2, 16, 16, 72, 5},
                             {2, 14, 2, 8, 24, 1},  {1, 2, 64, 8, 136, 3}, {2, 4, 32, 40, 24, 3},
                             {4, 4, 8, 16, 24, 3},  {3, 6, 4, 64, 24, 3}};
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  uint64_t seed = 500;
  long integer_ties = 0;
  for (const ConvDesc& d : shapes)
    for (bool integer : {false, true}) {
      seed += 10;
      const Problem p = integer ? make_integer_problem(d, seed) : make_problem(d, d.C, seed);
      auto d_x = upload_half(p.x), d_w = upload_half(p.w);
      int tested = 0;
      for (const FwdKernel& kernel : fwd_kernels(wgmma)) {
        const auto info = kernel.info();
        if (!pool_accepts(d, info) || !kernel.accepts(d.C)) continue;
        const long ties = check_pool(p, d_x, d_w, kernel, odd_stats_group(d, info.epilogue_m), stream);
        if (integer) integer_ties += ties;
        tested++;
      }
      CHECK(tested >= 2);  // W = 64: the BlockM >= 128 configs; else all
    }
  CHECK(integer_ties > 0);
  CUDA_CHECK(cudaStreamDestroy(stream));
}

}  // namespace

TEST_CASE("igemm conv+pool odd shapes and ties", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_pool_odd_shapes(false);
}

// ------------------------------------------------- the same epilogues on the wgmma forward

// The wgmma forward kernel ends with the same epilogue code (kernels/conv/conv_epilogue.cuh),
// so the same checks apply, every wgmma config, on an sm_90a Hopper.

TEST_CASE("wgmma conv fused BN statistics vs CPU sums", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_stats_epilogue(true);
}

TEST_CASE("wgmma conv+pool odd shapes and ties", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_pool_odd_shapes(true);
}

TEST_CASE("wgmma conv+pool layer1 64->128 3x3 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe_pool(32, 64, 128, 610, true);
}

TEST_CASE("wgmma conv+pool layer2 128->256 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe_pool(16, 128, 256, 620, true);
}

TEST_CASE("wgmma conv+pool layer3 256->512 3x3 @8, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  check_recipe_pool(8, 256, 512, 630, true);
}
