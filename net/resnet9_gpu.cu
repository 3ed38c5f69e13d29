// ResNet-9 on the GPU: the network (Resnet9Gpu) and the recipe's trainer (make_gpu_trainer).
// Design, memory plan and what is timed: docs/gpu_engine.md.
#include "net/resnet9_gpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <stdexcept>

#include "data/cifar10.h"
#include "engine/cuda_check.h"
#include "kernels/augment.cuh"
#include "kernels/common.cuh"
#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/head.cuh"
#include "kernels/ref/whiten.h"
#include "kernels/whiten.cuh"
#include "net/resnet9_cpu.h"
#include "net/train.h"
#include "net/train_util.h"

namespace net {

namespace {

constexpr int kImage = 32;
constexpr int kInChannels = 3;
constexpr long kPixels = (long)kImage * kImage * kInChannels;       // values per input image
constexpr int kWhitenTaps = kWhitenChannels * 3 * 3 * kInChannels;  // 27 filters of 3x3x3
constexpr int kPrepC = kernels::kWhitenChannelsPadded;  // prep conv input channels on the GPU
// Steps the lr table holds beyond the schedule (its last value, repeated): the constructor's
// warm-up and graph check run 4 steps before the counter is reset, and a test may step a
// little past a short schedule. step()/update() refuse to go further.
constexpr long kSpareSteps = 16;
constexpr size_t kMaxConvWorkspace = 512ull << 20;
// Steps timed by profile_step() at setup (median per stage); they use lr-table spare steps.
constexpr int kProfileReps = 5;

// ---------------------------------------------------------------- small kernels of the engine

// out[i] = labels[index[i]]: the batch's labels in the order crop_flip_batch gathers images.
__global__ void gather_labels_kernel(const uint8_t* __restrict__ labels,
                                     const int* __restrict__ index, int n,
                                     uint8_t* __restrict__ out) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = labels[index[i]];
}

// Prep conv weights: fp32 master [c0][27] -> fp16 [c0][32], channels 27..31 zero (they meet
// the zero channels of the padded whitening output).
__global__ void prep_weight_pad_kernel(const float* __restrict__ w, __half* __restrict__ w32,
                                       int c0) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c0 * kPrepC) return;
  const int k = i / kPrepC, c = i % kPrepC;
  w32[i] = __float2half_rn(c < kWhitenChannels ? w[k * kWhitenChannels + c] : 0.0f);
}

// Prep conv gradient: cuDNN's fp16 [c0][32] -> the layout's [c0][27] in g_half.
__global__ void prep_grad_unpad_kernel(const __half* __restrict__ g32, __half* __restrict__ g,
                                       int c0) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= c0 * kWhitenChannels) return;
  const int k = i / kWhitenChannels, c = i % kWhitenChannels;
  g[i] = g32[k * kPrepC + c];
}

// Per-step record of the loss and the number of correct predictions at the device step
// counter, so an epoch's statistics are read back once, after the run.
__global__ void record_step_kernel(const int* __restrict__ step, const float* __restrict__ loss,
                                   const int* __restrict__ correct, float* __restrict__ step_loss,
                                   int* __restrict__ step_correct, long total) {
  const long s = *step;
  if (s >= 0 && s < total) {
    step_loss[s] = *loss;
    step_correct[s] = *correct;
  }
}

__device__ __forceinline__ float hash_uniform(uint32_t seed, long i) {
  // A 32-bit integer hash (lowbias32 by C. Wellons) of the index: fill values in [-1, 1).
  uint32_t x = (uint32_t)i * 0x9E3779B1u ^ seed ^ (uint32_t)(i >> 32);
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return (float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f;
}

// Setup-only fills: finite data for autotuning and the warm-up steps.
__global__ void fill_half_kernel(__half* __restrict__ p, long n, uint32_t seed, float scale) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
       i += (long)gridDim.x * blockDim.x)
    p[i] = __float2half_rn(scale * hash_uniform(seed, i));
}
__global__ void fill_float_kernel(float* __restrict__ p, long n, uint32_t seed, float scale,
                                  float offset) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
       i += (long)gridDim.x * blockDim.x)
    p[i] = offset + scale * hash_uniform(seed, i);
}

void fill_half(__half* p, long n, uint32_t seed, float scale, cudaStream_t s) {
  if (n <= 0) return;
  fill_half_kernel<<<kernels::grid_stride_blocks(n, 256), 256, 0, s>>>(p, n, seed, scale);
  CUDA_CHECK_LAUNCH();
}
void fill_float(float* p, long n, uint32_t seed, float scale, float offset, cudaStream_t s) {
  if (n <= 0) return;
  fill_float_kernel<<<kernels::grid_stride_blocks(n, 256), 256, 0, s>>>(p, n, seed, scale, offset);
  CUDA_CHECK_LAUNCH();
}

void prep_weight_pad(const float* w, __half* w32, int c0, cudaStream_t s) {
  const int n = c0 * kPrepC;
  prep_weight_pad_kernel<<<kernels::ceil_div(n, 256), 256, 0, s>>>(w, w32, c0);
  CUDA_CHECK_LAUNCH();
}

void gather_labels(const uint8_t* labels, const int* index, int n, uint8_t* out, cudaStream_t s) {
  gather_labels_kernel<<<kernels::ceil_div(n, 256), 256, 0, s>>>(labels, index, n, out);
  CUDA_CHECK_LAUNCH();
}

bool same_shape(const cs::ConvDesc& a, const cs::ConvDesc& b) {
  return a.N == b.N && a.H == b.H && a.W == b.W && a.C == b.C && a.K == b.K && a.R == b.R;
}


// The fastest of our conv kernels for one fused launch: every igemm config and, on Hopper, every
// GPU-tested wgmma config with fused epilogues (kernels::wgmma_config_fused_epilogues; with
// `untested`, the auto-untested policy, also those not yet tested), each selected
// with select(kernel) and timed by launch() on the stream;
// a config whose tile does not suit the shape (std::invalid_argument) is skipped, and so is one
// whose result check() rejects (check runs after the timing, so on that config's output; it
// returns why, or "" when the result agrees with the unfused path). `tried` lists every
// config's time or why it was left out, for the logs.
struct OurChoice {
  bool found = false;
  Resnet9Gpu::OurConv kernel;
  std::string tried;
};
OurChoice time_our_configs(const std::function<void(const Resnet9Gpu::OurConv&)>& select,
                           const std::function<void()>& launch, const std::function<std::string()>& check,
                           cudaStream_t s, bool quick, bool untested) {
  OurChoice best;
  double best_us = -1;
  char line[160];
  auto consider = [&](bool wgmma, int config, const char* name) {
    select({wgmma, config});
    try {
      const double us = cs::setup_time_us(launch, s, 5, quick);
      const std::string why = check();
      if (!why.empty()) {
        std::snprintf(line, sizeof(line), " %s=rejected(%s)", name, why.c_str());
        best.tried += line;
        return;
      }
      std::snprintf(line, sizeof(line), " %s=%.1fus", name, us);
      if (best_us < 0 || us < best_us) {
        best_us = us;
        best.found = true;
        best.kernel = {wgmma, config};
      }
    } catch (const std::invalid_argument&) {
      std::snprintf(line, sizeof(line), " %s=n/a", name);
    }
    best.tried += line;
  };
  for (kernels::IgemmConfig c : kernels::kIgemmConfigs) consider(false, (int)c, kernels::igemm_config_info(c).name);
  if (kernels::wgmma_supported())
    for (kernels::WgmmaConfig c : kernels::kWgmmaConfigs)
      if ((untested || kernels::wgmma_config_gpu_tested(c)) && kernels::wgmma_config_fused_epilogues(c))
        consider(true, (int)c, kernels::wgmma_config_info(c).name);
  if (!best.tried.empty()) best.tried.erase(0, 1);
  return best;
}

// A unit's fusion once time_our_configs has run: what runs fused (`fused`), or why not. With
// Options::fused_auto (`fused_auto`) and a config found it also times the unit's fused pair (our
// fused conv and the BN stage that starts from its sums) against its unfused pair (the selected
// conv and the full BN stage), each as one call of both launches (cs::setup_time_us: GPU time,
// the median of 5, or one call with quick), and keeps the fusion only if the fused pair is
// faster (c.found = false otherwise): "<fused> (fused pair F us < unfused U us)", or "not
// fused: <fused> (... >= ...)".
std::string fusion_verdict(OurChoice& c, const std::string& fused, bool fused_auto,
                           const std::function<void()>& fused_pair, const std::function<void()>& unfused_pair,
                           cudaStream_t s, bool quick) {
  if (!c.found) return "not fused (no config fits and agrees)";
  if (!fused_auto) return fused;
  const double fused_us = cs::setup_time_us(fused_pair, s, 5, quick);
  const double unfused_us = cs::setup_time_us(unfused_pair, s, 5, quick);
  c.found = fused_us < unfused_us;
  char buf[96];
  std::snprintf(buf, sizeof(buf), " (fused pair %.1f us %s unfused %.1f us)", fused_us, c.found ? "<" : ">=",
                unfused_us);
  return (c.found ? fused : "not fused: " + fused) + buf;
}

// "" when out agrees with ref (cs::OutputDistance::agrees), else what differs.
std::string disagreement(const char* what, const cs::OutputDistance& d) {
  if (d.agrees()) return "";
  char buf[96];
  std::snprintf(buf, sizeof(buf), "%s differs from the unfused path: rel. L2 %.1e, largest %.1e", what, d.rel_l2,
                d.rel_max);
  return buf;
}

}  // namespace

// ================================================================ Resnet9Gpu

std::string Resnet9Gpu::OurConv::name() const {
  return wgmma ? std::string(kernels::wgmma_config_info((kernels::WgmmaConfig)config).name)
               : std::string("igemm:") + kernels::igemm_config_info((kernels::IgemmConfig)config).name;
}

