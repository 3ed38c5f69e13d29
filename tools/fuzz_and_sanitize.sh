#!/usr/bin/env bash
# Robustness checks of the CPU code that a normal build does not catch:
#  1. the CIFAR-10 reader and the checkpoint reader fuzzed with libFuzzer (+ AddressSanitizer/
#     UBSan), each for a bounded time;
#  2. the readers' tests built and run under AddressSanitizer + UBSan.
# Usage: tools/fuzz_and_sanitize.sh [FUZZ_SECONDS]   (default 60). Needs clang (Debian: clang,
# libclang-rt-14-dev). Exits non-zero on any crash, sanitizer report or test failure.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
out=${CS_SANITIZE_DIR:-build-sanitize}
mkdir -p "$out/corpus"

echo "== fuzz: CIFAR-10 reader, ${seconds}s =="
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I. tests/fuzz/cifar10_fuzz.cpp data/cifar10.cpp -o "$out/cifar10_fuzz"
# Seeds: an empty file, one valid record, one record with a bad label, a truncated record.
printf '' > "$out/corpus/empty"
{ printf '\x03'; head -c 3072 /dev/zero; } > "$out/corpus/one_record"
{ printf '\x0b'; head -c 3072 /dev/zero; } > "$out/corpus/bad_label"
{ printf '\x01'; head -c 100 /dev/zero; } > "$out/corpus/truncated"
ASAN_OPTIONS=detect_leaks=1 "$out/cifar10_fuzz" -max_total_time="$seconds" -max_len=20000 \
    -print_final_stats=1 "$out/corpus" 2>&1 | tail -n 12

echo "== fuzz: checkpoint reader, ${seconds}s =="
# The reader pulls in the CPU model (for the architecture check): build all CPU sources.
clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I. tests/fuzz/checkpoint_fuzz.cpp net/*.cpp kernels/ref/*.cpp data/*.cpp engine/gpu_info.cpp \
    -DCS_VERSION='"fuzz"' -DCS_GIT_COMMIT_FALLBACK='"fuzz"' -lpthread -o "$out/checkpoint_fuzz"
mkdir -p "$out/corpus_ckpt"
# Seeds: a well-formed tiny safetensors file (one tensor, no model) and a bare header.
printf '{"__metadata__":{"format":"cifar-speedrun"},"t":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}' > "$out/hdr.json"
python3 - "$out" <<'PY'
import struct, sys
out = sys.argv[1]
h = open(out + "/hdr.json", "rb").read()
h += b" " * (-len(h) % 8)
open(out + "/corpus_ckpt/tiny", "wb").write(struct.pack("<Q", len(h)) + h + b"\0\0\x80\x3f")
open(out + "/corpus_ckpt/header_only", "wb").write(struct.pack("<Q", 2) + b"{}")
PY
ASAN_OPTIONS=detect_leaks=1 "$out/checkpoint_fuzz" -max_total_time="$seconds" -max_len=4096 \
    -rss_limit_mb=2048 -print_final_stats=1 "$out/corpus_ckpt" 2>&1 | tail -n 6

echo "== AddressSanitizer + UBSan: data and checkpoint tests =="
cmake -S . -B "$out/asan" -G Ninja -DCMAKE_BUILD_TYPE=Debug -DCS_SANITIZE=ON -DCS_ENABLE_CUDA=OFF \
    -DCS_WERROR=ON >/dev/null
cmake --build "$out/asan" -j "${CS_JOBS:-$(nproc)}" --target cs_tests
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 ASAN_OPTIONS=detect_leaks=1 \
    "$out/asan/cs_tests" "[data],[checkpoint]"
echo "fuzz_and_sanitize: OK"
