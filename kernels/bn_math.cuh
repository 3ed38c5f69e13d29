// The per-value arithmetic of the BN + CELU backward, shared by kernels/bn.cu and the conv
// epilogue that accumulates the BN backward's sums (kernels/conv/conv_epilogue.cuh), so both
// compute bitwise the same dz and xhat for a value.
//
// Each rounding is explicit (__fmul_rn ...). A plain `a * b + c` lets ptxas contract it into
// one fma, and it decides per kernel (by register pressure: a value the compiler recomputes
// has one use, and only then is it fused). The H100 run found the 8-channel backward's argmax
// and recompute paths disagreeing in the last bit of a few dx values; with explicit rounding
// every kernel computes the same value.
//   xhat = (v - mean) * invstd          (the normalised value)
//   celu input = xhat + bias
//   dz = dout * celu'(xhat + bias)
//   dp = invstd * (dz - sum(dz) / n - xhat * sum(dz * xhat) / n)  (the BN backward, per value)
#pragma once
#include "kernels/common.cuh"

namespace kernels {

__device__ __forceinline__ float bn_xhat(float v, float mean, float invstd) {
  return __fmul_rn(__fsub_rn(v, mean), invstd);
}
__device__ __forceinline__ float bn_dz(float dout, float xhat, float bias, float alpha) {
  return __fmul_rn(dout, celu_grad(__fadd_rn(xhat, bias), alpha));
}
__device__ __forceinline__ float bn_dp(float invstd, float dz, float xhat, float sum_dz,
                                       float sum_dzx, float inv_n) {
  return __fmul_rn(invstd, __fsub_rn(__fsub_rn(dz, __fmul_rn(sum_dz, inv_n)),
                                     __fmul_rn(__fmul_rn(xhat, sum_dzx), inv_n)));
}

}  // namespace kernels
