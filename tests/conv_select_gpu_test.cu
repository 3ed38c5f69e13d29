// The per-layer convolution selection (engine/conv_select.h): policy parsing (host), and on a
// GPU, for each policy, that the chosen implementation of every pass computes what cuDNN
// computes, that "cudnn" never picks an igemm kernel, and that every candidate is accounted
// for. The kernels themselves are tested against the CPU reference in
// tests/implicit_gemm_gpu_test.cu and tests/igemm_backward_gpu_test.cu.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdio>
#include <iterator>
#include <string>
#include <vector>

#include "engine/conv_cudnn.h"
#include "engine/conv_select.h"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::DeviceBuffer;
using gpu_test::download_half;
using gpu_test::poisoned;
using gpu_test::upload_half;
using testing_support::random_vector;
using testing_support::rel_l2_error;

TEST_CASE("conv policy names parse and round-trip (host)", "[gpu][conv_select]") {
  for (cs::ConvPolicy p :
       {cs::ConvPolicy::kAuto, cs::ConvPolicy::kCudnn, cs::ConvPolicy::kIgemm, cs::ConvPolicy::kAutoUntested}) {
    cs::ConvPolicy q = cs::ConvPolicy::kAuto;
    REQUIRE(cs::parse_conv_policy(cs::conv_policy_name(p), &q));
    CHECK(q == p);
  }
  cs::ConvPolicy q = cs::ConvPolicy::kCudnn;
  CHECK_FALSE(cs::parse_conv_policy("fast", &q));
  CHECK_FALSE(cs::parse_conv_policy("", &q));
  CHECK(q == cs::ConvPolicy::kCudnn);  // untouched on failure
}

// Whatever each policy chooses must agree with cuDNN's own result for each pass (rel. L2 within
// the selection's tolerance), on fresh data after the selection.
TEST_CASE("conv selection: chosen passes agree with cuDNN under every policy", "[gpu][conv_select]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  gpu_test::CudnnHandle handle;
  int sms = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  const cs::ConvDesc shapes[] = {{64, 16, 16, 64, 128, 3}, {32, 8, 8, 32, 64, 1}, {16, 4, 4, 128, 64, 3}};
  const size_t ws_bytes = size_t(256) << 20;
  DeviceBuffer<char> ws(ws_bytes);
  uint64_t seed = 900;
  for (const cs::ConvDesc& d : shapes) {
    const long x_n = (long)d.N * d.H * d.W * d.C, y_n = (long)d.N * d.H * d.W * d.K;
    const long w_n = (long)d.K * d.R * d.R * d.C;
    const auto x = random_vector(x_n, seed++), w = random_vector(w_n, seed++, -0.1f, 0.1f);
    const auto dy = random_vector(y_n, seed++, -1.0f / 64, 1.0f / 64);
    for (cs::ConvPolicy policy :
         {cs::ConvPolicy::kAuto, cs::ConvPolicy::kCudnn, cs::ConvPolicy::kIgemm, cs::ConvPolicy::kAutoUntested}) {
      INFO("shape " << d.N << "x" << d.H << "x" << d.W << "x" << d.C << " -> " << d.K << " R" << d.R
                    << ", policy " << cs::conv_policy_name(policy));
      auto d_x = upload_half(x), d_w = upload_half(w), d_dy = upload_half(dy);
      auto refill = [&] {
        gpu_test::upload_half_into(x, d_x.get());
        gpu_test::upload_half_into(w, d_w.get());
        gpu_test::upload_half_into(dy, d_dy.get());
      };
      cs::ConvSelect sel(handle.get(), d, policy);
      sel.autotune(d_x.get(), d_w.get(), d_dy.get(), ws.get(), ws_bytes, sms, refill, gpu_test::quick_autotune());
      refill();
      const std::string chosen = sel.chosen();
      std::printf("conv_select %s: %s\n", cs::conv_policy_name(policy), chosen.c_str());
      if (policy == cs::ConvPolicy::kCudnn) {
        CHECK(chosen.find("igemm") == std::string::npos);
        CHECK(chosen.find("wgmma") == std::string::npos);
      }
      // One cuDNN candidate per pass, plus unless the policy is cudnn one per igemm config, and
      // on Hopper one per GPU-tested wgmma config (per wgmma config with auto-untested), for
      // each pass the config runs (the halo tile has no weight gradient).
      const bool untested = policy == cs::ConvPolicy::kAutoUntested;
      size_t expected = 3;
      if (policy != cs::ConvPolicy::kCudnn) {
        expected += 3 * std::size(kernels::kIgemmConfigs);
        if (kernels::wgmma_supported())
          for (kernels::WgmmaConfig c : kernels::kWgmmaConfigs)
            if (untested || kernels::wgmma_config_gpu_tested(c))
              expected += kernels::wgmma_config_weight_gradient(c) ? 3 : 2;
      }
      CHECK(sel.candidates().size() == expected);
      for (const cs::ConvCandidate& c : sel.candidates()) {
        INFO(cs::conv_pass_name(c.pass) << " " << c.kernel << " " << c.config << ": " << c.status);
        // Every shape here suits every kernel, but for the channel rule of a wgmma config (the
        // im2col one's 64 | C, or 64 | K for the input gradient, which gathers dy).
        const int gathered = c.pass == cs::ConvPass::kBwdData ? d.K : d.C;
        bool refused = false;
        for (kernels::WgmmaConfig w : kernels::kWgmmaConfigs)
          if (c.kernel == "wgmma" && c.config == kernels::wgmma_config_info(w).name)
            refused = !kernels::wgmma_config_takes_channels(w, gathered);
        if (refused)
          CHECK(c.status.find("multiple of 64") != std::string::npos);
        else
          CHECK(c.status == "ok");
        if (c.status == "ok") CHECK(c.us > 0);
      }
      CHECK(sel.workspace_bytes() <= ws_bytes);

      cs::CudnnConv ref(handle.get(), d);  // cuDNN's heuristic algorithms, as the reference
      DeviceBuffer<char> ref_ws(ref.workspace_bytes() + 16);
      auto y = poisoned<__half>(y_n), y_ref = poisoned<__half>(y_n);
      auto dx = poisoned<__half>(x_n), dx_ref = poisoned<__half>(x_n);
      auto dw = poisoned<__half>(w_n), dw_ref = poisoned<__half>(w_n);
      sel.forward(d_x.get(), d_w.get(), y.get(), ws.get());
      sel.backward_data(d_dy.get(), d_w.get(), dx.get(), ws.get());
      sel.backward_filter(d_x.get(), d_dy.get(), dw.get(), ws.get());
      ref.forward(d_x.get(), d_w.get(), y_ref.get(), ref_ws.get());
      ref.backward_data(d_dy.get(), d_w.get(), dx_ref.get(), ref_ws.get());
      ref.backward_filter(d_x.get(), d_dy.get(), dw_ref.get(), ref_ws.get());
      CUDA_CHECK(cudaDeviceSynchronize());
      const auto a = download_half(y), b = download_half(y_ref);
      const auto c = download_half(dx), e = download_half(dx_ref);
      const auto f = download_half(dw), g = download_half(dw_ref);
      CHECK(gpu_test::all_finite(a));
      CHECK(gpu_test::all_finite(c));
      CHECK(gpu_test::all_finite(f));
      CHECK(rel_l2_error(a.data(), b.data(), y_n) <= cs::kConvSelectTol);
      CHECK(rel_l2_error(c.data(), e.data(), x_n) <= cs::kConvSelectTol);
      CHECK(rel_l2_error(f.data(), g.data(), w_n) <= cs::kConvSelectTol);
    }
  }
}
