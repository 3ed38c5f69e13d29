// libFuzzer target for the CIFAR-10 reader: arbitrary bytes and sizes as a batch file.
// The reader must either return a well-formed split or throw data::DataError; anything else
// (crash, other exception, sanitizer report, leak) is a bug. Built and run by
// tools/fuzz_and_sanitize.sh with clang -fsanitize=fuzzer,address,undefined.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "data/cifar10.h"

namespace {

// One scratch file per fuzzing process (libFuzzer runs inputs one at a time).
const std::string& scratch_path() {
  static const std::string path = "/tmp/cs_cifar10_fuzz_" + std::to_string(getpid()) + ".bin";
  return path;
}

void check_split(const data::Split& s, size_t input_size) {
  if (s.images.size() != s.labels.size() * (size_t)data::kImageBytes) std::abort();
  if (s.labels.size() * (size_t)data::kRecordBytes > input_size) std::abort();
  for (uint8_t l : s.labels)
    if (l >= data::kClasses) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  FILE* f = std::fopen(scratch_path().c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(bytes, 1, size, f) != size) std::abort();
  std::fclose(f);
  // The first byte, when present, also picks a record limit, so limits are fuzzed too.
  const int limit = size ? (int)(bytes[0] % 8) - 1 : -1;
  try {
    check_split(data::read_records_file(scratch_path(), limit), size);
  } catch (const data::DataError&) {
  }
  try {
    check_split(data::read_batch_file(scratch_path(), limit), size);
  } catch (const data::DataError&) {
  }
  return 0;
}
