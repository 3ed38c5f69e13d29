// speedrun: trains the resnet9 recipe (../shared/docs/recipes.md) on CIFAR-10 for one or more
// seeds, prints per-epoch progress and a summary, and optionally writes a JSON record
// (docs/json_schema.md). The GPU engine runs when there is one; the CPU reference engine
// otherwise (slow: meant for narrow networks and small subsets).
//
// Exit codes: 0 success, 1 internal or I/O error, 2 usage error, 3 data error, 4 a run
// diverged (non-finite loss), 5 the requested device is unavailable.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "engine/gpu_info.h"
#include "net/layout.h"
#include "net/recipe.h"
#include "net/train.h"

namespace {

constexpr int kExitError = 1, kExitUsage = 2, kExitData = 3, kExitDiverged = 4, kExitDevice = 5;
constexpr double kTargetAcc = 0.94;  // the recipe's claim: mean TTA accuracy >= 94%

using json = nlohmann::ordered_json;

const char* const kUsage = R"(usage: speedrun [options]

Trains the resnet9 recipe on CIFAR-10 and reports test accuracy (mirror TTA on the
weight-averaged model) and the timed seconds per run, over one or more seeds.

options:
  --device cpu|cuda|auto  engine (default auto: cuda when a GPU is usable and the binary
                          was built with CUDA, else the CPU reference engine)
  --epochs E              training epochs, 1..1000 (default 10)
  --width W               channel multiplier of 64/128/256/512, in (0, 16] (default 1)
  --batch B               batch size, 1..50000 (default 512)
  --bn-group G            images per ghost-BN group, 1..B, B % G == 0 (default 32)
  --train-subset N        use the first N training images, 1..50000 (default all)
  --test-subset M         evaluate on the first M test images, 1..10000 (default all)
  --seed S                seed of the first run; run i uses S + i (default 0)
  --runs R                number of runs (seeds), 1..100000 (default 1)
  --data DIR              CIFAR-10 directory (cifar-10-batches-bin or its parent; default
                          $CIFAR10_DIR, else ~/.cache/cifar-speedrun)
  --json FILE             write a JSON record (docs/json_schema.md), atomically
  --eval-every-epoch      evaluate the averaged model after every epoch (untimed)
  --warmup                do one extra run first (seed S), reported but left out of the
                          summary
  --help                  print this help and exit
  --version               print the version and exit

Values may also be given as --flag=value.
exit codes: 0 ok, 1 internal/I-O error, 2 usage error, 3 data error, 4 a run diverged,
            5 the requested device is unavailable
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string device = "auto";
  net::Recipe recipe;
  int train_subset = -1, test_subset = -1;  // -1: the whole split
  uint64_t seed = 0;
  int runs = 1;
  std::string data_dir, json_path;
  bool eval_every_epoch = false, warmup = false, help = false, version = false;
};

long parse_int(const std::string& flag, const std::string& text, long lo, long hi) {
  errno = 0;
  char* end = nullptr;
  const long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno == ERANGE || v < lo || v > hi)
    throw UsageError(flag + ": expected an integer in [" + std::to_string(lo) + ", " +
                     std::to_string(hi) + "], got '" + text + "'");
  return v;
}

uint64_t parse_u64(const std::string& flag, const std::string& text) {
  errno = 0;
  char* end = nullptr;
  const bool digits_only =
      !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
  const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
  if (!digits_only || *end != '\0' || errno == ERANGE)
    throw UsageError(flag + ": expected an integer in [0, 2^64), got '" + text + "'");
  return (uint64_t)v;
}

