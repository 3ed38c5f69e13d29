// Error checks with file:line for every CUDA runtime / cuDNN / cuBLAS / cuRAND call.
// A failed call throws cs::CudaError so a benchmark can report it and clean up.
#pragma once
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <curand.h>

#include <stdexcept>
#include <string>

namespace cs {

struct CudaError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

[[noreturn]] void throw_cuda_error(const char* lib, const std::string& what, const char* expr,
                                   const char* file, int line);
const char* cublas_status_string(cublasStatus_t s);
const char* curand_status_string(curandStatus_t s);

}  // namespace cs

#define CUDA_CHECK(expr)                                                                  \
  do {                                                                                    \
    cudaError_t cs_err_ = (expr);                                                         \
    if (cs_err_ != cudaSuccess)                                                           \
      ::cs::throw_cuda_error("CUDA", cudaGetErrorString(cs_err_), #expr, __FILE__, __LINE__); \
  } while (0)

#define CUDNN_CHECK(expr)                                                                 \
  do {                                                                                    \
    cudnnStatus_t cs_err_ = (expr);                                                       \
    if (cs_err_ != CUDNN_STATUS_SUCCESS)                                                  \
      ::cs::throw_cuda_error("cuDNN", cudnnGetErrorString(cs_err_), #expr, __FILE__, __LINE__); \
  } while (0)

#define CUBLAS_CHECK(expr)                                                                \
  do {                                                                                    \
    cublasStatus_t cs_err_ = (expr);                                                      \
    if (cs_err_ != CUBLAS_STATUS_SUCCESS)                                                 \
      ::cs::throw_cuda_error("cuBLAS", ::cs::cublas_status_string(cs_err_), #expr, __FILE__, \
                             __LINE__);                                                   \
  } while (0)

#define CURAND_CHECK(expr)                                                                \
  do {                                                                                    \
    curandStatus_t cs_err_ = (expr);                                                      \
    if (cs_err_ != CURAND_STATUS_SUCCESS)                                                 \
      ::cs::throw_cuda_error("cuRAND", ::cs::curand_status_string(cs_err_), #expr, __FILE__, \
                             __LINE__);                                                   \
  } while (0)

// After every kernel launch: catches bad launch configurations at the launch site.
#define CUDA_CHECK_LAUNCH() CUDA_CHECK(cudaGetLastError())
