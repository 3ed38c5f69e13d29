// tools/plot_results.py on small synthetic records of each schema it reads (a training record,
// a kernel_bench record, a conv_bench v2 record): it must exit 0 and write each PNG, non-empty;
// and it must refuse a record of an unknown schema with a message that names the file.
// Needs matplotlib for /usr/bin/python3 (Debian python3-matplotlib; tools/install_deps.sh);
// skipped without it, except under CI, where that is a failure.
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <nlohmann/json.hpp>
#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

bool matplotlib_available() {
  return std::system("/usr/bin/python3 -c 'import matplotlib' > /dev/null 2>&1") == 0;
}

void write_json(const fs::path& p, const json& j) {
  std::ofstream f(p);
  f << j.dump(2) << "\n";
}

json training_record() {
  json runs = json::array();
  for (int i = 0; i < 3; i++) {
    json epochs = json::array();
    for (int e = 1; e <= 2; e++)
      epochs.push_back({{"epoch", e}, {"train_loss", 1.0 / e}, {"train_acc", 0.5 + 0.1 * e},
                        {"test_acc_tta", 0.8 + 0.05 * e + 0.001 * i}, {"lr", 0.1}, {"seconds", 1.0}});
    runs.push_back({{"seed", i}, {"warmup", false}, {"diverged", false}, {"test_acc_tta", 0.94 + 0.001 * i},
                    {"timed_total_seconds", 4.0 + 0.1 * i}, {"epochs", epochs}});
  }
  return {{"schema", "cifar-speedrun/v1"}, {"tool", "speedrun"}, {"device", "cuda"},
          {"device_name", "synthetic"}, {"runs", runs}};
}

json kernel_bench_record() {
  json results = json::array();
  for (const char* pass : {"fwd", "bwd_data", "bwd_filter"})
    for (const char* v : {"autotuned", "IMPLICIT_GEMM"})
      results.push_back({{"family", "conv"}, {"name", std::string(pass) + " " + v},
                         {"shape", "512x32x32x64->128"}, {"tflops", 300.0}});
  // Memory-bound rows (memory_kernels.png), one without a check.
  results.push_back({{"family", "bn"}, {"name", "pool_bn_celu_forward_train prep"}, {"bytes", 2.0e8},
                     {"median_us", 110.0}, {"pct_peak", 38.0}, {"check", {{"status", "pass"}}}});
  results.push_back({{"family", "head"}, {"name", "head_forward"}, {"bytes", 9.0e6}, {"median_us", 7.0}});
  return {{"schema", "cifar-speedrun/kernel_bench/v1"}, {"gpu", {{"name", "synthetic"}}}, {"results", results}};
}

json conv_bench_record() {
  json results = json::array();
  for (const char* layer : {"layer1", "layer2"})
    for (const char* pass : {"fwd", "bwd_data", "bwd_filter"}) {
      results.push_back({{"layer", layer}, {"pass", pass}, {"kernel", "cudnn"}, {"config", "x"},
                         {"epilogue", "none"}, {"median_us", 100.0}, {"tflops", 400.0},
                         {"check", {{"status", "pass"}}}});
      results.push_back({{"layer", layer}, {"pass", pass}, {"kernel", "igemm"}, {"config", "128x128x32_s4"},
                         {"epilogue", "none"}, {"median_us", 90.0}, {"tflops", 440.0}, {"speedup_vs_cudnn", 1.11},
                         {"check", {{"status", "pass"}}}});
      // A failed check must not be drawn as the fastest.
      results.push_back({{"layer", layer}, {"pass", pass}, {"kernel", "igemm"}, {"config", "64x64x32_s4"},
                         {"epilogue", "none"}, {"median_us", 1.0}, {"tflops", 40000.0},
                         {"check", {{"status", "fail"}}}});
    }
  results.push_back({{"layer", "layer1"}, {"pass", "fwd"}, {"kernel", "igemm"}, {"config", "128x128x32_s4"},
                     {"epilogue", "pool"}, {"median_us", 95.0}, {"tflops", 420.0}, {"speedup_vs_cudnn", 1.05},
                     {"check", {{"status", "pass"}}}});
  // The statistics epilogue of a tile whose plain row is there: fused_epilogue_cost.png's bar.
  results.push_back({{"layer", "layer1"}, {"pass", "fwd"}, {"kernel", "igemm"}, {"config", "128x128x32_s4"},
                     {"epilogue", "stats"}, {"median_us", 120.0}, {"tflops", 330.0}, {"speedup_vs_cudnn", 0.83},
                     {"check", {{"status", "pass"}}}});
  // The input gradient with the BN-backward sums (a series of its own, igemm or wgmma).
  results.push_back({{"layer", "layer2"}, {"pass", "bwd_data"}, {"kernel", "wgmma"}, {"config", "wgmma_128x128x64_s4"},
                     {"epilogue", "bn_sums"}, {"median_us", 97.0}, {"tflops", 410.0}, {"speedup_vs_cudnn", 1.03},
                     {"check", {{"status", "pass"}}}});
  return {{"schema", "cifar-speedrun/conv_bench/v2"}, {"gpu", {{"name", "synthetic"}}}, {"results", results}};
}

int run(const std::string& cmd) {
  std::fflush(stdout);
  return std::system(cmd.c_str());
}

}  // namespace

TEST_CASE("plot_results.py draws every plot from synthetic records", "[tools]") {
  if (!matplotlib_available()) {
    if (std::getenv("CI"))
      FAIL("matplotlib is not importable by /usr/bin/python3 and CI is set (apt-get install "
           "python3-matplotlib)");
    std::printf("SKIPPED: matplotlib not available (apt-get install python3-matplotlib)\n");
    return;
  }
  const fs::path dir = fs::temp_directory_path() / ("cs_plot_results_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  write_json(dir / "train.json", training_record());
  write_json(dir / "kernel_bench.json", kernel_bench_record());
  write_json(dir / "conv_bench.json", conv_bench_record());
  const std::string script = "/usr/bin/python3 '" CS_SOURCE_DIR "/tools/plot_results.py'";
  const fs::path out = dir / "png";
  const std::string log = (dir / "log.txt").string();
  const int rc = run(script + " --out '" + out.string() + "' '" + (dir / "train.json").string() + "' '" +
                     (dir / "kernel_bench.json").string() + "' '" + (dir / "conv_bench.json").string() +
                     "' > '" + log + "' 2>&1");
  {
    std::ifstream f(log);
    INFO("plot_results output:\n" << std::string(std::istreambuf_iterator<char>(f), {}));
    REQUIRE(rc == 0);
  }
  for (const char* png : {"accuracy_vs_time.png", "epoch_curves.png", "conv_tflops.png", "memory_kernels.png",
                          "igemm_vs_cudnn.png", "fused_epilogue_cost.png"}) {
    INFO(png);
    CHECK(fs::exists(out / png));
    CHECK((fs::exists(out / png) && fs::file_size(out / png) > 1000));
  }

  json bad = {{"schema", "cifar-speedrun/conv_bench/v1"}};
  write_json(dir / "old.json", bad);
  const int rc_bad = run(script + " --out '" + out.string() + "' '" + (dir / "old.json").string() + "' > '" +
                         log + "' 2>&1");
  std::ifstream f(log);
  const std::string text(std::istreambuf_iterator<char>(f), {});
  CHECK(rc_bad != 0);
  CHECK(text.find("old.json") != std::string::npos);
  CHECK(text.find("unknown schema") != std::string::npos);
  fs::remove_all(dir);
}
