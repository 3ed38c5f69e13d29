// The hand-written implicit-GEMM backward passes (kernels/conv/igemm_backward.cuh) vs the CPU
// reference (ref::conv_backward_input, ref::conv_backward_weight), for every tile config:
//   - the filter transform behind the input gradient vs ref::conv_flip_transpose_weights
//     (a permutation: exact);
//   - input gradient at the recipe's shapes, batch 512: the GPU runs the whole batch, the CPU
//     covers images 0..3 and 510..511 (an input-gradient image depends on its dy image alone);
//   - weight gradient at the recipe's shapes, batch 512, against the CPU over the whole batch
//     (the sum runs over every image), with the default split-K count, one slab, and an odd
//     count; the same (config, splits) twice must give the same bits;
//   - odd shapes for both (tiny N, H != W, channel counts that are no multiple of a tile, R = 1
//     and 5, a 1x1 image), compared in full;
// plus host-only cases that need no GPU: the wgrad pixel cursor and ldmatrix.trans addressing
// against their definitions, the split-K partition, and the launchers' precondition checks.
//
// Tolerances. Inputs are fp16-rounded on both sides, so every product is exact in fp32.
// Input gradient: as the forward (at most R*R*K = 4608 fp32 terms, then one rounding to fp16:
// <= 2^-11 relative per element, ~3e-4 rms): rel. L2 <= 2e-3.
// Weight gradient: up to N*H*W = 524288 terms per output, summed in fp32 in runs of one slab's
// pixels per accumulator, then the slabs in order; the fp32 error grows like sqrt(terms) * 2^-24
// relative (~1e-4 rms at worst), far below the final fp16 rounding (~3e-4 rms): rel. L2 <= 2e-3.
// An indexing error gives O(1).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/conv/igemm_backward.cuh"
#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::download;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using kernels::ConvDesc;
using kernels::IgemmConfig;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr double kTol = 2e-3;

using gpu_test::desc_str;

ref::ConvShape shape_of(const ConvDesc& d, int images) { return {images, d.H, d.W, d.C, d.K, d.R}; }

// One backward problem: the forward's input x, its filters w, and the output gradient dy,
// fp16-rounded. x and w as in training (x uniform in [-1, 1), w in +-1/sqrt(fan_in)); dy
// uniform in +-2^-6 so that the weight-gradient sums over 524288 pixels stay well inside the
// fp16 range.
struct Problem {
  ConvDesc d;
  std::vector<float> x, w, dy;
  long x_img() const { return (long)d.H * d.W * d.C; }
  long y_img() const { return (long)d.H * d.W * d.K; }
  long w_size() const { return (long)d.K * d.R * d.R * d.C; }
};

Problem make_problem(const ConvDesc& d, uint64_t seed) {
  Problem p{d, {}, {}, {}};
  p.x = round_to_half(random_vector((long)d.N * p.x_img(), seed));
  const float bound = 1.0f / std::sqrt((float)(d.C * d.R * d.R));
  p.w = round_to_half(random_vector(p.w_size(), seed + 1, -bound, bound));
  p.dy = round_to_half(random_vector((long)d.N * p.y_img(), seed + 2, -1.0f / 64, 1.0f / 64));
  return p;
}

