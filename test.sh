#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test (CPU tests run; GPU tests run when a
# CUDA GPU is present and are reported as skipped otherwise), plus the reader's fuzzing and
# AddressSanitizer/UBSan runs (tools/fuzz_and_sanitize.sh).
set -euo pipefail
cd "$(dirname "$0")"
tools/install_deps.sh
tools/build.sh
# Fuzzing and sanitizer builds first, so CTest's summary is the last thing printed.
tools/fuzz_and_sanitize.sh "${CS_FUZZ_SECONDS:-60}"
cd "${CS_BUILD_DIR:-build}"
ctest --output-on-failure -j "${CS_JOBS:-$(nproc)}" "$@"
