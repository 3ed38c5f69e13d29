#!/usr/bin/env bash
# Compiles the hot kernels for sm_90a with ptxas's resource report and fails if any of them
# uses a stack frame, spills registers, or has its wgmma instructions serialised (ptxas note
# C7515): performance regressions the CPU-only CI can see without a GPU.
#   tools/ptxas_check.sh [NVCC]      (default: nvcc on PATH, then /usr/local/cuda/bin/nvcc)
# Prints one line per kernel (registers, stack, spills) and the verdict; exit 0 clean, 1 not,
# 2 no compiler.
set -uo pipefail
cd "$(dirname "$0")/.."
NVCC=${1:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
if [ ! -x "$NVCC" ]; then
  echo "ptxas_check: no nvcc (looked for $NVCC)" >&2
  exit 2
fi
FILES=(kernels/conv/implicit_gemm.cu kernels/conv/igemm_backward.cu kernels/conv/wgmma_conv.cu kernels/conv/wgmma_halo.cu
       kernels/bn.cu kernels/whiten.cu kernels/head.cu kernels/optim.cu kernels/augment.cu)
tmp=$(mktemp -d /tmp/cs-ptxas.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# Kernel names readable where c++filt exists: demangled, without namespaces and parameter lists.
demangle() {
  if command -v c++filt >/dev/null; then
    c++filt | sed -E 's/(kernels|cub[A-Z0-9_]*|detail|igemm_detail)::|\(anonymous namespace\)::|void //g; s/\([^()]*\)$//'
  else
    cat
  fi
}
bad=0
for f in "${FILES[@]}"; do
  log="$tmp/$(basename "$f").log"
  if ! "$NVCC" -I. -O3 -DNDEBUG --generate-code=arch=compute_90a,code=[sm_90a] --expt-relaxed-constexpr \
       -std=c++17 -Xptxas -v -x cu -c "$f" -o "$tmp/out.o" >"$log" 2>&1; then
    echo "ptxas_check: $f does not compile:" >&2
    cat "$log" >&2
    exit 1
  fi
  # ptxas prints, per kernel: "Compiling entry function 'NAME' for 'sm_90a'", then
  # "N bytes stack frame, N bytes spill stores, N bytes spill loads" and "Used N registers".
  awk -v file="$f" '
    /Compiling entry function/ { match($0, /function .[^'"'"']*/); name = substr($0, RSTART + 10, RLENGTH - 10) }
    /bytes stack frame/ { stack = $1; spill_st = $5; spill_ld = $9 }
    /Used [0-9]+ registers/ {
      match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
      flag = (stack + 0 > 0 || spill_st + 0 > 0 || spill_ld + 0 > 0) ? "  STACK/SPILL" : ""
      printf "%-32s regs %4s stack %4s spills %s/%s  %s%s\n", file, regs, stack, spill_st, spill_ld, name, flag
    }' "$log" | demangle
  if grep -q "bytes stack frame" "$log" && grep "bytes stack frame" "$log" | grep -vq "^ *0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"; then
    bad=1
  fi
  if grep -q "C7515" "$log"; then
    echo "ptxas_check: $f: wgmma instructions serialised (C7515):" >&2
    grep "C7515" "$log" >&2
    bad=1
  fi
done
if [ $bad -ne 0 ]; then
  echo "ptxas_check: FAILED (a kernel uses a stack frame, spills, or has serialised wgmma)"
  exit 1
fi
echo "ptxas_check: every kernel compiles for sm_90a without stack, spills or wgmma serialisation"
