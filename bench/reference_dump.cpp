// reference_dump: runs the CPU reference (net::Resnet9Cpu) for a few training steps and writes
// every tensor the PyTorch cross-check needs (tools/reference/resnet9_torch.py compare;
// docs/torch_crosscheck.md).
//
//   reference_dump --out DIR [--seed S] [--width W] [--batch B] [--bn-group G] [--steps K]
//                  [--ema-every E] [--data DIR] [--train-images N] [--test-images N]
//                  [--steps-per-epoch N] [--gpu]
//
// Output: DIR/manifest.json (config, recipe numbers, parameter layout, and for each tensor its
// name, file, shape and dtype) and one raw little-endian file per tensor, NAME.bin. Images and
// activations are NHWC, conv weights KRSC, BN running statistics [G][C] (net/layout.h).
// Tensors, by name (stepK = after K steps, 1-based; every step is written, since the comparison
// replays each step from the state the previous one left):
//   data.train_images_u8 [n][3][32][32], data.train_labels [n],
//   data.train_normalized [n][32][32][3]
//   whiten.filters [27][3][3][3]
//   init.param.<p>, init.bn.<bn>.running_mean|running_var
//   stepK.batch.images [B][32][32][3] stepK.batch.labels [B] stepK.batch.index [B]
//   stepK.batch.crops [B][3] (dy, dx, flip)
//   stepK.lr_weights, stepK.lr_bn_bias, stepK.logits [B][10], stepK.loss (float64, summed),
//   stepK.grad.<p> (at the weights before the step), stepK.param.<p>, stepK.momentum.<p>,
//   stepK.bn.<bn>.running_mean|running_var, stepK.ema.param.<p>, stepK.ema.bn.<bn>.*
//   eval.images_u8, eval.images, eval.labels, eval.bn.<bn>.mean|var [C] (EMA model, averaged
//   over groups), eval.logits [n][10], eval.logits_tta [n][10]
// With --gpu (builds with the CUDA engine), also the GPU engine's step 1 (net::Resnet9Gpu, the
// speedrun engine with its default options) from the same initial state and batch:
//   gpu.step1.logits [B][10], gpu.step1.loss (float64), gpu.step1.grad.<p>,
//   gpu.step1.bn.<bn>.running_mean|running_var [G][C]
// The GPU reads the conv weights and the batch in fp16; compare rounds both the same way on the
// PyTorch side and checks these against its own step (docs/torch_crosscheck.md).
// Without --data the images are deterministic synthetic ones (smooth random patterns, so the
// whitening eigenvalues are well separated); with --data, the first N training/test images.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/cifar10.h"
#include "kernels/ref/augment.h"
#include "kernels/ref/ghost_bn.h"
#include "kernels/ref/loss.h"
#include "net/layout.h"
#include "net/recipe.h"
#include "net/resnet9_cpu.h"
#ifdef CS_HAVE_CUDA
#include "engine/arena.h"
#include "engine/gpu_context.h"
#include "engine/gpu_info.h"
#include "net/resnet9_gpu.h"
#endif

