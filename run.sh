#!/usr/bin/env bash
# The main job. Installs what is missing, builds, finds or fetches CIFAR-10, then:
#  - with a CUDA GPU: the full benchmark (speedrun, recipe settings, several seeds);
#  - without one: a clearly labelled CPU smoke run of a narrow network on a data subset.
# Extra arguments go to speedrun (e.g. ./run.sh --runs 20).
set -euo pipefail
cd "$(dirname "$0")"
CS_WITH_TORCH=0 CS_WITH_FUZZ=0 tools/install_deps.sh
tools/build.sh
build_dir=${CS_BUILD_DIR:-build}

data_dir=${CIFAR10_DIR:-$HOME/.cache/cifar-speedrun}
tools/get_cifar10.sh "$data_dir"
mkdir -p results
stamp=$(date -u +%Y%m%dT%H%M%SZ)

if "$build_dir/speedrun" --help >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "== GPU found: full benchmark (recipe settings) =="
  "$build_dir/speedrun" --device cuda --data "$data_dir" --runs 5 --warmup \
      --json "results/speedrun-gpu-$stamp.json" "$@"
else
  echo "== No CUDA GPU: CPU SMOKE RUN (narrow network, data subset; not the benchmark) =="
  "$build_dir/speedrun" --device cpu --data "$data_dir" --width 0.125 --batch 128 \
      --epochs 2 --train-subset 5000 --test-subset 1000 \
      --json "results/speedrun-cpu-smoke-$stamp.json" "$@"
fi
echo "result JSON in results/"
