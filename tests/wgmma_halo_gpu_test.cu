// The halo tiles (kernels/conv/wgmma_halo.cu, the configs wgmma_config_halo names):
// their geometry on the host, against the definition of the convolution's operand, through a
// model of the tiled TMA box as the PTX ISA describes it; their launchers' checks; then, on a
// Hopper GPU, the copy against that model and the tiles against the CPU reference (through
// tests/wgmma_conv_gpu_test.cu's checks, wgmma_test_util.h) on the recipe's and odd shapes. In
// a file, so a process, of their own (tools/gpu_check.sh: the "halo" shard; the probes step runs
// "[tma_halo]" alone): a kernel that traps takes only this file's tests with it.
#include <catch2/catch.hpp>
#include <cstdint>
#include <iterator>
#include <string>
#include <vector>

#include "kernels/conv/wgmma_conv.cuh"
#include "kernels/conv/wgmma_halo.cuh"  // halo_tile_info (the launchers' tile lookup)
#include "tests/gpu_test_util.h"
#include "tests/support.h"
#include "tests/wgmma_test_util.h"

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

// A tiled TMA box of the 4-D tensor x (C, W, H, N) as it lands: box_n * box_h * box_w rows of
// 64 channels, w fastest, then h, then the image: row j holds channels c .. c + 63 of pixel
// (n + j / (box_h box_w), h + (j / box_w) % box_h, w + j % box_w), zeros where that lies
// outside x (negative coordinates and images past the last included).
std::vector<float> tiled_box_model(const std::vector<float>& x, const ConvDesc& d, int box_w, int box_h, int box_n,
                                   int c, int w, int h, int n) {
  std::vector<float> box((size_t)box_w * box_h * box_n * 64, 0.0f);
  for (int j = 0; j < box_w * box_h * box_n; j++) {
    const int in = n + j / (box_w * box_h), ih = h + (j / box_w) % box_h, iw = w + j % box_w;
    if (in < 0 || in >= d.N || ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) continue;
    for (int k = 0; k < 64; k++)
      if (c + k < d.C) box[(size_t)j * 64 + k] = x[(((size_t)in * d.H + ih) * d.W + iw) * d.C + c + k];
  }
  return box;
}

// The box of a geometry's copies: 64 x wp x box_rows x (images, or 1 in rows mode).
int box_images(const HaloGeometry& g) { return g.images > 0 ? g.images : 1; }