namespace {

using json = nlohmann::json;
constexpr int kImage = 32;
constexpr int kPixels = kImage * kImage * 3;

struct Args {
  std::string out, data_dir;
  uint64_t seed = 1;
  float width = 0.125f;
  int batch = 64, bn_group = 16, steps = 3, ema_every = -1;  // -1: the recipe's
  int train_images = -1, test_images = 256, steps_per_epoch = -1;
  bool gpu = false;  // also dump the GPU engine's step 1
};

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "reference_dump: %s\n"
               "usage: reference_dump --out DIR [--seed S] [--width W] [--batch B] "
               "[--bn-group G] [--steps K] [--ema-every E] [--data DIR] [--train-images N] "
               "[--test-images N] [--steps-per-epoch N] [--gpu]\n",
               why.c_str());
  std::exit(2);
}

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (k == "--help" || k == "-h") {
      std::printf(
          "usage: reference_dump --out DIR [--seed S] [--width W] [--batch B] [--bn-group G] [--steps K]\n"
          "                      [--ema-every E] [--data DIR] [--train-images N] [--test-images N]\n"
          "                      [--steps-per-epoch N] [--gpu]\n"
          "Runs the CPU reference for K training steps and writes every tensor the PyTorch\n"
          "cross-check needs (tools/reference/resnet9_torch.py compare; docs/torch_crosscheck.md).\n"
          "--gpu also writes the GPU engine's step 1 from the same state and batch (needs a device).\n");
      std::exit(0);
    }
    if (k == "--gpu") {
      a.gpu = true;
      continue;
    }
    if (i + 1 >= argc) usage("missing value after " + k);
    const std::string v = argv[++i];
    try {
      if (k == "--out") a.out = v;
      else if (k == "--data") a.data_dir = v;
      else if (k == "--seed") a.seed = std::stoull(v);
      else if (k == "--width") a.width = std::stof(v);
      else if (k == "--batch") a.batch = std::stoi(v);
      else if (k == "--bn-group") a.bn_group = std::stoi(v);
      else if (k == "--steps") a.steps = std::stoi(v);
      else if (k == "--ema-every") a.ema_every = std::stoi(v);
      else if (k == "--train-images") a.train_images = std::stoi(v);
      else if (k == "--test-images") a.test_images = std::stoi(v);
      else if (k == "--steps-per-epoch") a.steps_per_epoch = std::stoi(v);
      else usage("unknown option " + k + " " + v);
    } catch (const std::logic_error&) {
      usage("bad value for " + k + ": " + v);
    }
  }
  if (a.out.empty()) usage("--out is required");
  if (a.width <= 0 || a.batch <= 0 || a.bn_group <= 0 || a.batch % a.bn_group || a.steps < 1 ||
      a.test_images < 1)
    usage("need width > 0, steps >= 1, test-images >= 1, batch a positive multiple of bn-group");
  return a;
}

// Writes tensors as raw little-endian files and collects the manifest entries.
struct Writer {
  std::filesystem::path dir;
  json tensors = json::array();

  void raw(const std::string& name, const void* p, size_t bytes, std::vector<long> shape,
           const char* dtype) {
    const std::string file = name + ".bin";
    std::ofstream f(dir / file, std::ios::binary);
    f.write(static_cast<const char*>(p), (std::streamsize)bytes);
    if (!f) throw std::runtime_error("reference_dump: cannot write " + (dir / file).string());
    tensors.push_back({{"name", name}, {"file", file}, {"shape", shape}, {"dtype", dtype}});
  }
  static size_t count(const std::vector<long>& shape) {
    size_t n = 1;
    for (long d : shape) n *= (size_t)d;
    return n;
  }
  void f32(const std::string& name, const float* p, std::vector<long> shape) {
    raw(name, p, count(shape) * 4, shape, "float32");
  }
  void f64(const std::string& name, double v) { raw(name, &v, 8, {1}, "float64"); }
  void scalar(const std::string& name, float v) { f32(name, &v, {1}); }
  void u8(const std::string& name, const uint8_t* p, std::vector<long> shape) {
    raw(name, p, count(shape), shape, "uint8");
  }
  void i32(const std::string& name, const int32_t* p, std::vector<long> shape) {
    raw(name, p, count(shape) * 4, shape, "int32");
  }
};

std::vector<long> to_long(const std::vector<int>& v) {
  return std::vector<long>(v.begin(), v.end());
}

// Deterministic synthetic images in the official record layout ([3][32][32] uint8): a base
// colour plus three random plane waves per image (different amplitude per channel) plus noise.
// Spatially and chromatically correlated like photographs, so the 27x27 patch covariance has
// well separated eigenvalues and the whitening filters are well defined.
data::Split synthetic_split(int n, uint64_t seed) {
  data::Split s;
  s.labels.resize(n);
  s.images.resize((size_t)n * kPixels);
  ref::Rng rng(seed);
  const float two_pi = 6.283185307f;
  for (int i = 0; i < n; ++i) {
    float base[3], fy[3], fx[3], phase[3], amp[3][3];
    for (int c = 0; c < 3; ++c) base[c] = 50.0f + 150.0f * rng.uniform();
    for (int w = 0; w < 3; ++w) {
      fy[w] = 0.3f * (rng.uniform() - 0.5f);
      fx[w] = 0.3f * (rng.uniform() - 0.5f);
      phase[w] = two_pi * rng.uniform();
      for (int c = 0; c < 3; ++c) amp[w][c] = 10.0f + 40.0f * rng.uniform();
    }
    uint8_t* img = s.images.data() + (size_t)i * kPixels;
    for (int c = 0; c < 3; ++c)
      for (int y = 0; y < kImage; ++y)
        for (int x = 0; x < kImage; ++x) {
          float v = base[c] + 24.0f * (rng.uniform() - 0.5f);
          for (int w = 0; w < 3; ++w)
            v += amp[w][c] * std::sin(two_pi * (fy[w] * y + fx[w] * x) + phase[w]);
          v = std::fmin(255.0f, std::fmax(0.0f, v));
          img[(c * kImage + y) * kImage + x] = (uint8_t)std::lround(v);
        }
    s.labels[i] = (uint8_t)rng.uniform_int(data::kClasses);
  }
  return s;
}

