// kernel_bench: times every GPU kernel of the ResNet-9 step and every cuDNN algorithm of each
// convolution pass on the recipe's exact shapes (batch 512), after checking each against the
// CPU reference on a small slice. Prints a table and writes JSON (docs/kernel_bench.md).
//
//   kernel_bench [--json out.json] [--iters N] [--help]
//
// Timing: cs::time_calls (engine/gpu_context.h): CUDA events around R back-to-back launches (R
// chosen so a sample lasts ~200 us), the stream held until all R are enqueued so the host's
// per-call cost is not timed; N samples after warm-up, median reported.
// Exit status: 0 all checks passed, 1 no GPU or bad arguments, 3 a check failed.
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_gpu.h"
#include "bench/bench_util.h"
#include "engine/conv_cudnn.h"
#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/augment.cuh"
#include "kernels/bn.cuh"
#include "kernels/head.cuh"
#include "kernels/optim.cuh"
#include "kernels/ref/augment.h"
#include "kernels/ref/conv.h"
#include "kernels/ref/elementwise.h"
#include "kernels/ref/ghost_bn.h"
#include "kernels/ref/linear.h"
#include "kernels/ref/loss.h"
#include "kernels/ref/optim.h"
#include "kernels/ref/pool.h"
#include "kernels/ref/whiten.h"
#include "kernels/whiten.cuh"
#include "net/layout.h"
#include "net/recipe.h"
#include "tests/gpu_test_util.h"

using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::download_half;
using gpu_test::round_to_half;
using gpu_test::upload;
using gpu_test::upload_half;
using json = nlohmann::json;

