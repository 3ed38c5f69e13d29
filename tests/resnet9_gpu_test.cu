// The GPU ResNet-9 (net/resnet9_gpu.*) against the fp32 CPU reference (net/resnet9_cpu.*):
// one whole training step of the full-width network from identical weights on the same batch,
// then the step's determinism (CUDA graph against direct launches, bitwise), then the whole
// trainer end to end (twice: the same seed gives the same run).
//
// Batch 64 (two ghost-BN groups), not 512: the CPU reference of one full-width step at batch
// 512 is ~1.2 TFLOP, minutes on a few cores; 64 keeps it to seconds and still exercises the
// per-group statistics. The images and the conv weights are fp16-rounded before both sides see
// them (the GPU's convs read fp16 weights), so the differences left are the GPU's fp16
// activations and gradients against fp32/double on the CPU.
//
// Why the gradient tolerance is calibrated (measured on the CPU, 2026-11-26, this batch and
// init): the step's gradients are discontinuous in the activations. A max pool routes its whole
// gradient to the first maximum of its window, and the top two of the head's 16 pixels (layer3
// plus its residual branch, so CELU' < 1 is common there) are often within a rounding of each
// other: moving every input value by one fp16 ulp changes 0.2% of the head's routes (60 of
// 32,768) and every backbone gradient of the fp32 CPU reference itself by 6-9% (relative L2;
// 4-8% with fp32 conv weights), while the logits move by only 1.8e-3. Smaller perturbations do
// the same: rounding the fp32 input to fp16 moves the gradients by 3-4%, rounding the conv
// weights to fp16 by 3-7%, and rounding only the head's input (forward unchanged, 11 routes)
// by 1.5-2%. The GPU, with every activation in fp16, sat at that level against the CPU (4-10%,
// logits 1.9e-3), so a fixed tight tolerance cannot tell a bug from this. The test therefore
// measures the noise floor on the CPU on the spot (the same step with every input value moved
// by one fp16 ulp) and allows kNoiseFactor times it per tensor. Gross bugs (a missing residual
// gradient, a stale buffer: tens of % or NaN through the poisoned buffers) still fail; the
// per-kernel tests in kernels_gpu_test.cu and conv_gpu_test.cu are the tight checks.
// The CPU side is computed once (cpu_step_reference) and shared by the engine variants.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "engine/arena.h"
#include "engine/gpu_context.h"
#include "kernels/ref/augment.h"
#include "kernels/ref/loss.h"
#include "net/checkpoint.h"
#include "net/layout.h"
#include "net/recipe.h"
#include "net/resnet9_cpu.h"
#include "net/resnet9_gpu.h"
#include "net/train.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr int kBatch = 64;
constexpr long kPixels = 32 * 32 * 3;
constexpr size_t kTestArenaBytes = 1ull << 30;  // batch 64 needs ~0.2 GiB + conv workspace

// Tolerances (relative L2 over a whole tensor), from fp16 activations against fp32:
// logits and the summed loss go through the forward only (measured 1.9e-3 and 2.5e-6 on an
// H100); the running statistics are sums over the batch (1.2e-4).
constexpr double kTolLogits = 1e-2;
constexpr double kTolLoss = 5e-3;
constexpr double kTolStats = 1e-2;
// Gradients and updates: tensor t passes when its error <= max(kNoiseFactor * floor_t,
// kTolGradBase), floor_t = the CPU reference's own change under the one-ulp input nudge (see
// the top of the file). kTolGradBase covers tensors whose floor is tiny (fp16 gradients alone
// give ~1e-3).
constexpr double kNoiseFactor = 2.0;
constexpr double kTolGradBase = 1e-2;

net::Recipe test_recipe() {
  net::Recipe r;
  r.batch = kBatch;  // full width (1.0), two ghost-BN groups of 32
  return r;
}

// Normalised-looking synthetic images (no dataset needed on the GPU machine), fp16-rounded.
std::vector<float> synthetic_images(int n, uint64_t seed) {
  return gpu_test::round_to_half(random_vector((long)n * kPixels, seed, -2.0f, 2.0f));
}