void dump_state(Writer& w, const std::string& prefix, net::Resnet9Cpu& m, bool with_momentum) {
  const net::Layout& L = m.layout();
  for (const net::ParamTensor& p : L.params) {
    w.f32(prefix + "param." + p.name, m.param(p.name), to_long(p.shape));
    if (with_momentum)
      w.f32(prefix + "momentum." + p.name, m.momentum.data() + p.offset, to_long(p.shape));
  }
  for (const net::BNLayer& b : L.bns) {
    const std::vector<long> shape{L.groups, b.channels};
    w.f32(prefix + "bn." + b.name + ".running_mean", m.running_mean_of(b.name), shape);
    w.f32(prefix + "bn." + b.name + ".running_var", m.running_var_of(b.name), shape);
  }
}

// --gpu needs the CUDA engine and a device; checked before anything is written.
void require_gpu() {
#ifdef CS_HAVE_CUDA
  const cs::GpuInfo info = cs::detect_gpu();
  if (!info.available) throw std::runtime_error("reference_dump: --gpu needs a CUDA device: " + info.reason);
#else
  throw std::runtime_error("reference_dump: --gpu needs a build with the CUDA engine (this one has none)");
#endif
}

// The GPU engine's forward + loss + backward of one step from `init`'s state (weights, running
// statistics, whitening filters) on batch x, written as gpu.step1.*.
void dump_gpu_step(Writer& w, const net::Recipe& r, net::Resnet9Cpu& init, const std::vector<float>& x,
                   const std::vector<uint8_t>& labels) {
#ifdef CS_HAVE_CUDA
  const cs::GpuInfo info = cs::detect_gpu();
  cs::GpuContext ctx;
  cs::Arena arena(size_t(2) << 30);
  net::Resnet9Gpu gpu(ctx, arena, r, /*steps_per_epoch=*/1);
  gpu.set_params(init.params);
  gpu.set_running_stats(init.running_mean, init.running_var);
  gpu.set_whitening(init.whiten);
  gpu.reset_optimizer();
  gpu.upload_batch(x, labels);
  gpu.forward_backward();
  const std::vector<float> logits = gpu.get_logits(), grads = gpu.get_grads();
  std::vector<float> mean, var;
  gpu.get_running_stats(mean, var);
  const net::Layout& L = init.layout();
  w.f32("gpu.step1.logits", logits.data(), {r.batch, net::kClasses});
  w.f64("gpu.step1.loss", gpu.get_loss());
  for (const net::ParamTensor& p : L.params)
    w.f32("gpu.step1.grad." + p.name, grads.data() + p.offset, to_long(p.shape));
  for (const net::BNLayer& b : L.bns) {
    const long off = init.running_mean_of(b.name) - init.running_mean.data();
    const std::vector<long> shape{L.groups, b.channels};
    w.f32("gpu.step1.bn." + b.name + ".running_mean", mean.data() + off, shape);
    w.f32("gpu.step1.bn." + b.name + ".running_var", var.data() + off, shape);
  }
  std::printf("reference_dump: GPU step 1 on %s, convs %s", info.name.c_str(), gpu.conv_algorithms().c_str());
#else
  (void)w, (void)r, (void)init, (void)x, (void)labels;
  require_gpu();
#endif
}