namespace {

using bench::rel_l2;
using bench::random_vec;
using bench::utc_now;
using bench::kSampleTargetUs;
using bench::kWarmup;

constexpr int kBatch = 512;
constexpr int kGroup = 32;
// Workspace offered to the cuDNN candidates; algorithms that want more are listed, not run.
constexpr size_t kMaxWorkspace = size_t(2) << 30;

// ------------------------------------------------------------------------------ versions

std::string version_string(int v, int major_div, int minor_div) {
  return std::to_string(v / major_div) + "." + std::to_string((v % major_div) / minor_div);
}

// ------------------------------------------------------------------------------- checking

struct Check {
  std::string status = "n/a";  // "pass", "fail", "n/a"
  std::string what;            // what was compared
  double error = 0.0;          // relative L2 error (or max abs diff for exact checks)
  double tol = 0.0;
};

double max_abs(const float* a, const float* b, long n) {
  double m = 0.0;
  for (long i = 0; i < n; i++) {
    const double d = std::fabs((double)a[i] - (double)b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

// Folds one comparison into c: the status is "fail" if any comparison failed, and c keeps the
// comparison closest to (or furthest past) its tolerance.
void add_check(Check& c, const std::string& what, double error, double tol) {
  const bool ok = error <= tol;
  const double score = error / std::max(tol, 1e-30);
  const double current = c.error / std::max(c.tol, 1e-30);
  const bool c_ok = c.status != "fail";
  if (c.status == "n/a" || (!ok && c_ok) || (ok == c_ok && score > current)) {
    c.what = what;
    c.error = error;
    c.tol = tol;
  }
  c.status = (c.status == "fail" || !ok) ? "fail" : "pass";
}

// Tolerances as in tests/kernels_gpu_test.cu: fp16 outputs 2e-3 (rounding ~3e-4 rms),
// fp16 gradients 3e-3, fp32 reductions 1e-5, convolutions 1e-2 (Winograd / FFT candidates).
constexpr double kTolHalf = 2e-3, kTolHalfGrad = 3e-3, kTolF32 = 1e-5, kTolConv = 1e-2;

// --------------------------------------------------------------------------------- timing

struct Row {
  Row(std::string f, std::string n, std::string s)
      : family(std::move(f)), name(std::move(n)), shape(std::move(s)) {}
  std::string family, name, shape;
  double median_us = -1, min_us = -1;
  double flop = 0, bytes = 0;  // per launch; flop for convs, bytes for memory-bound kernels
  Check check;
  std::string note;  // algorithm, workspace, or why it did not run
};

int g_iters = 20;

// Median and minimum microseconds per call of f (bench::time_calls: the protocol shared with
// conv_bench).
void time_row(Row& row, const std::function<void()>& f) {
  const bench::Timing t = bench::time_calls(f, g_iters);
  row.median_us = t.median_us;
  row.min_us = t.min_us;
}

std::string shape_str(std::initializer_list<long> dims) {
  std::string s;
  for (long d : dims) s += (s.empty() ? "" : "x") + std::to_string(d);
  return s;
}

std::vector<uint8_t> random_bytes(long n, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<uint8_t> v(n);
  for (long i = 0; i < n; i += 8) {  // 8 bytes per draw: the dataset is 150 MB
    uint64_t r = gen();
    for (long j = i; j < std::min(n, i + 8); j++, r >>= 8) v[j] = (uint8_t)(r & 0xff);
  }
  return v;
}

// ----------------------------------------------------------------------------- benchmarks

void bench_augment(std::vector<Row>& rows) {
  const net::Recipe r;
  const int n = 50000, pad = r.pad, S = 32, Sp = S + 2 * pad;
  kernels::Normalization norm;
  for (int c = 0; c < 3; c++) {
    norm.mean[c] = r.mean[c];
    norm.std_[c] = r.std_[c];
  }
  const auto planes = random_bytes((long)n * 3 * S * S, 1);
  auto d_planes = upload(planes);
  DeviceBuffer<__half> d_padded((size_t)n * Sp * Sp * 3);
  {
    Row row{"augment", "prepare_dataset", shape_str({n, 3, S, S}) + " -> " + shape_str({n, Sp, Sp, 3})};
    kernels::prepare_dataset(d_planes.get(), n, pad, norm, d_padded.get(), 0);
    const int k = 4;  // slice: the first images
    const auto got = download_half(d_padded.get(), (size_t)k * Sp * Sp * 3);
    std::vector<float> normed((size_t)k * S * S * 3), want(got.size());
    ref::normalize_cifar(planes.data(), k, r.mean, r.std_, normed.data());
    ref::reflect_pad(normed.data(), want.data(), k, S, S, 3, pad);
    want = round_to_half(want);
    add_check(row.check, "padded images 0..3 (max abs)", max_abs(got.data(), want.data(), (long)got.size()), 2e-3);
    row.bytes = (double)n * 3 * S * S + 2.0 * n * Sp * Sp * 3;
    time_row(row, [&] { kernels::prepare_dataset(d_planes.get(), n, pad, norm, d_padded.get(), 0); });
    rows.push_back(row);
  }
  DeviceBuffer<int> d_perm(n);
  DeviceBuffer<kernels::CropFlipParams> d_params(n);
  {
    Row row{"augment", "make_epoch_params", "n=" + std::to_string(n)};
    size_t temp_bytes = 0;
    kernels::make_epoch_params(7, 0, n, pad, nullptr, nullptr, nullptr, &temp_bytes, 0);
    DeviceBuffer<char> d_temp(temp_bytes);
    auto run = [&] {
      size_t b = temp_bytes;
      kernels::make_epoch_params(7, 0, n, pad, d_perm.get(), d_params.get(), d_temp.get(), &b, 0);
    };
    run();
    auto perm = download(d_perm);
    const auto params = download(d_params);
    std::sort(perm.begin(), perm.end());
    long bad = 0;
    for (int i = 0; i < n; i++) bad += perm[i] != i;
    for (const auto& p : params)
      bad += p.dy < 0 || p.dy > 2 * pad || p.dx < 0 || p.dx > 2 * pad || (p.flip != 0 && p.flip != 1);
    add_check(row.check, "perm is a permutation, offsets/flips in range (bad count)", (double)bad, 0.0);
    row.bytes = (double)n * (sizeof(int) + sizeof(kernels::CropFlipParams));  // outputs only
    row.note = "bytes = outputs only (the radix sort's passes are not counted)";
    time_row(row, run);
    rows.push_back(row);
  }
  {
    Row row{"augment", "crop_flip_batch", shape_str({kBatch, Sp, Sp, 3}) + " -> " + shape_str({kBatch, S, S, 3})};
    DeviceBuffer<__half> d_out((size_t)kBatch * S * S * 3);
    kernels::crop_flip_batch(d_padded.get(), Sp, Sp, d_perm.get(), d_params.get(), kBatch, d_out.get(), 0);
    const int k = 8;
    const auto got = download_half(d_out.get(), (size_t)k * S * S * 3);
    const auto perm = download(d_perm.get(), k);
    const auto params = download(d_params);
    std::vector<float> pad_imgs((size_t)k * Sp * Sp * 3);
    std::vector<int> local(k);
    std::vector<ref::CropFlip> cf(k);
    for (int b = 0; b < k; b++) {
      const auto img = download_half(d_padded.get() + (size_t)perm[b] * Sp * Sp * 3, (size_t)Sp * Sp * 3);
      std::copy(img.begin(), img.end(), pad_imgs.begin() + (size_t)b * Sp * Sp * 3);
      local[b] = b;
      const auto& p = params[perm[b]];
      cf[b] = ref::CropFlip{p.dy, p.dx, p.flip};
    }
    std::vector<float> want(got.size());
    ref::crop_flip(pad_imgs.data(), Sp, Sp, 3, local.data(), cf.data(), k, S, want.data());
    add_check(row.check, "batch slots 0..7 (max abs)", max_abs(got.data(), want.data(), (long)got.size()), 0.0);
    row.bytes = 2.0 * 2.0 * kBatch * S * S * 3;
    time_row(row, [&] {
      kernels::crop_flip_batch(d_padded.get(), Sp, Sp, d_perm.get(), d_params.get(), kBatch, d_out.get(), 0);
    });
    rows.push_back(row);
  }
}

void bench_whiten(std::vector<Row>& rows) {
  const int S = 32;
  {
    const int n = net::Recipe().whiten_images;
    Row row{"whiten", "patch_covariance", shape_str({n, S, S, 3}) + " -> 27x27"};
    const auto x = round_to_half(random_vec((long)n * S * S * 3, 2, -2.0f, 2.0f));
    auto d_x = upload_half(x);
    DeviceBuffer<float> d_cov(27 * 27);
    DeviceBuffer<char> d_cov_scratch(kernels::patch_covariance_scratch_bytes(n));  // n >= k
    const int k = 100;  // slice: the covariance of the first 100 images
    kernels::patch_covariance(d_x.get(), k, d_cov.get(), d_cov_scratch.get(), 0);
    const auto got = download(d_cov);
    std::vector<double> cov((size_t)27 * 27);
    ref::patch_covariance(x.data(), k, S, S, 3, 3, cov.data());
    const std::vector<float> want(cov.begin(), cov.end());
    add_check(row.check, "covariance of images 0..99", rel_l2(got.data(), want.data(), 27 * 27), kTolF32);
    row.bytes = 2.0 * n * S * S * 3;
    time_row(row, [&] { kernels::patch_covariance(d_x.get(), n, d_cov.get(), d_cov_scratch.get(), 0); });
    rows.push_back(row);
  }
  for (int mirror = 0; mirror <= 1; mirror++) {
    const int Cp = kernels::kWhitenChannelsPadded;
    Row row{"whiten", mirror ? "whiten_conv_forward (mirror)" : "whiten_conv_forward",
            shape_str({kBatch, S, S, 3}) + " -> " + shape_str({kBatch, S, S, Cp})};
    const auto x = round_to_half(random_vec((long)kBatch * S * S * 3, 3, -2.0f, 2.0f));
    const auto w = random_vec(27 * 27, 4, -0.5f, 0.5f);
    auto d_x = upload_half(x);
    auto d_w = upload(w);
    DeviceBuffer<__half> d_y((size_t)kBatch * S * S * Cp);
    kernels::whiten_conv_forward(d_x.get(), d_w.get(), d_y.get(), kBatch, mirror != 0, 0);
    const int k = 2;
    const auto y = download_half(d_y.get(), (size_t)k * S * S * Cp);
    std::vector<float> src(x.begin(), x.begin() + (size_t)k * S * S * 3);
    if (mirror) ref::flip_horizontal(x.data(), src.data(), k, S, S, 3);
    const ref::ConvShape cs{k, S, S, 3, 27, 3};
    std::vector<float> want(cs.y_size()), got(cs.y_size());
    ref::conv_forward(src.data(), w.data(), want.data(), cs);
    for (long p = 0; p < (long)k * S * S; p++)
      for (int c = 0; c < 27; c++) got[p * 27 + c] = y[p * Cp + c];
    add_check(row.check, "images 0..1", rel_l2(got.data(), want.data(), cs.y_size()), kTolHalf);
    row.bytes = 2.0 * kBatch * S * S * 3 + 2.0 * kBatch * S * S * Cp;
    row.flop = 2.0 * kBatch * S * S * 27 * 27;
    row.note = "memory-bound; flop counted for reference only";
    time_row(row, [&] { kernels::whiten_conv_forward(d_x.get(), d_w.get(), d_y.get(), kBatch, mirror != 0, 0); });
    rows.push_back(row);
  }
}

struct BnLayer {
  const char* name;
  int H, W, C, P;
  bool residual, dout2;
};

// One BN layer with one kernel variant (GhostBnCeluParams::vectorized); the 2-channel variant's
// rows are named with a " (pair)" suffix.
void bench_bn_layer(std::vector<Row>& rows, const BnLayer& L, bool vectorized, uint64_t seed) {
  const net::Recipe r;
  const int N = kBatch, G = N / kGroup, Ho = L.H / L.P, Wo = L.W / L.P;
  const long nx = (long)N * L.H * L.W * L.C, np = (long)N * Ho * Wo * L.C;
  const kernels::GhostBnCeluShape s{N, L.H, L.W, L.C, L.P, kGroup};
  kernels::GhostBnCeluParams prm{r.bn_eps, r.bn_momentum, r.celu_alpha};
  prm.vectorized = vectorized;
  const std::string name = std::string(L.name) + (vectorized ? "" : " (pair)");
  const std::string shape = shape_str({N, L.H, L.W, L.C}) + " P" + std::to_string(L.P) +
                            (L.residual ? " +res" : "") + (L.dout2 ? " +dout2" : "");

  auto x = random_vec(nx, seed);
  for (long i = 0; i < nx; i++) x[i] += 0.3f * (float)(i % L.C % 5) - 0.6f;
  x = round_to_half(x);
  const auto bias = random_vec(L.C, seed + 1, -0.5f, 0.5f);
  const auto res = L.residual ? round_to_half(random_vec(np, seed + 2)) : std::vector<float>();
  const auto dout = round_to_half(random_vec(np, seed + 3));
  const auto dout2 = L.dout2 ? round_to_half(random_vec(np, seed + 4)) : std::vector<float>();
  auto d_x = upload_half(x);
  auto d_bias = upload(bias);
  DeviceBuffer<__half> d_res, d_dout2;
  if (L.residual) d_res = upload_half(res);
  if (L.dout2) d_dout2 = upload_half(dout2);
  auto d_dout = upload_half(dout);
  DeviceBuffer<__half> d_pooled(L.P > 1 ? np : 0), d_out(np), d_dx(nx);
  DeviceBuffer<float> d_mean((size_t)G * L.C), d_invstd((size_t)G * L.C), d_dbias(L.C);
  DeviceBuffer<float> d_rm((size_t)G * L.C), d_rv((size_t)G * L.C);
  d_rm.zero();
  d_rv.zero();
  DeviceBuffer<float> d_scratch(kernels::ghost_bn_celu_scratch_bytes(s) / sizeof(float));
  __half* pooled = L.P > 1 ? d_pooled.get() : nullptr;

  auto fwd = [&] {
    kernels::pool_bn_celu_forward_train(d_x.get(), pooled, d_bias.get(), L.residual ? d_res.get() : nullptr,
                                        d_out.get(), d_mean.get(), d_invstd.get(), d_rm.get(), d_rv.get(),
                                        d_scratch.get(), s, prm, 0);
  };
  auto bwd = [&] {
    kernels::pool_bn_celu_backward(d_dout.get(), L.dout2 ? d_dout2.get() : nullptr, d_x.get(), pooled,
                                   d_bias.get(), d_mean.get(), d_invstd.get(), d_dx.get(), d_dbias.get(),
                                   d_scratch.get(), s, prm, 0);
  };

  // Reference on group 0 (the first 32 images): groups are independent, so this equals the
  // full-batch reference restricted to them.
  const int k = kGroup;
  const long kx = (long)k * L.H * L.W * L.C, kp = (long)k * Ho * Wo * L.C;
  std::vector<float> pooled_ref(x.begin(), x.begin() + kx);
  if (L.P > 1) {
    pooled_ref.assign(kp, 0.0f);
    ref::maxpool_forward(x.data(), pooled_ref.data(), k, L.H, L.W, L.C, L.P);
  }
  const ref::GhostBNShape bs{k, Ho * Wo, L.C, kGroup};
  std::vector<float> z(kp), out_ref(kp), mean_ref(L.C), invstd_ref(L.C);
  ref::ghost_bn_forward_train(pooled_ref.data(), bias.data(), z.data(), mean_ref.data(), invstd_ref.data(),
                              nullptr, nullptr, bs, r.bn_eps, r.bn_momentum);
  ref::celu_forward(z.data(), out_ref.data(), kp, r.celu_alpha);
  if (L.residual) ref::add(out_ref.data(), res.data(), out_ref.data(), kp);

  {
    Row row{"bn", "pool_bn_celu_forward_train " + name, shape};
    fwd();
    const auto out = download_half(d_out.get(), kp);
    const auto mean = download(d_mean.get(), L.C), invstd = download(d_invstd.get(), L.C);
    add_check(row.check, "out group 0", rel_l2(out.data(), out_ref.data(), kp), kTolHalf);
    add_check(row.check, "mean group 0", rel_l2(mean.data(), mean_ref.data(), L.C), kTolF32);
    add_check(row.check, "invstd group 0", rel_l2(invstd.data(), invstd_ref.data(), L.C), kTolF32);
    // stats pass: read x, write pooled (P > 1); apply pass: read pooled (or x), residual, write out.
    row.bytes = 2.0 * (nx + (L.P > 1 ? np : 0) + np + (L.residual ? np : 0) + np);
    time_row(row, fwd);
    rows.push_back(row);
  }
  {
    Row row{"bn", "pool_bn_celu_backward " + name, shape};
    fwd();  // restore the saved statistics of x (the timing loop ran the forward many times)
    bwd();
    std::vector<float> dA(dout.begin(), dout.begin() + kp);
    if (L.dout2) ref::add(dA.data(), dout2.data(), dA.data(), kp);
    std::vector<float> dz(kp), dp(kp), dbias_ref(L.C);
    ref::celu_backward(z.data(), dA.data(), dz.data(), kp, r.celu_alpha);
    ref::ghost_bn_backward(dz.data(), pooled_ref.data(), mean_ref.data(), invstd_ref.data(), dp.data(),
                           dbias_ref.data(), bs);
    std::vector<float> dx_ref = dp;
    if (L.P > 1) {
      dx_ref.assign(kx, 0.0f);
      ref::maxpool_backward(x.data(), dp.data(), dx_ref.data(), k, L.H, L.W, L.C, L.P);
    }
    const auto dx = download_half(d_dx.get(), kx);
    add_check(row.check, "dx group 0", rel_l2(dx.data(), dx_ref.data(), kx), kTolHalfGrad);
    // stats pass: read dout (+dout2), pooled; apply pass: read x, dout (+dout2), write dx.
    const double d_reads = (L.dout2 ? 2.0 : 1.0) * np;
    row.bytes = 2.0 * (d_reads + np + nx + d_reads + nx);
    time_row(row, bwd);
    rows.push_back(row);
  }
  {
    Row row{"bn", "pool_bn_celu_forward_eval " + name, shape};
    const auto mean_c = random_vec(L.C, seed + 5, -0.3f, 0.3f), var_c = random_vec(L.C, seed + 6, 0.3f, 2.0f);
    auto d_mc = upload(mean_c);
    auto d_vc = upload(var_c);
    auto ev = [&] {
      kernels::pool_bn_celu_forward_eval(d_x.get(), nullptr, d_bias.get(), d_mc.get(), d_vc.get(),
                                         L.residual ? d_res.get() : nullptr, d_out.get(), s, prm, 0);
    };
    ev();
    std::vector<float> ze(kp), want(kp);
    ref::ghost_bn_forward_eval(pooled_ref.data(), bias.data(), mean_c.data(), var_c.data(), ze.data(), k,
                               Ho * Wo, L.C, r.bn_eps);
    ref::celu_forward(ze.data(), want.data(), kp, r.celu_alpha);
    if (L.residual) ref::add(want.data(), res.data(), want.data(), kp);
    const auto out = download_half(d_out.get(), kp);
    add_check(row.check, "out images 0..31", rel_l2(out.data(), want.data(), kp), kTolHalf);
    row.bytes = 2.0 * (nx + (L.residual ? np : 0) + np);
    time_row(row, ev);
    rows.push_back(row);
  }
}

void bench_bn(std::vector<Row>& rows) {
  const BnLayer layers[] = {
      {"prep", 32, 32, 64, 1, false, false},        {"layer1", 32, 32, 128, 2, false, true},
      {"layer1_res1", 16, 16, 128, 1, false, false}, {"layer1_res2", 16, 16, 128, 1, true, false},
      {"layer2", 16, 16, 256, 2, false, false},      {"layer3", 8, 8, 512, 2, false, true},
      {"layer3_res1", 4, 4, 512, 1, false, false},   {"layer3_res2", 4, 4, 512, 1, true, false},
  };
  for (const bool vectorized : {true, false}) {
    uint64_t seed = 100;
    for (const auto& L : layers) bench_bn_layer(rows, L, vectorized, seed += 10);
  }
}

void bench_head(std::vector<Row>& rows) {
  const net::Recipe r;
  const int N = kBatch, C = 512, K = net::kClasses;
  const auto x = round_to_half(random_vec((long)N * 16 * C, 5));
  const float bound = 1.0f / std::sqrt((float)C);
  const auto w = random_vec((long)K * C, 6, -bound, bound);
  const auto dlogits = random_vec((long)N * K, 7);
  auto d_x = upload_half(x);
  auto d_w = upload(w);
  auto d_dl = upload(dlogits);
  DeviceBuffer<float> d_feat((size_t)N * C), d_logits((size_t)N * K), d_dw((size_t)K * C);
  DeviceBuffer<__half> d_dx((size_t)N * 16 * C);
  std::vector<float> feat_ref((size_t)N * C), lin((size_t)N * K), logits_ref((size_t)N * K);
  ref::maxpool_forward(x.data(), feat_ref.data(), N, 4, 4, C, 4);
  ref::linear_forward(feat_ref.data(), w.data(), lin.data(), N, C, K);
  ref::scale(lin.data(), logits_ref.data(), (long)N * K, r.logit_scale);
  const std::string shape = shape_str({N, 4, 4, C}) + " -> " + shape_str({N, K});
  {
    Row row{"head", "head_forward", shape};
    auto f = [&] {
      kernels::head_forward(d_x.get(), d_w.get(), d_feat.get(), d_logits.get(), N, C, r.logit_scale, false, 0);
    };
    f();
    const auto logits = download(d_logits);
    add_check(row.check, "logits", rel_l2(logits.data(), logits_ref.data(), (long)N * K), kTolF32);
    row.bytes = 2.0 * N * 16 * C + 4.0 * (N * C + K * C + N * K);
    time_row(row, f);
    rows.push_back(row);
  }
  {
    Row row{"head", "head_backward", shape};
    auto f = [&] {
      kernels::head_backward(d_x.get(), d_feat.get(), d_w.get(), d_dl.get(), d_dx.get(), d_dw.get(), N, C,
                             r.logit_scale, 0);
    };
    f();
    std::vector<float> dlin((size_t)N * K), dfeat((size_t)N * C), dw_ref((size_t)K * C), dx_ref(x.size());
    ref::scale(dlogits.data(), dlin.data(), (long)N * K, r.logit_scale);
    ref::linear_backward(feat_ref.data(), w.data(), dlin.data(), dfeat.data(), dw_ref.data(), N, C, K);
    ref::maxpool_backward(x.data(), dfeat.data(), dx_ref.data(), N, 4, 4, C, 4);
    const auto dx = download_half(d_dx);
    const auto dw = download(d_dw);
    add_check(row.check, "dx", rel_l2(dx.data(), dx_ref.data(), (long)dx.size()), kTolHalf);
    add_check(row.check, "dw", rel_l2(dw.data(), dw_ref.data(), (long)dw.size()), kTolF32);
    row.bytes = 2.0 * N * 16 * C * 2 + 4.0 * (N * C + K * C + N * K);
    time_row(row, f);
    rows.push_back(row);
  }
  {
    Row row{"head", "xent_smooth_forward_backward", shape_str({N, K})};
    const auto logits = random_vec((long)N * K, 8, -4.0f, 4.0f);
    std::mt19937_64 gen(9);
    std::vector<uint8_t> labels(N);
    for (auto& l : labels) l = (uint8_t)(gen() % K);
    auto d_lg = upload(logits);
    auto d_lb = upload(labels);
    DeviceBuffer<float> d_dlg((size_t)N * K), d_loss(1);
    DeviceBuffer<int> d_correct(1);
    auto f = [&] {
      kernels::xent_smooth_forward_backward(d_lg.get(), d_lb.get(), N, K, r.label_smoothing, d_dlg.get(),
                                            d_loss.get(), d_correct.get(), 0);
    };
    f();
    std::vector<float> dref((size_t)N * K);
    int correct_ref = 0;
    const double loss_ref =
        ref::xent_smooth_forward_backward(logits.data(), labels.data(), N, K, r.label_smoothing, dref.data(), &correct_ref);
    const auto dl = download(d_dlg);
    const float loss = download(d_loss)[0];
    const int correct = download(d_correct)[0];
    add_check(row.check, "loss", std::fabs(loss - loss_ref) / loss_ref, kTolF32);
    add_check(row.check, "dlogits", rel_l2(dl.data(), dref.data(), (long)N * K), kTolF32);
    add_check(row.check, "correct", std::fabs((double)correct - correct_ref), 0.0);
    row.bytes = 4.0 * N * K * 2 + N;
    time_row(row, f);
    rows.push_back(row);
  }
}

void bench_optim(std::vector<Row>& rows) {
  const net::Recipe r;
  const net::Layout L = net::make_layout(1.0f, kBatch / kGroup);
  const long n = L.num_params;
  kernels::TensorTable table{};
  table.count = (int)L.params.size();
  double bytes = 0;
  for (int t = 0; t < table.count; t++) {
    const auto& p = L.params[t];
    table.offset[t] = p.offset;
    table.size[t] = p.size;
    table.group[t] = p.is_bn_bias ? 1 : 0;
    table.grad_half[t] = p.shape.size() == 4 ? 1 : 0;
    // read w, v, g (fp16 or fp32); write w, v (+ the fp16 copy)
    bytes += (double)p.size * (4 + 4 + (table.grad_half[t] ? 2 : 4) + 4 + 4 + (table.grad_half[t] ? 2 : 0));
  }
  const auto w0 = random_vec(n, 10, -0.1f, 0.1f), v0 = random_vec(n, 11, -0.01f, 0.01f);
  const auto g32 = random_vec(n, 12), g16 = round_to_half(random_vec(n, 13));
  const std::vector<float> lr_table = {0.01f, 0.1f};
  auto d_w = upload(w0), d_v = upload(v0), d_g = upload(g32), d_lr = upload(lr_table);
  auto d_g16 = upload_half(g16);
  DeviceBuffer<__half> d_w16(n);
  auto d_step = upload(std::vector<int>{0});
  {
    Row row{"optim", "sgd_nesterov_multi", std::to_string(table.count) + " tensors, " + std::to_string(n) + " params"};
    auto f = [&] {
      kernels::sgd_nesterov_multi(d_w.get(), d_w16.get(), d_g.get(), d_g16.get(), d_v.get(), table, d_lr.get(),
                                  d_step.get(), r.wd_weights(), r.wd_bn_bias(), r.momentum, 0);
    };
    f();
    const auto w = download(d_w);
    std::vector<float> w_ref = w0, v_ref = v0;
    for (int t = 0; t < table.count; t++) {
      const long off = table.offset[t], size = table.size[t];
      std::vector<float> g(size);
      for (long i = 0; i < size; i++) g[i] = table.grad_half[t] ? g16[off + i] : g32[off + i];
      ref::sgd_nesterov_step(w_ref.data() + off, g.data(), v_ref.data() + off, size, lr_table[table.group[t]],
                             table.group[t] ? r.wd_bn_bias() : r.wd_weights(), r.momentum);
    }
    std::vector<float> dw(n), dw_ref(n);
    for (long i = 0; i < n; i++) {
      dw[i] = w[i] - w0[i];
      dw_ref[i] = w_ref[i] - w0[i];
    }
    add_check(row.check, "weight update", rel_l2(dw.data(), dw_ref.data(), n), kTolF32);
    row.bytes = bytes;
    time_row(row, f);
    rows.push_back(row);
  }
  {
    Row row{"optim", "ema_update", std::to_string(n) + " floats"};
    const float rho = r.ema_rho_applied();
    auto d_ema = upload(v0);
    kernels::ema_update(d_ema.get(), d_w.get(), n, rho, 0);
    const auto w = download(d_w);
    const auto ema = download(d_ema);
    std::vector<float> want = v0;
    ref::ema_update(want.data(), w.data(), n, rho);
    add_check(row.check, "ema", rel_l2(ema.data(), want.data(), n), kTolF32);
    row.bytes = 12.0 * n;
    time_row(row, [&] { kernels::ema_update(d_ema.get(), d_w.get(), n, rho, 0); });
    rows.push_back(row);
  }
  {
    Row row{"optim", "cast_f32_to_f16", std::to_string(n) + " floats"};
    kernels::cast_f32_to_f16(d_w.get(), d_w16.get(), n, 0);
    const auto w = download(d_w);
    const auto h = download_half(d_w16);
    add_check(row.check, "cast (max abs)", max_abs(h.data(), round_to_half(w).data(), n), 0.0);
    row.bytes = 6.0 * n;
    time_row(row, [&] { kernels::cast_f32_to_f16(d_w.get(), d_w16.get(), n, 0); });
    rows.push_back(row);
  }
}

// ----------------------------------------------------------------------------- convolutions

// Descriptors set up exactly as engine/conv_cudnn.cu does, to run each algorithm directly.
struct ConvDescs {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  explicit ConvDescs(const cs::ConvDesc& d) {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, d.N, d.C, d.H, d.W));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, d.N, d.K, d.H, d.W));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, d.K, d.C, d.R, d.R));
    const int pad = (d.R - 1) / 2;
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv, pad, pad, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION,
                                                CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv, CUDNN_TENSOR_OP_MATH));
  }
  ~ConvDescs() {
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w);
    cudnnDestroyTensorDescriptor(y);
    cudnnDestroyTensorDescriptor(x);
  }
  ConvDescs(const ConvDescs&) = delete;
  ConvDescs& operator=(const ConvDescs&) = delete;
};

