// CPU reference convolution (NHWC, KRSC filters, stride 1, same padding) as im2col + GEMM,
// and the cache-blocked fp32 GEMM it runs on.
//
// GEMM follows the GotoBLAS loop order: a KC x NC panel of op(B) and an MC x KC block of
// op(A) are packed into contiguous, zero-padded micro-panels, and an MR x NR micro-kernel
// keeps its tile of C in registers while streaming both panels. The micro-kernel is plain
// C++ with constant trip counts so the compiler vectorises it over NR (no intrinsics, so it
// builds for any x86-64 baseline). Large products are split over up to kMaxThreads
// std::threads (one per hardware thread), with the same result whatever the split.
#include "kernels/ref/conv.h"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace ref {

namespace {

// Micro-tile: MR rows of C x NR columns. 4 x 8 floats is 8 SSE accumulators, which leaves
// registers for the B row and the broadcast A value on the x86-64 baseline (16 xmm). A 4 x 16
// tile spills there and measured 5x slower; 4 x 8 ran ~27 GFLOP/s on one Zen 5 core.
constexpr int MR = 4;
constexpr int NR = 8;
// Cache blocks: a KC x NR panel of B (16 KB) stays in L1 while MC x KC of A (128 KB) stays
// in L2; NC bounds the packed B panel (KC x NC floats = 2 MB) to stay within L2/L3.
constexpr int KC = 256;
constexpr int MC = 128;
constexpr int NC = 2048;
static_assert(MC % MR == 0 && NC % NR == 0, "blocks hold whole micro-panels");
// Below this many multiply-adds, a second thread costs more than it saves.
constexpr double kThreadMinMacs = 4e6;
// Threads for one product at most (a GPU machine's test run has 16 cores; CI has 2).
constexpr int kMaxThreads = 16;

// Strided view of op(X): element (i, k) lives at p[i * rs + k * cs].
struct View {
  const float* p;
  long rs, cs;
  float at(long i, long k) const { return p[i * rs + k * cs]; }
};

// Packs rows [i0, i0+mc) x cols [k0, k0+kc) of op(A) into MR-row micro-panels laid out
// [panel][k][MR], zero-filling rows past M so the micro-kernel never needs bounds.
void pack_a(const View& a, int M, int i0, int mc, int k0, int kc, float* dst) {
  for (int ip = 0; ip < mc; ip += MR) {
    for (int k = 0; k < kc; ++k) {
      for (int i = 0; i < MR; ++i) {
        const int row = i0 + ip + i;
        dst[k * MR + i] = (ip + i < mc && row < M) ? a.at(row, k0 + k) : 0.0f;
      }
    }
    dst += (long)kc * MR;
  }
}

// Packs rows [k0, k0+kc) x cols [j0, j0+nc) of op(B) into NR-column micro-panels laid out
// [panel][k][NR], zero-filling columns past the block.
void pack_b(const View& b, int k0, int kc, int j0, int nc, float* dst) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int nr = std::min(NR, nc - jp);
    for (int k = 0; k < kc; ++k) {
      float* d = dst + (long)k * NR;
      if (b.cs == 1) {
        // Row-major B: each k row of the panel is contiguous.
        const float* s = b.p + (long)(k0 + k) * b.rs + j0 + jp;
        for (int j = 0; j < nr; ++j) d[j] = s[j];
      } else {
        for (int j = 0; j < nr; ++j) d[j] = b.at(k0 + k, j0 + jp + j);
      }
      for (int j = nr; j < NR; ++j) d[j] = 0.0f;
    }
    dst += (long)kc * NR;
  }
}

