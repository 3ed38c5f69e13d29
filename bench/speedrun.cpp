// speedrun: trains the resnet9 recipe (../shared/docs/recipes.md) on CIFAR-10 for one or more
// seeds, prints per-epoch progress and a summary, and optionally writes a JSON record
// (docs/json_schema.md) and a checkpoint of the last run's averaged model (--save,
// net/checkpoint.h). The GPU engine runs when there is one; the CPU reference engine otherwise
// (slow: meant for narrow networks and small subsets).
//   speedrun eval --load FILE      accuracy, per-class accuracy and confusion matrix of a
//                                  checkpoint on the test set (CPU reference engine)
//   speedrun predict --load FILE IMAGE.ppm...   class probabilities of 32x32 binary PPM images
//
// Exit codes: 0 success, 1 internal or I/O error, 2 usage error, 3 bad input (CIFAR-10 data,
// checkpoint or image), 4 a run diverged (non-finite loss), 5 the requested device is
// unavailable. Every message and what to do about it: docs/errors.md.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "engine/gpu_info.h"
#include "kernels/ref/augment.h"
#include "net/checkpoint.h"
#include "net/layout.h"
#include "net/recipe.h"
#include "net/resnet9_cpu.h"
#include "net/train.h"

namespace {

constexpr int kExitError = 1, kExitUsage = 2, kExitData = 3, kExitDiverged = 4, kExitDevice = 5;
constexpr double kTargetAcc = 0.94;  // the recipe's claim: mean TTA accuracy >= 94%
constexpr int kImage = 32;
constexpr long kPixels = (long)kImage * kImage * 3;
// Images per CPU evaluation forward, as in net/train_cpu.cpp (bounds the activation memory;
// BN uses running statistics, so the split does not change the result).
constexpr int kEvalBatch = 200;
const char* const kClassNames[net::kClasses] = {"airplane", "automobile", "bird", "cat", "deer",
                                                "dog",      "frog",       "horse", "ship", "truck"};

using json = nlohmann::ordered_json;

const char* const kUsage = R"(usage: speedrun [options]
       speedrun eval --load FILE [options]        (speedrun eval --help)
       speedrun predict --load FILE IMAGE.ppm...  (speedrun predict --help)

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
  --save FILE             after the runs, save the weight-averaged model of the last run as
                          a safetensors checkpoint (atomically)
  --eval-every-epoch      evaluate the averaged model after every epoch (untimed)
  --scale-schedule        stretch the lr schedule (knots at epochs 0, 2, 8 of the recipe's 10)
                          to --epochs, so a short run also warms up and decays (not the
                          benchmark recipe)
  --conv-kernels K        GPU convolutions: auto (default: per layer and pass the fastest of
                          cuDNN and our implicit-GEMM kernels that agree with cuDNN), cudnn
                          (cuDNN only), igemm (ours wherever they are eligible), or
                          auto-untested (as auto, also trying our kernels that have not yet
                          passed their GPU tests: for measuring a new kernel)
  --fused-pool            GPU: fuse conv + 2x2 max-pool (+ argmax, BN sums) for the pooled
                          layers (our kernels; off by default: slower while our convs are)
  --fused-stats           GPU: ghost-BN sums in the conv's epilogue for the other layers
                          (our kernels; off by default: slower while our convs are)
  --fused-bn-grad         GPU: each layer's BN-backward sums in the epilogue of the input
                          gradient that produces its output gradient (our kernels; off by
                          default: slower while our convs are)
  --fusions F             GPU: the three fusions above at once: none (default), all, or
                          auto (each kept only on the layers where, timed at setup, the
                          fused conv and the BN stage after it beat the unfused pair); not
                          with the --fused-* flags
  --bn-kernels K          GPU ghost-BN + CELU kernels: vector (default; 8 channels per thread,
                          16-byte accesses) or pair (the older 2-channel kernels)
  --warmup                do one extra run first (seed S), reported but left out of the
                          summary
  --help                  print this help and exit
  --version               print the version and exit

Values may also be given as --flag=value.
exit codes: 0 ok, 1 internal/I-O error, 2 usage error, 3 bad input (data, checkpoint,
            image), 4 a run diverged, 5 the requested device is unavailable
Every error message and what to do: docs/errors.md.
)";

const char* const kEvalUsage = R"(usage: speedrun eval --load FILE [options]

Evaluates a checkpoint (speedrun --save) on the CIFAR-10 test set with the CPU reference
engine: accuracy, per-class accuracy and the 10x10 confusion matrix (rows: true class,
columns: predicted class). The CPU engine is slow at full width: use --test-subset.

options:
  --load FILE        the checkpoint (.safetensors) to evaluate (required)
  --data DIR         CIFAR-10 directory, as for training (default $CIFAR10_DIR, else
                     ~/.cache/cifar-speedrun)
  --test-subset M    evaluate on the first M test images, 1..10000 (default all)
  --tta, --no-tta    with or without mirror test-time augmentation (default: as the
                     checkpoint's recipe, which is on)
  --json FILE        write the result as JSON (docs/json_schema.md), atomically
  --help             print this help and exit

exit codes: 0 ok, 1 internal/I-O error, 2 usage error, 3 bad data or checkpoint
)";

const char* const kPredictUsage = R"(usage: speedrun predict --load FILE [options] IMAGE.ppm...

Classifies 32x32 RGB images with a checkpoint (speedrun --save) on the CPU reference engine.
Images must be binary PPM (P6), 32x32 pixels, maxval 255; convert others first, e.g.
with ImageMagick: convert in.png -resize '32x32!' out.ppm. Prints per image the top class
and the probabilities (softmax of the logits) of the ten classes: airplane automobile bird
cat deer dog frog horse ship truck.

options:
  --load FILE        the checkpoint (.safetensors) (required)
  --tta, --no-tta    average the logits of the image and its mirror or not (default: as the
                     checkpoint's recipe, which is on)
  --help             print this help and exit

exit codes: 0 ok, 1 internal/I-O error, 2 usage error, 3 bad checkpoint or image
)";

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A bad input image (exit 3, like a data error or a bad checkpoint).
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string device = "auto";
  std::string conv_kernels = "auto";  // --conv-kernels (GPU engine)
  bool fused_pool = false;            // --fused-pool (GPU engine)
  bool scale_schedule = false;        // --scale-schedule
  bool fused_stats = false;           // --fused-stats (GPU engine)
  bool fused_bn_grad = false;         // --fused-bn-grad (GPU engine)
  bool fused_auto = false;            // --fusions auto (GPU engine)
  std::string fusions;                // --fusions: none, all or auto; "" when not given
  std::string bn_kernels = "vector";  // --bn-kernels (GPU engine)
  net::Recipe recipe;
  int train_subset = -1, test_subset = -1;  // -1: the whole split
  uint64_t seed = 0;
  int runs = 1;
  std::string data_dir, json_path, save_path;
  bool eval_every_epoch = false, warmup = false, help = false, version = false;
};

