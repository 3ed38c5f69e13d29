// ResNet-9 of the resnet9 recipe on the GPU (see net/resnet9_cpu.h for the network, the
// fp32 CPU reference it is tested against, and docs/gpu_engine.md for the design).
//
// Precision: activations and their gradients fp16 NHWC; convolutions (per layer and pass the
// faster of cuDNN and our implicit-GEMM kernels, engine/conv_select.h) with fp32
// accumulation and an fp16 copy of the conv weights; BN statistics, BN biases, the head, the
// loss and the optimiser in fp32, on fp32 master weights (kernels/optim.cuh).
//
// Determinism: every reduction in a step runs in a fixed order (no float atomics; cuDNN limited
// to deterministic algorithms), so a step is bitwise reproducible: the graph replay equals the
// direct launches. This matters because the fp16 step is chaotic at the fp16 rounding level
// (near-tied max-pool choices): see tests/resnet9_gpu_test.cu.
//
// Memory: every buffer is carved from the caller's arena at construction (batch fixed), so a
// step never allocates. The training step (forward, loss, backward, SGD, [EMA], step counter)
// is captured once as a CUDA graph and replayed; the learning rate comes from a device table
// indexed by a device step counter, so the replay needs no host input. The batch input
// buffers have fixed addresses: whoever fills them (the trainer's crop/flip) does it on the
// same stream before step().
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/arena.h"
#include "engine/conv_select.h"
#include "engine/gpu_context.h"
#include "kernels/bn.cuh"
#include "kernels/optim.cuh"
#include "net/layout.h"
#include "net/recipe.h"

namespace net {

// Engine choices that do not change the recipe's math beyond rounding.
struct Resnet9GpuOptions {
  // Which convolution implementations the per-layer selection may use (engine/conv_select.h).
  // kAuto (the fastest of cuDNN and ours that agree with cuDNN) by default: measured faster
  // than kCudnn in training (docs/conv_kernels.md).
  cs::ConvPolicy conv_policy = cs::ConvPolicy::kAuto;
  // The pooled units (layer1, layer2, layer3) run the fused conv + 2x2 max-pool forward
  // (kernels/conv/implicit_gemm.cuh: pooled output, argmax, ghost-BN sums in the conv's
  // epilogue), BN from those sums and the backward through the argmax, instead of conv ->
  // pool_bn_celu. Saves a write and a read of each pooled unit's full-resolution conv output.
  // Off by default: with the three fusions on, training measured slower than without on an
  // H200, our conv kernels being slower than cuDNN's (docs/gpu_engine.md).
  bool fused_pool = false;
  // The other units (prep, the residual convs) compute the ghost-BN sums in the conv's epilogue
  // (conv_forward_igemm_stats) and BN from those sums, instead of a statistics pass over the
  // conv output. Off by default, as fused_pool.
  bool fused_stats = false;
  // The input gradient that produces a unit's output gradient (the dgrad of the next unit's
  // conv) accumulates that unit's BN-backward sums in its epilogue
  // (kernels/conv/igemm_backward.cuh, conv_backward_data_*_bn_sums), and the unit's BN backward
  // starts from them (pool_bn_celu_backward_from_sums) instead of a statistics pass over its
  // output gradient. Those dgrads then run our kernels (igemm, or wgmma on Hopper), the fastest
  // config per unit at setup, whatever the conv selection chose. Off by default, as fused_pool.
  bool fused_bn_grad = false;
  // With the fusions above: keep each on a unit only where it pays there. At setup the unit
  // times the fused pair (its chosen fused conv and the BN stage that starts from the conv's
  // sums) against the unfused pair (the selected conv and the full BN stage) and runs the
  // faster; fused_choice() and fused_bn_grad_choice() give both times. Off: every fusion asked
  // for runs wherever a config fits and agrees. A fusion pays only where our fused conv is at
  // most the BN pass it saves slower than the selected conv.
  bool fused_auto = false;
  // The ghost-BN + CELU kernels' variant (kernels::GhostBnCeluParams::vectorized).
  bool bn_vectorized = true;
  // Setup without the timing: cuDNN keeps its heuristic algorithms and every candidate (our
  // conv kernels, the fused configs) is still run and checked but timed by one call
  // (cs::ConvSelect::autotune's quick mode). For runs where timings mean nothing and cost much:
  // the GPU tests under compute-sanitizer (CS_TEST_QUICK_AUTOTUNE=1, tools/gpu_check.sh).
  bool quick_autotune = false;
};

class Resnet9Gpu {
 public:
  // Batch = recipe.batch (a positive multiple of recipe.bn_group, and of 8 for fp16 tensor
  // cores); the lr table covers steps_per_epoch * recipe.epochs steps. Allocates from `arena`,
  // autotunes the convolutions, runs two warm-up steps and captures the step graphs; the
  // parameters are then meaningless until set_params().
  using Options = Resnet9GpuOptions;
  Resnet9Gpu(cs::GpuContext& ctx, cs::Arena& arena, const Recipe& recipe, int steps_per_epoch,
             const Options& options = Options());
  ~Resnet9Gpu();
  Resnet9Gpu(const Resnet9Gpu&) = delete;
  Resnet9Gpu& operator=(const Resnet9Gpu&) = delete;

