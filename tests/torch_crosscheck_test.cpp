// Cross-check of the CPU reference against the recipe written in PyTorch
// (tools/reference/resnet9_torch.py; tensors and tolerances in docs/torch_crosscheck.md).
//
// reference_dump runs three training steps of a narrow ResNet-9 (width 0.125: 8..64 channels,
// batch 64 in 4 ghost-BN groups of 16) on synthetic images and writes every intermediate
// tensor; the Python side replays each step in PyTorch from the dumped state and exits non-zero
// if any tensor is outside its tolerance. ema_every is lowered to 2 so that within the three
// steps the weight average is both updated (steps 1 and 3) and left alone (step 2).
//
// The GPU engine's step (reference_dump --gpu, gpu.step1.*) needs a device; here the second
// case checks compare's side of it: a dump whose gpu.* tensors are copies of the CPU
// reference's step 1 passes (fp32 against PyTorch's fp16-rounded replay: inside the noise
// floor, as a correct GPU step is), and one gradient scaled by 1.5 fails.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

namespace {

bool torch_available() {
  return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0;
}

int run(const std::string& cmd) {
  std::fflush(stdout);
  return std::system(cmd.c_str());
}

// Runs compare on dump `dir` (extra arguments `args`); returns the exit status, the log in *out.
int run_compare(const std::filesystem::path& dir, const std::string& args, std::string* out) {
  const std::string log = (dir / "compare.log").string();
  const std::string cmd = "/usr/bin/python3 '" CS_SOURCE_DIR "/tools/reference/resnet9_torch.py' compare " +
                          args + " --dump '" + dir.string() + "' > '" + log + "' 2>&1";
  const int rc = run(cmd);
  std::ifstream in(log);
  out->assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return rc;
}

}  // namespace

TEST_CASE("CPU reference training steps equal the PyTorch recipe tensor for tensor", "[torch]") {
  if (!torch_available()) {
    if (std::getenv("CI"))
      FAIL("PyTorch is not importable by /usr/bin/python3 and CI is set: the cross-check must "
           "not be skipped in CI (apt-get install python3-torch)");
    std::printf("SKIPPED: PyTorch not available (apt-get install python3-torch)\n");
    return;
  }
  namespace fs = std::filesystem;
  const fs::path dump_bin = fs::path(CS_BINARY_DIR) / "reference_dump";
  INFO("reference_dump binary: " << dump_bin.string());
  REQUIRE(fs::exists(dump_bin));  // built with cs_tests (CMakeLists.txt adds the dependency)
  const fs::path dir =
      fs::temp_directory_path() / ("cs_torch_crosscheck_" + std::to_string(getpid()));
  fs::remove_all(dir);
  const std::string log = (dir / "compare.log").string();

  const std::string dump_cmd = "'" + dump_bin.string() + "' --out '" + dir.string() +
                               "' --seed 7 --width 0.125 --batch 64 --bn-group 16 --steps 3"
                               " --ema-every 2 --train-images 256 --test-images 128";
  REQUIRE(run(dump_cmd) == 0);

  const std::string compare_cmd = "/usr/bin/python3 '" CS_SOURCE_DIR
                                  "/tools/reference/resnet9_torch.py' compare --double --dump '" +
                                  dir.string() + "' > '" + log + "' 2>&1";
  const int rc = run(compare_cmd);
  // The full table on failure; its last lines (class maxima, verdict) always.
  std::ifstream in(log);
  std::string line, all, tail[4];
  int n = 0;
  while (std::getline(in, line)) {
    all += line + "\n";
    tail[n++ % 4] = line;
  }
  if (rc != 0) std::cout << all;
  for (int i = 0; i < 4 && i < n; ++i) std::cout << tail[(n + i - std::min(n, 4)) % 4] << "\n";
  CHECK(rc == 0);
  if (rc == 0) fs::remove_all(dir);
}

TEST_CASE("PyTorch compare checks a GPU step dump against its noise floor", "[torch]") {
  if (!torch_available()) {
    if (std::getenv("CI"))
      FAIL("PyTorch is not importable by /usr/bin/python3 and CI is set (apt-get install python3-torch)");
    std::printf("SKIPPED: PyTorch not available (apt-get install python3-torch)\n");
    return;
  }
  namespace fs = std::filesystem;
  using json = nlohmann::json;
  const fs::path dump_bin = fs::path(CS_BINARY_DIR) / "reference_dump";
  REQUIRE(fs::exists(dump_bin));
  const fs::path dir = fs::temp_directory_path() / ("cs_torch_gpu_floor_" + std::to_string(getpid()));
  fs::remove_all(dir);
  REQUIRE(run("'" + dump_bin.string() + "' --out '" + dir.string() +
              "' --seed 3 --width 0.25 --batch 64 --bn-group 32 --steps 1 --test-images 32") == 0);

  // gpu.step1.* := the CPU reference's step1.* (logits, loss, gradients, running statistics).
  json man;
  {
    std::ifstream f(dir / "manifest.json");
    f >> man;
  }
  std::vector<json> added;
  for (const json& t : man["tensors"]) {
    const std::string name = t["name"];
    const bool wanted = name == "step1.logits" || name == "step1.loss" || name.rfind("step1.grad.", 0) == 0 ||
                        name.rfind("step1.bn.", 0) == 0;
    if (!wanted) continue;
    json g = t;
    g["name"] = "gpu." + name;
    g["file"] = "gpu." + name + ".bin";
    fs::copy_file(dir / t["file"].get<std::string>(), dir / g["file"].get<std::string>());
    added.push_back(g);
  }
  REQUIRE(added.size() == 2 + 17 + 2 * 8);  // logits, loss, 17 gradients, mean and var of 8 BNs
  for (json& g : added) man["tensors"].push_back(g);
  {
    std::ofstream f(dir / "manifest.json");
    f << man.dump(1);
  }
  std::string log;
  int rc = run_compare(dir, "", &log);
  INFO(log);
  CHECK(rc == 0);
  CHECK(log.find("gpu.step1.grad.layer2_conv") != std::string::npos);

  // One gradient 1.5 times too large: outside any noise floor.
  const fs::path g = dir / "gpu.step1.grad.layer2_conv.bin";
  std::vector<float> v(fs::file_size(g) / sizeof(float));
  {
    std::ifstream f(g, std::ios::binary);
    f.read(reinterpret_cast<char*>(v.data()), (std::streamsize)(v.size() * sizeof(float)));
  }
  for (float& e : v) e *= 1.5f;
  {
    std::ofstream f(g, std::ios::binary);
    f.write(reinterpret_cast<const char*>(v.data()), (std::streamsize)(v.size() * sizeof(float)));
  }
  rc = run_compare(dir, "", &log);
  CHECK(rc != 0);
  CHECK(log.find("MISMATCH: gpu.step1.grad.layer2_conv") != std::string::npos);
  fs::remove_all(dir);
}