Resnet9Gpu::Resnet9Gpu(cs::GpuContext& ctx, cs::Arena& arena, const Recipe& recipe,
                       int steps_per_epoch, const Options& options)
    : ctx_(ctx),
      arena_(arena),
      recipe_(recipe),
      B_(recipe.batch),
      steps_per_epoch_(steps_per_epoch),
      options_(options) {
  if (recipe.bn_group <= 0 || B_ <= 0 || B_ % recipe.bn_group != 0 || B_ % 8 != 0)
    throw std::invalid_argument("Resnet9Gpu: batch (" + std::to_string(B_) +
                                ") must be a positive multiple of bn_group (" +
                                std::to_string(recipe.bn_group) + ") and of 8");
  if (steps_per_epoch < 1 || recipe.epochs < 1 || recipe.ema_every < 1)
    throw std::invalid_argument("Resnet9Gpu: steps_per_epoch, epochs and ema_every must be >= 1");
  layout_ = make_layout(recipe.width, B_ / recipe.bn_group);
  total_steps_ = (long)steps_per_epoch * recipe.epochs;
  bn_prm_ = kernels::GhostBnCeluParams{recipe.bn_eps, recipe.bn_momentum, recipe.celu_alpha};
  bn_prm_.vectorized = options.bn_vectorized;
  prep_off_ = layout_.param("prep_conv").offset;
  head_off_ = layout_.param("head_linear").offset;

  // The optimiser's tensor table: conv weights have fp16 copies and fp16 gradients (cuDNN);
  // BN biases and the head are fp32 throughout.
  if ((int)layout_.params.size() > kernels::kMaxTensors)
    throw std::logic_error("Resnet9Gpu: more parameter tensors than kernels::kMaxTensors");
  table_.count = (int)layout_.params.size();
  for (int i = 0; i < table_.count; ++i) {
    const ParamTensor& p = layout_.params[i];
    const bool is_conv = p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, "_conv") == 0;
    table_.offset[i] = p.offset;
    table_.size[i] = p.size;
    table_.group[i] = p.is_bn_bias ? 1 : 0;
    table_.grad_half[i] = is_conv ? 1 : 0;
    // cuDNN reads the fp16 weights at these offsets: keep them 16-byte aligned.
    if (is_conv && p.offset % 8 != 0)
      throw std::invalid_argument("Resnet9Gpu: tensor " + p.name +
                                  " starts at a float offset not a multiple of 8 (width " +
                                  std::to_string(recipe.width) + "); choose a width whose " +
                                  "channel counts are multiples of 8");
  }

  allocate();
  build_convs();

  // lr table [total_steps + spare][2] on the host, once; the schedule is held after its end.
  {
    const long rows = total_steps_ + kSpareSteps;
    std::vector<float> lr((size_t)rows * 2);
    for (long s = 0; s < rows; ++s) {
      const long sched = std::min(s, total_steps_ - 1);
      lr[s * 2 + 0] = recipe_.lr_weights(sched, steps_per_epoch_);
      lr[s * 2 + 1] = recipe_.lr_bn_bias(sched, steps_per_epoch_);
    }
    CUDA_CHECK(cudaMemcpy(lr_table_, lr.data(), lr.size() * sizeof(float), cudaMemcpyHostToDevice));
  }

  const size_t free_bytes = arena_.capacity_bytes() - arena_.used_bytes();
  autotune(std::min(kMaxConvWorkspace, free_bytes));
  // Finite placeholder fp32 parameters: the fused choices' checks read the BN biases from them,
  // and the warm-up below starts from them.
  cudaStream_t s = ctx_.stream();
  fill_float(w_, layout_.num_params, 11, 0.05f, 0.0f, s);
  if (options_.fused_pool || options_.fused_stats) choose_fused_configs();
  if (options_.fused_bn_grad) choose_bn_grad_configs();

  // Warm-up with finite placeholder state (lazy library initialisation happens outside the
  // capture), then capture the two step graphs. run()/tests overwrite all of this state.
  kernels::cast_f32_to_f16(w_, w_half_, layout_.num_params, s);
  prep_weight_pad(w_ + prep_off_, prep_w_, layout_.w.c0, s);
  fill_float(rm_, layout_.num_stats, 0, 0.0f, 0.0f, s);
  fill_float(rv_, layout_.num_stats, 0, 0.0f, 1.0f, s);
  fill_float(whiten_w_, kWhitenTaps, 12, 0.3f, 0.0f, s);
  fill_half(batch_x_, (long)B_ * kPixels, 13, 1.0f, s);
  CUDA_CHECK(cudaMemsetAsync(batch_labels_, 0, B_, s));
  reset_optimizer();
  enqueue_step(false);
  enqueue_step(true);
  host_steps_ += 2;
  ctx_.sync();
  capture_graphs();
  if (graph_ok_) {
    // One replay of each graph, checked, so a broken graph fails at setup.
    step(false);
    step(true);
    ctx_.sync();
  }
  profile_step(options_.quick_autotune ? 1 : kProfileReps);
  reset_optimizer();
  ctx_.sync();
}

Resnet9Gpu::~Resnet9Gpu() {
  if (graph_step_) cudaGraphExecDestroy(graph_step_);
  if (graph_step_ema_) cudaGraphExecDestroy(graph_step_ema_);
}

void Resnet9Gpu::allocate() {
  cs::Arena& A = arena_;
  const long P = layout_.num_params, S = layout_.num_stats;
  const Widths& w = layout_.w;
  const int G = layout_.groups;
  w_ = A.alloc<float>(P, "params");
  g_ = A.alloc<float>(P, "grads_f32");
  v_ = A.alloc<float>(P, "momentum");
  ema_w_ = A.alloc<float>(P, "ema_params");
  w_half_ = A.alloc<__half>(P, "params_f16");
  g_half_ = A.alloc<__half>(P, "grads_f16");
  eval_w_half_ = A.alloc<__half>(P, "eval_params_f16");
  prep_w_ = A.alloc<__half>((size_t)w.c0 * kPrepC, "prep_conv_f16_padded");
  prep_g_ = A.alloc<__half>((size_t)w.c0 * kPrepC, "prep_conv_grad_f16_padded");
  eval_prep_w_ = A.alloc<__half>((size_t)w.c0 * kPrepC, "eval_prep_conv_f16_padded");
  rm_ = A.alloc<float>(S, "bn_running_mean");
  rv_ = A.alloc<float>(S, "bn_running_var");
  ema_rm_ = A.alloc<float>(S, "ema_running_mean");
  ema_rv_ = A.alloc<float>(S, "ema_running_var");
  whiten_w_ = A.alloc<float>(kWhitenTaps, "whiten_filters");
  lr_table_ = A.alloc<float>((size_t)(total_steps_ + kSpareSteps) * 2, "lr_table");
  step_counter_ = A.alloc<int>(1, "step_counter");
  step_loss_ = A.alloc<float>(total_steps_, "step_loss");
  step_correct_ = A.alloc<int>(total_steps_, "step_correct");
  loss_sum_ = A.alloc<float>(1, "loss_sum");
  correct_ = A.alloc<int>(1, "correct");
  batch_x_ = A.alloc<__half>((size_t)B_ * kPixels, "batch_x");
  batch_labels_ = A.alloc<uint8_t>(B_, "batch_labels");
  white_ = A.alloc<__half>((size_t)B_ * kImage * kImage * kPrepC, "whitened");
  feat_ = A.alloc<float>((size_t)B_ * w.c3, "head_features");
  logits_ = A.alloc<float>((size_t)B_ * kClasses, "logits");
  dlogits_ = A.alloc<float>((size_t)B_ * kClasses, "dlogits");

  // The units, in the order of Resnet9Cpu and of the layout's BN layers.
  struct Spec {
    const char* name;
    int H, Cout, P;
  };
  const Spec specs[kUnits] = {
      {"prep", 32, w.c0, 1},        {"layer1", 32, w.c1, 2},     {"layer1_res1", 16, w.c1, 1},
      {"layer1_res2", 16, w.c1, 1}, {"layer2", 16, w.c2, 2},     {"layer3", 8, w.c3, 2},
      {"layer3_res1", 4, w.c3, 1},  {"layer3_res2", 4, w.c3, 1},
  };
  long chan_off = 0;
  size_t scratch_bytes = 0;
  for (int i = 0; i < kUnits; ++i) {
    const Spec& sp = specs[i];
    Unit& u = units_[i];
    u.name = sp.name;
    const BNLayer& bn = layout_.bn(u.name + "_bn");
    u.conv_off = layout_.param(u.name + "_conv").offset;
    u.bias_off = layout_.params[bn.param_index].offset;
    u.stat_off = bn.stat_offset;
    u.chan_off = chan_off;
    chan_off += sp.Cout;
    u.shape = kernels::GhostBnCeluShape{B_, sp.H, sp.H, sp.Cout, sp.P, recipe_.bn_group};
    if (bn.channels != sp.Cout || bn.hw != u.shape.Ho() * u.shape.Wo())
      throw std::logic_error("Resnet9Gpu: unit " + u.name + " disagrees with net/layout.h");
    const size_t conv_n = (size_t)B_ * sp.H * sp.H * sp.Cout;
    const size_t post_n = (size_t)B_ * u.shape.Ho() * u.shape.Wo() * sp.Cout;
    u.y = A.alloc<__half>(conv_n, u.name + "_conv_out");
    u.p = sp.P > 1 ? A.alloc<__half>(post_n, u.name + "_pooled") : u.y;
    u.out = A.alloc<__half>(post_n, u.name + "_out");
    u.d_out = A.alloc<__half>(post_n, u.name + "_d_out");
    u.d_y = A.alloc<__half>(conv_n, u.name + "_d_conv_out");
    u.save_mean = A.alloc<float>((size_t)G * sp.Cout, u.name + "_save_mean");
    u.save_invstd = A.alloc<float>((size_t)G * sp.Cout, u.name + "_save_invstd");
    scratch_bytes = std::max(scratch_bytes, kernels::ghost_bn_celu_scratch_bytes(u.shape));
  }
  // Residual joins: layer1 and layer3 outputs are added to their res2 outputs (forward), and
  // their gradient gets the res2 output's gradient as a second term (backward).
  units_[3].residual_from = 1;
  units_[7].residual_from = 5;
  units_[1].skip_grad_from = 3;
  units_[5].skip_grad_from = 7;
  eval_mean_ = A.alloc<float>(chan_off, "eval_bn_mean");
  eval_var_ = A.alloc<float>(chan_off, "eval_bn_var");
  bn_scratch_bytes_ = scratch_bytes;
  bn_scratch_ = static_cast<float*>(A.alloc_bytes(scratch_bytes, "bn_scratch"));
}