  const Layout& layout() const { return layout_; }
  const Recipe& recipe() const { return recipe_; }
  int batch() const { return B_; }
  long total_steps() const { return total_steps_; }

  // ---- state (host <-> device; these synchronise the stream)
  // Weights [num_params] (fp32 master, fp16 conv copies and the padded prep copy follow).
  void set_params(const std::vector<float>& params);
  // BN running statistics [num_stats] each.
  void set_running_stats(const std::vector<float>& mean, const std::vector<float>& var);
  // Whitening filters [27][3][3][3] (KRSC), fp32.
  void set_whitening(const std::vector<float>& w);
  // Momentum 0, step counter 0, per-step loss/correct records 0, EMA = current weights and
  // running statistics. Asynchronous (stream-ordered).
  void reset_optimizer();
  std::vector<float> get_params() const;
  std::vector<float> get_grads() const;  // of the last backward, fp32 in the layout's offsets
  std::vector<float> get_ema_params() const;
  void get_running_stats(std::vector<float>& mean, std::vector<float>& var) const;
  void get_ema_running_stats(std::vector<float>& mean, std::vector<float>& var) const;
  std::vector<float> get_whitening() const;  // [27][3][3][3]
  std::vector<float> get_logits() const;  // [B][10] of the last training forward
  double get_loss() const;                // summed smoothed cross-entropy of the last forward
  int get_step() const;                   // the device step counter

  // ---- device buffers the trainer writes into or reads directly
  float* whitening_device() { return whiten_w_; }               // [27][3][3][3]
  __half* batch_x() { return batch_x_; }                        // [B][32][32][3] normalised fp16
  uint8_t* batch_labels() { return batch_labels_; }             // [B]
  const float* step_loss_device() const { return step_loss_; }  // [total_steps]
  const int* step_correct_device() const { return step_correct_; }  // [total_steps]
  // Host convenience for tests: x [B][32][32][3] fp32 (rounded to fp16), labels [B].
  void upload_batch(const std::vector<float>& x, const std::vector<uint8_t>& labels);

  // ---- training
  // One whole step on batch_x()/batch_labels(): graph replay, or the same launches directly
  // when capture failed. with_ema adds the EMA update after the optimiser step. No host sync.
  void step(bool with_ema);
  // The parts of a step as direct launches (tests): forward + loss + backward, then update.
  void forward_backward();
  void update(bool with_ema);
  // Tests: fills every buffer a step writes before reading (activations, their gradients, saved
  // statistics, gradients, loss, BN scratch, conv workspace) with 0xFF bytes (NaN in fp16 and
  // fp32), so a read of anything the step did not write shows up as NaN. Synchronises.
  void poison_step_buffers();
  bool uses_graph() const { return graph_ok_; }
  // Where a training step's GPU time goes, measured once at setup: the step as direct launches
  // (not the graph) with CUDA events between its stages, `reps` times; per stage (e.g.
  // "layer1.conv_fwd", "layer1.bn_bwd", "layer1.dgrad", "update") the median milliseconds, in
  // launch order. Stages sum to about one step; events add a little overhead each.
  struct StageTime {
    std::string stage;
    double ms;
  };
  const std::vector<StageTime>& step_profile() const { return step_profile_; }
  std::string step_profile_text() const;  // one "stage ms" line per stage, for logs
  const std::string& graph_note() const { return graph_note_; }  // why not, or "captured"