int run(const Args& a) {
  if (a.gpu) require_gpu();
  net::Recipe r;
  r.width = a.width;
  r.batch = a.batch;
  r.bn_group = a.bn_group;
  if (a.ema_every > 0) r.ema_every = a.ema_every;
  const int B = a.batch;

  // Data: the CIFAR-10 files or synthetic images.
  data::Split train, test;
  std::string data_desc = "synthetic";
  const int n_train = a.train_images > 0 ? a.train_images : 4 * B;
  if (!a.data_dir.empty()) {
    data::Cifar10 d = data::load(data::resolve_data_dir(a.data_dir), n_train, a.test_images);
    train = std::move(d.train);
    test = std::move(d.test);
    data_desc = d.dir;
  } else {
    train = synthetic_split(n_train, a.seed * 2 + 1);
    test = synthetic_split(a.test_images, a.seed * 2 + 2);
  }
  if (train.size() < B)
    throw std::invalid_argument("reference_dump: fewer training images than one batch");
  const int spe = a.steps_per_epoch > 0 ? a.steps_per_epoch : r.steps_per_epoch(train.size());
  const int n_whiten = std::min(train.size(), r.whiten_images);

  std::vector<float> x_train((size_t)train.size() * kPixels);
  ref::normalize_cifar(train.images.data(), train.size(), r.mean, r.std_, x_train.data());
  const int P = kImage + 2 * r.pad;
  std::vector<float> padded((size_t)train.size() * P * P * 3);
  ref::reflect_pad(x_train.data(), padded.data(), train.size(), kImage, kImage, 3, r.pad);

  std::filesystem::create_directories(a.out);
  Writer w{a.out};
  w.u8("data.train_images_u8", train.images.data(), {train.size(), 3, kImage, kImage});
  w.u8("data.train_labels", train.labels.data(), {train.size()});
  w.f32("data.train_normalized", x_train.data(), {train.size(), kImage, kImage, 3});

  // As the CPU trainer (net/train_cpu.cpp) does it: whitening, then one SplitMix64 stream from
  // the seed draws the init, each epoch's permutation and each batch's crops and flips, so the
  // first steps here are the first steps of that trainer's run on the same images.
  net::Resnet9Cpu model(r);
  model.compute_whitening(x_train.data(), n_whiten);
  ref::Rng rng(a.seed);
  model.init(rng);
  w.f32("whiten.filters", model.whiten.data(), {net::kWhitenChannels, 3, 3, 3});
  dump_state(w, "init.", model, false);

  // The averaged model starts as a copy of the initial one (docs/recipe.md); `probe` repeats
  // each step's forward/backward on a copy of the state to read the gradients, which
  // train_step overwrites with the update.
  net::Resnet9Cpu ema(r), probe(r), init(r);
  ema.copy_state_from(model);
  init.copy_state_from(model);
  const float rho = r.ema_rho_applied();
  std::vector<int> perm;
  std::vector<float> x((size_t)B * kPixels);
  std::vector<uint8_t> labels(B);
  std::vector<int32_t> index(B), crops((size_t)B * 3);
  std::vector<ref::CropFlip> cf(B);
  std::vector<float> dlogits((size_t)B * net::kClasses);
  for (int s = 0; s < a.steps; ++s) {
    const int in_epoch = s % spe;
    if (in_epoch == 0) perm = ref::random_permutation(train.size(), rng);
    if ((long)(in_epoch + 1) * B > (long)perm.size())
      throw std::invalid_argument("reference_dump: --steps-per-epoch needs more training images");
    ref::random_crop_flip(B, r.pad, rng, cf.data());
    for (int i = 0; i < B; ++i) {
      index[i] = perm[(size_t)in_epoch * B + i];
      labels[i] = train.labels[index[i]];
      crops[3 * i] = cf[i].dy;
      crops[3 * i + 1] = cf[i].dx;
      crops[3 * i + 2] = cf[i].flip;
    }
    ref::crop_flip(padded.data(), P, P, 3, index.data(), cf.data(), B, kImage, x.data());
    const std::string tag = "step" + std::to_string(s + 1) + ".";
    w.f32(tag + "batch.images", x.data(), {B, kImage, kImage, 3});
    w.u8(tag + "batch.labels", labels.data(), {B});
    w.i32(tag + "batch.index", index.data(), {B});
    w.i32(tag + "batch.crops", crops.data(), {B, 3});

    probe.copy_state_from(model);
    const float* logits = probe.forward_train(x.data(), B);
    const double probe_loss = ref::xent_smooth_forward_backward(
        logits, labels.data(), B, net::kClasses, r.label_smoothing, dlogits.data(), nullptr);
    probe.backward(dlogits.data());
    const double loss = model.train_step(x.data(), labels.data(), B, s, spe);
    // Same code on the same state: the training step must have seen exactly the probe's forward.
    if (loss != probe_loss)
      throw std::logic_error("reference_dump: train_step's loss differs from the probe's");
    if (s % r.ema_every == 0) ema.ema_update(model, rho);

    w.scalar(tag + "lr_weights", r.lr_weights(s, spe));
    w.scalar(tag + "lr_bn_bias", r.lr_bn_bias(s, spe));
    w.f32(tag + "logits", logits, {B, net::kClasses});
    w.f64(tag + "loss", loss);
    for (const net::ParamTensor& p : model.layout().params)
      w.f32(tag + "grad." + p.name, probe.grad(p.name), to_long(p.shape));
    dump_state(w, tag, model, true);
    dump_state(w, tag + "ema.", ema, false);
    if (s == 0 && a.gpu) dump_gpu_step(w, r, init, x, labels);
  }

  // Evaluation of the averaged model.
  const int n_test = test.size();
  std::vector<float> x_test((size_t)n_test * kPixels);
  ref::normalize_cifar(test.images.data(), n_test, r.mean, r.std_, x_test.data());
  w.u8("eval.images_u8", test.images.data(), {n_test, 3, kImage, kImage});
  w.u8("eval.labels", test.labels.data(), {n_test});
  w.f32("eval.images", x_test.data(), {n_test, kImage, kImage, 3});
  const net::Layout& L = ema.layout();
  for (const net::BNLayer& b : L.bns) {
    std::vector<float> avg(b.channels);
    ref::ghost_bn_average_groups(ema.running_mean_of(b.name), avg.data(), L.groups, b.channels);
    w.f32("eval.bn." + b.name + ".mean", avg.data(), {b.channels});
    ref::ghost_bn_average_groups(ema.running_var_of(b.name), avg.data(), L.groups, b.channels);
    w.f32("eval.bn." + b.name + ".var", avg.data(), {b.channels});
  }
  std::vector<float> logits((size_t)n_test * net::kClasses);
  ema.forward_eval(x_test.data(), n_test, logits.data(), false);
  w.f32("eval.logits", logits.data(), {n_test, net::kClasses});
  ema.forward_eval(x_test.data(), n_test, logits.data(), true);
  w.f32("eval.logits_tta", logits.data(), {n_test, net::kClasses});

  json layout = {{"widths", {L.w.c0, L.w.c1, L.w.c2, L.w.c3}}, {"groups", L.groups}};
  for (const net::ParamTensor& p : L.params)
    layout["params"].push_back(
        {{"name", p.name}, {"shape", p.shape}, {"is_bn_bias", p.is_bn_bias}});
  for (const net::BNLayer& b : L.bns)
    layout["bns"].push_back({{"name", b.name}, {"channels", b.channels}, {"hw", b.hw}});
  json manifest = {
      {"format", "cifar-speedrun reference dump 1"},
      {"config",
       {{"seed", a.seed}, {"width", a.width}, {"batch", B}, {"bn_group", a.bn_group},
        {"steps", a.steps}, {"steps_per_epoch", spe},
        {"train_images", train.size()}, {"test_images", n_test}, {"whiten_images", n_whiten},
        {"data", data_desc}, {"gpu", a.gpu}}},
      {"recipe",
       {{"mean", r.mean}, {"std", r.std_}, {"pad", r.pad}, {"width", r.width},
        {"celu_alpha", r.celu_alpha}, {"logit_scale", r.logit_scale},
        {"whiten_images", r.whiten_images}, {"whiten_eps", r.whiten_eps},
        {"bn_group", r.bn_group}, {"bn_eps", r.bn_eps}, {"bn_momentum", r.bn_momentum},
        {"label_smoothing", r.label_smoothing}, {"batch", r.batch}, {"epochs", r.epochs},
        {"lr_knots", r.lr_knots}, {"lr_values", r.lr_values}, {"momentum", r.momentum},
        {"weight_decay", r.weight_decay}, {"bn_bias_lr_mult", r.bn_bias_lr_mult},
        {"ema_every", r.ema_every}, {"ema_rho", r.ema_rho}}},
      {"layout", layout},
      {"tensors", w.tensors},
  };
  std::ofstream f(std::filesystem::path(a.out) / "manifest.json");
  f << manifest.dump(1) << "\n";
  if (!f) throw std::runtime_error("reference_dump: cannot write manifest.json");
  std::printf("reference_dump: %zu tensors in %s (width %g, batch %d, bn_group %d, %d steps, "
              "ema_every %d, %s data)\n",
              w.tensors.size(), a.out.c_str(), a.width, B, a.bn_group, a.steps, r.ema_every,
              a.data_dir.empty() ? "synthetic" : "CIFAR-10");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // The .bin files are documented as little-endian; this tool writes host order.
  const uint32_t probe = 1;
  uint8_t first;
  std::memcpy(&first, &probe, 1);
  if (first != 1) {
    std::fprintf(stderr, "reference_dump: big-endian hosts are not supported\n");
    return 1;
  }
  try {
    return run(parse(argc, argv));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