// Walks argv from `first`: "--flag", "--flag value" and "--flag=value"; anything not starting
// with "--" is a positional argument.
class ArgReader {
 public:
  ArgReader(int argc, char** argv, int first) : argc_(argc), argv_(argv), i_(first - 1) {}
  // Advances to the next argument; false at the end.
  bool next() {
    if (++i_ >= argc_) return false;
    arg_ = argv_[i_];
    value_.clear();
    inline_value_ = false;
    if (!is_flag()) return true;
    const size_t eq = arg_.find('=');
    if (eq != std::string::npos) {
      value_ = arg_.substr(eq + 1);
      arg_ = arg_.substr(0, eq);
      inline_value_ = true;
    }
    return true;
  }
  bool is_flag() const { return arg_.rfind("--", 0) == 0; }
  const std::string& arg() const { return arg_; }  // the flag (without =value) or positional
  // A flag without a value: refuses --flag=value.
  bool flag_only() const {
    if (inline_value_) throw UsageError(arg_ + ": takes no value");
    return true;
  }
  // The flag's value: after '=' or the next argument.
  std::string value() {
    if (inline_value_) return value_;
    if (i_ + 1 >= argc_) throw UsageError(arg_ + ": missing value");
    return argv_[++i_];
  }
  // A non-empty value naming a file or folder.
  std::string path_value(const char* what) {
    std::string v = value();
    if (v.empty()) throw UsageError(arg_ + ": empty " + what);
    return v;
  }

