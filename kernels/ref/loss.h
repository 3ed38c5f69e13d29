// CPU reference: softmax cross-entropy with label smoothing, summed over the batch.
//
// For logits z [N][K] and labels t [N]:
//   loss_i = (1 - s) * (-log p_i[t_i]) + s * mean_k(-log p_i[k]),  p = softmax(z_i)
//   loss   = sum_i loss_i   (the recipe's s = 0.2)
// Gradient: dz_i[k] = p_i[k] - (1 - s) * [k == t_i] - s / K.
#pragma once
#include <cstdint>

namespace ref {

// Returns the summed loss; writes dlogits [N][K] when non-null; writes the number of correct
// argmax predictions to *correct when non-null.
double xent_smooth_forward_backward(const float* logits, const uint8_t* labels, int N, int K,
                                    float smoothing, float* dlogits, int* correct);

}  // namespace ref
