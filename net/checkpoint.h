// Checkpoints: a model as evaluated (net/train.h ModelState) in the safetensors format, written
// and read by hand (nlohmann/json for the header, no other dependency).
//
// File layout (safetensors): 8-byte little-endian header length N, N bytes of JSON header
// (padded with spaces so the data starts at a multiple of 8), then the data section. The header
// maps each tensor name to {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}
// (byte offsets into the data section, end exclusive) and holds "__metadata__", a map of
// strings. Tensors are row-major fp32, back to back, in the order written.
//
// A checkpoint (format version 1) holds, by net/layout.h name and shape:
//   <param>               every trained tensor, e.g. "layer1_conv" [c1][3][3][c0], KRSC
//                         ([out][kh][kw][in], not PyTorch's [out][in][kh][kw]),
//                         "layer1_bn_bias" [c1], "head_linear" [10][c3]
//   <bn>.running_mean     per BN layer (e.g. "prep_bn.running_mean"), [C], averaged over
//   <bn>.running_var      the ghost-BN groups (what evaluation uses)
//   whiten.weight         the fixed whitening filters [27][3][3][3], KRSC
// and the metadata: format, format_version, recipe_name, recipe_config (the Recipe as a JSON
// object in a string), layout (a sentence on the conventions above), channels (c0..c3 as a
// JSON array), model ("ema"), git_commit of the writer, and data_sha256 (hex SHA-256 of the
// data section). Errors and what to do about them: docs/errors.md.
#pragma once
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "net/resnet9_cpu.h"
#include "net/train.h"

namespace net {

constexpr int kCheckpointFormatVersion = 1;
constexpr const char* kCheckpointFormat = "cifar-speedrun/checkpoint";

// Every refusal to read (or failure to write) a checkpoint, of the form
// "checkpoint: <file>: <problem>. <what to do>."
struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// One row-major fp32 tensor of a safetensors file.
struct NamedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;  // product of shape values
};

// What a safetensors file of F32 tensors holds.
struct SafetensorsContents {
  std::vector<NamedTensor> tensors;             // in data-section order
  std::map<std::string, std::string> metadata;  // "__metadata__"
};

// Hex SHA-256 (FIPS 180-4) of n bytes.
std::string sha256_hex(const void* data, size_t n);

// Encodes the tensors back to back in the given order; sets metadata "data_sha256" to the
// SHA-256 of the data section (replacing any given). Throws std::invalid_argument on a tensor
// whose data size disagrees with its shape, or on duplicate or reserved names.
std::string encode_safetensors(const SafetensorsContents& c);
// Decodes and checks the structure: header length, JSON, dtypes (F32 only), shapes, data
// offsets (in range, sized for the shape, no overlap, covering the data section) and, when the
// metadata holds one, the data_sha256. `what` names the source in messages. Throws
// CheckpointError.
SafetensorsContents decode_safetensors(const std::string& bytes, const std::string& what);

// The tensors and metadata of a checkpoint of `m` (running statistics averaged over the
// groups with ref::ghost_bn_average_groups, as evaluation does). Throws std::invalid_argument
// if the vectors of `m` do not match the layout of m.recipe.
SafetensorsContents checkpoint_contents(const ModelState& m, const std::string& git_commit);
// The model held by checkpoint contents: checks the format and version, the recipe, and every
// tensor's presence and shape against the architecture the recipe implies. The group-averaged
// running statistics are copied into each of the recipe's G groups, so averaging them again
// gives back exactly the stored values. Throws CheckpointError.
ModelState model_from_contents(const SafetensorsContents& c, const std::string& what);

// Writes `bytes` to `path` atomically: a temporary file `path.tmp.<pid>` in the same directory,
// flushed to disk, then renamed over `path`; the temporary is removed on any failure. Throws
// std::runtime_error naming the file and the system's reason.
void write_file_atomically(const std::string& path, const std::string& bytes);

// save: checkpoint_contents + encode_safetensors + write_file_atomically (CheckpointError on
// failure). load: reads the file, decode_safetensors + model_from_contents; `metadata`, when
// non-null, receives the file's metadata.
void save_checkpoint(const std::string& path, const ModelState& m, const std::string& git_commit);
ModelState load_checkpoint(const std::string& path,
                           std::map<std::string, std::string>* metadata = nullptr);

// A CPU model holding `m`, ready for forward_eval (no activations allocated yet).
std::unique_ptr<Resnet9Cpu> make_cpu_model(const ModelState& m);

}  // namespace net
