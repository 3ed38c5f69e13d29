// ResNet-9 of the resnet9 recipe (../shared/docs/recipes.md) as an explicit fp32 CPU
// forward/backward built from the reference ops in kernels/ref/. No autograd: the forward keeps
// every activation the backward needs, and the backward walks the network in reverse.
//
// Network (NHWC, B images of 32x32x3, normalised):
//   whiten      fixed conv3x3 pad 1, 3->27 (not trained)
//   prep        conv1x1 27->c0, ghost BN, CELU                              32x32
//   layer1      conv3x3 c0->c1, maxpool 2, ghost BN, CELU                   16x16
//               + residual x + res2(res1(x)), resK = conv3x3 c1->c1, BN, CELU
//   layer2      conv3x3 c1->c2, maxpool 2, ghost BN, CELU                   8x8
//   layer3      conv3x3 c2->c3, maxpool 2, ghost BN, CELU, residual as layer1  4x4
//   head        maxpool 4 (4x4 -> 1x1), linear c3->10 without bias, x 1/16
// Parameters, gradients and momentum are flat arrays with the offsets of net/layout.h; BN
// running statistics are flat arrays of [G][C] blocks per BN layer (G = batch / bn_group).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/ref/augment.h"
#include "net/layout.h"
#include "net/recipe.h"

namespace net {

class Resnet9Cpu {
 public:
  // Layout from recipe.width, G = recipe.batch / recipe.bn_group ghost-BN groups. Throws
  // std::invalid_argument unless batch is a positive multiple of bn_group. Parameters start
  // zero: call init() (and compute_whitening() or fill `whiten`) before use.
  explicit Resnet9Cpu(const Recipe& recipe);

  const Recipe& recipe() const { return recipe_; }
  const Layout& layout() const { return layout_; }
  int batch() const { return recipe_.batch; }  // the only batch size forward_train accepts

  // Trained state (offsets from layout()): [num_params] each.
  std::vector<float> params, grads, momentum;
  // BN running statistics, [num_stats] each; layer b owns [stat_offset, + G*C) as [G][C].
  std::vector<float> running_mean, running_var;
  // Fixed whitening filters [27][3][3][3] (KRSC).
  std::vector<float> whiten;

  // PyTorch default init: conv and linear weights uniform in
  // +-1/sqrt(fan_in) (fan_in = C*R*R or In; what kaiming_uniform(a=sqrt(5)) gives), BN biases 0,
  // momentum 0, running mean 0, running var 1. Draws the tensors in layout order, one
  // rng.uniform() per weight.
  void init(ref::Rng& rng);
  void init(uint64_t seed) {
    ref::Rng rng(seed);
    init(rng);
  }
  // Whitening filters from n normalised images x [n][32][32][3] (ref::whitening_filters,
  // eps = recipe.whiten_eps).
  void compute_whitening(const float* x, int n);
  // Copies parameters, running statistics and whitening filters (not momentum or activations).
  void copy_state_from(const Resnet9Cpu& other);
  // EMA of the weights and running statistics: this = rho * this + (1 - rho) * model.
  void ema_update(const Resnet9Cpu& model, float rho);

  // Views by tensor name (net/layout.h names, e.g. "layer1_res1_conv", "head_linear") and by
  // BN layer name (e.g. "layer3_bn"; [G][C]). Throw std::invalid_argument if unknown.
  float* param(const std::string& name);
  const float* param(const std::string& name) const;
  float* grad(const std::string& name);
  float* running_mean_of(const std::string& bn_name);
  float* running_var_of(const std::string& bn_name);

  // Training forward with ghost-BN batch statistics; updates the running statistics. x is
  // [B][32][32][3], B must equal batch(). Returns logits [B][10], valid until the next forward.
  const float* forward_train(const float* x, int B);
  // Backward of the last forward_train given dlogits [B][10]: overwrites every entry of grads.
  void backward(const float* dlogits);
  // One SGD-Nesterov step of both parameter groups (ref::sgd_nesterov_step; weight decay and
  // momentum from the recipe). Uses grads as scratch: they are no longer gradients afterwards.
  void sgd_step(float lr_weights, float lr_bn_bias);
  // forward_train + label-smoothed summed cross-entropy + backward + sgd_step at the recipe's
  // learning rates for 0-based `step`. Returns the summed loss over the batch; a non-finite
  // loss returns before the update (the state is then left as after the forward). Writes the
  // number of correct argmax predictions to *correct when non-null.
  double train_step(const float* x, const uint8_t* labels, int B, long step, int steps_per_epoch,
                    int* correct = nullptr);

  // Allocates the activation buffers for B images now rather than at the first forward.
  void reserve(int B) { ensure_capacity(B); }

  // Evaluation forward of any B >= 1 images: BN uses the running statistics averaged over the
  // groups. With tta, logits = mean of the logits of x and of its horizontal mirror. Writes
  // logits [B][10]. Overwrites the activations of the last forward_train.
  void forward_eval(const float* x, int B, float* logits, bool tta);

 private:
  // conv -> [maxpool 2] -> ghost BN -> CELU, with the activations its backward needs.
  struct Unit {
    int conv_param, bias_param, bn_layer;  // indices into layout_.params / layout_.bns
    int H, Cin, Cout, R;             // conv input/output spatial size H x H, filter R x R
    bool pool;                       // maxpool 2 between conv and BN
    int Ho() const { return pool ? H / 2 : H; }
    std::vector<float> conv;    // [B][H][H][Cout]
    std::vector<float> pooled;  // [B][Ho][Ho][Cout] (pooled units only)
    std::vector<float> bn;      // [B][Ho][Ho][Cout], the CELU input
    std::vector<float> act;     // [B][Ho][Ho][Cout], the unit's output
    std::vector<float> save_mean, save_invstd;  // [G][Cout]
  };

  void ensure_capacity(int B);
  void forward(const float* x, int B, bool train);
  void unit_forward(Unit& u, const float* in, int B, bool train);
  // d_act: gradient of u.act (read); d_in: gradient of the unit's input (written; null skips
  // the input gradient). Writes the unit's weight and bias gradients.
  void unit_backward(Unit& u, const float* in, const float* d_act, float* d_in, int B);

  Recipe recipe_;
  Layout layout_;
  enum { kPrep, kLayer1, kLayer1Res1, kLayer1Res2, kLayer2, kLayer3, kLayer3Res1, kLayer3Res2,
         kUnits };
  Unit units_[kUnits];
  int capacity_ = 0;  // images the activation buffers hold
  int last_B_ = 0;    // batch of the last forward_train (0: none, or overwritten by eval)
  std::vector<float> x_white_;   // [B][32][32][27]
  std::vector<float> l1_sum_;    // [B][16][16][c1]  layer1 output x + res2(res1(x))
  std::vector<float> l3_sum_;    // [B][4][4][c3]    layer3 output
  std::vector<float> head_in_;   // [B][c3]          after the 4x4 maxpool
  std::vector<float> head_out_;  // [B][10]          linear output before the 1/16
  std::vector<float> logits_;    // [B][10]
  std::vector<float> dlogits_;   // [B][10]          train_step's loss gradient
  std::vector<float> flipped_;   // [B][32][32][3]   TTA mirror
  std::vector<float> stat_mean_, stat_var_;  // [C] group-averaged running statistics (eval)
  // Backward scratch, each [B][max activation per image]: g0..g2 carry gradients between
  // units, s0..s2 live inside unit_backward.
  std::vector<float> g0_, g1_, g2_, s0_, s1_, s2_;
};

}  // namespace net