std::vector<float> run_dgrad(const Problem& p, const DeviceBuffer<__half>& d_dy,
                             const DeviceBuffer<__half>& d_w, IgemmConfig config) {
  auto d_dx = poisoned<__half>((size_t)p.d.N * p.x_img());
  auto d_wt = poisoned<__half>(kernels::igemm_dgrad_scratch_bytes(p.d) / sizeof(__half));
  kernels::conv_backward_data_igemm(d_dy.get(), d_w.get(), d_dx.get(), d_wt.get(), p.d, config, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(d_dx);
}

std::vector<float> run_wgrad(const Problem& p, const DeviceBuffer<__half>& d_x,
                             const DeviceBuffer<__half>& d_dy, IgemmConfig config, int splits) {
  auto d_dw = poisoned<__half>(p.w_size());
  auto d_part = poisoned<float>(kernels::igemm_wgrad_scratch_bytes(p.d, splits) / sizeof(float));
  kernels::conv_backward_filter_igemm(d_x.get(), d_dy.get(), d_dw.get(), d_part.get(), p.d, config,
                                      splits, 0);
  CUDA_CHECK(cudaDeviceSynchronize());
  return download_half(d_dw);
}

int sm_count() {
  int dev = 0, sms = 0;
  CUDA_CHECK(cudaGetDevice(&dev));
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  return sms;
}

// Input gradient at a recipe shape, batch 512; reference on images 0..3 and 510..511.
void check_dgrad_recipe(int H, int C, int K, uint64_t seed) {
  const ConvDesc d{512, H, H, C, K, 3};
  const Problem p = make_problem(d, seed);
  std::vector<float> head(4 * p.x_img()), tail(2 * p.x_img());
  ref::conv_backward_input(p.dy.data(), p.w.data(), head.data(), shape_of(d, 4));
  ref::conv_backward_input(p.dy.data() + (d.N - 2) * p.y_img(), p.w.data(), tail.data(), shape_of(d, 2));
  auto d_dy = upload_half(p.dy), d_w = upload_half(p.w);
  for (IgemmConfig config : kernels::kIgemmConfigs) {
    const auto info = kernels::igemm_config_info(config);
    INFO("dgrad config " << info.name << ", shape " << desc_str(d));
    const auto dx = run_dgrad(p, d_dy, d_w, config);
    CHECK(gpu_test::all_finite(dx));
    const double e_head = rel_l2_error(dx.data(), head.data(), 4 * p.x_img());
    const double e_tail = rel_l2_error(dx.data() + (d.N - 2) * p.x_img(), tail.data(), 2 * p.x_img());
    std::printf("igemm dgrad %-14s %s: rel_l2 images 0..3 %.2e, images 510..511 %.2e\n", info.name,
                desc_str(d).c_str(), e_head, e_tail);
    CHECK(e_head <= kTol);
    CHECK(e_tail <= kTol);
    CHECK(bitwise_equal(run_dgrad(p, d_dy, d_w, config), dx));
  }
}

// Weight gradient at a recipe shape, batch 512, against the CPU over the whole batch (computed
// once, shared by every config and split count).
void check_wgrad_recipe(int H, int C, int K, int R, uint64_t seed) {
  const ConvDesc d{512, H, H, C, K, R};
  const Problem p = make_problem(d, seed);
  std::vector<float> dw_ref(p.w_size());
  ref::conv_backward_weight(p.x.data(), p.dy.data(), dw_ref.data(), shape_of(d, d.N));
  auto d_x = upload_half(p.x), d_dy = upload_half(p.dy);
  const int sms = sm_count();
  for (IgemmConfig config : kernels::kIgemmConfigs) {
    const auto info = kernels::igemm_config_info(config);
    const int dflt = kernels::igemm_wgrad_default_splits(d, config, sms);
    for (int splits : {dflt, 1, 7}) {
      INFO("wgrad config " << info.name << ", shape " << desc_str(d) << ", splits " << splits);
      const auto dw = run_wgrad(p, d_x, d_dy, config, splits);
      CHECK(gpu_test::all_finite(dw));
      const double e = rel_l2_error(dw.data(), dw_ref.data(), p.w_size());
      std::printf("igemm wgrad %-14s %s splits %d (launched %d): rel_l2 %.2e\n", info.name,
                  desc_str(d).c_str(), splits, kernels::igemm_wgrad_split(d, config, splits).splits, e);
      CHECK(e <= kTol);
      if (splits == dflt) CHECK(bitwise_equal(run_wgrad(p, d_x, d_dy, config, splits), dw));
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------ host-only checks

// PixelCursor (the wgrad B loader's row position) vs the definition p -> (oh, ow), walking
// each start pixel in BlockK steps past the end of the batch, as the loader does. Exact.
TEST_CASE("igemm wgrad pixel cursor matches the definition (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::PixelCursor;
  const int dims[][3] = {{3, 5, 7}, {2, 4, 4}, {1, 1, 1}, {4, 8, 8}, {2, 32, 32}, {3, 3, 2}, {2, 9, 100}, {3, 70, 3}};
  long mismatches = 0, visited = 0;
  for (const auto& hw : dims) {
    const int N = hw[0], H = hw[1], W = hw[2], P = N * H * W;
    for (int step : {32, 64})
      for (int start = 0; start < std::min(P, 2 * step); start++) {
        PixelCursor c, fast;  // advanced by the loop, and by a precomputed PixelStep
        c.init(start, H, W);
        fast.init(start, H, W);
        const auto st = kernels::igemm_detail::PixelStep::of(step, H, W);
        for (int px = start; px < P + step; px += step, c.advance(step, H, W), fast.advance(st, H, W)) {
          if (c.oh != (px / W) % H || c.ow != px % W) mismatches++;
          if (fast.oh != c.oh || fast.ow != c.ow) mismatches++;
          visited++;
        }
      }
  }
  CHECK(visited > 1000);
  CHECK(mismatches == 0);
}

// The wgrad kernel's ldmatrix.trans addresses, pushed through the PTX semantics of ldmatrix
// .trans and checked against mma.m16n8k16's fragment layout (docs in kernels/conv/ptx_sm80.cuh).
// Shared memory holds A as S_A[k][m] and B as S_B[k][n] (pixel-major); each element encodes
// its (k, col) so a misplaced row or column shows. Exact.
TEST_CASE("igemm wgrad ldmatrix.trans addressing yields the mma fragments (host)", "[gpu][igemm]") {
  using kernels::igemm_detail::wgrad_a_ldsm;
  using kernels::igemm_detail::wgrad_b_ldsm;
  auto code = [](int k, int col) { return k * 100 + col; };  // S[k][col] of a 16 x 16 tile
  // ldmatrix.x4.trans: lane l receives, of matrix j, S_j[2t][g] and S_j[2t + 1][g] (g = l / 4,
  // t = l % 4), where row i of S_j starts at the address that lane 8j + i supplied.
  auto ldsm_trans = [&](auto coord_of, int lane, int j, int half) {
    const int g = lane / 4, t = lane % 4;
    const auto row = coord_of(8 * j + 2 * t + half);  // the lane that addressed row 2t + half
    return code(row.k, row.col + g);
  };
  long bad = 0;
  for (int lane = 0; lane < 32; lane++) {
    const int g = lane / 4, t = lane % 4;
    for (int half = 0; half < 2; half++) {
      // A fragment: a[0] (m g, k 2t..), a[1] (m g + 8), a[2] (k + 8), a[3] (m + 8, k + 8);
      // A[m][k] = S_A[k][m].
      for (int j = 0; j < 4; j++) {
        const int m = g + (j & 1) * 8, k = 2 * t + half + (j >> 1) * 8;
        if (ldsm_trans(wgrad_a_ldsm, lane, j, half) != code(k, m)) bad++;
      }
      // B fragments of n8 tiles 0 and 1: b[jn][0] (k 2t.., n g), b[jn][1] (k + 8);
      // registers t[0..3] = b[0][0], b[0][1], b[1][0], b[1][1]; B[k][n] = S_B[k][n].
      for (int j = 0; j < 4; j++) {
        const int n = g + (j >> 1) * 8, k = 2 * t + half + (j & 1) * 8;
        if (ldsm_trans(wgrad_b_ldsm, lane, j, half) != code(k, n)) bad++;
      }
    }
  }
  CHECK(bad == 0);
}

// The split-K partition: every pixel slice in exactly one slab, no empty slab, never more slabs
// than asked for; and the default split count fills the GPU without starving a slab.
TEST_CASE("igemm wgrad split-K partition (host)", "[gpu][igemm]") {
  const ConvDesc shapes[] = {{512, 32, 32, 64, 128, 3}, {512, 4, 4, 512, 512, 3}, {3, 5, 7, 8, 24, 3},
                             {1, 1, 1, 8, 8, 3}, {512, 32, 32, 32, 64, 1}};
  for (const ConvDesc& d : shapes)
    for (IgemmConfig config : kernels::kIgemmConfigs) {
      const auto info = kernels::igemm_config_info(config);
      const long slices = ((long)d.N * d.H * d.W + info.block_k - 1) / info.block_k;
      for (int want : {0, 1, 2, 3, 7, 64, 1000, 65535}) {
        INFO(desc_str(d) << " " << info.name << " splits " << want);
        const auto s = kernels::igemm_wgrad_split(d, config, want);
        CHECK(s.splits >= 1);
        CHECK(s.splits <= std::max(want, 1));
        CHECK((long)s.splits * s.slices_per_split >= slices);       // covers every slice
        CHECK((long)(s.splits - 1) * s.slices_per_split < slices);  // the last slab is not empty
        CHECK(kernels::igemm_wgrad_scratch_bytes(d, want) >=
              (size_t)s.splits * d.K * d.R * d.R * d.C * sizeof(float));
      }
      for (int sms : {1, 108, 132}) {
        const int dflt = kernels::igemm_wgrad_default_splits(d, config, sms);
        CHECK(dflt >= 1);
        CHECK((dflt == 1 || slices / dflt >= 16));
      }
    }
}

// The stream-K partition (kernels::WgradStreamK): every (tile, slice) in exactly one segment,
// the runs equal but the last (never empty), a run's segments in tile order and non-empty up to
// the first empty one, within the loop bound; each tile's segments in slots 0 .. runs_of - 1,
// one each, in slice order (what the reduction's order rests on), and the scratch holds them.
TEST_CASE("wgrad stream-K partition (host)", "[gpu][igemm][streamk]") {
  const ConvDesc shapes[] = {{512, 32, 32, 64, 128, 3}, {512, 4, 4, 512, 512, 3}, {512, 8, 8, 256, 512, 3},
                             {3, 5, 7, 8, 24, 3},       {1, 1, 1, 8, 8, 3},       {512, 32, 32, 32, 64, 1}};
  const int blocks[][2] = {{128, 128}, {128, 256}, {256, 128}, {128, 64}};
  for (const ConvDesc& d : shapes)
    for (const auto& b : blocks)
      for (int workers : {1, 2, 7, 132, 264, 1000, 1 << 20}) {
        INFO(desc_str(d) << " tile " << b[0] << " x " << b[1] << ", " << workers << " workers");
        const kernels::WgradStreamK p = kernels::wgrad_streamk(d, b[0], b[1], 64, workers);
        const long slices = ((long)d.N * d.H * d.W + 63) / 64;
        const long tiles_n = ((long)d.R * d.R * d.C + b[1] - 1) / b[1], tiles = (d.K + b[0] - 1) / b[0] * tiles_n;
        REQUIRE(p.slices == slices);
        REQUIRE(p.tiles_n == tiles_n);
        REQUIRE(p.tiles == tiles);
        CHECK(p.workers >= 1);
        CHECK(p.workers <= workers);
        CHECK((long)p.workers * p.run >= p.total());       // every slice
        CHECK((long)(p.workers - 1) * p.run < p.total());  // the last run is not empty
        std::vector<int> seen(p.total(), 0);
        std::vector<std::vector<int>> slot_first(tiles);  // tile -> first slice of each slot
        for (auto& v : slot_first) v.assign(p.slots, -1);
        long bad = 0;
        for (int w = 0; w < p.workers; w++) {
          long covered = 0;
          int j = 0, last_tile = -1;
          for (; j < p.segments; j++) {
            const kernels::WgradSegment sg = p.segment(w, j);
            if (sg.k_tiles == 0) break;
            bad += sg.tile <= last_tile || sg.tile >= tiles || sg.slice0 < 0 || sg.slice0 + sg.k_tiles > slices;
            bad += sg.slot < 0 || sg.slot >= p.runs_of(sg.tile) || p.runs_of(sg.tile) > p.slots;
            if (bad) break;
            last_tile = sg.tile;
            for (int k = 0; k < sg.k_tiles; k++) seen[(long)sg.tile * slices + sg.slice0 + k]++;
            bad += slot_first[sg.tile][sg.slot] != -1;  // one segment per slot
            slot_first[sg.tile][sg.slot] = sg.slice0;
            covered += sg.k_tiles;
          }
          for (int k = j; k < p.segments + 2; k++)
            bad += p.segment(w, k).k_tiles != 0;  // none after the first empty one
          const long want = std::min<long>(p.run, p.total() - (long)w * p.run);
          bad += covered != want;
        }
        CHECK(bad == 0);
        long wrong = 0;
        for (int v : seen) wrong += v != 1;
        CHECK(wrong == 0);
        for (long t = 0; t < tiles; t++) {
          const int runs = p.runs_of((int)t);
          for (int z = 0; z < p.slots; z++) {
            const bool used = slot_first[t][z] != -1;
            wrong += used != (z < runs);
            if (z > 0 && z < runs) wrong += slot_first[t][z] <= slot_first[t][z - 1];  // in slice order
          }
          wrong += slot_first[t][0] != 0;  // slot 0 starts the tile
        }
        CHECK(wrong == 0);
        CHECK(kernels::wgrad_streamk_scratch_bytes(d, p) == (size_t)p.slots * d.K * d.R * d.R * d.C * sizeof(float));
      }
}

// The launchers reject what the kernels cannot do before touching the GPU (the pointers below
// are never dereferenced).
TEST_CASE("igemm backward launchers check their preconditions (host)", "[gpu][igemm]") {
  auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
  __half* a = fake(0x100000);
  __half* b = fake(0x200000);
  __half* c = fake(0x300000);
  __half* wt = fake(0x400000);
  float* part = reinterpret_cast<float*>(0x500000);
  const ConvDesc ok{2, 4, 4, 16, 16, 3};
  const IgemmConfig cfg = IgemmConfig::k64x64x32s4;
  auto dgrad = [&](const ConvDesc& d, __half* scratch) {
    kernels::conv_backward_data_igemm(a, b, c, scratch, d, cfg, 0);
  };
  CHECK_THROWS_AS(dgrad(ConvDesc{2, 4, 4, 12, 16, 3}, wt), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(dgrad(ConvDesc{2, 4, 4, 16, 20, 3}, wt), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(dgrad(ConvDesc{2, 4, 4, 16, 16, 2}, wt), std::invalid_argument);  // even R
  CHECK_THROWS_AS(dgrad(ok, fake(0x400008)), std::invalid_argument);                // scratch align
  CHECK_THROWS_AS(dgrad(ok, nullptr), std::invalid_argument);
  CHECK_THROWS_AS(kernels::conv_flip_transpose_weights(a, a + 8, ok, 0), std::invalid_argument);  // overlap
  CHECK(kernels::igemm_dgrad_scratch_bytes(ConvDesc{1, 1, 1, 8, 24, 3}) == 8 * 24 * 9 * 2);

  auto wgrad = [&](const ConvDesc& d, const __half* x, int splits) {
    kernels::conv_backward_filter_igemm(x, b, c, part, d, cfg, splits, 0);
  };
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 12, 16, 3}, a, 1), std::invalid_argument);  // C % 8
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 20, 3}, a, 1), std::invalid_argument);  // K % 8
  CHECK_THROWS_AS(wgrad(ConvDesc{2, 4, 4, 16, 16, 4}, a, 1), std::invalid_argument);  // even R
  CHECK_THROWS_AS(wgrad(ConvDesc{0, 4, 4, 16, 16, 3}, a, 1), std::invalid_argument);  // empty
  CHECK_THROWS_AS(wgrad(ok, fake(0x100004), 1), std::invalid_argument);               // x align
  CHECK_THROWS_AS(wgrad(ok, nullptr, 1), std::invalid_argument);
  CHECK_THROWS_AS(wgrad(ok, a, 0), std::invalid_argument);       // no slab
  CHECK_THROWS_AS(wgrad(ok, a, 65536), std::invalid_argument);   // grid z
  CHECK_THROWS_AS(wgrad(ConvDesc{1 << 16, 64, 64, 8, 8, 1}, a, 1), std::invalid_argument);  // 2^31
  CHECK_THROWS_AS(kernels::conv_backward_filter_igemm(a, b, c, part, ok, static_cast<IgemmConfig>(99),
                                                      1, 0),
                  std::invalid_argument);
}

