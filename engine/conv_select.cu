// Per-layer choice between cuDNN and the implicit-GEMM kernels; see engine/conv_select.h.
#include "engine/conv_select.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/cuda_check.h"
#include "engine/gpu_context.h"
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/wgmma_conv.cuh"

namespace cs {

namespace {

constexpr int kCompareBlocks = 256, kCompareThreads = 256;
constexpr int kTimingSamples = 7;

// Setup-only comparison of an fp16 output with the reference one: per block, the sum of
// squared differences, the sum of squares of the reference, the largest |difference| and the
// largest |reference| (fixed order within the block); a non-finite value in either makes the
// difference infinite.
__global__ void compare_half_kernel(const __half* __restrict__ out, const __half* __restrict__ ref,
                                    long n, double* __restrict__ partial) {
  __shared__ double s_diff[kCompareThreads], s_ref[kCompareThreads], s_maxd[kCompareThreads],
      s_maxr[kCompareThreads];
  double diff = 0.0, sq = 0.0, maxd = 0.0, maxr = 0.0;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    const float a = __half2float(out[i]), b = __half2float(ref[i]);
    if (!isfinite(a) || !isfinite(b)) {
      diff = INFINITY;
      maxd = INFINITY;
    } else {
      const double d = (double)a - (double)b;
      diff += d * d;
      sq += (double)b * b;
      maxd = fmax(maxd, fabs(d));
      maxr = fmax(maxr, fabs((double)b));
    }
  }
  s_diff[threadIdx.x] = diff;
  s_ref[threadIdx.x] = sq;
  s_maxd[threadIdx.x] = maxd;
  s_maxr[threadIdx.x] = maxr;
  __syncthreads();
  for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
    if ((int)threadIdx.x < stride) {
      s_diff[threadIdx.x] += s_diff[threadIdx.x + stride];
      s_ref[threadIdx.x] += s_ref[threadIdx.x + stride];
      s_maxd[threadIdx.x] = fmax(s_maxd[threadIdx.x], s_maxd[threadIdx.x + stride]);
      s_maxr[threadIdx.x] = fmax(s_maxr[threadIdx.x], s_maxr[threadIdx.x + stride]);
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    partial[4 * blockIdx.x] = s_diff[0];
    partial[4 * blockIdx.x + 1] = s_ref[0];
    partial[4 * blockIdx.x + 2] = s_maxd[0];
    partial[4 * blockIdx.x + 3] = s_maxr[0];
  }
}

size_t align_up(size_t n) { return (n + 255) / 256 * 256; }

kernels::ConvDesc kdesc(const ConvDesc& d) { return {d.N, d.H, d.W, d.C, d.K, d.R}; }

}  // namespace

