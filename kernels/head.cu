// GPU head (maxpool 4x4 -> linear C -> 10 -> scale) and the label-smoothed cross-entropy.
// See kernels/head.cuh. The head is tiny (512 x 512 -> 10): simple kernels, fp32 math.
#include "kernels/head.cuh"

#include "kernels/common.cuh"

namespace kernels {

namespace {

constexpr int kClasses = 10;
constexpr int kPixels = 16;  // the 4x4 map pooled to 1x1
constexpr int kHeadThreads = 256;

// One block per image: each thread takes channels c = t, t + 256, ... (coalesced reads of the
// 16 pixels), writes feat, and keeps the 10 partial dot products; block sums give the logits.
__global__ void __launch_bounds__(kHeadThreads)
    head_forward_kernel(const __half* __restrict__ x, const float* __restrict__ w,
                        float* __restrict__ feat, float* __restrict__ logits, int C, float scale,
                        bool accumulate) {
  __shared__ float red[32];
  const long n = blockIdx.x;
  float acc[kClasses];
  for (int k = 0; k < kClasses; k++) acc[k] = 0.0f;
  for (int c = threadIdx.x; c < C; c += blockDim.x) {
    const __half* xp = x + n * kPixels * C + c;
    float m = __half2float(xp[0]);
    for (int p = 1; p < kPixels; p++) m = fmaxf(m, __half2float(xp[(long)p * C]));
    feat[n * C + c] = m;
    for (int k = 0; k < kClasses; k++) acc[k] += m * w[(long)k * C + c];
  }
  for (int k = 0; k < kClasses; k++) {
    const float total = block_reduce_sum(acc[k], red);
    if (threadIdx.x == 0) {
      const float v = scale * total;
      logits[n * kClasses + k] = accumulate ? logits[n * kClasses + k] + v : v;
    }
  }
}

// dx: one thread per (image, channel): dfeat = scale * sum_k dlogits[k] w[k][c], written to the
// first maximum of the 16 pixels (rows then columns, as ref::maxpool_backward), zeros elsewhere.
__global__ void head_backward_dx_kernel(const __half* __restrict__ x,
                                        const float* __restrict__ w,
                                        const float* __restrict__ dlogits,
                                        __half* __restrict__ dx, int N, int C, float scale) {
  const int total = N * C;  // at most 10,000 x 512
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const long n = i / C;
    const int c = i - (int)n * C;
    float d = 0.0f;
    for (int k = 0; k < kClasses; k++) d += dlogits[n * kClasses + k] * w[(long)k * C + c];
    d *= scale;
    const __half* xp = x + n * kPixels * C + c;
    int arg = 0;
    float m = __half2float(xp[0]);
    for (int p = 1; p < kPixels; p++) {
      const float v = __half2float(xp[(long)p * C]);
      if (v > m) {
        m = v;
        arg = p;
      }
    }
    __half* dp = dx + n * kPixels * C + c;
    for (int p = 0; p < kPixels; p++) dp[(long)p * C] = __float2half_rn(p == arg ? d : 0.0f);
  }
}

// dw[k][c] = scale * sum_n dlogits[n][k] * feat[n][c]. A block takes kDwChannels channels and
// splits the batch into kDwSlices strided slices: a thread sums its slice's images for all 10
// classes of its channel (each feat value read once, coalesced across the channels), then one
// thread per (k, c) adds the slices' sums in slice order from shared memory: a fixed order, so
// deterministic. (One thread per (k, c) summing all N images in turn ran 20 blocks of 512
// dependent steps each: most of head_backward's ~30 us in kernel_bench on the H100.)
constexpr int kDwChannels = 32, kDwSlices = 32;
__global__ void __launch_bounds__(kDwChannels * kDwSlices)
    head_backward_dw_kernel(const float* __restrict__ feat, const float* __restrict__ dlogits,
                            float* __restrict__ dw, int N, int C, float scale) {
  __shared__ float red[kDwSlices][kClasses][kDwChannels];  // 40 KiB
  const int t = threadIdx.x % kDwChannels, slice = threadIdx.x / kDwChannels;
  const int c = blockIdx.x * kDwChannels + t;
  float s[kClasses];
#pragma unroll
  for (int k = 0; k < kClasses; k++) s[k] = 0.0f;
  if (c < C)
    for (int n = slice; n < N; n += kDwSlices) {
      const float f = feat[(long)n * C + c];
#pragma unroll
      for (int k = 0; k < kClasses; k++) s[k] += dlogits[(long)n * kClasses + k] * f;
    }
#pragma unroll
  for (int k = 0; k < kClasses; k++) red[slice][k][t] = s[k];
  __syncthreads();
  if (threadIdx.x < kClasses * kDwChannels) {
    const int k = threadIdx.x / kDwChannels, tc = threadIdx.x % kDwChannels;
    const int cc = blockIdx.x * kDwChannels + tc;
    float v = red[0][k][tc];
    for (int j = 1; j < kDwSlices; j++) v += red[j][k][tc];
    if (cc < C) dw[(long)k * C + cc] = scale * v;
  }
}

// One block for the whole batch (N is 512 in training, 10,000 at most in evaluation): each
// thread handles rows t, t + blockDim, ...; fixed-order block sums make the loss deterministic
// and need no zeroed accumulator.
constexpr int kXentThreads = 512;
__global__ void __launch_bounds__(kXentThreads)
    xent_kernel(const float* __restrict__ logits, const uint8_t* __restrict__ labels, int N,
                int K, float smoothing, float* __restrict__ dlogits, float* __restrict__ loss_sum,
                int* __restrict__ correct) {
  __shared__ float red[32];
  float loss = 0.0f;
  float hits = 0.0f;
  for (int i = threadIdx.x; i < N; i += blockDim.x) {
    const float* z = logits + (long)i * K;
    const int t = labels[i];
    int argmax = 0;
    for (int k = 1; k < K; k++)
      if (z[k] > z[argmax]) argmax = k;
    const float zmax = z[argmax];
    float sum_exp = 0.0f, sum_z = 0.0f;
    for (int k = 0; k < K; k++) {
      sum_exp += expf(z[k] - zmax);
      sum_z += z[k];
    }
    const float lse = zmax + logf(sum_exp);  // -log p[k] = lse - z[k]
    loss += (1.0f - smoothing) * (lse - z[t]) + smoothing * (lse - sum_z / (float)K);
    if (argmax == t) hits += 1.0f;
    if (dlogits != nullptr) {
      float* dz = dlogits + (long)i * K;
      for (int k = 0; k < K; k++)
        dz[k] = expf(z[k] - lse) - (k == t ? 1.0f - smoothing : 0.0f) - smoothing / (float)K;
    }
  }
  const float total = block_reduce_sum(loss, red);
  const float total_hits = block_reduce_sum(hits, red);  // exact in fp32 below 2^24 rows
  if (threadIdx.x == 0) {
    *loss_sum = total;
    if (correct != nullptr) *correct = (int)total_hits;
  }
}

}  // namespace

