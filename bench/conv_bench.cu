// conv_bench: the hand-written implicit-GEMM convolutions (kernels/conv/implicit_gemm.cuh,
// kernels/conv/igemm_backward.cuh) on the recipe's six conv shapes at batch 512, all three
// passes of training: the forward (plain, with the fused BN-statistics epilogue, and for the
// pooled layers with the fused 2x2 max-pool epilogue, with and without statistics), the input
// gradient (with and without the BN-backward sums epilogue) and the split-K weight gradient,
// every tile configuration (and on Hopper the wgmma forward, input gradient with and without
// the sums, and split-K weight gradient), next to cuDNN's autotuned
// passes (engine/conv_cudnn.h). Each variant is checked against the CPU reference before it is
// timed (llm.c's dev/cuda style: validate, then time). Prints a table and a per-layer summary
// (best of each pass and the three summed vs cuDNN) and writes JSON (docs/conv_kernels.md).
//
//   conv_bench [--json out.json] [--iters N] [--no-cudnn] [--layers L1,L2,...] [--help]
//
// Timing: bench::time_calls (bench/bench_gpu.h), the protocol kernel_bench uses: CUDA events
// around R back-to-back launches (R chosen so a sample lasts ~200 us; enqueued while the stream
// is held, so the host-side cost of cuDNN's calls is not timed), 3 warm-up calls, N
// samples (default 20), median and minimum per call.
// Exit status: 0 all checks passed, 1 no GPU, bad arguments or a CUDA error, 3 a check failed.
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
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/bench_gpu.h"
#include "bench/bench_util.h"
#include "engine/conv_cudnn.h"
#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"

using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using json = nlohmann::json;