  // ---- evaluation (BN with group-averaged running statistics, no state changes)
  enum class Model { kLive, kEma };
  // Prepares the fp16 conv weights and averaged BN statistics of the chosen weights; stays
  // valid for eval_forward() until the next prepare_eval().
  void prepare_eval(Model m);
  // logits [B][10] fp32 (+= when accumulate) of B images x [B][32][32][3] fp16 (device);
  // mirror reads the images flipped horizontally (test-time augmentation).
  void eval_forward(const __half* x, bool mirror, float* logits, bool accumulate);
  // Host convenience for tests: logits [B][10] of x [B][32][32][3] fp32 under the chosen
  // weights; with tta, the mean of the image's and its mirror's logits (as Resnet9Cpu).
  std::vector<float> eval_logits_host(const std::vector<float>& x, Model m, bool tta);

  // "layer1: fwd=... bwd_data=... bwd_filter=..." per conv, for logs.
  std::string conv_algorithms() const;
  // Every candidate the per-layer selection timed, per conv shape: pass, kernel, config, median
  // us, rel. difference to cuDNN, status (engine/conv_select.h), one per line, for logs and JSON.
  std::string conv_candidates() const;
  // The fused conv forward per unit (Options::fused_pool, fused_stats): the tile config chosen
  // at setup and every config's time, one line per unit; "" when nothing is fused.
  std::string fused_choice() const { return fused_note_; }
  // The same for the dgrads with the BN-backward sums (Options::fused_bn_grad), one line per
  // unit whose sums they compute; "" when off.
  std::string fused_bn_grad_choice() const { return bn_grad_note_; }
  size_t workspace_bytes() const { return workspace_bytes_; }  // the convs' shared workspace

  // One of our conv kernels for a fused launch: a wgmma (Hopper) config or an igemm one.
  struct OurConv {
    bool wgmma = false;
    int config = 0;  // a kernels::WgmmaConfig or kernels::IgemmConfig
    std::string name() const;  // "wgmma_..." or "igemm:..."
  };

 private:
  // The conv epilogue a unit's training forward uses (Options::fused_pool / fused_stats).
  enum class Fusion { kNone, kPool, kStats };
  // One conv -> [maxpool 2] -> ghost BN -> CELU [+ residual] unit, as in Resnet9Cpu.
  struct Unit {
    std::string name;
    long conv_off = 0, bias_off = 0;  // offsets into the flat parameter arrays
    long stat_off = 0;                // offset into the running-statistics arrays ([G][C])
    long chan_off = 0;                // offset into eval_mean_/eval_var_ ([C])
    cs::ConvSelect* conv = nullptr;   // shared between units of the same shape
    kernels::GhostBnCeluShape shape{};
    Fusion fusion = Fusion::kNone;        // the forward's fused epilogue (Options)
    OurConv fused_conv;                   // its kernel
    uint8_t* argmax = nullptr;            // [N][Ho][Wo][C] window positions (kPool only)
    // Options::fused_bn_grad: the dgrad writing this unit's d_out also computes its BN-backward
    // sums, with our kernel bn_grad_conv; the unit's BN backward then reads the sums.
    bool bn_grad_fused = false;
    OurConv bn_grad_conv;
    int residual_from = -1;   // forward: out += units_[residual_from].out
    int skip_grad_from = -1;  // backward: dout2 = units_[skip_grad_from].d_out
    __half *y = nullptr, *p = nullptr, *out = nullptr;   // conv output, pooled (or y), output
    __half *d_out = nullptr, *d_y = nullptr;             // gradients of out and of y
    float *save_mean = nullptr, *save_invstd = nullptr;  // [G][C]
  };
  static constexpr int kUnits = 8;

  void allocate();
  void build_convs();
  void autotune(size_t max_workspace);
  void capture_graphs();
  // The launches, enqueued on the stream (no host sync).
  // Forward of B images into logits [B][10] (+= when accumulate); train: batch statistics
  // (saved for the backward, running statistics updated), else the prepare_eval() model.
  void enqueue_forward(const __half* x, bool train, bool mirror, float* logits, bool accumulate);
  void enqueue_loss();
  void enqueue_backward();
  void enqueue_update(bool with_ema);
  void enqueue_step(bool with_ema);
  // Counts host-issued optimiser steps; throws before the lr table would be read past its end.
  void check_step_budget();

