// The halo tile (kernels/conv/wgmma_halo.cu, WgmmaConfig::k128x128x64PpHalo): its geometry on the
// host, against the definition of the convolution's operand, through a model of the tiled TMA
// box as the PTX ISA describes it; then, on a Hopper GPU, the copy itself against that model. The
// convolution against the CPU reference runs with every other wgmma config in
// tests/wgmma_conv_gpu_test.cu (recipe shapes, odd shapes, and the "[tma]" test of the TMA tiles).
#include <catch2/catch.hpp>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/conv/wgmma_conv.cuh"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using kernels::ConvDesc;
using kernels::wgmma_detail::halo_fits;
using kernels::wgmma_detail::halo_geometry;
using kernels::wgmma_detail::halo_tap_row;
using kernels::wgmma_detail::HaloGeometry;
using testing_support::random_vector;

namespace {

std::string shape_str(const ConvDesc& d) {
  return std::to_string(d.N) + "x" + std::to_string(d.H) + "x" + std::to_string(d.W) + "x" + std::to_string(d.C) +
         " R" + std::to_string(d.R);
}

// A tiled TMA box of the 4-D tensor x (C, W, H, N) as it lands: box_h * box_w rows of 64
// channels, w fastest, row j holding channels c .. c + 63 of pixel (n, h + j / box_w,
// w + j % box_w), zeros where that lies outside x (negative coordinates included).
std::vector<float> tiled_box_model(const std::vector<float>& x, const ConvDesc& d, int box_w, int box_h, int c, int w,
                                   int h, int n) {
  std::vector<float> box((size_t)box_w * box_h * 64, 0.0f);
  for (int j = 0; j < box_w * box_h; j++) {
    const int ih = h + j / box_w, iw = w + j % box_w;
    if (n < 0 || n >= d.N || ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) continue;
    for (int k = 0; k < 64; k++)
      if (c + k < d.C) box[(size_t)j * 64 + k] = x[(((size_t)n * d.H + ih) * d.W + iw) * d.C + c + k];
  }
  return box;
}

}  // namespace

// For every tile of every image, the buffer the tile's copy fills (the box model at the tile's
// coordinates) holds, at row halo_tap_row(q0, r, s) + m, exactly what the convolution's operand
// A has for position q0 + m and filter tap (r, s) where q0 + m is an output pixel (the input
// pixel (oh + r - pad, ow + s - pad), zeros outside the image); every row any tap reads lies
// inside the copy; the tiles cover each output pixel exactly once. Shapes: the recipe's images
// with R = 3 and 1, odd sizes, R = 5, a 1x1 image.
TEST_CASE("wgmma halo tile geometry gives the convolution's operand (host model)", "[gpu][wgmma]") {
  const ConvDesc shapes[] = {{2, 32, 32, 64, 8, 3}, {2, 16, 16, 64, 8, 3}, {3, 8, 8, 64, 8, 3},   {5, 4, 4, 64, 8, 3},
                             {2, 32, 32, 64, 8, 1}, {2, 5, 7, 64, 8, 3},   {2, 11, 13, 64, 8, 3}, {2, 6, 6, 64, 8, 5},
                             {3, 1, 1, 64, 8, 3},   {2, 3, 3, 64, 8, 1}};
  for (const ConvDesc& d : shapes) {
    INFO(shape_str(d));
    REQUIRE(halo_fits(d.H, d.W, d.R));
    const HaloGeometry g = halo_geometry(d.H, d.W, d.R);
    CHECK(g.rows() <= kernels::wgmma_detail::kHaloMaxRows);
    std::vector<float> x((size_t)d.N * d.H * d.W * d.C);
    for (size_t i = 0; i < x.size(); i++) x[i] = (float)(i + 1);  // distinct, never zero
    auto operand = [&](int n, int ih, int iw, int c) -> float {   // x with its zero padding
      if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) return 0.0f;
      return x[(((size_t)n * d.H + ih) * d.W + iw) * d.C + c];
    };
    std::vector<int> covered((size_t)d.N * d.H * d.W, 0);
    long bad = 0, outside = 0, checked = 0;
    for (int n = 0; n < d.N; n++)
      for (int t = 0; t < g.tiles; t++) {
        const int q0 = t * kernels::wgmma_detail::kHaloTileRows, ph0 = q0 / g.wp;
        for (int m = 0; m < kernels::wgmma_detail::kHaloTileRows; m++) {
          const int q = q0 + m, oh = q / g.wp, ow = q % g.wp;
          if (ow < d.W && oh < d.H) covered[((size_t)n * d.H + oh) * d.W + ow]++;
        }
        for (int c0 : {0, d.C - 64}) {
          const auto box = tiled_box_model(x, d, g.wp, g.box_rows, c0, -g.pad, ph0 - g.pad, n);
          for (int m = 0; m < kernels::wgmma_detail::kHaloTileRows; m++) {
            const int q = q0 + m, oh = q / g.wp, ow = q % g.wp;
            const bool pixel = ow < d.W && oh < d.H;
            for (int r = 0; r < d.R; r++)
              for (int s = 0; s < d.R; s++) {
                const int row = halo_tap_row(g, q0, r, s) + m;
                if (row < 0 || row >= g.rows()) {
                  outside++;
                  continue;
                }
                if (!pixel) continue;
                for (int c = 0; c < 64; c++, checked++)
                  if (box[(size_t)row * 64 + c] != operand(n, oh + r - g.pad, ow + s - g.pad, c0 + c)) bad++;
              }
          }
        }
      }
    CHECK(checked > 0);
    CHECK(bad == 0);
    CHECK(outside == 0);
    long not_once = 0;
    for (int k : covered) not_once += k != 1;
    CHECK(not_once == 0);
  }
}

