// Inline-PTX wrappers for the sm_80+ tensor-core path shared by the hand-written convolution
// kernels (kernels/conv/*.cu): cp.async global -> shared copies, ldmatrix (plain and
// transposing) and mma.sync m16n8k16 with fp16 inputs and fp32 accumulators.
// Semantics as in the PTX ISA; the fragment layouts are spelled out per function because the
// kernels' address arithmetic depends on them.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace kernels {
namespace ptx {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte global -> shared copy that bypasses L1 (.cg). When !valid nothing is read and the 16
// bytes are zero-filled (src-size 0): the convolution's zero padding and the tile predication.
// src must still be a valid address, so callers pass the tensor's base then.
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
// The same copy through L1 (.ca): for data other blocks on the SM, or this block's later
// slices, read again (the implicit im2col's neighbouring filter taps).
__device__ __forceinline__ void cp_async_16_ca(uint32_t dst, const void* src, bool valid) {
  const int src_bytes = valid ? 16 : 0;
  asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}
// Waits until at most n of this thread's most recent commit groups are still in flight.
template <int n>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n) : "memory");
}

// Four 8x8 fp16 matrices from shared memory; lane l gives the address of row l % 8 of matrix
// l / 8 and receives, of each matrix, row l / 4, columns 2 * (l % 4) and + 1.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// The same four matrices, each delivered transposed: with S the 8x8 matrix as stored (row i
// at the address lane i gave), lane l receives S[2 * (l % 4)][l / 4] and S[2 * (l % 4) + 1][l / 4],
// i.e. row l / 4, columns 2 * (l % 4) and + 1 of S^T. Lets a kernel keep an operand stored
// with the GEMM's M (or N) dimension contiguous and still hand mma its K-pair fragments.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d += a * b for a 16x16 (row-major) by 16x8 (column-major) fp16 product, fp32 accumulators.
// Fragments (g = lane / 4, t = lane % 4): a[0] rows g, cols 2t..2t+1; a[1] rows g + 8;
// a[2], a[3] the same at cols + 8. b[0] k = 2t..2t+1, n = g; b[1] k + 8. d[0..1] row g,
// cols 2t..2t+1; d[2..3] row g + 8.
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

}  // namespace ptx
}  // namespace kernels