void Resnet9Gpu::build_convs() {
  const Widths& w = layout_.w;
  const int cin[kUnits] = {kPrepC, w.c0, w.c1, w.c1, w.c1, w.c2, w.c3, w.c3};
  for (int i = 0; i < kUnits; ++i) {
    Unit& u = units_[i];
    const cs::ConvDesc d{B_, u.shape.H, u.shape.W, cin[i], u.shape.C, i == 0 ? 1 : 3};
    for (auto& c : convs_)
      if (same_shape(c->desc(), d)) u.conv = c.get();
    if (!u.conv) {
      convs_.push_back(std::make_unique<cs::ConvSelect>(ctx_.cudnn(), d, options_.conv_policy));
      u.conv = convs_.back().get();
    }
  }
}

void Resnet9Gpu::autotune(size_t max_workspace) {
  cudaStream_t s = ctx_.stream();
  // Finite data everywhere the candidates read (the values are overwritten afterwards). cuDNN's
  // autotune overwrites its buffers with outputs, so the selection refills them before it
  // compares and times the implicit-GEMM candidates.
  auto fill_all = [&] {
    fill_half(white_, (long)B_ * kImage * kImage * kPrepC, 1, 1.0f, s);
    fill_half(w_half_, layout_.num_params, 2, 0.05f, s);
    fill_half(prep_w_, (long)layout_.w.c0 * kPrepC, 3, 0.1f, s);
    for (int i = 0; i < kUnits; ++i) {
      const Unit& u = units_[i];
      const kernels::GhostBnCeluShape& sh = u.shape;
      fill_half(u.y, (long)sh.N * sh.H * sh.W * sh.C, 4 + i, 1.0f, s);
      fill_half(u.out, (long)sh.N * sh.Ho() * sh.Wo() * sh.C, 20 + i, 1.0f, s);
    }
  };
  fill_all();
  ctx_.sync();
  int device = 0, sm_count = 0;
  CUDA_CHECK(cudaGetDevice(&device));
  CUDA_CHECK(cudaDeviceGetAttribute(&sm_count, cudaDevAttrMultiProcessorCount, device));

  const size_t mark = arena_.mark();
  void* ws = arena_.alloc_bytes(max_workspace, "conv_workspace_autotune");
  for (auto& c : convs_) {
    // The first unit using this conv provides the buffers.
    for (int i = 0; i < kUnits; ++i) {
      Unit& u = units_[i];
      if (u.conv != c.get()) continue;
      __half* x = i == 0 ? white_ : units_[i - 1].out;
      __half* wt = i == 0 ? prep_w_ : w_half_ + u.conv_off;
      c->autotune(x, wt, u.y, ws, max_workspace, sm_count, fill_all, options_.quick_autotune);
      break;
    }
  }
  ctx_.sync();
  size_t need = 0;
  for (auto& c : convs_) need = std::max(need, c->workspace_bytes());
  arena_.release_to(mark);
  workspace_bytes_ = need;
  workspace_ = arena_.alloc_bytes(need, "conv_workspace");
}

kernels::ConvDesc Resnet9Gpu::conv_desc(int i) const {
  const Unit& u = units_[i];
  return {B_, u.shape.H, u.shape.W, i == 0 ? kPrepC : units_[i - 1].shape.C, u.shape.C, i == 0 ? 1 : 3};
}

void Resnet9Gpu::choose_fused_configs() {
  cudaStream_t s = ctx_.stream();
  const int G = layout_.groups;
  // Which units fuse what: the pooled units the max-pool epilogue, the others the statistics one.
  Fusion want[kUnits];
  int max_c = 0;
  size_t partial_bytes = 0;
  for (int i = 0; i < kUnits; ++i) {
    const Unit& u = units_[i];
    want[i] = u.shape.P == 2 ? (options_.fused_pool ? Fusion::kPool : Fusion::kNone)
                             : (options_.fused_stats ? Fusion::kStats : Fusion::kNone);
    if (want[i] == Fusion::kNone) continue;
    for (kernels::IgemmConfig c : kernels::kIgemmConfigs)
      partial_bytes = std::max(partial_bytes, kernels::igemm_stats_scratch_bytes(conv_desc(i), c));
    for (kernels::WgmmaConfig c : kernels::kWgmmaConfigs)
      partial_bytes = std::max(partial_bytes, kernels::wgmma_stats_scratch_bytes(conv_desc(i), c));
    max_c = std::max(max_c, u.shape.C);
  }
  if (max_c == 0) return;
  fused_sum_ = arena_.alloc<float>((size_t)G * max_c, "fused_bn_sum");
  fused_sumsq_ = arena_.alloc<float>((size_t)G * max_c, "fused_bn_sumsq");
  fused_partials_ = static_cast<float*>(arena_.alloc_bytes(partial_bytes, "fused_bn_partials"));
  long max_out = 0;
  for (int i = 0; i < kUnits; ++i) {
    Unit& u = units_[i];
    if (want[i] == Fusion::kNone) continue;
    const long post_n = (long)B_ * u.shape.Ho() * u.shape.Wo() * u.shape.C;
    if (want[i] == Fusion::kPool) u.argmax = arena_.alloc<uint8_t>(post_n, u.name + "_argmax");
    max_out = std::max(max_out, post_n);
  }
  // Setup-only buffers (released below): each candidate's BN + CELU output, checked against the
  // unfused path's (the selected conv, then pool_bn_celu_forward_train) on the autotune data, so
  // that a fused kernel that is wrong on this GPU is never used. The fp32 BN biases hold the
  // constructor's placeholder values (the autotune filled everything else); no residual is added.
  const size_t mark = arena_.mark();
  __half* ref_out = arena_.alloc<__half>(max_out, "fused_check_ref");
  __half* cand_out = arena_.alloc<__half>(max_out, "fused_check_cand");
  double* partial = arena_.alloc<double>(cs::kCompareScratchDoubles, "fused_check_partials");
  // Each unit times every tile config that accepts its shape (igemm, and on Hopper wgmma) and
  // keeps the fastest whose result agrees; none leaves the unit unfused. With fused_auto it then
  // times the pair the step would run fused against the unfused one and keeps the faster.
  for (int i = 0; i < kUnits; ++i) {
    Unit& u = units_[i];
    if (want[i] == Fusion::kNone) continue;
    const __half* in = i == 0 ? white_ : units_[i - 1].out;
    const __half* w = i == 0 ? prep_w_ : w_half_ + u.conv_off;
    const float* bias = w_ + u.bias_off;
    const long post_n = (long)B_ * u.shape.Ho() * u.shape.Wo() * u.shape.C;
    // The unfused path into ref_out (the selected conv, then pool + BN + CELU), and BN + CELU
    // from a fused conv's sums into cand_out.
    auto unfused = [&] {
      u.conv->forward(in, w, u.y, workspace_);
      kernels::pool_bn_celu_forward_train(u.y, u.p, bias, nullptr, ref_out, u.save_mean, u.save_invstd, nullptr,
                                          nullptr, bn_scratch_, u.shape, bn_prm_, s);
    };
    auto bn_from_sums = [&] {
      kernels::bn_celu_forward_train_from_sums(u.fusion == Fusion::kPool ? u.p : u.y, fused_sum_, fused_sumsq_, bias,
                                               nullptr, cand_out, u.save_mean, u.save_invstd, nullptr, nullptr, u.shape,
                                               bn_prm_, s);
    };
    unfused();
    u.fusion = want[i];
    OurChoice c = time_our_configs(
        [&](const OurConv& k) { u.fused_conv = k; },
        [&] { enqueue_fused_conv(i, in, w, true); },
        [&] {
          bn_from_sums();
          return disagreement("BN + CELU output", cs::compare_outputs(cand_out, ref_out, post_n, partial, s));
        },
        s, options_.quick_autotune, options_.conv_policy == cs::ConvPolicy::kAutoUntested);
    u.fused_conv = c.kernel;
    // No residual in either pair: it costs both the same.
    const std::string verdict = fusion_verdict(
        c, std::string(want[i] == Fusion::kPool ? "conv+pool " : "conv+stats ") + c.kernel.name(),
        options_.fused_auto,
        [&] {
          enqueue_fused_conv(i, in, w, true);
          bn_from_sums();
        },
        unfused, s, options_.quick_autotune);
    u.fusion = c.found ? want[i] : Fusion::kNone;
    fused_note_ += "  " + u.name + ": " + verdict + " [" + c.tried + "]\n";
  }
  ctx_.sync();
  arena_.release_to(mark);
}

void Resnet9Gpu::enqueue_fused_conv(int i, const __half* in, const __half* w, bool train) {
  Unit& u = units_[i];
  cudaStream_t s = ctx_.stream();
  const kernels::ConvDesc kd = conv_desc(i);
  const kernels::IgemmStats st{fused_sum_, fused_sumsq_, fused_partials_, recipe_.bn_group};
  if (u.fusion == Fusion::kPool) {
    uint8_t* argmax = train ? u.argmax : nullptr;
    const kernels::IgemmStats* stats = train ? &st : nullptr;
    if (u.fused_conv.wgmma)
      kernels::conv_forward_wgmma_pool(in, w, u.p, argmax, kd, (kernels::WgmmaConfig)u.fused_conv.config, stats, s);
    else
      kernels::conv_forward_igemm_pool(in, w, u.p, argmax, kd, (kernels::IgemmConfig)u.fused_conv.config, stats, s);
  } else if (u.fused_conv.wgmma) {
    kernels::conv_forward_wgmma_stats(in, w, u.y, kd, (kernels::WgmmaConfig)u.fused_conv.config, st, s);
  } else {
    kernels::conv_forward_igemm_stats(in, w, u.y, kd, (kernels::IgemmConfig)u.fused_conv.config, st, s);
  }
}

