#include "engine/gpu_context.h"

#include <algorithm>
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

CallTiming time_calls(const std::function<void()>& f, cudaStream_t stream, int samples,
                      int warmup, double sample_target_us) {
  CudaEvent a, b;
  auto run = [&](int reps) {
    a.record(stream);
    for (int i = 0; i < reps; i++) f();
    b.record(stream);
    return elapsed_seconds(a, b) * 1e6 / reps;
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

}  // namespace cs
