// Hand-written implicit-GEMM convolution backward passes on the tensor cores (mma.sync
// m16n8k16, sm_80+): the input gradient (dgrad) and the weight gradient (wgrad), fp16 in,
// fp32 accumulation, fp16 out. The forward kernel and the tile configurations are in
// kernels/conv/implicit_gemm.cuh; design notes in docs/conv_kernels.md. CPU reference:
// ref::conv_backward_input / ref::conv_backward_weight (kernels/ref/conv.h).
//
// Layouts (stride 1, pad = (R - 1) / 2, as the forward):
//   x  [N][H][W][C]   the forward's input          dx [N][H][W][C]  its gradient
//   w  [K][R][R][C]   filters (KRSC)               dw [K][R][R][C]  their gradient
//   dy [N][H][W][K]   the gradient of the forward's output
//
// Input gradient: dx[n][h][v][c] = sum_{k,r,s} dy[n][h + pad - r][v + pad - s][k] * w[k][r][s][c]
// is a forward convolution of dy (K input channels) with the flipped, transposed filters
//   wt[c][r][s][k] = w[k][R-1-r][R-1-s][c]      ([C][R][R][K]: C filters of K channels),
// so dgrad = one small transform kernel + the forward implicit-GEMM kernel, with every forward
// tile configuration available. The identity is checked on the CPU in tests/conv_test.cpp.
//
// Weight gradient, as a GEMM dw[m][n] = sum_p A[m][p] * B[p][n] with
//   m = k                         output channel,    M = K
//   n = (r * R + s) * C + c       filter tap/channel, N_gemm = R*R*C (dw read as [K][R*R*C])
//   p = (img * H + oh) * W + ow   output pixel,      K_gemm = N*H*W (the reduction)
//   A[m][p] = dy[p][m]            (dy read as [N*H*W][K]: A stored column-major)
//   B[p][n] = x[img][oh + r - pad][ow + s - pad][c]   (implicit im2col, 0 in the padding)
// The reduction is long (N*H*W = 524288 pixels at 32x32, batch 512) and the output small
// (K x R*R*C), so the pixels are split over `splits` thread-block slabs (split-K); each slab
// writes an fp32 partial dw and a second kernel adds the partials in slab order and rounds to
// fp16. No atomics: deterministic.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/conv/implicit_gemm.cuh"

