// Cross-check of the CPU reference against the recipe written in PyTorch
// (tools/reference/resnet9_torch.py; tensors and tolerances in docs/torch_crosscheck.md).
//
// reference_dump runs three training steps of a narrow ResNet-9 (width 0.125: 8..64 channels,
// batch 64 in 4 ghost-BN groups of 16) on synthetic images and writes every intermediate
// tensor; the Python side replays each step in PyTorch from the dumped state and exits non-zero
// if any tensor is outside its tolerance. ema_every is lowered to 2 so that within the three
// steps the weight average is both updated (steps 1 and 3) and left alone (step 2).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>

#include <unistd.h>

namespace {

bool torch_available() {
  return std::system("/usr/bin/python3 -c 'import torch' > /dev/null 2>&1") == 0;
}

int run(const std::string& cmd) {
  std::fflush(stdout);
  return std::system(cmd.c_str());
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
