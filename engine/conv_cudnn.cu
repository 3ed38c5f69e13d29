// cuDNN convolutions (legacy cuDNN 9 API): NHWC fp16 tensors, KRSC fp16 filters, fp32
// accumulation with tensor-core math, stride 1, pad (R - 1) / 2. See engine/conv_cudnn.h.
//
// Only algorithms cuDNN reports as deterministic (CUDNN_DETERMINISTIC: no atomics, e.g. not
// BWD_DATA_ALGO_0 or BWD_FILTER_ALGO_0/3) are chosen, so a training step gives bitwise the same
// result every time it runs: fp16 activations make the step chaotic, and tiny summation-order
// differences grow into percent-level gradient differences through flipped max-pool choices.
#include "engine/conv_cudnn.h"

#include <stdexcept>
#include <vector>

#include "engine/cuda_check.h"
#include "engine/gpu_context.h"

namespace cs {

namespace {

const char* fwd_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "IMPLICIT_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "IMPLICIT_PRECOMP_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "DIRECT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
  }
  return "UNKNOWN";
}

const char* bwd_data_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0: return "ALGO_0";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: return "ALGO_1";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
  }
  return "UNKNOWN";
}

const char* bwd_filter_algo_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: return "ALGO_0";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1: return "ALGO_1";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: return "ALGO_3";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING: return "FFT_TILING";
  }
  return "UNKNOWN";
}

// The scaling factors of fp16 convolutions with fp32 compute are fp32 (cuDNN's rule: float
// for every data type but double).
const float kOne = 1.0f, kZero = 0.0f;

}  // namespace

CudnnConv::CudnnConv(cudnnHandle_t handle, const ConvDesc& d)
    : handle_(handle), d_(d), x_desc_(nullptr), y_desc_(nullptr), w_desc_(nullptr),
      conv_desc_(nullptr) {
  if (d.N <= 0 || d.H <= 0 || d.W <= 0 || d.C <= 0 || d.K <= 0 || d.R <= 0 || d.R % 2 == 0)
    throw std::invalid_argument("CudnnConv: need positive sizes and an odd filter size R");
  try {
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_desc_));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_desc_));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_desc_));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_desc_));
    // The 4d descriptors take dimensions in NCHW order whatever the memory format.
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_desc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, d.N, d.C,
                                           d.H, d.W));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(y_desc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_HALF, d.N, d.K,
                                           d.H, d.W));
    // NHWC filters are [K][R][S][C] (KRSC).
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(w_desc_, CUDNN_DATA_HALF, CUDNN_TENSOR_NHWC, d.K, d.C,
                                           d.R, d.R));
    const int pad = (d.R - 1) / 2;
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_desc_, pad, pad, 1, 1, 1, 1,
                                                CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc_, CUDNN_TENSOR_OP_MATH));
    int out_n = 0, out_c = 0, out_h = 0, out_w = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv_desc_, x_desc_, w_desc_, &out_n,
                                                      &out_c, &out_h, &out_w));
    if (out_n != d.N || out_c != d.K || out_h != d.H || out_w != d.W)
      throw std::logic_error("CudnnConv: cuDNN's output shape differs from [N][H][W][K]");

    // Until autotune() runs, cuDNN's heuristic choice (first supported deterministic entry) is
    // used, so an untuned convolution still works.
    int returned = 0;
    cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(handle_, x_desc_, w_desc_, conv_desc_,
                                                       y_desc_, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                       &returned, fwd));
    bool found = false;
    for (int i = 0; i < returned && !found; i++)
      if (fwd[i].status == CUDNN_STATUS_SUCCESS && fwd[i].determinism == CUDNN_DETERMINISTIC) {
        fwd_algo_ = fwd[i].algo;
        found = true;
      }
    if (!found) throw std::runtime_error("CudnnConv: cuDNN has no deterministic forward algorithm");

    cudnnConvolutionBwdDataAlgoPerf_t bd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
        handle_, w_desc_, y_desc_, conv_desc_, x_desc_, CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT,
        &returned, bd));
    found = false;
    for (int i = 0; i < returned && !found; i++)
      if (bd[i].status == CUDNN_STATUS_SUCCESS && bd[i].determinism == CUDNN_DETERMINISTIC) {
        bwd_data_algo_ = bd[i].algo;
        found = true;
      }
    if (!found)
      throw std::runtime_error("CudnnConv: cuDNN has no deterministic backward-data algorithm");

    cudnnConvolutionBwdFilterAlgoPerf_t bf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
        handle_, x_desc_, y_desc_, conv_desc_, w_desc_, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT,
        &returned, bf));
    found = false;
    for (int i = 0; i < returned && !found; i++)
      if (bf[i].status == CUDNN_STATUS_SUCCESS && bf[i].determinism == CUDNN_DETERMINISTIC) {
        bwd_filter_algo_ = bf[i].algo;
        found = true;
      }
    if (!found)
      throw std::runtime_error("CudnnConv: cuDNN has no deterministic backward-filter algorithm");

    CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(handle_, x_desc_, w_desc_, conv_desc_,
                                                        y_desc_, fwd_algo_, &fwd_ws_));
    CUDNN_CHECK(cudnnGetConvolutionBackwardDataWorkspaceSize(
        handle_, w_desc_, y_desc_, conv_desc_, x_desc_, bwd_data_algo_, &bwd_data_ws_));
    CUDNN_CHECK(cudnnGetConvolutionBackwardFilterWorkspaceSize(
        handle_, x_desc_, y_desc_, conv_desc_, w_desc_, bwd_filter_algo_, &bwd_filter_ws_));
  } catch (...) {
    // The destructor does not run for a constructor that throws.
    if (conv_desc_) cudnnDestroyConvolutionDescriptor(conv_desc_);
    if (w_desc_) cudnnDestroyFilterDescriptor(w_desc_);
    if (y_desc_) cudnnDestroyTensorDescriptor(y_desc_);
    if (x_desc_) cudnnDestroyTensorDescriptor(x_desc_);
    throw;
  }
}

