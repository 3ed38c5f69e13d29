// A probe for a halo tile's operands (docs/conv_kernels.md, "Next GPU sessions", item 2), not a
// test of anything the engine runs: a halo tile would copy one 64-channel slice of x per tile and
// hand wgmma each filter tap's A as the same shared-memory tile from a start some rows further
// on, usually not on the 128-byte swizzle's 8-row (1024-byte) boundary. This checks, on the GPU,
// that a descriptor started `shift` rows into a swizzled tile (the tile 1024-byte aligned) with a
// base offset of 0 reads rows shift .. shift + 63 (kernels::wgmma_detail::wgmma_shift_probe), and
// prints what the descriptor's base-offset field set to (start address >> 7) & 7 gives instead.
// The first run (an H200, docs/results/2026-11-27-h200-session10/call1/p/halo.log) asserted the
// latter, which the PTX ISA's descriptor description suggested for a start off the pattern's
// boundary: it gave wrong products (rel_l2 ~1.4) for shifts 1-7, and base offset 0 gave the
// right ones for every shift: the swizzle follows the shared-memory address bits, as TMA's
// writes do, so a start at any 128-byte row of an aligned tile needs no offset.
//
// Hidden ("[.]"): neither the default test run nor gpu_check.sh's shards pick it; a GPU session
// runs it by name: cs_gpu_tests "[halo]". A wrong descriptor could fault and leave the process's
// CUDA context unusable, so it stays apart from the tests of the kernels in use.
#include <catch2/catch.hpp>

#include <cstdio>
#include <vector>

#include "kernels/conv/wgmma_conv.cuh"
#include "tests/gpu_test_util.h"
#include "tests/support.h"

using gpu_test::round_to_half;
using gpu_test::upload_half;
using testing_support::random_vector;
using testing_support::rel_l2_error;

TEST_CASE("wgmma A descriptor started mid-atom with base offset 0 reads the rows it starts at", "[.][halo]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const std::vector<float> a = round_to_half(random_vector(72 * 64, 1400));
  const std::vector<float> b = round_to_half(random_vector(64 * 64, 1401));
  const auto d_a = upload_half(a), d_b = upload_half(b);
  for (int shift = 0; shift <= 8; shift++) {
    std::vector<float> want(64 * 64);
    for (int r = 0; r < 64; r++)
      for (int c = 0; c < 64; c++) {
        double s = 0.0;
        for (int k = 0; k < 64; k++) s += (double)a[(shift + r) * 64 + k] * b[c * 64 + k];
        want[r * 64 + c] = (float)s;
      }
    auto run = [&](int base_offset) {
      auto d = gpu_test::poisoned<float>(64 * 64);
      kernels::wgmma_detail::wgmma_shift_probe(d_a.get(), d_b.get(), shift, base_offset, d.get(), 0);
      CUDA_CHECK(cudaDeviceSynchronize());
      const std::vector<float> got = gpu_test::download(d);
      return rel_l2_error(got.data(), want.data(), (long)want.size());
    };
    const int field = shift & 7;  // (start >> 7) & 7 with the tile 1024-byte aligned
    const double e_zero = run(0), e_field = run(field);
    std::printf("wgmma shift probe: shift %d: base offset 0 rel_l2 %.2e, base offset %d rel_l2 %.2e\n", shift, e_zero,
                field, e_field);
    INFO("shift " << shift << ", base offset 0");
    CHECK(e_zero <= 1e-4);  // fp16 products are exact in fp32; 64-term fp32 sums
  }
}

// The weight gradient's question (kernels::wgmma_detail::wgmma_shift_probe_mn): its operands are
// M/N-major, the reduction running down pixel rows, and a halo weight gradient would start each
// filter tap's x operand `shift` pixel rows into one swizzled buffer. Asserted, as the K-major
// probe found for the forward: the descriptor started at any row (base offset 0) reads the rows
// from there. Hidden ("[.]") for the same reason as the probe above: cs_gpu_tests "[halo_mn]".
TEST_CASE("wgmma M/N-major B descriptor started mid-atom reads the rows it starts at", "[.][halo_mn]") {
  GPU_TEST_SKIP_WITHOUT_DEVICE();
  GPU_TEST_SKIP_WITHOUT_WGMMA();
  const std::vector<float> a = round_to_half(random_vector(64 * 64, 1410));
  const std::vector<float> b = round_to_half(random_vector(72 * 64, 1411));
  const auto d_a = upload_half(a), d_b = upload_half(b);
  for (int shift = 0; shift <= 8; shift++) {
    std::vector<float> want(64 * 64);
    for (int m = 0; m < 64; m++)
      for (int n = 0; n < 64; n++) {
        double s = 0.0;
        for (int k = 0; k < 64; k++) s += (double)a[k * 64 + m] * b[(shift + k) * 64 + n];
        want[m * 64 + n] = (float)s;
      }
    auto d = gpu_test::poisoned<float>(64 * 64);
    kernels::wgmma_detail::wgmma_shift_probe_mn(d_a.get(), d_b.get(), shift, d.get(), 0);
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::vector<float> got = gpu_test::download(d);
    const double e = rel_l2_error(got.data(), want.data(), (long)want.size());
    std::printf("wgmma M/N-major shift probe: shift %d: rel_l2 %.2e\n", shift, e);
    INFO("shift " << shift);
    CHECK(e <= 1e-4);
  }
}