// The recipe's 3x3 layers fit (32 x 32: 7 rows of 34 = 238 buffer rows), the tile count and its
// wasted positions are what docs/conv_kernels.md says (32 x 32: 9 tiles of 128 for 1024 pixels),
// and a copy that would overflow the buffer is refused (R = 5 at 32 x 32: 9 rows of 36).
TEST_CASE("wgmma halo tile geometry: recipe sizes and limits (host)", "[gpu][wgmma]") {
  const HaloGeometry g32 = halo_geometry(32, 32, 3);
  CHECK(g32.pad == 1);
  CHECK(g32.wp == 34);
  CHECK(g32.tiles == 9);
  CHECK(g32.box_rows == 7);
  CHECK(g32.rows() == 238);
  for (int hw : {32, 16, 8, 4}) {
    INFO(hw << "x" << hw);
    CHECK(halo_fits(hw, hw, 3));
    CHECK(halo_fits(hw, hw, 1));
  }
  CHECK(halo_geometry(16, 16, 3).tiles == 3);  // 286 positions up to the last pixel
  CHECK_FALSE(halo_fits(32, 32, 5));
  CHECK_FALSE(halo_fits(300, 300, 1));  // a row wider than a box
  CHECK_FALSE(halo_fits(8, 8, 2));      // even filters have no "same" padding
  CHECK(kernels::wgmma_config_takes_image(kernels::WgmmaConfig::k128x128x64PpHalo, 32, 32, 3));
  CHECK_FALSE(kernels::wgmma_config_takes_image(kernels::WgmmaConfig::k128x128x64PpHalo, 32, 32, 5));
  CHECK(kernels::wgmma_config_channel_multiple(kernels::WgmmaConfig::k128x128x64PpHalo) == 64);
  CHECK_FALSE(kernels::wgmma_config_weight_gradient(kernels::WgmmaConfig::k128x128x64PpHalo));
  CHECK_FALSE(kernels::wgmma_config_fused_epilogues(kernels::WgmmaConfig::k128x128x64PpHalo));
}