// --------------------------------------------------------------------- filter transform (GPU)

TEST_CASE("igemm dgrad filter transform vs reference", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const ConvDesc shapes[] = {{1, 1, 1, 64, 128, 3}, {1, 1, 1, 512, 512, 3}, {1, 1, 1, 40, 24, 5},
                             {1, 1, 1, 32, 64, 1},  {1, 1, 1, 8, 136, 3}};
  uint64_t seed = 500;
  for (const ConvDesc& d : shapes) {
    INFO(desc_str(d));
    const auto w = round_to_half(random_vector((long)d.K * d.R * d.R * d.C, seed++));
    std::vector<float> wt_ref(w.size());
    ref::conv_flip_transpose_weights(w.data(), wt_ref.data(), shape_of(d, 1));
    auto d_w = upload_half(w);
    auto d_wt = poisoned<__half>(w.size());
    kernels::conv_flip_transpose_weights(d_w.get(), d_wt.get(), d, 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    CHECK(download_half(d_wt) == wt_ref);  // a permutation of fp16 values: exact
  }
}

// ---------------------------------------------------------------- recipe shapes (GPU), dgrad

TEST_CASE("igemm dgrad layer1 64->128 3x3 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_dgrad_recipe(32, 64, 128, 610);
}
TEST_CASE("igemm dgrad layer1 res 128->128 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_dgrad_recipe(16, 128, 128, 620);
}
TEST_CASE("igemm dgrad layer2 128->256 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_dgrad_recipe(16, 128, 256, 630);
}
TEST_CASE("igemm dgrad layer3 256->512 3x3 @8, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_dgrad_recipe(8, 256, 512, 640);
}
TEST_CASE("igemm dgrad layer3 res 512->512 3x3 @4, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_dgrad_recipe(4, 512, 512, 650);
}

// ---------------------------------------------------------------- recipe shapes (GPU), wgrad

TEST_CASE("igemm wgrad prep 32->64 1x1 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(32, 32, 64, 1, 700);
}
TEST_CASE("igemm wgrad layer1 64->128 3x3 @32, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(32, 64, 128, 3, 710);
}
TEST_CASE("igemm wgrad layer1 res 128->128 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(16, 128, 128, 3, 720);
}
TEST_CASE("igemm wgrad layer2 128->256 3x3 @16, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(16, 128, 256, 3, 730);
}
TEST_CASE("igemm wgrad layer3 256->512 3x3 @8, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(8, 256, 512, 3, 740);
}
TEST_CASE("igemm wgrad layer3 res 512->512 3x3 @4, batch 512", "[gpu][igemm][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_wgrad_recipe(4, 512, 512, 3, 750);
}

// ---------------------------------------------------------------------------- odd shapes (GPU)

// Partial tiles everywhere (K = 24, 40, 72, 136; R*R*C = 72, 200; N*H*W = 75, 4), C < BlockK,
// R = 1 and 5, a 1x1 image where every 3x3 tap but the centre is padding. Compared in full.
TEST_CASE("igemm dgrad and wgrad odd shapes vs reference", "[gpu][igemm]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  const ConvDesc shapes[] = {{3, 5, 5, 8, 24, 3},  {2, 6, 9, 24, 40, 3}, {5, 3, 3, 16, 8, 1},
                             {2, 6, 6, 8, 16, 5},  {4, 1, 1, 8, 8, 3},   {4, 7, 7, 40, 72, 3},
                             {1, 11, 13, 8, 136, 3}};
  uint64_t seed = 800;
  for (const ConvDesc& d : shapes) {
    const Problem p = make_problem(d, seed += 10);
    std::vector<float> dx_ref((long)d.N * p.x_img()), dw_ref(p.w_size());
    ref::conv_backward_input(p.dy.data(), p.w.data(), dx_ref.data(), shape_of(d, d.N));
    ref::conv_backward_weight(p.x.data(), p.dy.data(), dw_ref.data(), shape_of(d, d.N));
    auto d_x = upload_half(p.x), d_w = upload_half(p.w), d_dy = upload_half(p.dy);
    for (IgemmConfig config : kernels::kIgemmConfigs) {
      INFO("config " << kernels::igemm_config_info(config).name << ", shape " << desc_str(d));
      const auto dx = run_dgrad(p, d_dy, d_w, config);
      CHECK(gpu_test::all_finite(dx));
      CHECK(rel_l2_error(dx.data(), dx_ref.data(), (long)dx.size()) <= kTol);
      for (int splits : {1, 2, 5}) {
        INFO("splits " << splits);
        const auto dw = run_wgrad(p, d_x, d_dy, config, splits);
        CHECK(gpu_test::all_finite(dw));
        CHECK(rel_l2_error(dw.data(), dw_ref.data(), (long)dw.size()) <= kTol);
      }
    }
  }
}