std::vector<uint8_t> synthetic_labels(int n) {
  std::vector<uint8_t> y(n);
  for (int i = 0; i < n; ++i) y[i] = (uint8_t)((i * 7 + 3) % net::kClasses);
  return y;
}

bool is_conv(const net::ParamTensor& p) {
  return p.name.size() > 5 && p.name.compare(p.name.size() - 5, 5, "_conv") == 0;
}

// The conv weights rounded to fp16 (what the GPU's convolutions read); the rest unchanged.
void round_conv_weights(const net::Layout& L, std::vector<float>& params) {
  for (const net::ParamTensor& p : L.params)
    if (is_conv(p))
      for (long j = p.offset; j < p.offset + p.size; ++j)
        params[j] = __half2float(__float2half_rn(params[j]));
}

// Every value (fp16-representable) moved up or down by one fp16 ulp at random: the size of one
// fp16 rounding step, applied to the whole input.
std::vector<float> nudge_one_ulp(const std::vector<float>& x, uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    const __half h = __float2half_rn(x[i]);
    uint16_t bits;
    std::memcpy(&bits, &h, sizeof(bits));
    // +-1 on the magnitude bits is one ulp up or down in |x| (the inputs are far from the fp16
    // maximum); a zero moves to the smallest subnormal instead of wrapping into NaN.
    if ((bits & 0x7FFF) == 0) {
      bits = (uint16_t)(bits | 1);
      gen();
    } else {
      bits = (uint16_t)((gen() & 1) ? bits + 1 : bits - 1);
    }
    __half n;
    std::memcpy(&n, &bits, sizeof(n));
    y[i] = __half2float(n);
  }
  return y;
}

// Per tensor: the GPU's error against the CPU and the CPU's noise floor, both printed; returns
// the number of tensors over max(kNoiseFactor * floor, kTolGradBase).
int check_against_floor(const char* what, const net::Layout& L, const std::vector<float>& gpu,
                        const std::vector<float>& cpu, const std::vector<float>& cpu_nudged) {
  int failed = 0;
  for (const net::ParamTensor& p : L.params) {
    const double e = rel_l2_error(gpu.data() + p.offset, cpu.data() + p.offset, p.size);
    const double floor = rel_l2_error(cpu_nudged.data() + p.offset, cpu.data() + p.offset, p.size);
    const double tol = std::max(kNoiseFactor * floor, kTolGradBase);
    const bool ok = e <= tol;
    std::printf("  %-7s %-22s gpu-cpu %.3e  cpu floor %.3e  ratio %.2f  tol %.3e%s\n", what,
                p.name.c_str(), e, floor, floor > 0 ? e / floor : 0.0, tol, ok ? "" : "  FAIL");
    failed += ok ? 0 : 1;
  }
  return failed;
}

// One CPU reference step's forward + loss + backward on x; returns the loss, leaves the
// gradients in cpu.grads and the logits in *logits.
double cpu_forward_backward(net::Resnet9Cpu& cpu, const std::vector<float>& x,
                            const std::vector<uint8_t>& labels, std::vector<float>* logits) {
  const net::Recipe& r = cpu.recipe();
  const float* z = cpu.forward_train(x.data(), kBatch);
  logits->assign(z, z + (size_t)kBatch * net::kClasses);
  std::vector<float> dlogits((size_t)kBatch * net::kClasses);
  const double loss = ref::xent_smooth_forward_backward(z, labels.data(), kBatch, net::kClasses,
                                                        r.label_smoothing, dlogits.data(), nullptr);
  cpu.backward(dlogits.data());
  return loss;
}

// The CPU side of the step comparison: the reference model and its noise-floor twin (input
// nudged by one fp16 ulp) through forward + backward, one SGD step and the TTA evaluation.
// Computed once and shared by the engine variants the test generates (the CPU work is most of
// the test's time, and it does not depend on the variant).
struct CpuStepReference {
  net::Layout layout;
  std::vector<float> x;
  std::vector<uint8_t> labels;
  // Initial state, as the GPU model is loaded with it.
  std::vector<float> params0, running_mean0, running_var0, whiten;
  // After forward + backward.
  double loss = 0;
  std::vector<float> logits, grads, running_mean, running_var;
  std::vector<float> nudged_logits, nudged_grads;
  // After the SGD step, then the evaluation forward of the updated models.
  std::vector<float> params1, nudged_params1, eval_logits, nudged_eval_logits;
};

