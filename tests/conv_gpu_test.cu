// cuDNN convolutions (engine/conv_cudnn) vs ref::conv_* for every conv shape of the recipe at
// batch 512, with the algorithms autotune() picks (the ones training uses).
//
// The GPU always runs the full batch. The CPU reference covers the first kRefImages images:
// forward and backward-data outputs of an image depend on that image alone; for the filter
// gradient (a sum over the batch) dy is zero beyond the first kRefImages images, so the sum
// is over the same images on both sides. A second filter-gradient run with dy over the whole
// batch checks that nothing overflows or turns NaN at the real size.
//
// Outputs are poisoned with NaN bytes before each pass, so a pass that leaves part of its output
// unwritten fails the finiteness checks; every pass is run twice and must give the same bits
// (autotune keeps only deterministic algorithms, which training relies on).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

#include "engine/conv_cudnn.h"
#include "kernels/ref/conv.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::bitwise_equal;
using gpu_test::DeviceBuffer;
using gpu_test::device_all_finite;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::round_to_half;
using gpu_test::upload_half;
using testing_support::random_vector;
using testing_support::rel_l2_error;

namespace {

constexpr int kBatch = 512;
constexpr int kRefImages = 8;
// Autotune may use this much workspace (the engine's arena gives about as much).
constexpr size_t kMaxWorkspace = size_t(1) << 30;

// fp16 outputs with fp32 accumulation: the rounding alone gives ~3e-4 relative. 1e-2 leaves
// room for the Winograd / FFT algorithms cuDNN may pick (their transforms lose about one more
// digit); a layout or indexing error gives O(1).
constexpr double kTolConv = 1e-2;

void check_conv(int H, int C, int K, int R, int real_channels, uint64_t seed) {
  const cs::ConvDesc d{kBatch, H, H, C, K, R};
  INFO("conv " << C << "->" << K << " " << R << "x" << R << " @" << H);
  const long x_size = (long)kBatch * H * H * C, y_size = (long)kBatch * H * H * K;
  const long w_size = (long)K * R * R * C;
  const long x_img = (long)H * H * C, y_img = (long)H * H * K;

  // x: activations; channels >= real_channels are zero (the whitening output is 27 channels
  // padded to 32). w: PyTorch's default init bound 1/sqrt(fan_in). dy: uniform.
  auto x = random_vector(x_size, seed);
  for (long i = 0; i < x_size; i++)
    if (i % C >= real_channels) x[i] = 0.0f;
  x = round_to_half(x);
  const float bound = 1.0f / std::sqrt((float)(real_channels * R * R));
  auto w = round_to_half(random_vector(w_size, seed + 1, -bound, bound));
  for (long i = 0; i < w_size; i++)
    if (i % C >= real_channels) w[i] = 0.0f;
  const auto dy = round_to_half(random_vector(y_size, seed + 2));
  std::vector<float> dy_masked(dy.begin(), dy.begin() + kRefImages * y_img);
  dy_masked.resize(y_size, 0.0f);

  gpu_test::CudnnHandle handle;
  cs::CudnnConv conv(handle.get(), d);
  DeviceBuffer<char> ws(kMaxWorkspace);
  {
    // autotune overwrites its buffers: give it copies.
    auto tx = upload_half(x), tw = upload_half(w);
    auto ty = upload_half(dy);
    conv.autotune(tx.get(), tw.get(), ty.get(), ws.get(), kMaxWorkspace);
  }
  REQUIRE(!conv.timings().empty());
  REQUIRE(conv.workspace_bytes() <= kMaxWorkspace);
  std::printf("conv %d->%d %dx%d @%d: %s\n", C, K, R, R, H, conv.chosen().c_str());

  auto d_x = upload_half(x), d_w = upload_half(w), d_dy = upload_half(dy);
  auto d_dy_masked = upload_half(dy_masked);
  ws.poison();  // the passes must not depend on what autotune left in the workspace
  auto d_y = poisoned<__half>(y_size);
  auto d_dx = poisoned<__half>(x_size);
  auto d_dw = poisoned<__half>(w_size);
  conv.forward(d_x.get(), d_w.get(), d_y.get(), ws.get());
  conv.backward_data(d_dy.get(), d_w.get(), d_dx.get(), ws.get());
  conv.backward_filter(d_x.get(), d_dy_masked.get(), d_dw.get(), ws.get());
  CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(device_all_finite(d_y));
  CHECK(device_all_finite(d_dx));
  CHECK(device_all_finite(d_dw));
  const auto y = download_half(d_y.get(), kRefImages * y_img);
  const auto dx = download_half(d_dx.get(), kRefImages * x_img);
  const auto dw = download_half(d_dw);

  const ref::ConvShape rs{kRefImages, H, H, C, K, R};
  std::vector<float> y_ref(rs.y_size()), dx_ref(rs.x_size()), dw_ref(rs.w_size());
  ref::conv_forward(x.data(), w.data(), y_ref.data(), rs);
  ref::conv_backward_input(dy.data(), w.data(), dx_ref.data(), rs);
  ref::conv_backward_weight(x.data(), dy.data(), dw_ref.data(), rs);
  const double e_fwd = rel_l2_error(y.data(), y_ref.data(), rs.y_size());
  const double e_bwd_data = rel_l2_error(dx.data(), dx_ref.data(), rs.x_size());
  const double e_bwd_filter = rel_l2_error(dw.data(), dw_ref.data(), rs.w_size());
  std::printf("  rel_l2 fwd %.2e bwd_data %.2e bwd_filter %.2e\n", e_fwd, e_bwd_data,
              e_bwd_filter);
  CHECK(e_fwd < kTolConv);
  CHECK(e_bwd_data < kTolConv);
  CHECK(e_bwd_filter < kTolConv);

  // The whole batch: every output finite (fp16 overflow would give Inf) and not all zero.
  d_dw.poison();
  conv.backward_filter(d_x.get(), d_dy.get(), d_dw.get(), ws.get());
  CUDA_CHECK(cudaDeviceSynchronize());
  const auto y_all = download_half(d_y), dx_all = download_half(d_dx), dw_all = download_half(d_dw);
  CHECK(gpu_test::all_finite(y_all));
  CHECK(gpu_test::all_finite(dx_all));
  CHECK(gpu_test::all_finite(dw_all));
  double dw_norm = 0.0;
  for (float v : dw_all) dw_norm += (double)v * v;
  CHECK(dw_norm > 0.0);

  // Determinism: each pass again, into fresh poisoned outputs, gives the same bits.
  auto d_y2 = poisoned<__half>(y_size);
  auto d_dx2 = poisoned<__half>(x_size);
  auto d_dw2 = poisoned<__half>(w_size);
  conv.forward(d_x.get(), d_w.get(), d_y2.get(), ws.get());
  conv.backward_data(d_dy.get(), d_w.get(), d_dx2.get(), ws.get());
  conv.backward_filter(d_x.get(), d_dy.get(), d_dw2.get(), ws.get());
  CUDA_CHECK(cudaDeviceSynchronize());
  CHECK(bitwise_equal(download_half(d_y2), y_all));
  CHECK(bitwise_equal(download_half(d_dx2), dx_all));
  CHECK(bitwise_equal(download_half(d_dw2), dw_all));
}

}  // namespace

TEST_CASE("cudnn conv prep 27(pad 32)->64 1x1 @32", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(32, 32, 64, 1, 27, 10);
}

TEST_CASE("cudnn conv layer1 64->128 3x3 @32", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(32, 64, 128, 3, 64, 20);
}

TEST_CASE("cudnn conv layer1 res 128->128 3x3 @16", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(16, 128, 128, 3, 128, 30);
}

TEST_CASE("cudnn conv layer2 128->256 3x3 @16", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(16, 128, 256, 3, 128, 40);
}

TEST_CASE("cudnn conv layer3 256->512 3x3 @8", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(8, 256, 512, 3, 256, 50);
}

TEST_CASE("cudnn conv layer3 res 512->512 3x3 @4", "[gpu][conv][recipe]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  check_conv(4, 512, 512, 3, 512, 60);
}
