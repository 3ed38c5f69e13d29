// CPU reference of the label-smoothed softmax cross-entropy (see loss.h for the formulas).
#include "kernels/ref/loss.h"

#include <cmath>

namespace ref {

double xent_smooth_forward_backward(const float* logits, const uint8_t* labels, int N, int K,
                                    float smoothing, float* dlogits, int* correct) {
  double total = 0.0;
  int num_correct = 0;
  for (int i = 0; i < N; ++i) {
    const float* z = logits + (long)i * K;
    const int t = labels[i];
    // Row maximum: subtracted before exp for stability; its index is the prediction
    // (first index on ties).
    int argmax = 0;
    for (int k = 1; k < K; ++k)
      if (z[k] > z[argmax]) argmax = k;
    const double zmax = z[argmax];
    double sum_exp = 0.0, sum_z = 0.0;
    for (int k = 0; k < K; ++k) {
      sum_exp += std::exp((double)z[k] - zmax);
      sum_z += z[k];
    }
    const double lse = zmax + std::log(sum_exp);  // -log p[k] = lse - z[k]
    total += (1.0 - smoothing) * (lse - z[t]) + smoothing * (lse - sum_z / K);
    if (argmax == t) ++num_correct;
    if (dlogits) {
      float* dz = dlogits + (long)i * K;
      for (int k = 0; k < K; ++k) {
        const double p = std::exp((double)z[k] - lse);
        dz[k] = (float)(p - (k == t ? 1.0 - smoothing : 0.0) - (double)smoothing / K);
      }
    }
  }
  if (correct) *correct = num_correct;
  return total;
}

}  // namespace ref
