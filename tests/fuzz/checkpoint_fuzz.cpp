// libFuzzer target for the checkpoint reader: arbitrary bytes as a safetensors file.
// Decoding and the architecture check must either succeed or throw net::CheckpointError;
// anything else (crash, other exception, sanitizer report, huge allocation) is a bug.
// Built and run by tools/fuzz_and_sanitize.sh.
#include <cstdint>
#include <string>

#include "net/checkpoint.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  const std::string data(reinterpret_cast<const char*>(bytes), size);
  try {
    const net::SafetensorsContents c = net::decode_safetensors(data, "fuzz input");
    net::model_from_contents(c, "fuzz input");
  } catch (const net::CheckpointError&) {
  }
  return 0;
}
