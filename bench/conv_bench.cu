// conv_bench: the hand-written implicit-GEMM forward convolution (kernels/conv/implicit_gemm.cuh)
// on the recipe's six conv shapes at batch 512, every tile configuration with and without the
// fused BN-statistics epilogue, next to cuDNN's autotuned forward (engine/conv_cudnn.h). Each
// variant is checked against the CPU reference on a slice before it is timed (llm.c's dev/cuda
// style: validate, then time). Prints a table and writes JSON (docs/conv_kernels.md).
//
//   conv_bench [--json out.json] [--iters N] [--no-cudnn] [--help]
//
// Timing: CUDA events around R back-to-back launches (R chosen so a sample lasts ~200 us),
// 3 warm-up calls, N samples (default 20), median and minimum per call.
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

#include "bench/bench_util.h"
#include "engine/conv_cudnn.h"
#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/conv/implicit_gemm.cuh"
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
constexpr int kWarmup = 3;
constexpr double kSampleTargetUs = 200.0;
constexpr size_t kMaxWorkspace = size_t(1) << 30;  // offered to cuDNN's autotune
// Output tolerance (rel. L2), as in tests/implicit_gemm_gpu_test.cu: fp16 output rounding
// ~3e-4 rms. cuDNN's algorithms are allowed 1e-2, as in kernel_bench (Winograd / FFT).
// Statistics: fp32 sums in three levels (<= 32 rows per thread, 4 slices per block, <= 512
// blocks per group with BlockM 64 at @32): every term passes through <= 548 additions, so the
// error is <= 548 * 2^-24 = 3.3e-5 of the sum of |terms|; 1e-4 is above that bound.
constexpr double kTolOut = 2e-3, kTolCudnn = 1e-2, kTolStats = 1e-4;

struct Shape {
  const char* layer;
  int H, C, K, R, real_channels;
};
// The recipe's convolutions (docs/recipe.md; kernel_bench's table): prep's 1x1 conv reads the
// 27 whitening channels padded to 32.
const Shape kShapes[] = {
    {"prep", 32, 32, 64, 1, 27},        {"layer1", 32, 64, 128, 3, 64},
    {"layer1_res", 16, 128, 128, 3, 128}, {"layer2", 16, 128, 256, 3, 128},
    {"layer3", 8, 256, 512, 3, 256},     {"layer3_res", 4, 512, 512, 3, 512},
};

struct Peak {
  double tflops;
  std::string basis;
};
Peak peak_for(const std::string& name) {
  auto has = [&](const char* s) { return name.find(s) != std::string::npos; };
  if (has("H100") && (has("PCIe") || has("PCIE"))) return {756.0, "H100 PCIe datasheet, dense fp16"};
  if (has("A100")) return {312.0, "A100 datasheet, dense fp16"};
  if (has("H100") || has("H200")) return {989.0, "H100/H200 SXM datasheet, dense fp16"};
  return {989.0, "unknown GPU: H100 SXM figure (989 TFLOP/s dense fp16)"};
}

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

// ----------------------------------------------------------------------------------- timing

int g_iters = 20;

struct Timing {
  double median_us = -1, min_us = -1;
};

Timing time_calls(const std::function<void()>& f) {
  cudaEvent_t a, b;
  CUDA_CHECK(cudaEventCreate(&a));
  CUDA_CHECK(cudaEventCreate(&b));
  auto run = [&](int reps) {
    CUDA_CHECK(cudaEventRecord(a, 0));
    for (int i = 0; i < reps; i++) f();
    CUDA_CHECK(cudaEventRecord(b, 0));
    CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.0f;
    CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    return 1000.0 * ms / reps;
  };
  for (int i = 0; i < kWarmup; i++) f();
  CUDA_CHECK(cudaDeviceSynchronize());
  const double one_us = run(1);
  const int reps = (int)std::min(100.0, std::max(1.0, std::ceil(kSampleTargetUs / std::max(one_us, 1e-3))));
  std::vector<double> us(g_iters);
  for (int i = 0; i < g_iters; i++) us[i] = run(reps);
  std::sort(us.begin(), us.end());
  CUDA_CHECK(cudaEventDestroy(a));
  CUDA_CHECK(cudaEventDestroy(b));
  return {us[us.size() / 2], us[0]};
}

// ------------------------------------------------------------------------------------ rows