 private:
  int argc_;
  char** argv_;
  int i_;
  std::string arg_, value_;
  bool inline_value_ = false;
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

// An output file (--json, --save): its folder must exist and the path must not be a folder.
// Checked with probe_writable() before any data is read, so a bad path costs no training.
void check_output_path(const std::string& flag, const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path parent = fs::path(path).parent_path();
  std::error_code ec;
  if (!parent.empty() && !fs::is_directory(parent, ec))
    throw UsageError(flag + ": directory '" + parent.string() + "' does not exist");
  if (fs::is_directory(path, ec)) throw UsageError(flag + ": '" + path + "' is a directory");
}

// Creates and removes the temporary file the atomic write will use, so that a folder we cannot
// write to fails now rather than after training.
void probe_writable(const std::string& flag, const std::string& path) {
  const std::string tmp = path + ".tmp." + std::to_string((long)getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) {
    const std::string dir = std::filesystem::path(path).parent_path().string();
    throw UsageError(flag + ": cannot create a file in '" + (dir.empty() ? "." : dir) + "' (" +
                     std::strerror(errno) + ")");
  }
  ::close(fd);
  std::remove(tmp.c_str());
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_train_subset = false;
  for (ArgReader a(argc, argv, 1); a.next();) {
    const std::string& arg = a.arg();
    if (!a.is_flag()) throw UsageError("unexpected argument '" + arg + "'");
    if (arg == "--help") {
      o.help = a.flag_only();
    } else if (arg == "--version") {
      o.version = a.flag_only();
    } else if (arg == "--eval-every-epoch") {
      o.eval_every_epoch = a.flag_only();
    } else if (arg == "--warmup") {
      o.warmup = a.flag_only();
    } else if (arg == "--scale-schedule") {
      o.scale_schedule = a.flag_only();
    } else if (arg == "--fused-pool") {
      o.fused_pool = a.flag_only();
    } else if (arg == "--fused-stats") {
      o.fused_stats = a.flag_only();
    } else if (arg == "--fused-bn-grad") {
      o.fused_bn_grad = a.flag_only();
    } else if (arg == "--fusions") {
      o.fusions = a.value();
      if (o.fusions != "none" && o.fusions != "all" && o.fusions != "auto")
        throw UsageError("--fusions: expected none, all or auto, got '" + o.fusions + "'");
    } else if (arg == "--bn-kernels") {
      o.bn_kernels = a.value();
      if (o.bn_kernels != "vector" && o.bn_kernels != "pair")
        throw UsageError("--bn-kernels: expected vector or pair, got '" + o.bn_kernels + "'");
    } else if (arg == "--conv-kernels") {
      o.conv_kernels = a.value();
      if (o.conv_kernels != "auto" && o.conv_kernels != "cudnn" && o.conv_kernels != "igemm" &&
          o.conv_kernels != "auto-untested")
        throw UsageError("--conv-kernels: expected auto, cudnn, igemm or auto-untested, got '" + o.conv_kernels +
                         "'");
    } else if (arg == "--device") {
      o.device = a.value();
      if (o.device != "cpu" && o.device != "cuda" && o.device != "auto")
        throw UsageError("--device: expected cpu, cuda or auto, got '" + o.device + "'");
    } else if (arg == "--epochs") {
      o.recipe.epochs = (int)parse_int(arg, a.value(), 1, 1000);
    } else if (arg == "--width") {
      o.recipe.width = (float)parse_float(arg, a.value(), 0.0, 16.0);
    } else if (arg == "--batch") {
      o.recipe.batch = (int)parse_int(arg, a.value(), 1, data::kTrainImages);
    } else if (arg == "--bn-group") {
      o.recipe.bn_group = (int)parse_int(arg, a.value(), 1, data::kTrainImages);
    } else if (arg == "--train-subset") {
      o.train_subset = (int)parse_int(arg, a.value(), 1, data::kTrainImages);
      have_train_subset = true;
    } else if (arg == "--test-subset") {
      o.test_subset = (int)parse_int(arg, a.value(), 1, data::kTestImages);
    } else if (arg == "--seed") {
      o.seed = parse_u64(arg, a.value());
    } else if (arg == "--runs") {
      o.runs = (int)parse_int(arg, a.value(), 1, 100000);
    } else if (arg == "--data") {
      o.data_dir = a.path_value("directory name");
    } else if (arg == "--json") {
      o.json_path = a.path_value("file name");
    } else if (arg == "--save") {
      o.save_path = a.path_value("file name");
    } else {
      throw UsageError("unknown flag '" + arg + "'");
    }
  }
  if (o.help || o.version) return o;
  if (!o.fusions.empty()) {
    if (o.fused_pool || o.fused_stats || o.fused_bn_grad)
      throw UsageError("--fusions: not with --fused-pool, --fused-stats or --fused-bn-grad (give one or the other)");
    o.fused_pool = o.fused_stats = o.fused_bn_grad = o.fusions != "none";
    o.fused_auto = o.fusions == "auto";
  }
  if (o.scale_schedule) {
    // The recipe's knots are epochs of its own length (Recipe{}.epochs); stretch them to --epochs.
    const float stretch = (float)o.recipe.epochs / (float)net::Recipe{}.epochs;
    for (float& k : o.recipe.lr_knots) k *= stretch;
  }
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
    check_output_path("--json", o.json_path);
    probe_writable("--json", o.json_path);
  }
  if (!o.save_path.empty()) {
    check_output_path("--save", o.save_path);
    if (!o.json_path.empty() &&
        std::filesystem::absolute(o.json_path) == std::filesystem::absolute(o.save_path))
      throw UsageError("--save: the same file as --json");
    probe_writable("--save", o.save_path);
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

// speedrun [options]: training. Usage, data and I/O errors propagate to main().
int train_main(int argc, char** argv) {
  const std::string date = utc_now_iso8601();
  const Options opt = parse_args(argc, argv);
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
  cfg.conv_kernels = opt.conv_kernels;
  cfg.fused_pool = opt.fused_pool;
  cfg.fused_stats = opt.fused_stats;
  cfg.fused_bn_grad = opt.fused_bn_grad;
  cfg.fused_auto = opt.fused_auto;
  cfg.bn_vectorized = opt.bn_kernels == "vector";
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
  if (!opt.save_path.empty() && !trainer->can_export_ema()) {
    std::fprintf(stderr,
                 "speedrun: --save is not supported with --device %s yet (the %s engine cannot "
                 "export its model); train with --device cpu to save a checkpoint\n",
                 device.c_str(), device.c_str());
    return kExitUsage;
  }
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

  // The checkpoint: the averaged model of the last run (warm-up included when it is the only one).
  std::string saved;
  int exit_code = any_diverged ? kExitDiverged : 0;
  if (!opt.save_path.empty()) {
    if (results.back().diverged) {
      std::fprintf(stderr, "speedrun: --save: the last run diverged; no checkpoint written\n");
    } else {
      try {
        net::save_checkpoint(opt.save_path, trainer->export_ema(), CS_GIT_COMMIT_FALLBACK);
        saved = opt.save_path;
        std::printf("saved the averaged model of the last run to %s\n", saved.c_str());
      } catch (const net::CheckpointError& e) {
        std::fprintf(stderr, "speedrun: --save: %s\n", e.what());
        exit_code = kExitError;
      }
    }
  }

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
    c["conv_kernels"] = opt.conv_kernels;
    c["fused_pool"] = opt.fused_pool;
    c["fused_stats"] = opt.fused_stats;
    c["fused_bn_grad"] = opt.fused_bn_grad;
    c["fused_auto"] = opt.fused_auto;
    c["bn_kernels"] = opt.bn_kernels;
    c["scale_schedule"] = opt.scale_schedule;
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
    j["checkpoint"] = saved.empty() ? json(nullptr) : json(saved);
    try {
      net::write_file_atomically(opt.json_path, j.dump(2) + "\n");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "speedrun: --json: %s\n", e.what());
      return kExitError;
    }
    std::printf("wrote %s\n", opt.json_path.c_str());
  }
  return exit_code;
}

