// Tests of the speedrun command line (bench/speedrun.cpp), run as a subprocess: help and
// version, every kind of usage error (exit 2, naming the flag), a tiny CPU run on synthetic
// official-format files that writes a JSON record with the schema of docs/json_schema.md,
// failed runs that leave no JSON behind, and the checkpoint commands: --save, eval (same
// accuracy as the training run), predict (same probabilities as the model in-process) and
// their refusals (unwritable --save folder before training, bad checkpoint, bad images).
#include <catch2/catch.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
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
#include "net/checkpoint.h"
#include "net/resnet9_cpu.h"

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
                           "--json", "--save", "--eval-every-epoch", "--conv-kernels", "--fused-pool", "--fused-stats", "--fused-bn-grad", "--fusions", "--bn-kernels", "--scale-schedule", "--warmup", "--help",
                           "--version", "speedrun eval", "speedrun predict"}) {
    INFO(flag);
    CHECK(help.out.find(flag) != std::string::npos);
  }
  const Result version = run_speedrun("--version", tmp.path);
  CHECK(version.code == 0);
  CHECK(version.out.find(CS_VERSION) != std::string::npos);
}

// Each (arguments, text) case must exit 2 with `text` (the flag) in the message. Every case is
// a process start (about 0.3-0.8 s: the binary loads the CUDA libraries), so the tables are
// split over several test cases to keep each well under 10 s.
using UsageCases = std::vector<std::pair<std::string, std::string>>;
void check_usage_errors(const UsageCases& cases, const fs::path& scratch) {
  for (const auto& c : cases) {
    INFO("args: " << c.first);
    const Result r = run_speedrun(c.first, scratch);
    CHECK(r.code == 2);
    CHECK(r.err.find(c.second) != std::string::npos);
  }
}

TEST_CASE("speedrun: usage errors exit 2 and name the flag (integers)", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage_int");
  check_usage_errors({{"--bogus", "--bogus"},
                      {"stray", "stray"},
                      {"--epochs", "--epochs"},  // missing value
                      {"--epochs abc", "--epochs"},
                      {"--epochs 0", "--epochs"},
                      {"--epochs 1001", "--epochs"},
                      {"--epochs 3x", "--epochs"},
                      {"--epochs=", "--epochs"},
                      {"--batch 0", "--batch"},
                      {"--batch 1.5", "--batch"}},
                     tmp.path);
}

TEST_CASE("speedrun: usage errors exit 2 and name the flag (sizes and seeds)", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage_size");
  check_usage_errors({{"--width 0", "--width"},
                      {"--width -1", "--width"},
                      {"--width nan", "--width"},
                      {"--width 17", "--width"},
                      {"--batch 100 --bn-group 32", "--bn-group"},
                      {"--bn-group 0", "--bn-group"},
                      {"--train-subset 50001", "--train-subset"},
                      {"--train-subset 0", "--train-subset"},
                      {"--test-subset 10001", "--test-subset"}},
                     tmp.path);
}