void Resnet9Gpu::enqueue_dgrad_bn_sums(int i, const __half* w) {
  const Unit& u = units_[i];
  Unit& prev = units_[i - 1];
  const __half* dout2 = prev.skip_grad_from >= 0 ? units_[prev.skip_grad_from].d_out : nullptr;
  // The values prev's BN normalised: the pooled conv output, or the conv output itself.
  const __half* bn_in = prev.shape.P > 1 ? prev.p : prev.y;
  const kernels::BnBackwardSums bn{dout2, bn_in, w_ + prev.bias_off, prev.save_mean, prev.save_invstd,
                                   bn_prm_.alpha, bn_grad_sum_dz_, bn_grad_sum_dzx_, bn_grad_partials_,
                                   recipe_.bn_group};
  if (prev.bn_grad_conv.wgmma)
    kernels::conv_backward_data_wgmma_bn_sums(u.d_y, w, prev.d_out, bn_grad_wt_, conv_desc(i),
                                              static_cast<kernels::WgmmaConfig>(prev.bn_grad_conv.config), bn,
                                              ctx_.stream());
  else
    kernels::conv_backward_data_igemm_bn_sums(u.d_y, w, prev.d_out, bn_grad_wt_, conv_desc(i),
                                              static_cast<kernels::IgemmConfig>(prev.bn_grad_conv.config), bn,
                                              ctx_.stream());
}

void Resnet9Gpu::choose_bn_grad_configs() {
  cudaStream_t s = ctx_.stream();
  const int G = layout_.groups;
  // Units 0 .. kUnits-2 get their output gradient from the next unit's dgrad (the last one's
  // comes from the head). Scratch for the largest of them.
  size_t partial_bytes = 0, wt_bytes = 0;
  int max_c = 0;
  for (int i = 1; i < kUnits; ++i) {
    const kernels::ConvDesc d = conv_desc(i);
    partial_bytes = std::max(partial_bytes, kernels::dgrad_bn_sums_scratch_bytes(d, 64));  // smallest epilogue_m
    wt_bytes = std::max(wt_bytes, kernels::igemm_dgrad_scratch_bytes(d));
    max_c = std::max(max_c, units_[i - 1].shape.C);
  }
  bn_grad_sum_dz_ = arena_.alloc<float>((size_t)G * max_c, "bn_grad_sum_dz");
  bn_grad_sum_dzx_ = arena_.alloc<float>((size_t)G * max_c, "bn_grad_sum_dzx");
  bn_grad_partials_ = static_cast<float*>(arena_.alloc_bytes(partial_bytes, "bn_grad_partials"));
  bn_grad_wt_ = static_cast<__half*>(arena_.alloc_bytes(wt_bytes, "bn_grad_wt"));
  // Setup-only buffers (released below) to check each candidate against the unfused backward:
  // the selected conv's dgrad into ref_dout and the unit's BN backward from it into ref_dy, vs
  // the candidate's d_out and the BN backward from its sums into cand_dy. On the autotune data
  // after the unit's own training forward (so its statistics and argmax are consistent), with
  // finite placeholder gradients and the constructor's placeholder BN biases.
  long max_out = 0, max_conv = 0;
  int max_ch = 0;
  for (int i = 0; i + 1 < kUnits; ++i) {
    const kernels::GhostBnCeluShape& sh = units_[i].shape;
    max_out = std::max(max_out, (long)B_ * sh.Ho() * sh.Wo() * sh.C);
    max_conv = std::max(max_conv, (long)B_ * sh.H * sh.W * sh.C);
    max_ch = std::max(max_ch, sh.C);
  }
  const size_t mark = arena_.mark();
  __half* ref_dout = arena_.alloc<__half>(max_out, "bn_grad_check_ref_dout");
  __half* ref_dy = arena_.alloc<__half>(max_conv, "bn_grad_check_ref_dy");
  __half* cand_dy = arena_.alloc<__half>(max_conv, "bn_grad_check_cand_dy");
  float* dbias = arena_.alloc<float>(max_ch, "bn_grad_check_dbias");
  double* partial = arena_.alloc<double>(cs::kCompareScratchDoubles, "bn_grad_check_partials");
  // Each unit times every config of ours that accepts the shape (igemm; wgmma on Hopper) and
  // keeps the fastest whose result agrees; none leaves the unit unfused.
  for (int i = 1; i < kUnits; ++i) {
    Unit& u = units_[i];
    Unit& prev = units_[i - 1];
    const __half* w = w_half_ + u.conv_off;
    const float* bias = w_ + prev.bias_off;
    const kernels::GhostBnCeluShape& sh = prev.shape;
    const long out_n = (long)B_ * sh.Ho() * sh.Wo() * sh.C, conv_n = (long)B_ * sh.H * sh.W * sh.C;
    __half* dout2 = prev.skip_grad_from >= 0 ? units_[prev.skip_grad_from].d_out : nullptr;
    const uint8_t* argmax = prev.fusion == Fusion::kPool ? prev.argmax : nullptr;
    // prev's training forward as the step runs it (fused or not), then finite gradients in.
    {
      const __half* in = i == 1 ? white_ : units_[i - 2].out;
      const __half* pw = i == 1 ? prep_w_ : w_half_ + prev.conv_off;
      const __half* conv_out = prev.fusion == Fusion::kPool ? prev.p : prev.y;
      if (prev.fusion != Fusion::kNone) {
        enqueue_fused_conv(i - 1, in, pw, true);
        kernels::bn_celu_forward_train_from_sums(conv_out, fused_sum_, fused_sumsq_, bias, nullptr, prev.out,
                                                 prev.save_mean, prev.save_invstd, nullptr, nullptr, sh, bn_prm_, s);
      } else {
        prev.conv->forward(in, pw, prev.y, workspace_);
        kernels::pool_bn_celu_forward_train(prev.y, prev.p, bias, nullptr, prev.out, prev.save_mean,
                                            prev.save_invstd, nullptr, nullptr, bn_scratch_, sh, bn_prm_, s);
      }
    }
    fill_half(u.d_y, (long)B_ * u.shape.H * u.shape.W * u.shape.C, 40 + i, 1.0f, s);
    if (dout2 != nullptr) fill_half(dout2, out_n, 60 + i, 1.0f, s);
    // The step's unfused backward into ref_dout and ref_dy (the selected dgrad, then the BN
    // backward with its statistics pass), and the BN backward from a fused dgrad's sums into
    // cand_dy.
    auto unfused = [&] {
      u.conv->backward_data(u.d_y, w, ref_dout, workspace_);
      if (argmax != nullptr)
        kernels::pool_bn_celu_backward_argmax(ref_dout, dout2, prev.p, argmax, bias, prev.save_mean, prev.save_invstd,
                                              ref_dy, dbias, bn_scratch_, sh, bn_prm_, s);
      else
        kernels::pool_bn_celu_backward(ref_dout, dout2, prev.y, prev.p, bias, prev.save_mean, prev.save_invstd, ref_dy,
                                       dbias, bn_scratch_, sh, bn_prm_, s);
    };
    auto bn_backward_from_sums = [&] {
      kernels::pool_bn_celu_backward_from_sums(prev.d_out, dout2, prev.y, prev.p, argmax, bn_grad_sum_dz_,
                                               bn_grad_sum_dzx_, bias, prev.save_mean, prev.save_invstd, cand_dy, dbias,
                                               sh, bn_prm_, s);
    };
    unfused();
    OurChoice c = time_our_configs(
        [&](const OurConv& k) { prev.bn_grad_conv = k; },
        [&] { enqueue_dgrad_bn_sums(i, w); },
        [&] {
          const std::string why = disagreement("d_out", cs::compare_outputs(prev.d_out, ref_dout, out_n, partial, s));
          if (!why.empty()) return why;
          bn_backward_from_sums();
          return disagreement("BN backward", cs::compare_outputs(cand_dy, ref_dy, conv_n, partial, s));
        },
        s, options_.quick_autotune, options_.conv_policy == cs::ConvPolicy::kAutoUntested);
    prev.bn_grad_conv = c.kernel;
    const std::string verdict = fusion_verdict(
        c, "dgrad+bn_sums " + c.kernel.name(), options_.fused_auto,
        [&] {
          enqueue_dgrad_bn_sums(i, w);
          bn_backward_from_sums();
        },
        unfused, s, options_.quick_autotune);
    prev.bn_grad_fused = c.found;
    bn_grad_note_ += "  " + prev.name + " (dgrad of " + u.name + "): " + verdict + " [" + c.tried + "]\n";
  }
  ctx_.sync();
  arena_.release_to(mark);
}

void Resnet9Gpu::capture_graphs() {
  cudaStream_t s = ctx_.stream();
  auto capture = [this, s](bool with_ema) {
    CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    try {
      enqueue_step(with_ema);
    } catch (...) {
      // Leave capture mode before reporting, and clear the (non-sticky) capture error.
      cudaGraph_t broken = nullptr;
      cudaStreamEndCapture(s, &broken);
      if (broken) cudaGraphDestroy(broken);
      cudaGetLastError();
      throw;
    }
    cudaGraph_t graph = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t err = cudaGraphInstantiate(&exec, graph, 0);
    cudaGraphDestroy(graph);
    CUDA_CHECK(err);
    return exec;
  };
  try {
    graph_step_ = capture(false);
    graph_step_ema_ = capture(true);
    graph_ok_ = true;
    graph_note_ = "captured";
  } catch (const std::exception& e) {
    cudaGetLastError();
    if (graph_step_) cudaGraphExecDestroy(graph_step_);
    if (graph_step_ema_) cudaGraphExecDestroy(graph_step_ema_);
    graph_step_ = graph_step_ema_ = nullptr;
    graph_ok_ = false;
    graph_note_ = std::string("graph capture failed, using direct launches: ") + e.what();
  }
}

// ---------------------------------------------------------------- the step, as launches