// ---------------------------------------------------------------- eval and predict

// --tta / --no-tta: -1 when neither is given (the checkpoint's recipe decides).
void set_tta(ArgReader& a, int& tta) {
  a.flag_only();
  const int v = a.arg() == "--tta" ? 1 : 0;
  if (tta >= 0 && tta != v) throw UsageError(a.arg() + ": contradicts an earlier --tta/--no-tta");
  tta = v;
}

// Logits [n][10] of n normalised images x [n][32][32][3], in batches of kEvalBatch.
std::vector<float> eval_logits(net::Resnet9Cpu& model, const float* x, int n, bool tta) {
  std::vector<float> logits((size_t)n * net::kClasses);
  for (int i0 = 0; i0 < n; i0 += kEvalBatch) {
    const int b = std::min(kEvalBatch, n - i0);
    model.forward_eval(x + (size_t)i0 * kPixels, b, logits.data() + (size_t)i0 * net::kClasses,
                       tta);
  }
  return logits;
}

int argmax10(const float* z) {
  int best = 0;
  for (int k = 1; k < net::kClasses; ++k)
    if (z[k] > z[best]) best = k;  // first index on ties, like the trainer's evaluation
  return best;
}

// A metadata entry the loader does not require (git_commit), or "unknown".
std::string meta_or_unknown(const std::map<std::string, std::string>& meta, const char* key) {
  const auto it = meta.find(key);
  return it == meta.end() ? "unknown" : it->second;
}