TEST_CASE("speedrun: usage errors exit 2 and name the flag (other flags)", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage_other");
  const std::string json = (tmp.path / "no" / "such" / "dir" / "x.json").string();
  check_usage_errors({{"--batch 64 --bn-group 32 --train-subset 32", "--batch"},
                      {"--seed -1", "--seed"},
                      {"--seed 18446744073709551616", "--seed"},  // 2^64
                      {"--runs 0", "--runs"},
                      {"--device gpu", "--device"},
                      {"--device", "--device"},
                      {"--conv-kernels fast", "--conv-kernels"},
                      {"--conv-kernels", "--conv-kernels"},
                      {"--bn-kernels fast", "--bn-kernels"},
                      {"--data", "--data"},
                      {"--json '" + json + "'", "--json"},
                      {"--json /proc/cs_speedrun_test.json", "--json"},  // unwritable, even to root
                      {"--warmup=1", "--warmup"},
                      {"--fused-pool=1", "--fused-pool"},
                      {"--fused-stats=yes", "--fused-stats"},
                      {"--fused-bn-grad=1", "--fused-bn-grad"},
                      {"--fusions some", "--fusions"},
                      {"--fusions", "--fusions"},
                      {"--fusions auto --fused-pool", "--fusions"},
                      {"--scale-schedule=on", "--scale-schedule"}},
                     tmp.path);
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
  CHECK(c.at("conv_kernels") == "auto");
  CHECK(c.at("fused_pool") == false);
  CHECK(c.at("fused_stats") == false);
  CHECK(c.at("fused_bn_grad") == false);
  CHECK(c.at("fused_auto") == false);
  CHECK(c.at("bn_kernels") == "vector");
  CHECK(c.at("scale_schedule") == false);
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

namespace {

// A tiny CPU run (width 1/16, 32 training and 16 test images of synthetic data) with `args`
// added; it must succeed, and its JSON record is returned.
nlohmann::json tiny_cpu_run(const std::string& name, const std::string& args) {
  TempDir tmp(name);
  write_synthetic_cifar(tmp.path / "data", 40);
  const fs::path json_path = tmp.path / "out.json";
  const Result r = run_speedrun(
      "--device cpu --width 0.0625 --batch 16 --bn-group 8 --train-subset 32 --test-subset 16 " + args + " --data '" +
          (tmp.path / "data").string() + "' --json '" + json_path.string() + "'",
      tmp.path);
  INFO(r.err);
  REQUIRE(r.code == 0);
  return nlohmann::json::parse(read_text(json_path));
}

}  // namespace

// --scale-schedule stretches the lr knots (epochs 0, 2, 8 of the 10-epoch recipe) to --epochs,
// and the record says so: 5 epochs -> 0, 1, 4.
TEST_CASE("speedrun: --scale-schedule stretches the lr knots to --epochs", "[speedrun]") {
  if (!binary_present()) return;
  const auto j = tiny_cpu_run("scale", "--epochs 5 --scale-schedule");
  CHECK(j.at("config").at("scale_schedule") == true);
  CHECK(j.at("config").at("lr_knots") == nlohmann::json::array({0.0, 1.0, 4.0}));
  CHECK(j.at("config").at("lr_values") == nlohmann::json::array({0.0, 1.0, 0.1}));
}

// The policy for measuring kernels that have not passed their GPU tests yet: accepted, and
// recorded as given (the CPU engine ignores it).
TEST_CASE("speedrun: --conv-kernels auto-untested is accepted and recorded", "[speedrun]") {
  if (!binary_present()) return;
  CHECK(tiny_cpu_run("untested", "--conv-kernels auto-untested").at("config").at("conv_kernels") == "auto-untested");
}

// --fusions sets the three fusion options at once, and auto also keeps each only where it
// times faster (the CPU engine ignores them; the record says what was asked for).
TEST_CASE("speedrun: --fusions sets the three fused options (auto: each where faster)", "[speedrun]") {
  if (!binary_present()) return;
  for (const char* mode : {"auto", "all", "none"}) {
    INFO(mode);
    const auto c = tiny_cpu_run(std::string("fusions_") + mode, std::string("--fusions ") + mode).at("config");
    const bool on = std::string(mode) != "none";
    CHECK(c.at("fused_pool") == on);
    CHECK(c.at("fused_stats") == on);
    CHECK(c.at("fused_bn_grad") == on);
    CHECK(c.at("fused_auto") == (std::string(mode) == "auto"));
  }
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

namespace {

// Writes image `planes` [3][32][32] (the CIFAR-10 layout) as a binary PPM with a comment.
void write_ppm(const fs::path& p, const uint8_t* planes) {
  std::string b = "P6\n# written by speedrun_test\n32 32\n255\n";
  for (int i = 0; i < 32 * 32; ++i)
    for (int c = 0; c < 3; ++c) b += (char)planes[c * 32 * 32 + i];
  std::ofstream f(p, std::ios::binary);
  f.write(b.data(), (std::streamsize)b.size());
}

void write_file(const fs::path& p, const std::string& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write(bytes.data(), (std::streamsize)bytes.size());
}

// A checkpoint of an untrained tiny model, written in-process (for tests of predict's image
// checks, where the weights do not matter).
void write_tiny_checkpoint(const fs::path& p) {
  net::Recipe r;
  r.width = 0.0625f;
  r.batch = 16;
  r.bn_group = 8;
  net::Resnet9Cpu m(r);
  m.init(1);
  net::save_checkpoint(p.string(), net::ModelState{r, m.params, m.running_mean, m.running_var,
                                                   m.whiten},
                       "test");
}

// Each (file bytes, text) case: predict exits 3 naming the image file and saying `text`.
void check_bad_images(const std::vector<std::pair<std::string, std::string>>& bad,
                      const fs::path& dir) {
  const fs::path model = dir / "m.safetensors";
  write_tiny_checkpoint(model);
  for (size_t i = 0; i < bad.size(); ++i) {
    INFO("case " << i << ": " << bad[i].second);
    const fs::path img = dir / ("bad" + std::to_string(i) + ".ppm");
    write_file(img, bad[i].first);
    const Result r =
        run_speedrun("predict --load '" + model.string() + "' '" + img.string() + "'", dir);
    CHECK(r.code == 3);
    CHECK(r.err.find(img.string()) != std::string::npos);
    CHECK(r.err.find(bad[i].second) != std::string::npos);
  }
}

// The tiny CPU training run of these tests: width 1/16, 64 images in batches of 16, one epoch.
std::string tiny_train_args(const fs::path& data_dir) {
  return "--device cpu --width 0.0625 --batch 16 --bn-group 8 --train-subset 64 --epochs 1 "
         "--seed 3 --data '" + data_dir.string() + "' ";
}

}  // namespace

TEST_CASE("speedrun eval/predict: --help lists their flags", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("subusage");
  const Result eh = run_speedrun("eval --help", tmp.path);
  CHECK(eh.code == 0);
  for (const char* flag : {"--load", "--data", "--test-subset", "--tta", "--no-tta", "--json"}) {
    INFO(flag);
    CHECK(eh.out.find(flag) != std::string::npos);
  }
  const Result ph = run_speedrun("predict --help", tmp.path);
  CHECK(ph.code == 0);
  for (const char* s : {"--load", "--tta", "--no-tta", "P6", "airplane", "truck"}) {
    INFO(s);
    CHECK(ph.out.find(s) != std::string::npos);
  }
}

TEST_CASE("speedrun eval: usage errors exit 2 and name the flag", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage_eval");
  check_usage_errors({{"eval", "--load"},
                      {"eval --load", "--load"},
                      {"eval --load=", "--load"},
                      {"eval --load m --bogus", "--bogus"},
                      {"eval --load m stray", "stray"},
                      {"eval --load m --test-subset 0", "--test-subset"},
                      {"eval --load m --test-subset 10001", "--test-subset"},
                      {"eval --load m --tta --no-tta", "--no-tta"},
                      {"eval --load m --tta=1", "--tta"},
                      {"eval --load m --json '" + (tmp.path / "no" / "x.json").string() + "'",
                       "--json"}},
                     tmp.path);
}

TEST_CASE("speedrun predict and --save: usage errors exit 2 and name the flag", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("usage_predict");
  const std::string model = (tmp.path / "m.safetensors").string();
  check_usage_errors({{"predict a.ppm", "--load"},
                      {"predict --load m", "no images"},
                      {"predict --load m --bogus a.ppm", "--bogus"},
                      {"predict --load m --no-tta --tta a.ppm", "--tta"},
                      {"predict --help=yes", "--help"},
                      {"--save", "--save"},
                      {"--save ''", "--save"},
                      {"--save '" + (tmp.path / "no" / "m.safetensors").string() + "'", "--save"},
                      {"--save '" + tmp.path.string() + "'", "--save"},
                      {"--save '" + model + "' --json '" + model + "'", "--save"}},
                     tmp.path);
}

TEST_CASE("speedrun --save, then eval and predict on the checkpoint", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("ckpt");
  const fs::path data_dir = tmp.path / "data";
  write_synthetic_cifar(data_dir, 100);
  const fs::path model = tmp.path / "model.safetensors", train_json = tmp.path / "train.json";
  const Result train = run_speedrun(tiny_train_args(data_dir) + "--test-subset 60 --save '" +
                                        model.string() + "' --json '" + train_json.string() + "'",
                                    tmp.path);
  INFO(train.out << train.err);
  REQUIRE(train.code == 0);
  REQUIRE(fs::exists(model));
  const auto tj = nlohmann::json::parse(read_text(train_json));
  CHECK(tj.at("checkpoint") == model.string());
  for (const auto& entry : fs::directory_iterator(tmp.path))
    CHECK(entry.path().filename().string().find(".tmp.") == std::string::npos);

  SECTION("eval: the training run's accuracies, per-class counts and the confusion matrix") {
    for (bool tta : {true, false}) {
      INFO("tta " << tta);
      const fs::path ej = tmp.path / (tta ? "eval_tta.json" : "eval.json");
      const Result ev = run_speedrun("eval --load '" + model.string() + "' --data '" +
                                         data_dir.string() + "' --test-subset 60 " +
                                         (tta ? "--tta" : "--no-tta") + " --json '" +
                                         ej.string() + "'",
                                     tmp.path);
      INFO(ev.out << ev.err);
      REQUIRE(ev.code == 0);
      CHECK(ev.out.find("confusion matrix") != std::string::npos);
      CHECK(ev.out.find("automobile") != std::string::npos);
      const auto j = nlohmann::json::parse(read_text(ej));
      CHECK(j.at("schema") == "cifar-speedrun-eval/v1");
      CHECK(j.at("tool") == "speedrun eval");
      CHECK(j.at("checkpoint").at("path") == model.string());
      CHECK(j.at("checkpoint").at("format_version") == "1");
      CHECK(j.at("checkpoint").at("channels") == nlohmann::json::array({4, 8, 16, 32}));
      CHECK(j.at("checkpoint").at("data_sha256").get<std::string>().size() == 64);
      CHECK(j.at("config").at("test_images") == 60);
      CHECK(j.at("config").at("tta") == tta);
      // The same model on the same images with the same ops: exactly the trainer's accuracy.
      const auto& run = tj.at("runs").back();
      CHECK(j.at("accuracy").get<double>() ==
            run.at(tta ? "test_acc_tta" : "test_acc").get<double>());
      REQUIRE(j.at("classes").size() == 10);
      CHECK(j.at("classes")[0] == "airplane");
      CHECK(j.at("classes")[9] == "truck");
      const auto& m = j.at("confusion");
      REQUIRE(m.size() == 10);
      long total = 0, diagonal = 0;
      for (int c = 0; c < 10; ++c) {
        REQUIRE(m[c].size() == 10);
        long row = 0;
        for (int p = 0; p < 10; ++p) row += m[c][p].get<long>();
        const auto& pc = j.at("per_class")[c];
        CHECK(pc.at("images") == row);
        CHECK(pc.at("correct") == m[c][c]);
        if (row > 0) CHECK(pc.at("accuracy").get<double>() == Approx((double)m[c][c] / row));
        total += row;
        diagonal += m[c][c].get<long>();
      }
      CHECK(total == 60);
      CHECK(j.at("correct") == diagonal);
      CHECK(j.at("eval_seconds").is_number());
    }
  }

  SECTION("predict: the probabilities of the model run in-process on the same images") {
    const data::Cifar10 d = data::load(data_dir.string(), 0, 3);
    std::vector<std::string> paths;
    std::string args = "predict --load '" + model.string() + "'";
    for (int i = 0; i < 3; ++i) {
      paths.push_back((tmp.path / ("img" + std::to_string(i) + ".ppm")).string());
      write_ppm(paths.back(), d.test.images.data() + (size_t)i * data::kImageBytes);
      args += " '" + paths.back() + "'";
    }
    const Result pr = run_speedrun(args, tmp.path);
    INFO(pr.out << pr.err);
    REQUIRE(pr.code == 0);

    const net::ModelState s = net::load_checkpoint(model.string());
    auto net_model = net::make_cpu_model(s);
    std::vector<float> x(3 * 32 * 32 * 3), logits(3 * 10);
    ref::normalize_cifar(d.test.images.data(), 3, s.recipe.mean, s.recipe.std_, x.data());
    net_model->forward_eval(x.data(), 3, logits.data(), true);
    static const char* names[10] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                    "dog",      "frog",       "horse", "ship", "truck"};
    for (int i = 0; i < 3; ++i) {
      INFO("image " << i);
      const float* z = logits.data() + i * 10;
      const int top = (int)(std::max_element(z, z + 10) - z);
      double p[10], sum = 0;
      for (int k = 0; k < 10; ++k) sum += p[k] = std::exp((double)z[k] - z[top]);
      // "<path>: <class> (<p>)" then the ten "<class> <p>" pairs on the next line.
      const std::string head = paths[i] + ": " + names[top] + " (";
      const size_t at = pr.out.find(head);
      REQUIRE(at != std::string::npos);
      std::istringstream rest(pr.out.substr(pr.out.find('\n', at) + 1));
      for (int k = 0; k < 10; ++k) {
        std::string name;
        double v = -1;
        rest >> name >> v;
        CHECK(name == names[k]);
        // Printed with 4 decimals.
        CHECK(std::abs(v - p[k] / sum) <= 5.01e-5);
      }
    }
  }

  SECTION("eval and predict refuse a corrupt checkpoint: exit 3") {
    std::string bytes = read_text(model);
    bytes[bytes.size() - 3] ^= 1;
    const fs::path bad = tmp.path / "corrupt.safetensors";
    write_file(bad, bytes);
    const Result ev = run_speedrun(
        "eval --load '" + bad.string() + "' --data '" + data_dir.string() + "'", tmp.path);
    CHECK(ev.code == 3);
    CHECK(ev.err.find("checksum mismatch") != std::string::npos);
    write_ppm(tmp.path / "ok.ppm", std::vector<uint8_t>(3072, 7).data());
    const Result pr = run_speedrun(
        "predict --load '" + bad.string() + "' '" + (tmp.path / "ok.ppm").string() + "'",
        tmp.path);
    CHECK(pr.code == 3);
    CHECK(pr.err.find("checksum mismatch") != std::string::npos);
    const Result none = run_speedrun(
        "eval --load '" + (tmp.path / "nothing.safetensors").string() + "'", tmp.path);
    CHECK(none.code == 3);
    CHECK(none.err.find("file not found") != std::string::npos);
  }
}

TEST_CASE("speedrun --save into a folder that cannot be written fails before training",
          "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("saveperm");
  write_synthetic_cifar(tmp.path / "data", 70);
  std::vector<std::string> targets = {
      "/proc/cs_speedrun_test.safetensors",  // refuses new files even to root
      (tmp.path / "missing" / "m.safetensors").string(),
  };
  // A read-only folder stops only a non-root user.
  const fs::path ro = tmp.path / "readonly";
  fs::create_directories(ro);
  fs::permissions(ro, fs::perms::owner_read | fs::perms::owner_exec);
  if (geteuid() != 0) targets.push_back((ro / "m.safetensors").string());
  for (const auto& target : targets) {
    INFO(target);
    const Result r = run_speedrun(
        tiny_train_args(tmp.path / "data") + "--test-subset 20 --save '" + target + "'", tmp.path);
    CHECK(r.code == 2);
    CHECK(r.err.find("--save") != std::string::npos);
    CHECK(r.out.find("epoch") == std::string::npos);  // stopped before training
    CHECK_FALSE(fs::exists(target));
  }
  fs::permissions(ro, fs::perms::owner_all);
  CHECK(fs::is_empty(ro));
}

TEST_CASE("speedrun predict refuses files that are not binary PPM: exit 3", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("ppm_kind");
  check_bad_images({{"P3\n32 32\n255\n" + std::string(100, '1'), "ASCII PPM (P3)"},
                    {"P5\n32 32\n255\n" + std::string(1024, 'a'), "PGM"},
                    {"\x89PNG\r\n\x1a\n", "PNG"},
                    {"P6\n32 # no number\n", "bad PPM header"},
                    {"", "not a binary PPM"}},
                   tmp.path);
  const Result missing = run_speedrun("predict --load '" + (tmp.path / "m.safetensors").string() +
                                          "' '" + (tmp.path / "none.ppm").string() + "'",
                                      tmp.path);
  CHECK(missing.code == 3);
  CHECK(missing.err.find("file not found") != std::string::npos);
}

TEST_CASE("speedrun predict refuses PPMs of the wrong size or depth: exit 3", "[speedrun]") {
  if (!binary_present()) return;
  TempDir tmp("ppm_size");
  const std::string pixels(3072, '\x40');
  check_bad_images({{"P6\n16 16\n255\n" + std::string(768, 'a'), "16x16"},
                    {"P6\n32 32\n65535\n" + pixels + pixels, "maxval 65535"},
                    {"P6\n32 32\n255\n" + pixels.substr(0, 3000), "truncated"},
                    {"P6\n32 32\n255\n" + pixels + "extra", "extra bytes"}},
                   tmp.path);
}