// acc[MR][NR] = sum_k pa[k][:]^T pb[k][:]: the outer-product update of one micro-tile.
inline void micro_kernel(int kc, const float* __restrict pa, const float* __restrict pb,
                         float* __restrict acc) {
  float c[MR][NR] = {};
  for (int k = 0; k < kc; ++k) {
    const float* a = pa + k * MR;
    const float* b = pb + k * NR;
    for (int i = 0; i < MR; ++i) {
      const float ai = a[i];
      for (int j = 0; j < NR; ++j) c[i][j] += ai * b[j];
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i * NR + j] = c[i][j];
}

// C[i0:i1][j0:j1] (+)= op(A)[i0:i1][:] op(B)[:][j0:j1], C row-major with leading dim ldc.
void gemm_range(const View& a, const View& b, int M, int K, float* C, long ldc, int i0, int i1,
                int j0, int j1, bool accumulate) {
  // Packing buffers sized to this call (small products stay cheap); left uninitialised
  // because packing writes every element the micro-kernel reads.
  const int kc_max = std::min(KC, K);
  const long mc_max = std::min(MC, (i1 - i0 + MR - 1) / MR * MR);
  const long nc_max = std::min(NC, (j1 - j0 + NR - 1) / NR * NR);
  std::unique_ptr<float[]> pa(new float[mc_max * kc_max]);
  std::unique_ptr<float[]> pb(new float[nc_max * kc_max]);
  float acc[MR * NR];
  for (int jc = j0; jc < j1; jc += NC) {
    const int nc = std::min(NC, j1 - jc);
    for (int pc = 0; pc < K; pc += KC) {
      const int kc = std::min(KC, K - pc);
      // The first K block overwrites C unless the caller asked to accumulate.
      const bool add = accumulate || pc > 0;
      pack_b(b, pc, kc, jc, nc, pb.get());
      for (int ic = i0; ic < i1; ic += MC) {
        const int mc = std::min(MC, i1 - ic);
        pack_a(a, M, ic, mc, pc, kc, pa.get());
        for (int jr = 0; jr < nc; jr += NR) {
          const int nr = std::min(NR, nc - jr);
          const float* pbp = pb.get() + (long)(jr / NR) * kc * NR;
          for (int ir = 0; ir < mc; ir += MR) {
            const int mr = std::min(MR, mc - ir);
            micro_kernel(kc, pa.get() + (long)(ir / MR) * kc * MR, pbp, acc);
            float* c = C + (long)(ic + ir) * ldc + jc + jr;
            for (int i = 0; i < mr; ++i) {
              float* ci = c + i * ldc;
              const float* ai = acc + i * NR;
              if (add) {
                for (int j = 0; j < nr; ++j) ci[j] += ai[j];
              } else {
                for (int j = 0; j < nr; ++j) ci[j] = ai[j];
              }
            }
          }
        }
      }
    }
  }
}

// Copies the 3-D neighbourhoods of images [n0, n0+nb) into rows of col:
//   col[(n - n0) * H * W + h * W + w][(r * R + q) * C + c] = x[n][h + r - pad][w + q - pad][c]
// with zeros outside the image.
void im2col(const float* x, float* col, int n0, int nb, const ConvShape& s) {
  const int R = s.R, C = s.C, pad = s.pad();
  const long row_len = (long)R * R * C;
  for (int n = 0; n < nb; ++n) {
    const float* xn = x + (long)(n0 + n) * s.H * s.W * C;
    for (int h = 0; h < s.H; ++h) {
      for (int w = 0; w < s.W; ++w) {
        float* row = col + ((long)n * s.H * s.W + (long)h * s.W + w) * row_len;
        for (int r = 0; r < R; ++r) {
          const int hh = h + r - pad;
          for (int q = 0; q < R; ++q) {
            const int ww = w + q - pad;
            float* d = row + (long)(r * R + q) * C;
            if (hh < 0 || hh >= s.H || ww < 0 || ww >= s.W) {
              std::memset(d, 0, sizeof(float) * C);
            } else {
              std::memcpy(d, xn + ((long)hh * s.W + ww) * C, sizeof(float) * C);
            }
          }
        }
      }
    }
  }
}

// Images per im2col chunk so that the column buffer stays under ~64 MB.
int images_per_chunk(const ConvShape& s) {
  const long per_image = (long)s.H * s.W * s.R * s.R * s.C * (long)sizeof(float);
  const long budget = 64L << 20;
  return (int)std::max(1L, std::min<long>(s.N, budget / std::max(per_image, 1L)));
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, const float* A, const float* B,
          float* C, bool accumulate) {
  assert(M >= 0 && N >= 0 && K >= 0);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    if (!accumulate) std::fill(C, C + (long)M * N, 0.0f);
    return;
  }
  // op(A) is M x K: stored [M][K], or [K][M] when transposed; likewise op(B) is K x N.
  const View a = trans_a ? View{A, 1, M} : View{A, K, 1};
  const View b = trans_b ? View{B, 1, K} : View{B, N, 1};
  // Threads: one per hardware thread up to kMaxThreads, one more per kThreadMinMacs (a single
  // thread below it).
  const double macs = (double)M * N * K;
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  const int threads = (int)std::max(
      1.0, std::min({(double)hw, (double)kMaxThreads, std::ceil(macs / kThreadMinMacs)}));
  if (threads == 1) {
    gemm_range(a, b, M, K, C, N, 0, M, 0, N, accumulate);
    return;
  }
  // Split the larger of M and N into `threads` ranges so each thread keeps a sizeable block;
  // the threads write disjoint parts of C. Split points are multiples of the micro-tile. Every
  // element of C is summed in the same order whatever the split, so the result does not depend
  // on the number of threads.
  const bool split_m = M >= N;
  const int dim = split_m ? M : N, tile = split_m ? MR : NR;
  auto bound = [&](int t) { return std::min(dim, (int)((long)dim * t / threads + tile - 1) / tile * tile); };
  std::vector<std::thread> workers;
  for (int t = 1; t < threads; ++t) {
    const int lo = bound(t), hi = bound(t + 1);
    if (lo >= hi) continue;
    if (split_m)
      workers.emplace_back(gemm_range, a, b, M, K, C, (long)N, lo, hi, 0, N, accumulate);
    else
      workers.emplace_back(gemm_range, a, b, M, K, C, (long)N, 0, M, lo, hi, accumulate);
  }
  if (split_m)
    gemm_range(a, b, M, K, C, N, 0, bound(1), 0, N, accumulate);
  else
    gemm_range(a, b, M, K, C, N, 0, M, 0, bound(1), accumulate);
  for (std::thread& w : workers) w.join();
}

