// ResNet-9 parameter and BN layout, shared by the CPU reference and the GPU engine.
//
// All trained parameters live in one flat fp32 array (llm.c style); gradients, momentum and
// EMA copies use the same offsets. Tensors, in this order:
//   prep_conv         [c0][1][1][27]     (after the fixed whitening conv 3->27)
//   prep_bn_bias      [c0]
//   layer1_conv       [c1][3][3][c0]   layer1_bn_bias [c1]
//   layer1_res1_conv  [c1][3][3][c1]   layer1_res1_bn_bias [c1]
//   layer1_res2_conv  [c1][3][3][c1]   layer1_res2_bn_bias [c1]
//   layer2_conv       [c2][3][3][c1]   layer2_bn_bias [c2]
//   layer3_conv       [c3][3][3][c2]   layer3_bn_bias [c3]
//   layer3_res1_conv  [c3][3][3][c3]   layer3_res1_bn_bias [c3]
//   layer3_res2_conv  [c3][3][3][c3]   layer3_res2_bn_bias [c3]
//   head_linear       [10][c3]
// c0..c3 = 64, 128, 256, 512 times the width multiplier (at least 1).
#pragma once
#include <string>
#include <vector>

namespace net {

constexpr int kWhitenChannels = 27;  // 3x3x3 patches
constexpr int kClasses = 10;

struct Widths {
  int c0, c1, c2, c3;
  static Widths from_multiplier(float width);
};

struct ParamTensor {
  std::string name;
  long offset, size;
  std::vector<int> shape;
  bool is_bn_bias;  // second parameter group (lr x64, wd /64)
};

// One BN layer: its bias tensor, channels and the spatial size it normalises over.
struct BNLayer {
  std::string name;  // e.g. "layer1_bn"
  int param_index;   // index of its bias in the parameter list
  int channels, hw;  // hw = H*W at that point (32x32 input)
  long stat_offset;  // offset into the flat running-statistics arrays ([G][C] per layer)
};

struct Layout {
  Widths w;
  int groups;  // ghost-BN groups per batch (batch / bn_group)
  std::vector<ParamTensor> params;
  std::vector<BNLayer> bns;
  long num_params = 0;  // total floats of trained parameters
  long num_stats = 0;   // total floats of one running-statistics array (mean or var)
  const ParamTensor& param(const std::string& name) const;  // throws if unknown
  const BNLayer& bn(const std::string& name) const;
};

Layout make_layout(float width, int groups);

}  // namespace net
