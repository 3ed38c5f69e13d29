// Tests of the data-preparation and augmentation reference (normalise, reflect pad, crop, flip,
// SplitMix64 RNG, shuffle).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "kernels/ref/augment.h"
#include "tests/support.h"

TEST_CASE("normalize_cifar: planes to normalised NHWC", "[augment]") {
  const float mean[3] = {125.31f, 122.95f, 113.87f}, std_[3] = {62.99f, 62.09f, 66.70f};
  const int n = 2;
  std::vector<uint8_t> planes((size_t)n * 3072);
  for (size_t i = 0; i < planes.size(); i++) planes[i] = (uint8_t)((i * 7 + i / 1024) % 256);
  // Hand case: record 1, pixel (y = 2, x = 5): R = 255, G = 0, B = 200.
  planes[3072 + 0 * 1024 + 2 * 32 + 5] = 255;
  planes[3072 + 1 * 1024 + 2 * 32 + 5] = 0;
  planes[3072 + 2 * 1024 + 2 * 32 + 5] = 200;
  std::vector<float> out((size_t)n * 32 * 32 * 3);
  ref::normalize_cifar(planes.data(), n, mean, std_, out.data());

  // One float subtraction and division each: within a couple of float ulps (1e-6 relative).
  const float* px = &out[(((size_t)1 * 32 + 2) * 32 + 5) * 3];
  CHECK(px[0] == Approx((255.0 - 125.31) / 62.99).epsilon(1e-6));
  CHECK(px[1] == Approx((0.0 - 122.95) / 62.09).epsilon(1e-6));
  CHECK(px[2] == Approx((200.0 - 113.87) / 66.70).epsilon(1e-6));
  for (int i = 0; i < n; i++)
    for (int y = 0; y < 32; y++)
      for (int x = 0; x < 32; x++)
        for (int c = 0; c < 3; c++) {
          const double v = planes[(size_t)i * 3072 + c * 1024 + y * 32 + x];
          const double expect = (v - mean[c]) / std_[c];
          REQUIRE(out[(((size_t)i * 32 + y) * 32 + x) * 3 + c] == Approx(expect).epsilon(1e-6));
        }
}

TEST_CASE("reflect_pad: PyTorch reflect on a 3x3 image with p = 2", "[augment]") {
  // Two channels (v and -v) and two images (the second is the first plus 100).
  const int N = 2, H = 3, W = 3, C = 2, p = 2, Hp = 7, Wp = 7;
  std::vector<float> x((size_t)N * H * W * C);
  for (int n = 0; n < N; n++)
    for (int i = 0; i < H * W; i++) {
      x[((size_t)n * H * W + i) * C + 0] = (float)(i + 1 + 100 * n);
      x[((size_t)n * H * W + i) * C + 1] = -(float)(i + 1 + 100 * n);
    }
  std::vector<float> y((size_t)N * Hp * Wp * C);
  ref::reflect_pad(x.data(), y.data(), N, H, W, C, p);
  // Image 1 2 3 / 4 5 6 / 7 8 9: padded index -1 reads 1, -2 reads 2, 3 reads 1, 4 reads 0.
  const float expect[7][7] = {{9, 8, 7, 8, 9, 8, 7}, {6, 5, 4, 5, 6, 5, 4},
                              {3, 2, 1, 2, 3, 2, 1}, {6, 5, 4, 5, 6, 5, 4},
                              {9, 8, 7, 8, 9, 8, 7}, {6, 5, 4, 5, 6, 5, 4},
                              {3, 2, 1, 2, 3, 2, 1}};
  for (int n = 0; n < N; n++)
    for (int r = 0; r < Hp; r++)
      for (int c = 0; c < Wp; c++) {
        const float* v = &y[(((size_t)n * Hp + r) * Wp + c) * C];
        CHECK(v[0] == expect[r][c] + 100 * n);
        CHECK(v[1] == -(expect[r][c] + 100 * n));
      }
}