  cs::GpuContext& ctx_;
  cs::Arena& arena_;
  Recipe recipe_;
  Layout layout_;
  int B_, steps_per_epoch_;
  long total_steps_;
  long host_steps_ = 0;  // optimiser steps issued since reset_optimizer()
  long prep_off_ = 0, head_off_ = 0;
  kernels::TensorTable table_{};
  kernels::GhostBnCeluParams bn_prm_{};
  Unit units_[kUnits];
  Options options_;
  // Fused conv forwards (Options::fused_pool, fused_stats): per-group sums [G][C] and the conv
  // epilogue's partial sums, shared by the fused units in turn; the choice, for logs.
  float *fused_sum_ = nullptr, *fused_sumsq_ = nullptr, *fused_partials_ = nullptr;
  std::string fused_note_;
  void choose_fused_configs();
  // Unit i's fused conv forward (its fusion, kernel and config) from `in` with filters w; in
  // training with the argmax and the sums, in evaluation (pool only) without.
  void enqueue_fused_conv(int i, const __half* in, const __half* w, bool train);
  // Options::fused_bn_grad: the BN-backward sums [G][C] (written by the dgrad into unit i,
  // read by unit i's backward right after), the epilogue's partials, the dgrad's transformed
  // filters; the choice, for logs.
  float *bn_grad_sum_dz_ = nullptr, *bn_grad_sum_dzx_ = nullptr, *bn_grad_partials_ = nullptr;
  __half* bn_grad_wt_ = nullptr;
  std::string bn_grad_note_;
  void choose_bn_grad_configs();
  // The dgrad of unit i's conv into units_[i - 1].d_out with unit i - 1's BN-backward sums.
  void enqueue_dgrad_bn_sums(int i, const __half* w);
  kernels::ConvDesc conv_desc(int unit) const;  // unit's conv shape (prep: 1x1 on 32 channels)
  std::vector<std::unique_ptr<cs::ConvSelect>> convs_;

  // Parameters and optimiser state [num_params]
  float *w_ = nullptr, *g_ = nullptr, *v_ = nullptr, *ema_w_ = nullptr;
  __half *w_half_ = nullptr, *g_half_ = nullptr;
  __half *prep_w_ = nullptr, *prep_g_ = nullptr;  // prep conv [c0][32] (channels 27..31 zero)
  float *rm_ = nullptr, *rv_ = nullptr, *ema_rm_ = nullptr, *ema_rv_ = nullptr;  // [num_stats]
  float* whiten_w_ = nullptr;                                                    // [27][3][3][3]
  // Evaluation copies
  const float* eval_src_ = nullptr;  // fp32 weights eval_forward uses (w_ or ema_w_)
  __half *eval_w_half_ = nullptr, *eval_prep_w_ = nullptr;
  float *eval_mean_ = nullptr, *eval_var_ = nullptr;  // [sum of C over BN layers]
  // Schedule and records
  float* lr_table_ = nullptr;  // [total_steps][2]: weights, BN biases
  int* step_counter_ = nullptr;
  float* step_loss_ = nullptr;  // [total_steps]
  int* step_correct_ = nullptr;
  float* loss_sum_ = nullptr;
  int* correct_ = nullptr;
  // Activations
  __half *batch_x_ = nullptr, *white_ = nullptr;  // [B][32][32][3], [B][32][32][32]
  uint8_t* batch_labels_ = nullptr;
  float *feat_ = nullptr, *logits_ = nullptr, *dlogits_ = nullptr;  // [B][c3], [B][10] x2
  float* bn_scratch_ = nullptr;
  size_t bn_scratch_bytes_ = 0;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;

  cudaGraphExec_t graph_step_ = nullptr, graph_step_ema_ = nullptr;
  bool graph_ok_ = false;
  std::string graph_note_;

  // Stage markers of profile_step(): mark() records an event on the stream when profiling is on
  // (never during graph capture or normal steps).
  void mark(const char* stage, const std::string& unit = std::string());
  void profile_step(int reps);
  bool profiling_ = false;
  std::vector<std::string> marks_;                      // stage names of the current step
  std::vector<std::unique_ptr<cs::CudaEvent>> events_;  // reused across steps
  std::vector<StageTime> step_profile_;
};

}  // namespace net