const CpuStepReference& cpu_step_reference() {
  static const CpuStepReference ref = [] {
    CpuStepReference R;
    const net::Recipe r = test_recipe();
    R.x = synthetic_images(kBatch, 101);
    const std::vector<float> x_nudged = nudge_one_ulp(R.x, 102);
    R.labels = synthetic_labels(kBatch);

    net::Resnet9Cpu cpu(r);
    cpu.init(7);
    round_conv_weights(cpu.layout(), cpu.params);
    cpu.compute_whitening(R.x.data(), kBatch);
    net::Resnet9Cpu cpu_nudged(r);
    cpu_nudged.init(7);
    cpu_nudged.copy_state_from(cpu);
    R.layout = cpu.layout();
    R.params0 = cpu.params;
    R.running_mean0 = cpu.running_mean;
    R.running_var0 = cpu.running_var;
    R.whiten = cpu.whiten;

    R.loss = cpu_forward_backward(cpu, R.x, R.labels, &R.logits);
    R.grads = cpu.grads;  // sgd_step uses grads as scratch
    R.running_mean = cpu.running_mean;
    R.running_var = cpu.running_var;
    cpu_forward_backward(cpu_nudged, x_nudged, R.labels, &R.nudged_logits);
    R.nudged_grads = cpu_nudged.grads;

    // Step 0 of a 1-step-per-epoch schedule.
    cpu.sgd_step(r.lr_weights(0, 1), r.lr_bn_bias(0, 1));
    cpu_nudged.sgd_step(r.lr_weights(0, 1), r.lr_bn_bias(0, 1));
    R.params1 = cpu.params;
    R.nudged_params1 = cpu_nudged.params;

    // Both updated models evaluate the same images x: the floor is the CPU's own difference
    // between its two updated models.
    R.eval_logits.resize((size_t)kBatch * net::kClasses);
    R.nudged_eval_logits.resize(R.eval_logits.size());
    cpu.forward_eval(R.x.data(), kBatch, R.eval_logits.data(), true);
    cpu_nudged.forward_eval(R.x.data(), kBatch, R.nudged_eval_logits.data(), true);
    return R;
  }();
  return ref;
}

}  // namespace

