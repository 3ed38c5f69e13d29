// ResNet-9 CPU reference: forward, backward, SGD step, EMA (see resnet9_cpu.h for the network).
#include "net/resnet9_cpu.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "kernels/ref/augment.h"
#include "kernels/ref/conv.h"
#include "kernels/ref/elementwise.h"
#include "kernels/ref/ghost_bn.h"
#include "kernels/ref/linear.h"
#include "kernels/ref/loss.h"
#include "kernels/ref/optim.h"
#include "kernels/ref/pool.h"
#include "kernels/ref/whiten.h"

namespace net {

namespace {

constexpr int kImage = 32;      // input images are 32x32x3
constexpr int kInChannels = 3;
constexpr int kWhitenR = 3;     // whitening patches are 3x3

int param_index(const Layout& L, const std::string& name) {
  return (int)(&L.param(name) - L.params.data());
}

int bn_index(const Layout& L, const std::string& name) {
  return (int)(&L.bn(name) - L.bns.data());
}

}  // namespace

Resnet9Cpu::Resnet9Cpu(const Recipe& recipe) : recipe_(recipe) {
  if (recipe.bn_group <= 0 || recipe.batch <= 0 || recipe.batch % recipe.bn_group != 0)
    throw std::invalid_argument("Resnet9Cpu: batch (" + std::to_string(recipe.batch) +
                                ") must be a positive multiple of bn_group (" +
                                std::to_string(recipe.bn_group) + ")");
  layout_ = make_layout(recipe.width, recipe.batch / recipe.bn_group);
  const Widths& w = layout_.w;
  // name, conv input size H, Cin, Cout, R, pooled; the order matches the enum.
  struct Spec {
    const char* name;
    int H, Cin, Cout, R;
    bool pool;
  };
  const Spec specs[kUnits] = {
      {"prep", 32, kWhitenChannels, w.c0, 1, false},
      {"layer1", 32, w.c0, w.c1, 3, true},
      {"layer1_res1", 16, w.c1, w.c1, 3, false},
      {"layer1_res2", 16, w.c1, w.c1, 3, false},
      {"layer2", 16, w.c1, w.c2, 3, true},
      {"layer3", 8, w.c2, w.c3, 3, true},
      {"layer3_res1", 4, w.c3, w.c3, 3, false},
      {"layer3_res2", 4, w.c3, w.c3, 3, false},
  };
  for (int i = 0; i < kUnits; ++i) {
    const Spec& s = specs[i];
    Unit& u = units_[i];
    u.conv_param = param_index(layout_, std::string(s.name) + "_conv");
    u.bn_layer = bn_index(layout_, std::string(s.name) + "_bn");
    u.bias_param = layout_.bns[u.bn_layer].param_index;
    u.H = s.H;
    u.Cin = s.Cin;
    u.Cout = s.Cout;
    u.R = s.R;
    u.pool = s.pool;
    const BNLayer& bn = layout_.bns[u.bn_layer];
    if (bn.hw != u.Ho() * u.Ho() || bn.channels != u.Cout)
      throw std::logic_error("Resnet9Cpu: unit " + std::string(s.name) +
                             " disagrees with net/layout.h");
  }
  params.assign(layout_.num_params, 0.0f);
  grads.assign(layout_.num_params, 0.0f);
  momentum.assign(layout_.num_params, 0.0f);
  running_mean.assign(layout_.num_stats, 0.0f);
  running_var.assign(layout_.num_stats, 1.0f);
  whiten.assign((long)kWhitenChannels * kWhitenR * kWhitenR * kInChannels, 0.0f);
}

void Resnet9Cpu::init(ref::Rng& rng) {
  for (const ParamTensor& p : layout_.params) {
    float* w = params.data() + p.offset;
    if (p.is_bn_bias) {
      std::fill(w, w + p.size, 0.0f);
      continue;
    }
    // Conv [K][R][R][C] and linear [Out][In]: fan_in is everything but the first dimension.
    const long fan_in = p.size / p.shape[0];
    const float bound = 1.0f / std::sqrt((float)fan_in);
    for (long i = 0; i < p.size; ++i) w[i] = bound * (2.0f * rng.uniform() - 1.0f);
  }
  std::fill(momentum.begin(), momentum.end(), 0.0f);
  std::fill(running_mean.begin(), running_mean.end(), 0.0f);
  std::fill(running_var.begin(), running_var.end(), 1.0f);
}

void Resnet9Cpu::compute_whitening(const float* x, int n) {
  ref::whitening_filters(x, n, kImage, kImage, kInChannels, kWhitenR, recipe_.whiten_eps,
                         whiten.data());
}

void Resnet9Cpu::copy_state_from(const Resnet9Cpu& other) {
  if (other.layout_.num_params != layout_.num_params ||
      other.layout_.num_stats != layout_.num_stats)
    throw std::invalid_argument("Resnet9Cpu::copy_state_from: different layouts");
  params = other.params;
  running_mean = other.running_mean;
  running_var = other.running_var;
  whiten = other.whiten;
}

void Resnet9Cpu::ema_update(const Resnet9Cpu& model, float rho) {
  if (model.layout_.num_params != layout_.num_params ||
      model.layout_.num_stats != layout_.num_stats)
    throw std::invalid_argument("Resnet9Cpu::ema_update: different layouts");
  ref::ema_update(params.data(), model.params.data(), layout_.num_params, rho);
  ref::ema_update(running_mean.data(), model.running_mean.data(), layout_.num_stats, rho);
  ref::ema_update(running_var.data(), model.running_var.data(), layout_.num_stats, rho);
}

float* Resnet9Cpu::param(const std::string& name) {
  return params.data() + layout_.param(name).offset;
}
const float* Resnet9Cpu::param(const std::string& name) const {
  return params.data() + layout_.param(name).offset;
}
float* Resnet9Cpu::grad(const std::string& name) {
  return grads.data() + layout_.param(name).offset;
}
float* Resnet9Cpu::running_mean_of(const std::string& bn_name) {
  return running_mean.data() + layout_.bn(bn_name).stat_offset;
}
float* Resnet9Cpu::running_var_of(const std::string& bn_name) {
  return running_var.data() + layout_.bn(bn_name).stat_offset;
}

void Resnet9Cpu::ensure_capacity(int B) {
  if (B <= capacity_) return;
  long max_per_image = 0;  // largest gradient any backward scratch holds, per image
  int max_channels = 0;
  for (Unit& u : units_) {
    const long in = (long)u.H * u.H * u.Cin, out = (long)u.H * u.H * u.Cout;
    const long post = (long)u.Ho() * u.Ho() * u.Cout;
    u.conv.resize((size_t)B * out);
    if (u.pool) u.pooled.resize((size_t)B * post);
    u.bn.resize((size_t)B * post);
    u.act.resize((size_t)B * post);
    max_per_image = std::max({max_per_image, in, out});
    max_channels = std::max(max_channels, u.Cout);
  }
  const Widths& w = layout_.w;
  x_white_.resize((size_t)B * kImage * kImage * kWhitenChannels);
  l1_sum_.resize((size_t)B * 16 * 16 * w.c1);
  l3_sum_.resize((size_t)B * 4 * 4 * w.c3);
  head_in_.resize((size_t)B * w.c3);
  head_out_.resize((size_t)B * kClasses);
  logits_.resize((size_t)B * kClasses);
  dlogits_.resize((size_t)B * kClasses);
  flipped_.resize((size_t)B * kImage * kImage * kInChannels);
  stat_mean_.resize(max_channels);
  stat_var_.resize(max_channels);
  for (auto* g : {&g0_, &g1_, &g2_, &s0_, &s1_, &s2_}) g->resize((size_t)B * max_per_image);
  capacity_ = B;
}

void Resnet9Cpu::unit_forward(Unit& u, const float* in, int B, bool train) {
  const ref::ConvShape cs{B, u.H, u.H, u.Cin, u.Cout, u.R};
  ref::conv_forward(in, params.data() + layout_.params[u.conv_param].offset, u.conv.data(), cs);
  const float* pre = u.conv.data();  // the BN input
  if (u.pool) {
    ref::maxpool_forward(u.conv.data(), u.pooled.data(), B, u.H, u.H, u.Cout, 2);
    pre = u.pooled.data();
  }
  const int HW = u.Ho() * u.Ho();
  const float* bias = params.data() + layout_.params[u.bias_param].offset;
  const BNLayer& bn = layout_.bns[u.bn_layer];
  if (train) {
    u.save_mean.resize((size_t)layout_.groups * u.Cout);
    u.save_invstd.resize((size_t)layout_.groups * u.Cout);
    const ref::GhostBNShape s{B, HW, u.Cout, recipe_.bn_group};
    ref::ghost_bn_forward_train(pre, bias, u.bn.data(), u.save_mean.data(), u.save_invstd.data(),
                                running_mean.data() + bn.stat_offset,
                                running_var.data() + bn.stat_offset, s, recipe_.bn_eps,
                                recipe_.bn_momentum);
  } else {
    ref::ghost_bn_average_groups(running_mean.data() + bn.stat_offset, stat_mean_.data(),
                                 layout_.groups, u.Cout);
    ref::ghost_bn_average_groups(running_var.data() + bn.stat_offset, stat_var_.data(),
                                 layout_.groups, u.Cout);
    ref::ghost_bn_forward_eval(pre, bias, stat_mean_.data(), stat_var_.data(), u.bn.data(), B, HW,
                               u.Cout, recipe_.bn_eps);
  }
  ref::celu_forward(u.bn.data(), u.act.data(), (long)B * HW * u.Cout, recipe_.celu_alpha);
}

void Resnet9Cpu::forward(const float* x, int B, bool train) {
  const Widths& w = layout_.w;
  ref::conv_forward(x, whiten.data(), x_white_.data(),
                    ref::ConvShape{B, kImage, kImage, kInChannels, kWhitenChannels, kWhitenR});
  Unit* U = units_;
  unit_forward(U[kPrep], x_white_.data(), B, train);
  unit_forward(U[kLayer1], U[kPrep].act.data(), B, train);
  unit_forward(U[kLayer1Res1], U[kLayer1].act.data(), B, train);
  unit_forward(U[kLayer1Res2], U[kLayer1Res1].act.data(), B, train);
  ref::add(U[kLayer1].act.data(), U[kLayer1Res2].act.data(), l1_sum_.data(),
           (long)B * 16 * 16 * w.c1);
  unit_forward(U[kLayer2], l1_sum_.data(), B, train);
  unit_forward(U[kLayer3], U[kLayer2].act.data(), B, train);
  unit_forward(U[kLayer3Res1], U[kLayer3].act.data(), B, train);
  unit_forward(U[kLayer3Res2], U[kLayer3Res1].act.data(), B, train);
  ref::add(U[kLayer3].act.data(), U[kLayer3Res2].act.data(), l3_sum_.data(),
           (long)B * 4 * 4 * w.c3);
  ref::maxpool_forward(l3_sum_.data(), head_in_.data(), B, 4, 4, w.c3, 4);
  ref::linear_forward(head_in_.data(), param("head_linear"), head_out_.data(), B, w.c3, kClasses);
  ref::scale(head_out_.data(), logits_.data(), (long)B * kClasses, recipe_.logit_scale);
}

const float* Resnet9Cpu::forward_train(const float* x, int B) {
  // Running statistics are [G][C] with G fixed by the layout, so training needs full batches
  // (the trainer drops the last partial batch, as the recipe does).
  if (B != recipe_.batch)
    throw std::invalid_argument("Resnet9Cpu::forward_train: batch " + std::to_string(B) +
                                " != recipe batch " + std::to_string(recipe_.batch));
  ensure_capacity(B);
  forward(x, B, true);
  last_B_ = B;
  return logits_.data();
}

void Resnet9Cpu::unit_backward(Unit& u, const float* in, const float* d_act, float* d_in, int B) {
  const int HW = u.Ho() * u.Ho();
  const long n_post = (long)B * HW * u.Cout;
  ref::celu_backward(u.bn.data(), d_act, s0_.data(), n_post, recipe_.celu_alpha);
  // Without a pool the BN input is the conv output, so d(BN input) lands in s2 = d(conv).
  float* d_pre = u.pool ? s1_.data() : s2_.data();
  const float* pre = u.pool ? u.pooled.data() : u.conv.data();
  ref::ghost_bn_backward(s0_.data(), pre, u.save_mean.data(), u.save_invstd.data(), d_pre,
                         grads.data() + layout_.params[u.bias_param].offset,
                         ref::GhostBNShape{B, HW, u.Cout, recipe_.bn_group});
  if (u.pool) ref::maxpool_backward(u.conv.data(), s1_.data(), s2_.data(), B, u.H, u.H, u.Cout, 2);
  const ref::ConvShape cs{B, u.H, u.H, u.Cin, u.Cout, u.R};
  const long w_off = layout_.params[u.conv_param].offset;
  ref::conv_backward_weight(in, s2_.data(), grads.data() + w_off, cs);
  if (d_in) ref::conv_backward_input(s2_.data(), params.data() + w_off, d_in, cs);
}

void Resnet9Cpu::backward(const float* dlogits) {
  const int B = last_B_;
  if (B == 0) throw std::logic_error("Resnet9Cpu::backward: no forward_train to differentiate");
  const Widths& w = layout_.w;
  Unit* U = units_;
  // Head: logits = (maxpool4(l3_sum) W^T) / 16.
  ref::scale(dlogits, s0_.data(), (long)B * kClasses, recipe_.logit_scale);
  ref::linear_backward(head_in_.data(), param("head_linear"), s0_.data(), s1_.data(),
                       grad("head_linear"), B, w.c3, kClasses);
  ref::maxpool_backward(l3_sum_.data(), s1_.data(), g0_.data(), B, 4, 4, w.c3, 4);
  // layer3 + residual: l3_sum = a + res2(res1(a)), a = layer3 output; d a sums both paths.
  unit_backward(U[kLayer3Res2], U[kLayer3Res1].act.data(), g0_.data(), g1_.data(), B);
  unit_backward(U[kLayer3Res1], U[kLayer3].act.data(), g1_.data(), g2_.data(), B);
  ref::add(g0_.data(), g2_.data(), g1_.data(), (long)B * 4 * 4 * w.c3);
  unit_backward(U[kLayer3], U[kLayer2].act.data(), g1_.data(), g0_.data(), B);
  unit_backward(U[kLayer2], l1_sum_.data(), g0_.data(), g1_.data(), B);
  // layer1 + residual, the same way.
  unit_backward(U[kLayer1Res2], U[kLayer1Res1].act.data(), g1_.data(), g2_.data(), B);
  unit_backward(U[kLayer1Res1], U[kLayer1].act.data(), g2_.data(), g0_.data(), B);
  ref::add(g1_.data(), g0_.data(), g2_.data(), (long)B * 16 * 16 * w.c1);
  unit_backward(U[kLayer1], U[kPrep].act.data(), g2_.data(), g0_.data(), B);
  // The whitening conv is fixed, so no gradient flows into the image.
  unit_backward(U[kPrep], x_white_.data(), g0_.data(), nullptr, B);
}

void Resnet9Cpu::sgd_step(float lr_weights, float lr_bn_bias) {
  const float wd_w = recipe_.wd_weights(), wd_b = recipe_.wd_bn_bias();
  for (const ParamTensor& p : layout_.params) {
    const long o = p.offset;
    ref::sgd_nesterov_step(params.data() + o, grads.data() + o, momentum.data() + o, p.size,
                           p.is_bn_bias ? lr_bn_bias : lr_weights, p.is_bn_bias ? wd_b : wd_w,
                           recipe_.momentum);
  }
}

double Resnet9Cpu::train_step(const float* x, const uint8_t* labels, int B, long step,
                              int steps_per_epoch, int* correct) {
  const float* logits = forward_train(x, B);
  const double loss = ref::xent_smooth_forward_backward(
      logits, labels, B, kClasses, recipe_.label_smoothing, dlogits_.data(), correct);
  if (!std::isfinite(loss)) return loss;
  backward(dlogits_.data());
  sgd_step(recipe_.lr_weights(step, steps_per_epoch), recipe_.lr_bn_bias(step, steps_per_epoch));
  return loss;
}

void Resnet9Cpu::forward_eval(const float* x, int B, float* logits, bool tta) {
  if (B <= 0) throw std::invalid_argument("Resnet9Cpu::forward_eval: B must be >= 1");
  ensure_capacity(B);
  last_B_ = 0;  // the training activations are overwritten
  const long n = (long)B * kClasses;
  forward(x, B, false);
  std::copy(logits_.begin(), logits_.begin() + n, logits);
  if (!tta) return;
  ref::flip_horizontal(x, flipped_.data(), B, kImage, kImage, kInChannels);
  forward(flipped_.data(), B, false);
  for (long i = 0; i < n; ++i) logits[i] = 0.5f * (logits[i] + logits_[i]);
}

}  // namespace net
