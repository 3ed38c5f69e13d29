// The GPU engine's per-process state: one non-blocking stream with the cuDNN and cuBLAS
// handles bound to it, and CUDA-event timing. Everything the engine launches goes on stream(),
// so work is ordered without device-wide syncs and can be captured into a CUDA graph.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <functional>
#include <string>

namespace cs {

class GpuContext {
 public:
  explicit GpuContext(int device = 0);  // sets the device, creates stream and handles
  ~GpuContext();
  GpuContext(const GpuContext&) = delete;
  GpuContext& operator=(const GpuContext&) = delete;

  cudaStream_t stream() const { return stream_; }
  cudnnHandle_t cudnn() const { return cudnn_; }
  cublasHandle_t cublas() const { return cublas_; }
  void sync() const;  // cudaStreamSynchronize, checked

  // "cuDNN 9.x.y, cuBLAS 13.x.y, CUDA runtime 13.0, driver 13.0" for logs and JSON.
  static std::string library_versions();

 private:
  cudaStream_t stream_ = nullptr;
  cudnnHandle_t cudnn_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

// A CUDA event with timing enabled. record() enqueues it on a stream; the time between two
// recorded events is measured on the GPU's timeline, so host-side launch overhead between them
// counts only where it leaves the GPU idle.
class CudaEvent {
 public:
  CudaEvent();
  ~CudaEvent();
  CudaEvent(const CudaEvent&) = delete;
  CudaEvent& operator=(const CudaEvent&) = delete;
  void record(cudaStream_t stream);
  cudaEvent_t get() const { return ev_; }

 private:
  cudaEvent_t ev_ = nullptr;
};

// Seconds from `start` to `stop`; waits for `stop` to complete.
double elapsed_seconds(const CudaEvent& start, const CudaEvent& stop);

// Per-call GPU time of f (which enqueues work on `stream`): `warmup` untimed calls, then
// `samples` samples of R back-to-back calls between two events, R chosen (1..100) so that a
// sample lasts about sample_target_us (one short launch alone is dominated by event
// resolution). Before each sample a one-thread kernel holds the stream until the host has
// enqueued all R calls (checked: the sample is retaken with a longer hold if not), so the
// calls' host-side cost is not timed: the training step replays its calls as a CUDA graph,
// where that cost is not paid, and cuDNN's calls cost more host time than some of its kernels
// take on the GPU. The protocol of kernel_bench, conv_bench and the per-layer conv selection.
struct CallTiming {
  double median_us = -1, min_us = -1;
};
CallTiming time_calls(const std::function<void()>& f, cudaStream_t stream, int samples,
                      int warmup = 3, double sample_target_us = 200.0);

// The per-call microseconds a setup-time choice compares (conv selection, fused configs):
// time_calls' median over `samples`, or with `quick` one call between two events, no warm-up
// and no hold (host-side cost included), for the quick autotune of runs whose timings mean
// nothing (under compute-sanitizer, where every launch is instrumented and time_calls'
// repetitions cost minutes).
double setup_time_us(const std::function<void()>& f, cudaStream_t stream, int samples, bool quick);

}  // namespace cs
