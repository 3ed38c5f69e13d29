// The resnet9 recipe of ../shared/docs/recipes.md ("How to train your ResNet", final version),
// every number in one place. CPU and GPU engines read the same struct.
#pragma once
#include <cstdint>

namespace net {

struct Recipe {
  // Data
  float mean[3] = {125.31f, 122.95f, 113.87f};  // per channel, 0..255 scale
  float std_[3] = {62.99f, 62.09f, 66.70f};
  int pad = 4;  // reflect pad, then random 32x32 crop, random horizontal flip per image
  // Network
  float width = 1.0f;       // channel multiplier: 64/128/256/512 x width (tests use narrow copies)
  float celu_alpha = 0.3f;
  float logit_scale = 1.0f / 16.0f;
  // Whitening (fixed 3x3 conv 3->27)
  int whiten_images = 10000;
  float whiten_eps = 1e-2f;
  // Ghost batch norm
  int bn_group = 32;  // images per statistics group (batch 512 = 16 groups)
  float bn_eps = 1e-5f;
  float bn_momentum = 0.1f;  // PyTorch convention
  // Loss
  float label_smoothing = 0.2f;
  // Optimiser: SGD Nesterov, lr piecewise linear in epochs, divided by the batch size
  int batch = 512;
  int epochs = 10;
  float lr_knots[3] = {0.0f, 2.0f, 8.0f};
  float lr_values[3] = {0.0f, 1.0f, 0.1f};
  float momentum = 0.9f;
  float weight_decay = 5e-4f;  // times the batch size in the update (see lr_at / wd_for)
  float bn_bias_lr_mult = 64.0f;  // BN biases: lr x 64, wd / 64
  // Weight averaging: EMA of weights and BN running statistics every ema_every steps
  int ema_every = 5;
  float ema_rho = 0.99f;  // per step; applied as ema_rho^ema_every
  // Evaluation: TTA = mean of the logits of the image and its mirror
  bool tta = true;

  int steps_per_epoch(int train_size) const { return train_size / batch; }  // drop last partial
  // Learning rate of weights for 0-based step s: the published code counts steps from 1, so
  // step s uses the schedule at epoch (s + 1) / steps_per_epoch.
  float lr_weights(long step, int steps_per_epoch) const;
  float lr_bn_bias(long step, int steps_per_epoch) const {
    return lr_weights(step, steps_per_epoch) * bn_bias_lr_mult;
  }
  float wd_weights() const { return weight_decay * batch; }
  float wd_bn_bias() const { return weight_decay * batch / bn_bias_lr_mult; }
  float ema_rho_applied() const;  // ema_rho ^ ema_every
};

}  // namespace net
