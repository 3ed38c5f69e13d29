// The training driver's interface, shared by the CPU reference engine (net/resnet9_cpu.*) and
// the GPU engine (net/resnet9_gpu.*), so bench/speedrun.cpp treats both alike.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "data/cifar10.h"
#include "net/recipe.h"

namespace net {

struct TrainConfig {
  Recipe recipe;
  bool eval_every_epoch = false;  // untimed per-epoch test accuracy (TTA), for curves
  // GPU engine: which convolution implementations the per-layer selection may use,
  // "auto" | "cudnn" | "igemm" | "auto-untested" (engine/conv_select.h). Ignored by the CPU engine. "auto" by
  // default: measured faster than "cudnn" in training on an H200 (docs/conv_kernels.md,
  // docs/results/2026-11-27-h200-session7).
  std::string conv_kernels = "auto";
  // GPU engine: the fused conv + max-pool forward for the pooled layers (Resnet9Gpu::Options).
  bool fused_pool = false;
  // GPU engine: the conv's ghost-BN-sums epilogue for the unpooled units (Resnet9Gpu::Options).
  bool fused_stats = false;
  // GPU engine: the BN-backward sums in the epilogue of the dgrad that produces each unit's
  // output gradient (Resnet9Gpu::Options::fused_bn_grad).
  bool fused_bn_grad = false;
  // GPU engine: keep each fusion above only on the units where it timed faster at setup
  // (Resnet9Gpu::Options::fused_auto).
  bool fused_auto = false;
  // GPU engine: the ghost-BN + CELU kernels with 8 channels per thread (true) or the older
  // 2-channel ones (kernels/bn.cuh, GhostBnCeluParams::vectorized).
  bool bn_vectorized = true;
  // GPU engine: setup without timing (Resnet9GpuOptions::quick_autotune); tests only.
  bool quick_autotune = false;
};

struct EpochLog {
  int epoch = 0;             // 1-based
  double train_loss = 0;     // mean per image over the epoch
  double train_acc = 0;      // fraction of training images classified right (augmented)
  double test_acc_tta = -1;  // -1 when not evaluated this epoch
  double lr = 0;             // weight lr at the end of the epoch (already divided by batch)
  double seconds = 0;        // wall/GPU time of the epoch's training steps
};

struct RunResult {
  uint64_t seed = 0;
  std::vector<EpochLog> epochs;
  double test_acc = -1;      // EMA model, no TTA
  double test_acc_tta = -1;  // EMA model, mirror TTA (the reported number)
  // Time split (seconds). train: timed region per recipes.md (whitening stats + training);
  // eval: the final evaluation (TTA included); timed_total = train + eval.
  double train_seconds = 0, eval_seconds = 0, timed_total_seconds = 0;
  bool diverged = false;
  long diverged_step = -1;
  bool warmup = false;  // a warm-up run, reported but excluded from the summary
};

// One-time costs, reported separately from the timed region.
struct SetupTimes {
  double data_read_seconds = 0;  // reading the files (filled by the caller)
  double upload_seconds = 0;     // host -> device copy and dataset preparation
  double init_seconds = 0;       // allocations, handles, autotuning, graph capture
};

// A model as evaluated: the EMA weights and running statistics of a run, and the fixed
// whitening filters. What a checkpoint holds (net/checkpoint.h).
struct ModelState {
  Recipe recipe;                                 // of the run: width, BN eps, normalisation, ...
  std::vector<float> params;                     // [num_params], net/layout.h offsets
  std::vector<float> running_mean, running_var;  // [num_stats]: [G][C] per BN layer,
                                                 // G = recipe.batch / recipe.bn_group
  std::vector<float> whiten;                     // [27][3][3][3] (KRSC)
};

using ProgressFn = std::function<void(const EpochLog&)>;

// A trainer is built once (setup), then run for several seeds.
class Trainer {
 public:
  virtual ~Trainer() = default;
  virtual RunResult run(uint64_t seed, const ProgressFn& progress) = 0;
  virtual SetupTimes setup_times() const = 0;
  virtual std::string device_name() const = 0;
  // Engine facts for logs and the JSON record, as name/value pairs (the GPU engine: whether
  // the step runs as a CUDA graph, arena peak bytes, library versions, conv algorithms).
  virtual std::vector<std::pair<std::string, std::string>> engine_info() const { return {}; }
  // The EMA model of the last run() (speedrun --save). An engine that cannot export keeps these
  // defaults; callers ask can_export_ema() before training so that --save fails early.
  virtual bool can_export_ema() const { return false; }
  virtual ModelState export_ema() const {
    throw std::logic_error("this engine cannot export its EMA model");
  }
};

// CPU reference engine (always available). Keeps a reference to `data`.
std::unique_ptr<Trainer> make_cpu_trainer(const data::Cifar10& data, const TrainConfig& cfg);
// GPU engine; only defined when built with CUDA (CS_HAVE_CUDA). Keeps a reference to `data`.
std::unique_ptr<Trainer> make_gpu_trainer(const data::Cifar10& data, const TrainConfig& cfg);

}  // namespace net