namespace kernels {

// ------------------------------------------------------------------------- input gradient

// wt = the flipped, transposed filters above. w [K][R][R][C] -> wt [C][R][R][K]. wt must not
// overlap w. Any K, C, R >= 1.
void conv_flip_transpose_weights(const __half* w, __half* wt, const ConvDesc& d,
                                 cudaStream_t stream);

// Bytes of scratch conv_backward_data_igemm needs (wt), a multiple of 16.
size_t igemm_dgrad_scratch_bytes(const ConvDesc& d);

// dx = the input gradient for the forward convolution described by d (x [N][H][W][C],
// w [K][R][R][C]). Overwrites dx and wt_scratch (igemm_dgrad_scratch_bytes(d), 16-byte
// aligned). The forward kernel's requirements hold with C and K swapped (C % 8 == 0,
// K % 8 == 0, R odd and at most 5, 16-byte aligned tensors, ...): std::invalid_argument otherwise.
void conv_backward_data_igemm(const __half* dy, const __half* w, __half* dx, __half* wt_scratch,
                              const ConvDesc& d, IgemmConfig config, cudaStream_t stream);

// The input gradient with the BN-backward sums fused into its epilogue. In the recipe dx is the
// output gradient of a BN + CELU (+ max-pool) unit, whose backward (kernels/bn.cuh) first sums,
// per BN group g and channel c of dx,
//   sum_dz[g][c]  = sum of dz,  sum_dzx[g][c] = sum of dz * xhat,  over the group's pixels,
//   dz = (dx + dout2) * celu'(xhat + bias[c]),  xhat = (bn_in - save_mean[g][c]) * save_invstd[g][c]
// (dx as stored, fp16; the same per-value arithmetic as kernels/bn.cu). The epilogue adds them
// up while it stores dx, so pool_bn_celu_backward_from_sums skips the pass that reads dx
// again. Design: kernels/conv/conv_epilogue.cuh.
struct BnBackwardSums {
  const __half* dout2;       // [N][H][W][C] or null: a second gradient term (the residual's)
  const __half* bn_in;       // [N][H][W][C]: the values BN normalised (the pooled conv output)
  const float* bias;         // [C]
  const float* save_mean;    // [N / group_images][C], as the BN forward saved them
  const float* save_invstd;  // [N / group_images][C]
  float alpha;               // CELU's alpha (> 0)
  float* sum_dz;             // [N / group_images][C], written
  float* sum_dzx;            // [N / group_images][C], written
  float* partials;           // scratch: dgrad_bn_sums_scratch_bytes(d, the config's epilogue_m)
  int group_images;          // images per BN group; divides N; when N / group_images > 1,
                             // group_images * H * W % epilogue_m == 0 (each epilogue in one group)
};
// Bytes of scratch for the partial sums of a dgrad whose epilogues cover epilogue_m pixels
// each (IgemmConfigInfo::epilogue_m: BlockM, or a cooperative wgmma tile's BlockM / 2).
size_t dgrad_bn_sums_scratch_bytes(const ConvDesc& d, int epilogue_m);

// conv_backward_data_igemm plus the sums above (dx is bitwise the same as without them).
// Requirements: conv_backward_data_igemm's, and the BnBackwardSums fields' (bn_in, dout2 16-byte
// aligned; bias, save_mean, save_invstd, sum_dz, sum_dzx, partials non-null; the group rule):
// std::invalid_argument otherwise. Deterministic.
void conv_backward_data_igemm_bn_sums(const __half* dy, const __half* w, __half* dx,
                                      __half* wt_scratch, const ConvDesc& d, IgemmConfig config,
                                      const BnBackwardSums& bn, cudaStream_t stream);

// ------------------------------------------------------------------------ weight gradient

// The split-K count the launcher uses when asked for `splits`: at least 1, at most one BlockK
// slice of pixels per slab, and no empty slab (the pixel slices are dealt out in equal runs
// of slices_per_split; the last slab may be shorter).
struct WgradSplit {
  int splits;            // slabs actually launched
  int slices_per_split;  // BlockK-pixel slices per slab
};
WgradSplit igemm_wgrad_split(const ConvDesc& d, IgemmConfig config, int splits);
// The same for any kernel that walks the pixels in slices of block_k (the wgmma one: 64).
WgradSplit wgrad_split(const ConvDesc& d, int block_k, int splits);

// A split count that fills `sm_count` SMs about once with resident blocks (the tile grid
// times the splits), keeping at least 16 slices per slab so the cp.async pipeline's fill and
// drain stay small against its steady state.
int igemm_wgrad_default_splits(const ConvDesc& d, IgemmConfig config, int sm_count);

// Stream-K, the other way to split the weight gradient's reduction (the wgmma launcher
// conv_backward_filter_wgmma_streamk): the output tiles' slices, tile after tile (tile t =
// output channels (t / tiles_n) * BlockM .., filter columns (t % tiles_n) * BlockN ..; each
// tile `slices` slices of BlockK pixels), are dealt out to `workers` blocks in equal runs of
// `run` consecutive slices (the last run may be shorter) that cross tile boundaries. So every
// block has the same work, whatever the tile count: slabs of whole tiles leave the last wave
// part empty when tiles x slabs is not a multiple of the resident blocks (layer3_res: 72 tiles of
// 128 x 256 in 3 slabs are 1.64 waves of 132, docs/conv_kernels.md). A run's part of one tile is
// a segment; each segment writes an fp32 partial tile into slot (its run - the tile's first
// run), and a second kernel adds a tile's slots in order (conv_wgrad_streamk_reduce): no
// atomics, deterministic for a given plan.
struct WgradSegment {
  int tile;     // output tile
  int slice0;   // its first slice in the tile
  int k_tiles;  // slices (0: no such segment)
  int slot;     // partial buffer
};
struct WgradStreamK {
  int tiles_n, tiles;  // output tiles: tiles / tiles_n x tiles_n
  int slices;          // BlockK slices per tile
  int workers;         // runs, one per block launched
  int run;             // slices per run
  int segments;        // the most segments of one run (the kernel's loop bound)
  int slots;           // the most runs meeting one tile (partial buffers)
  __host__ __device__ long long total() const { return (long long)tiles * slices; }
  // The runs that meet tile t: first_run(t) .. first_run(t) + runs_of(t) - 1.
  __host__ __device__ int first_run(int t) const { return (int)((long long)t * slices / run); }
  __host__ __device__ int runs_of(int t) const {
    return (int)(((long long)(t + 1) * slices - 1) / run) - first_run(t) + 1;
  }
  // Segment j of run w (j = 0: the tile its first slice lies in); k_tiles == 0 past its end.
  __host__ __device__ WgradSegment segment(int w, int j) const {
    const long long a = (long long)w * run, b = a + run < total() ? a + run : total();
    const long long t = a / slices + j;
    if (a >= b || t >= tiles) return {0, 0, 0, 0};
    const long long lo = a > t * slices ? a : t * slices, hi = b < (t + 1) * slices ? b : (t + 1) * slices;
    if (lo >= hi) return {(int)t, 0, 0, 0};
    return {(int)t, (int)(lo - t * slices), (int)(hi - lo), w - first_run((int)t)};
  }
};
// The plan for `workers` blocks (at least 1; fewer when there are fewer slices than that) of
// block_m x block_n tiles walking block_k-pixel slices.
WgradStreamK wgrad_streamk(const ConvDesc& d, int block_m, int block_n, int block_k, int workers);
// Bytes of fp32 scratch for a plan's partial tiles: slots x K x R*R*C floats.
size_t wgrad_streamk_scratch_bytes(const ConvDesc& d, const WgradStreamK& plan);

// Bytes of fp32 scratch for the partial sums of `splits` slabs (an upper bound for whatever
// igemm_wgrad_split makes of it), a multiple of 16.
size_t igemm_wgrad_scratch_bytes(const ConvDesc& d, int splits);

// dw = the weight gradient (overwritten) given the forward's input x and dy. partials:
// igemm_wgrad_scratch_bytes(d, splits) bytes, 16-byte aligned. Requirements as the forward
// (C % 8 == 0, K % 8 == 0, R odd and <= 5, 16-byte aligned tensors, < 2^31 elements each), plus
// ceil(K / BlockM) <= 65535 and splits <= 65535 (grid y and z). Deterministic for a given
// (config, splits); different splits sum in a different order (fp32 rounding differs).
void conv_backward_filter_igemm(const __half* x, const __half* dy, __half* dw, float* partials,
                                const ConvDesc& d, IgemmConfig config, int splits,
                                cudaStream_t stream);

namespace igemm_detail {

// dw[i] = fp16(sum over slabs z = 0 .. splits-1 of partials[z][i]) for i < n, in slab order
// (deterministic); partials [splits][n] fp32. n % 4 == 0, both 16-byte aligned (the wgrad
// launchers' preconditions guarantee it: n = K * R * R * C with K % 8 == 0).
void conv_wgrad_reduce(const float* partials, __half* dw, long n, int splits, cudaStream_t stream);

// dw[m][n] = fp16(sum over slots 0 .. plan.runs_of(t) - 1 of partials[slot][m][n]), t the
// block_m x block_n tile of (m, n) (as in WgradStreamK), in slot order (deterministic);
// partials [plan.slots][K][Ng] fp32, dw [K][Ng]. Ng % 4 == 0, block_n % 4 == 0, both 16-byte
// aligned.
void conv_wgrad_streamk_reduce(const float* partials, __half* dw, int K, int Ng, int block_m, int block_n,
                               const WgradStreamK& plan, cudaStream_t stream);

// A step of `step` pixels as whole image rows (dh, modulo H) and a rest (dw < W), computed once
// per loader so that advancing a cursor takes no loop: ow + dw carries at most one row, and
// oh + dh + carry stays below 2H.
struct PixelStep {
  int dh, dw;
  __host__ __device__ static PixelStep of(int step, int H, int W) { return {(step / W) % H, step % W}; }
};

// Where pixel p = (img * H + oh) * W + ow of a wgrad slab lies in its image. A loader row
// walks p in steps of BlockK; advance() follows it without divisions (the while loop runs
// BlockK / W times at most; the PixelStep overload none). The image index is not needed:
// a_offset works on p itself. __host__ __device__ so the host test checks it against the
// definition.
struct PixelCursor {
  int oh, ow;
  __host__ __device__ void init(int p0, int H, int W) {
    ow = p0 % W;
    oh = (p0 / W) % H;
  }
  __host__ __device__ void advance(int step, int H, int W) {
    ow += step;
    while (ow >= W) {
      ow -= W;
      if (++oh == H) oh = 0;
    }
  }
  // The same as advance(step, H, W) for st = PixelStep::of(step, H, W), without the loop (it
  // ran BlockK / W times per row and slice: 16 at the recipe's 4 x 4 layer).
  __host__ __device__ void advance(const PixelStep& st, int H, int W) {
    ow += st.dw;
    int carry = 0;
    if (ow >= W) ow -= W, carry = 1;
    oh += st.dh + carry;
    if (oh >= H) oh -= H;
  }
};

// ldmatrix.x4.trans row addresses of the wgrad kernel, for operands stored K-major in shared
// memory (rows = pixels of the slice, columns = the GEMM's M or N). Lane l addresses row l % 8
// of matrix l / 8; the returned (k, col) is relative to the fragment's top-left corner.
//   A (one m16 x k16 tile): matrices (m 0-7, k 0-7), (m 8-15, k 0-7), (m 0-7, k 8-15),
//     (m 8-15, k 8-15) -> mma's a[0..3].
//   B (two n8 tiles x k16): matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15),
//     (k 8-15, n 8-15) -> b[j][0], b[j][1], b[j+1][0], b[j+1][1].
struct LdsmCoord {
  int k, col;
};
__host__ __device__ inline LdsmCoord wgrad_a_ldsm(int lane) {
  const int mat = lane >> 3;
  return {(lane & 7) + (mat >> 1) * 8, (mat & 1) * 8};
}
__host__ __device__ inline LdsmCoord wgrad_b_ldsm(int lane) {
  const int mat = lane >> 3;
  return {(lane & 7) + (mat & 1) * 8, (mat >> 1) * 8};
}

}  // namespace igemm_detail

}  // namespace kernels