CudnnConv::~CudnnConv() {
  // No checks: a destructor must not throw, and there is nothing to do about a failure here.
  cudnnDestroyConvolutionDescriptor(conv_desc_);
  cudnnDestroyFilterDescriptor(w_desc_);
  cudnnDestroyTensorDescriptor(y_desc_);
  cudnnDestroyTensorDescriptor(x_desc_);
}

namespace {

// Samples per candidate when the deterministic candidates are timed again (cs::time_calls).
constexpr int kRetimeSamples = 5;

// One deterministic candidate that fits: its cuDNN enum value, workspace and row in timings().
struct Candidate {
  int algo;
  size_t ws;
  size_t row;
};

// Index into `cands` of the fastest candidate by cs::time_calls (GPU time per call, host-side
// cost excluded); each candidate's time goes to its row's `us`. run(algo, ws) enqueues one call.
template <typename Run>
size_t fastest_candidate(const std::vector<Candidate>& cands, std::vector<ConvAlgoTiming>& rows,
                         cudaStream_t stream, const Run& run) {
  size_t best = 0;
  for (size_t i = 0; i < cands.size(); i++) {
    const Candidate& c = cands[i];
    rows[c.row].us = (float)time_calls([&] { run(c.algo, c.ws); }, stream, kRetimeSamples, 1).median_us;
    if (rows[c.row].us < rows[cands[best].row].us) best = i;
  }
  return best;
}

}  // namespace

