// CPU reference: "ghost" batch norm with the scale frozen at 1 and a trained bias.
//
// x, y: [N][HW][C] (NHWC with H*W flattened). Training: the batch is split into G = N / group
// contiguous groups of `group` images (images g*group .. g*group+group-1); each group is
// normalised with its own biased mean/variance over (group images x HW pixels):
//   y = (x - mean_g) / sqrt(var_g + eps) + bias
// Running statistics are kept per group, [G][C], PyTorch convention:
//   running_mean = (1 - momentum) * running_mean + momentum * mean_g
//   running_var  = (1 - momentum) * running_var  + momentum * var_g * n / (n - 1), n = group*HW
// Evaluation uses the running statistics averaged over the G groups.
#pragma once

namespace ref {

struct GhostBNShape {
  int N, HW, C;
  int group;  // images per group; N % group == 0
  int groups() const { return N / group; }
};

// Training forward. Writes y, and saves per-group mean and inverse std [G][C] for the backward.
// Updates running_mean / running_var [G][C] in place when they are non-null.
void ghost_bn_forward_train(const float* x, const float* bias, float* y, float* save_mean,
                            float* save_invstd, float* running_mean, float* running_var,
                            const GhostBNShape& s, float eps, float momentum);
// Evaluation forward with statistics mean/var [C] (already averaged over groups).
void ghost_bn_forward_eval(const float* x, const float* bias, const float* mean,
                           const float* var, float* y, int N, int HW, int C, float eps);
// Averages per-group running statistics [G][C] into [C].
void ghost_bn_average_groups(const float* per_group, float* avg, int G, int C);
// Backward of the training forward: dx (overwritten) and dbias (overwritten, = sum of dy).
void ghost_bn_backward(const float* dy, const float* x, const float* save_mean,
                       const float* save_invstd, float* dx, float* dbias, const GhostBNShape& s);

}  // namespace ref
