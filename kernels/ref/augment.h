// CPU reference: data preparation and augmentation.
//
// The dataset is normalised and reflect-padded once; per epoch each image gets a random crop
// offset (0..2*pad in each direction) and a random horizontal flip.
#pragma once
#include <cstdint>
#include <vector>

namespace ref {

// Per-channel normalisation of uint8 CIFAR records to fp32 NHWC:
// in: n records in the official layout ([3][32][32] planes, R then G then B);
// out [n][32][32][3] = (v - mean[c]) / std[c], mean/std on the 0..255 scale.
void normalize_cifar(const uint8_t* planes, int n, const float mean[3], const float std_[3],
                     float* out);

// Reflect padding (PyTorch "reflect": the edge pixel is not repeated).
// x [N][H][W][C] -> y [N][H+2p][W+2p][C].
void reflect_pad(const float* x, float* y, int N, int H, int W, int C, int p);

// Per-image augmentation parameters.
struct CropFlip {
  int dy, dx;  // crop offset into the padded image, 0..2*pad
  int flip;    // 1: mirror horizontally after cropping
};

// Crop + flip a batch: out[i] = crop(padded[index[i]], params[i]) [S][S][C], mirrored if flip.
void crop_flip(const float* padded, int Hp, int Wp, int C, const int* index,
               const CropFlip* params, int batch, int S, float* out);

// Horizontal mirror of x [N][H][W][C] into y (used by test-time augmentation).
void flip_horizontal(const float* x, float* y, int N, int H, int W, int C);

// Deterministic RNG for the CPU path (SplitMix64 stream); the GPU uses cuRAND Philox, so the
// two paths draw different augmentations for the same seed.
struct Rng {
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next_u64();
  uint32_t uniform_int(uint32_t n);  // in [0, n)
  float uniform();                   // in [0, 1)
};

// Random permutation of 0..n-1 (Fisher-Yates).
std::vector<int> random_permutation(int n, Rng& rng);
// Random crop offsets in [0, 2*pad] and flips with probability 1/2, for `batch` images.
void random_crop_flip(int batch, int pad, Rng& rng, CropFlip* out);

}  // namespace ref
