#!/usr/bin/env bash
# Builds the GPU binaries for a Hopper device machine (sm_90a only, so they are small enough
# to carry) and copies them into .gpu-bin/ (git-ignored). A device call then carries
# .gpu-bin and runs:  BUILD_DIR=.gpu-bin tools/gpu_check.sh "$OUT" [DATA_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-h100
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCS_WERROR=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a-real >/dev/null
cmake --build "$build" -j "${CS_JOBS:-$(nproc)}" --target cs_gpu_tests kernel_bench conv_bench speedrun
rm -rf .gpu-bin && mkdir -p .gpu-bin
for b in cs_gpu_tests kernel_bench conv_bench speedrun; do
  cp "$build/$b" .gpu-bin/
  strip --strip-debug .gpu-bin/$b
done
du -sh .gpu-bin/*
