// The wgmma convolution checks of tests/wgmma_conv_gpu_test.cu for other test files (the halo
// tiles' tests/wgmma_halo_gpu_test.cu), which run a config list through them in their own
// process: CPU-reference inputs, the launchers, rel. L2 against kernels/ref/conv.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/conv/wgmma_conv.cuh"
#include "tests/gpu_test_util.h"

namespace wgmma_test {

using gpu_test::desc_str;  // tests/gpu_test_util.h

// Row i of a TMA copy as it landed in shared memory (the probes write it back raw): channel c of
// row i sits at element sw128_offset(i, c / 8) / 2 + c % 8 of the raw bytes (the 128-byte
// swizzle the maps ask for).
inline float landed(const std::vector<float>& raw, int i, int c) {
  return raw[kernels::wgmma_detail::sw128_offset(i, c / 8) / 2 + c % 8];
}

// Forward (and with dgrad the input gradient) at a recipe shape, batch 512, H x H images, C ->
// K channels (the first real_channels of C nonzero), R x R filters: images 0..3 and 510..511
// against the CPU, and the forward twice bitwise equal, for each config of `configs` whose
// launchers take the shape.
void recipe_vs_reference(int H, int C, int K, int R, int real_channels, bool dgrad, uint64_t seed,
                         const std::vector<kernels::WgmmaConfig>& configs);

// All three passes of shape d against the CPU in full, for each config of `configs` (a pass a
// config refuses must throw std::invalid_argument: the image rule, the weight gradient of a
// config without one).
void odd_shape_vs_reference(const kernels::ConvDesc& d, uint64_t seed, const std::vector<kernels::WgmmaConfig>& configs);

// The fused-epilogue launchers (pool, statistics, BN-backward sums) refuse `config` by name
// ("no fused epilogues") before anything else, on any machine (Catch2 checks).
void check_refuses_fused_epilogues(kernels::WgmmaConfig config);

}  // namespace wgmma_test
