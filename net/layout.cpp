#include "net/layout.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "net/recipe.h"
#include "kernels/ref/optim.h"

namespace net {

Widths Widths::from_multiplier(float width) {
  auto ch = [width](int base) { return std::max(1, (int)std::lround(base * width)); };
  return Widths{ch(64), ch(128), ch(256), ch(512)};
}

Layout make_layout(float width, int groups) {
  Layout L;
  L.w = Widths::from_multiplier(width);
  L.groups = groups;
  auto add = [&L](const std::string& name, std::vector<int> shape, bool bn_bias) {
    long size = 1;
    for (int d : shape) size *= d;
    L.params.push_back(ParamTensor{name, L.num_params, size, shape, bn_bias});
    L.num_params += size;
  };
  auto conv_bn = [&](const std::string& name, int cin, int cout, int r, int hw) {
    add(name + "_conv", {cout, r, r, cin}, false);
    add(name + "_bn_bias", {cout}, true);
    L.bns.push_back(BNLayer{name + "_bn", (int)L.params.size() - 1, cout, hw, L.num_stats});
    L.num_stats += (long)groups * cout;
  };
  const Widths& w = L.w;
  conv_bn("prep", kWhitenChannels, w.c0, 1, 32 * 32);
  conv_bn("layer1", w.c0, w.c1, 3, 16 * 16);  // BN after the 2x2 pool
  conv_bn("layer1_res1", w.c1, w.c1, 3, 16 * 16);
  conv_bn("layer1_res2", w.c1, w.c1, 3, 16 * 16);
  conv_bn("layer2", w.c1, w.c2, 3, 8 * 8);
  conv_bn("layer3", w.c2, w.c3, 3, 4 * 4);
  conv_bn("layer3_res1", w.c3, w.c3, 3, 4 * 4);
  conv_bn("layer3_res2", w.c3, w.c3, 3, 4 * 4);
  add("head_linear", {kClasses, w.c3}, false);
  return L;
}

const ParamTensor& Layout::param(const std::string& name) const {
  for (const auto& p : params)
    if (p.name == name) return p;
  throw std::invalid_argument("unknown parameter tensor: " + name);
}

const BNLayer& Layout::bn(const std::string& name) const {
  for (const auto& b : bns)
    if (b.name == name) return b;
  throw std::invalid_argument("unknown BN layer: " + name);
}

float Recipe::lr_weights(long step, int steps_per_epoch) const {
  float epoch = (float)(step + 1) / (float)steps_per_epoch;
  return ref::piecewise_linear(epoch, lr_knots, lr_values, 3) / (float)batch;
}

float Recipe::ema_rho_applied() const { return std::pow(ema_rho, (float)ema_every); }

}  // namespace net
