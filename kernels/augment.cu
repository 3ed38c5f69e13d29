// GPU data preparation (normalise + reflect pad, once) and augmentation (per-epoch random
// parameters and permutation, per-step crop + flip gather). See kernels/augment.cuh.
#include "kernels/augment.cuh"

#include <curand_kernel.h>

#include <cub/device/device_radix_sort.cuh>

#include "kernels/common.cuh"

namespace kernels {

namespace {

constexpr int kImage = 32;  // CIFAR-10 images are 32 x 32 x 3

// PyTorch "reflect" index for i in [-p, L + p) with p < L: the edge pixel is not repeated.
__device__ __forceinline__ int reflect_index(int i, int L) {
  if (i < 0) return -i;
  if (i >= L) return 2 * (L - 1) - i;
  return i;
}

// One thread per output value out[img][y][x][c]; writes are contiguous across threads. The
// uint8 reads are strided by plane but this runs once per run.
__global__ void prepare_dataset_kernel(const uint8_t* __restrict__ planes, int n, int pad,
                                       Normalization norm, __half* __restrict__ out) {
  const int Hp = kImage + 2 * pad, Wp = kImage + 2 * pad;
  const int total = n * Hp * Wp * 3;  // < 2^30, checked by the launcher
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int pix = i / 3;
    const int c = i - pix * 3;
    const int row = pix / Wp;
    const int xx = pix - row * Wp;
    const int img = row / Hp;
    const int yy = row - img * Hp;
    const int sy = reflect_index(yy - pad, kImage), sx = reflect_index(xx - pad, kImage);
    const uint8_t v =
        planes[((long)img * 3 + c) * kImage * kImage + sy * kImage + sx];
    // Same expression as ref::normalize_cifar: (v - mean) / std in fp32 (IEEE division).
    out[i] = __float2half_rn(((float)v - norm.mean[c]) / norm.std_[c]);
  }
}

// Per image i: one Philox subsequence (i), 4 draws per epoch at offset 4 * epoch, so every
// (seed, epoch, image) gets independent numbers and no state is kept between epochs.
// Draws: x, y -> a 64-bit sort key (no ties in practice, so the permutation is uniform),
// z -> the two crop offsets (16 bits each; the modulo bias is < 2^-12 for 2*pad+1 = 9), w -> flip.
__global__ void epoch_params_kernel(uint64_t seed, uint64_t epoch, int n, int pad,
                                    unsigned long long* __restrict__ keys,
                                    int* __restrict__ values, CropFlipParams* __restrict__ params) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  curandStatePhilox4_32_10_t state;
  curand_init(seed, (unsigned long long)i, 4ull * epoch, &state);
  const uint4 r = curand4(&state);
  keys[i] = ((unsigned long long)r.x << 32) | r.y;
  values[i] = i;
  const unsigned offsets = 2u * (unsigned)pad + 1u;
  CropFlipParams p;
  p.dy = (int16_t)((r.z & 0xffffu) % offsets);
  p.dx = (int16_t)((r.z >> 16) % offsets);
  p.flip = (int16_t)(r.w & 1u);
  p.unused = 0;
  params[i] = p;
}

// One thread per output value out[b][y][x][c] (3072 per image); consecutive threads read
// consecutive channels / pixels of the crop window (reversed pixels when flipped).
__global__ void crop_flip_kernel(const __half* __restrict__ padded, int Hp, int Wp,
                                 const int* __restrict__ index,
                                 const CropFlipParams* __restrict__ params, int batch,
                                 __half* __restrict__ out) {
  const int total = batch * kImage * kImage * 3;  // < 2^30, checked by the launcher
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < total; i += gridDim.x * blockDim.x) {
    const int b = i / (kImage * kImage * 3);  // constant divisors: multiply-shift
    const int r = i - b * (kImage * kImage * 3);
    const int c = r % 3, x = (r / 3) % kImage, y = r / (3 * kImage);
    const int src = index[b];
    const CropFlipParams p = params[src];
    // The mirror applies to the cropped 32 x 32 window (as ref::crop_flip).
    const int sx = p.dx + (p.flip ? kImage - 1 - x : x);
    const int sy = p.dy + y;
    out[i] = padded[(((long)src * Hp + sy) * Wp + sx) * 3 + c];
  }
}