OutputDistance compare_outputs(const __half* out, const __half* ref, long n, double* partial, cudaStream_t s) {
  static_assert(kCompareScratchDoubles == 4 * kCompareBlocks, "one partial of 4 doubles per block");
  compare_half_kernel<<<kCompareBlocks, kCompareThreads, 0, s>>>(out, ref, n, partial);
  CUDA_CHECK_LAUNCH();
  std::vector<double> h(4 * kCompareBlocks);
  CUDA_CHECK(cudaMemcpyAsync(h.data(), partial, h.size() * sizeof(double), cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaStreamSynchronize(s));
  double diff = 0.0, sq = 0.0, maxd = 0.0, maxr = 0.0;
  for (int b = 0; b < kCompareBlocks; b++) {
    diff += h[4 * b];
    sq += h[4 * b + 1];
    maxd = std::max(maxd, h[4 * b + 2]);
    maxr = std::max(maxr, h[4 * b + 3]);
  }
  if (!std::isfinite(diff) || !std::isfinite(maxd)) return {INFINITY, INFINITY};
  return {std::sqrt(diff) / std::max(std::sqrt(sq), 1e-30), maxd / std::max(maxr, 1e-30)};
}

const char* conv_policy_name(ConvPolicy p) {
  switch (p) {
    case ConvPolicy::kAuto: return "auto";
    case ConvPolicy::kCudnn: return "cudnn";
    case ConvPolicy::kIgemm: return "igemm";
    case ConvPolicy::kAutoUntested: return "auto-untested";
  }
  return "?";
}

bool parse_conv_policy(const std::string& s, ConvPolicy* out) {
  for (ConvPolicy p : {ConvPolicy::kAuto, ConvPolicy::kCudnn, ConvPolicy::kIgemm, ConvPolicy::kAutoUntested})
    if (s == conv_policy_name(p)) {
      *out = p;
      return true;
    }
  return false;
}

const char* conv_pass_name(ConvPass p) {
  switch (p) {
    case ConvPass::kFwd: return "fwd";
    case ConvPass::kBwdData: return "bwd_data";
    case ConvPass::kBwdFilter: return "bwd_filter";
  }
  return "?";
}

ConvSelect::ConvSelect(cudnnHandle_t handle, const ConvDesc& d, ConvPolicy policy)
    : handle_(handle), d_(d), policy_(policy), cudnn_(handle, d) {}

cudaStream_t ConvSelect::stream() const {
  cudaStream_t s = nullptr;
  CUDNN_CHECK(cudnnGetStream(handle_, &s));
  return s;
}

// The implicit-GEMM kernels' shape rules (kernels/conv/implicit_gemm.cuh): 8-channel vectors
// and an odd filter. Alignment holds for arena buffers (256 bytes).
bool ConvSelect::igemm_shape_ok() const { return d_.C % 8 == 0 && d_.K % 8 == 0 && d_.R % 2 == 1; }

void ConvSelect::run_ours(ConvPass pass, const Choice& c, const __half* a, const __half* b,
                          __half* out, void* scratch) const {
  const kernels::ConvDesc kd = kdesc(d_);
  switch (pass) {
    case ConvPass::kFwd:  // a = x, b = w
      if (c.impl == Impl::kWgmma) kernels::conv_forward_wgmma(a, b, out, kd, c.wgmma_config, stream());
      else kernels::conv_forward_igemm(a, b, out, kd, c.config, stream());
      return;
    case ConvPass::kBwdData:  // a = dy, b = w
      if (c.impl == Impl::kWgmma)
        kernels::conv_backward_data_wgmma(a, b, out, static_cast<__half*>(scratch), kd, c.wgmma_config, stream());
      else
        kernels::conv_backward_data_igemm(a, b, out, static_cast<__half*>(scratch), kd, c.config, stream());
      return;
    case ConvPass::kBwdFilter:  // a = x, b = dy
      if (c.impl == Impl::kWgmma && c.stream_k)
        kernels::conv_backward_filter_wgmma_streamk(a, b, out, static_cast<float*>(scratch), kd, c.wgmma_config,
                                                    stream());
      else if (c.impl == Impl::kWgmma)
        kernels::conv_backward_filter_wgmma(a, b, out, static_cast<float*>(scratch), kd, c.wgmma_config, c.splits,
                                            stream());
      else
        kernels::conv_backward_filter_igemm(a, b, out, static_cast<float*>(scratch), kd, c.config, c.splits,
                                            stream());
      return;
  }
}

void ConvSelect::autotune(__half* x, __half* w, __half* y, void* workspace, size_t max_workspace,
                          int sm_count, const std::function<void()>& refill, bool quick) {
  cudaStream_t s = stream();
  const bool wgmma = policy_ != ConvPolicy::kCudnn && kernels::wgmma_supported();
  if (!quick) cudnn_.autotune(x, w, y, workspace, max_workspace);
  refill();
  auto timed = [&](const std::function<void()>& f) {
    return setup_time_us(f, s, kTimingSamples, quick);
  };
  candidates_.clear();
  for (Choice& c : choice_) c = Choice{};

  const long x_n = (long)d_.N * d_.H * d_.W * d_.C, y_n = (long)d_.N * d_.H * d_.W * d_.K;
  const long w_n = (long)d_.K * d_.R * d_.R * d_.C;
  const long out_n[3] = {y_n, x_n, w_n};
  const std::string algos[3] = {cudnn_.chosen_fwd(), cudnn_.chosen_bwd_data(), cudnn_.chosen_bwd_filter()};

  // Workspace layout during selection: [cuDNN's workspace][reference output][candidate output]
  // [compare partials][candidate scratch ...].
  char* base = static_cast<char*>(workspace);
  const size_t cudnn_ws = align_up(cudnn_.workspace_bytes());
  const size_t out_bytes = align_up((size_t)std::max({x_n, y_n, w_n}) * sizeof(__half));
  const size_t partial_bytes = align_up(4 * kCompareBlocks * sizeof(double));
  const size_t fixed = cudnn_ws + 2 * out_bytes + partial_bytes;
  const bool room = fixed <= max_workspace;
  __half* ref_out = room ? reinterpret_cast<__half*>(base + cudnn_ws) : nullptr;
  __half* cand_out = room ? reinterpret_cast<__half*>(base + cudnn_ws + out_bytes) : nullptr;
  double* partial = room ? reinterpret_cast<double*>(base + cudnn_ws + 2 * out_bytes) : nullptr;
  void* scratch = room ? base + fixed : nullptr;
  const size_t scratch_room = room ? max_workspace - fixed : 0;

  for (int pi = 0; pi < 3; pi++) {
    const ConvPass pass = static_cast<ConvPass>(pi);
    // The pass's inputs: fwd (x, w), bwd_data (dy = y, w), bwd_filter (x, dy = y).
    auto run_cudnn = [&](__half* out) {
      if (pass == ConvPass::kFwd) cudnn_.forward(x, w, out, workspace);
      else if (pass == ConvPass::kBwdData) cudnn_.backward_data(y, w, out, workspace);
      else cudnn_.backward_filter(x, y, out, workspace);
    };
    const __half* in_a = pass == ConvPass::kBwdData ? y : x;
    const __half* in_b = pass == ConvPass::kBwdFilter ? y : w;

    ConvCandidate cc{pass, "cudnn", algos[pi]};
    cc.status = "ok";
    double best_us = -1;
    if (room) {
      run_cudnn(ref_out);
      cc.us = timed([&] { run_cudnn(cand_out); });
      best_us = policy_ == ConvPolicy::kIgemm ? -1 : cc.us;
    }
    candidates_.push_back(cc);
    if (policy_ == ConvPolicy::kCudnn) continue;

    // Validates and times one of our candidates; the fastest eligible one replaces cuDNN.
    auto try_ours = [&](const Choice& c, ConvCandidate ic) {
      if (!igemm_shape_ok()) {
        ic.status = "shape not supported (C and K must be multiples of 8, R odd)";
      } else if (!room || c.scratch > scratch_room) {
        ic.status = "not enough workspace to validate";
      } else {
        try {
          CUDA_CHECK(cudaMemsetAsync(cand_out, 0xFF, out_n[pi] * sizeof(__half), s));  // NaN poison
          run_ours(pass, c, in_a, in_b, cand_out, scratch);
          const OutputDistance dist = compare_outputs(cand_out, ref_out, out_n[pi], partial, s);
          ic.rel_diff = dist.rel_l2;
          if (!(dist.rel_l2 <= kConvSelectTol)) {
            ic.status = "output differs from cuDNN (rel. L2)";
          } else if (!(dist.rel_max <= kConvSelectMaxTol)) {
            ic.status = "output differs from cuDNN (largest difference)";
          } else {
            ic.us = timed([&] { run_ours(pass, c, in_a, in_b, cand_out, scratch); });
            ic.status = "ok";
          }
        } catch (const std::invalid_argument& e) {  // a launcher precondition
          ic.status = std::string("rejected: ") + e.what();
        }
      }
      if (ic.status == "ok" && (best_us < 0 || ic.us < best_us)) {
        best_us = ic.us;
        choice_[pi] = c;
      }
      candidates_.push_back(ic);
    };

    // One of our configs: its scratch for this pass (dgrad: the filter copy; wgrad: the split-K
    // partials at `wgrad_splits` slabs), then validated and timed.
    const kernels::ConvDesc kd = kdesc(d_);
    auto try_config = [&](Choice c, const char* kernel, const char* name, int wgrad_splits) {
      if (pass == ConvPass::kBwdFilter) {
        c.splits = wgrad_splits;
        c.scratch = kernels::igemm_wgrad_scratch_bytes(kd, c.splits);
      } else if (pass == ConvPass::kBwdData) {
        c.scratch = kernels::igemm_dgrad_scratch_bytes(kd);
      }
      ConvCandidate ic{pass, kernel, name};
      ic.splits = pass == ConvPass::kBwdFilter ? c.splits : 0;
      try_ours(c, ic);
    };
    for (kernels::IgemmConfig config : kernels::kIgemmConfigs) {
      Choice c;
      c.impl = Impl::kIgemm;
      c.config = config;
      try_config(c, "igemm", kernels::igemm_config_info(config).name,
                 kernels::igemm_wgrad_split(kd, config, kernels::igemm_wgrad_default_splits(kd, config, sm_count)).splits);
    }
    // The Hopper kernels: forward, the input gradient through it, and the weight gradient.
    if (wgmma) {
      for (kernels::WgmmaConfig config : kernels::kWgmmaConfigs) {
        // Never run on a GPU yet: only when asked for.
        if (!kernels::wgmma_config_gpu_tested(config) && policy_ != ConvPolicy::kAutoUntested) continue;
        // A pass the config has no kernel for (the halo tile's weight gradient): not a candidate.
        if (pass == ConvPass::kBwdFilter && !kernels::wgmma_config_weight_gradient(config)) continue;
        Choice c;
        c.impl = Impl::kWgmma;
        c.wgmma_config = config;
        try_config(c, "wgmma", kernels::wgmma_config_info(config).name,
                   kernels::wgmma_wgrad_default_splits(kd, config, sm_count));
        // The same tile's stream-K weight gradient, its own candidate (not yet run on a GPU:
        // only when asked for, as an untested config).
        if (pass != ConvPass::kBwdFilter || !kernels::wgmma_config_streamk(config)) continue;
        if (!kernels::wgmma_streamk_gpu_tested() && policy_ != ConvPolicy::kAutoUntested) continue;
        c.stream_k = true;
        c.splits = 0;
        ConvCandidate ic{pass, "wgmma", kernels::wgmma_config_info(config).name};
        ic.stream_k = true;
        try {
          c.scratch = kernels::wgrad_streamk_scratch_bytes(kd, kernels::wgmma_wgrad_streamk_plan(kd, config));
          try_ours(c, ic);
        } catch (const std::invalid_argument& e) {  // the plan's preconditions
          ic.status = std::string("rejected: ") + e.what();
          candidates_.push_back(ic);
        }
      }
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(s));
}

size_t ConvSelect::workspace_bytes() const {
  size_t need = 0;
  bool any_cudnn = false;
  for (const Choice& c : choice_) {
    if (c.impl == Impl::kCudnn) any_cudnn = true;
    else need = std::max(need, c.scratch);
  }
  // cuDNN's need covers its three chosen algorithms; only counted if some pass uses cuDNN.
  return std::max(need, any_cudnn ? cudnn_.workspace_bytes() : 0);
}

void ConvSelect::forward(const __half* x, const __half* w, __half* y, void* workspace) const {
  const Choice& c = choice_[0];
  if (c.impl != Impl::kCudnn) run_ours(ConvPass::kFwd, c, x, w, y, workspace);
  else cudnn_.forward(x, w, y, workspace);
}

void ConvSelect::backward_data(const __half* dy, const __half* w, __half* dx, void* workspace) const {
  const Choice& c = choice_[1];
  if (c.impl != Impl::kCudnn) run_ours(ConvPass::kBwdData, c, dy, w, dx, workspace);
  else cudnn_.backward_data(dy, w, dx, workspace);
}

void ConvSelect::backward_filter(const __half* x, const __half* dy, __half* dw, void* workspace) const {
  const Choice& c = choice_[2];
  if (c.impl != Impl::kCudnn) run_ours(ConvPass::kBwdFilter, c, x, dy, dw, workspace);
  else cudnn_.backward_filter(x, dy, dw, workspace);
}

std::string ConvSelect::chosen() const {
  const std::string algos[3] = {cudnn_.chosen_fwd(), cudnn_.chosen_bwd_data(), cudnn_.chosen_bwd_filter()};
  std::string s;
  for (int pi = 0; pi < 3; pi++) {
    const Choice& c = choice_[pi];
    if (!s.empty()) s += " ";
    s += std::string(conv_pass_name(static_cast<ConvPass>(pi))) + "=";
    if (c.impl == Impl::kCudnn) {
      s += "cudnn:" + algos[pi];
    } else if (c.impl == Impl::kWgmma) {
      s += std::string("wgmma:") + kernels::wgmma_config_info(c.wgmma_config).name;
      if (pi == 2) s += c.stream_k ? std::string("/stream-K") : "/splits=" + std::to_string(c.splits);
    } else {
      s += std::string("igemm:") + kernels::igemm_config_info(c.config).name;
      if (pi == 2) s += "/splits=" + std::to_string(c.splits);
    }
  }
  return s;
}

}  // namespace cs
