#!/usr/bin/env bash
# Configures and builds into build/ (Release, warnings as errors). The CUDA engine is built
# when nvcc and cuDNN are found (see CMakeLists.txt); otherwise the CPU path alone.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${CS_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCS_WERROR=ON ${CS_CMAKE_ARGS:-} >/dev/null
cmake --build "$build_dir" -j "${CS_JOBS:-$(nproc)}"