// Scratch layout of make_epoch_params: keys in/out, values in, then CUB's own temporary storage.
constexpr size_t kAlign = 256;
size_t align_up(size_t b) { return ceil_div(b, kAlign) * kAlign; }

}  // namespace

void prepare_dataset(const uint8_t* planes, int n, int pad, const Normalization& norm,
                     __half* out, cudaStream_t stream) {
  require(n >= 0, "prepare_dataset", "n must be >= 0");
  // One reflection covers pad <= 31, the limit of ref::reflect_pad and PyTorch.
  require(pad >= 0 && pad < kImage, "prepare_dataset", "need 0 <= pad < 32");
  if (n == 0) return;
  const long total = (long)n * (kImage + 2 * pad) * (kImage + 2 * pad) * 3;
  require(total < (1L << 30), "prepare_dataset", "dataset too large for 32-bit indices");
  const int block = 256;
  prepare_dataset_kernel<<<grid_stride_blocks(total, block, 65536), block, 0, stream>>>(
      planes, n, pad, norm, out);
  CUDA_CHECK_LAUNCH();
}

void make_epoch_params(uint64_t seed, uint64_t epoch, int n, int pad, int* perm,
                       CropFlipParams* params, void* temp, size_t* temp_bytes,
                       cudaStream_t stream) {
  require(n > 0, "make_epoch_params", "n must be > 0");
  require(pad >= 0 && pad < kImage, "make_epoch_params", "need 0 <= pad < 32");
  require(temp_bytes != nullptr, "make_epoch_params", "temp_bytes must not be null");
  size_t cub_bytes = 0;
  // With a null storage pointer CUB only reports the size it needs (no work, no launch).
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, cub_bytes,
                                             (const unsigned long long*)nullptr,
                                             (unsigned long long*)nullptr, (const int*)nullptr,
                                             (int*)nullptr, n, 0, 64, stream));
  const size_t keys_bytes = align_up(sizeof(unsigned long long) * (size_t)n);
  const size_t vals_bytes = align_up(sizeof(int) * (size_t)n);
  const size_t need = 2 * keys_bytes + vals_bytes + cub_bytes;
  if (temp == nullptr) {
    *temp_bytes = need;
    return;
  }
  require(*temp_bytes >= need, "make_epoch_params", "temp smaller than the size it asked for");
  char* base = static_cast<char*>(temp);
  auto* keys_in = reinterpret_cast<unsigned long long*>(base);
  auto* keys_out = reinterpret_cast<unsigned long long*>(base + keys_bytes);
  auto* vals_in = reinterpret_cast<int*>(base + 2 * keys_bytes);
  void* cub_temp = base + 2 * keys_bytes + vals_bytes;

  const int block = 256;
  epoch_params_kernel<<<ceil_div(n, block), block, 0, stream>>>(seed, epoch, n, pad, keys_in,
                                                                vals_in, params);
  CUDA_CHECK_LAUNCH();
  // Sorting the indices by random keys gives a uniformly random permutation.
  CUDA_CHECK(cub::DeviceRadixSort::SortPairs(cub_temp, cub_bytes, keys_in, keys_out, vals_in,
                                             perm, n, 0, 64, stream));
  CUDA_CHECK_LAUNCH();
}

void crop_flip_batch(const __half* padded, int Hp, int Wp, const int* index,
                     const CropFlipParams* params, int batch, __half* out, cudaStream_t stream) {
  require(batch >= 0, "crop_flip_batch", "batch must be >= 0");
  require(Hp >= kImage && Wp >= kImage, "crop_flip_batch", "padded images smaller than 32x32");
  if (batch == 0) return;
  const long total = (long)batch * kImage * kImage * 3;
  require(total < (1L << 30), "crop_flip_batch", "batch too large for 32-bit indices");
  const int block = 256;
  crop_flip_kernel<<<grid_stride_blocks(total, block), block, 0, stream>>>(
      padded, Hp, Wp, index, params, batch, out);
  CUDA_CHECK_LAUNCH();
}

}  // namespace kernels
