// Convolutions through cuDNN: NHWC fp16 activations, KRSC fp16 filters, fp32 accumulation,
// stride 1, pad (R - 1) / 2. The fastest deterministic algorithm of each pass is chosen once at
// setup (deterministic, so a step is bitwise reproducible) by timing cuDNN's candidates on the
// real shape with cs::time_calls (GPU time, as in the graph-replayed step); the workspace comes
// from the caller's arena.
// CPU reference: kernels/ref/conv.h.
#pragma once
#include <cuda_fp16.h>
#include <cudnn.h>

#include <string>
#include <vector>

namespace cs {

struct ConvDesc {
  int N, H, W, C;  // input [N][H][W][C]
  int K, R;        // filters [K][R][R][C]; output [N][H][W][K]
};

// One algorithm cuDNN's find reported, and our own timing of it when it is a candidate.
struct ConvAlgoTiming {
  std::string pass;  // "fwd", "bwd_data", "bwd_filter"
  int algo;          // the cuDNN enum value
  std::string name;  // e.g. "IMPLICIT_PRECOMP_GEMM"
  float ms;          // time cuDNN measured (host-side cost included); < 0 when it failed
  float us;          // GPU time per call by cs::time_calls; < 0 when not a candidate (not
                     // deterministic, failed or too large)
  size_t workspace;  // bytes
};

class CudnnConv {
 public:
  CudnnConv(cudnnHandle_t handle, const ConvDesc& d);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // Times cuDNN's algorithms for the three passes on the given buffers (their contents are
  // overwritten; x, dy and w must hold finite data) and keeps the fastest deterministic one of
  // each within max_workspace bytes. workspace must have max_workspace bytes.
  void autotune(__half* x, __half* w, __half* y, void* workspace, size_t max_workspace);
  // Bytes of workspace the chosen algorithms need (max over the three passes).
  size_t workspace_bytes() const;

  // The stream is the one set on the handle (cudnnSetStream).
  void forward(const __half* x, const __half* w, __half* y, void* workspace) const;
  void backward_data(const __half* dy, const __half* w, __half* dx, void* workspace) const;
  void backward_filter(const __half* x, const __half* dy, __half* dw, void* workspace) const;

  const ConvDesc& desc() const { return d_; }
  // Every candidate timed by autotune(), and the chosen ones, for logs and JSON.
  const std::vector<ConvAlgoTiming>& timings() const { return timings_; }
  std::string chosen() const;  // e.g. "fwd=IMPLICIT_PRECOMP_GEMM bwd_data=... bwd_filter=..."
  std::string chosen_fwd() const;         // the algorithm's name alone, e.g. "IMPLICIT_PRECOMP_GEMM"
  std::string chosen_bwd_data() const;
  std::string chosen_bwd_filter() const;

 private:
  cudnnHandle_t handle_;
  ConvDesc d_;
  cudnnTensorDescriptor_t x_desc_, y_desc_;
  cudnnFilterDescriptor_t w_desc_;
  cudnnConvolutionDescriptor_t conv_desc_;
  cudnnConvolutionFwdAlgo_t fwd_algo_;
  cudnnConvolutionBwdDataAlgo_t bwd_data_algo_;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo_;
  size_t fwd_ws_ = 0, bwd_data_ws_ = 0, bwd_filter_ws_ = 0;
  std::vector<ConvAlgoTiming> timings_;
};

}  // namespace cs