std::string checkpoint_summary(const std::string& path, const net::ModelState& m,
                               const std::map<std::string, std::string>& meta) {
  const net::Widths w = net::Widths::from_multiplier(m.recipe.width);
  char buf[160];
  std::snprintf(buf, sizeof buf, " (resnet9, width %g, channels %d/%d/%d/%d, commit %s)",
                m.recipe.width, w.c0, w.c1, w.c2, w.c3,
                meta_or_unknown(meta, "git_commit").c_str());
  return path + buf;
}

struct EvalOptions {
  std::string load, data_dir, json_path;
  int test_subset = -1;  // -1: all
  int tta = -1;          // -1: the checkpoint's recipe
  bool help = false;
};

EvalOptions parse_eval_args(int argc, char** argv) {
  EvalOptions o;
  for (ArgReader a(argc, argv, 2); a.next();) {
    const std::string& arg = a.arg();
    if (!a.is_flag()) throw UsageError("unexpected argument '" + arg + "'");
    if (arg == "--help") {
      o.help = a.flag_only();
    } else if (arg == "--load") {
      o.load = a.path_value("file name");
    } else if (arg == "--data") {
      o.data_dir = a.path_value("directory name");
    } else if (arg == "--test-subset") {
      o.test_subset = (int)parse_int(arg, a.value(), 1, data::kTestImages);
    } else if (arg == "--tta" || arg == "--no-tta") {
      set_tta(a, o.tta);
    } else if (arg == "--json") {
      o.json_path = a.path_value("file name");
    } else {
      throw UsageError("unknown flag '" + arg + "'");
    }
  }
  if (o.help) return o;
  if (o.load.empty()) throw UsageError("--load: missing; give the checkpoint to evaluate");
  if (!o.json_path.empty()) {
    check_output_path("--json", o.json_path);
    probe_writable("--json", o.json_path);
  }
  return o;
}

