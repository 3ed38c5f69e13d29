// Tests of the speedrun command line (bench/speedrun.cpp), run as a subprocess: help and
// version, every kind of usage error (exit 2, naming the flag), a tiny CPU run on synthetic
// official-format files that writes a JSON record with the schema of docs/json_schema.md, and
// failed runs that leave no JSON behind.
#include <catch2/catch.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "engine/gpu_info.h"
#include "kernels/ref/augment.h"

namespace fs = std::filesystem;

namespace {

const std::string kBinary = std::string(CS_BINARY_DIR) + "/speedrun";

// A fresh, empty directory under the system temp directory, removed at scope exit.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() /
           ("cs_speedrun_test_" + tag + "_" + std::to_string((long)getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

std::string read_text(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs speedrun with `args` (already shell-quoted where needed), capturing stdout and stderr.
Result run_speedrun(const std::string& args, const fs::path& scratch) {
  const fs::path out = scratch / "stdout.txt", err = scratch / "stderr.txt";
  const std::string cmd =
      "'" + kBinary + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  const int status = std::system(cmd.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_text(out);
  r.err = read_text(err);
  return r;
}

// Official-format files in dir/cifar-10-batches-bin: each file holds 10,000 records (the
// reader checks the size), of which the first `filled` are random; the rest stay zero bytes
// (label 0, black image), written sparse so the 6 x 30 MB cost no time or disk.
void write_synthetic_cifar(const fs::path& dir, int filled) {
  const fs::path b = dir / data::kBatchesDirName;
  fs::create_directories(b);
  ref::Rng rng(42);
  std::vector<std::string> names = {"test_batch.bin"};
  for (int i = 1; i <= data::kTrainFiles; ++i)
    names.push_back("data_batch_" + std::to_string(i) + ".bin");
  for (const auto& name : names) {
    std::vector<char> recs((size_t)filled * data::kRecordBytes);
    for (int k = 0; k < filled; ++k) {
      char* rec = recs.data() + (size_t)k * data::kRecordBytes;
      rec[0] = (char)rng.uniform_int(10);
      for (int j = 1; j < data::kRecordBytes; ++j) rec[j] = (char)rng.uniform_int(256);
    }
    {
      std::ofstream f(b / name, std::ios::binary);
      f.write(recs.data(), (std::streamsize)recs.size());
    }
    fs::resize_file(b / name, (uintmax_t)data::kBatchFileBytes);
  }
}

bool binary_present() {
  if (fs::exists(kBinary)) return true;
  std::printf("SKIPPED: %s not built (ninja speedrun)\n", kBinary.c_str());
  return false;
}

}  // namespace

TEST_CASE("speedrun: --help lists every flag, --version prints the version", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("help");
  const Result help = run_speedrun("--help", tmp.path);
  CHECK(help.code == 0);
  for (const char* flag : {"--device", "--epochs", "--width", "--batch", "--bn-group",
                           "--train-subset", "--test-subset", "--seed", "--runs", "--data",
                           "--json", "--eval-every-epoch", "--warmup", "--help", "--version"}) {
    INFO(flag);
    CHECK(help.out.find(flag) != std::string::npos);
  }
  const Result version = run_speedrun("--version", tmp.path);
  CHECK(version.code == 0);
  CHECK(version.out.find(CS_VERSION) != std::string::npos);
}

TEST_CASE("speedrun: usage errors exit 2 and name the flag", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage");
  const std::string json = (tmp.path / "no" / "such" / "dir" / "x.json").string();
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"--bogus", "--bogus"},
      {"stray", "stray"},
      {"--epochs", "--epochs"},  // missing value
      {"--epochs abc", "--epochs"},
      {"--epochs 0", "--epochs"},
      {"--epochs 1001", "--epochs"},
      {"--epochs 3x", "--epochs"},
      {"--width 0", "--width"},
      {"--width -1", "--width"},
      {"--width nan", "--width"},
      {"--width 17", "--width"},
      {"--batch 0", "--batch"},
      {"--batch 1.5", "--batch"},
      {"--batch 100 --bn-group 32", "--bn-group"},
      {"--bn-group 0", "--bn-group"},
      {"--train-subset 50001", "--train-subset"},
      {"--train-subset 0", "--train-subset"},
      {"--test-subset 10001", "--test-subset"},
      {"--batch 64 --bn-group 32 --train-subset 32", "--batch"},
      {"--seed -1", "--seed"},
      {"--seed 18446744073709551616", "--seed"},  // 2^64
      {"--runs 0", "--runs"},
      {"--device gpu", "--device"},
      {"--device", "--device"},
      {"--data", "--data"},
      {"--json '" + json + "'", "--json"},
      {"--warmup=1", "--warmup"},
      {"--epochs=", "--epochs"},
  };
  for (const auto& c : cases) {
    INFO("args: " << c.first);
    const Result r = run_speedrun(c.first, tmp.path);
    CHECK(r.code == 2);
    CHECK(r.err.find(c.second) != std::string::npos);
  }
}

TEST_CASE("speedrun: a tiny CPU run writes a JSON record with the schema fields",
          "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("run");
  write_synthetic_cifar(tmp.path / "data", 100);
  const fs::path json_path = tmp.path / "out.json";
  // Width 1/16, 64 training images in batches of 16 (4 steps), 40 test images, 2 seeds.
  const Result r = run_speedrun(
      "--device cpu --width 0.0625 --batch 16 --bn-group 8 --train-subset 64 --test-subset 40 "
      "--epochs=1 --runs 2 --seed 7 --eval-every-epoch --data '" +
          (tmp.path / "data").string() + "' --json '" + json_path.string() + "'",
      tmp.path);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("epoch  1/1") != std::string::npos);
  CHECK(r.out.find("summary over 2 run(s)") != std::string::npos);
  REQUIRE(fs::exists(json_path));
  // The temporary file of the atomic write is gone.
  for (const auto& entry : fs::directory_iterator(tmp.path))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);

