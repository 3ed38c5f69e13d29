// Checkpoints in safetensors (see checkpoint.h for the format and the tensors it holds).
#include "net/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "kernels/ref/ghost_bn.h"
#include "net/layout.h"

// The data section is little-endian fp32; tensors are copied with memcpy.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "net/checkpoint.cpp assumes a little-endian host"
#endif

namespace net {

namespace {

using json = nlohmann::ordered_json;

// The safetensors reference implementation refuses headers above 100 MB; ours are a few KB.
constexpr uint64_t kMaxHeaderBytes = 100000000;
constexpr int kWhitenR = 3, kInChannels = 3;

[[noreturn]] void fail(const std::string& what, const std::string& problem,
                       const std::string& todo) {
  throw CheckpointError("checkpoint: " + what + ": " + problem + ". " + todo + ".");
}

const char* const kRewrite = "Write it again with speedrun --save";

// ---------------------------------------------------------------- SHA-256 (FIPS 180-4)

struct Sha256 {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  uint8_t block[64] = {};
  size_t fill = 0;      // bytes in block
  uint64_t total = 0;   // bytes hashed

  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

  void compress(const uint8_t* p) {
    static const uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
        0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
        0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
        0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
        0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
        0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
        0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
        0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
             (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 =
          hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }

  void update(const uint8_t* p, size_t n) {
    total += n;
    while (n > 0) {
      if (fill == 0 && n >= 64) {
        compress(p);
        p += 64;
        n -= 64;
        continue;
      }
      const size_t take = std::min(n, 64 - fill);
      std::memcpy(block + fill, p, take);
      fill += take;
      p += take;
      n -= take;
      if (fill == 64) {
        compress(block);
        fill = 0;
      }
    }
  }

  // Padding: 0x80, zeros to 56 mod 64, then the message length in bits, big-endian.
  std::string hex() {
    const uint64_t bits = total * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (fill != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = (uint8_t)(bits >> (56 - 8 * i));
    update(len, 8);
    char out[65];
    for (int i = 0; i < 8; ++i) std::snprintf(out + 8 * i, 9, "%08x", h[i]);
    return std::string(out, 64);
  }
};

// ---------------------------------------------------------------- helpers

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

std::vector<int64_t> to_shape(const std::vector<int>& s) { return {s.begin(), s.end()}; }

// The shortest decimal (6..9 significant digits) that reads back as the same float, so the
// recipe in the metadata says 0.3 rather than 0.30000001192092896.
double float_decimal(float v) {
  char buf[32];
  for (int digits = 6; digits <= 9; ++digits) {
    std::snprintf(buf, sizeof buf, "%.*g", digits, (double)v);
    const double d = std::strtod(buf, nullptr);
    if ((float)d == v) return d;
  }
  return (double)v;
}

json recipe_to_json(const Recipe& r) {
  auto f = float_decimal;
  json j;
  j["mean"] = {f(r.mean[0]), f(r.mean[1]), f(r.mean[2])};
  j["std"] = {f(r.std_[0]), f(r.std_[1]), f(r.std_[2])};
  j["pad"] = r.pad;
  j["width"] = f(r.width);
  j["celu_alpha"] = f(r.celu_alpha);
  j["logit_scale"] = f(r.logit_scale);
  j["whiten_images"] = r.whiten_images;
  j["whiten_eps"] = f(r.whiten_eps);
  j["bn_group"] = r.bn_group;
  j["bn_eps"] = f(r.bn_eps);
  j["bn_momentum"] = f(r.bn_momentum);
  j["label_smoothing"] = f(r.label_smoothing);
  j["batch"] = r.batch;
  j["epochs"] = r.epochs;
  j["lr_knots"] = {f(r.lr_knots[0]), f(r.lr_knots[1]), f(r.lr_knots[2])};
  j["lr_values"] = {f(r.lr_values[0]), f(r.lr_values[1]), f(r.lr_values[2])};
  j["momentum"] = f(r.momentum);
  j["weight_decay"] = f(r.weight_decay);
  j["bn_bias_lr_mult"] = f(r.bn_bias_lr_mult);
  j["ema_every"] = r.ema_every;
  j["ema_rho"] = f(r.ema_rho);
  j["tta"] = r.tta;
  return j;
}

// Every key recipe_to_json writes must be there with the right type; the values the
// evaluation depends on must make sense.
Recipe recipe_from_json(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    fail(what, std::string("metadata recipe_config is not valid JSON (") + e.what() + ")",
         kRewrite);
  }
  if (!j.is_object()) fail(what, "metadata recipe_config is not a JSON object", kRewrite);
  auto get = [&](const char* key) -> const json& {
    if (!j.contains(key)) fail(what, std::string("metadata recipe_config lacks '") + key + "'",
                               kRewrite);
    return j.at(key);
  };
  auto num = [&](const char* key) -> float {
    const json& v = get(key);
    if (!v.is_number() || !std::isfinite(v.get<double>()))
      fail(what, std::string("metadata recipe_config '") + key + "' is not a finite number",
           kRewrite);
    return v.get<float>();
  };
  auto integer = [&](const char* key) -> int {
    const json& v = get(key);
    if (!v.is_number_integer() || v.get<int64_t>() < -(1LL << 31) ||
        v.get<int64_t>() >= (1LL << 31))
      fail(what, std::string("metadata recipe_config '") + key + "' is not an integer", kRewrite);
    return v.get<int>();
  };
  auto triple = [&](const char* key, float out[3]) {
    const json& v = get(key);
    if (!v.is_array() || v.size() != 3)
      fail(what, std::string("metadata recipe_config '") + key + "' is not an array of 3 numbers",
           kRewrite);
    for (int i = 0; i < 3; ++i) {
      if (!v[i].is_number() || !std::isfinite(v[i].get<double>()))
        fail(what, std::string("metadata recipe_config '") + key + "' is not an array of 3 numbers",
             kRewrite);
      out[i] = v[i].get<float>();
    }
  };
  Recipe r;
  triple("mean", r.mean);
  triple("std", r.std_);
  r.pad = integer("pad");
  r.width = num("width");
  r.celu_alpha = num("celu_alpha");
  r.logit_scale = num("logit_scale");
  r.whiten_images = integer("whiten_images");
  r.whiten_eps = num("whiten_eps");
  r.bn_group = integer("bn_group");
  r.bn_eps = num("bn_eps");
  r.bn_momentum = num("bn_momentum");
  r.label_smoothing = num("label_smoothing");
  r.batch = integer("batch");
  r.epochs = integer("epochs");
  triple("lr_knots", r.lr_knots);
  triple("lr_values", r.lr_values);
  r.momentum = num("momentum");
  r.weight_decay = num("weight_decay");
  r.bn_bias_lr_mult = num("bn_bias_lr_mult");
  r.ema_every = integer("ema_every");
  r.ema_rho = num("ema_rho");
  if (!get("tta").is_boolean())
    fail(what, "metadata recipe_config 'tta' is not true or false", kRewrite);
  r.tta = j.at("tta").get<bool>();
  // The same ranges speedrun accepts for the flags that shape the network.
  if (!(r.width > 0.0f && r.width <= 16.0f))
    fail(what, "metadata recipe_config width " + std::to_string(r.width) + " is outside (0, 16]",
         kRewrite);
  if (r.bn_group < 1 || r.batch < 1 || r.batch % r.bn_group != 0)
    fail(what, "metadata recipe_config batch " + std::to_string(r.batch) +
                   " is not a positive multiple of bn_group " + std::to_string(r.bn_group),
         kRewrite);
  if (!(r.bn_eps > 0.0f) || !(r.std_[0] > 0.0f && r.std_[1] > 0.0f && r.std_[2] > 0.0f))
    fail(what, "metadata recipe_config needs bn_eps > 0 and std > 0", kRewrite);
  return r;
}

std::string bn_stat_name(const BNLayer& b, const char* stat) { return b.name + "." + stat; }

// Checks that the vectors of m fit the layout of its recipe.
Layout checked_layout(const ModelState& m) {
  const Recipe& r = m.recipe;
  if (r.bn_group < 1 || r.batch < 1 || r.batch % r.bn_group != 0)
    throw std::invalid_argument("checkpoint: recipe batch must be a positive multiple of bn_group");
  Layout L = make_layout(r.width, r.batch / r.bn_group);
  const size_t wsize = (size_t)kWhitenChannels * kWhitenR * kWhitenR * kInChannels;
  if (m.params.size() != (size_t)L.num_params || m.running_mean.size() != (size_t)L.num_stats ||
      m.running_var.size() != (size_t)L.num_stats || m.whiten.size() != wsize)
    throw std::invalid_argument("checkpoint: model state sizes do not match the recipe's layout");
  return L;
}

}  // namespace

std::string sha256_hex(const void* data, size_t n) {
  Sha256 s;
  s.update(static_cast<const uint8_t*>(data), n);
  return s.hex();
}

// ---------------------------------------------------------------- safetensors

std::string encode_safetensors(const SafetensorsContents& c) {
  json header;
  std::set<std::string> names;
  size_t data_bytes = 0;
  for (const NamedTensor& t : c.tensors) {
    if (t.name == "__metadata__" || !names.insert(t.name).second)
      throw std::invalid_argument("encode_safetensors: duplicate or reserved name '" + t.name +
                                  "'");
    int64_t numel = 1;
    for (int64_t d : t.shape) {
      if (d < 0) throw std::invalid_argument("encode_safetensors: negative dimension");
      numel *= d;
    }
    if ((size_t)numel != t.data.size())
      throw std::invalid_argument("encode_safetensors: tensor '" + t.name + "' has " +
                                  std::to_string(t.data.size()) + " values, its shape " +
                                  shape_str(t.shape) + " needs " + std::to_string(numel));
    data_bytes += t.data.size() * sizeof(float);
  }
  std::string data;
  data.reserve(data_bytes);
  json entries = json::object();
  for (const NamedTensor& t : c.tensors) {
    const size_t begin = data.size();
    data.append(reinterpret_cast<const char*>(t.data.data()), t.data.size() * sizeof(float));
    entries[t.name] = {
        {"dtype", "F32"}, {"shape", t.shape}, {"data_offsets", {begin, data.size()}}};
  }
  json meta = json::object();
  for (const auto& kv : c.metadata)
    if (kv.first != "data_sha256") meta[kv.first] = kv.second;
  meta["data_sha256"] = sha256_hex(data.data(), data.size());
  header["__metadata__"] = meta;
  for (auto& kv : entries.items()) header[kv.key()] = kv.value();

  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned (the 8-byte length comes first).
  text.append((8 - text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = (char)(uint8_t)(n >> (8 * i));
  out += text;
  out += data;
  return out;
}

SafetensorsContents decode_safetensors(const std::string& bytes, const std::string& what) {
  const char* kCorrupt = "The file is truncated or corrupt: write it again with speedrun --save";
  if (bytes.size() < 8)
    fail(what, "file is too short (" + std::to_string(bytes.size()) +
                   " bytes) to be a safetensors file, which starts with an 8-byte header length",
         kCorrupt);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= (uint64_t)(uint8_t)bytes[i] << (8 * i);
  if (n > kMaxHeaderBytes)
    fail(what, "header length " + std::to_string(n) + " is absurd (more than " +
                   std::to_string(kMaxHeaderBytes) + " bytes): not a safetensors file",
         "Check that the file is a checkpoint written by speedrun --save");
  if (n > bytes.size() - 8)
    fail(what, "header length " + std::to_string(n) + " runs past the end of the file (" +
                   std::to_string(bytes.size()) + " bytes)",
         kCorrupt);
  json header;
  try {
    header = json::parse(bytes.begin() + 8, bytes.begin() + 8 + (long)n);
  } catch (const json::exception& e) {
    fail(what, std::string("header is not valid JSON (") + e.what() + ")", kCorrupt);
  }
  if (!header.is_object()) fail(what, "header is not a JSON object", kCorrupt);

  SafetensorsContents out;
  const size_t data_begin = 8 + n, data_size = bytes.size() - data_begin;
  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans;
  for (auto& item : header.items()) {
    const std::string& name = item.key();
    const json& v = item.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(what, "__metadata__ is not a JSON object", kCorrupt);
      for (auto& m : v.items()) {
        if (!m.value().is_string())
          fail(what, "__metadata__ entry '" + m.key() + "' is not a string", kCorrupt);
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string t = "tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") ||
        !v.contains("data_offsets"))
      fail(what, t + " lacks dtype, shape or data_offsets", kCorrupt);
    if (!v["dtype"].is_string()) fail(what, t + ": dtype is not a string", kCorrupt);
    const std::string dtype = v["dtype"].get<std::string>();
    if (dtype != "F32")
      fail(what, t + " has dtype " + dtype + ", but checkpoints hold F32 tensors only",
           "Convert the tensor to float32, or write the checkpoint again with speedrun --save");
    NamedTensor tensor;
    tensor.name = name;
    const json& shape = v["shape"];
    if (!shape.is_array()) fail(what, t + ": shape is not an array", kCorrupt);
    // numel is bounded by the data section's size, so the product cannot overflow.
    uint64_t numel = 1;
    for (const json& d : shape) {
      if (!d.is_number_unsigned())
        fail(what, t + ": shape holds a non-integer or negative", kCorrupt);
      const uint64_t dim = d.get<uint64_t>();
      if (dim != 0 && numel > bytes.size() / dim)
        fail(what, t + ": shape " + shape.dump() + " is larger than the file", kCorrupt);
      numel *= dim;
      tensor.shape.push_back((int64_t)dim);
    }
    const json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() ||
        !off[1].is_number_unsigned())
      fail(what, t + ": data_offsets is not a pair of non-negative integers", kCorrupt);
    const uint64_t b = off[0].get<uint64_t>(), e = off[1].get<uint64_t>();
    if (b > e || e > data_size)
      fail(what, t + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                     "] are out of range of the data section (" + std::to_string(data_size) +
                     " bytes)",
           kCorrupt);
    if (e - b != numel * sizeof(float))
      fail(what, t + ": data_offsets [" + std::to_string(b) + ", " + std::to_string(e) +
                     "] hold " + std::to_string(e - b) + " bytes, but shape " +
                     shape_str(tensor.shape) + " of F32 needs " +
                     std::to_string(numel * sizeof(float)),
           kCorrupt);
    tensor.data.resize(numel);
    if (numel) std::memcpy(tensor.data.data(), bytes.data() + data_begin + b, e - b);
    spans.push_back(Span{b, e, out.tensors.size()});
    out.tensors.push_back(std::move(tensor));
  }
  // Tensors must tile the data section: no overlap, no bytes that belong to nothing.
  std::sort(spans.begin(), spans.end(), [](const Span& x, const Span& y) {
    return x.begin < y.begin || (x.begin == y.begin && x.end < y.end);
  });
  uint64_t pos = 0;
  for (size_t i = 0; i < spans.size(); ++i) {
    const Span& s = spans[i];
    if (s.begin < pos)
      fail(what, "tensors '" + out.tensors[spans[i - 1].index].name + "' and '" +
                     out.tensors[s.index].name + "' overlap in the data section",
           kCorrupt);
    if (s.begin > pos)
      fail(what, "data section bytes [" + std::to_string(pos) + ", " + std::to_string(s.begin) +
                     ") belong to no tensor",
           kCorrupt);
    pos = s.end;
  }
  if (pos != data_size)
    fail(what, "data section bytes [" + std::to_string(pos) + ", " + std::to_string(data_size) +
                   ") belong to no tensor",
         kCorrupt);
  // Back in data-section order.
  std::vector<NamedTensor> ordered;
  ordered.reserve(spans.size());
  for (const Span& s : spans) ordered.push_back(std::move(out.tensors[s.index]));
  out.tensors = std::move(ordered);

  const auto sum = out.metadata.find("data_sha256");
  if (sum != out.metadata.end()) {
    const std::string actual = sha256_hex(bytes.data() + data_begin, data_size);
    if (actual != sum->second)
      fail(what, "checksum mismatch: the SHA-256 of the data section is " + actual +
                     ", the metadata says " + sum->second,
           kCorrupt);
  }
  return out;
}

// ---------------------------------------------------------------- checkpoints

SafetensorsContents checkpoint_contents(const ModelState& m, const std::string& git_commit) {
  const Layout L = checked_layout(m);
  SafetensorsContents c;
  for (const ParamTensor& p : L.params)
    c.tensors.push_back(NamedTensor{p.name, to_shape(p.shape),
                                    std::vector<float>(m.params.begin() + p.offset,
                                                       m.params.begin() + p.offset + p.size)});
  for (const BNLayer& b : L.bns) {
    std::vector<float> mean(b.channels), var(b.channels);
    ref::ghost_bn_average_groups(m.running_mean.data() + b.stat_offset, mean.data(), L.groups,
                                 b.channels);
    ref::ghost_bn_average_groups(m.running_var.data() + b.stat_offset, var.data(), L.groups,
                                 b.channels);
    c.tensors.push_back(NamedTensor{bn_stat_name(b, "running_mean"), {b.channels}, mean});
    c.tensors.push_back(NamedTensor{bn_stat_name(b, "running_var"), {b.channels}, var});
  }
  c.tensors.push_back(
      NamedTensor{"whiten.weight", {kWhitenChannels, kWhitenR, kWhitenR, kInChannels}, m.whiten});
  const Widths& w = L.w;
  c.metadata["format"] = kCheckpointFormat;
  c.metadata["format_version"] = std::to_string(kCheckpointFormatVersion);
  c.metadata["recipe_name"] = "resnet9";
  c.metadata["recipe_config"] = recipe_to_json(m.recipe).dump();
  c.metadata["layout"] =
      "net/layout.h names; conv weights KRSC [out][kh][kw][in] (not PyTorch's "
      "[out][in][kh][kw]), head_linear [10][c3], activations NHWC; BN running statistics "
      "averaged over the ghost-BN groups; whiten.weight KRSC [27][3][3][3]";
  c.metadata["channels"] = json::array({w.c0, w.c1, w.c2, w.c3}).dump();
  c.metadata["model"] = "ema";
  c.metadata["git_commit"] = git_commit;
  return c;
}

ModelState model_from_contents(const SafetensorsContents& c, const std::string& what) {
  auto meta = [&](const char* key) -> const std::string& {
    const auto it = c.metadata.find(key);
    if (it == c.metadata.end())
      fail(what, std::string("metadata lacks '") + key + "': not a cifar-speedrun checkpoint",
           "Use a file written by speedrun --save");
    return it->second;
  };
  if (meta("format") != kCheckpointFormat)
    fail(what, "metadata format is '" + meta("format") + "', not " + kCheckpointFormat,
         "Use a file written by speedrun --save");
  const std::string& version = meta("format_version");
  if (version != std::to_string(kCheckpointFormatVersion))
    fail(what, "unknown format version '" + version + "' (this build reads version " +
                   std::to_string(kCheckpointFormatVersion) + ")",
         "Use a speedrun built from the same or a newer commit as the writer");
  meta("data_sha256");  // decode_safetensors has checked it; a checkpoint must carry one

  ModelState m;
  m.recipe = recipe_from_json(meta("recipe_config"), what);
  const Layout L = make_layout(m.recipe.width, m.recipe.batch / m.recipe.bn_group);
  const Widths& w = L.w;
  char arch_buf[96];
  std::snprintf(arch_buf, sizeof arch_buf, "width %g (channels %d/%d/%d/%d)", m.recipe.width,
                w.c0, w.c1, w.c2, w.c3);
  const std::string arch = arch_buf;
  const char* kMismatch =
      "The tensors do not belong to the architecture the metadata describes (mismatched "
      "architecture): write the checkpoint again with speedrun --save";
  const std::string channels = json::array({w.c0, w.c1, w.c2, w.c3}).dump();
  if (meta("channels") != channels)
    fail(what, "metadata channels " + meta("channels") + " disagree with the recipe's " + arch,
         kMismatch);

  // Every expected tensor exactly once with its shape, nothing else: checked before anything
  // is allocated, so the memory used stays bounded by what the file holds.
  std::map<std::string, const NamedTensor*> by_name;
  for (const NamedTensor& t : c.tensors) by_name[t.name] = &t;
  std::set<std::string> expected;
  auto expect = [&](const std::string& name, const std::vector<int64_t>& shape) {
    const auto it = by_name.find(name);
    if (it == by_name.end())
      fail(what, "missing tensor '" + name + "' of the " + arch + " architecture", kMismatch);
    if (it->second->shape != shape)
      fail(what, "tensor '" + name + "' has shape " + shape_str(it->second->shape) + ", the " +
                     arch + " architecture needs " + shape_str(shape),
           kMismatch);
    expected.insert(name);
  };
  const std::vector<int64_t> whiten_shape = {kWhitenChannels, kWhitenR, kWhitenR, kInChannels};
  for (const ParamTensor& p : L.params) expect(p.name, to_shape(p.shape));
  for (const BNLayer& b : L.bns) {
    expect(bn_stat_name(b, "running_mean"), {b.channels});
    expect(bn_stat_name(b, "running_var"), {b.channels});
  }
  expect("whiten.weight", whiten_shape);
  for (const NamedTensor& t : c.tensors)
    if (!expected.count(t.name))
      fail(what, "unexpected tensor '" + t.name + "' for the " + arch + " architecture",
           kMismatch);

  m.params.assign(L.num_params, 0.0f);
  for (const ParamTensor& p : L.params) {
    const std::vector<float>& v = by_name.at(p.name)->data;
    std::copy(v.begin(), v.end(), m.params.begin() + p.offset);
  }
  m.running_mean.assign(L.num_stats, 0.0f);
  m.running_var.assign(L.num_stats, 0.0f);
  for (const BNLayer& b : L.bns) {
    const std::vector<float>& mean = by_name.at(bn_stat_name(b, "running_mean"))->data;
    const std::vector<float>& var = by_name.at(bn_stat_name(b, "running_var"))->data;
    // Every group gets the averaged statistics; their average in double is exact again.
    for (int g = 0; g < L.groups; ++g) {
      std::copy(mean.begin(), mean.end(),
                m.running_mean.begin() + b.stat_offset + (long)g * b.channels);
      std::copy(var.begin(), var.end(),
                m.running_var.begin() + b.stat_offset + (long)g * b.channels);
    }
  }
  m.whiten = by_name.at("whiten.weight")->data;
  return m;
}

void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::string tmp = path + ".tmp." + std::to_string((long)getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    throw std::runtime_error("cannot create '" + tmp + "': " + std::strerror(errno));
  size_t done = 0;
  int err = 0;
  while (done < bytes.size()) {
    const ssize_t k = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (k < 0) {
      if (errno == EINTR) continue;
      err = errno;
      break;
    }
    done += (size_t)k;
  }
  if (!err && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && !err) err = errno;
  if (err) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write '" + tmp + "': " + std::strerror(err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename '" + tmp + "' to '" + path +
                             "': " + std::strerror(err));
  }
}