TEST_CASE("crop_flip and flip_horizontal", "[augment]") {
  const int N = 3, S = 32, C = 3, pad = 4, Hp = S + 2 * pad, Wp = S + 2 * pad;
  std::vector<float> x = testing_support::random_vector((long)N * S * S * C, 5);
  std::vector<float> padded((size_t)N * Hp * Wp * C);
  ref::reflect_pad(x.data(), padded.data(), N, S, S, C, pad);
  const int index[3] = {2, 0, 1};
  const size_t img = (size_t)S * S * C;

  SECTION("offset (pad, pad) without flip returns the original images") {
    const ref::CropFlip params[3] = {{pad, pad, 0}, {pad, pad, 0}, {pad, pad, 0}};
    std::vector<float> out(N * img);
    ref::crop_flip(padded.data(), Hp, Wp, C, index, params, N, S, out.data());
    for (int b = 0; b < N; b++)
      CHECK(std::equal(out.begin() + b * img, out.begin() + (b + 1) * img,
                       x.begin() + index[b] * img));
  }
  SECTION("flip_horizontal: hand case, and flipping twice is the identity") {
    const float row[6] = {1, 2, 3, 4, 5, 6};  // 1 x 3 pixels x 2 channels
    float f[6];
    ref::flip_horizontal(row, f, 1, 1, 3, 2);
    CHECK(std::vector<float>(f, f + 6) == std::vector<float>{5, 6, 3, 4, 1, 2});
    std::vector<float> once(N * img), twice(N * img);
    ref::flip_horizontal(x.data(), once.data(), N, S, S, C);
    ref::flip_horizontal(once.data(), twice.data(), N, S, S, C);
    CHECK(twice == x);
    CHECK(once != x);
  }
  SECTION("crop + flip equals the flip of the crop") {
    const ref::CropFlip flipped[3] = {{0, 8, 1}, {3, 1, 1}, {8, 0, 1}};
    const ref::CropFlip plain[3] = {{0, 8, 0}, {3, 1, 0}, {8, 0, 0}};
    std::vector<float> a(N * img), b(N * img), fb(N * img);
    ref::crop_flip(padded.data(), Hp, Wp, C, index, flipped, N, S, a.data());
    ref::crop_flip(padded.data(), Hp, Wp, C, index, plain, N, S, b.data());
    ref::flip_horizontal(b.data(), fb.data(), N, S, S, C);
    CHECK(a == fb);
    // The crop really moves: image 0 at offset (0, 8) reads padded rows 0.., columns 8..
    CHECK(b[0] == padded[((size_t)index[0] * Hp * Wp + 8) * C]);
  }
}

TEST_CASE("Rng: SplitMix64 stream, uniform_int and uniform ranges", "[augment]") {
  // Reference outputs of Vigna's splitmix64.c for seed 0.
  ref::Rng r0(0);
  CHECK(r0.next_u64() == 0xE220A8397B1DCDAFull);
  CHECK(r0.next_u64() == 0x6E789E6AA1B965F4ull);
  CHECK(r0.next_u64() == 0x06C45D188009454Full);

  ref::Rng rng(42);
  for (uint32_t n : {1u, 2u, 3u, 10u, 1000003u, 0x80000001u, 0xFFFFFFFFu})
    for (int i = 0; i < 1000; i++) REQUIRE(rng.uniform_int(n) < n);
  double sum = 0.0;
  const int draws = 100000;
  for (int i = 0; i < draws; i++) {
    const float u = rng.uniform();
    REQUIRE(u >= 0.0f);
    REQUIRE(u < 1.0f);
    sum += u;
  }
  // Mean of U[0,1) has sd 0.29 / sqrt(1e5) ~ 1e-3: 0.01 is a 10-sigma bound.
  CHECK(std::fabs(sum / draws - 0.5) < 0.01);
}

TEST_CASE("random_permutation: a permutation, reproducible per seed, uniform", "[augment]") {
  const int n = 1000;
  ref::Rng a(1), b(1), c(2);
  const std::vector<int> pa = ref::random_permutation(n, a);
  const std::vector<int> pb = ref::random_permutation(n, b);
  const std::vector<int> pc = ref::random_permutation(n, c);
  std::vector<int> sorted = pa, iota(n);
  std::sort(sorted.begin(), sorted.end());
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted == iota);
  CHECK(pa == pb);
  CHECK(pa != pc);
  CHECK(pa != iota);
  // The next epoch's permutation from the same stream differs from the first.
  CHECK(ref::random_permutation(n, a) != pa);

  // All 6 permutations of 3 elements, each with probability 1/6: with 60,000 draws each
  // count has mean 10,000 and sd ~91, so +-600 (6.5 sigma) only fails for a biased shuffle.
  ref::Rng r(7);
  int counts[6] = {0, 0, 0, 0, 0, 0};
  for (int t = 0; t < 60000; t++) {
    const std::vector<int> p = ref::random_permutation(3, r);
    counts[p[0] * 2 + (p[1] > p[2] ? 1 : 0)]++;
  }
  for (int k = 0; k < 6; k++) CHECK(std::abs(counts[k] - 10000) < 600);
}

TEST_CASE("random_crop_flip: offsets cover [0, 2*pad], flips about half", "[augment]") {
  const int pad = 4, batch = 90000;
  ref::Rng rng(3);
  std::vector<ref::CropFlip> params(batch);
  ref::random_crop_flip(batch, pad, rng, params.data());
  int dy_count[2 * pad + 1] = {}, dx_count[2 * pad + 1] = {};
  long flips = 0;
  for (const ref::CropFlip& p : params) {
    REQUIRE(p.dy >= 0);
    REQUIRE(p.dy <= 2 * pad);
    REQUIRE(p.dx >= 0);
    REQUIRE(p.dx <= 2 * pad);
    REQUIRE((p.flip == 0 || p.flip == 1));
    dy_count[p.dy]++;
    dx_count[p.dx]++;
    flips += p.flip;
  }
  // Each offset has mean count 10,000 (sd ~94): +-1,000 is a loose bound that still catches a
  // missing or doubled value. Flip fraction sd ~0.0017: +-0.02 is loose.
  for (int k = 0; k <= 2 * pad; k++) {
    CHECK(std::abs(dy_count[k] - batch / (2 * pad + 1)) < 1000);
    CHECK(std::abs(dx_count[k] - batch / (2 * pad + 1)) < 1000);
  }
  CHECK(std::fabs((double)flips / batch - 0.5) < 0.02);
}