double parse_float(const std::string& flag, const std::string& text, double lo_excl, double hi) {
  errno = 0;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v) || v <= lo_excl ||
      v > hi) {
    char range[64];
    std::snprintf(range, sizeof range, "(%g, %g]", lo_excl, hi);
    throw UsageError(flag + ": expected a number in " + range + ", got '" + text + "'");
  }
  return v;
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_train_subset = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i], value;
    bool inline_value = false;
    if (arg.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + arg + "'");
    const size_t eq = arg.find('=');
    if (eq != std::string::npos) {
      value = arg.substr(eq + 1);
      arg = arg.substr(0, eq);
      inline_value = true;
    }
    auto flag_only = [&](bool& field) {
      if (inline_value) throw UsageError(arg + ": takes no value");
      field = true;
    };
    auto need_value = [&]() -> std::string {
      if (inline_value) return value;
      if (i + 1 >= argc) throw UsageError(arg + ": missing value");
      return argv[++i];
    };
    if (arg == "--help") {
      flag_only(o.help);
    } else if (arg == "--version") {
      flag_only(o.version);
    } else if (arg == "--eval-every-epoch") {
      flag_only(o.eval_every_epoch);
    } else if (arg == "--warmup") {
      flag_only(o.warmup);
    } else if (arg == "--device") {
      o.device = need_value();
      if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
        throw UsageError("--device: expected cpu, cuda or auto, got '" + o.device + "'");
    } else if (arg == "--epochs") {
      o.recipe.epochs = (int)parse_int(arg, need_value(), 1, 1000);
    } else if (arg == "--width") {
      o.recipe.width = (float)parse_float(arg, need_value(), 0.0, 16.0);
    } else if (arg == "--batch") {
      o.recipe.batch = (int)parse_int(arg, need_value(), 1, data::kTrainImages);
    } else if (arg == "--bn-group") {
      o.recipe.bn_group = (int)parse_int(arg, need_value(), 1, data::kTrainImages);
    } else if (arg == "--train-subset") {
      o.train_subset = (int)parse_int(arg, need_value(), 1, data::kTrainImages);
      have_train_subset = true;
    } else if (arg == "--test-subset") {
      o.test_subset = (int)parse_int(arg, need_value(), 1, data::kTestImages);
    } else if (arg == "--seed") {
      o.seed = parse_u64(arg, need_value());
    } else if (arg == "--runs") {
      o.runs = (int)parse_int(arg, need_value(), 1, 100000);
    } else if (arg == "--data") {
      o.data_dir = need_value();
      if (o.data_dir.empty()) throw UsageError("--data: empty directory name");
    } else if (arg == "--json") {
      o.json_path = need_value();
      if (o.json_path.empty()) throw UsageError("--json: empty file name");
    } else {
      throw UsageError("unknown flag '" + arg + "'");
    }
  }
  if (o.help || o.version) return o;
  const net::Recipe& r = o.recipe;
  if (r.batch % r.bn_group != 0)
    throw UsageError("--bn-group: the batch (" + std::to_string(r.batch) +
                     ") must be a multiple of the BN group size (" + std::to_string(r.bn_group) +
                     ")");
  const int train_images = have_train_subset ? o.train_subset : data::kTrainImages;
  if (r.batch > train_images)
    throw UsageError("--batch: " + std::to_string(r.batch) + " is more than the " +
                     std::to_string(train_images) +
                     " training images (--train-subset): no full batch to train on");
  if (!o.json_path.empty()) {
    namespace fs = std::filesystem;
    const fs::path parent = fs::path(o.json_path).parent_path();
    std::error_code ec;
    if (!parent.empty() && !fs::is_directory(parent, ec))
      throw UsageError("--json: directory '" + parent.string() + "' does not exist");
    if (fs::is_directory(o.json_path, ec))
      throw UsageError("--json: '" + o.json_path + "' is a directory");
  }
  return o;
}

std::string version_string() {
  return std::string("speedrun ") + CS_VERSION + " (commit " + CS_GIT_COMMIT_FALLBACK + ")";
}

std::string utc_now_iso8601() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

// The first "model name" of /proc/cpuinfo (Linux), else "unknown".
std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    if (colon == std::string::npos) break;
    const size_t start = line.find_first_not_of(" \t", colon + 1);
    return start == std::string::npos ? "unknown" : line.substr(start);
  }
  return "unknown";
}

// Floats of the recipe as the decimal they were written as (0.3f, not 0.30000001192...).
double f2d(float v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.7g", v);
  return std::strtod(buf, nullptr);
}

