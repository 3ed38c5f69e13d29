// The CPU reference trainer: the resnet9 recipe (../shared/docs/recipes.md) on Resnet9Cpu.
//
// Setup (untimed, reported as upload_seconds / init_seconds): normalise both splits to fp32 NHWC
// once, reflect-pad the training set once, allocate the training and EMA models.
// A run (timed as train_seconds): whitening filters from the first min(whiten_images, n)
// training images, init, then per epoch a permutation and per batch a random crop + flip, one
// SGD step per full batch (the last partial batch is dropped) and an EMA update every
// ema_every steps. Then (timed as eval_seconds) the EMA model is evaluated with and without TTA.
// Randomness: one SplitMix64 stream (ref::Rng) seeded with the run seed draws the init first,
// then each epoch's permutation followed by the crops/flips of its batches in order.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/ref/augment.h"
#include "net/resnet9_cpu.h"
#include "net/train.h"
#include "net/train_util.h"

namespace net {

namespace {

constexpr int kImage = 32;
constexpr int kChannels = 3;
constexpr long kPixels = (long)kImage * kImage * kChannels;
// Test images per evaluation forward: bounds the activation memory (BN uses running
// statistics there, so the split does not change the result).
constexpr int kEvalBatch = 200;

class CpuTrainer : public Trainer {
 public:
  CpuTrainer(const data::Cifar10& data, const TrainConfig& cfg)
      : data_(data), cfg_(cfg), model_(cfg.recipe), ema_(cfg.recipe) {
    const Recipe& r = cfg_.recipe;
    const int n_train = data.train.size(), n_test = data.test.size();
    if (r.steps_per_epoch(n_train) < 1)
      throw std::invalid_argument("CPU trainer: " + std::to_string(n_train) +
                                  " training images make no full batch of " +
                                  std::to_string(r.batch));
    if (n_test < 1) throw std::invalid_argument("CPU trainer: no test images");
    if (r.epochs < 1 || r.ema_every < 1 || r.whiten_images < 2 || r.pad < 0 || r.pad >= kImage)
      throw std::invalid_argument(
          "CPU trainer: need epochs, ema_every >= 1, whiten_images >= 2, pad in [0, 32)");

    const auto t_upload = Clock::now();
    std::vector<float> train(n_train * kPixels);
    ref::normalize_cifar(data.train.images.data(), n_train, r.mean, r.std_, train.data());
    padded_size_ = kImage + 2 * r.pad;
    train_padded_.resize((size_t)n_train * padded_size_ * padded_size_ * kChannels);
    ref::reflect_pad(train.data(), train_padded_.data(), n_train, kImage, kImage, kChannels, r.pad);
    // Only the whitening images of the unpadded set are kept.
    whiten_n_ = std::min(r.whiten_images, n_train);
    whiten_images_.assign(train.begin(), train.begin() + (size_t)whiten_n_ * kPixels);
    test_.resize((size_t)n_test * kPixels);
    ref::normalize_cifar(data.test.images.data(), n_test, r.mean, r.std_, test_.data());
    setup_.upload_seconds = seconds_since(t_upload);

    const auto t_init = Clock::now();
    model_.reserve(r.batch);
    ema_.reserve(std::min(kEvalBatch, n_test));
    x_.resize((size_t)r.batch * kPixels);
    labels_.resize(r.batch);
    crops_.resize(r.batch);
    test_flipped_.resize((size_t)std::min(kEvalBatch, n_test) * kPixels);
    setup_.init_seconds = seconds_since(t_init);
  }