// speedrun eval: accuracy, per-class accuracy and confusion matrix of a checkpoint.
int eval_main(int argc, char** argv) {
  const std::string date = utc_now_iso8601();
  const EvalOptions opt = parse_eval_args(argc, argv);
  if (opt.help) {
    std::fputs(kEvalUsage, stdout);
    return 0;
  }
  std::map<std::string, std::string> meta;
  const net::ModelState state = net::load_checkpoint(opt.load, &meta);
  const net::Recipe& r = state.recipe;
  const bool tta = opt.tta < 0 ? r.tta : opt.tta == 1;
  const data::Cifar10 cifar = data::load(data::resolve_data_dir(opt.data_dir), 0, opt.test_subset);
  const int n = cifar.test.size();
  std::printf("%s | checkpoint %s\n", version_string().c_str(),
              checkpoint_summary(opt.load, state, meta).c_str());
  std::printf("test set: %d images from %s, mirror TTA %s, CPU reference engine\n", n,
              cifar.dir.c_str(), tta ? "on" : "off");
  std::fflush(stdout);

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float> x((size_t)n * kPixels);
  ref::normalize_cifar(cifar.test.images.data(), n, r.mean, r.std_, x.data());
  std::unique_ptr<net::Resnet9Cpu> model = net::make_cpu_model(state);
  const std::vector<float> logits = eval_logits(*model, x.data(), n, tta);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  long confusion[net::kClasses][net::kClasses] = {};  // [true][predicted]
  long correct = 0;
  for (int i = 0; i < n; ++i) {
    const int label = cifar.test.labels[i];
    const int pred = argmax10(logits.data() + (size_t)i * net::kClasses);
    ++confusion[label][pred];
    correct += pred == label;
  }
  const double accuracy = (double)correct / n;
  std::printf("accuracy: %s (%ld/%d) in %.2f s\n", pct(accuracy).c_str(), correct, n, seconds);
  std::printf("per-class accuracy:\n");
  long class_images[net::kClasses] = {};
  for (int c = 0; c < net::kClasses; ++c) {
    for (int p = 0; p < net::kClasses; ++p) class_images[c] += confusion[c][p];
    const double acc =
        class_images[c] > 0 ? (double)confusion[c][c] / class_images[c] : -1.0;
    std::printf("  %-10s %8s  (%ld/%ld)\n", kClassNames[c], pct(acc).c_str(), confusion[c][c],
                class_images[c]);
  }
  std::printf("confusion matrix (rows: true class, columns: predicted class):\n%-12s", "");
  for (int p = 0; p < net::kClasses; ++p)
    std::printf(" %6.5s", kClassNames[p]);
  std::printf("\n");
  for (int c = 0; c < net::kClasses; ++c) {
    std::printf("  %-10s", kClassNames[c]);
    for (int p = 0; p < net::kClasses; ++p) std::printf(" %6ld", confusion[c][p]);
    std::printf("\n");
  }
  std::fflush(stdout);

  if (!opt.json_path.empty()) {
    const net::Widths w = net::Widths::from_multiplier(r.width);
    json j;
    j["schema"] = "cifar-speedrun-eval/v1";
    j["tool"] = "speedrun eval";
    j["version"] = CS_VERSION;
    j["git_commit"] = CS_GIT_COMMIT_FALLBACK;
    j["date"] = date;
    j["machine"] = {{"hostname", hostname()}, {"cpu", cpu_name()}};
    j["checkpoint"] = {{"path", opt.load},
                       {"format_version", meta.at("format_version")},
                       {"git_commit", meta_or_unknown(meta, "git_commit")},
                       {"data_sha256", meta.at("data_sha256")},
                       {"width", f2d(r.width)},
                       {"channels", {w.c0, w.c1, w.c2, w.c3}}};
    j["config"] = {{"data_dir", cifar.dir},
                   {"test_subset", opt.test_subset > 0 ? json(opt.test_subset) : json(nullptr)},
                   {"test_images", n},
                   {"tta", tta}};
    j["accuracy"] = accuracy;
    j["correct"] = correct;
    json classes = json::array(), per_class = json::array(), matrix = json::array();
    for (int c = 0; c < net::kClasses; ++c) {
      classes.push_back(kClassNames[c]);
      per_class.push_back(
          {{"class", kClassNames[c]},
           {"images", class_images[c]},
           {"correct", confusion[c][c]},
           {"accuracy", class_images[c] > 0 ? json((double)confusion[c][c] / class_images[c])
                                            : json(nullptr)}});
      json row = json::array();
      for (int p = 0; p < net::kClasses; ++p) row.push_back(confusion[c][p]);
      matrix.push_back(row);
    }
    j["classes"] = classes;
    j["per_class"] = per_class;
    j["confusion"] = matrix;
    j["eval_seconds"] = seconds;
    net::write_file_atomically(opt.json_path, j.dump(2) + "\n");
    std::printf("wrote %s\n", opt.json_path.c_str());
  }
  return 0;
}