TEST_CASE("resnet9 GPU training step matches the CPU reference within its noise floor",
          "[gpu][resnet9]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const net::Recipe r = test_recipe();
  const CpuStepReference& ref = cpu_step_reference();
  const net::Layout& L = ref.layout;

  // The engine's variants: cuDNN convolutions and conv -> pool_bn_celu everywhere (0); the
  // per-layer selection between cuDNN and our conv kernels, and the pooled layers with the fused
  // conv + max-pool (argmax, BN sums in the conv's epilogue), BN from the sums and backward via
  // the argmax (1); our conv kernels wherever eligible, the other layers with the BN sums in
  // the conv's epilogue too, and every BN backward from sums the dgrad before it accumulated (2);
  // as 0 with the 2-channel BN kernels (3); the selection with every fusion asked for, each kept
  // only on the units where its pair timed faster (4: whatever mix of fused and unfused units
  // that gives, the step must still match).
  const int fusion = GENERATE(0, 1, 2, 3, 4);
  INFO("variant " << fusion);
  net::Resnet9Gpu::Options options;
  options.conv_policy = fusion == 1 || fusion == 4 ? cs::ConvPolicy::kAuto
                        : fusion == 2              ? cs::ConvPolicy::kIgemm
                                                   : cs::ConvPolicy::kCudnn;
  options.fused_pool = fusion == 1 || fusion == 2 || fusion == 4;
  options.fused_stats = fusion == 2 || fusion == 4;
  options.fused_bn_grad = fusion == 2 || fusion == 4;
  options.fused_auto = fusion == 4;
  options.bn_vectorized = fusion != 3;
  options.quick_autotune = gpu_test::quick_autotune();
  cs::GpuContext ctx;
  cs::Arena arena(kTestArenaBytes);
  net::Resnet9Gpu gpu(ctx, arena, r, /*steps_per_epoch=*/1, options);
  std::printf("resnet9 gpu test (variant %d): arena peak %s, graph: %s\n%s%s", fusion,
              cs::format_bytes(arena.peak_bytes()).c_str(), gpu.graph_note().c_str(),
              gpu.conv_algorithms().c_str(), gpu.fused_choice().c_str());
  auto count = [](const std::string& text, const std::string& what) {
    long n = 0;
    for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) n++;
    return n;
  };
  if (options.fused_auto) {
    // Every unit found a config and timed its two pairs: 8 forwards (3 pooled, 5 with the
    // statistics) and 7 dgrads with the BN-backward sums.
    std::printf("%s", gpu.fused_bn_grad_choice().c_str());
    CHECK(count(gpu.fused_choice(), "(fused pair ") == 8);
    CHECK(count(gpu.fused_bn_grad_choice(), "(fused pair ") == 7);
  } else {
    if (options.fused_pool) CHECK(gpu.fused_choice().find("not fused") == std::string::npos);
    if (options.fused_bn_grad) {
      std::printf("%s", gpu.fused_bn_grad_choice().c_str());
      CHECK(gpu.fused_bn_grad_choice().find("not fused") == std::string::npos);
    }
  }
  gpu.set_params(ref.params0);
  gpu.set_running_stats(ref.running_mean0, ref.running_var0);
  gpu.set_whitening(ref.whiten);
  gpu.reset_optimizer();
  gpu.upload_batch(ref.x, ref.labels);
  // NaN in every buffer the step writes: a read of anything this step did not write ends in
  // non-finite gradients.
  gpu.poison_step_buffers();

  // ---- forward + loss + backward
  gpu.forward_backward();
  const std::vector<float> gpu_logits = gpu.get_logits();
  const double gpu_loss = gpu.get_loss();
  const std::vector<float> gpu_grads = gpu.get_grads();
  std::vector<float> gpu_rm, gpu_rv;
  gpu.get_running_stats(gpu_rm, gpu_rv);
  REQUIRE(gpu_test::all_finite(gpu_logits));
  REQUIRE(gpu_test::all_finite(gpu_grads));

  const long nz = (long)ref.logits.size();
  const double e_logits = rel_l2_error(gpu_logits.data(), ref.logits.data(), nz);
  const double floor_logits = rel_l2_error(ref.nudged_logits.data(), ref.logits.data(), nz);
  const double e_loss = std::fabs(gpu_loss - ref.loss) / std::fabs(ref.loss);
  const long S = (long)ref.running_mean.size();
  const double e_rm = rel_l2_error(gpu_rm.data(), ref.running_mean.data(), S);
  const double e_rv = rel_l2_error(gpu_rv.data(), ref.running_var.data(), S);
  std::printf(
      "  loss gpu %.6f cpu %.6f (rel %.3e); logits rel L2 %.3e (cpu floor %.3e); running mean "
      "%.3e, var %.3e\n",
      gpu_loss, ref.loss, e_loss, e_logits, floor_logits, e_rm, e_rv);
  CHECK(e_loss < kTolLoss);
  CHECK(e_logits < kTolLogits);
  CHECK(e_rm < kTolStats);
  CHECK(e_rv < kTolStats);
  CHECK(check_against_floor("grad", L, gpu_grads, ref.grads, ref.nudged_grads) == 0);

  // ---- SGD step (step 0 of a 1-step-per-epoch schedule): compare the weight changes, which
  // are driven by the gradients (the weights themselves agree trivially).
  gpu.update(false);
  const std::vector<float> gpu_params = gpu.get_params();
  REQUIRE(gpu_test::all_finite(gpu_params));
  const std::vector<float>& params0 = ref.params0;
  std::vector<float> d_gpu(params0.size()), d_cpu(params0.size()), d_nudged(params0.size());
  for (size_t i = 0; i < params0.size(); ++i) {
    d_gpu[i] = gpu_params[i] - params0[i];
    d_cpu[i] = ref.params1[i] - params0[i];
    d_nudged[i] = ref.nudged_params1[i] - params0[i];
  }
  CHECK(check_against_floor("update", L, d_gpu, d_cpu, d_nudged) == 0);
  CHECK(gpu.get_step() == 1);

  // ---- evaluation forward (group-averaged running statistics) with mirror TTA, on the
  // updated weights: forward only, but from weights that differ by the update's error, so the
  // floor is the CPU's own eval difference between its two updated models (same images x).
  const std::vector<float> gpu_eval = gpu.eval_logits_host(ref.x, net::Resnet9Gpu::Model::kLive, true);
  const double e_eval = rel_l2_error(gpu_eval.data(), ref.eval_logits.data(), nz);
  const double floor_eval = rel_l2_error(ref.nudged_eval_logits.data(), ref.eval_logits.data(), nz);
  std::printf("  eval logits (TTA) rel L2 %.3e (cpu floor %.3e)\n", e_eval, floor_eval);
  CHECK(e_eval <= std::max(kNoiseFactor * floor_eval, 2 * kTolLogits));
}

