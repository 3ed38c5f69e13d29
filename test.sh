#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (CPU tests run; GPU tests run when a
# CUDA GPU is present and are reported as skipped otherwise).
set -euo pipefail
cd "$(dirname "$0")"
tools/install_deps.sh
tools/build.sh
cd "${CS_BUILD_DIR:-build}"
ctest --output-on-failure -j "${CS_JOBS:-$(nproc)}" "$@"