// A measured value, or null when it was not measured (negative sentinel) or not finite.
json measured(double v) { return std::isfinite(v) && v >= 0 ? json(v) : json(nullptr); }
json finite_or_null(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

// Two-sided 95% quantile of Student's t with df degrees of freedom: exact table to 30, then
// the Cornish-Fisher expansion in 1/df (error < 1e-4 there).
double t_quantile_975(int df) {
  static const double table[30] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306,
                                   2.262,  2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120,
                                   2.110,  2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
                                   2.060,  2.056, 2.052, 2.048, 2.045, 2.042};
  if (df >= 1 && df <= 30) return table[df - 1];
  const double z = 1.959964, z3 = z * z * z, z5 = z3 * z * z;
  return z + (z3 + z) / (4.0 * df) + (5 * z5 + 16 * z3 + 3 * z) / (96.0 * df * df);
}

struct Stats {
  int n = 0;
  double mean = NAN, std = NAN, min = NAN, max = NAN, ci_low = NAN, ci_high = NAN;
};

// Sample statistics; std (n - 1 denominator) and the 95% t-interval of the mean need n >= 2.
Stats stats_of(const std::vector<double>& v) {
  Stats s;
  s.n = (int)v.size();
  if (s.n == 0) return s;
  double sum = 0;
  for (double x : v) sum += x;
  s.mean = sum / s.n;
  s.min = *std::min_element(v.begin(), v.end());
  s.max = *std::max_element(v.begin(), v.end());
  if (s.n >= 2) {
    double sq = 0;
    for (double x : v) sq += (x - s.mean) * (x - s.mean);
    s.std = std::sqrt(sq / (s.n - 1));
    const double half = t_quantile_975(s.n - 1) * s.std / std::sqrt((double)s.n);
    s.ci_low = s.mean - half;
    s.ci_high = s.mean + half;
  }
  return s;
}

json stats_json(const Stats& s, bool with_ci) {
  json j;
  j["n"] = s.n;
  j["mean"] = finite_or_null(s.mean);
  j["std"] = finite_or_null(s.std);
  j["min"] = finite_or_null(s.min);
  j["max"] = finite_or_null(s.max);
  if (with_ci) {
    j["ci95_low"] = finite_or_null(s.ci_low);
    j["ci95_high"] = finite_or_null(s.ci_high);
  }
  return j;
}

std::string pct(double v) {
  if (!std::isfinite(v) || v < 0) return "n/a";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f%%", 100.0 * v);
  return buf;
}

// Writes `text` to `path` atomically: a temporary file in the same directory, then rename.
// Throws std::runtime_error (after removing the temporary) on failure.
void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp." + std::to_string((long)getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (f) f << text;
    if (f) f.flush();
    if (!f) {
      f.close();
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write '" + tmp + "'");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int err = errno;
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot rename '" + tmp + "' to '" + path +
                             "': " + std::strerror(err));
  }
}

json epoch_json(const net::EpochLog& e) {
  json j;
  j["epoch"] = e.epoch;
  j["train_loss"] = finite_or_null(e.train_loss);
  j["train_acc"] = finite_or_null(e.train_acc);
  j["test_acc_tta"] = measured(e.test_acc_tta);
  j["lr"] = finite_or_null(e.lr);
  j["seconds"] = e.seconds;
  return j;
}

json run_json(const net::RunResult& r) {
  json j;
  j["seed"] = r.seed;
  j["warmup"] = r.warmup;
  json epochs = json::array();
  for (const auto& e : r.epochs) epochs.push_back(epoch_json(e));
  j["epochs"] = epochs;
  j["test_acc"] = measured(r.test_acc);
  j["test_acc_tta"] = measured(r.test_acc_tta);
  j["train_seconds"] = r.train_seconds;
  j["eval_seconds"] = r.eval_seconds;
  j["timed_total_seconds"] = r.timed_total_seconds;
  j["diverged"] = r.diverged;
  j["diverged_step"] = r.diverged ? json(r.diverged_step) : json(nullptr);
  return j;
}