TEST_CASE("resnet9 GPU step is deterministic: graph replay equals direct launches bitwise",
          "[gpu][resnet9]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const net::Recipe r = test_recipe();
  const std::vector<float> x = synthetic_images(kBatch, 202);
  const std::vector<uint8_t> labels = synthetic_labels(kBatch);
  net::Resnet9Cpu init(r);
  init.init(9);
  init.compute_whitening(x.data(), kBatch);

  const int fusion = GENERATE(0, 1, 2);  // the variants of the CPU comparison above
  INFO("variant " << fusion);
  net::Resnet9Gpu::Options options;
  options.conv_policy = fusion == 0 ? cs::ConvPolicy::kCudnn : fusion == 1 ? cs::ConvPolicy::kAuto : cs::ConvPolicy::kIgemm;
  options.fused_pool = fusion >= 1;
  options.fused_stats = fusion >= 2;
  options.fused_bn_grad = fusion >= 2;
  options.quick_autotune = gpu_test::quick_autotune();
  cs::GpuContext ctx;
  cs::Arena arena(kTestArenaBytes);
  net::Resnet9Gpu gpu(ctx, arena, r, /*steps_per_epoch=*/1, options);
  std::printf("graph: %s\n", gpu.graph_note().c_str());
  // The fallback keeps training correct, but a failed capture costs speed: flag it.
  CHECK(gpu.uses_graph());
  // The setup's step profile: every stage timed once per rep, in launch order: whiten, 8 x
  // (conv_fwd, bn_fwd), head_fwd, loss, head_bwd, 8 x (bn_bwd, dgrad except prep, wgrad), update.
  const auto& prof = gpu.step_profile();
  std::printf("step profile:\n%s", gpu.step_profile_text().c_str());
  CHECK(prof.size() == 1 + 2 * 8 + 3 + 8 + 7 + 8 + 1);
  REQUIRE(!prof.empty());
  CHECK(prof.front().stage == "whiten");
  CHECK(prof[1].stage == (fusion >= 2 ? "prep.conv_stats_fwd" : "prep.conv_fwd"));
  CHECK(prof[3].stage == (fusion >= 1 ? "layer1.conv_pool_fwd" : "layer1.conv_fwd"));
  CHECK(prof.back().stage == "update");
  for (const auto& st : prof) CHECK(st.ms >= 0.0);
  // With the BN-backward sums fused, every dgrad carries them (the one into prep included).
  long fused_dgrads = 0;
  for (const auto& st : prof) fused_dgrads += st.stage.find("dgrad_bn_sums") != std::string::npos;
  CHECK(fused_dgrads == (fusion >= 2 ? 7 : 0));

  // Everything a step produces, from the same starting state each time (buffers poisoned, so
  // a stale read would show as NaN rather than as a silent dependence on the previous run).
  struct Result {
    std::vector<float> params, ema, grads, logits, rm, rv;
    double loss = 0;
    int step = 0;
  };
  auto run = [&](bool graph) {
    gpu.set_params(init.params);
    gpu.set_running_stats(init.running_mean, init.running_var);
    gpu.set_whitening(init.whiten);
    gpu.reset_optimizer();
    gpu.upload_batch(x, labels);
    gpu.poison_step_buffers();
    if (graph) {
      gpu.step(true);  // the graph (or the same launches when capture failed)
    } else {
      gpu.forward_backward();
      gpu.update(true);
    }
    Result res;
    res.params = gpu.get_params();
    res.ema = gpu.get_ema_params();
    res.grads = gpu.get_grads();
    res.logits = gpu.get_logits();
    gpu.get_running_stats(res.rm, res.rv);
    res.loss = gpu.get_loss();
    res.step = gpu.get_step();
    return res;
  };
  const Result direct = run(false);
  const Result graph = run(true);
  const Result graph_again = run(true);
  REQUIRE(gpu_test::all_finite(direct.params));
  REQUIRE(gpu_test::all_finite(direct.grads));
  CHECK(direct.step == 1);
  CHECK(graph.step == 1);

  // Same launches on the same data with fixed-order reductions everywhere (no atomics,
  // deterministic cuDNN algorithms): exactly equal, tolerance 0. (Before the fixed-order BN
  // statistics the two differed by 6% relative L2 in the update.)
  auto same = [](const char* what, const Result& a, const Result& b) {
    const bool eq = bitwise_equal(a.params, b.params) && bitwise_equal(a.ema, b.ema) &&
                    bitwise_equal(a.grads, b.grads) && bitwise_equal(a.logits, b.logits) &&
                    bitwise_equal(a.rm, b.rm) && bitwise_equal(a.rv, b.rv) && a.loss == b.loss;
    std::printf("  %s: %s (update rel L2 %.3e, grads rel L2 %.3e)\n", what,
                eq ? "bitwise equal" : "DIFFER",
                rel_l2_error(a.params.data(), b.params.data(), (long)a.params.size()),
                rel_l2_error(a.grads.data(), b.grads.data(), (long)a.grads.size()));
    return eq;
  };
  CHECK(same("graph vs direct", graph, direct));
  CHECK(same("graph vs graph", graph_again, graph));

  // EMA starts as the initial weights and is updated once after the step: fp32 arithmetic
  // (the device may fuse a multiply-add, hence not bitwise against the host formula).
  const float rho = r.ema_rho_applied();
  std::vector<float> ema_expected(graph.params.size());
  for (size_t i = 0; i < ema_expected.size(); ++i)
    ema_expected[i] = rho * init.params[i] + (1.0f - rho) * graph.params[i];
  const double e_ema =
      rel_l2_error(graph.ema.data(), ema_expected.data(), (long)ema_expected.size());
  std::printf("  EMA rel L2 %.3e\n", e_ema);
  CHECK(e_ema < 1e-6);
}