void CudnnConv::autotune(__half* x, __half* w, __half* y, void* workspace, size_t max_workspace) {
  timings_.clear();
  // cuDNN's Find* runs every algorithm that fits in the workspace and returns them sorted by
  // its own timing. An entry is a candidate only if it succeeded, is deterministic, fits, and
  // cuDNN accepts it for this descriptor's math type (the workspace query fails for an algorithm
  // it would not run). The candidates are then timed again with cs::time_calls, which excludes
  // the host-side cost of each call (Find's times include it, and the training step, replayed as
  // a CUDA graph, does not pay it), and the fastest is kept. Every entry stays in timings().
  cudaStream_t stream = nullptr;
  CUDNN_CHECK(cudnnGetStream(handle_, &stream));
  int returned = 0;
  std::vector<Candidate> cands;

  cudnnConvolutionFwdAlgoPerf_t fwd[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
      handle_, x_desc_, x, w_desc_, w, conv_desc_, y_desc_, y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
      &returned, fwd, workspace, max_workspace));
  for (int i = 0; i < returned; i++) {
    const bool ok = fwd[i].status == CUDNN_STATUS_SUCCESS && fwd[i].memory <= max_workspace;
    timings_.push_back({"fwd", (int)fwd[i].algo, fwd_algo_name(fwd[i].algo),
                        ok ? fwd[i].time : -1.0f, -1.0f, fwd[i].memory});
    size_t ws = 0;
    if (ok && fwd[i].determinism == CUDNN_DETERMINISTIC &&
        cudnnGetConvolutionForwardWorkspaceSize(handle_, x_desc_, w_desc_, conv_desc_, y_desc_,
                                                fwd[i].algo, &ws) == CUDNN_STATUS_SUCCESS &&
        ws <= max_workspace)
      cands.push_back({(int)fwd[i].algo, ws, timings_.size() - 1});
  }
  if (cands.empty())
    throw std::runtime_error("CudnnConv::autotune: no deterministic forward algorithm fits");
  {
    const Candidate& c = cands[fastest_candidate(cands, timings_, stream, [&](int algo, size_t ws) {
      CUDNN_CHECK(cudnnConvolutionForward(handle_, &kOne, x_desc_, x, w_desc_, w, conv_desc_,
                                          (cudnnConvolutionFwdAlgo_t)algo, workspace, ws, &kZero,
                                          y_desc_, y));
    })];
    fwd_algo_ = (cudnnConvolutionFwdAlgo_t)c.algo;
    fwd_ws_ = c.ws;
  }

  // y now holds the forward output: finite, used as dy. x is overwritten with dx.
  cands.clear();
  cudnnConvolutionBwdDataAlgoPerf_t bd[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
  CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
      handle_, w_desc_, w, y_desc_, y, conv_desc_, x_desc_, x,
      CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT, &returned, bd, workspace, max_workspace));
  for (int i = 0; i < returned; i++) {
    const bool ok = bd[i].status == CUDNN_STATUS_SUCCESS && bd[i].memory <= max_workspace;
    timings_.push_back({"bwd_data", (int)bd[i].algo, bwd_data_algo_name(bd[i].algo),
                        ok ? bd[i].time : -1.0f, -1.0f, bd[i].memory});
    size_t ws = 0;
    if (ok && bd[i].determinism == CUDNN_DETERMINISTIC &&
        cudnnGetConvolutionBackwardDataWorkspaceSize(handle_, w_desc_, y_desc_, conv_desc_,
                                                     x_desc_, bd[i].algo,
                                                     &ws) == CUDNN_STATUS_SUCCESS &&
        ws <= max_workspace)
      cands.push_back({(int)bd[i].algo, ws, timings_.size() - 1});
  }
  if (cands.empty())
    throw std::runtime_error("CudnnConv::autotune: no deterministic backward-data algorithm fits");
  {
    const Candidate& c = cands[fastest_candidate(cands, timings_, stream, [&](int algo, size_t ws) {
      CUDNN_CHECK(cudnnConvolutionBackwardData(handle_, &kOne, w_desc_, w, y_desc_, y, conv_desc_,
                                               (cudnnConvolutionBwdDataAlgo_t)algo, workspace, ws,
                                               &kZero, x_desc_, x));
    })];
    bwd_data_algo_ = (cudnnConvolutionBwdDataAlgo_t)c.algo;
    bwd_data_ws_ = c.ws;
  }

  // x holds dx (finite), y holds dy; w is overwritten with dw.
  cands.clear();
  cudnnConvolutionBwdFilterAlgoPerf_t bf[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
  CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
      handle_, x_desc_, x, y_desc_, y, conv_desc_, w_desc_, w,
      CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT, &returned, bf, workspace, max_workspace));
  for (int i = 0; i < returned; i++) {
    const bool ok = bf[i].status == CUDNN_STATUS_SUCCESS && bf[i].memory <= max_workspace;
    timings_.push_back({"bwd_filter", (int)bf[i].algo, bwd_filter_algo_name(bf[i].algo),
                        ok ? bf[i].time : -1.0f, -1.0f, bf[i].memory});
    size_t ws = 0;
    if (ok && bf[i].determinism == CUDNN_DETERMINISTIC &&
        cudnnGetConvolutionBackwardFilterWorkspaceSize(handle_, x_desc_, y_desc_, conv_desc_,
                                                       w_desc_, bf[i].algo,
                                                       &ws) == CUDNN_STATUS_SUCCESS &&
        ws <= max_workspace)
      cands.push_back({(int)bf[i].algo, ws, timings_.size() - 1});
  }
  if (cands.empty())
    throw std::runtime_error(
        "CudnnConv::autotune: no deterministic backward-filter algorithm fits");
  {
    const Candidate& c = cands[fastest_candidate(cands, timings_, stream, [&](int algo, size_t ws) {
      CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle_, &kOne, x_desc_, x, y_desc_, y,
                                                 conv_desc_, (cudnnConvolutionBwdFilterAlgo_t)algo,
                                                 workspace, ws, &kZero, w_desc_, w));
    })];
    bwd_filter_algo_ = (cudnnConvolutionBwdFilterAlgo_t)c.algo;
    bwd_filter_ws_ = c.ws;
  }
}

