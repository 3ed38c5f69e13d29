#include "engine/gpu_context.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <vector>

#include "engine/cuda_check.h"

namespace cs {

GpuContext::GpuContext(int device) {
  CUDA_CHECK(cudaSetDevice(device));
  CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  CUDNN_CHECK(cudnnCreate(&cudnn_));
  CUDNN_CHECK(cudnnSetStream(cudnn_, stream_));
  CUBLAS_CHECK(cublasCreate(&cublas_));
  CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
}

GpuContext::~GpuContext() {
  // Destructors do not throw; errors at teardown are ignored.
  if (cublas_) cublasDestroy(cublas_);
  if (cudnn_) cudnnDestroy(cudnn_);
  if (stream_) cudaStreamDestroy(stream_);
}

void GpuContext::sync() const { CUDA_CHECK(cudaStreamSynchronize(stream_)); }

std::string GpuContext::library_versions() {
  // Versions are encoded as major*1000 + minor*10 (CUDA) or major*10000 + minor*100 + patch
  // (cuDNN 9); cuBLAS reports its parts through cublasGetProperty.
  char buf[256];
  const size_t cudnn_v = cudnnGetVersion();
  int cublas_major = 0, cublas_minor = 0, cublas_patch = 0;
  cublasGetProperty(MAJOR_VERSION, &cublas_major);
  cublasGetProperty(MINOR_VERSION, &cublas_minor);
  cublasGetProperty(PATCH_LEVEL, &cublas_patch);
  int runtime_v = 0, driver_v = 0;
  cudaRuntimeGetVersion(&runtime_v);
  cudaDriverGetVersion(&driver_v);
  std::snprintf(buf, sizeof(buf),
                "cuDNN %zu.%zu.%zu, cuBLAS %d.%d.%d, CUDA runtime %d.%d, driver %d.%d",
                cudnn_v / 10000, (cudnn_v % 10000) / 100, cudnn_v % 100, cublas_major, cublas_minor,
                cublas_patch, runtime_v / 1000, (runtime_v % 1000) / 10, driver_v / 1000,
                (driver_v % 1000) / 10);
  return buf;
}

CudaEvent::CudaEvent() { CUDA_CHECK(cudaEventCreate(&ev_)); }

CudaEvent::~CudaEvent() {
  if (ev_) cudaEventDestroy(ev_);
}

void CudaEvent::record(cudaStream_t stream) { CUDA_CHECK(cudaEventRecord(ev_, stream)); }

double elapsed_seconds(const CudaEvent& start, const CudaEvent& stop) {
  CUDA_CHECK(cudaEventSynchronize(stop.get()));
  float ms = 0.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start.get(), stop.get()));
  return ms * 1e-3;
}

namespace {

// Holds the stream for `ns` nanoseconds of GPU time (%globaltimer), so that the calls the host
// enqueues meanwhile wait in the queue and then run back to back.
__global__ void hold_stream_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

// Whether `ev` is still pending. cudaErrorNotReady is an answer, not an error; it is cleared
// from the last-error slot so that the next launch check does not report it.
bool event_pending(const CudaEvent& ev) {
  const cudaError_t e = cudaEventQuery(ev.get());
  if (e == cudaErrorNotReady) {
    (void)cudaGetLastError();
    return true;
  }
  CUDA_CHECK(e);
  return false;
}

}  // namespace

CallTiming time_calls(const std::function<void()>& f, cudaStream_t stream, int samples,
                      int warmup, double sample_target_us) {
  CudaEvent a, b;
  // Host microseconds to enqueue one call (cuDNN's calls cost tens of microseconds of host time,
  // more than some of its kernels take on the GPU).
  double host_us_per_call = 1.0;
  constexpr unsigned long long kMaxHoldNs = 2000000000ull;  // 2 s
  unsigned long long hold_ns = 50000;
  // One sample: the stream is held while the host enqueues `reps` calls, then they run back to
  // back between a and b. If a had already completed when the last call was enqueued, the GPU
  // may have waited for the host in between: the hold is lengthened and the sample taken again.
  auto run = [&](int reps) {
    for (int attempt = 0;; attempt++) {
      const unsigned long long need = (unsigned long long)(2.0 * host_us_per_call * reps * 1000.0) + 20000;
      hold_ns = std::min(std::max(hold_ns, need), kMaxHoldNs);
      hold_stream_kernel<<<1, 1, 0, stream>>>(hold_ns);
      CUDA_CHECK_LAUNCH();
      a.record(stream);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < reps; i++) f();
      const double host_us =
          std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
      const bool queued = event_pending(a);
      b.record(stream);
      const double us = elapsed_seconds(a, b) * 1e6 / reps;
      host_us_per_call = std::max(host_us_per_call, host_us / reps);
      if (queued || attempt >= 4) return us;
      hold_ns *= 4;
    }
  };
  for (int i = 0; i < warmup; i++) f();
  CUDA_CHECK(cudaStreamSynchronize(stream));
  const double one_us = run(1);
  const int reps = (int)std::min(100.0, std::max(1.0, std::ceil(sample_target_us / std::max(one_us, 1e-3))));
  std::vector<double> us(std::max(samples, 1));
  for (double& u : us) u = run(reps);
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[0]};
}

double setup_time_us(const std::function<void()>& f, cudaStream_t stream, int samples, bool quick) {
  if (!quick) return time_calls(f, stream, samples).median_us;
  CudaEvent a, b;
  a.record(stream);
  f();
  b.record(stream);
  return elapsed_seconds(a, b) * 1e6;
}

}  // namespace cs
