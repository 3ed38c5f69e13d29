#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, only those that are missing.
# Used by ./run.sh and ./test.sh; safe to run again. Needs root or sudo for apt-get.
set -euo pipefail

packages=(cmake ninja-build g++ catch2 nlohmann-json3-dev python3-numpy python3-pil python3-matplotlib)
if [[ "${CS_WITH_FUZZ:-1}" == 1 ]]; then
  # libFuzzer and the sanitizer runtimes (tools/fuzz_and_sanitize.sh).
  packages+=(clang libclang-rt-14-dev)
fi
if [[ "${CS_WITH_TORCH:-1}" == 1 ]]; then
  # The PyTorch cross-check of the CPU reference (tests/torch_crosscheck_test.cpp).
  packages+=(python3-torch)
fi

missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install_deps: all packages present"
  exit 0
fi

sudo_cmd=()
if [[ $(id -u) != 0 ]]; then
  if command -v sudo >/dev/null; then
    sudo_cmd=(sudo)
  else
    echo "install_deps: missing packages: ${missing[*]}" >&2
    echo "install_deps: run as root or install them with apt-get" >&2
    exit 1
  fi
fi
echo "install_deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install_deps: done"