void Resnet9Gpu::enqueue_forward(const __half* x, bool train, bool mirror, float* logits,
                                 bool accumulate) {
  cudaStream_t s = ctx_.stream();
  const float* w32 = train ? w_ : eval_src_;
  const __half* w16 = train ? w_half_ : eval_w_half_;
  const __half* prep16 = train ? prep_w_ : eval_prep_w_;
  // prep: fixed whitening conv 3 -> 27 (padded to 32 channels), then the 1x1 conv.
  mark("step_begin");
  kernels::whiten_conv_forward(x, whiten_w_, white_, B_, mirror, s);
  mark("whiten");
  for (int i = 0; i < kUnits; ++i) {
    Unit& u = units_[i];
    const __half* in = i == 0 ? white_ : units_[i - 1].out;
    const __half* residual = u.residual_from >= 0 ? units_[u.residual_from].out : nullptr;
    const __half* w = i == 0 ? prep16 : w16 + u.conv_off;
    if (u.fusion == Fusion::kPool) {
      // conv + 2x2 max-pool in one kernel (pooled output; in training also the argmax and the
      // ghost-BN sums), then BN + CELU on the pooled tensor.
      enqueue_fused_conv(i, in, w, train);
      mark("conv_pool_fwd", u.name);
      if (train) {
        kernels::bn_celu_forward_train_from_sums(u.p, fused_sum_, fused_sumsq_, w32 + u.bias_off, residual, u.out,
                                                 u.save_mean, u.save_invstd, rm_ + u.stat_off, rv_ + u.stat_off,
                                                 u.shape, bn_prm_, s);
      } else {
        kernels::GhostBnCeluShape pooled = u.shape;  // the pooled tensor, window 1
        pooled.H = u.shape.Ho();
        pooled.W = u.shape.Wo();
        pooled.P = 1;
        kernels::pool_bn_celu_forward_eval(u.p, nullptr, w32 + u.bias_off, eval_mean_ + u.chan_off,
                                           eval_var_ + u.chan_off, residual, u.out, pooled, bn_prm_, s);
      }
      mark("bn_fwd", u.name);
      continue;
    }
    if (u.fusion == Fusion::kStats && train) {
      // conv with the ghost-BN sums in its epilogue, then BN + CELU from them (no statistics
      // pass over y). Evaluation needs no statistics: it takes the unfused path below.
      enqueue_fused_conv(i, in, w, true);
      mark("conv_stats_fwd", u.name);
      kernels::bn_celu_forward_train_from_sums(u.y, fused_sum_, fused_sumsq_, w32 + u.bias_off, residual, u.out,
                                               u.save_mean, u.save_invstd, rm_ + u.stat_off, rv_ + u.stat_off,
                                               u.shape, bn_prm_, s);
      mark("bn_fwd", u.name);
      continue;
    }
    u.conv->forward(in, i == 0 ? prep16 : w16 + u.conv_off, u.y, workspace_);
    mark("conv_fwd", u.name);
    if (train) {
      kernels::pool_bn_celu_forward_train(u.y, u.p, w32 + u.bias_off, residual, u.out, u.save_mean,
                                          u.save_invstd, rm_ + u.stat_off, rv_ + u.stat_off,
                                          bn_scratch_, u.shape, bn_prm_, s);
    } else {
      kernels::pool_bn_celu_forward_eval(u.y, u.p, w32 + u.bias_off, eval_mean_ + u.chan_off,
                                         eval_var_ + u.chan_off, residual, u.out, u.shape, bn_prm_,
                                         s);
    }
    mark("bn_fwd", u.name);
  }
  // head: maxpool 4x4, linear c3 -> 10, x 1/16.
  kernels::head_forward(units_[kUnits - 1].out, w32 + head_off_, feat_, logits, B_, layout_.w.c3,
                        recipe_.logit_scale, accumulate, s);
  mark("head_fwd");
}

void Resnet9Gpu::enqueue_loss() {
  cudaStream_t s = ctx_.stream();
  kernels::xent_smooth_forward_backward(logits_, batch_labels_, B_, kClasses,
                                        recipe_.label_smoothing, dlogits_, loss_sum_, correct_, s);
  record_step_kernel<<<1, 1, 0, s>>>(step_counter_, loss_sum_, correct_, step_loss_, step_correct_,
                                     total_steps_);
  CUDA_CHECK_LAUNCH();
  mark("loss");
}

void Resnet9Gpu::enqueue_backward() {
  cudaStream_t s = ctx_.stream();
  const int c0 = layout_.w.c0;
  kernels::head_backward(units_[kUnits - 1].out, feat_, w_ + head_off_, dlogits_,
                         units_[kUnits - 1].d_out, g_ + head_off_, B_, layout_.w.c3,
                         recipe_.logit_scale, s);
  mark("head_bwd");
  for (int i = kUnits - 1; i >= 0; --i) {
    Unit& u = units_[i];
    const __half* dout2 = u.skip_grad_from >= 0 ? units_[u.skip_grad_from].d_out : nullptr;
    if (u.bn_grad_fused)
      // The sums came with d_out from the next unit's dgrad; the argmax path where the forward
      // wrote no full-resolution y (the fused max-pool), else the window maxima of y.
      kernels::pool_bn_celu_backward_from_sums(
          u.d_out, dout2, u.y, u.p, u.fusion == Fusion::kPool ? u.argmax : nullptr, bn_grad_sum_dz_,
          bn_grad_sum_dzx_, w_ + u.bias_off, u.save_mean, u.save_invstd, u.d_y, g_ + u.bias_off, u.shape,
          bn_prm_, s);
    else if (u.fusion == Fusion::kPool)
      kernels::pool_bn_celu_backward_argmax(u.d_out, dout2, u.p, u.argmax, w_ + u.bias_off, u.save_mean,
                                            u.save_invstd, u.d_y, g_ + u.bias_off, bn_scratch_, u.shape,
                                            bn_prm_, s);
    else
      kernels::pool_bn_celu_backward(u.d_out, dout2, u.y, u.p, w_ + u.bias_off, u.save_mean,
                                     u.save_invstd, u.d_y, g_ + u.bias_off, bn_scratch_, u.shape,
                                     bn_prm_, s);
    mark("bn_bwd", u.name);
    const __half* in = i == 0 ? white_ : units_[i - 1].out;
    // The prep conv's input is the (fixed) whitened image: no gradient to propagate.
    if (i > 0 && units_[i - 1].bn_grad_fused) {
      enqueue_dgrad_bn_sums(i, w_half_ + u.conv_off);
      mark("dgrad_bn_sums", u.name);
    } else if (i > 0) {
      u.conv->backward_data(u.d_y, w_half_ + u.conv_off, units_[i - 1].d_out, workspace_);
      mark("dgrad", u.name);
    }
    u.conv->backward_filter(in, u.d_y, i == 0 ? prep_g_ : g_half_ + u.conv_off, workspace_);
    mark("wgrad", u.name);
  }
  const int n = c0 * kWhitenChannels;
  prep_grad_unpad_kernel<<<kernels::ceil_div(n, 256), 256, 0, s>>>(prep_g_, g_half_ + prep_off_,
                                                                   c0);
  CUDA_CHECK_LAUNCH();
}

void Resnet9Gpu::enqueue_update(bool with_ema) {
  cudaStream_t s = ctx_.stream();
  kernels::sgd_nesterov_multi(w_, w_half_, g_, g_half_, v_, table_, lr_table_, step_counter_,
                              recipe_.wd_weights(), recipe_.wd_bn_bias(), recipe_.momentum, s);
  prep_weight_pad(w_ + prep_off_, prep_w_, layout_.w.c0, s);
  if (with_ema) {
    // EMA of the weights and of the BN running statistics (the published code averages the
    // whole state dict), after the optimiser step.
    const float rho = recipe_.ema_rho_applied();
    kernels::ema_update(ema_w_, w_, layout_.num_params, rho, s);
    kernels::ema_update(ema_rm_, rm_, layout_.num_stats, rho, s);
    kernels::ema_update(ema_rv_, rv_, layout_.num_stats, rho, s);
  }
  kernels::advance_step(step_counter_, s);
  mark(with_ema ? "update+ema" : "update");
}

void Resnet9Gpu::mark(const char* stage, const std::string& unit) {
  if (!profiling_) return;
  const size_t i = marks_.size();
  if (i == events_.size()) events_.push_back(std::make_unique<cs::CudaEvent>());
  events_[i]->record(ctx_.stream());
  marks_.push_back(unit.empty() ? std::string(stage) : unit + "." + stage);
}

void Resnet9Gpu::profile_step(int reps) {
  std::vector<std::vector<double>> ms;  // [stage][rep]
  std::vector<std::string> names;
  profiling_ = true;
  try {
    for (int r = 0; r < reps; ++r) {
      marks_.clear();
      check_step_budget();
      enqueue_step(false);
      ctx_.sync();
      if (r == 0) {
        names.assign(marks_.begin() + 1, marks_.end());
        ms.assign(names.size(), {});
      }
      for (size_t i = 1; i < marks_.size(); ++i)
        ms[i - 1].push_back(1e3 * cs::elapsed_seconds(*events_[i - 1], *events_[i]));
    }
  } catch (...) {
    profiling_ = false;
    throw;
  }
  profiling_ = false;
  marks_.clear();
  step_profile_.clear();
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<double> v = ms[i];
    std::sort(v.begin(), v.end());
    step_profile_.push_back({names[i], v[v.size() / 2]});
  }
}

std::string Resnet9Gpu::step_profile_text() const {
  std::string s;
  double total = 0.0;
  char line[128];
  for (const StageTime& t : step_profile_) {
    std::snprintf(line, sizeof(line), "  %-22s %8.3f ms\n", t.stage.c_str(), t.ms);
    s += line;
    total += t.ms;
  }
  std::snprintf(line, sizeof(line), "  %-22s %8.3f ms\n", "sum", total);
  return s + line;
}

void Resnet9Gpu::enqueue_step(bool with_ema) {
  enqueue_forward(batch_x_, true, false, logits_, false);
  enqueue_loss();
  enqueue_backward();
  enqueue_update(with_ema);
}

void Resnet9Gpu::check_step_budget() {
  if (host_steps_ >= total_steps_ + kSpareSteps)
    throw std::logic_error("Resnet9Gpu: more steps (" + std::to_string(host_steps_ + 1) +
                           ") than the lr table holds; call reset_optimizer() per run");
  ++host_steps_;
}

void Resnet9Gpu::step(bool with_ema) {
  check_step_budget();
  if (graph_ok_)
    CUDA_CHECK(cudaGraphLaunch(with_ema ? graph_step_ema_ : graph_step_, ctx_.stream()));
  else
    enqueue_step(with_ema);
}

void Resnet9Gpu::forward_backward() {
  enqueue_forward(batch_x_, true, false, logits_, false);
  enqueue_loss();
  enqueue_backward();
}

void Resnet9Gpu::update(bool with_ema) {
  check_step_budget();
  enqueue_update(with_ema);
}