int run_main(int argc, char** argv) {
  const std::string date = utc_now_iso8601();
  Options opt;
  try {
    opt = parse_args(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "speedrun: %s\nRun 'speedrun --help' for usage.\n", e.what());
    return kExitUsage;
  }
  if (opt.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (opt.version) {
    std::printf("%s\n", version_string().c_str());
    return 0;
  }

  // Device: the GPU engine needs both a CUDA build and a usable GPU.
  const cs::GpuInfo gpu = cs::detect_gpu();
#ifdef CS_HAVE_CUDA
  const bool cuda_built = true;
#else
  const bool cuda_built = false;
#endif
  const std::string no_gpu_reason =
      !cuda_built ? "this binary was built without CUDA"
                  : "no usable GPU (" + (gpu.reason.empty() ? "unknown" : gpu.reason) + ")";
  std::string device = opt.device;
  if (device == "cuda" && !(cuda_built && gpu.available)) {
    std::fprintf(stderr, "speedrun: --device cuda: %s\n", no_gpu_reason.c_str());
    return kExitDevice;
  }
  if (device == "auto") {
    device = cuda_built && gpu.available ? "cuda" : "cpu";
    if (device == "cpu")
      std::printf("device: cpu (auto: %s; the CPU reference engine is slow, meant for narrow "
                  "networks and small subsets)\n",
                  no_gpu_reason.c_str());
  }

  // Data (untimed, reported as data_read_seconds).
  data::Cifar10 cifar;
  double data_read_seconds = 0;
  try {
    const std::string dir = data::resolve_data_dir(opt.data_dir);
    const auto t0 = std::chrono::steady_clock::now();
    cifar = data::load(dir, opt.train_subset, opt.test_subset);
    data_read_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } catch (const data::DataError& e) {
    std::fprintf(stderr, "speedrun: %s\n", e.what());
    return kExitData;
  }

  net::TrainConfig cfg;
  cfg.recipe = opt.recipe;
  cfg.eval_every_epoch = opt.eval_every_epoch;
  const net::Recipe& r = cfg.recipe;
  const net::Widths widths = net::Widths::from_multiplier(r.width);
  std::unique_ptr<net::Trainer> trainer;
  if (device == "cuda") {
#ifdef CS_HAVE_CUDA
    trainer = net::make_gpu_trainer(cifar, cfg);
#endif
  } else {
    trainer = net::make_cpu_trainer(cifar, cfg);
  }
  if (!trainer) throw std::logic_error("no trainer for device " + device);
  net::SetupTimes setup = trainer->setup_times();
  setup.data_read_seconds = data_read_seconds;

  std::printf("%s | device %s: %s\n", version_string().c_str(), device.c_str(),
              trainer->device_name().c_str());
  std::printf("resnet9: width %g (channels %d/%d/%d/%d), batch %d, bn group %d, %d epochs, "
              "%d train / %d test images (%s), %d run(s) from seed %llu%s\n",
              r.width, widths.c0, widths.c1, widths.c2, widths.c3, r.batch, r.bn_group, r.epochs,
              cifar.train.size(), cifar.test.size(), cifar.dir.c_str(), opt.runs,
              (unsigned long long)opt.seed, opt.warmup ? " + warm-up" : "");
  std::printf("setup: data read %.2f s, upload/prepare %.2f s, init %.2f s (untimed)\n",
              setup.data_read_seconds, setup.upload_seconds, setup.init_seconds);
  const auto engine_info = trainer->engine_info();
  if (!engine_info.empty()) {
    std::printf("engine:");
    for (size_t i = 0; i < engine_info.size(); ++i)
      std::printf("%s %s=%s", i ? "," : "", engine_info[i].first.c_str(),
                  engine_info[i].second.c_str());
    std::printf("\n");
  }
  std::fflush(stdout);

  // Runs: an optional warm-up with the first seed, then seeds S, S+1, ...
  std::vector<net::RunResult> results;
  const int total = opt.runs + (opt.warmup ? 1 : 0);
  for (int k = 0; k < total; ++k) {
    const bool warm = opt.warmup && k == 0;
    const int index = opt.warmup ? k : k + 1;  // 1-based run number; 0 is the warm-up
    const uint64_t seed = opt.seed + (uint64_t)(warm ? 0 : index - 1);
    char label[64];
    if (warm)
      std::snprintf(label, sizeof label, "warm-up (seed %llu)", (unsigned long long)seed);
    else
      std::snprintf(label, sizeof label, "run %d/%d (seed %llu)", index, opt.runs,
                    (unsigned long long)seed);
    auto progress = [&](const net::EpochLog& e) {
      std::printf("%s  epoch %2d/%d  loss %.4f  train acc %s  lr %.3e  %.2f s", label, e.epoch,
                  r.epochs, e.train_loss, pct(e.train_acc).c_str(), e.lr, e.seconds);
      if (e.test_acc_tta >= 0) std::printf("  test acc (TTA) %s", pct(e.test_acc_tta).c_str());
      std::printf("\n");
      std::fflush(stdout);
    };
    net::RunResult res = trainer->run(seed, progress);
    res.warmup = warm;
    if (res.diverged)
      std::printf("%s: DIVERGED at step %ld (non-finite loss)\n", label, res.diverged_step);
    else
      std::printf("%s: test acc %s, TTA %s | timed %.2f s (train %.2f s + eval %.2f s)\n", label,
                  pct(res.test_acc).c_str(), pct(res.test_acc_tta).c_str(),
                  res.timed_total_seconds, res.train_seconds, res.eval_seconds);
    std::fflush(stdout);
    results.push_back(res);
  }

  // Summary over the counted (non-warm-up) runs; accuracy over the ones that finished.
  std::vector<double> acc_tta, acc, timed, train_s, eval_s;
  int counted = 0, diverged = 0, any_diverged = 0, at_target = 0;
  for (const auto& res : results) {
    any_diverged += res.diverged;
    if (res.warmup) continue;
    ++counted;
    if (res.diverged) {
      ++diverged;
      continue;
    }
    acc_tta.push_back(res.test_acc_tta);
    acc.push_back(res.test_acc);
    timed.push_back(res.timed_total_seconds);
    train_s.push_back(res.train_seconds);
    eval_s.push_back(res.eval_seconds);
    // Accuracies are k / n_test; the epsilon keeps exactly 94.00% from rounding below.
    at_target += res.test_acc_tta >= kTargetAcc - 1e-12;
  }
  const Stats s_tta = stats_of(acc_tta), s_acc = stats_of(acc), s_timed = stats_of(timed);
  const int finished = (int)acc_tta.size();
  std::printf("summary over %d run(s), %d diverged:\n", counted, diverged);
  if (finished > 0) {
    std::printf("  test acc (TTA):    mean %s  std %s  min %s  max %s\n", pct(s_tta.mean).c_str(),
                pct(s_tta.std).c_str(), pct(s_tta.min).c_str(), pct(s_tta.max).c_str());
    if (finished >= 2)
      std::printf("  95%% CI of the mean (Student t, %d df): [%s, %s]\n", finished - 1,
                  pct(s_tta.ci_low).c_str(), pct(s_tta.ci_high).c_str());
    std::printf("  runs >= 94%%: %d/%d (%.0f%%)\n", at_target, finished,
                100.0 * at_target / finished);
    std::printf("  test acc (no TTA): mean %s  std %s\n", pct(s_acc.mean).c_str(),
                pct(s_acc.std).c_str());
    char timed_std[32] = "n/a";
    if (std::isfinite(s_timed.std)) std::snprintf(timed_std, sizeof timed_std, "%.3f", s_timed.std);
    std::printf("  timed seconds:     mean %.3f  std %s  min %.3f  max %.3f\n", s_timed.mean,
                timed_std, s_timed.min, s_timed.max);
  }
  std::fflush(stdout);

  if (!opt.json_path.empty()) {
    json j;
    j["schema"] = "cifar-speedrun/v1";
    j["tool"] = "speedrun";
    j["version"] = CS_VERSION;
    j["git_commit"] = CS_GIT_COMMIT_FALLBACK;
    j["date"] = date;
    j["machine"] = {{"hostname", hostname()},
                    {"cpu", cpu_name()},
                    {"gpu", gpu.available ? json(gpu.name) : json(nullptr)}};
    j["device"] = device;
    j["device_name"] = trainer->device_name();
    json info = json::object();
    for (const auto& kv : engine_info) info[kv.first] = kv.second;
    j["engine_info"] = info;
    json c;
    c["recipe"] = "resnet9";
    c["epochs"] = r.epochs;
    c["width"] = f2d(r.width);
    c["channels"] = {widths.c0, widths.c1, widths.c2, widths.c3};
    c["batch"] = r.batch;
    c["bn_group"] = r.bn_group;
    c["steps_per_epoch"] = r.steps_per_epoch(cifar.train.size());
    c["train_subset"] = opt.train_subset > 0 ? json(opt.train_subset) : json(nullptr);
    c["test_subset"] = opt.test_subset > 0 ? json(opt.test_subset) : json(nullptr);
    c["train_images"] = cifar.train.size();
    c["test_images"] = cifar.test.size();
    c["runs"] = opt.runs;
    c["seed"] = opt.seed;
    c["warmup"] = opt.warmup;
    c["eval_every_epoch"] = opt.eval_every_epoch;
    c["data_dir"] = cifar.dir;
    c["normalize_mean"] = {f2d(r.mean[0]), f2d(r.mean[1]), f2d(r.mean[2])};
    c["normalize_std"] = {f2d(r.std_[0]), f2d(r.std_[1]), f2d(r.std_[2])};
    c["pad"] = r.pad;
    c["celu_alpha"] = f2d(r.celu_alpha);
    c["logit_scale"] = f2d(r.logit_scale);
    c["whiten_images"] = r.whiten_images;
    c["whiten_eps"] = f2d(r.whiten_eps);
    c["bn_eps"] = f2d(r.bn_eps);
    c["bn_momentum"] = f2d(r.bn_momentum);
    c["label_smoothing"] = f2d(r.label_smoothing);
    c["lr_knots"] = {f2d(r.lr_knots[0]), f2d(r.lr_knots[1]), f2d(r.lr_knots[2])};
    c["lr_values"] = {f2d(r.lr_values[0]), f2d(r.lr_values[1]), f2d(r.lr_values[2])};
    c["momentum"] = f2d(r.momentum);
    c["weight_decay"] = f2d(r.weight_decay);
    c["bn_bias_lr_mult"] = f2d(r.bn_bias_lr_mult);
    c["ema_every"] = r.ema_every;
    c["ema_rho"] = f2d(r.ema_rho);
    c["tta"] = r.tta;
    j["config"] = c;
    j["setup"] = {{"data_read_seconds", setup.data_read_seconds},
                  {"upload_seconds", setup.upload_seconds},
                  {"init_seconds", setup.init_seconds}};
    json runs = json::array();
    for (const auto& res : results) runs.push_back(run_json(res));
    j["runs"] = runs;
    json s;
    s["runs"] = counted;
    s["finished"] = finished;
    s["diverged"] = diverged;
    s["warmup_runs"] = opt.warmup ? 1 : 0;
    s["test_acc_tta"] = stats_json(s_tta, true);
    s["test_acc"] = stats_json(s_acc, true);
    s["ci95_method"] = "student-t";
    s["target_acc"] = kTargetAcc;
    s["runs_at_target"] = at_target;
    s["fraction_at_target"] = finished > 0 ? json((double)at_target / finished) : json(nullptr);
    s["timed_total_seconds"] = stats_json(s_timed, false);
    s["train_seconds"] = stats_json(stats_of(train_s), false);
    s["eval_seconds"] = stats_json(stats_of(eval_s), false);
    j["summary"] = s;
    try {
      write_atomically(opt.json_path, j.dump(2) + "\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "speedrun: --json: %s\n", e.what());
      return kExitError;
    }
    std::printf("wrote %s\n", opt.json_path.c_str());
  }
  return any_diverged ? kExitDiverged : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run_main(argc, argv);
  } catch (const data::DataError& e) {
    std::fprintf(stderr, "speedrun: %s\n", e.what());
    return kExitData;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "speedrun: error: %s\n", e.what());
    return kExitError;
  }
}