void save_checkpoint(const std::string& path, const ModelState& m, const std::string& git_commit) {
  const std::string bytes = encode_safetensors(checkpoint_contents(m, git_commit));
  try {
    write_file_atomically(path, bytes);
  } catch (const std::runtime_error& e) {
    fail(path, e.what(), "Check that the directory exists, is writable and has space");
  }
}

ModelState load_checkpoint(const std::string& path, std::map<std::string, std::string>* metadata) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec))
    fail(path, "file not found", "Check the path given to --load");
  if (!std::filesystem::is_regular_file(path, ec))
    fail(path, "not a regular file", "Give --load the .safetensors file itself");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, std::string("cannot open it (") + std::strerror(errno) + ")",
               "Check the file's permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) fail(path, "read error", "Check the file and the disk");
  const std::string bytes = ss.str();
  const SafetensorsContents c = decode_safetensors(bytes, path);
  ModelState m = model_from_contents(c, path);
  if (metadata) *metadata = c.metadata;
  return m;
}

std::unique_ptr<Resnet9Cpu> make_cpu_model(const ModelState& m) {
  checked_layout(m);
  auto model = std::make_unique<Resnet9Cpu>(m.recipe);
  model->params = m.params;
  model->running_mean = m.running_mean;
  model->running_var = m.running_var;
  model->whiten = m.whiten;
  return model;
}

}  // namespace net