// Reads a binary PPM (P6) of 32x32 pixels with maxval 255 into the CIFAR-10 layout [3][32][32]
// (R plane, G plane, B plane), so it is normalised exactly like the data set. Comments ('#' to
// the end of the line) may appear between the header fields. Throws InputError.
std::vector<uint8_t> read_ppm32(const std::string& path) {
  auto fail = [&path](const std::string& problem, const std::string& todo) {
    throw InputError("image " + path + ": " + problem + ". " + todo + ".");
  };
  const char* kConvert =
      "Convert it to a 32x32 binary PPM, e.g. with ImageMagick: convert IN -resize '32x32!' "
      "OUT.ppm";
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec))
    fail(std::filesystem::exists(path, ec) ? "not a regular file" : "file not found",
         "Check the image path");
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(std::string("cannot open it (") + std::strerror(errno) + ")", "Check permissions");
  std::ostringstream ss;
  ss << f.rdbuf();
  const std::string b = ss.str();
  if (b.size() < 2 || b[0] != 'P' || b[1] != '6') {
    std::string kind = "not a binary PPM (P6) image";
    if (b.size() >= 2 && b[0] == 'P' && b[1] == '3') kind = "an ASCII PPM (P3), not binary (P6)";
    if (b.size() >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '2'))
      kind = "a grey-scale PGM, not a colour PPM (P6)";
    if (b.size() >= 4 && b.compare(1, 3, "PNG") == 0) kind = "a PNG, not a binary PPM (P6)";
    fail("is " + kind, kConvert);
  }
  size_t pos = 2;
  // One header number: whitespace and comments before it, at least one separator before it.
  auto number = [&](const char* field) -> long {
    bool separated = false;
    while (pos < b.size()) {
      if (std::isspace((unsigned char)b[pos])) {
        ++pos;
        separated = true;
      } else if (b[pos] == '#') {
        while (pos < b.size() && b[pos] != '\n' && b[pos] != '\r') ++pos;
        separated = true;
      } else {
        break;
      }
    }
    long v = 0;
    const size_t start = pos;
    while (pos < b.size() && std::isdigit((unsigned char)b[pos]) && v < 100000000)
      v = v * 10 + (b[pos++] - '0');
    if (!separated || pos == start || (pos < b.size() && std::isdigit((unsigned char)b[pos])))
      fail(std::string("bad PPM header: no valid ") + field, kConvert);
    return v;
  };
  const long width = number("width"), height = number("height"), maxval = number("maxval");
  if (width != kImage || height != kImage)
    fail("is " + std::to_string(width) + "x" + std::to_string(height) +
             " pixels, but the model reads 32x32 images",
         kConvert);
  if (maxval != 255)
    fail("has maxval " + std::to_string(maxval) + ", but only 8-bit PPM (maxval 255) is read",
         kConvert);
  // Exactly one whitespace byte separates maxval from the pixels.
  if (pos >= b.size() || !std::isspace((unsigned char)b[pos]))
    fail("bad PPM header: no whitespace after maxval", kConvert);
  ++pos;
  const size_t have = b.size() - pos;
  if (have != (size_t)kPixels)
    fail("has " + std::to_string(have) + " bytes of pixel data, expected " +
             std::to_string(kPixels) + " (32x32 RGB)" +
             (have < (size_t)kPixels ? ": truncated" : ": extra bytes after the image"),
         kConvert);
  std::vector<uint8_t> planes(kPixels);
  const int hw = kImage * kImage;
  for (int p = 0; p < hw; ++p)
    for (int c = 0; c < 3; ++c) planes[(size_t)c * hw + p] = (uint8_t)b[pos + 3 * p + c];
  return planes;
}

