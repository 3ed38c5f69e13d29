#!/usr/bin/env bash
# Builds the GPU binaries for a Hopper device machine (sm_90a only, so they are small enough
# to carry) and copies them into .gpu-bin/, and packs that into .gpu-pack/bins.tar.xz (both
# git-ignored; the archive is some 15 MB against tens of MB unpacked; with the committed tree it
# fits a 64 MiB device call, each half of the data going in a call of its own: README, "Working
# with a GPU machine"). A device call then carries .gpu-pack and runs:
#   tar xJf .gpu-pack/bins.tar.xz && BUILD_DIR=.gpu-bin tools/gpu_check.sh "$OUT" [DATA_DIR] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-h100
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCS_WERROR=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a-real >/dev/null
cmake --build "$build" -j "${CS_JOBS:-$(nproc)}" --target cs_gpu_tests kernel_bench conv_bench speedrun \
    reference_dump
rm -rf .gpu-bin && mkdir -p .gpu-bin
for b in cs_gpu_tests kernel_bench conv_bench speedrun reference_dump; do
  cp "$build/$b" .gpu-bin/
  strip --strip-debug .gpu-bin/$b
done
mkdir -p .gpu-pack
tar cJf .gpu-pack/bins.tar.xz .gpu-bin
du -sh .gpu-bin/* .gpu-pack/bins.tar.xz
