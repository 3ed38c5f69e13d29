// Per-layer choice between cuDNN and the hand-written implicit-GEMM kernels
// (kernels/conv/implicit_gemm.cuh, kernels/conv/igemm_backward.cuh, and on Hopper
// kernels/conv/wgmma_conv.cuh for all three passes), made once at setup.
//
// For each pass of one convolution shape (forward, input gradient, weight gradient) autotune()
// times cuDNN's chosen deterministic algorithm (engine/conv_cudnn.h) and every igemm tile
// configuration on the real shape, and keeps the fastest. An igemm candidate is eligible only
// if its output on the autotune data agrees with cuDNN's (rel. L2 <= kConvSelectTol over the
// whole output, largest difference <= kConvSelectMaxTol of the largest |value|, all values
// finite): a kernel that is wrong on this GPU or shape is never used,
// and the record says why. Every candidate is deterministic, so a step stays bitwise
// reproducible once the choice is made; the choice itself comes from timings and may differ
// between processes (docs/gpu_engine.md).
#pragma once
#include <cuda_fp16.h>
#include <cudnn.h>

#include <functional>
#include <string>
#include <vector>

#include "engine/conv_cudnn.h"
#include "kernels/conv/implicit_gemm.cuh"
#include "kernels/conv/wgmma_conv.cuh"

namespace cs {

// auto: the fastest eligible candidate; cudnn: cuDNN only (ours not even timed); igemm: the
// fastest eligible one of ours (the mma.sync igemm kernels, and on Hopper the wgmma ones),
// cuDNN only where none is eligible. auto-untested: as auto, with the wgmma configs that have
// not yet passed their GPU tests (kernels::wgmma_config_gpu_tested) among the candidates too,
// so that a GPU session can measure a new kernel in training without a rebuild; each is still
// checked against cuDNN's output before it may be chosen (a kernel that traps still ends the
// run). The others consider tested configs only.
enum class ConvPolicy { kAuto, kCudnn, kIgemm, kAutoUntested };
const char* conv_policy_name(ConvPolicy p);
// "auto" | "cudnn" | "igemm" | "auto-untested"; false for anything else.
bool parse_conv_policy(const std::string& s, ConvPolicy* out);

// An igemm output may differ from cuDNN's by both sides' fp16 output rounding (~3e-4 rms each)
// and cuDNN's algorithm error (kernel_bench allows 1e-2 against the CPU reference).
constexpr double kConvSelectTol = 1e-2;
// The largest single difference, relative to the largest |value|: catches a few wrong elements
// (a missed edge tile, one bad row) that the rel. L2 over millions of values would average away.
// Per element both sides differ by their fp16 roundings (2^-11 relative each) and cuDNN's
// algorithm error; 5e-2 of the largest value is far above that and far below an indexing error.
constexpr double kConvSelectMaxTol = 5e-2;

// How far an fp16 tensor is from a reference, computed on the GPU in double (the selection's
// check, and the engine's checks of its fused kernels at setup): ||out - ref|| / ||ref|| and
// max |out - ref| / max |ref|, both infinite when either tensor holds a NaN or Inf. agrees():
// within kConvSelectTol and kConvSelectMaxTol. partial: kCompareScratchDoubles doubles of
// device scratch. Synchronises the stream.
struct OutputDistance {
  double rel_l2, rel_max;
  bool agrees() const { return rel_l2 <= kConvSelectTol && rel_max <= kConvSelectMaxTol; }
};
constexpr int kCompareScratchDoubles = 4 * 256;
OutputDistance compare_outputs(const __half* out, const __half* ref, long n, double* partial, cudaStream_t s);

enum class ConvPass { kFwd = 0, kBwdData = 1, kBwdFilter = 2 };
const char* conv_pass_name(ConvPass p);  // "fwd", "bwd_data", "bwd_filter"

struct ConvCandidate {
  ConvPass pass;
  std::string kernel;     // "cudnn" | "igemm" | "wgmma"
  std::string config;     // cuDNN's algorithm name or our tile config
  int splits = 0;         // igemm / wgmma bwd_filter: split-K slabs (0 with stream_k)
  bool stream_k = false;  // wgmma bwd_filter: stream-K (kernels::conv_backward_filter_wgmma_streamk)
  double us = -1;         // median time per call; < 0 when not timed
  double rel_diff = 0;    // igemm: rel. L2 distance to cuDNN's output
  std::string status;     // "ok", or why the candidate was not eligible
};

class ConvSelect {
 public:
  ConvSelect(cudnnHandle_t handle, const ConvDesc& d, ConvPolicy policy);
  ConvSelect(const ConvSelect&) = delete;
  ConvSelect& operator=(const ConvSelect&) = delete;

  // Autotunes cuDNN (CudnnConv::autotune, on x, w, y, which it overwrites), calls refill() to
  // put finite data of moderate size back into x, w and y, then times and validates the igemm
  // candidates of each pass against cuDNN, using y as the output gradient. Scratch comes from
  // `workspace` (max_workspace bytes): two output-sized buffers for the comparison plus the
  // candidates' own scratch; a candidate that does not fit is recorded as such.
  // Synchronises the handle's stream.
  // quick: for runs whose timings mean nothing and cost much (under compute-sanitizer): cuDNN
  // keeps its heuristic algorithms (no find), and every candidate is still run and validated
  // but timed by one call instead of cs::time_calls' samples (cs::setup_time_us).
  void autotune(__half* x, __half* w, __half* y, void* workspace, size_t max_workspace,
                int sm_count, const std::function<void()>& refill, bool quick = false);
  // Bytes of workspace the chosen implementations need (max over the passes).
  size_t workspace_bytes() const;

  // On the handle's stream (cudnnSetStream), as CudnnConv.
  void forward(const __half* x, const __half* w, __half* y, void* workspace) const;
  void backward_data(const __half* dy, const __half* w, __half* dx, void* workspace) const;
  void backward_filter(const __half* x, const __half* dy, __half* dw, void* workspace) const;

  const ConvDesc& desc() const { return d_; }
  ConvPolicy policy() const { return policy_; }
  // e.g. "fwd=wgmma:wgmma_128x128x64_s4 bwd_data=cudnn:ALGO_1 bwd_filter=igemm:64x64x32_s4/splits=24"
  // (a stream-K weight gradient: "bwd_filter=wgmma:wgmma_128x256x64_s4_ws/stream-K")
  std::string chosen() const;
  // Every candidate autotune() considered, in the order tried (cuDNN's chosen one first per pass).
  const std::vector<ConvCandidate>& candidates() const { return candidates_; }

 private:
  enum class Impl { kCudnn, kIgemm, kWgmma };
  struct Choice {
    Impl impl = Impl::kCudnn;
    kernels::IgemmConfig config = kernels::IgemmConfig::k128x128x32s4;   // kIgemm
    kernels::WgmmaConfig wgmma_config = kernels::WgmmaConfig::k128x128x64s4;  // kWgmma
    int splits = 1;         // kIgemm / kWgmma weight gradient
    bool stream_k = false;  // kWgmma weight gradient: stream-K instead of `splits` slabs
    size_t scratch = 0;     // our kernels' scratch bytes
  };
  cudaStream_t stream() const;
  bool igemm_shape_ok() const;
  void run_ours(ConvPass pass, const Choice& c, const __half* a, const __half* b, __half* out,
                void* scratch) const;

  cudnnHandle_t handle_;
  ConvDesc d_;
  ConvPolicy policy_;
  CudnnConv cudnn_;
  Choice choice_[3];
  std::vector<ConvCandidate> candidates_;
};

}  // namespace cs
