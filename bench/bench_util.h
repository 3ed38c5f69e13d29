// Host helpers shared by the self-checking benchmarks (kernel_bench, conv_bench): the record's
// date and its atomic write, the random inputs, the error measure of the self-checks.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <stdexcept>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "net/checkpoint.h"  // write_file_atomically

namespace bench {

// UTC now, ISO 8601 (YYYY-MM-DDThh:mm:ssZ), for the JSON records.
inline std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// f(i) for every i in [0, n), spread over the host's hardware threads (thread t takes t, t + T,
// ...). For the self-checks' host sums over whole tensors, which otherwise cost a device
// session minutes: f must only write what index i owns, so the result does not depend on the
// split.
template <class F>
void parallel_for(long n, F f) {
  const long threads = std::min<long>(n, std::max(1u, std::thread::hardware_concurrency()));
  if (threads <= 1) {
    for (long i = 0; i < n; i++) f(i);
    return;
  }
  std::vector<std::thread> workers;
  for (long t = 0; t < threads; t++)
    workers.emplace_back([&, t] {
      for (long i = t; i < n; i += threads) f(i);
    });
  for (std::thread& w : workers) w.join();
}

// "a,b,c" -> {"a", "b", "c"}, for list-valued flags (conv_bench --layers); empty items (",,",
// a trailing comma) are dropped.
inline std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t end = std::min(s.find(',', start), s.size());
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// n values uniform in [lo, hi), reproducible from seed.
inline std::vector<float> random_vec(long n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

// ||a - b|| / ||b|| in double (infinite when a holds NaN).
inline double rel_l2(const float* a, const float* b, long n) {
  double num = 0.0, den = 0.0;
  for (long i = 0; i < n; i++) {
    const double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

// Writes a benchmark's JSON text atomically (temporary file + rename: a failed write leaves no
// partial record behind). Returns false after printing "<tool>: cannot write ..." on failure.
inline bool write_record(const char* tool, const std::string& path, const std::string& text) {
  try {
    net::write_file_atomically(path, text);
  } catch (const std::runtime_error& e) {
    std::fprintf(stderr, "%s: cannot write %s: %s\n", tool, path.c_str(), e.what());
    return false;
  }
  std::printf("wrote %s\n", path.c_str());
  return true;
}

}  // namespace bench