void Resnet9Gpu::poison_step_buffers() {
  cudaStream_t s = ctx_.stream();
  // 0xFF bytes: NaN as fp16 and fp32, -1 as int.
  auto poison = [s](void* p, size_t bytes) {
    if (p != nullptr && bytes > 0) CUDA_CHECK(cudaMemsetAsync(p, 0xFF, bytes, s));
  };
  const long P = layout_.num_params;
  const int G = layout_.groups;
  poison(white_, (size_t)B_ * kImage * kImage * kPrepC * sizeof(__half));
  for (const Unit& u : units_) {
    const kernels::GhostBnCeluShape& sh = u.shape;
    const size_t conv_n = (size_t)sh.N * sh.H * sh.W * sh.C;
    const size_t post_n = (size_t)sh.N * sh.Ho() * sh.Wo() * sh.C;
    poison(u.y, conv_n * sizeof(__half));
    if (u.p != u.y) poison(u.p, post_n * sizeof(__half));
    if (u.argmax != nullptr) poison(u.argmax, post_n);
    poison(u.out, post_n * sizeof(__half));
    poison(u.d_out, post_n * sizeof(__half));
    poison(u.d_y, conv_n * sizeof(__half));
    poison(u.save_mean, (size_t)G * sh.C * sizeof(float));
    poison(u.save_invstd, (size_t)G * sh.C * sizeof(float));
  }
  poison(feat_, (size_t)B_ * layout_.w.c3 * sizeof(float));
  poison(logits_, (size_t)B_ * kClasses * sizeof(float));
  poison(dlogits_, (size_t)B_ * kClasses * sizeof(float));
  poison(loss_sum_, sizeof(float));
  poison(correct_, sizeof(int));
  poison(g_, P * sizeof(float));
  poison(g_half_, P * sizeof(__half));
  poison(prep_g_, (size_t)layout_.w.c0 * kPrepC * sizeof(__half));
  poison(bn_scratch_, bn_scratch_bytes_);
  poison(workspace_, workspace_bytes_);
  ctx_.sync();
}

// ---------------------------------------------------------------- state