  const auto j = nlohmann::json::parse(read_text(json_path));
  CHECK(j.at("schema") == "cifar-speedrun/v1");
  CHECK(j.at("tool") == "speedrun");
  CHECK(j.at("version") == CS_VERSION);
  CHECK(j.at("git_commit").is_string());
  CHECK(std::regex_match(j.at("date").get<std::string>(),
                         std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)")));
  CHECK(j.at("machine").at("hostname").is_string());
  CHECK(j.at("machine").at("cpu").is_string());
  CHECK((j.at("machine").at("gpu").is_null() || j.at("machine").at("gpu").is_string()));
  CHECK(j.at("device") == "cpu");
  CHECK(j.at("device_name").is_string());
  CHECK(j.at("engine_info").is_object());
  const auto& c = j.at("config");
  CHECK(c.at("epochs") == 1);
  CHECK(c.at("width") == 0.0625);
  CHECK(c.at("channels") == nlohmann::json::array({4, 8, 16, 32}));
  CHECK(c.at("batch") == 16);
  CHECK(c.at("bn_group") == 8);
  CHECK(c.at("train_subset") == 64);
  CHECK(c.at("test_subset") == 40);
  CHECK(c.at("train_images") == 64);
  CHECK(c.at("test_images") == 40);
  CHECK(c.at("runs") == 2);
  CHECK(c.at("seed") == 7);
  CHECK(c.at("lr_knots") == nlohmann::json::array({0.0, 2.0, 8.0}));
  CHECK(c.at("ema_rho") == 0.99);
  for (const char* k : {"data_read_seconds", "upload_seconds", "init_seconds"})
    CHECK(j.at("setup").at(k).is_number());
  const auto& runs = j.at("runs");
  REQUIRE(runs.size() == 2);
  for (int i = 0; i < 2; ++i) {
    const auto& run = runs[i];
    CHECK(run.at("seed") == 7 + i);
    CHECK(run.at("warmup") == false);
    CHECK(run.at("diverged") == false);
    CHECK(run.at("diverged_step").is_null());
    REQUIRE(run.at("epochs").size() == 1);
    const auto& e = run.at("epochs")[0];
    CHECK(e.at("epoch") == 1);
    for (const char* k : {"train_loss", "train_acc", "test_acc_tta", "lr", "seconds"})
      CHECK(e.at(k).is_number());
    const double acc = run.at("test_acc_tta");
    CHECK((acc >= 0 && acc <= 1));
    CHECK(run.at("test_acc").is_number());
    CHECK(run.at("timed_total_seconds").get<double>() ==
          Approx(run.at("train_seconds").get<double>() + run.at("eval_seconds").get<double>()));
  }
  const auto& s = j.at("summary");
  CHECK(s.at("runs") == 2);
  CHECK(s.at("finished") == 2);
  CHECK(s.at("diverged") == 0);
  CHECK(s.at("test_acc_tta").at("n") == 2);
  CHECK(s.at("test_acc_tta").at("ci95_low").is_number());
  CHECK(s.at("ci95_method") == "student-t");
  CHECK(s.at("fraction_at_target").is_number());
  CHECK(s.at("timed_total_seconds").at("mean").is_number());
}

TEST_CASE("speedrun: failed runs exit non-zero and leave no JSON", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("fail");
  const fs::path json_path = tmp.path / "out.json";
  const std::string tiny =
      "--device cpu --width 0.0625 --batch 16 --bn-group 8 --train-subset 32 --test-subset 16 "
      "--epochs 1 --json '" + json_path.string() + "' ";

  SECTION("missing data directory: exit 3") {
    const Result r = run_speedrun(tiny + "--data '" + (tmp.path / "nowhere").string() + "'",
                                  tmp.path);
    CHECK(r.code == 3);
    CHECK(!r.err.empty());
  }
  SECTION("a batch file of the wrong size: exit 3 naming the file") {
    write_synthetic_cifar(tmp.path / "data", 40);
    fs::resize_file(tmp.path / "data" / data::kBatchesDirName / "test_batch.bin", 1000);
    const Result r = run_speedrun(tiny + "--data '" + (tmp.path / "data").string() + "'",
                                  tmp.path);
    CHECK(r.code == 3);
    CHECK(r.err.find("test_batch.bin") != std::string::npos);
  }
  SECTION("--device cuda without a usable GPU: exit 5 naming the reason") {
    if (cs::detect_gpu().available) return;  // a GPU machine runs it instead
    write_synthetic_cifar(tmp.path / "data", 40);
    const std::string args = "--device cuda --data '" + (tmp.path / "data").string() +
                             "' --json '" + json_path.string() + "'";
    const Result r = run_speedrun(args, tmp.path);
    CHECK(r.code == 5);
    CHECK(r.err.find("--device cuda") != std::string::npos);
  }
  CHECK_FALSE(fs::exists(json_path));
  for (const auto& entry : fs::directory_iterator(tmp.path))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);
}
