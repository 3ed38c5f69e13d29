// CPU reference of data preparation (normalise, reflect pad) and augmentation (crop, flip,
// shuffle), plus the SplitMix64 RNG that drives the CPU path.
#include "kernels/ref/augment.h"

#include <numeric>
#include <stdexcept>
#include <utility>

namespace ref {

void normalize_cifar(const uint8_t* planes, int n, const float mean[3], const float std_[3],
                     float* out) {
  // Record i: planes[i][c][y][x] (3072 bytes, no label byte) -> out[i][y][x][c].
  const int HW = 32 * 32;
  for (int i = 0; i < n; i++) {
    const uint8_t* rec = planes + (size_t)i * 3 * HW;
    float* o = out + (size_t)i * HW * 3;
    for (int p = 0; p < HW; p++)
      for (int c = 0; c < 3; c++) o[p * 3 + c] = ((float)rec[c * HW + p] - mean[c]) / std_[c];
  }
}

// PyTorch "reflect" index for i in [-p, L + p): -1 -> 1, L -> L - 2 (the edge is not repeated).
static inline int reflect_index(int i, int L) {
  if (i < 0) return -i;
  if (i >= L) return 2 * (L - 1) - i;
  return i;
}

void reflect_pad(const float* x, float* y, int N, int H, int W, int C, int p) {
  // A single reflection only covers p <= L - 1, the same limit PyTorch enforces.
  if (p < 0 || p >= H || p >= W) throw std::invalid_argument("reflect_pad: need 0 <= p < H, W");
  const int Hp = H + 2 * p, Wp = W + 2 * p;
  for (int n = 0; n < N; n++) {
    const float* xn = x + (size_t)n * H * W * C;
    float* yn = y + (size_t)n * Hp * Wp * C;
    for (int yy = 0; yy < Hp; yy++) {
      const int sy = reflect_index(yy - p, H);
      for (int xx = 0; xx < Wp; xx++) {
        const int sx = reflect_index(xx - p, W);
        const float* src = xn + ((size_t)sy * W + sx) * C;
        float* dst = yn + ((size_t)yy * Wp + xx) * C;
        for (int c = 0; c < C; c++) dst[c] = src[c];
      }
    }
  }
}

void crop_flip(const float* padded, int Hp, int Wp, int C, const int* index,
               const CropFlip* params, int batch, int S, float* out) {
  for (int b = 0; b < batch; b++) {
    const CropFlip& pr = params[b];
    if (pr.dy < 0 || pr.dx < 0 || pr.dy + S > Hp || pr.dx + S > Wp)
      throw std::invalid_argument("crop_flip: crop window outside the padded image");
    const float* src = padded + (size_t)index[b] * Hp * Wp * C;
    float* dst = out + (size_t)b * S * S * C;
    for (int y = 0; y < S; y++) {
      for (int x = 0; x < S; x++) {
        // The mirror is applied to the cropped S x S window, so column x reads S-1-x of it.
        const int sx = pr.dx + (pr.flip ? S - 1 - x : x);
        const float* s = src + ((size_t)(pr.dy + y) * Wp + sx) * C;
        float* d = dst + ((size_t)y * S + x) * C;
        for (int c = 0; c < C; c++) d[c] = s[c];
      }
    }
  }
}

void flip_horizontal(const float* x, float* y, int N, int H, int W, int C) {
  for (int n = 0; n < N; n++)
    for (int yy = 0; yy < H; yy++)
      for (int xx = 0; xx < W; xx++) {
        const float* s = x + (((size_t)n * H + yy) * W + (W - 1 - xx)) * C;
        float* d = y + (((size_t)n * H + yy) * W + xx) * C;
        for (int c = 0; c < C; c++) d[c] = s[c];
      }
}

uint64_t Rng::next_u64() {
  // SplitMix64 (Steele, Lea, Flood 2014; the constants of Vigna's reference code).
  state += 0x9E3779B97F4A7C15ull;
  uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

uint32_t Rng::uniform_int(uint32_t n) {
  if (n == 0) throw std::invalid_argument("Rng::uniform_int: n must be > 0");
  // Lemire's multiply-shift with rejection: unbiased for every n. The high 32 bits of the
  // SplitMix64 output are used as the 32-bit draw.
  uint64_t m = (uint64_t)(uint32_t)(next_u64() >> 32) * n;
  uint32_t low = (uint32_t)m;
  if (low < n) {
    const uint32_t threshold = (uint32_t)(-n) % n;  // 2^32 mod n
    while (low < threshold) {
      m = (uint64_t)(uint32_t)(next_u64() >> 32) * n;
      low = (uint32_t)m;
    }
  }
  return (uint32_t)(m >> 32);
}

float Rng::uniform() {
  // 24 random bits -> k / 2^24: exactly representable, so the result is < 1.
  return (float)(next_u64() >> 40) * (1.0f / 16777216.0f);
}

std::vector<int> random_permutation(int n, Rng& rng) {
  std::vector<int> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  for (int i = n - 1; i > 0; i--) std::swap(perm[i], perm[rng.uniform_int((uint32_t)i + 1)]);
  return perm;
}

void random_crop_flip(int batch, int pad, Rng& rng, CropFlip* out) {
  const uint32_t offsets = (uint32_t)(2 * pad + 1);
  for (int i = 0; i < batch; i++) {
    out[i].dy = (int)rng.uniform_int(offsets);
    out[i].dx = (int)rng.uniform_int(offsets);
    out[i].flip = (int)rng.uniform_int(2);
  }
}

}  // namespace ref