// The halo tile's launchers refuse what it does not run, naming why, before the device (so on
// any machine): C or K (the input gradient gathers dy) not a multiple of 64, an image whose
// rows overflow the buffer, the weight gradient and the fused epilogues; and the copy probe
// checks its box.
TEST_CASE("wgmma halo tile launchers check their preconditions (host)", "[gpu][wgmma]") {
  for (const kernels::WgmmaConfig halo :
       {kernels::WgmmaConfig::k128x128x64PpHalo, kernels::WgmmaConfig::k128x64x64PpHalo}) {
    INFO(kernels::wgmma_config_info(halo).name);
    auto fake = [](uintptr_t a) { return reinterpret_cast<__half*>(a); };
    float* f = reinterpret_cast<float*>(0x50000);
    CHECK_THROWS_WITH(
        kernels::conv_forward_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), ConvDesc{2, 4, 4, 32, 64, 3}, halo, 0),
        Catch::Contains("multiple of 64"));
    CHECK_THROWS_WITH(kernels::conv_backward_data_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), fake(0x40000),
                                                        ConvDesc{2, 4, 4, 64, 32, 3}, halo, 0),
                      Catch::Contains("multiple of 64"));
    CHECK_THROWS_WITH(kernels::conv_forward_wgmma(fake(0x10000), fake(0x20000), fake(0x30000),
                                                  ConvDesc{2, 32, 32, 64, 64, 5}, halo, 0),
                      Catch::Contains("exceed its buffer"));
    CHECK_THROWS_WITH(kernels::conv_backward_filter_wgmma(fake(0x10000), fake(0x20000), fake(0x30000), f,
                                                          ConvDesc{2, 4, 4, 64, 64, 3}, halo, 1, 0),
                      Catch::Contains("no weight gradient"));
    CHECK_THROWS_WITH(kernels::conv_forward_wgmma_pool(fake(0x10000), fake(0x20000), fake(0x30000), nullptr,
                                                       ConvDesc{2, 4, 4, 64, 64, 3}, halo, nullptr, 0),
                      Catch::Contains("no fused epilogues"));
    CHECK_THROWS_WITH(kernels::conv_forward_wgmma_stats(fake(0x10000), fake(0x20000), fake(0x30000),
                                                        ConvDesc{4, 8, 8, 64, 64, 3}, halo, {f, f + 64, f + 128, 2}, 0),
                      Catch::Contains("no fused epilogues"));
    CHECK_THROWS_WITH(
        kernels::conv_backward_data_wgmma_bn_sums(fake(0x10000), fake(0x20000), fake(0x30000), fake(0x40000),
                                                  ConvDesc{4, 8, 8, 64, 64, 3}, halo, {}, 0),
        Catch::Contains("no fused epilogues"));
    CHECK(kernels::wgmma_wgrad_default_splits(ConvDesc{512, 32, 32, 64, 128, 3}, halo, 132) == 1);
    CHECK_THROWS_WITH(kernels::wgmma_detail::tma_halo_probe(fake(0x10000), ConvDesc{2, 32, 32, 64, 64, 3}, 34, 8, 0, -1,
                                                            -1, 0, fake(0x20000), 0),
                      Catch::Contains("box_w"));
    const auto info = kernels::wgmma_config_info(halo);
    CHECK(info.threads == 384);
    CHECK(info.smem_bytes <= 227 * 1024);
    CHECK(kernels::wgmma_config_halo(halo));
  }
  CHECK(std::string(kernels::wgmma_config_info(kernels::WgmmaConfig::k128x128x64PpHalo).name) ==
        "wgmma_128x128x64_pp_halo");
  CHECK(kernels::wgmma_config_info(kernels::WgmmaConfig::k128x128x64PpHalo).block_n == 128);
  CHECK(std::string(kernels::wgmma_config_info(kernels::WgmmaConfig::k128x64x64PpHalo).name) ==
        "wgmma_128x64x64_pp_halo");
  CHECK(kernels::wgmma_config_info(kernels::WgmmaConfig::k128x64x64PpHalo).block_n == 64);
}

// The halo tile's copy on the GPU (tma_halo_probe: the map and the copy instruction the tile
// uses) against the box model, unswizzled and compared exactly: boxes starting at negative w and
// h (the padding), in the middle, running past the last row, at a later channel slice and image.
TEST_CASE("wgmma TMA halo copy lands as the model says", "[gpu][wgmma][tma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {{2, 32, 32, 128, 8, 3}, {3, 4, 4, 64, 8, 3}, {2, 1, 1, 64, 8, 3}, {2, 11, 13, 64, 8, 5}};
  uint64_t seed = 1500;
  for (const ConvDesc& d : shapes) {
    const std::vector<float> x = round_to_half(random_vector((long)d.N * d.H * d.W * d.C, seed++));
    const auto d_x = upload_half(x);
    const HaloGeometry g = halo_geometry(d.H, d.W, d.R);
    const int last_ph0 = ((g.tiles - 1) * kernels::wgmma_detail::kHaloTileRows) / g.wp;
    for (int ph0 : {0, last_ph0 / 2, last_ph0})
      for (int n : {0, d.N - 1})
        for (int c : {0, d.C - 64}) {
          const int w = -g.pad, h = ph0 - g.pad;
          INFO(shape_str(d) << ": box 64 x " << g.wp << " x " << g.box_rows << " at (c " << c << ", w " << w << ", h "
                            << h << ", n " << n << ")");
          auto out = poisoned<__half>((size_t)g.rows() * 64);
          kernels::wgmma_detail::tma_halo_probe(d_x.get(), d, g.wp, g.box_rows, c, w, h, n, out.get(), 0);
          CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> raw = download_half(out);
          const std::vector<float> model = tiled_box_model(x, d, g.wp, g.box_rows, c, w, h, n);
          int bad_rows = 0, first_bad = -1;
          for (int i = 0; i < g.rows(); i++) {
            bool ok = true;
            for (int k = 0; k < 64; k++)
              ok = ok && raw[kernels::wgmma_detail::sw128_offset(i, k / 8) / 2 + k % 8] == model[(size_t)i * 64 + k];
            if (!ok && bad_rows++ == 0) first_bad = i;
          }
          INFO("first differing row " << first_bad << " (h " << h + first_bad / g.wp << ", w " << w + first_bad % g.wp
                                      << ")");
          CHECK(bad_rows == 0);
        }
  }
}