void head_forward(const __half* x, const float* w, float* feat, float* logits, int N, int C,
                  float scale, bool accumulate, cudaStream_t stream) {
  require(N >= 0 && C > 0, "head_forward", "need N >= 0, C > 0");
  if (N == 0) return;
  head_forward_kernel<<<N, kHeadThreads, 0, stream>>>(x, w, feat, logits, C, scale, accumulate);
  CUDA_CHECK_LAUNCH();
}

void head_backward(const __half* x, const float* feat, const float* w, const float* dlogits,
                   __half* dx, float* dw, int N, int C, float scale, cudaStream_t stream) {
  require(N > 0 && C > 0 && (long)N * C < (1L << 30), "head_backward", "need 0 < N * C < 2^30");
  const int block = 256;
  head_backward_dx_kernel<<<grid_stride_blocks((long)N * C, block), block, 0, stream>>>(
      x, w, dlogits, dx, N, C, scale);
  CUDA_CHECK_LAUNCH();
  head_backward_dw_kernel<<<ceil_div(C, kDwChannels), kDwChannels * kDwSlices, 0, stream>>>(feat, dlogits, dw, N, C,
                                                                                        scale);
  CUDA_CHECK_LAUNCH();
}

void xent_smooth_forward_backward(const float* logits, const uint8_t* labels, int N, int K,
                                  float smoothing, float* dlogits, float* loss_sum, int* correct,
                                  cudaStream_t stream) {
  require(N > 0 && K > 0, "xent_smooth_forward_backward", "need N, K > 0");
  xent_kernel<<<1, kXentThreads, 0, stream>>>(logits, labels, N, K, smoothing, dlogits, loss_sum,
                                              correct);
  CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