TEST_CASE("resnet9 GPU trainer runs the recipe end to end on synthetic data", "[gpu][resnet9]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  // Narrow network, small batch, 2 epochs of 4 steps: exercises upload, dataset preparation,
  // per-epoch shuffles, crop/flip, the step graph, EMA, the per-epoch and final TTA
  // evaluations and the timing, in seconds. Then the same seed again: every reduction of a run
  // (whitening covariance included) is fixed-order, so the two runs are identical.
  net::TrainConfig cfg;
  cfg.recipe.batch = kBatch;
  cfg.recipe.width = 0.25f;  // 16/32/64/128 channels: multiples of 8 for fp16 tensor cores
  cfg.recipe.epochs = 2;
  cfg.recipe.whiten_images = 200;
  cfg.eval_every_epoch = true;
  cfg.quick_autotune = gpu_test::quick_autotune();
  data::Cifar10 d;
  const int n_train = 4 * kBatch + 10, n_test = 100;  // a partial batch to drop, a padded test set
  auto fill = [](data::Split& s, int n, uint64_t seed) {
    s.labels = synthetic_labels(n);
    const std::vector<float> u = random_vector((long)n * data::kImageBytes, seed, 0.0f, 255.0f);
    s.images.resize(u.size());
    for (size_t i = 0; i < u.size(); ++i) s.images[i] = (uint8_t)u[i];
  };
  fill(d.train, n_train, 303);
  fill(d.test, n_test, 404);

  const std::unique_ptr<net::Trainer> trainer = net::make_gpu_trainer(d, cfg);
  const net::RunResult res = trainer->run(5, nullptr);
  REQUIRE(res.epochs.size() == 2);
  CHECK_FALSE(res.diverged);
  for (const net::EpochLog& e : res.epochs) {
    std::printf("  epoch %d loss %.4f acc %.3f tta %.3f lr %.5f %.4fs\n", e.epoch, e.train_loss,
                e.train_acc, e.test_acc_tta, e.lr, e.seconds);
    CHECK(std::isfinite(e.train_loss));
    CHECK(e.test_acc_tta >= 0.0);
    CHECK(e.test_acc_tta <= 1.0);
    CHECK(e.seconds > 0.0);
  }
  // Logits start near 0 (x 1/16 head), so the smoothed cross-entropy per image starts near
  // ln 10 = 2.30; the first epoch's mean must be of that size (the records are per image).
  CHECK(res.epochs[0].train_loss > 1.5);
  CHECK(res.epochs[0].train_loss < 3.5);
  CHECK(res.test_acc >= 0.0);
  CHECK(res.test_acc <= 1.0);
  CHECK(res.test_acc_tta >= 0.0);
  CHECK(res.test_acc_tta <= 1.0);
  CHECK(res.train_seconds > 0.0);
  CHECK(res.eval_seconds > 0.0);
  CHECK(res.timed_total_seconds == Approx(res.train_seconds + res.eval_seconds));
  std::printf("  trainer: train %.4fs eval %.4fs acc %.3f tta %.3f\n", res.train_seconds,
              res.eval_seconds, res.test_acc, res.test_acc_tta);

  const net::RunResult again = trainer->run(5, nullptr);
  REQUIRE(again.epochs.size() == res.epochs.size());
  for (size_t e = 0; e < res.epochs.size(); ++e) {
    INFO("epoch " << e + 1);
    CHECK(again.epochs[e].train_loss == res.epochs[e].train_loss);  // exact: same bits
    CHECK(again.epochs[e].train_acc == res.epochs[e].train_acc);
    CHECK(again.epochs[e].test_acc_tta == res.epochs[e].test_acc_tta);
  }
  CHECK(again.test_acc == res.test_acc);
  CHECK(again.test_acc_tta == res.test_acc_tta);

  // The averaged model exports (speedrun --save) with the layout's sizes and finite values,
  // and the CPU reference can evaluate it.
  REQUIRE(trainer->can_export_ema());
  const net::ModelState m = trainer->export_ema();
  const net::Layout L = net::make_layout(cfg.recipe.width, cfg.recipe.batch / cfg.recipe.bn_group);
  REQUIRE((long)m.params.size() == L.num_params);
  REQUIRE((long)m.running_mean.size() == L.num_stats);
  REQUIRE((long)m.running_var.size() == L.num_stats);
  REQUIRE(m.whiten.size() == 27u * 27u);
  auto finite = [](const std::vector<float>& v) {
    for (float x : v)
      if (!std::isfinite(x)) return false;
    return true;
  };
  CHECK(finite(m.params));
  CHECK(finite(m.running_mean));
  CHECK(finite(m.running_var));
  CHECK(finite(m.whiten));
  const std::unique_ptr<net::Resnet9Cpu> cpu = net::make_cpu_model(m);
  const int n_eval = 8;
  std::vector<float> x((size_t)n_eval * 32 * 32 * 3), logits((size_t)n_eval * 10);
  ref::normalize_cifar(d.test.images.data(), n_eval, cfg.recipe.mean, cfg.recipe.std_, x.data());
  cpu->forward_eval(x.data(), n_eval, logits.data(), true);
  CHECK(finite(logits));
}
