// Helpers for the GPU tests and kernel_bench: device detection (for the skip rule), an RAII
// device buffer, and float <-> fp16 transfers. No Catch2 here, so bench/ can use it too.
//
// Outputs under test are poisoned before the launch (poisoned<T>(n) / poison(): 0xFF bytes,
// NaN as fp16 and fp32): fresh cudaMalloc memory is usually zero, which would hide an output
// the kernel writes only in part. A test then checks that every output value is finite.
//
// Every GPU test starts with GPU_TEST_SKIP_WITHOUT_DEVICE(): without a usable device it prints
// "SKIPPED: no CUDA device (<reason>)" and returns. CTest marks a test whose output contains
// "SKIPPED:" as skipped (CI has no GPU).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/cuda_check.h"
#include "engine/gpu_info.h"
#include "kernels/conv/wgmma_conv.cuh"

namespace gpu_test {

// True when a CUDA device can be used; otherwise *why (if given) says why not.
inline bool gpu_available(std::string* why = nullptr) {
  static const cs::GpuInfo info = cs::detect_gpu();  // probe the driver once per process
  if (!info.available && why != nullptr) *why = info.reason;
  return info.available;
}

// Whether the engine's setup should skip its timing (Resnet9GpuOptions::quick_autotune,
// ConvSelect::autotune's quick mode): CS_TEST_QUICK_AUTOTUNE set to anything but "" or "0".
// tools/gpu_check.sh sets it for the run under compute-sanitizer, where every launch is
// instrumented and the autotune's timing repetitions (10 to 40 calls per candidate) cost much
// time and check nothing the single validated call does not.
inline bool quick_autotune() {
  const char* v = std::getenv("CS_TEST_QUICK_AUTOTUNE");
  return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
}

// Owns n elements of device memory (uninitialised). Move-only.
template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : n_(n) {
    if (n > 0) CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&p_), n * sizeof(T)));
  }
  ~DeviceBuffer() {
    if (p_ != nullptr) cudaFree(p_);  // no check: destructors must not throw
  }
  DeviceBuffer(DeviceBuffer&& o) noexcept : p_(o.p_), n_(o.n_) {
    o.p_ = nullptr;
    o.n_ = 0;
  }
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      if (p_ != nullptr) cudaFree(p_);
      p_ = o.p_;
      n_ = o.n_;
      o.p_ = nullptr;
      o.n_ = 0;
    }
    return *this;
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  T* get() const { return p_; }
  size_t size() const { return n_; }
  size_t bytes() const { return n_ * sizeof(T); }
  void zero() {
    if (n_ > 0) CUDA_CHECK(cudaMemset(p_, 0, bytes()));
  }
  // 0xFF in every byte: NaN as fp16 and fp32, -1 as a signed integer, 255 as uint8.
  void poison() {
    if (n_ > 0) CUDA_CHECK(cudaMemset(p_, 0xFF, bytes()));
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0;
};

// A buffer of n elements filled with 0xFF bytes (see DeviceBuffer::poison), for outputs.
template <typename T>
DeviceBuffer<T> poisoned(size_t n) {
  DeviceBuffer<T> d(n);
  d.poison();
  return d;
}

// Owns a cuDNN handle bound to the default stream.
class CudnnHandle {
 public:
  CudnnHandle() { CUDNN_CHECK(cudnnCreate(&h_)); }
  ~CudnnHandle() { cudnnDestroy(h_); }
  CudnnHandle(const CudnnHandle&) = delete;
  CudnnHandle& operator=(const CudnnHandle&) = delete;
  cudnnHandle_t get() const { return h_; }

 private:
  cudnnHandle_t h_ = nullptr;
};

// Rounds every value to fp16 and back: the exact inputs an fp16 kernel sees, so the CPU
// reference can be fed the same numbers.
inline std::vector<float> round_to_half(const std::vector<float>& x) {
  std::vector<float> y(x.size());
  for (size_t i = 0; i < x.size(); i++) y[i] = __half2float(__float2half_rn(x[i]));
  return y;
}