struct PredictOptions {
  std::string load;
  int tta = -1;  // -1: the checkpoint's recipe
  std::vector<std::string> images;
  bool help = false;
};

PredictOptions parse_predict_args(int argc, char** argv) {
  PredictOptions o;
  for (ArgReader a(argc, argv, 2); a.next();) {
    const std::string& arg = a.arg();
    if (!a.is_flag()) {
      o.images.push_back(arg);
    } else if (arg == "--help") {
      o.help = a.flag_only();
    } else if (arg == "--load") {
      o.load = a.path_value("file name");
    } else if (arg == "--tta" || arg == "--no-tta") {
      set_tta(a, o.tta);
    } else {
      throw UsageError("unknown flag '" + arg + "'");
    }
  }
  if (o.help) return o;
  if (o.load.empty()) throw UsageError("--load: missing; give the checkpoint to predict with");
  if (o.images.empty()) throw UsageError("no images given (IMAGE.ppm...)");
  return o;
}

// speedrun predict: top class and class probabilities of each image.
int predict_main(int argc, char** argv) {
  const PredictOptions opt = parse_predict_args(argc, argv);
  if (opt.help) {
    std::fputs(kPredictUsage, stdout);
    return 0;
  }
  std::map<std::string, std::string> meta;
  const net::ModelState state = net::load_checkpoint(opt.load, &meta);
  const net::Recipe& r = state.recipe;
  const bool tta = opt.tta < 0 ? r.tta : opt.tta == 1;
  // Every image is read (and checked) before any is classified.
  const int n = (int)opt.images.size();
  std::vector<uint8_t> planes;
  planes.reserve((size_t)n * kPixels);
  for (const std::string& path : opt.images) {
    const std::vector<uint8_t> p = read_ppm32(path);
    planes.insert(planes.end(), p.begin(), p.end());
  }
  std::vector<float> x((size_t)n * kPixels);
  ref::normalize_cifar(planes.data(), n, r.mean, r.std_, x.data());
  std::unique_ptr<net::Resnet9Cpu> model = net::make_cpu_model(state);
  const std::vector<float> logits = eval_logits(*model, x.data(), n, tta);

  std::printf("checkpoint %s, mirror TTA %s\n", checkpoint_summary(opt.load, state, meta).c_str(),
              tta ? "on" : "off");
  for (int i = 0; i < n; ++i) {
    // Softmax in double, shifted by the largest logit.
    const float* z = logits.data() + (size_t)i * net::kClasses;
    const int top = argmax10(z);
    double prob[net::kClasses], sum = 0;
    for (int k = 0; k < net::kClasses; ++k) sum += prob[k] = std::exp((double)z[k] - z[top]);
    for (double& v : prob) v /= sum;
    std::printf("%s: %s (%.4f)\n ", opt.images[i].c_str(), kClassNames[top], prob[top]);
    for (int k = 0; k < net::kClasses; ++k) std::printf(" %s %.4f", kClassNames[k], prob[k]);
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  // Subcommands: speedrun eval ..., speedrun predict ...; anything else trains.
  std::string prog = "speedrun";
  int (*entry)(int, char**) = train_main;
  if (argc >= 2 && std::strcmp(argv[1], "eval") == 0) {
    prog = "speedrun eval";
    entry = eval_main;
  } else if (argc >= 2 && std::strcmp(argv[1], "predict") == 0) {
    prog = "speedrun predict";
    entry = predict_main;
  }
  try {
    return entry(argc, argv);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "%s: %s\nRun '%s --help' for usage.\n", prog.c_str(), e.what(),
                 prog.c_str());
    return kExitUsage;
  } catch (const data::DataError& e) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), e.what());
    return kExitData;
  } catch (const net::CheckpointError& e) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), e.what());
    return kExitData;
  } catch (const InputError& e) {
    std::fprintf(stderr, "%s: %s\n", prog.c_str(), e.what());
    return kExitData;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: error: %s\n", prog.c_str(), e.what());
    return kExitError;
  }
}