// The im2col buffer, reused across calls on the same thread and left uninitialised: im2col
// writes every element (zeros for padding). A fresh zero-filled vector per call cost about 45%
// of the CPU trainer's time in page faults and memset.
float* col_scratch(long n) {
  thread_local std::unique_ptr<float[]> buf;
  thread_local long capacity = 0;
  if (n > capacity) {
    buf.reset(new float[n]);
    capacity = n;
  }
  return buf.get();
}

void conv_forward(const float* x, const float* w, float* y, const ConvShape& s) {
  assert(s.R % 2 == 1);
  const long hw = (long)s.H * s.W;
  const int rrc = s.R * s.R * s.C;
  // y[pixel][k] = col[pixel][rrc] . w[k][rrc]: GEMM with B = w transposed.
  if (s.R == 1) {
    // A 1x1 filter's column matrix is x itself.
    gemm(false, true, (int)(s.N * hw), s.K, rrc, x, w, y, false);
    return;
  }
  const int chunk = images_per_chunk(s);
  float* col = col_scratch((long)chunk * hw * rrc);
  for (int n0 = 0; n0 < s.N; n0 += chunk) {
    const int nb = std::min(chunk, s.N - n0);
    im2col(x, col, n0, nb, s);
    gemm(false, true, (int)(nb * hw), s.K, rrc, col, w, y + (long)n0 * hw * s.K, false);
  }
}

void conv_flip_transpose_weights(const float* w, float* wt, const ConvShape& s) {
  const int R = s.R;
  for (int k = 0; k < s.K; ++k)
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < R; ++q)
        for (int c = 0; c < s.C; ++c)
          wt[(((long)c * R + r) * R + q) * s.K + k] =
              w[(((long)k * R + (R - 1 - r)) * R + (R - 1 - q)) * s.C + c];
}

void conv_backward_input(const float* dy, const float* w, float* dx, const ConvShape& s) {
  // With stride 1 and symmetric padding, the input gradient is the same-padded convolution
  // of dy with the spatially flipped filters, channels swapped (see conv.h).
  std::vector<float> wt(s.w_size());
  conv_flip_transpose_weights(w, wt.data(), s);
  const ConvShape t{s.N, s.H, s.W, s.K, s.C, s.R};
  conv_forward(dy, wt.data(), dx, t);
}

void conv_backward_weight(const float* x, const float* dy, float* dw, const ConvShape& s) {
  const long hw = (long)s.H * s.W;
  const int rrc = s.R * s.R * s.C;
  // dw[k][rrc] = sum_pixel dy[pixel][k] * col[pixel][rrc]: GEMM with A = dy transposed,
  // accumulated over image chunks.
  if (s.R == 1) {
    gemm(true, false, s.K, rrc, (int)(s.N * hw), dy, x, dw, false);
    return;
  }
  const int chunk = images_per_chunk(s);
  float* col = col_scratch((long)chunk * hw * rrc);
  for (int n0 = 0; n0 < s.N; n0 += chunk) {
    const int nb = std::min(chunk, s.N - n0);
    im2col(x, col, n0, nb, s);
    gemm(true, false, s.K, rrc, (int)(nb * hw), dy + (long)n0 * hw * s.K, col, dw,
         n0 > 0);
  }
}

}  // namespace ref
