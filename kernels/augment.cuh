// GPU data preparation and augmentation (CPU reference: kernels/ref/augment.h).
//
// Once per run: uint8 planes -> normalised fp16 NHWC, reflect-padded by `pad`.
// Per epoch: a shuffle and per-image crop offsets / flips drawn from Philox(seed, epoch), then per
// step one kernel gathers the batch: crop + flip straight into the batch buffer.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kernels {

struct Normalization {
  float mean[3], std_[3];  // 0..255 scale
};

// planes [n][3][32][32] uint8 -> out [n][32+2p][32+2p][3] fp16, (v - mean) / std, reflect pad p.
void prepare_dataset(const uint8_t* planes, int n, int pad, const Normalization& norm,
                     __half* out, cudaStream_t stream);

// Same as ref::CropFlip, packed for the GPU.
struct CropFlipParams {
  int16_t dy, dx;
  int16_t flip, unused;
};

// Draws crop offsets in [0, 2*pad] and flips (p = 1/2) for n images with Philox(seed, epoch),
// and a uniformly random permutation perm[n] of 0..n-1 (random keys + radix sort).
// temp/temp_bytes: scratch from the arena; call with temp == nullptr to get the size needed.
void make_epoch_params(uint64_t seed, uint64_t epoch, int n, int pad, int* perm,
                       CropFlipParams* params, void* temp, size_t* temp_bytes,
                       cudaStream_t stream);

// out[i] = crop/flip of padded[index[i]] with params[index[i]]: out [batch][32][32][3] fp16.
// padded [*][Hp][Wp][3] with Hp = Wp = 32 + 2*pad.
void crop_flip_batch(const __half* padded, int Hp, int Wp, const int* index,
                     const CropFlipParams* params, int batch, __half* out, cudaStream_t stream);

}  // namespace kernels
