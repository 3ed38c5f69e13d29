#include "tests/support.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

namespace testing_support {

std::vector<float> random_vector(long n, uint64_t seed, float lo, float hi) {
  std::mt19937_64 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(gen);
  return v;
}

double rel_l2_error(const float* a, const float* b, long n) {
  double num = 0, den = 0;
  for (long i = 0; i < n; ++i) {
    double d = (double)a[i] - (double)b[i];
    num += d * d;
    den += (double)b[i] * b[i];
  }
  if (std::isnan(num)) return INFINITY;
  return std::sqrt(num) / std::max(std::sqrt(den), 1e-30);
}

double max_abs_diff(const float* a, const float* b, long n) {
  double m = 0;
  for (long i = 0; i < n; ++i) {
    double d = std::fabs((double)a[i] - (double)b[i]);
    if (std::isnan(d)) return INFINITY;
    m = std::max(m, d);
  }
  return m;
}

double gradient_check(const std::function<double(const std::vector<float>&)>& f,
                      std::vector<float>& x, const std::vector<float>& grad, int samples,
                      double h, double floor, uint64_t seed) {
  const long n = (long)x.size();
  std::vector<long> idx(n);
  std::iota(idx.begin(), idx.end(), 0L);
  if (samples > 0 && samples < n) {
    std::mt19937_64 gen(seed);
    std::shuffle(idx.begin(), idx.end(), gen);
    idx.resize(samples);
  }
  double worst = 0;
  for (long i : idx) {
    const float orig = x[i];
    x[i] = (float)(orig + h);
    const double fp = f(x);
    x[i] = (float)(orig - h);
    const double fm = f(x);
    x[i] = orig;
    const double fd = (fp - fm) / (2 * h);
    const double an = grad[i];
    const double err = std::fabs(fd - an) / std::max(std::fabs(fd) + std::fabs(an), floor);
    worst = std::max(worst, err);
  }
  return worst;
}

std::string shared_cifar10_dir() {
  namespace fs = std::filesystem;
  fs::path p = fs::path(CS_SOURCE_DIR) / ".." / "shared" / "cifar10";
  return fs::exists(p / "subsets") ? p.lexically_normal().string() : std::string();
}

}  // namespace testing_support