namespace {

using bench::rel_l2;
using bench::random_vec;
using bench::utc_now;

constexpr int kBatch = 512;
constexpr int kGhostGroup = 32;  // the recipe's ghost-BN groups: 32 images
constexpr int kRefImages = 2;    // the CPU reference covers images 0 .. kRefImages-1
constexpr size_t kMaxWorkspace = size_t(1) << 30;  // offered to cuDNN's autotune
// Output tolerance (rel. L2), as in tests/implicit_gemm_gpu_test.cu and
// tests/igemm_backward_gpu_test.cu: fp16 output rounding ~3e-4 rms (the weight gradient's fp32
// sums over 524288 pixels add ~1e-4 at worst). cuDNN's algorithms are allowed 1e-2, as in kernel_bench (Winograd / FFT).
// Statistics: fp32 sums in three levels (<= 32 rows per thread, 4 slices per block, <= 512
// blocks per group with BlockM 64 at @32): every term passes through <= 548 additions, so the
// error is <= 548 * 2^-24 = 3.3e-5 of the sum of |terms|; 1e-4 is above that bound.
constexpr double kTolOut = 2e-3, kTolCudnn = 1e-2, kTolStats = 1e-4;

struct Shape {
  const char* layer;
  int H, C, K, R, real_channels;
  bool pooled;  // conv -> 2x2 max-pool -> BN in the recipe
};
// The recipe's convolutions (docs/recipe.md; kernel_bench's table): prep's 1x1 conv reads the
// 27 whitening channels padded to 32.
const Shape kShapes[] = {
    {"prep", 32, 32, 64, 1, 27, false},          {"layer1", 32, 64, 128, 3, 64, true},
    {"layer1_res", 16, 128, 128, 3, 128, false}, {"layer2", 16, 128, 256, 3, 128, true},
    {"layer3", 8, 256, 512, 3, 256, true},       {"layer3_res", 4, 512, 512, 3, 512, false},
};

bool all_finite_half(const std::vector<__half>& h) {
  for (const __half& v : h) {
    uint16_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    if ((bits & 0x7C00u) == 0x7C00u) return false;  // exponent all ones: Inf or NaN
  }
  return true;
}

std::vector<float> to_float(const std::vector<__half>& h, long n) {
  std::vector<float> f(n);
  for (long i = 0; i < n; i++) f[i] = __half2float(h[i]);
  return f;
}

int g_iters = 20;
// --configs: the tile configs to run (names as igemm_config_info / wgmma_config_info give them);
// empty: all. cuDNN always runs.
std::vector<std::string> g_configs;
bool wanted(const char* config) {
  return g_configs.empty() || std::find(g_configs.begin(), g_configs.end(), config) != g_configs.end();
}

// ------------------------------------------------------------------------------------ rows

// The three passes of a convolution in training; the prep conv's input gradient is never
// computed (its input is the fixed whitening output), so prep has no bwd_data rows.
const char* const kPasses[] = {"fwd", "bwd_data", "bwd_filter"};

struct Row {
  std::string layer, pass, kernel, config;  // kernel: "igemm", "wgmma" or "cudnn"
  std::string epilogue = "none";  // fwd: "none", "stats", "pool", "pool+stats"; bwd_data: "none", "bn_sums"
  kernels::IgemmConfigInfo info{};          // igemm only
  int splits = 0;                           // igemm / wgmma bwd_filter: split-K slabs launched
  kernels::WgradStreamK stream_k{};         // wgmma bwd_filter, stream-K: its plan (workers > 0)
  int blocks_per_sm = 0;                    // wgmma: resident blocks per SM (0: not reported)
  kernels::ConvDesc d{};
  double flop = 0;
  bench::Timing t;
  std::string check = "n/a";  // "pass" / "fail"
  std::string check_what;
  double error = 0, tol = 0;
  double cudnn_us = -1;  // cuDNN's median for the same layer and pass, for the speed-up column
};

void set_check(Row& row, const std::string& what, double error, double tol) {
  const bool ok = error <= tol;  // NaN fails
  const bool was_ok = row.check != "fail";
  const double score = error / tol, current = row.error / std::max(row.tol, 1e-30);
  if (row.check == "n/a" || (!ok && was_ok) || (ok == was_ok && score > current)) {
    row.check_what = what;
    row.error = error;
    row.tol = tol;
  }
  row.check = (was_ok && ok) ? "pass" : "fail";
}

// Checks an fp16 output (poisoned before the launch) against a float reference of its first
// `n` values: every value finite, rel. L2 within tol.
void check_output(Row& row, const DeviceBuffer<__half>& out, const std::vector<float>& want,
                  const std::string& what, double tol) {
  const auto h = download(out);
  set_check(row, "all outputs finite", all_finite_half(h) ? 0.0 : INFINITY, tol);
  set_check(row, what + " (rel L2)", rel_l2(to_float(h, (long)want.size()).data(), want.data(), (long)want.size()),
            tol);
}

// The statistics epilogues' check: per group of `group_pixels` consecutive pixels and channel,
// the kernel's sum and sum of squares against double sums over the stored fp16 values y
// [pixels][K]; returns the worst error relative to sum |y| (sum y^2 for the squares), infinite
// for NaN.
double worst_group_sum_error(const std::vector<__half>& y, long group_pixels, int K, const std::vector<float>& sum,
                             const std::vector<float>& sumsq) {
  std::vector<double> s(sum.size(), 0.0), sa(s.size(), 0.0), ss(s.size(), 0.0);
  const long pixels = (long)y.size() / K;
  bench::parallel_for(pixels / group_pixels, [&](long g) {  // one group's sums per call
    for (long q = g * group_pixels; q < (g + 1) * group_pixels; q++)
      for (int k = 0; k < K; k++) {
        const double v = __half2float(y[q * K + k]);
        s[g * K + k] += v;
        sa[g * K + k] += std::fabs(v);
        ss[g * K + k] += v * v;
      }
  });
  double worst = 0.0;
  for (size_t i = 0; i < s.size(); i++) {
    const double e = std::max(std::fabs(sum[i] - s[i]) / std::max(sa[i], 1e-30),
                              std::fabs(sumsq[i] - ss[i]) / std::max(ss[i], 1e-30));
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst;
}

// The input gradient's BN-backward sums epilogue's check: per group of `group_pixels`
// consecutive pixels and channel, sum(dz) and sum(dz * xhat) (kernels/bn_math.cuh's formula,
// dz = dx * celu'(xhat + bias), xhat = (v - mean) * invstd, no second gradient term) against
// double sums over the stored dx; returns the worst error relative to the sum of |terms|,
// infinite for NaN.
double worst_bn_sums_error(const std::vector<__half>& dx, const std::vector<float>& v, long group_pixels, int C,
                           const std::vector<float>& mean, const std::vector<float>& invstd,
                           const std::vector<float>& bias, float alpha, const std::vector<float>& sum_dz,
                           const std::vector<float>& sum_dzx) {
  std::vector<double> a(sum_dz.size(), 0.0), aa(a.size(), 0.0), b(a.size(), 0.0), ba(a.size(), 0.0);
  const long pixels = (long)dx.size() / C;
  bench::parallel_for(pixels / group_pixels, [&](long g) {  // one group's sums per call
    for (long q = g * group_pixels; q < (g + 1) * group_pixels; q++)
      for (int c = 0; c < C; c++) {
        const long i = g * C + c;
        const float xh = (v[q * C + c] - mean[i]) * invstd[i], z = xh + bias[c];
        const double dz = (double)(__half2float(dx[q * C + c]) * (z > 0.0f ? 1.0f : std::exp(z / alpha)));
        a[i] += dz;
        aa[i] += std::fabs(dz);
        b[i] += dz * xh;
        ba[i] += std::fabs(dz * xh);
      }
  });
  double worst = 0.0;
  for (size_t i = 0; i < a.size(); i++) {
    const double e = std::max(std::fabs(sum_dz[i] - a[i]) / std::max(aa[i], 1e-30),
                              std::fabs(sum_dzx[i] - b[i]) / std::max(ba[i], 1e-30));
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  return worst;
}

// One conv shape: the CPU references, then cuDNN's autotuned passes, then every igemm variant
// of every pass, each checked before it is timed.
void bench_shape(std::vector<Row>& rows, cudnnHandle_t handle, bool with_cudnn, int sm_count,
                 const Shape& sp, uint64_t seed) {
  const kernels::ConvDesc d{kBatch, sp.H, sp.H, sp.C, sp.K, sp.R};
  const long x_size = (long)kBatch * sp.H * sp.H * sp.C, y_size = (long)kBatch * sp.H * sp.H * sp.K;
  const long w_size = (long)sp.K * sp.R * sp.R * sp.C;
  const double flop = 2.0 * kBatch * sp.H * sp.H * (double)sp.K * sp.R * sp.R * sp.C;  // each pass
  const bool has_dgrad = std::string(sp.layer) != "prep";

  // Inputs as in kernel_bench: x uniform in [-1, 1) (channels >= real_channels zero), w uniform
  // in +-1/sqrt(fan_in), dy uniform in +-2^-6 (the weight-gradient sums over 524288 pixels stay
  // well inside fp16); all fp16-rounded so the reference sees the kernels' numbers.
  auto x = random_vec(x_size, seed, -1.0f, 1.0f);
  for (long i = 0; i < x_size; i++)
    if (i % sp.C >= sp.real_channels) x[i] = 0.0f;
  x = round_to_half(x);
  const float bound = 1.0f / std::sqrt((float)(sp.real_channels * sp.R * sp.R));
  const auto w = round_to_half(random_vec(w_size, seed + 1, -bound, bound));
  const auto dy = round_to_half(random_vec(y_size, seed + 2, -1.0f / 64, 1.0f / 64));

  // References: y and dx of images 0 .. kRefImages-1 (an output image depends on its own input
  // image alone), dw over the whole batch (it sums over every image).
  const ref::ConvShape rs{kRefImages, sp.H, sp.H, sp.C, sp.K, sp.R};
  const ref::ConvShape full{kBatch, sp.H, sp.H, sp.C, sp.K, sp.R};
  std::vector<float> y_ref(rs.y_size()), dx_ref(has_dgrad ? rs.x_size() : 0), dw_ref(w_size);
  ref::conv_forward(x.data(), w.data(), y_ref.data(), rs);
  if (has_dgrad) ref::conv_backward_input(dy.data(), w.data(), dx_ref.data(), rs);
  ref::conv_backward_weight(x.data(), dy.data(), dw_ref.data(), full);

  auto d_x = upload_half(x), d_w = upload_half(w), d_dy = upload_half(dy);
  DeviceBuffer<__half> d_y(y_size), d_dx(x_size), d_dw(w_size);
  auto new_row = [&](const char* pass, const char* kernel, const std::string& config) {
    Row row;
    row.layer = sp.layer;
    row.pass = pass;
    row.kernel = kernel;
    row.config = config;
    row.d = d;
    row.flop = flop;
    return row;
  };
  // One checked and timed row: `out` poisoned, launch() once, `out` against the reference `want`
  // (what: its label) within tol, then launch() timed; cudnn: cuDNN's time for the pass (-1 for
  // cuDNN's own rows). Returns the median.
  auto checked_row = [&](Row row, DeviceBuffer<__half>& out, const std::vector<float>& want, const char* what,
                         double tol, double cudnn, const std::function<void()>& launch) {
    out.poison();
    launch();
    CUDA_CHECK(cudaDeviceSynchronize());
    check_output(row, out, want, what, tol);
    row.t = bench::time_calls(launch, g_iters);
    row.cudnn_us = cudnn;
    rows.push_back(row);
    return row.t.median_us;
  };

  double cudnn_us[3] = {-1, -1, -1};  // per pass, index as kPasses
  if (with_cudnn) {
    const cs::ConvDesc cd{d.N, d.H, d.W, d.C, d.K, d.R};
    cs::CudnnConv conv(handle, cd);
    DeviceBuffer<char> ws(kMaxWorkspace);
    {
      auto tx = upload_half(x), tw = upload_half(w);  // autotune overwrites its buffers
      DeviceBuffer<__half> ty(y_size);
      conv.autotune(tx.get(), tw.get(), ty.get(), ws.get(), kMaxWorkspace);
    }
    for (int pass = 0; pass < 3; pass++) {
      if (pass == 1 && !has_dgrad) continue;
      const Row row = new_row(kPasses[pass], "cudnn", conv.chosen());
      if (pass == 0)
        cudnn_us[pass] = checked_row(row, d_y, y_ref, "y images 0..1", kTolCudnn, -1,
                                     [&] { conv.forward(d_x.get(), d_w.get(), d_y.get(), ws.get()); });
      else if (pass == 1)
        cudnn_us[pass] = checked_row(row, d_dx, dx_ref, "dx images 0..1", kTolCudnn, -1,
                                     [&] { conv.backward_data(d_dy.get(), d_w.get(), d_dx.get(), ws.get()); });
      else
        cudnn_us[pass] = checked_row(row, d_dw, dw_ref, "dw over all 512 images", kTolCudnn, -1,
                                     [&] { conv.backward_filter(d_x.get(), d_dy.get(), d_dw.get(), ws.get()); });
    }
  }

  // The forward kernels with fused epilogues: every igemm config, and on Hopper every wgmma one
  // (the same epilogues, kernels/conv/conv_epilogue.cuh). The wgmma plain forward's rows are
  // in the wgmma section below; here only its fused variants.
  struct FwdVariant {
    const char* kernel;
    kernels::IgemmConfigInfo info;
    int blocks_per_sm;
    size_t stats_scratch;
    std::function<void()> plain;                                 // x, w -> d_y
    std::function<void(const kernels::IgemmStats&)> stats;       // -> d_y + sums
    std::function<void(__half*, uint8_t*, const kernels::IgemmStats*)> pool;
  };
  std::vector<FwdVariant> fwd_variants;
  for (kernels::IgemmConfig config : kernels::kIgemmConfigs)
    if (wanted(kernels::igemm_config_info(config).name))
      fwd_variants.push_back(
        {"igemm", kernels::igemm_config_info(config), 0, kernels::igemm_stats_scratch_bytes(d, config),
         [&, config] { kernels::conv_forward_igemm(d_x.get(), d_w.get(), d_y.get(), d, config, 0); },
         [&, config](const kernels::IgemmStats& st) {
           kernels::conv_forward_igemm_stats(d_x.get(), d_w.get(), d_y.get(), d, config, st, 0);
         },
         [&, config](__half* yp, uint8_t* arg, const kernels::IgemmStats* st) {
           kernels::conv_forward_igemm_pool(d_x.get(), d_w.get(), yp, arg, d, config, st, 0);
         }});
  // A wgmma config takes a pass whose gathered tensor has a multiple of its channel count (the
  // forward's and weight gradient's x: C channels, the input gradient's dy: K); the im2col
  // and halo configs need 64, so not the prep conv's 32. The fused epilogues: not the halo tile.
  using kernels::wgmma_config_takes_channels;
  if (kernels::wgmma_supported())
    for (kernels::WgmmaConfig config : kernels::kWgmmaConfigs)
      if (wgmma_config_takes_channels(config, d.C) && kernels::wgmma_config_fused_epilogues(config) &&
          wanted(kernels::wgmma_config_info(config).name))
        fwd_variants.push_back(
            {"wgmma", kernels::wgmma_config_info(config), kernels::wgmma_blocks_per_sm(config, false),
             kernels::wgmma_stats_scratch_bytes(d, config),
             [&, config] { kernels::conv_forward_wgmma(d_x.get(), d_w.get(), d_y.get(), d, config, 0); },
             [&, config](const kernels::IgemmStats& st) {
               kernels::conv_forward_wgmma_stats(d_x.get(), d_w.get(), d_y.get(), d, config, st, 0);
             },
             [&, config](__half* yp, uint8_t* arg, const kernels::IgemmStats* st) {
               kernels::conv_forward_wgmma_pool(d_x.get(), d_w.get(), yp, arg, d, config, st, 0);
             }});

  // ---- forward, with and without the ghost-BN statistics epilogue
  const int groups = kBatch / kGhostGroup;
  const long group_pixels = (long)kGhostGroup * sp.H * sp.H;
  DeviceBuffer<float> d_sum((size_t)groups * sp.K), d_sumsq((size_t)groups * sp.K);
  for (const FwdVariant& v : fwd_variants) {
    const auto& info = v.info;
    if (group_pixels % info.epilogue_m != 0) continue;  // each epilogue's rows in one group
    DeviceBuffer<float> d_part(v.stats_scratch / sizeof(float));
    const kernels::IgemmStats st{d_sum.get(), d_sumsq.get(), d_part.get(), kGhostGroup};
    std::vector<__half> y_plain;
    const bool wgmma = std::string(v.kernel) == "wgmma";
    if (wgmma) {  // the plain output to compare with, untimed here
      d_y.poison();
      v.plain();
      CUDA_CHECK(cudaDeviceSynchronize());
      y_plain = download(d_y);
    }
    for (int with_stats = wgmma ? 1 : 0; with_stats <= 1; with_stats++) {
      Row row = new_row("fwd", v.kernel, info.name);
      row.info = info;
      row.blocks_per_sm = v.blocks_per_sm;
      row.epilogue = with_stats ? "stats" : "none";
      auto launch = [&] {
        if (with_stats)
          v.stats(st);
        else
          v.plain();
      };
      d_y.poison();
      d_sum.poison();
      d_sumsq.poison();
      launch();
      CUDA_CHECK(cudaDeviceSynchronize());
      check_output(row, d_y, y_ref, "y images 0..1", kTolOut);
      const auto y = download(d_y);
      if (!with_stats) {
        y_plain = y;
      } else {
        const bool same = y.size() == y_plain.size() &&
                          std::memcmp(y.data(), y_plain.data(), y.size() * sizeof(__half)) == 0;
        set_check(row, "y bitwise equal without stats", same ? 0.0 : INFINITY, kTolStats);
        // Ghost-BN statistics of every group vs double sums over the stored y.
        const double worst = worst_group_sum_error(y, group_pixels, sp.K, download(d_sum), download(d_sumsq));
        set_check(row, "ghost-BN sums, 16 groups (rel. to sum |y|)", worst, kTolStats);
      }
      row.t = bench::time_calls(launch, g_iters);
      row.cudnn_us = cudnn_us[0];
      rows.push_back(row);
    }
  }

  // ---- forward with the fused 2x2 max-pool epilogue (the pooled layers: layer1, layer2,
  // layer3): pooled output + argmax, and + the ghost-BN sums over the pooled values. Checked
  // bitwise against max-pooling the unfused output on the host (same config, so the same
  // fp16 values) and the argmax against the host's first-maximum rule.
  if (sp.pooled) {
    const long pooled_n = (long)kBatch * (sp.H / 2) * (sp.H / 2) * sp.K;
    DeviceBuffer<__half> d_yp(pooled_n);
    DeviceBuffer<uint8_t> d_arg(pooled_n);
    for (const FwdVariant& v : fwd_variants) {
      const auto& info = v.info;
      if (info.epilogue_m % (2 * sp.H) != 0) continue;  // an epilogue must hold whole row pairs
      d_y.poison();
      v.plain();
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto y_plain = download(d_y);
      // Host pooling of the unfused output: value and first-maximum position per window.
      std::vector<__half> want_p(pooled_n);
      std::vector<uint8_t> want_a(pooled_n);
      const int Ho = sp.H / 2;
      bench::parallel_for(kBatch, [&](long img) {  // one image's pooled pixels per call
        for (long q = img * Ho * Ho; q < (img + 1) * Ho * Ho; q++) {
          const long ph = (q / Ho) % Ho, pw = q % Ho;
          for (int k = 0; k < sp.K; k++) {
            float v[4];
            for (int t = 0; t < 4; t++)
              v[t] = __half2float(y_plain[((img * sp.H + 2 * ph + t / 2) * sp.H + 2 * pw + t % 2) * sp.K + k]);
            const int a = kernels::igemm_detail::pool2x2_argmax(v[0], v[1], v[2], v[3]);
            want_a[q * sp.K + k] = (uint8_t)a;
            want_p[q * sp.K + k] = y_plain[((img * sp.H + 2 * ph + a / 2) * sp.H + 2 * pw + a % 2) * sp.K + k];
          }
        }
      });
      DeviceBuffer<float> d_part(v.stats_scratch / sizeof(float));
      const kernels::IgemmStats st{d_sum.get(), d_sumsq.get(), d_part.get(), kGhostGroup};
      for (int with_stats = 0; with_stats <= 1; with_stats++) {
        Row row = new_row("fwd", v.kernel, info.name);
        row.info = info;
        row.blocks_per_sm = v.blocks_per_sm;
        row.epilogue = with_stats ? "pool+stats" : "pool";
        auto launch = [&] { v.pool(d_yp.get(), d_arg.get(), with_stats ? &st : nullptr); };
        d_yp.poison();
        d_arg.poison();
        d_sum.poison();
        d_sumsq.poison();
        launch();
        CUDA_CHECK(cudaDeviceSynchronize());
        const auto yp = download(d_yp);
        const auto arg = download(d_arg);
        const bool same_p = std::memcmp(yp.data(), want_p.data(), pooled_n * sizeof(__half)) == 0;
        set_check(row, "pooled y bitwise = maxpool(unfused y)", same_p ? 0.0 : INFINITY, kTolOut);
        set_check(row, "argmax = first maximum", arg == want_a ? 0.0 : INFINITY, kTolOut);
        if (with_stats) {
          const long group_pooled = (long)kGhostGroup * Ho * Ho;
          const double worst = worst_group_sum_error(yp, group_pooled, sp.K, download(d_sum), download(d_sumsq));
          set_check(row, "ghost-BN sums of the pooled y, 16 groups (rel. to sum |y|)", worst, kTolStats);
        }
        row.t = bench::time_calls(launch, g_iters);
        row.cudnn_us = cudnn_us[0];
        rows.push_back(row);
      }
    }
  }

  // ---- the input gradient's BN-backward sums epilogue (kernels/conv/igemm_backward.cuh): dx is
  // the output gradient of the BN + CELU unit before this conv, whose BN input, saved
  // statistics and bias are random here (BN's input uniform in [-2, 2), invstd in [0.5, 2)); no
  // second gradient term. Checked: dx bitwise equal to the plain launch of the same config (run
  // just before, so d_dx holds its output), and the sums vs double sums on the host.
  constexpr float kAlpha = 0.3f;
  std::vector<float> bn_v, bn_mean, bn_invstd, bn_bias;
  DeviceBuffer<__half> d_bn_v(has_dgrad ? x_size : 1);
  DeviceBuffer<float> d_bn_mean((size_t)groups * sp.C), d_bn_invstd((size_t)groups * sp.C), d_bn_bias(sp.C);
  DeviceBuffer<float> d_sdz((size_t)groups * sp.C), d_sdzx((size_t)groups * sp.C);
  if (has_dgrad) {
    bn_v = round_to_half(random_vec(x_size, seed + 3, -2.0f, 2.0f));
    bn_mean = random_vec((long)groups * sp.C, seed + 4, -0.5f, 0.5f);
    bn_invstd = random_vec((long)groups * sp.C, seed + 5, 0.5f, 2.0f);
    bn_bias = random_vec(sp.C, seed + 6, -0.5f, 0.5f);
    gpu_test::upload_half_into(bn_v, d_bn_v.get());
    CUDA_CHECK(cudaMemcpy(d_bn_mean.get(), bn_mean.data(), bn_mean.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_bn_invstd.get(), bn_invstd.data(), bn_invstd.size() * 4, cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(d_bn_bias.get(), bn_bias.data(), bn_bias.size() * 4, cudaMemcpyHostToDevice));
  }
  auto bn_sums_row = [&](const char* kernel, const kernels::IgemmConfigInfo& info, int blocks_per_sm,
                         const std::function<void(const kernels::BnBackwardSums&)>& launch) {
    Row row = new_row("bwd_data", kernel, info.name);
    row.info = info;
    row.blocks_per_sm = blocks_per_sm;
    row.epilogue = "bn_sums";
    DeviceBuffer<float> d_part(kernels::dgrad_bn_sums_scratch_bytes(d, info.epilogue_m) / sizeof(float));
    const kernels::BnBackwardSums bn{nullptr,        d_bn_v.get(), d_bn_bias.get(), d_bn_mean.get(),
                                     d_bn_invstd.get(), kAlpha,     d_sdz.get(),     d_sdzx.get(),
                                     d_part.get(),    kGhostGroup};
    const auto plain = download(d_dx);
    d_dx.poison();
    d_sdz.poison();
    d_sdzx.poison();
    launch(bn);
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto got = download(d_dx);
    const bool same = std::memcmp(got.data(), plain.data(), got.size() * sizeof(__half)) == 0;
    set_check(row, "dx bitwise equal without the BN sums", same ? 0.0 : INFINITY, kTolStats);
    set_check(row, "BN-backward sums, 16 groups (rel. to sum |term|)",
              worst_bn_sums_error(got, bn_v, group_pixels, sp.C, bn_mean, bn_invstd, bn_bias, kAlpha,
                                  download(d_sdz), download(d_sdzx)),
              kTolStats);
    row.t = bench::time_calls([&] { launch(bn); }, g_iters);
    row.cudnn_us = cudnn_us[1];
    rows.push_back(row);
  };

  // ---- input gradient: the filter transform + the forward kernel (timed together), then the
  // same with the BN-backward sums epilogue
  if (has_dgrad) {
    DeviceBuffer<__half> d_wt(kernels::igemm_dgrad_scratch_bytes(d) / sizeof(__half));
    for (kernels::IgemmConfig config : kernels::kIgemmConfigs) {
      const auto info = kernels::igemm_config_info(config);
      if (!wanted(info.name)) continue;
      Row row = new_row("bwd_data", "igemm", info.name);
      row.info = info;
      checked_row(row, d_dx, dx_ref, "dx images 0..1", kTolOut, cudnn_us[1], [&] {
        kernels::conv_backward_data_igemm(d_dy.get(), d_w.get(), d_dx.get(), d_wt.get(), d, config, 0);
      });
      bn_sums_row("igemm", info, 0, [&](const kernels::BnBackwardSums& bn) {
        kernels::conv_backward_data_igemm_bn_sums(d_dy.get(), d_w.get(), d_dx.get(), d_wt.get(), d, config, bn, 0);
      });
    }
  }

  // ---- the Hopper kernel (wgmma, sm_90a): forward, and the input gradient through it
  if (kernels::wgmma_supported()) {
    DeviceBuffer<__half> d_wt(kernels::igemm_dgrad_scratch_bytes(d) / sizeof(__half));
    for (kernels::WgmmaConfig config : kernels::kWgmmaConfigs) {
      if (!wgmma_config_takes_channels(config, d.C)) continue;  // of the recipe, prep (C = 32, no input gradient)
      if (!kernels::wgmma_config_takes_image(config, d.H, d.W, d.R)) continue;
      const auto info = kernels::wgmma_config_info(config);
      if (!wanted(info.name)) continue;
      Row row = new_row("fwd", "wgmma", info.name);
      row.info = info;
      row.blocks_per_sm = kernels::wgmma_blocks_per_sm(config, false);
      checked_row(row, d_y, y_ref, "y images 0..1", kTolOut, cudnn_us[0],
                  [&] { kernels::conv_forward_wgmma(d_x.get(), d_w.get(), d_y.get(), d, config, 0); });
      if (!has_dgrad || !wgmma_config_takes_channels(config, d.K)) continue;
      Row brow = new_row("bwd_data", "wgmma", info.name);
      brow.info = info;
      brow.blocks_per_sm = row.blocks_per_sm;
      checked_row(brow, d_dx, dx_ref, "dx images 0..1", kTolOut, cudnn_us[1], [&] {
        kernels::conv_backward_data_wgmma(d_dy.get(), d_w.get(), d_dx.get(), d_wt.get(), d, config, 0);
      });
      if (!kernels::wgmma_config_fused_epilogues(config)) continue;
      bn_sums_row("wgmma", info, row.blocks_per_sm, [&](const kernels::BnBackwardSums& bn) {
        kernels::conv_backward_data_wgmma_bn_sums(d_dy.get(), d_w.get(), d_dx.get(), d_wt.get(), d, config, bn, 0);
      });
    }
  }

  // ---- weight gradient: the split-K kernel + the slab reduction (timed together), at the
  // default split count for this GPU and at half and twice that; the mma.sync configs, then on
  // Hopper the wgmma ones (the same split-K scheme and reduction).
  // One weight-gradient row: launch(partials) into d_dw with `scratch` bytes of partials,
  // checked against the reference, then timed.
  auto wgrad_row = [&](const Row& row, size_t scratch, const std::function<void(float*)>& launch) {
    DeviceBuffer<float> d_part(scratch / sizeof(float));
    d_part.poison();
    checked_row(row, d_dw, dw_ref, "dw over all 512 images", kTolOut, cudnn_us[2], [&] { launch(d_part.get()); });
  };
  // launch(splits, partials) runs one config's weight gradient into d_dw.
  auto wgrad_rows = [&](const char* kernel, const kernels::IgemmConfigInfo& info, int dflt, int blocks_per_sm,
                        const std::function<int(int)>& launched_splits,
                        const std::function<void(int, float*)>& launch) {
    std::vector<int> launched;
    for (int want : {dflt, std::max(1, dflt / 2), 2 * dflt}) {
      const int splits = launched_splits(want);
      if (std::find(launched.begin(), launched.end(), splits) != launched.end()) continue;
      launched.push_back(splits);
      Row row = new_row("bwd_filter", kernel, info.name);
      row.info = info;
      row.splits = splits;
      row.blocks_per_sm = blocks_per_sm;
      wgrad_row(row, kernels::igemm_wgrad_scratch_bytes(d, splits), [&](float* part) { launch(splits, part); });
    }
  };
  for (kernels::IgemmConfig config : kernels::kIgemmConfigs)
    if (wanted(kernels::igemm_config_info(config).name))
      wgrad_rows(
        "igemm", kernels::igemm_config_info(config), kernels::igemm_wgrad_default_splits(d, config, sm_count), 0,
        [&](int want) { return kernels::igemm_wgrad_split(d, config, want).splits; },
        [&](int splits, float* part) {
          kernels::conv_backward_filter_igemm(d_x.get(), d_dy.get(), d_dw.get(), part, d, config, splits, 0);
        });
  if (kernels::wgmma_supported())
    for (kernels::WgmmaConfig config : kernels::kWgmmaConfigs) {
      if (!wgmma_config_takes_channels(config, d.C) || !kernels::wgmma_config_weight_gradient(config) ||
          !wanted(kernels::wgmma_config_info(config).name))
        continue;
      wgrad_rows(
          "wgmma", kernels::wgmma_config_info(config), kernels::wgmma_wgrad_default_splits(d, config, sm_count),
          kernels::wgmma_blocks_per_sm(config, true),
          [&](int want) { return kernels::wgmma_wgrad_split(d, want).splits; },
          [&](int splits, float* part) {
            kernels::conv_backward_filter_wgmma(d_x.get(), d_dy.get(), d_dw.get(), part, d, config, splits, 0);
          });
      if (!kernels::wgmma_config_streamk(config)) continue;
      // The same tile stream-K (one equal run of slices per resident block, the partials of each
      // tile added in order by a second kernel), timed with that kernel as the split-K rows.
      Row row = new_row("bwd_filter", "wgmma", kernels::wgmma_config_info(config).name);
      row.info = kernels::wgmma_config_info(config);
      row.stream_k = kernels::wgmma_wgrad_streamk_plan(d, config);
      row.blocks_per_sm = kernels::wgmma_blocks_per_sm(config, true);
      wgrad_row(row, kernels::wgrad_streamk_scratch_bytes(d, row.stream_k), [&](float* part) {
        kernels::conv_backward_filter_wgmma_streamk(d_x.get(), d_dy.get(), d_dw.get(), part, d, config, 0);
      });
    }
}

std::string shape_str(const kernels::ConvDesc& d) {
  return std::to_string(d.C) + "->" + std::to_string(d.K) + " " + std::to_string(d.R) + "x" +
         std::to_string(d.R) + " @" + std::to_string(d.H) + " N" + std::to_string(d.N);
}

void print_usage() {
  std::printf(
      "usage: conv_bench [--json out.json] [--iters N] [--no-cudnn] [--layers L1,L2,...]\n"
      "                  [--configs C1,C2,...] [--help]\n"
      "  Times the hand-written implicit-GEMM convolutions (every tile config: the forward with\n"
      "  and without the BN-statistics and fused max-pool epilogues, the input gradient with and\n"
      "  without the BN-backward sums epilogue, the split-K weight gradient; on Hopper also the\n"
      "  wgmma forward, input gradient (with and without the sums) and weight gradient, split-K\n"
      "  and, for some tiles, stream-K)\n"
      "  and cuDNN's autotuned passes on the recipe's conv shapes (batch 512), after checking each\n"
      "  against the CPU reference. Summary per layer: the fastest passing variant of each pass\n"
      "  and the three passes summed, against cuDNN.\n"
      "  --json PATH  also write the results as JSON (schema cifar-speedrun/conv_bench/v2)\n"
      "  --iters N    timed samples per variant, median reported (default 20)\n"
      "  --no-cudnn   skip cuDNN (no autotune; the speed-up columns are left empty)\n"
      "  --layers L   only these layers, comma-separated, of: prep, layer1, layer1_res, layer2,\n"
      "               layer3, layer3_res (default all; e.g. to profile one layer's kernels)\n"
      "  --configs C  only these tile configs of ours, comma-separated, by name (e.g.\n"
      "               wgmma_128x128x64_s3,128x64x32_s4; an unknown name lists them); default all\n"
      "  Exit status: 0 all checks passed, 1 no GPU, bad arguments or a CUDA error, 3 a check failed.\n");
}

// The fastest passing row of ours (igemm or wgmma) of a layer and pass (forward: without the
// fused epilogues, the like-for-like comparison with cuDNN's forward), or null.
const Row* best_igemm(const std::vector<Row>& rows, const std::string& layer, const std::string& pass) {
  const Row* b = nullptr;
  for (const Row& r : rows)
    if (r.layer == layer && r.pass == pass && r.kernel != "cudnn" && r.epilogue == "none" &&
        r.check == "pass" && (b == nullptr || r.t.median_us < b->t.median_us))
      b = &r;
  return b;
}

std::string config_label(const Row& r) {
  std::string s = r.config;
  if (r.epilogue != "none") s += " +" + r.epilogue;
  if (r.splits > 0) s += " splits=" + std::to_string(r.splits);
  if (r.stream_k.workers > 0) s += " stream-K";
  if (r.blocks_per_sm > 0) s += " occ=" + std::to_string(r.blocks_per_sm);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool with_cudnn = true;
  std::vector<std::string> layers;  // empty: all
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
        std::fprintf(stderr, "conv_bench: --iters must be >= 1\n");
        return 1;
      }
    } else if (a == "--no-cudnn") {
      with_cudnn = false;
    } else if (a == "--configs" && i + 1 < argc) {
      g_configs = bench::split_list(argv[++i]);
      std::vector<std::string> known;
      for (kernels::IgemmConfig c : kernels::kIgemmConfigs) known.push_back(kernels::igemm_config_info(c).name);
      for (kernels::WgmmaConfig c : kernels::kWgmmaConfigs) known.push_back(kernels::wgmma_config_info(c).name);
      for (const std::string& c : g_configs)
        if (std::find(known.begin(), known.end(), c) == known.end()) {
          std::string list;
          for (const std::string& k : known) list += (list.empty() ? "" : ", ") + k;
          std::fprintf(stderr, "conv_bench: --configs: unknown config '%s' (known: %s)\n", c.c_str(), list.c_str());
          return 1;
        }
    } else if (a == "--layers" && i + 1 < argc) {
      layers = bench::split_list(argv[++i]);
      for (const std::string& l : layers)
        if (std::none_of(std::begin(kShapes), std::end(kShapes), [&](const Shape& sp) { return l == sp.layer; })) {
          std::fprintf(stderr, "conv_bench: --layers: unknown layer '%s' (known: prep, layer1, layer1_res, "
                               "layer2, layer3, layer3_res)\n", l.c_str());
          return 1;
        }
    } else {
      std::fprintf(stderr, "conv_bench: unknown or incomplete argument '%s'\n", a.c_str());
      print_usage();
      return 1;
    }
  }

  const cs::GpuInfo gpu = cs::detect_gpu();
  if (!gpu.available) {
    std::fprintf(stderr, "conv_bench: no CUDA device (%s)\n", gpu.reason.c_str());
    return 1;
  }
  const bench::GpuPeaks peak = bench::peaks_for(gpu.name);
  std::printf("conv_bench: %s (%d SMs, cc %d.%d); peak %.0f TFLOP/s (%s); %d samples, median\n\n",
              gpu.name.c_str(), gpu.sm_count, gpu.cc_major, gpu.cc_minor, peak.tflops, peak.basis.c_str(),
              g_iters);

  std::vector<Row> rows;
  try {
    gpu_test::CudnnHandle handle;
    uint64_t seed = 5000;
    for (const Shape& sp : kShapes) {
      if (!layers.empty() && std::find(layers.begin(), layers.end(), sp.layer) == layers.end()) continue;
      std::printf("  %s ...\n", sp.layer);
      std::fflush(stdout);
      bench_shape(rows, handle.get(), with_cudnn, gpu.sm_count, sp, seed += 10);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "conv_bench: %s\n", e.what());
    return 1;
  }

  bool all_pass = true;
  json results = json::array(), best = json::array();
  std::printf("\n%-11s %-10s %-20s %-6s %-46s %10s %9s %6s %8s  %s\n", "layer", "pass", "shape", "kernel",
              "config", "median_us", "TFLOP/s", "%peak", "vs_cudnn", "check");
  for (const Row& r : rows) {
    const double tflops = r.flop / (r.t.median_us * 1e-6) / 1e12;
    const double speedup = r.cudnn_us > 0 ? r.cudnn_us / r.t.median_us : 0.0;
    if (r.check == "fail") all_pass = false;
    char vs[16] = "-";
    if (r.kernel != "cudnn" && speedup > 0) std::snprintf(vs, sizeof(vs), "%.2fx", speedup);
    std::printf("%-11s %-10s %-20s %-6s %-46s %10.1f %9.1f %6.1f %8s  %s (%.1e <= %.0e)\n", r.layer.c_str(),
                r.pass.c_str(), shape_str(r.d).c_str(), r.kernel.c_str(), config_label(r).c_str(), r.t.median_us,
                tflops, 100.0 * tflops / peak.tflops, vs, r.check.c_str(), r.error, r.tol);
    json j = {{"layer", r.layer},
              {"pass", r.pass},
              {"shape", {{"N", r.d.N}, {"H", r.d.H}, {"W", r.d.W}, {"C", r.d.C}, {"K", r.d.K}, {"R", r.d.R}}},
              {"kernel", r.kernel},
              {"config", r.config},
              {"epilogue", r.epilogue},
              {"flop", r.flop},
              {"median_us", r.t.median_us},
              {"min_us", r.t.min_us},
              {"tflops", tflops},
              {"pct_peak", 100.0 * tflops / peak.tflops},
              {"check", {{"status", r.check}, {"what", r.check_what}, {"error", r.error}, {"tol", r.tol}}}};
    if (r.kernel != "cudnn") {
      const kernels::IgemmConfigInfo& info = r.info;
      j["tile"] = {{"block_m", info.block_m}, {"block_n", info.block_n}, {"block_k", info.block_k},
                   {"warp_m", info.warp_m},   {"warp_n", info.warp_n},   {"stages", info.stages},
                   {"threads", info.threads}, {"smem_bytes", info.smem_bytes}, {"epilogue_m", info.epilogue_m},
                   {"epilogue_threads", info.epilogue_threads}};
      if (r.splits > 0) j["splits"] = r.splits;
      if (r.stream_k.workers > 0)
        j["stream_k"] = {{"runs", r.stream_k.workers}, {"slices_per_run", r.stream_k.run}, {"slots", r.stream_k.slots}};
      if (r.blocks_per_sm > 0) j["blocks_per_sm"] = r.blocks_per_sm;
      if (speedup > 0) j["speedup_vs_cudnn"] = speedup;
    }
    results.push_back(j);
  }

  // Per layer: the fastest passing igemm variant of each pass vs cuDNN's, and the passes summed
  // (the issue's target: forward + input gradient + weight gradient).
  std::printf("\n%-11s %-10s %-34s %10s %10s %8s\n", "layer", "pass", "best of ours", "ours_us", "cudnn_us",
              "speedup");
  for (const Shape& sp : kShapes) {
    json jl = {{"layer", sp.layer}, {"passes", json::object()}};
    double total_igemm = 0, total_cudnn = 0;
    bool complete = true;
    for (const char* pass : kPasses) {
      const bool ran = std::any_of(rows.begin(), rows.end(),
                                   [&](const Row& r) { return r.layer == sp.layer && r.pass == pass; });
      if (!ran) continue;  // prep's bwd_data
      const Row* b = best_igemm(rows, sp.layer, pass);
      if (b == nullptr) {
        complete = false;
        continue;
      }
      const double speedup = b->cudnn_us > 0 ? b->cudnn_us / b->t.median_us : 0.0;
      char vs[16] = "-";
      if (speedup > 0) std::snprintf(vs, sizeof(vs), "%.2fx", speedup);
      std::printf("%-11s %-10s %-34s %10.1f %10.1f %8s\n", sp.layer, pass, config_label(*b).c_str(),
                  b->t.median_us, b->cudnn_us, vs);
      json jp = {{"kernel", b->kernel}, {"config", b->config}, {"ours_us", b->t.median_us}};
      if (b->splits > 0) jp["splits"] = b->splits;
      if (b->stream_k.workers > 0) jp["stream_k"] = true;
      if (b->cudnn_us > 0) {
        jp["cudnn_us"] = b->cudnn_us;
        jp["speedup_vs_cudnn"] = speedup;
      }
      jl["passes"][pass] = jp;
      total_igemm += b->t.median_us;
      if (b->cudnn_us > 0) total_cudnn += b->cudnn_us;
      else complete = false;
    }
    // The fused conv + max-pool forward, for the pooled layers: informational (it also does
    // the pooling cuDNN's forward leaves to another kernel), not part of the total.
    const Row* bp = nullptr;
    for (const Row& r : rows)
      if (r.layer == sp.layer && r.pass == "fwd" && r.epilogue == "pool" && r.check == "pass" &&
          (bp == nullptr || r.t.median_us < bp->t.median_us))
        bp = &r;
    if (bp != nullptr) {
      std::printf("%-11s %-10s %-34s %10.1f %10.1f %8s\n", sp.layer, "fwd+pool", config_label(*bp).c_str(),
                  bp->t.median_us, bp->cudnn_us, "(fused)");
      jl["fused_pool_forward"] = {{"kernel", bp->kernel}, {"config", bp->config}, {"ours_us", bp->t.median_us}};
    }
    if (complete && total_cudnn > 0) {
      std::printf("%-11s %-10s %-34s %10.1f %10.1f %7.2fx\n", sp.layer, "total", "", total_igemm, total_cudnn,
                  total_cudnn / total_igemm);
      jl["total"] = {{"ours_us", total_igemm}, {"cudnn_us", total_cudnn},
                     {"speedup_vs_cudnn", total_cudnn / total_igemm}};
    }
    best.push_back(jl);
  }
  std::printf("\nchecks: %s\n", all_pass ? "all passed" : "SOME FAILED");

  if (!json_path.empty()) {
    json out = {
        {"schema", "cifar-speedrun/conv_bench/v2"},
        {"date", utc_now()},
        {"git_commit", CS_GIT_COMMIT_FALLBACK},
        {"version", CS_VERSION},
        {"gpu",
         {{"name", gpu.name},
          {"sm_count", gpu.sm_count},
          {"cc", std::to_string(gpu.cc_major) + "." + std::to_string(gpu.cc_minor)}}},
        {"cudnn_version", (long)cudnnGetVersion()},
        {"peak", {{"fp16_tensor_dense_tflops", peak.tflops}, {"basis", peak.basis}}},
        {"timing",
         {{"samples", g_iters},
          {"warmup", bench::kWarmup},
          {"statistic", "median"},
          {"sample_target_us", bench::kSampleTargetUs}}},
        {"batch", kBatch},
        {"ghost_group_images", kGhostGroup},
        {"with_cudnn", with_cudnn},
        {"layers", layers.empty() ? json("all") : json(layers)},
        {"configs", g_configs.empty() ? json("all") : json(g_configs)},
        {"all_checks_pass", all_pass},
        {"results", results},
        {"best", best},
    };
    if (!bench::write_record("conv_bench", json_path, out.dump(2) + "\n")) return 1;
  }
  return all_pass ? 0 : 3;
}