struct Row {
  std::string layer, kernel, config;  // kernel: "igemm" or "cudnn"
  kernels::IgemmConfigInfo info{};    // igemm only
  bool stats = false;
  kernels::ConvDesc d{};
  double flop = 0;
  Timing t;
  std::string check = "n/a";  // "pass" / "fail"
  std::string check_what;
  double error = 0, tol = 0;
  double cudnn_us = -1;  // cuDNN's median on the same shape, for the speed-up column
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

void bench_shape(std::vector<Row>& rows, cudnnHandle_t handle, bool with_cudnn, const Shape& sp,
                 uint64_t seed) {
  const kernels::ConvDesc d{kBatch, sp.H, sp.H, sp.C, sp.K, sp.R};
  const long x_size = (long)kBatch * sp.H * sp.H * sp.C, y_size = (long)kBatch * sp.H * sp.H * sp.K;
  const long w_size = (long)sp.K * sp.R * sp.R * sp.C;
  const double flop = 2.0 * kBatch * sp.H * sp.H * (double)sp.K * sp.R * sp.R * sp.C;

  // Inputs as in kernel_bench: x uniform in [-1, 1) (channels >= real_channels zero), w uniform
  // in +-1/sqrt(fan_in); both fp16-rounded so the reference sees the kernel's numbers.
  auto x = random_vec(x_size, seed, -1.0f, 1.0f);
  for (long i = 0; i < x_size; i++)
    if (i % sp.C >= sp.real_channels) x[i] = 0.0f;
  x = round_to_half(x);
  const float bound = 1.0f / std::sqrt((float)(sp.real_channels * sp.R * sp.R));
  const auto w = round_to_half(random_vec(w_size, seed + 1, -bound, bound));
  const ref::ConvShape rs{kRefImages, sp.H, sp.H, sp.C, sp.K, sp.R};
  std::vector<float> y_ref(rs.y_size());
  ref::conv_forward(x.data(), w.data(), y_ref.data(), rs);

  auto d_x = upload_half(x), d_w = upload_half(w);
  DeviceBuffer<__half> d_y(y_size);

  double cudnn_us = -1;
  if (with_cudnn) {
    const cs::ConvDesc cd{d.N, d.H, d.W, d.C, d.K, d.R};
    cs::CudnnConv conv(handle, cd);
    DeviceBuffer<char> ws(kMaxWorkspace);
    {
      auto tx = upload_half(x), tw = upload_half(w);  // autotune overwrites its buffers
      DeviceBuffer<__half> ty(y_size);
      conv.autotune(tx.get(), tw.get(), ty.get(), ws.get(), kMaxWorkspace);
    }
    Row row;
    row.layer = sp.layer;
    row.kernel = "cudnn";
    row.config = conv.chosen();
    row.d = d;
    row.flop = flop;
    d_y.poison();
    conv.forward(d_x.get(), d_w.get(), d_y.get(), ws.get());
    CUDA_CHECK(cudaDeviceSynchronize());
    const auto y = download(d_y);
    set_check(row, "all outputs finite", all_finite_half(y) ? 0.0 : INFINITY, kTolCudnn);
    set_check(row, "y images 0..1 (rel L2)", rel_l2(to_float(y, rs.y_size()).data(), y_ref.data(), rs.y_size()),
              kTolCudnn);
    row.t = time_calls([&] { conv.forward(d_x.get(), d_w.get(), d_y.get(), ws.get()); });
    cudnn_us = row.t.median_us;
    rows.push_back(row);
  }

  const int groups = kBatch / kGhostGroup;
  const long group_pixels = (long)kGhostGroup * sp.H * sp.H;
  DeviceBuffer<float> d_sum((size_t)groups * sp.K), d_sumsq((size_t)groups * sp.K);
  for (kernels::IgemmConfig config : kernels::kIgemmConfigs) {
    const auto info = kernels::igemm_config_info(config);
    DeviceBuffer<float> d_part(kernels::igemm_stats_scratch_bytes(d, config) / sizeof(float));
    const kernels::IgemmStats st{d_sum.get(), d_sumsq.get(), d_part.get(), kGhostGroup};
    std::vector<__half> y_plain;
    for (int with_stats = 0; with_stats <= 1; with_stats++) {
      Row row;
      row.layer = sp.layer;
      row.kernel = "igemm";
      row.config = info.name;
      row.info = info;
      row.stats = with_stats != 0;
      row.d = d;
      row.flop = flop;
      auto launch = [&] {
        if (with_stats)
          kernels::conv_forward_igemm_stats(d_x.get(), d_w.get(), d_y.get(), d, config, st, 0);
        else
          kernels::conv_forward_igemm(d_x.get(), d_w.get(), d_y.get(), d, config, 0);
      };
      d_y.poison();
      d_sum.poison();
      d_sumsq.poison();
      launch();
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto y = download(d_y);
      const auto yf = to_float(y, rs.y_size());
      set_check(row, "all outputs finite", all_finite_half(y) ? 0.0 : INFINITY, kTolOut);
      set_check(row, "y images 0..1 (rel L2)", rel_l2(yf.data(), y_ref.data(), rs.y_size()), kTolOut);
      if (!with_stats) {
        y_plain = y;
      } else {
        const bool same = y.size() == y_plain.size() &&
                          std::memcmp(y.data(), y_plain.data(), y.size() * sizeof(__half)) == 0;
        set_check(row, "y bitwise equal without stats", same ? 0.0 : INFINITY, kTolStats);
        // Ghost-BN statistics of every group vs double sums over the stored y.
        const auto sum = download(d_sum), sumsq = download(d_sumsq);
        std::vector<double> s((size_t)groups * sp.K, 0.0), sa(s.size(), 0.0), ss(s.size(), 0.0);
        for (long q = 0; q < (long)kBatch * sp.H * sp.H; q++) {
          const long g = q / group_pixels;
          for (int k = 0; k < sp.K; k++) {
            const double v = __half2float(y[q * sp.K + k]);
            s[g * sp.K + k] += v;
            sa[g * sp.K + k] += std::fabs(v);
            ss[g * sp.K + k] += v * v;
          }
        }
        double worst = 0.0;
        for (size_t i = 0; i < s.size(); i++) {
          const double e = std::max(std::fabs(sum[i] - s[i]) / std::max(sa[i], 1e-30),
                                    std::fabs(sumsq[i] - ss[i]) / std::max(ss[i], 1e-30));
          worst = std::isnan(e) ? INFINITY : std::max(worst, e);
        }
        set_check(row, "ghost-BN sums, 16 groups (rel. to sum |y|)", worst, kTolStats);
      }
      row.t = time_calls(launch);
      row.cudnn_us = cudnn_us;
      rows.push_back(row);
    }
  }
}

std::string shape_str(const kernels::ConvDesc& d) {
  return std::to_string(d.C) + "->" + std::to_string(d.K) + " " + std::to_string(d.R) + "x" +
         std::to_string(d.R) + " @" + std::to_string(d.H) + " N" + std::to_string(d.N);
}

void print_usage() {
  std::printf(
      "usage: conv_bench [--json out.json] [--iters N] [--no-cudnn] [--help]\n"
      "  Times the hand-written implicit-GEMM forward conv (every tile config, with and without\n"
      "  the BN-statistics epilogue) and cuDNN's autotuned forward on the recipe's conv shapes\n"
      "  (batch 512), after checking each against the CPU reference.\n"
      "  --json PATH  also write the results as JSON (schema cifar-speedrun/conv_bench/v1)\n"
      "  --iters N    timed samples per variant, median reported (default 20)\n"
      "  --no-cudnn   skip cuDNN (no autotune; the speed-up column is left empty)\n"
      "  Exit status: 0 all checks passed, 1 no GPU, bad arguments or a CUDA error, 3 a check failed.\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::string json_path;
  bool with_cudnn = true;
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
  const Peak peak = peak_for(gpu.name);
  std::printf("conv_bench: %s (%d SMs, cc %d.%d); peak %.0f TFLOP/s (%s); %d samples, median\n\n",
              gpu.name.c_str(), gpu.sm_count, gpu.cc_major, gpu.cc_minor, peak.tflops, peak.basis.c_str(),
              g_iters);

  std::vector<Row> rows;
  try {
    gpu_test::CudnnHandle handle;
    uint64_t seed = 5000;
    for (const Shape& sp : kShapes) bench_shape(rows, handle.get(), with_cudnn, sp, seed += 10);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "conv_bench: %s\n", e.what());
    return 1;
  }

  bool all_pass = true;
  json results = json::array(), best = json::array();
  std::printf("%-11s %-20s %-6s %-46s %10s %9s %6s %8s  %s\n", "layer", "shape", "kernel", "config",
              "median_us", "TFLOP/s", "%peak", "vs_cudnn", "check");
  for (size_t i = 0; i < rows.size(); i++) {
    const Row& r = rows[i];
    const double tflops = r.flop / (r.t.median_us * 1e-6) / 1e12;
    const double speedup = r.cudnn_us > 0 ? r.cudnn_us / r.t.median_us : 0.0;
    const std::string config = r.config + (r.stats ? " +stats" : "");
    if (r.check == "fail") all_pass = false;
    char vs[16] = "-";
    if (r.kernel == "igemm" && speedup > 0) std::snprintf(vs, sizeof(vs), "%.2fx", speedup);
    std::printf("%-11s %-20s %-6s %-46s %10.1f %9.1f %6.1f %8s  %s (%.1e <= %.0e)\n", r.layer.c_str(),
                shape_str(r.d).c_str(), r.kernel.c_str(), config.c_str(), r.t.median_us, tflops,
                100.0 * tflops / peak.tflops, vs, r.check.c_str(), r.error, r.tol);
    json j = {{"layer", r.layer},
              {"shape", {{"N", r.d.N}, {"H", r.d.H}, {"W", r.d.W}, {"C", r.d.C}, {"K", r.d.K}, {"R", r.d.R}}},
              {"kernel", r.kernel},
              {"config", r.config},
              {"stats_epilogue", r.stats},
              {"flop", r.flop},
              {"median_us", r.t.median_us},
              {"min_us", r.t.min_us},
              {"tflops", tflops},
              {"pct_peak", 100.0 * tflops / peak.tflops},
              {"check", {{"status", r.check}, {"what", r.check_what}, {"error", r.error}, {"tol", r.tol}}}};
    if (r.kernel == "igemm") {
      const kernels::IgemmConfigInfo& info = r.info;
      j["tile"] = {{"block_m", info.block_m}, {"block_n", info.block_n}, {"block_k", info.block_k},
                   {"warp_m", info.warp_m},   {"warp_n", info.warp_n},   {"stages", info.stages},
                   {"threads", info.threads}, {"smem_bytes", info.smem_bytes}};
      if (speedup > 0) j["speedup_vs_cudnn"] = speedup;
    }
    results.push_back(j);
  }
  // Per layer: the fastest passing configuration without the stats epilogue, vs cuDNN.
  std::printf("\n%-11s %-16s %10s %10s %8s\n", "layer", "best igemm", "igemm_us", "cudnn_us", "speedup");
  for (const Shape& sp : kShapes) {
    const Row* b = nullptr;
    for (const Row& r : rows)
      if (r.layer == sp.layer && r.kernel == "igemm" && !r.stats && r.check == "pass" &&
          (b == nullptr || r.t.median_us < b->t.median_us))
        b = &r;
    if (b == nullptr) continue;
    const double speedup = b->cudnn_us > 0 ? b->cudnn_us / b->t.median_us : 0.0;
    char vs[16] = "-";
    if (speedup > 0) std::snprintf(vs, sizeof(vs), "%.2fx", speedup);
    std::printf("%-11s %-16s %10.1f %10.1f %8s\n", sp.layer, b->config.c_str(), b->t.median_us, b->cudnn_us, vs);
    json jb = {{"layer", sp.layer}, {"config", b->config}, {"igemm_us", b->t.median_us}};
    if (b->cudnn_us > 0) {
      jb["cudnn_us"] = b->cudnn_us;
      jb["speedup_vs_cudnn"] = speedup;
    }
    best.push_back(jb);
  }
  std::printf("\nchecks: %s\n", all_pass ? "all passed" : "SOME FAILED");

  if (!json_path.empty()) {
    json out = {
        {"schema", "cifar-speedrun/conv_bench/v1"},
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
         {{"samples", g_iters}, {"warmup", kWarmup}, {"statistic", "median"}, {"sample_target_us", kSampleTargetUs}}},
        {"batch", kBatch},
        {"ghost_group_images", kGhostGroup},
        {"with_cudnn", with_cudnn},
        {"all_checks_pass", all_pass},
        {"results", results},
        {"best", best},
    };
    if (!bench::write_record("conv_bench", json_path, out.dump(2) + "\n")) return 1;
  }
  return all_pass ? 0 : 3;
}