  RunResult run(uint64_t seed, const ProgressFn& progress) override {
    const Recipe& r = cfg_.recipe;
    const int n_train = data_.train.size();
    const int spe = r.steps_per_epoch(n_train);
    const float rho = r.ema_rho_applied();
    RunResult res;
    res.seed = seed;

    // Timed region: whitening statistics + training (recipes.md, "What is timed").
    double timed = 0;
    auto t0 = Clock::now();
    model_.compute_whitening(whiten_images_.data(), whiten_n_);
    ref::Rng rng(seed);
    model_.init(rng);
    ema_.copy_state_from(model_);  // the averaged model starts as a copy of the initial one

    long step = 0;
    for (int epoch = 1; epoch <= r.epochs && !res.diverged; ++epoch) {
      const auto t_epoch = Clock::now();
      const std::vector<int> perm = ref::random_permutation(n_train, rng);
      double loss_sum = 0;
      float lr = 0;  // weight lr of the epoch's last step
      long correct_sum = 0, seen = 0;
      for (int b = 0; b < spe; ++b, ++step) {
        const int* idx = perm.data() + (long)b * r.batch;
        ref::random_crop_flip(r.batch, r.pad, rng, crops_.data());
        ref::crop_flip(train_padded_.data(), padded_size_, padded_size_, kChannels, idx,
                       crops_.data(), r.batch, kImage, x_.data());
        for (int i = 0; i < r.batch; ++i) labels_[i] = data_.train.labels[idx[i]];
        int correct = 0;
        lr = r.lr_weights(step, spe);
        const double loss =
            model_.train_step(x_.data(), labels_.data(), r.batch, step, spe, &correct);
        loss_sum += loss;
        correct_sum += correct;
        seen += r.batch;
        if (!std::isfinite(loss)) {
          res.diverged = true;
          res.diverged_step = step;
          break;
        }
        // Published code: the EMA is updated after the optimiser step at steps 0, 5, 10, ...
        if (step % r.ema_every == 0) ema_.ema_update(model_, rho);
      }
      EpochLog log;
      log.epoch = epoch;
      log.seconds = seconds_since(t_epoch);
      log.train_loss = loss_sum / (double)seen;
      log.train_acc = (double)correct_sum / (double)seen;
      log.lr = lr;
      timed += seconds_since(t0);
      // Per-epoch evaluation is for logging only: outside the timed region.
      if (cfg_.eval_every_epoch && !res.diverged) {
        double acc = 0;
        evaluate(ema_, &acc, &log.test_acc_tta);
      }
      res.epochs.push_back(log);
      if (progress) progress(log);
      t0 = Clock::now();
    }
    res.train_seconds = timed;
    if (!res.diverged) {
      const auto t_eval = Clock::now();
      evaluate(ema_, &res.test_acc, &res.test_acc_tta);
      res.eval_seconds = seconds_since(t_eval);
    }
    res.timed_total_seconds = res.train_seconds + res.eval_seconds;
    have_ema_ = !res.diverged;
    return res;
  }

  SetupTimes setup_times() const override { return setup_; }
  std::string device_name() const override { return "CPU (fp32 reference, kernels/ref)"; }
  bool can_export_ema() const override { return true; }
  ModelState export_ema() const override {
    if (!have_ema_) throw std::logic_error("CPU trainer: no finished run to export");
    return ModelState{cfg_.recipe, ema_.params, ema_.running_mean, ema_.running_var, ema_.whiten};
  }

 private:
  // Accuracy of `model` on the test split, without and with mirror TTA (one pass over the
  // images and one over their mirrors give both).
  void evaluate(Resnet9Cpu& model, double* acc, double* acc_tta) {
    const int n = data_.test.size();
    std::vector<float> plain((size_t)kEvalBatch * kClasses), mirrored(plain.size());
    long correct = 0, correct_tta = 0;
    for (int i0 = 0; i0 < n; i0 += kEvalBatch) {
      const int b = std::min(kEvalBatch, n - i0);
      const float* x = test_.data() + (size_t)i0 * kPixels;
      model.forward_eval(x, b, plain.data(), false);
      ref::flip_horizontal(x, test_flipped_.data(), b, kImage, kImage, kChannels);
      model.forward_eval(test_flipped_.data(), b, mirrored.data(), false);
      for (int i = 0; i < b; ++i) {
        const int label = data_.test.labels[i0 + i];
        float* zp = plain.data() + (long)i * kClasses;
        const float* zm = mirrored.data() + (long)i * kClasses;
        correct += argmax10(zp) == label;
        for (int k = 0; k < kClasses; ++k) zp[k] = 0.5f * (zp[k] + zm[k]);
        correct_tta += argmax10(zp) == label;
      }
    }
    *acc = (double)correct / n;
    *acc_tta = (double)correct_tta / n;
  }

  const data::Cifar10& data_;
  TrainConfig cfg_;
  Resnet9Cpu model_, ema_;
  SetupTimes setup_;
  bool have_ema_ = false;  // the last run() did not diverge: ema_ is its averaged model
  int padded_size_ = 0, whiten_n_ = 0;
  std::vector<float> train_padded_;   // [n_train][32+2p][32+2p][3]
  std::vector<float> whiten_images_;  // [whiten_n][32][32][3], the first training images
  std::vector<float> test_;           // [n_test][32][32][3]
  std::vector<float> test_flipped_;   // [kEvalBatch][32][32][3]
  std::vector<float> x_;              // [batch][32][32][3], the augmented batch
  std::vector<uint8_t> labels_;       // [batch]
  std::vector<ref::CropFlip> crops_;  // [batch]
};

}  // namespace

std::unique_ptr<Trainer> make_cpu_trainer(const data::Cifar10& data, const TrainConfig& cfg) {
  return std::make_unique<CpuTrainer>(data, cfg);
}

}  // namespace net