void Resnet9Gpu::set_params(const std::vector<float>& params) {
  if ((long)params.size() != layout_.num_params)
    throw std::invalid_argument("Resnet9Gpu::set_params: wrong size");
  cudaStream_t s = ctx_.stream();
  CUDA_CHECK(
      cudaMemcpyAsync(w_, params.data(), params.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  kernels::cast_f32_to_f16(w_, w_half_, layout_.num_params, s);
  prep_weight_pad(w_ + prep_off_, prep_w_, layout_.w.c0, s);
  ctx_.sync();
}

void Resnet9Gpu::set_running_stats(const std::vector<float>& mean, const std::vector<float>& var) {
  if ((long)mean.size() != layout_.num_stats || (long)var.size() != layout_.num_stats)
    throw std::invalid_argument("Resnet9Gpu::set_running_stats: wrong size");
  CUDA_CHECK(cudaMemcpyAsync(rm_, mean.data(), mean.size() * sizeof(float), cudaMemcpyHostToDevice,
                             ctx_.stream()));
  CUDA_CHECK(cudaMemcpyAsync(rv_, var.data(), var.size() * sizeof(float), cudaMemcpyHostToDevice,
                             ctx_.stream()));
  ctx_.sync();
}

void Resnet9Gpu::set_whitening(const std::vector<float>& w) {
  if ((int)w.size() != kWhitenTaps)
    throw std::invalid_argument("Resnet9Gpu::set_whitening: need 27*3*3*3 values");
  CUDA_CHECK(cudaMemcpyAsync(whiten_w_, w.data(), w.size() * sizeof(float), cudaMemcpyHostToDevice,
                             ctx_.stream()));
  ctx_.sync();
}

void Resnet9Gpu::reset_optimizer() {
  cudaStream_t s = ctx_.stream();
  const long P = layout_.num_params, S = layout_.num_stats;
  CUDA_CHECK(cudaMemsetAsync(v_, 0, P * sizeof(float), s));
  CUDA_CHECK(cudaMemsetAsync(step_counter_, 0, sizeof(int), s));
  CUDA_CHECK(cudaMemsetAsync(step_loss_, 0, total_steps_ * sizeof(float), s));
  CUDA_CHECK(cudaMemsetAsync(step_correct_, 0, total_steps_ * sizeof(int), s));
  // The averaged model starts as a copy of the current one.
  CUDA_CHECK(cudaMemcpyAsync(ema_w_, w_, P * sizeof(float), cudaMemcpyDeviceToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(ema_rm_, rm_, S * sizeof(float), cudaMemcpyDeviceToDevice, s));
  CUDA_CHECK(cudaMemcpyAsync(ema_rv_, rv_, S * sizeof(float), cudaMemcpyDeviceToDevice, s));
  host_steps_ = 0;
}

std::vector<float> Resnet9Gpu::get_params() const {
  std::vector<float> p(layout_.num_params);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(p.data(), w_, p.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return p;
}

std::vector<float> Resnet9Gpu::get_ema_params() const {
  std::vector<float> p(layout_.num_params);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(p.data(), ema_w_, p.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return p;
}

std::vector<float> Resnet9Gpu::get_grads() const {
  const long P = layout_.num_params;
  std::vector<float> g(P);
  std::vector<__half> gh(P);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(g.data(), g_, P * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(gh.data(), g_half_, P * sizeof(__half), cudaMemcpyDeviceToHost));
  for (int i = 0; i < table_.count; ++i) {
    if (!table_.grad_half[i]) continue;
    for (long j = table_.offset[i]; j < table_.offset[i] + table_.size[i]; ++j)
      g[j] = __half2float(gh[j]);
  }
  return g;
}

void Resnet9Gpu::get_running_stats(std::vector<float>& mean, std::vector<float>& var) const {
  mean.resize(layout_.num_stats);
  var.resize(layout_.num_stats);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(mean.data(), rm_, mean.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(var.data(), rv_, var.size() * sizeof(float), cudaMemcpyDeviceToHost));
}

void Resnet9Gpu::get_ema_running_stats(std::vector<float>& mean, std::vector<float>& var) const {
  mean.resize(layout_.num_stats);
  var.resize(layout_.num_stats);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(mean.data(), ema_rm_, mean.size() * sizeof(float), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(var.data(), ema_rv_, var.size() * sizeof(float), cudaMemcpyDeviceToHost));
}

std::vector<float> Resnet9Gpu::get_whitening() const {
  std::vector<float> w(kWhitenTaps);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(w.data(), whiten_w_, w.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return w;
}

std::vector<float> Resnet9Gpu::get_logits() const {
  std::vector<float> z((size_t)B_ * kClasses);
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(z.data(), logits_, z.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return z;
}

double Resnet9Gpu::get_loss() const {
  float l = 0;
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(&l, loss_sum_, sizeof(float), cudaMemcpyDeviceToHost));
  return l;
}

int Resnet9Gpu::get_step() const {
  int st = 0;
  ctx_.sync();
  CUDA_CHECK(cudaMemcpy(&st, step_counter_, sizeof(int), cudaMemcpyDeviceToHost));
  return st;
}

void Resnet9Gpu::upload_batch(const std::vector<float>& x, const std::vector<uint8_t>& labels) {
  if ((long)x.size() != B_ * kPixels || (int)labels.size() != B_)
    throw std::invalid_argument("Resnet9Gpu::upload_batch: need B*32*32*3 values and B labels");
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); ++i) h[i] = __float2half_rn(x[i]);
  CUDA_CHECK(cudaMemcpyAsync(batch_x_, h.data(), h.size() * sizeof(__half), cudaMemcpyHostToDevice,
                             ctx_.stream()));
  CUDA_CHECK(cudaMemcpyAsync(batch_labels_, labels.data(), labels.size(), cudaMemcpyHostToDevice,
                             ctx_.stream()));
  ctx_.sync();  // the host vectors die with this call
}

// ---------------------------------------------------------------- evaluation

void Resnet9Gpu::prepare_eval(Model m) {
  cudaStream_t s = ctx_.stream();
  const float* src_w = m == Model::kEma ? ema_w_ : w_;
  const float* src_rm = m == Model::kEma ? ema_rm_ : rm_;
  const float* src_rv = m == Model::kEma ? ema_rv_ : rv_;
  kernels::cast_f32_to_f16(src_w, eval_w_half_, layout_.num_params, s);
  prep_weight_pad(src_w + prep_off_, eval_prep_w_, layout_.w.c0, s);
  for (const Unit& u : units_) {
    kernels::bn_average_groups(src_rm + u.stat_off, eval_mean_ + u.chan_off, layout_.groups,
                               u.shape.C, s);
    kernels::bn_average_groups(src_rv + u.stat_off, eval_var_ + u.chan_off, layout_.groups,
                               u.shape.C, s);
  }
  eval_src_ = src_w;
}

void Resnet9Gpu::eval_forward(const __half* x, bool mirror, float* logits, bool accumulate) {
  if (!eval_src_) throw std::logic_error("Resnet9Gpu::eval_forward: call prepare_eval() first");
  enqueue_forward(x, false, mirror, logits, accumulate);
}

std::vector<float> Resnet9Gpu::eval_logits_host(const std::vector<float>& x, Model m, bool tta) {
  // Uses the batch buffers as the image and logits buffers: the last training batch and
  // logits are overwritten.
  upload_batch(x, std::vector<uint8_t>(B_, 0));
  prepare_eval(m);
  eval_forward(batch_x_, false, logits_, false);
  if (tta) eval_forward(batch_x_, true, logits_, true);
  std::vector<float> z = get_logits();
  if (tta)
    for (float& v : z) v *= 0.5f;  // sum of the two passes -> mean
  return z;
}

std::string Resnet9Gpu::conv_algorithms() const {
  std::string s;
  for (const Unit& u : units_) s += "  " + u.name + ": " + u.conv->chosen() + "\n";
  return s;
}

std::string Resnet9Gpu::conv_candidates() const {
  std::string s;
  char line[256];
  for (const auto& c : convs_) {
    const cs::ConvDesc& d = c->desc();
    std::snprintf(line, sizeof(line), "  %d->%d %dx%d @%d (policy %s)\n", d.C, d.K, d.R, d.R, d.H,
                  cs::conv_policy_name(c->policy()));
    s += line;
    for (const cs::ConvCandidate& k : c->candidates()) {
      std::string config = k.config + (k.stream_k     ? std::string("/stream-K")
                                       : k.splits > 0 ? "/splits=" + std::to_string(k.splits)
                                                      : "");
      std::snprintf(line, sizeof(line), "    %-10s %-5s %-30s %9.1f us  diff %.1e  %s\n", cs::conv_pass_name(k.pass),
                    k.kernel.c_str(), config.c_str(), k.us, k.rel_diff, k.status.c_str());
      s += line;
    }
  }
  return s;
}

// ================================================================ the trainer

namespace {

// Page-locked host memory (for the transfers inside the timed region), freed by unique_ptr.
struct PinnedFree {
  void operator()(float* p) const { cudaFreeHost(p); }
};
using PinnedFloats = std::unique_ptr<float[], PinnedFree>;
PinnedFloats alloc_pinned(size_t n) {
  void* p = nullptr;
  CUDA_CHECK(cudaMallocHost(&p, n * sizeof(float)));
  return PinnedFloats(static_cast<float*>(p));
}

// Device memory for a whole run at batch 512: 4 GiB holds it with room to spare (the arena
// report at setup gives the real peak; docs/gpu_engine.md has the plan).
constexpr size_t kArenaBytes = 4ull << 30;

class GpuTrainer : public Trainer {
 public:
  GpuTrainer(const data::Cifar10& data, const TrainConfig& cfg);
  RunResult run(uint64_t seed, const ProgressFn& progress) override;
  SetupTimes setup_times() const override { return setup_; }
  std::string device_name() const override { return device_; }
  std::vector<std::pair<std::string, std::string>> engine_info() const override;
  bool can_export_ema() const override { return true; }
  // The averaged model of the last finished run, copied back from the device (speedrun --save).
  ModelState export_ema() const override {
    if (!have_ema_) throw std::logic_error("GPU trainer: no finished run to export");
    ModelState m{cfg_.recipe, net_->get_ema_params(), {}, {}, net_->get_whitening()};
    net_->get_ema_running_stats(m.running_mean, m.running_var);
    return m;
  }

 private:
  // Whitening filters from the first whiten_n_ training images: covariance on the GPU, the
  // 27x27 eigenproblem on the host, filters uploaded (a host round trip, inside the timing).
  void compute_whitening();
  // Test logits of the EMA model: plain pass into logits_tta_ then copied, mirrored pass
  // accumulated; both copied to the host (pinned). Stream-ordered, no sync.
  void enqueue_evaluation();
  // Accuracies from the host logits (after a sync).
  void accuracies(double* acc, double* acc_tta) const;

  const data::Cifar10& data_;
  TrainConfig cfg_;
  cs::ConvPolicy conv_policy_ = cs::ConvPolicy::kAuto;  // parsed from cfg_.conv_kernels
  SetupTimes setup_;
  std::string device_;
  int n_train_ = 0, n_test_ = 0, n_test_padded_ = 0, whiten_n_ = 0, spe_ = 0, padded_size_ = 0;

  std::unique_ptr<cs::GpuContext> ctx_;
  std::unique_ptr<cs::Arena> arena_;
  std::unique_ptr<Resnet9Gpu> net_;
  std::unique_ptr<Resnet9Cpu> host_model_;  // the seeded PyTorch-default init, shared with CPU
  bool have_ema_ = false;  // a run finished without diverging: export_ema() has a model

  __half *train_x_ = nullptr, *whiten_x_ = nullptr, *test_x_ = nullptr;
  uint8_t* train_labels_ = nullptr;
  int* perm_ = nullptr;
  kernels::CropFlipParams* crops_ = nullptr;
  void* epoch_temp_ = nullptr;
  size_t epoch_temp_bytes_ = 0;
  float *cov_ = nullptr, *logits_plain_ = nullptr, *logits_tta_ = nullptr;
  void* cov_scratch_ = nullptr;  // patch_covariance's per-block partial sums
  PinnedFloats cov_host_, whiten_host_, logits_host_;  // [27*27], [27*27], [2][n_test_padded][10]
};

GpuTrainer::GpuTrainer(const data::Cifar10& data, const TrainConfig& cfg) : data_(data), cfg_(cfg) {
  if (!cs::parse_conv_policy(cfg_.conv_kernels, &conv_policy_))
    throw std::invalid_argument("conv kernels: expected auto, cudnn, igemm or auto-untested, got '" +
                                cfg_.conv_kernels + "'");
  const Recipe& r = cfg_.recipe;
  n_train_ = data.train.size();
  n_test_ = data.test.size();
  spe_ = r.steps_per_epoch(n_train_);
  if (spe_ < 1)
    throw std::invalid_argument("GPU trainer: " + std::to_string(n_train_) +
                                " training images make no full batch of " +
                                std::to_string(r.batch));
  if (n_test_ < 1) throw std::invalid_argument("GPU trainer: no test images");
  if (r.pad < 0 || r.pad >= kImage) throw std::invalid_argument("GPU trainer: pad in [0, 32)");
  whiten_n_ = std::min(r.whiten_images, n_train_);
  if (whiten_n_ < 1) throw std::invalid_argument("GPU trainer: whiten_images must be >= 1");
  padded_size_ = kImage + 2 * r.pad;
  // Test images padded with zero images to whole batches (the network's batch is fixed);
  // only the first n_test_ logits are counted.
  n_test_padded_ = (n_test_ + r.batch - 1) / r.batch * r.batch;

  const auto t_init = Clock::now();
  ctx_ = std::make_unique<cs::GpuContext>(0);
  {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    device_ = prop.name;
  }
  arena_ = std::make_unique<cs::Arena>(kArenaBytes);
  cs::Arena& A = *arena_;
  cudaStream_t s = ctx_->stream();
  train_x_ =
      A.alloc<__half>((size_t)n_train_ * padded_size_ * padded_size_ * kInChannels, "train_padded");
  train_labels_ = A.alloc<uint8_t>(n_train_, "train_labels");
  whiten_x_ = A.alloc<__half>((size_t)whiten_n_ * kPixels, "whiten_images");
  test_x_ = A.alloc<__half>((size_t)n_test_padded_ * kPixels, "test_images");
  perm_ = A.alloc<int>(n_train_, "epoch_permutation");
  crops_ = A.alloc<kernels::CropFlipParams>(n_train_, "epoch_crops");
  kernels::make_epoch_params(0, 0, n_train_, r.pad, perm_, crops_, nullptr, &epoch_temp_bytes_, s);
  epoch_temp_ = A.alloc_bytes(epoch_temp_bytes_, "epoch_params_temp");
  cov_ = A.alloc<float>(kWhitenChannels * kWhitenChannels, "whiten_covariance");
  cov_scratch_ = A.alloc_bytes(kernels::patch_covariance_scratch_bytes(whiten_n_),
                               "whiten_covariance_scratch");
  logits_plain_ = A.alloc<float>((size_t)n_test_padded_ * kClasses, "test_logits_plain");
  logits_tta_ = A.alloc<float>((size_t)n_test_padded_ * kClasses, "test_logits_tta");
  cov_host_ = alloc_pinned(kWhitenChannels * kWhitenChannels);
  whiten_host_ = alloc_pinned(kWhitenTaps);
  logits_host_ = alloc_pinned(2 * (size_t)n_test_padded_ * kClasses);
  setup_.init_seconds += seconds_since(t_init);

  // Upload (untimed): uint8 planes through a staging area at the arena's tail, prepared into
  // fp16 NHWC (train reflect-padded, whitening images and test unpadded), then released.
  const auto t_upload = Clock::now();
  {
    const size_t mark = A.mark();
    uint8_t* train_u8 = A.alloc<uint8_t>((size_t)n_train_ * data::kImageBytes, "staging_train_u8");
    uint8_t* test_u8 = A.alloc<uint8_t>((size_t)n_test_ * data::kImageBytes, "staging_test_u8");
    CUDA_CHECK(cudaMemcpyAsync(train_u8, data.train.images.data(), data.train.images.size(),
                               cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(test_u8, data.test.images.data(), data.test.images.size(),
                               cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaMemcpyAsync(train_labels_, data.train.labels.data(), n_train_,
                               cudaMemcpyHostToDevice, s));
    kernels::Normalization norm{};
    for (int c = 0; c < 3; ++c) {
      norm.mean[c] = r.mean[c];
      norm.std_[c] = r.std_[c];
    }
    kernels::prepare_dataset(train_u8, n_train_, r.pad, norm, train_x_, s);
    kernels::prepare_dataset(train_u8, whiten_n_, 0, norm, whiten_x_, s);
    CUDA_CHECK(cudaMemsetAsync(test_x_, 0, (size_t)n_test_padded_ * kPixels * sizeof(__half), s));
    kernels::prepare_dataset(test_u8, n_test_, 0, norm, test_x_, s);
    ctx_->sync();
    A.release_to(mark);
  }
  setup_.upload_seconds = seconds_since(t_upload);

  const auto t_net = Clock::now();
  Resnet9Gpu::Options options;
  options.conv_policy = conv_policy_;
  options.fused_pool = cfg_.fused_pool;
  options.fused_stats = cfg_.fused_stats;
  options.fused_bn_grad = cfg_.fused_bn_grad;
  options.fused_auto = cfg_.fused_auto;
  options.bn_vectorized = cfg_.bn_vectorized;
  options.quick_autotune = cfg_.quick_autotune;
  net_ = std::make_unique<Resnet9Gpu>(*ctx_, A, r, spe_, options);
  host_model_ = std::make_unique<Resnet9Cpu>(r);
  setup_.init_seconds += seconds_since(t_net);

  std::fprintf(stderr, "gpu: %s; %s\ngpu: arena peak %s of %s; step graph: %s\ngpu: convs (%s)\n%s",
               device_.c_str(), cs::GpuContext::library_versions().c_str(),
               cs::format_bytes(A.peak_bytes()).c_str(),
               cs::format_bytes(A.capacity_bytes()).c_str(), net_->graph_note().c_str(),
               cs::conv_policy_name(conv_policy_), net_->conv_algorithms().c_str());
  std::fprintf(stderr, "gpu: conv candidates (pass, kernel, config, median time, rel. diff to cuDNN, status)\n%s",
               net_->conv_candidates().c_str());
  if (cfg_.fused_pool || cfg_.fused_stats)
    std::fprintf(stderr, "gpu: fused conv forwards\n%s", net_->fused_choice().c_str());
  if (cfg_.fused_bn_grad)
    std::fprintf(stderr, "gpu: dgrads with the BN-backward sums\n%s", net_->fused_bn_grad_choice().c_str());
  std::fprintf(stderr, "gpu: one training step by stage (direct launches, median of %d)\n%s", kProfileReps,
               net_->step_profile_text().c_str());
}

std::vector<std::pair<std::string, std::string>> GpuTrainer::engine_info() const {
  return {
      {"cuda_graph", net_->uses_graph() ? "yes" : "no"},
      {"cuda_graph_note", net_->graph_note()},
      {"arena_peak_bytes", std::to_string(arena_->peak_bytes())},
      {"arena_capacity_bytes", std::to_string(arena_->capacity_bytes())},
      {"conv_workspace_bytes", std::to_string(net_->workspace_bytes())},
      {"libraries", cs::GpuContext::library_versions()},
      {"conv_policy", cs::conv_policy_name(conv_policy_)},
      {"bn_kernels", cfg_.bn_vectorized ? "vector" : "pair"},
      {"autotune", cfg_.quick_autotune ? "quick (heuristic cuDNN algorithms, one-call timings)" : "timed"},
      {"fused_conv_forward", cfg_.fused_pool || cfg_.fused_stats ? net_->fused_choice() : std::string("off")},
      {"fused_bn_grad", cfg_.fused_bn_grad ? net_->fused_bn_grad_choice() : std::string("off")},
      {"conv_algorithms", net_->conv_algorithms()},
      {"conv_candidates", net_->conv_candidates()},
      {"step_profile", net_->step_profile_text()},
  };
}

void GpuTrainer::compute_whitening() {
  cudaStream_t s = ctx_->stream();
  const int D = kWhitenChannels;
  kernels::patch_covariance(whiten_x_, whiten_n_, cov_, cov_scratch_, s);
  CUDA_CHECK(
      cudaMemcpyAsync(cov_host_.get(), cov_, D * D * sizeof(float), cudaMemcpyDeviceToHost, s));
  ctx_->sync();
  std::vector<double> cov(D * D), lambda(D), V(D * D);
  for (int i = 0; i < D * D; ++i) cov[i] = cov_host_[i];
  ref::symmetric_eigen(cov.data(), D, lambda.data(), V.data());
  // Filter i in KRSC, as ref::whitening_filters: w[i][ky][kx][c] = V_i[(c, ky, kx)] /
  // sqrt(lambda_i + eps).
  for (int i = 0; i < D; ++i) {
    const double scale = 1.0 / std::sqrt(lambda[i] + (double)cfg_.recipe.whiten_eps);
    for (int ky = 0; ky < 3; ++ky)
      for (int kx = 0; kx < 3; ++kx)
        for (int c = 0; c < kInChannels; ++c)
          whiten_host_[((i * 3 + ky) * 3 + kx) * kInChannels + c] =
              (float)(V[(size_t)i * D + c * 9 + ky * 3 + kx] * scale);
  }
  CUDA_CHECK(cudaMemcpyAsync(net_->whitening_device(), whiten_host_.get(),
                             kWhitenTaps * sizeof(float), cudaMemcpyHostToDevice, s));
}

void GpuTrainer::enqueue_evaluation() {
  cudaStream_t s = ctx_->stream();
  const int B = net_->batch();
  const int batches = n_test_padded_ / B;
  net_->prepare_eval(Resnet9Gpu::Model::kEma);
  for (int b = 0; b < batches; ++b)
    net_->eval_forward(test_x_ + (size_t)b * B * kPixels, false,
                       logits_plain_ + (size_t)b * B * kClasses, false);
  const size_t bytes = (size_t)n_test_padded_ * kClasses * sizeof(float);
  CUDA_CHECK(cudaMemcpyAsync(logits_tta_, logits_plain_, bytes, cudaMemcpyDeviceToDevice, s));
  for (int b = 0; b < batches; ++b)
    net_->eval_forward(test_x_ + (size_t)b * B * kPixels, true,
                       logits_tta_ + (size_t)b * B * kClasses, true);
  CUDA_CHECK(cudaMemcpyAsync(logits_host_.get(), logits_plain_, bytes, cudaMemcpyDeviceToHost, s));
  CUDA_CHECK(cudaMemcpyAsync(logits_host_.get() + (size_t)n_test_padded_ * kClasses, logits_tta_,
                             bytes, cudaMemcpyDeviceToHost, s));
}

void GpuTrainer::accuracies(double* acc, double* acc_tta) const {
  const float* plain = logits_host_.get();
  const float* tta = logits_host_.get() + (size_t)n_test_padded_ * kClasses;
  long correct = 0, correct_tta = 0;
  for (int i = 0; i < n_test_; ++i) {
    const int label = data_.test.labels[i];
    correct += argmax10(plain + (size_t)i * kClasses) == label;
    correct_tta += argmax10(tta + (size_t)i * kClasses) == label;  // sum: same argmax as mean
  }
  *acc = (double)correct / n_test_;
  *acc_tta = (double)correct_tta / n_test_;
}

RunResult GpuTrainer::run(uint64_t seed, const ProgressFn& progress) {
  const Recipe& r = cfg_.recipe;
  cudaStream_t s = ctx_->stream();
  const int B = r.batch;
  RunResult res;
  res.seed = seed;

  // Untimed: the seeded PyTorch-default init (the CPU reference's), fresh optimiser state.
  host_model_->init(seed);
  net_->set_params(host_model_->params);
  net_->set_running_stats(host_model_->running_mean, host_model_->running_var);
  net_->reset_optimizer();
  ctx_->sync();

  const int E = r.epochs;
  cs::CudaEvent ev_start, ev_eval_end;
  std::vector<std::unique_ptr<cs::CudaEvent>> ev_epoch_start, ev_epoch_end;
  for (int e = 0; e < E; ++e) {
    ev_epoch_start.push_back(std::make_unique<cs::CudaEvent>());
    ev_epoch_end.push_back(std::make_unique<cs::CudaEvent>());
  }
  std::vector<double> epoch_acc_tta(E, -1.0);

  // ---- timed region (recipes.md, "What is timed"): whitening statistics + training
  ev_start.record(s);
  compute_whitening();
  long step = 0;
  for (int e = 0; e < E; ++e) {
    ev_epoch_start[e]->record(s);
    kernels::make_epoch_params(seed, (uint64_t)e, n_train_, r.pad, perm_, crops_, epoch_temp_,
                               &epoch_temp_bytes_, s);
    for (int b = 0; b < spe_; ++b, ++step) {
      const int* index = perm_ + (size_t)b * B;
      kernels::crop_flip_batch(train_x_, padded_size_, padded_size_, index, crops_, B,
                               net_->batch_x(), s);
      gather_labels(train_labels_, index, B, net_->batch_labels(), s);
      // Published code: the EMA is updated after the optimiser step at steps 0, 5, 10, ...
      net_->step(step % r.ema_every == 0);
    }
    ev_epoch_end[e]->record(s);
    if (cfg_.eval_every_epoch && e + 1 < E) {
      // Logging only, outside the timed region: the training time sums the epochs' own
      // intervals, which this evaluation is not part of.
      double acc = 0;
      enqueue_evaluation();
      ctx_->sync();
      accuracies(&acc, &epoch_acc_tta[e]);
    }
  }
  // ---- timed: final evaluation of the EMA model, TTA included
  enqueue_evaluation();
  ev_eval_end.record(s);
  ctx_->sync();
  const auto t_host = Clock::now();
  accuracies(&res.test_acc, &res.test_acc_tta);
  const double host_argmax_seconds = seconds_since(t_host);
  epoch_acc_tta[E - 1] = res.test_acc_tta;

  res.train_seconds = cs::elapsed_seconds(ev_start, *ev_epoch_start[0]);  // whitening
  for (int e = 0; e < E; ++e)
    res.train_seconds += cs::elapsed_seconds(*ev_epoch_start[e], *ev_epoch_end[e]);
  res.eval_seconds = cs::elapsed_seconds(*ev_epoch_end[E - 1], ev_eval_end) + host_argmax_seconds;
  res.timed_total_seconds = res.train_seconds + res.eval_seconds;

  // Per-epoch statistics from the per-step records (untimed).
  const long total = net_->total_steps();
  std::vector<float> step_loss(total);
  std::vector<int> step_correct(total);
  CUDA_CHECK(cudaMemcpy(step_loss.data(), net_->step_loss_device(), total * sizeof(float),
                        cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(step_correct.data(), net_->step_correct_device(), total * sizeof(int),
                        cudaMemcpyDeviceToHost));
  for (long i = 0; i < total; ++i) {
    if (!std::isfinite(step_loss[i])) {
      res.diverged = true;
      res.diverged_step = i;
      break;
    }
  }
  for (int e = 0; e < E; ++e) {
    EpochLog log;
    log.epoch = e + 1;
    double loss = 0;
    long correct = 0;
    for (long i = (long)e * spe_; i < (long)(e + 1) * spe_; ++i) {
      loss += step_loss[i];
      correct += step_correct[i];
    }
    const double seen = (double)spe_ * B;
    log.train_loss = loss / seen;
    log.train_acc = (double)correct / seen;
    log.lr = r.lr_weights((long)(e + 1) * spe_ - 1, spe_);
    log.seconds = cs::elapsed_seconds(*ev_epoch_start[e], *ev_epoch_end[e]);
    if (cfg_.eval_every_epoch) log.test_acc_tta = epoch_acc_tta[e];
    res.epochs.push_back(log);
    // Reported after the run: calling back inside it would need a host sync per epoch.
    if (progress) progress(log);
  }
  have_ema_ = !res.diverged;  // the device holds this run's averaged model now
  return res;
}

}  // namespace

std::unique_ptr<Trainer> make_gpu_trainer(const data::Cifar10& data, const TrainConfig& cfg) {
  return std::make_unique<GpuTrainer>(data, cfg);
}

}  // namespace net
