// The host helpers the self-checking benchmarks share (bench/bench_util.h): parallel_for, which
// conv_bench's checks use for their whole-tensor host sums, must call f once for every index
// whatever the thread count; rel_l2's definition, NaN included.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <vector>

#include "bench/bench_util.h"

TEST_CASE("bench::parallel_for calls f once per index", "[bench_util]") {
  for (long n : {0L, 1L, 2L, 7L, 1000L, 4099L}) {
    INFO("n " << n);
    std::vector<std::atomic<int>> calls(n);
    for (auto& c : calls) c = 0;
    bench::parallel_for(n, [&](long i) { calls[i]++; });
    long wrong = 0;
    for (auto& c : calls) wrong += c != 1;
    CHECK(wrong == 0);
  }
  // Per-index results do not depend on the split: sums owned by index, as conv_bench's groups.
  std::vector<double> sums(16, 0.0);
  bench::parallel_for(16, [&](long g) {
    for (long q = g * 100; q < (g + 1) * 100; q++) sums[g] += 0.5 * (double)q;
  });
  for (long g = 0; g < 16; g++) CHECK(sums[g] == 0.5 * (100.0 * g * 100 + 4950.0));
}

TEST_CASE("bench::rel_l2 is ||a - b|| / ||b||, infinite for NaN", "[bench_util]") {
  const float b[] = {3.0f, 4.0f};
  const float a[] = {3.0f, 5.0f};
  CHECK(bench::rel_l2(a, b, 2) == Approx(1.0 / 5.0));
  CHECK(bench::rel_l2(b, b, 2) == 0.0);
  const float nan_a[] = {NAN, 4.0f};
  CHECK(std::isinf(bench::rel_l2(nan_a, b, 2)));
}

TEST_CASE("bench::split_list splits at commas and drops empty items", "[bench_util]") {
  using V = std::vector<std::string>;
  CHECK(bench::split_list("layer1") == V{"layer1"});
  CHECK(bench::split_list("layer1,layer3_res") == V{"layer1", "layer3_res"});
  CHECK(bench::split_list(",a,,b,") == V{"a", "b"});
  CHECK(bench::split_list("").empty());
}