// Checks every tile of shape d's geometry g against the convolution's operand (see the test).
void check_geometry(const ConvDesc& d, const HaloGeometry& g) {
  CHECK(g.rows() <= kernels::wgmma_detail::kHaloMaxRows);
  std::vector<float> x((size_t)d.N * d.H * d.W * d.C);
  for (size_t i = 0; i < x.size(); i++) x[i] = (float)(i + 1);  // distinct, never zero
  auto operand = [&](int n, int ih, int iw, int c) -> float {   // x with its zero padding
    if (ih < 0 || ih >= d.H || iw < 0 || iw >= d.W) return 0.0f;
    return x[(((size_t)n * d.H + ih) * d.W + iw) * d.C + c];
  };
  std::vector<int> covered((size_t)d.N * d.H * d.W, 0);
  long bad = 0, outside = 0, checked = 0;
  const int images = g.images > 0 ? 1 : d.N;  // rows mode: the tiles of each image
  for (int n = 0; n < images; n++)
    for (int t = 0; t < g.tiles; t++) {
      const auto at = kernels::wgmma_detail::halo_tile_at(g, n, t);
      for (int m = 0; m < kernels::wgmma_detail::kHaloTileRows; m++) {
        const auto px = kernels::wgmma_detail::halo_pixel(g, n, at.q0 + m, d.N, d.H, d.W);
        if (px.valid) covered[((size_t)px.n * d.H + px.oh) * d.W + px.ow]++;
      }
      for (int c0 : {0, d.C - 64}) {
        const auto box = tiled_box_model(x, d, g.wp, g.box_rows, box_images(g), c0, at.w, at.h, at.n);
        for (int m = 0; m < kernels::wgmma_detail::kHaloTileRows; m++) {
          const auto px = kernels::wgmma_detail::halo_pixel(g, n, at.q0 + m, d.N, d.H, d.W);
          for (int r = 0; r < d.R; r++)
            for (int s = 0; s < d.R; s++) {
              const int row = halo_tap_row(g, at, r, s) + m;
              if (row < 0 || row >= g.rows()) {
                outside++;
                continue;
              }
              if (!px.valid) continue;
              for (int c = 0; c < 64; c++, checked++)
                if (box[(size_t)row * 64 + c] != operand(px.n, px.oh + r - g.pad, px.ow + s - g.pad, c0 + c)) bad++;
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

}  // namespace

// For every tile of the geometry, in both numberings where they fit (rows mode: per image,
// wp = W + 2 pad; images mode: across the batch, wp = W + pad, hp = H + pad rows per image): the
// buffer the tile's copy fills (the box model at halo_tile_at's coordinates) holds, at row
// halo_tap_row(at, r, s) + m, exactly what the convolution's operand A has for position q0 + m
// and filter tap (r, s) where that position is an output pixel (halo_pixel; the input pixel
// (oh + r - pad, ow + s - pad), zeros outside the image); every row any tap reads lies inside
// the copy; the tiles cover each output pixel exactly once. Shapes: the recipe's images with
// R = 3 and 1, odd sizes, R = 5, a 1x1 image.
TEST_CASE("wgmma halo tile geometry gives the convolution's operand (host model)", "[gpu][wgmma]") {
  const ConvDesc shapes[] = {{2, 32, 32, 64, 8, 3}, {2, 16, 16, 64, 8, 3}, {3, 8, 8, 64, 8, 3},   {5, 4, 4, 64, 8, 3},
                             {2, 32, 32, 64, 8, 1}, {2, 5, 7, 64, 8, 3},   {2, 11, 13, 64, 8, 3}, {2, 6, 6, 64, 8, 5},
                             {3, 1, 1, 64, 8, 3},   {2, 3, 3, 64, 8, 1},   {7, 4, 4, 128, 8, 3},  {4, 2, 3, 64, 8, 5}};
  int modes = 0;
  for (const ConvDesc& d : shapes) {
    INFO(wgmma_test::desc_str(d));
    REQUIRE(halo_fits(d.H, d.W, d.R));
    const HaloGeometry rows = kernels::wgmma_detail::halo_rows_geometry(d.H, d.W, d.R);
    const HaloGeometry imgs = kernels::wgmma_detail::halo_images_geometry(d.N, d.H, d.W, d.R);
    if (rows.rows() <= kernels::wgmma_detail::kHaloMaxRows) {
      INFO("rows mode");
      check_geometry(d, rows);
      modes++;
    }
    if (imgs.images > 0) {
      INFO("images mode");
      check_geometry(d, imgs);
      modes++;
    }
    // The chosen one is one of them, and no worse in tiles.
    const HaloGeometry g = halo_geometry(d.N, d.H, d.W, d.R);
    CHECK(g.rows() <= kernels::wgmma_detail::kHaloMaxRows);
    const long long tiles = g.images > 0 ? g.tiles : (long long)d.N * g.tiles;
    if (rows.rows() <= kernels::wgmma_detail::kHaloMaxRows) CHECK(tiles <= (long long)d.N * rows.tiles);
    if (imgs.images > 0) CHECK(tiles <= imgs.tiles);
  }
  CHECK(modes > (int)std::size(shapes));  // both modes checked on some shapes
}

// The recipe's 3x3 layers fit: 32 x 32 and 16 x 16 in rows mode (32 x 32: 7 rows of 34 = 238
// buffer rows, 9 tiles of 128 for 1024 pixels), 8 x 8 and 4 x 4 in images mode (81 and 25
// positions per image, boxes of 3 and 7 images); a copy that would overflow the buffer is
// refused (R = 5 at 32 x 32).
TEST_CASE("wgmma halo tile geometry: recipe sizes and limits (host)", "[gpu][wgmma]") {
  const HaloGeometry g32 = halo_geometry(512, 32, 32, 3);
  CHECK(g32.images == 0);
  CHECK(g32.pad == 1);
  CHECK(g32.wp == 34);
  CHECK(g32.tiles == 9);
  CHECK(g32.box_rows == 7);
  CHECK(g32.rows() == 238);
  const HaloGeometry g16 = halo_geometry(512, 16, 16, 3);
  CHECK(g16.images == 0);
  CHECK(g16.tiles == 3);  // 286 positions up to the last pixel
  const HaloGeometry g8 = halo_geometry(512, 8, 8, 3);
  CHECK(g8.images == 3);
  CHECK(g8.wp == 9);
  CHECK(g8.rows() == 243);
  CHECK(g8.tiles == (511 * 81 + 7 * 9 + 8 + 127) / 128);
  const HaloGeometry g4 = halo_geometry(512, 4, 4, 3);
  CHECK(g4.images == 7);
  CHECK(g4.rows() == 175);
  for (int hw : {32, 16, 8, 4}) {
    INFO(hw << "x" << hw);
    CHECK(halo_fits(hw, hw, 3));
    CHECK(halo_fits(hw, hw, 1));
  }
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
       {kernels::WgmmaConfig::k128x128x64PpHalo, kernels::WgmmaConfig::k128x64x64PpHalo,
        kernels::WgmmaConfig::k128x128x64s10PpHalo}) {
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
    wgmma_test::check_refuses_fused_epilogues(halo);
    CHECK(kernels::wgmma_wgrad_default_splits(ConvDesc{512, 32, 32, 64, 128, 3}, halo, 132) == 1);
    CHECK_THROWS_WITH(kernels::wgmma_detail::tma_halo_probe(fake(0x10000), ConvDesc{2, 32, 32, 64, 64, 3}, 34, 8, 1, 0,
                                                            -1, -1, 0, fake(0x20000), 0),
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
  // The deep tile: 10 B stages, no room left for epilogue tiles (it stores from registers).
  const auto deep = kernels::wgmma_config_info(kernels::WgmmaConfig::k128x128x64s10PpHalo);
  CHECK(std::string(deep.name) == "wgmma_128x128x64_s10_pp_halo");
  CHECK(deep.block_n == 128);
  CHECK(deep.stages == 10);
  CHECK(kernels::wgmma_config_info(kernels::WgmmaConfig::k128x128x64PpHalo).stages == 5);
  CHECK(deep.smem_bytes < kernels::wgmma_config_info(kernels::WgmmaConfig::k128x128x64PpHalo).smem_bytes +
                              5 * 16 * 1024);  // five more B stages, less the two epilogue tiles
  CHECK_THROWS_AS(kernels::wgmma_detail::halo_tile_info({128, 7}), std::invalid_argument);
}

// The halo tiles' copy on the GPU (tma_halo_probe: the map and the copy instruction the tiles
// use) against the box model, unswizzled and compared exactly, at the coordinates of the first,
// a middle and the last tile, first and last channel slice: rows-mode boxes from negative w and
// h (the padding) and running past the last row, images-mode boxes of several images running
// past the last image.
TEST_CASE("wgmma TMA halo copy lands as the model says", "[gpu][wgmma][tma_halo]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {
      {2, 32, 32, 128, 8, 3}, {3, 4, 4, 64, 8, 3}, {2, 1, 1, 64, 8, 3}, {2, 11, 13, 64, 8, 5}, {5, 8, 8, 128, 8, 3}};
  uint64_t seed = 1500;
  for (const ConvDesc& d : shapes) {
    const std::vector<float> x = round_to_half(random_vector((long)d.N * d.H * d.W * d.C, seed++));
    const auto d_x = upload_half(x);
    const HaloGeometry g = halo_geometry(d.N, d.H, d.W, d.R);
    const int images = g.images > 0 ? 1 : d.N;
    for (int n : {0, images - 1})
      for (int t : {0, g.tiles / 2, g.tiles - 1})
        for (int c : {0, d.C - 64}) {
          const auto at = kernels::wgmma_detail::halo_tile_at(g, n, t);
          INFO(wgmma_test::desc_str(d) << (g.images > 0 ? " images" : " rows") << " mode: box 64 x " << g.wp << " x "
                                       << g.box_rows << " x " << box_images(g) << " at (c " << c << ", w " << at.w
                                       << ", h " << at.h << ", n " << at.n << ")");
          auto out = poisoned<__half>((size_t)g.rows() * 64);
          kernels::wgmma_detail::tma_halo_probe(d_x.get(), d, g.wp, g.box_rows, box_images(g), c, at.w, at.h, at.n,
                                                out.get(), 0);
          CUDA_CHECK(cudaDeviceSynchronize());
          const std::vector<float> raw = download_half(out);
          const std::vector<float> model = tiled_box_model(x, d, g.wp, g.box_rows, box_images(g), c, at.w, at.h, at.n);
          int bad_rows = 0, first_bad = -1;
          for (int i = 0; i < g.rows(); i++) {
            bool ok = true;
            for (int k = 0; k < 64; k++) ok = ok && wgmma_test::landed(raw, i, k) == model[(size_t)i * 64 + k];
            if (!ok && bad_rows++ == 0) first_bad = i;
          }
          INFO("first differing buffer row " << first_bad);
          CHECK(bad_rows == 0);
        }
  }
}

namespace {

const std::vector<kernels::WgmmaConfig> kHaloConfigs = {kernels::WgmmaConfig::k128x128x64PpHalo,
                                                        kernels::WgmmaConfig::k128x64x64PpHalo,
                                                        kernels::WgmmaConfig::k128x128x64s10PpHalo};

}  // namespace

// The halo tiles on two odd shapes against the CPU reference (rows mode, the second with a
// partial last column tile, K = 192), the first thing to run after the copy test: "[tma_halo]".
TEST_CASE("wgmma TMA halo tiles on two odd shapes vs reference", "[gpu][wgmma][tma_halo]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::odd_shape_vs_reference({3, 5, 5, 64, 64, 3}, 1590, kHaloConfigs);
  wgmma_test::odd_shape_vs_reference({3, 10, 10, 64, 192, 3}, 1595, kHaloConfigs);
}

// Odd shapes with C and K multiples of 64 (the halo tiles take no other): images mode (3x3, 6x9,
// 1x1 images, R = 1 and 5), tiles that cross images and run past the last one, a partial last
// column tile (K = 192).
TEST_CASE("wgmma halo tiles: odd shapes vs reference", "[gpu][wgmma]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const ConvDesc shapes[] = {{2, 6, 9, 64, 192, 3}, {5, 3, 3, 128, 64, 1}, {2, 6, 6, 64, 128, 5},
                             {4, 1, 1, 64, 64, 3},  {7, 4, 4, 64, 64, 3},  {2, 11, 13, 64, 64, 3}};
  uint64_t seed = 1600;
  for (const ConvDesc& d : shapes) wgmma_test::odd_shape_vs_reference(d, seed += 10, kHaloConfigs);
}

// The recipe's 3x3 layers at batch 512, forward and input gradient (the prep conv's 32 channels
// are not a multiple of 64): rows mode at 32 x 32 and 16 x 16, images mode at 8 x 8 and 4 x 4.
TEST_CASE("wgmma halo conv layer1 64->128 3x3 @32, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::recipe_vs_reference(32, 64, 128, 3, 64, true, 1610, kHaloConfigs);
}
TEST_CASE("wgmma halo conv layer1 res 128->128 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::recipe_vs_reference(16, 128, 128, 3, 128, true, 1620, kHaloConfigs);
}
TEST_CASE("wgmma halo conv layer2 128->256 3x3 @16, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::recipe_vs_reference(16, 128, 256, 3, 128, true, 1630, kHaloConfigs);
}
TEST_CASE("wgmma halo conv layer3 256->512 3x3 @8, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::recipe_vs_reference(8, 256, 512, 3, 256, true, 1640, kHaloConfigs);
}
TEST_CASE("wgmma halo conv layer3 res 512->512 3x3 @4, batch 512", "[gpu][wgmma][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  wgmma_test::recipe_vs_reference(4, 512, 512, 3, 512, true, 1650, kHaloConfigs);
}