const char* algo_name(const std::string& pass, int a) {
  static const char* fwd[] = {"IMPLICIT_GEMM", "IMPLICIT_PRECOMP_GEMM", "GEMM", "DIRECT",
                              "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* bd[] = {"ALGO_0", "ALGO_1", "FFT", "FFT_TILING", "WINOGRAD", "WINOGRAD_NONFUSED"};
  static const char* bf[] = {"ALGO_0", "ALGO_1", "FFT", "ALGO_3", "WINOGRAD", "WINOGRAD_NONFUSED",
                             "FFT_TILING"};
  if (pass == "fwd" && a >= 0 && a < 8) return fwd[a];
  if (pass == "bwd_data" && a >= 0 && a < 6) return bd[a];
  if (pass == "bwd_filter" && a >= 0 && a < 7) return bf[a];
  return "UNKNOWN";
}

struct ConvShapeSpec {
  const char* layer;
  int H, C, K, R, real_channels;
};

void bench_conv_shape(std::vector<Row>& rows, json& find_log, cudnnHandle_t handle, const ConvShapeSpec& sp,
                      void* ws, uint64_t seed) {
  const cs::ConvDesc d{kBatch, sp.H, sp.H, sp.C, sp.K, sp.R};
  const long x_size = (long)kBatch * sp.H * sp.H * sp.C, y_size = (long)kBatch * sp.H * sp.H * sp.K;
  const long w_size = (long)sp.K * sp.R * sp.R * sp.C;
  const long y_img = (long)sp.H * sp.H * sp.K;
  const double flop = 2.0 * kBatch * sp.H * sp.H * (double)sp.K * sp.R * sp.R * sp.C;
  const std::string shape = std::string(sp.layer) + " " + std::to_string(sp.C) + "->" + std::to_string(sp.K) +
                            " " + std::to_string(sp.R) + "x" + std::to_string(sp.R) + " @" +
                            std::to_string(sp.H) + " N" + std::to_string(kBatch);

  auto x = random_vec(x_size, seed);
  for (long i = 0; i < x_size; i++)
    if (i % sp.C >= sp.real_channels) x[i] = 0.0f;
  x = round_to_half(x);
  const float bound = 1.0f / std::sqrt((float)(sp.real_channels * sp.R * sp.R));
  auto w = round_to_half(random_vec(w_size, seed + 1, -bound, bound));
  const auto dy = round_to_half(random_vec(y_size, seed + 2));
  std::vector<float> dy_masked(dy.begin(), dy.begin() + 2 * y_img);  // the filter-gradient slice
  dy_masked.resize(y_size, 0.0f);

  // Reference on the first 2 images (dy zero beyond them for the filter gradient).
  const int k = 2;
  const ref::ConvShape rs{k, sp.H, sp.H, sp.C, sp.K, sp.R};
  std::vector<float> y_ref(rs.y_size()), dx_ref(rs.x_size()), dw_ref(rs.w_size());
  ref::conv_forward(x.data(), w.data(), y_ref.data(), rs);
  ref::conv_backward_input(dy.data(), w.data(), dx_ref.data(), rs);
  ref::conv_backward_weight(x.data(), dy.data(), dw_ref.data(), rs);

  auto d_x = upload_half(x), d_w = upload_half(w), d_dy = upload_half(dy), d_dym = upload_half(dy_masked);
  DeviceBuffer<__half> d_y(y_size), d_dx(x_size), d_dw(w_size);

  // The engine's wrapper: autotune, then its chosen algorithms.
  cs::CudnnConv conv(handle, d);
  {
    auto tx = upload_half(x), tw = upload_half(w), ty = upload_half(dy);
    conv.autotune(tx.get(), tw.get(), ty.get(), ws, kMaxWorkspace);
  }
  json finds = json::array();
  for (const auto& t : conv.timings())
    finds.push_back({{"pass", t.pass}, {"algo", t.name}, {"ms", t.ms}, {"us", t.us}, {"workspace", t.workspace}});
  find_log.push_back({{"shape", shape}, {"chosen", conv.chosen()}, {"find", finds}});

  const float one = 1.0f, zero = 0.0f;
  ConvDescs cd(d);
  const char* passes[] = {"fwd", "bwd_data", "bwd_filter"};
  const int counts[] = {CUDNN_CONVOLUTION_FWD_ALGO_COUNT, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
                        CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT};
  for (int pi = 0; pi < 3; pi++) {
    const std::string pass = passes[pi];
    // The autotuned path through cs::CudnnConv first.
    {
      Row row{"conv", pass + " autotuned", shape};
      row.flop = flop;
      row.note = conv.chosen();
      std::function<void()> f;
      if (pass == "fwd") f = [&] { conv.forward(d_x.get(), d_w.get(), d_y.get(), ws); };
      if (pass == "bwd_data") f = [&] { conv.backward_data(d_dy.get(), d_w.get(), d_dx.get(), ws); };
      if (pass == "bwd_filter") f = [&] { conv.backward_filter(d_x.get(), d_dy.get(), d_dw.get(), ws); };
      time_row(row, f);
      rows.push_back(row);
    }
    for (int a = 0; a < counts[pi]; a++) {
      Row row{"conv", pass + " " + algo_name(pass, a), shape};
      row.flop = flop;
      size_t need = 0;
      cudnnStatus_t st;
      if (pass == "fwd")
        st = cudnnGetConvolutionForwardWorkspaceSize(handle, cd.x, cd.w, cd.conv, cd.y,
                                                     (cudnnConvolutionFwdAlgo_t)a, &need);
      else if (pass == "bwd_data")
        st = cudnnGetConvolutionBackwardDataWorkspaceSize(handle, cd.w, cd.y, cd.conv, cd.x,
                                                          (cudnnConvolutionBwdDataAlgo_t)a, &need);
      else
        st = cudnnGetConvolutionBackwardFilterWorkspaceSize(handle, cd.x, cd.y, cd.conv, cd.w,
                                                            (cudnnConvolutionBwdFilterAlgo_t)a, &need);
      if (st != CUDNN_STATUS_SUCCESS) {
        row.note = std::string("not supported: ") + cudnnGetErrorString(st);
        rows.push_back(row);
        continue;
      }
      if (need > kMaxWorkspace) {
        row.note = "workspace " + std::to_string(need >> 20) + " MiB > limit";
        rows.push_back(row);
        continue;
      }
      row.note = "workspace " + std::to_string(need >> 20) + " MiB";
      // dy_in: the masked dy for the filter-gradient check, the full dy for timing.
      auto run = [&](const __half* dy_in) -> cudnnStatus_t {
        if (pass == "fwd")
          return cudnnConvolutionForward(handle, &one, cd.x, d_x.get(), cd.w, d_w.get(), cd.conv,
                                         (cudnnConvolutionFwdAlgo_t)a, ws, need, &zero, cd.y, d_y.get());
        if (pass == "bwd_data")
          return cudnnConvolutionBackwardData(handle, &one, cd.w, d_w.get(), cd.y, dy_in, cd.conv,
                                              (cudnnConvolutionBwdDataAlgo_t)a, ws, need, &zero, cd.x,
                                              d_dx.get());
        return cudnnConvolutionBackwardFilter(handle, &one, cd.x, d_x.get(), cd.y, dy_in, cd.conv,
                                              (cudnnConvolutionBwdFilterAlgo_t)a, ws, need, &zero, cd.w,
                                              d_dw.get());
      };
      st = run(pass == "bwd_filter" ? d_dym.get() : d_dy.get());
      if (st != CUDNN_STATUS_SUCCESS) {
        row.note = std::string("failed to run: ") + cudnnGetErrorString(st);
        rows.push_back(row);
        continue;
      }
      CUDA_CHECK(cudaDeviceSynchronize());
      if (pass == "fwd") {
        const auto y = download_half(d_y.get(), rs.y_size());
        add_check(row.check, "y images 0..1", rel_l2(y.data(), y_ref.data(), rs.y_size()), kTolConv);
      } else if (pass == "bwd_data") {
        const auto dx = download_half(d_dx.get(), rs.x_size());
        add_check(row.check, "dx images 0..1", rel_l2(dx.data(), dx_ref.data(), rs.x_size()), kTolConv);
      } else {
        const auto dw = download_half(d_dw);
        add_check(row.check, "dw from images 0..1", rel_l2(dw.data(), dw_ref.data(), rs.w_size()), kTolConv);
      }
      time_row(row, [&] { CUDNN_CHECK(run(d_dy.get())); });
      rows.push_back(row);
    }
  }
}

void bench_conv(std::vector<Row>& rows, json& find_log) {
  const ConvShapeSpec shapes[] = {
      {"prep", 32, 32, 64, 1, 27},        {"layer1", 32, 64, 128, 3, 64},
      {"layer1_res", 16, 128, 128, 3, 128}, {"layer2", 16, 128, 256, 3, 128},
      {"layer3", 8, 256, 512, 3, 256},     {"layer3_res", 4, 512, 512, 3, 512},
  };
  gpu_test::CudnnHandle handle;
  DeviceBuffer<char> ws(kMaxWorkspace);
  uint64_t seed = 1000;
  for (const auto& sp : shapes) bench_conv_shape(rows, find_log, handle.get(), sp, ws.get(), seed += 10);
}

// ---------------------------------------------------------------------------------- output

void print_usage() {
  std::printf(
      "usage: kernel_bench [--json out.json] [--iters N] [--help]\n"
      "  Times every GPU kernel of the ResNet-9 step and every cuDNN algorithm of each conv pass\n"
      "  on the recipe's shapes (batch 512), after checking each against the CPU reference.\n"
      "  --json PATH  also write the results as JSON (schema cifar-speedrun/kernel_bench/v1)\n"
      "  --iters N    timed samples per kernel, median reported (default 20)\n"
      "  Exit status: 0 all checks passed, 1 no GPU or bad arguments, 3 a check failed.\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_usage();
      return 0;
    } else if (a == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else if (a == "--iters" && i + 1 < argc) {
      g_iters = std::atoi(argv[++i]);
      if (g_iters < 1) {
        std::fprintf(stderr, "kernel_bench: --iters must be >= 1\n");
        return 1;
      }
    } else {
      std::fprintf(stderr, "kernel_bench: unknown or incomplete argument '%s'\n", a.c_str());
      print_usage();
      return 1;
    }
  }

  const cs::GpuInfo gpu = cs::detect_gpu();
  if (!gpu.available) {
    std::fprintf(stderr, "kernel_bench: no CUDA device (%s)\n", gpu.reason.c_str());
    return 1;
  }
  const bench::GpuPeaks peaks = bench::peaks_for(gpu.name);
  int rt = 0, drv = 0;
  CUDA_CHECK(cudaRuntimeGetVersion(&rt));
  CUDA_CHECK(cudaDriverGetVersion(&drv));
  const size_t cudnn_v = cudnnGetVersion();
  const std::string cudnn_str = std::to_string(cudnn_v / 10000) + "." + std::to_string((cudnn_v % 10000) / 100) +
                                "." + std::to_string(cudnn_v % 100);
  std::printf("kernel_bench: %s (%d SMs, cc %d.%d), CUDA runtime %s, driver %s, cuDNN %s\n", gpu.name.c_str(),
              gpu.sm_count, gpu.cc_major, gpu.cc_minor, version_string(rt, 1000, 10).c_str(),
              version_string(drv, 1000, 10).c_str(), cudnn_str.c_str());
  std::printf("peaks: %.0f TFLOP/s fp16 dense, %.2f TB/s (%s); %d samples, median\n\n", peaks.tflops, peaks.tb_s,
              peaks.basis.c_str(), g_iters);

  std::vector<Row> rows;
  json find_log = json::array();
  try {
    bench_augment(rows);
    bench_whiten(rows);
    bench_bn(rows);
    bench_head(rows);
    bench_optim(rows);
    bench_conv(rows, find_log);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "kernel_bench: %s\n", e.what());
    return 1;
  }

  bool all_pass = true;
  json results = json::array();
  std::printf("%-7s %-44s %-34s %10s %10s %7s  %s\n", "family", "kernel", "shape", "median_us", "rate",
              "%peak", "check");
  for (const auto& r : rows) {
    json j = {{"family", r.family}, {"name", r.name}, {"shape", r.shape}, {"note", r.note}};
    std::string rate = "-", pct = "-";
    if (r.median_us > 0) {
      j["median_us"] = r.median_us;
      j["min_us"] = r.min_us;
      if (r.family == "conv") {
        const double tflops = r.flop / (r.median_us * 1e-6) / 1e12;
        j["flop"] = r.flop;
        j["tflops"] = tflops;
        j["pct_peak"] = 100.0 * tflops / peaks.tflops;
        char b[32];
        std::snprintf(b, sizeof(b), "%.1f TF/s", tflops);
        rate = b;
        std::snprintf(b, sizeof(b), "%.1f", 100.0 * tflops / peaks.tflops);
        pct = b;
      } else {
        const double gbs = r.bytes / (r.median_us * 1e-6) / 1e9;
        j["bytes"] = r.bytes;
        j["gb_s"] = gbs;
        j["pct_peak"] = 100.0 * gbs / (peaks.tb_s * 1000.0);
        char b[32];
        std::snprintf(b, sizeof(b), "%.0f GB/s", gbs);
        rate = b;
        std::snprintf(b, sizeof(b), "%.1f", 100.0 * gbs / (peaks.tb_s * 1000.0));
        pct = b;
      }
    }
    j["check"] = {{"status", r.check.status}, {"what", r.check.what}, {"error", r.check.error}, {"tol", r.check.tol}};
    if (r.check.status == "fail") all_pass = false;
    results.push_back(j);
    char med[32] = "-";
    if (r.median_us > 0) std::snprintf(med, sizeof(med), "%.1f", r.median_us);
    std::string chk = r.check.status;
    if (r.check.status != "n/a") {
      char b[64];
      std::snprintf(b, sizeof(b), " (%.1e <= %.0e)", r.check.error, r.check.tol);
      chk += b;
    }
    if (!r.note.empty() && (r.family == "conv" || r.median_us <= 0)) chk += "  " + r.note;
    std::printf("%-7s %-44s %-34s %10s %10s %7s  %s\n", r.family.c_str(), r.name.c_str(), r.shape.c_str(), med,
                rate.c_str(), pct.c_str(), chk.c_str());
  }
  std::printf("\nchecks: %s\n", all_pass ? "all passed" : "SOME FAILED");

  if (!json_path.empty()) {
    json out = {
        {"schema", "cifar-speedrun/kernel_bench/v1"},
        {"date", utc_now()},
        {"git_commit", CS_GIT_COMMIT_FALLBACK},
        {"version", CS_VERSION},
        {"gpu", {{"name", gpu.name}, {"sm_count", gpu.sm_count}, {"cc", std::to_string(gpu.cc_major) + "." + std::to_string(gpu.cc_minor)}, {"mem_gib", gpu.mem_gib}}},
        {"cuda_runtime", version_string(rt, 1000, 10)},
        {"cuda_driver", version_string(drv, 1000, 10)},
        {"cudnn", cudnn_str},
        {"peaks", {{"fp16_tensor_dense_tflops", peaks.tflops}, {"memory_tb_s", peaks.tb_s}, {"basis", peaks.basis}}},
        {"timing", {{"samples", g_iters}, {"warmup", kWarmup}, {"statistic", "median"}, {"sample_target_us", kSampleTargetUs}}},
        {"batch", kBatch},
        {"all_checks_pass", all_pass},
        {"results", results},
        {"cudnn_autotune", find_log},
    };
    if (!bench::write_record("kernel_bench", json_path, out.dump(2) + "\n")) return 1;
  }
  return all_pass ? 0 : 3;
}