// Host float -> device fp16 (round to nearest).
inline DeviceBuffer<__half> upload_half(const std::vector<float>& x) {
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); i++) h[i] = __float2half_rn(x[i]);
  DeviceBuffer<__half> d(x.size());
  if (!h.empty()) CUDA_CHECK(cudaMemcpy(d.get(), h.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

template <typename T>
DeviceBuffer<T> upload(const std::vector<T>& x) {
  DeviceBuffer<T> d(x.size());
  if (!x.empty()) CUDA_CHECK(cudaMemcpy(d.get(), x.data(), d.bytes(), cudaMemcpyHostToDevice));
  return d;
}

// Device fp16 (n values from p) -> host float. Synchronous (waits for prior work).
inline std::vector<float> download_half(const __half* p, size_t n) {
  std::vector<__half> h(n);
  if (n > 0) CUDA_CHECK(cudaMemcpy(h.data(), p, n * sizeof(__half), cudaMemcpyDeviceToHost));
  std::vector<float> y(n);
  for (size_t i = 0; i < n; i++) y[i] = __half2float(h[i]);
  return y;
}
inline std::vector<float> download_half(const DeviceBuffer<__half>& d) {
  return download_half(d.get(), d.size());
}

template <typename T>
std::vector<T> download(const T* p, size_t n) {
  std::vector<T> y(n);
  if (n > 0) CUDA_CHECK(cudaMemcpy(y.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return y;
}
template <typename T>
std::vector<T> download(const DeviceBuffer<T>& d) {
  return download(d.get(), d.size());
}

// Copies host data into an existing device buffer (sizes must match).
inline void upload_half_into(const std::vector<float>& x, __half* dst) {
  std::vector<__half> h(x.size());
  for (size_t i = 0; i < x.size(); i++) h[i] = __float2half_rn(x[i]);
  if (!h.empty())
    CUDA_CHECK(cudaMemcpy(dst, h.data(), h.size() * sizeof(__half), cudaMemcpyHostToDevice));
}

// True when every value is finite (no NaN / Inf).
inline bool all_finite(const std::vector<float>& x) {
  for (float v : x)
    if (!std::isfinite(v)) return false;
  return true;
}

// Every value of a device fp16 / fp32 buffer finite (no poison left, no overflow).
inline bool device_all_finite(const DeviceBuffer<__half>& d) {
  return all_finite(download_half(d));
}
inline bool device_all_finite(const DeviceBuffer<float>& d) { return all_finite(download(d)); }

// Bitwise equality of two host copies (determinism checks: same launches, same bits).
template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() &&
         (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// Where two host copies differ bitwise, for a failure message: how many elements differ and
// the first one (index and both values); empty when they agree.
inline float value_of(float v) { return v; }
inline float value_of(__half v) { return __half2float(v); }
template <typename T>
std::string bitwise_mismatch(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size())
    return "sizes differ: " + std::to_string(a.size()) + " vs " + std::to_string(b.size());
  size_t count = 0, first = 0;
  for (size_t i = 0; i < a.size(); i++)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0 && count++ == 0) first = i;
  if (count == 0) return "";
  return std::to_string(count) + " of " + std::to_string(a.size()) + " differ; first at " +
         std::to_string(first) + ": " + std::to_string(value_of(a[first])) + " vs " +
         std::to_string(value_of(b[first]));
}

// A conv shape for test messages: "NxHxWxC -> K=.. R=..".
inline std::string desc_str(const kernels::ConvDesc& d) {
  return std::to_string(d.N) + "x" + std::to_string(d.H) + "x" + std::to_string(d.W) + "x" + std::to_string(d.C) +
         " -> K=" + std::to_string(d.K) + " R=" + std::to_string(d.R);
}

}  // namespace gpu_test

// Printed with printf (not a Catch2 macro) so it shows in the output of a passing test.
#define GPU_TEST_SKIP_WITHOUT_DEVICE()                                      \
  do {                                                                      \
    std::string gpu_test_why_;                                              \
    if (!::gpu_test::gpu_available(&gpu_test_why_)) {                       \
      std::printf("SKIPPED: no CUDA device (%s)\n", gpu_test_why_.c_str()); \
      std::fflush(stdout);                                                  \
      return;                                                               \
    }                                                                       \
  } while (0)

// The wgmma tests' skip rule (after GPU_TEST_SKIP_WITHOUT_DEVICE): without an sm_90a Hopper and
// this build's sm_90a code (kernels::wgmma_supported) the test prints "SKIPPED: ..." and returns.
#define GPU_TEST_SKIP_WITHOUT_WGMMA()                                                          \
  do {                                                                                         \
    if (!kernels::wgmma_supported()) {                                                         \
      std::printf("SKIPPED: this GPU or build cannot run wgmma (needs sm_90a, Hopper)\n");    \
      std::fflush(stdout);                                                                     \
      return;                                                                                  \
    }                                                                                          \
  } while (0)