size_t CudnnConv::workspace_bytes() const {
  size_t m = fwd_ws_;
  if (bwd_data_ws_ > m) m = bwd_data_ws_;
  if (bwd_filter_ws_ > m) m = bwd_filter_ws_;
  return m;
}

void CudnnConv::forward(const __half* x, const __half* w, __half* y, void* workspace) const {
  CUDNN_CHECK(cudnnConvolutionForward(handle_, &kOne, x_desc_, x, w_desc_, w, conv_desc_,
                                      fwd_algo_, workspace, fwd_ws_, &kZero, y_desc_, y));
}

void CudnnConv::backward_data(const __half* dy, const __half* w, __half* dx,
                              void* workspace) const {
  CUDNN_CHECK(cudnnConvolutionBackwardData(handle_, &kOne, w_desc_, w, y_desc_, dy, conv_desc_,
                                           bwd_data_algo_, workspace, bwd_data_ws_, &kZero,
                                           x_desc_, dx));
}

void CudnnConv::backward_filter(const __half* x, const __half* dy, __half* dw,
                                void* workspace) const {
  CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle_, &kOne, x_desc_, x, y_desc_, dy, conv_desc_,
                                             bwd_filter_algo_, workspace, bwd_filter_ws_, &kZero,
                                             w_desc_, dw));
}

std::string CudnnConv::chosen() const {
  return std::string("fwd=") + fwd_algo_name(fwd_algo_) +
         " bwd_data=" + bwd_data_algo_name(bwd_data_algo_) +
         " bwd_filter=" + bwd_filter_algo_name(bwd_filter_algo_);
}

std::string CudnnConv::chosen_fwd() const { return fwd_algo_name(fwd_algo_); }
std::string CudnnConv::chosen_bwd_data() const { return bwd_data_algo_name(bwd_data_algo_); }
std::string CudnnConv::chosen_bwd_filter() const { return bwd_filter_algo_name(bwd_filter_algo_); }

}  // namespace cs
