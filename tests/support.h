// Test helpers: random tensors, error norms, finite-difference gradient checks, data paths.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace testing_support {

// Uniform values in [lo, hi), reproducible from seed.
std::vector<float> random_vector(long n, uint64_t seed, float lo = -1.0f, float hi = 1.0f);

// ||a - b|| / max(||b||, tiny), in double.
double rel_l2_error(const float* a, const float* b, long n);
double max_abs_diff(const float* a, const float* b, long n);

// Central finite-difference check of an analytic gradient.
// f(x) returns a scalar in double; grad holds the analytic d f / d x at x (same size).
// Checks `samples` coordinates (all if samples <= 0 or >= n) with step h; returns the largest
// relative error |fd - an| / max(|fd| + |an|, floor) over them. Restores x.
double gradient_check(const std::function<double(const std::vector<float>&)>& f,
                      std::vector<float>& x, const std::vector<float>& grad, int samples,
                      double h, double floor = 1e-3, uint64_t seed = 1);

// ../shared/cifar10 relative to the source tree (empty string if absent).
std::string shared_cifar10_dir();

}  // namespace testing_support
