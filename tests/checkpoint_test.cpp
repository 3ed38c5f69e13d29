// Tests of the checkpoint format (net/checkpoint.*): SHA-256 against the FIPS 180-4 examples,
// the safetensors encoding, a save/load round trip that gives back the parameters and
// bit-identical evaluation logits, the exporter of the CPU trainer, and every refusal of a
// corrupt or mismatched file with its own message.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "kernels/ref/augment.h"
#include "net/checkpoint.h"
#include "net/resnet9_cpu.h"
#include "net/train.h"
#include "tests/support.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using testing_support::random_vector;

namespace {

constexpr long kPixels = 32 * 32 * 3;

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("cs_checkpoint_test_" + tag + "_" + std::to_string((long)getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void write_bytes(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

// Narrow network (channels 4/8/16/32), batch 16 in ghost-BN groups of 8 (2 groups).
net::Recipe tiny_recipe() {
  net::Recipe r;
  r.width = 0.0625f;
  r.batch = 16;
  r.bn_group = 8;
  return r;
}

// A model state as a trainer would export it: PyTorch-default weights, random BN biases,
// whitening filters from random images, and running statistics that differ between the groups
// (so the averaging the checkpoint does is exercised).
net::ModelState tiny_state(uint64_t seed) {
  net::Resnet9Cpu m(tiny_recipe());
  m.init(seed);
  for (const auto& p : m.layout().params)
    if (p.is_bn_bias) {
      const auto b = random_vector(p.size, seed + 1, -0.2f, 0.2f);
      std::copy(b.begin(), b.end(), m.params.begin() + p.offset);
    }
  const auto imgs = random_vector(64 * kPixels, seed + 2, -2.0f, 2.0f);
  m.compute_whitening(imgs.data(), 64);
  m.running_mean = random_vector(m.layout().num_stats, seed + 3, -0.5f, 0.5f);
  m.running_var = random_vector(m.layout().num_stats, seed + 4, 0.5f, 2.0f);
  return net::ModelState{m.recipe(), m.params, m.running_mean, m.running_var, m.whiten};
}

// Splits a safetensors file into its JSON header and data section, and joins them again
// (padding the header with spaces to a multiple of 8), so tests can corrupt the header alone.
struct Parts {
  nlohmann::ordered_json header;
  std::string data;
};
Parts split(const std::string& bytes) {
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= (uint64_t)(uint8_t)bytes[i] << (8 * i);
  return Parts{nlohmann::ordered_json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
}
std::string join_raw(std::string header_text, const std::string& data) {
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = (char)(uint8_t)((uint64_t)header_text.size() >> (8 * i));
  return out + header_text + data;
}
std::string join(const Parts& p) { return join_raw(p.header.dump(), p.data); }

// Evaluation logits of n images under a model state (TTA or not).
std::vector<float> logits_of(const net::ModelState& s, const std::vector<float>& x, int n,
                             bool tta) {
  auto model = net::make_cpu_model(s);
  std::vector<float> out((size_t)n * net::kClasses);
  model->forward_eval(x.data(), n, out.data(), tta);
  return out;
}

}  // namespace

TEST_CASE("sha256 matches the FIPS 180-4 examples", "[checkpoint]") {
  CHECK(net::sha256_hex("", 0) ==
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(net::sha256_hex("abc", 3) ==
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string two_blocks = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  CHECK(net::sha256_hex(two_blocks.data(), two_blocks.size()) ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  const std::string million(1000000, 'a');
  CHECK(net::sha256_hex(million.data(), million.size()) ==
        "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST_CASE("safetensors encoding: aligned header, offsets, metadata, round trip", "[checkpoint]") {
  net::SafetensorsContents c;
  c.tensors.push_back({"b", {2, 3}, {1, 2, 3, 4, 5, 6}});
  c.tensors.push_back({"a", {1}, {-7.5f}});
  c.tensors.push_back({"empty", {0, 4}, {}});
  c.metadata["note"] = "hello";
  const std::string bytes = net::encode_safetensors(c);
  const Parts p = split(bytes);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= (uint64_t)(uint8_t)bytes[i] << (8 * i);
  CHECK((8 + n) % 8 == 0);  // the data section starts 8-byte aligned
  CHECK(bytes[8] == '{');
  CHECK(p.header.at("b").at("dtype") == "F32");
  CHECK(p.header.at("b").at("shape") == nlohmann::ordered_json::array({2, 3}));
  CHECK(p.header.at("b").at("data_offsets") == nlohmann::ordered_json::array({0, 24}));
  CHECK(p.header.at("a").at("data_offsets") == nlohmann::ordered_json::array({24, 28}));
  CHECK(p.header.at("__metadata__").at("data_sha256") == net::sha256_hex(p.data.data(), 28));
  CHECK(p.data.size() == 28);

  const net::SafetensorsContents d = net::decode_safetensors(bytes, "test");
  REQUIRE(d.tensors.size() == 3);  // in data order; the empty one sits at [28, 28]
  CHECK(d.tensors[0].name == "b");
  CHECK(d.tensors[0].shape == std::vector<int64_t>{2, 3});
  CHECK(d.tensors[0].data == c.tensors[0].data);
  CHECK(d.tensors[1].name == "a");
  CHECK(d.tensors[1].data == c.tensors[1].data);
  CHECK(d.tensors[2].name == "empty");
  CHECK(d.tensors[2].data.empty());
  CHECK(d.metadata.at("note") == "hello");

  net::SafetensorsContents bad = c;
  bad.tensors[0].data.pop_back();
  CHECK_THROWS_AS(net::encode_safetensors(bad), std::invalid_argument);
  bad = c;
  bad.tensors[1].name = "b";
  CHECK_THROWS_AS(net::encode_safetensors(bad), std::invalid_argument);
}

TEST_CASE("checkpoint round trip: same parameters, bit-identical evaluation logits",
          "[checkpoint]") {
  TempDir tmp("roundtrip");
  const net::ModelState s = tiny_state(11);
  const fs::path file = tmp.path / "model.safetensors";
  net::save_checkpoint(file.string(), s, "abc123");
  // The atomic write left only the checkpoint behind.
  int entries = 0;
  for (const auto& e : fs::directory_iterator(tmp.path)) {
    ++entries;
    CHECK(e.path() == file);
  }
  CHECK(entries == 1);

  std::map<std::string, std::string> meta;
  const net::ModelState t = net::load_checkpoint(file.string(), &meta);
  CHECK(meta.at("format") == net::kCheckpointFormat);
  CHECK(meta.at("format_version") == "1");
  CHECK(meta.at("git_commit") == "abc123");
  CHECK(meta.at("channels") == "[4,8,16,32]");
  CHECK(meta.at("layout").find("KRSC") != std::string::npos);
  CHECK(t.params == s.params);
  CHECK(t.whiten == s.whiten);
  const net::Recipe &a = s.recipe, &b = t.recipe;
  CHECK(b.width == a.width);
  CHECK(b.batch == a.batch);
  CHECK(b.bn_group == a.bn_group);
  CHECK(b.celu_alpha == a.celu_alpha);
  CHECK(b.logit_scale == a.logit_scale);
  CHECK(b.bn_eps == a.bn_eps);
  CHECK(b.ema_rho == a.ema_rho);
  CHECK(b.tta == a.tta);
  for (int c = 0; c < 3; ++c) {
    CHECK(b.mean[c] == a.mean[c]);
    CHECK(b.std_[c] == a.std_[c]);
  }
  // Stored statistics are the group averages; each group of the loaded state holds them.
  const net::Layout L = net::make_layout(a.width, a.batch / a.bn_group);
  for (const auto& bn : L.bns)
    for (int c = 0; c < bn.channels; ++c) {
      const long o = bn.stat_offset;
      const double avg =
          0.5 * ((double)s.running_mean[o + c] + s.running_mean[o + bn.channels + c]);
      CHECK(t.running_mean[o + c] == (float)avg);
      CHECK(t.running_mean[o + bn.channels + c] == (float)avg);
    }

  // 200 images: the real test subset when it is there, random images otherwise. Same ops on the
  // same values (the group averages are exact again), so the logits must match bit for bit.
  const int n = 200;
  std::vector<float> x;
  const std::string shared = testing_support::shared_cifar10_dir();
  if (!shared.empty() && fs::exists(shared + "/subsets/test_first1000.bin")) {
    const data::Split split = data::read_records_file(shared + "/subsets/test_first1000.bin", n);
    x.resize((size_t)n * kPixels);
    ref::normalize_cifar(split.images.data(), n, a.mean, a.std_, x.data());
  } else {
    x = random_vector(n * kPixels, 5, -2.0f, 2.0f);
  }
  for (bool tta : {false, true}) {
    INFO("tta " << tta);
    const auto want = logits_of(s, x, n, tta), got = logits_of(t, x, n, tta);
    CHECK(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
  }
}

TEST_CASE("the CPU trainer exports its averaged model", "[checkpoint]") {
  // 32 random training images in batches of 16: two steps, one epoch.
  data::Cifar10 d;
  ref::Rng rng(3);
  for (data::Split* split : {&d.train, &d.test}) {
    for (int i = 0; i < 32; ++i) split->labels.push_back((uint8_t)rng.uniform_int(10));
    for (int i = 0; i < 32 * data::kImageBytes; ++i)
      split->images.push_back((uint8_t)rng.uniform_int(256));
  }
  net::TrainConfig cfg;
  cfg.recipe = tiny_recipe();
  cfg.recipe.epochs = 1;
  auto trainer = net::make_cpu_trainer(d, cfg);
  REQUIRE(trainer->can_export_ema());
  CHECK_THROWS_AS(trainer->export_ema(), std::logic_error);  // no run yet
  const net::RunResult res = trainer->run(9, nullptr);
  REQUIRE_FALSE(res.diverged);
  const net::ModelState s = trainer->export_ema();
  const net::Layout L = net::make_layout(s.recipe.width, s.recipe.batch / s.recipe.bn_group);
  CHECK(s.params.size() == (size_t)L.num_params);
  CHECK(s.running_mean.size() == (size_t)L.num_stats);

  // Evaluating the checkpointed model gives the trainer's TTA accuracy exactly.
  TempDir tmp("export");
  const fs::path file = tmp.path / "m.safetensors";
  net::save_checkpoint(file.string(), s, "x");
  const net::ModelState t = net::load_checkpoint(file.string());
  std::vector<float> x(32 * kPixels);
  ref::normalize_cifar(d.test.images.data(), 32, t.recipe.mean, t.recipe.std_, x.data());
  const auto logits = logits_of(t, x, 32, true);
  int correct = 0;
  for (int i = 0; i < 32; ++i) {
    const float* z = logits.data() + i * net::kClasses;
    correct += (int)(std::max_element(z, z + net::kClasses) - z) == d.test.labels[i];
  }
  CHECK((double)correct / 32 == res.test_acc_tta);
}

TEST_CASE("corrupt or mismatched checkpoints are refused with their own message",
          "[checkpoint]") {
  TempDir tmp("corrupt");
  const net::ModelState s = tiny_state(21);
  const net::SafetensorsContents contents = net::checkpoint_contents(s, "abc");
  const std::string good = net::encode_safetensors(contents);
  const fs::path file = tmp.path / "bad.safetensors";
  // Writes `bytes` and expects load_checkpoint to refuse them with a message containing every
  // one of `parts`.
  auto refused = [&](const std::string& bytes, const std::vector<std::string>& parts) {
    write_bytes(file, bytes);
    try {
      net::load_checkpoint(file.string());
      FAIL("loaded a bad checkpoint");
    } catch (const net::CheckpointError& e) {
      const std::string msg = e.what();
      INFO(msg);
      CHECK(msg.find(file.string()) != std::string::npos);
      for (const auto& p : parts) CHECK(msg.find(p) != std::string::npos);
    }
  };
  // The contents with one change, re-encoded with a correct checksum.
  auto variant = [&](const std::function<void(net::SafetensorsContents&)>& change) {
    net::SafetensorsContents c = contents;
    change(c);
    return net::encode_safetensors(c);
  };
  auto header_variant = [&](const std::function<void(nlohmann::ordered_json&)>& change) {
    Parts p = split(good);
    change(p.header);
    return join(p);
  };
  auto set_meta = [](const char* key, const std::string& value) {
    return [=](net::SafetensorsContents& c) { c.metadata[key] = value; };
  };

  SECTION("missing file") {
    CHECK_THROWS_WITH(net::load_checkpoint((tmp.path / "nothing").string()),
                      Contains("file not found"));
  }
  SECTION("too short") { refused(good.substr(0, 5), {"too short"}); }
  SECTION("truncated") {
    refused(good.substr(0, good.size() - 100), {"out of range", "truncated"});
  }
  SECTION("header length absurd") {
    std::string b = good;
    b[5] = 1;  // 2^40 bytes
    refused(b, {"absurd"});
  }
  SECTION("header length past the end") {
    std::string b = good;
    const uint64_t n = b.size();
    for (int i = 0; i < 8; ++i) b[i] = (char)(uint8_t)(n >> (8 * i));
    refused(b, {"runs past the end"});
  }
  SECTION("bad JSON") { refused(join_raw("{\"a\": [1, 2", split(good).data), {"not valid JSON"}); }
  SECTION("header not an object") {
    refused(join_raw("[1, 2, 3]", split(good).data), {"not a JSON object"});
  }
  SECTION("flipped data byte: checksum") {
    std::string b = good;
    b[b.size() - 7] ^= 0x10;
    refused(b, {"checksum mismatch"});
  }
  SECTION("data_offsets out of range") {
    refused(header_variant([](nlohmann::ordered_json& h) {
              h["whiten.weight"]["data_offsets"][1] = 1u << 30;
            }),
            {"'whiten.weight'", "out of range"});
  }
  SECTION("data_offsets overlapping") {
    refused(header_variant([](nlohmann::ordered_json& h) {
              h["prep_bn.running_var"]["data_offsets"] = h["prep_bn.running_mean"]["data_offsets"];
            }),
            {"overlap"});
  }
  SECTION("data_offsets sized wrong for the shape") {
    refused(header_variant([](nlohmann::ordered_json& h) { h["head_linear"]["shape"] = {10, 31}; }),
            {"'head_linear'", "needs"});
  }
  SECTION("wrong dtype") {
    refused(header_variant([](nlohmann::ordered_json& h) { h["layer2_conv"]["dtype"] = "F16"; }),
            {"'layer2_conv'", "dtype F16", "F32"});
  }
  SECTION("missing tensor") {
    refused(variant([](net::SafetensorsContents& c) {
              c.tensors.erase(std::remove_if(c.tensors.begin(), c.tensors.end(),
                                             [](const net::NamedTensor& t) {
                                               return t.name == "layer2_bn_bias";
                                             }),
                              c.tensors.end());
            }),
            {"missing tensor 'layer2_bn_bias'", "mismatched architecture"});
  }
  SECTION("extra tensor") {
    refused(variant([](net::SafetensorsContents& c) { c.tensors.push_back({"extra", {1}, {0}}); }),
            {"unexpected tensor 'extra'"});
  }
  SECTION("shape mismatch (same size, transposed)") {
    refused(variant([](net::SafetensorsContents& c) {
              for (auto& t : c.tensors)
                if (t.name == "head_linear") t.shape = {t.shape[1], t.shape[0]};
            }),
            {"'head_linear' has shape [32, 10]", "needs [10, 32]", "mismatched architecture"});
  }
  SECTION("width mismatch: metadata of width 1/8, tensors of width 1/16") {
    auto cfg = nlohmann::json::parse(contents.metadata.at("recipe_config"));
    cfg["width"] = 0.125;
    refused(variant([&](net::SafetensorsContents& c) {
              c.metadata["recipe_config"] = cfg.dump();
              c.metadata["channels"] = "[8,16,32,64]";
            }),
            {"'prep_conv' has shape [4, 1, 1, 27]", "width 0.125", "needs [8, 1, 1, 27]",
             "mismatched architecture"});
    // The recipe's width and the channels entry disagree.
    refused(variant([&](net::SafetensorsContents& c) { c.metadata["recipe_config"] = cfg.dump(); }),
            {"metadata channels [4,8,16,32] disagree", "mismatched architecture"});
  }
  SECTION("unknown format version") {
    refused(variant(set_meta("format_version", "2")), {"unknown format version '2'"});
  }
  SECTION("not a checkpoint of ours") {
    refused(variant([](net::SafetensorsContents& c) { c.metadata.erase("format"); }),
            {"lacks 'format'"});
  }
  SECTION("recipe_config broken") {
    refused(variant(set_meta("recipe_config", "{\"width\": 1")),
            {"recipe_config is not valid JSON"});
    auto cfg = nlohmann::json::parse(contents.metadata.at("recipe_config"));
    cfg.erase("bn_eps");
    refused(variant(set_meta("recipe_config", cfg.dump())), {"lacks 'bn_eps'"});
  }
  SECTION("bytes that belong to no tensor") {
    Parts p = split(good);
    p.data += std::string(8, '\0');
    refused(join(p), {"belong to no tensor"});
  }
  SECTION("the good bytes load") {
    write_bytes(file, good);
    CHECK(net::load_checkpoint(file.string()).params == s.params);
  }
}

TEST_CASE("saving to a folder that cannot be written fails and leaves nothing", "[checkpoint]") {
  const net::ModelState s = tiny_state(31);
  // /proc refuses new files even to root.
  CHECK_THROWS_AS(net::save_checkpoint("/proc/cs_checkpoint_test.safetensors", s, "x"),
                  net::CheckpointError);
  TempDir tmp("unwritable");
  CHECK_THROWS_AS(net::save_checkpoint((tmp.path / "no" / "m.safetensors").string(), s, "x"),
                  net::CheckpointError);
  CHECK(fs::is_empty(tmp.path));
  // A model state that does not fit its recipe is a programming error, not a file error.
  net::ModelState wrong = s;
  wrong.params.pop_back();
  CHECK_THROWS_AS(net::save_checkpoint((tmp.path / "m.safetensors").string(), wrong, "x"),
                  std::invalid_argument);
  CHECK(fs::is_empty(tmp.path));
}
