// GPU optimiser (SGD with Nesterov momentum over all tensors in one launch), the step counter,
// weight EMA and the fp32 -> fp16 cast. See kernels/optim.cuh.
#include "kernels/optim.cuh"

#include "kernels/common.cuh"

namespace kernels {

namespace {

constexpr int kOptThreads = 256;
// Blocks per tensor (grid x); the largest tensor (512x3x3x512 = 2.4M) then loops ~36 times per
// thread, the small BN-bias tensors leave most of their blocks idle.
constexpr int kOptBlocksPerTensor = 256;

// grid (blocks per tensor, tensors): blockIdx.y picks the tensor, grid-stride within it.
// The table (about 800 bytes) is passed by value as a kernel parameter.
__global__ void __launch_bounds__(kOptThreads)
    sgd_nesterov_multi_kernel(float* __restrict__ w, __half* __restrict__ w_half,
                              const float* __restrict__ g, const __half* __restrict__ g_half,
                              float* __restrict__ v, TensorTable table,
                              const float* __restrict__ lr_table,
                              const int* __restrict__ step_counter, float wd0, float wd1,
                              float momentum) {
  const int t = blockIdx.y;
  const long offset = table.offset[t], size = table.size[t];
  const int group = table.group[t];
  const bool half_grad = table.grad_half[t] != 0;
  const float lr = lr_table[(long)(*step_counter) * 2 + group];
  const float wd = group == 0 ? wd0 : wd1;
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < size;
       i += (long)gridDim.x * blockDim.x) {
    const long j = offset + i;
    const float grad = half_grad ? __half2float(g_half[j]) : g[j];
    const float wj = w[j];
    // As ref::sgd_nesterov_step: g += wd * w; g *= -lr; v = m * v + g; w += g + m * v.
    const float step = -lr * (grad + wd * wj);
    const float vj = momentum * v[j] + step;
    const float wn = wj + step + momentum * vj;
    v[j] = vj;
    w[j] = wn;
    if (half_grad) w_half[j] = __float2half_rn(wn);
  }
}

__global__ void advance_step_kernel(int* step_counter) { *step_counter += 1; }

__global__ void ema_kernel(float* __restrict__ ema, const float* __restrict__ w, long n,
                           float rho) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
       i += (long)gridDim.x * blockDim.x)
    ema[i] = rho * ema[i] + (1.0f - rho) * w[i];
}

__global__ void cast_kernel(const float* __restrict__ x, __half* __restrict__ y, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n;
       i += (long)gridDim.x * blockDim.x)
    y[i] = __float2half_rn(x[i]);
}

}  // namespace

void sgd_nesterov_multi(float* w, __half* w_half, const float* g, const __half* g_half, float* v,
                        const TensorTable& table, const float* lr_table, const int* step_counter,
                        float wd0, float wd1, float momentum, cudaStream_t stream) {
  const char* fn = "sgd_nesterov_multi";
  require(table.count > 0 && table.count <= kMaxTensors, fn, "table.count must be 1..32");
  for (int t = 0; t < table.count; t++) {
    require(table.offset[t] >= 0 && table.size[t] >= 0, fn, "negative offset or size");
    require(table.group[t] == 0 || table.group[t] == 1, fn, "group must be 0 or 1");
    require(table.grad_half[t] == 0 || (g_half != nullptr && w_half != nullptr), fn,
            "fp16 gradient tensors need g_half and w_half");
    require(table.grad_half[t] != 0 || g != nullptr, fn, "fp32 gradient tensors need g");
  }
  const dim3 grid(kOptBlocksPerTensor, table.count);
  sgd_nesterov_multi_kernel<<<grid, kOptThreads, 0, stream>>>(
      w, w_half, g, g_half, v, table, lr_table, step_counter, wd0, wd1, momentum);
  CUDA_CHECK_LAUNCH();
}

void advance_step(int* step_counter, cudaStream_t stream) {
  advance_step_kernel<<<1, 1, 0, stream>>>(step_counter);
  CUDA_CHECK_LAUNCH();
}

void ema_update(float* ema, const float* w, long n, float rho, cudaStream_t stream) {
  require(n >= 0, "ema_update", "n must be >= 0");
  if (n == 0) return;
  const int block = 256;
  ema_kernel<<<grid_stride_blocks(n, block), block, 0, stream>>>(ema, w, n, rho);
  CUDA_CHECK_LAUNCH();
}

void cast_f32_to_f16(const float* x, __half* y, long n, cudaStream_t stream) {
  require(n >= 0, "cast_f32_to_f16", "n must be >= 0");
  if (n == 0) return;
  const int block = 256;
  cast_kernel<<<grid_stride_blocks(n, block), block, 0, stream>>>(x, y, n);
  CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
