// CIFAR-10 reader: synthetic batch files in a temp folder (round trip, every error, limits,
// folder resolution), then the real subsets from ../shared/cifar10 when present.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "data/cifar10.h"
#include "tests/support.h"

namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    long stamp = (long)std::chrono::steady_clock::now().time_since_epoch().count();
    path = fs::temp_directory_path() / ("cs_cifar10_test_" + std::to_string(getpid()) + "_" +
                                        std::to_string(counter++) + "_" + std::to_string(stamp));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path, ec);
  }
};

// Sets (or, with nullopt, unsets) an environment variable, and restores it at scope exit.
struct EnvGuard {
  std::string name;
  std::optional<std::string> old;
  EnvGuard(const char* n, std::optional<std::string> value) : name(n) {
    if (const char* v = std::getenv(n)) old = v;
    if (value) setenv(n, value->c_str(), 1);
    else unsetenv(n);
  }
  ~EnvGuard() {
    if (old) setenv(name.c_str(), old->c_str(), 1);
    else unsetenv(name.c_str());
  }
};

// Deterministic contents, distinct per file (seed) and record, so a mixed-up record order or
// an off-by-one in the label/pixel split shows up.
uint8_t synth_label(int seed, long r) { return (uint8_t)((r * 7 + seed * 3) % 10); }
uint8_t synth_pixel(int seed, long r, int j) {
  return (uint8_t)((r * 131 + j * 17 + seed * 59) & 255);
}

std::vector<uint8_t> synth_records(int seed, long n) {
  std::vector<uint8_t> b((size_t)(n * data::kRecordBytes));
  for (long r = 0; r < n; r++) {
    b[(size_t)(r * data::kRecordBytes)] = synth_label(seed, r);
    for (int j = 0; j < data::kImageBytes; j++)
      b[(size_t)(r * data::kRecordBytes + 1 + j)] = synth_pixel(seed, r, j);
  }
  return b;
}

void write_file(const fs::path& p, const std::vector<uint8_t>& bytes) {
  std::ofstream f(p, std::ios::binary);
  f.write((const char*)bytes.data(), (std::streamsize)bytes.size());
  REQUIRE(f.good());
}

// Writes bytes, then zero-pads the file to a full batch (10,000 records): zero records are
// valid (label 0), and the padding costs no time to generate or check.
void write_padded_batch(const fs::path& p, const std::vector<uint8_t>& bytes) {
  write_file(p, bytes);
  fs::resize_file(p, (uintmax_t)data::kBatchFileBytes);
}

// Checks records [0, n) of s against seed's records starting at `first`, of which the first
// `content` were written and the rest are zero padding.
bool matches(const data::Split& s, int seed, long first, long n, long content = 1L << 40) {
  if ((long)s.labels.size() != n || (long)s.images.size() != n * data::kImageBytes) return false;
  for (long r = 0; r < n; r++) {
    bool real = first + r < content;
    if (s.labels[(size_t)r] != (real ? synth_label(seed, first + r) : 0)) return false;
    for (int j = 0; j < data::kImageBytes; j++)
      if (s.images[(size_t)(r * data::kImageBytes + j)] !=
          (real ? synth_pixel(seed, first + r, j) : 0))
        return false;
  }
  return true;
}

// Runs f, which must throw DataError; returns its message.
template <class F>
std::string data_error_of(F f) {
  try {
    f();
  } catch (const data::DataError& e) {
    return e.what();
  }
  FAIL("expected a data::DataError");
  return "";
}

}  // namespace

TEST_CASE("read_batch_file round-trips labels and pixels", "[data]") {
  TempDir tmp;
  fs::path file = tmp.path / "data_batch_1.bin";
  write_file(file, synth_records(1, data::kRecordsPerFile));

  data::Split all = data::read_batch_file(file.string());
  CHECK(all.size() == data::kRecordsPerFile);
  CHECK(matches(all, 1, 0, data::kRecordsPerFile));

  // A limit reads the first records only; limits past the end read the whole file.
  data::Split first = data::read_batch_file(file.string(), 123);
  CHECK(matches(first, 1, 0, 123));
  CHECK(data::read_batch_file(file.string(), 0).size() == 0);
  CHECK(data::read_batch_file(file.string(), 20000).size() == data::kRecordsPerFile);
}

TEST_CASE("read_batch_file reports every bad input with the file and the problem", "[data]") {
  TempDir tmp;
  using Catch::Matchers::Contains;

  SECTION("missing directory") {
    std::string path = (tmp.path / "nowhere" / "data_batch_1.bin").string();
    std::string msg = data_error_of([&] { data::read_batch_file(path); });
    CHECK_THAT(msg, Contains(path));
    CHECK_THAT(msg, Contains("does not exist"));
    CHECK_THAT(msg, Contains("tools/get_cifar10.sh"));
  }
  SECTION("missing file") {
    std::string path = (tmp.path / "data_batch_1.bin").string();
    std::string msg = data_error_of([&] { data::read_batch_file(path); });
    CHECK_THAT(msg, Contains(path));
    CHECK_THAT(msg, Contains("not found"));
  }
  SECTION("unreadable: a folder where the file should be") {
    fs::path path = tmp.path / "data_batch_1.bin";
    fs::create_directory(path);
    std::string msg = data_error_of([&] { data::read_batch_file(path.string()); });
    CHECK_THAT(msg, Contains(path.string()));
    CHECK_THAT(msg, Contains("unreadable"));
  }
  SECTION("unreadable: no read permission") {
    // root reads files whatever their mode, so this case can only be shown as another user.
    if (geteuid() != 0) {
      fs::path path = tmp.path / "data_batch_1.bin";
      write_file(path, synth_records(1, data::kRecordsPerFile));
      fs::permissions(path, fs::perms::none);
      std::string msg = data_error_of([&] { data::read_batch_file(path.string()); });
      CHECK_THAT(msg, Contains(path.string()));
      CHECK_THAT(msg, Contains("unreadable"));
      CHECK_THAT(msg, Contains("ermission"));
    }
  }
  SECTION("truncated file") {
    fs::path path = tmp.path / "data_batch_2.bin";
    write_padded_batch(path, synth_records(2, 10));
    fs::resize_file(path, (uintmax_t)data::kBatchFileBytes - 1000);
    std::string msg = data_error_of([&] { data::read_batch_file(path.string()); });
    CHECK_THAT(msg, Contains(path.string()));
    CHECK_THAT(msg, Contains("30,729,000"));  // found
    CHECK_THAT(msg, Contains("30,730,000"));  // expected
    // The size check applies to the whole file even when only a few records are wanted.
    CHECK_THROWS_AS(data::read_batch_file(path.string(), 5), data::DataError);
  }
  SECTION("CIFAR-100-sized records") {
    fs::path path = tmp.path / "test_batch.bin";
    write_file(path, std::vector<uint8_t>((size_t)data::kRecordsPerFile * 3074, 0));
    std::string msg = data_error_of([&] { data::read_batch_file(path.string()); });
    CHECK_THAT(msg, Contains(path.string()));
    CHECK_THAT(msg, Contains("30,740,000"));
  }
  SECTION("label above 9") {
    fs::path path = tmp.path / "data_batch_3.bin";
    std::vector<uint8_t> bytes = synth_records(3, 5000);
    bytes[(size_t)4321 * data::kRecordBytes] = 12;
    write_padded_batch(path, bytes);
    std::string msg = data_error_of([&] { data::read_batch_file(path.string()); });
    CHECK_THAT(msg, Contains(path.string()));
    CHECK_THAT(msg, Contains("record 4321"));
    CHECK_THAT(msg, Contains("label 12"));
    // Records before the bad one are fine: a limit that stops short of it reads them.
    CHECK(matches(data::read_batch_file(path.string(), 4321), 3, 0, 4321));
  }
}

TEST_CASE("read_records_file takes any whole number of records", "[data]") {
  TempDir tmp;
  using Catch::Matchers::Contains;
  fs::path path = tmp.path / "subset.bin";
  write_file(path, synth_records(4, 37));
  CHECK(matches(data::read_records_file(path.string()), 4, 0, 37));
  CHECK(matches(data::read_records_file(path.string(), 5), 4, 0, 5));
  // A full-file reader refuses it, naming the size it found.
  CHECK_THAT(data_error_of([&] { data::read_batch_file(path.string()); }),
             Contains("113,701"));

  std::vector<uint8_t> ragged = synth_records(4, 3);
  ragged.push_back(0);
  write_file(path, ragged);
  std::string msg = data_error_of([&] { data::read_records_file(path.string()); });
  CHECK_THAT(msg, Contains(path.string()));
  CHECK_THAT(msg, Contains("9,220"));
  CHECK_THAT(msg, Contains("whole number"));

  write_file(path, {});
  CHECK_THAT(data_error_of([&] { data::read_records_file(path.string()); }), Contains("empty"));

  std::vector<uint8_t> bad_label = synth_records(4, 3);
  bad_label[2 * data::kRecordBytes] = 255;
  write_file(path, bad_label);
  msg = data_error_of([&] { data::read_records_file(path.string()); });
  CHECK_THAT(msg, Contains("record 2"));
  CHECK_THAT(msg, Contains("label 255"));
}

TEST_CASE("load reads only the files its limits need, in official order", "[data]") {
  using Catch::Matchers::Contains;
  TempDir tmp;
  fs::path bdir = tmp.path / data::kBatchesDirName;
  fs::create_directories(bdir);
  // Only data_batch_1, data_batch_2 and test_batch exist: limits up to 20,000 training
  // images must not touch data_batch_3..5. Each holds 600 distinct records, then padding.
  const long content = 600;
  write_padded_batch(bdir / "data_batch_1.bin", synth_records(1, content));
  write_padded_batch(bdir / "data_batch_2.bin", synth_records(2, content));
  write_padded_batch(bdir / "test_batch.bin", synth_records(9, content));

  data::Cifar10 d = data::load(bdir.string(), 15000, 7);
  CHECK(d.dir == bdir.string());
  REQUIRE(d.train.size() == 15000);
  REQUIRE(d.test.size() == 7);
  data::Split head, tail;  // train images 0..9999 from file 1, 10000..14999 from file 2
  head.labels.assign(d.train.labels.begin(), d.train.labels.begin() + 10000);
  head.images.assign(d.train.images.begin(), d.train.images.begin() + 10000L * data::kImageBytes);
  tail.labels.assign(d.train.labels.begin() + 10000, d.train.labels.end());
  tail.images.assign(d.train.images.begin() + 10000L * data::kImageBytes, d.train.images.end());
  CHECK(matches(head, 1, 0, 10000, content));
  CHECK(matches(tail, 2, 0, 5000, content));
  CHECK(matches(d.test, 9, 0, 7, content));

  // The parent folder works too, and a zero limit opens no file of that split.
  data::Cifar10 p = data::load(tmp.path.string(), 10000, 0);
  CHECK(p.dir == bdir.string());
  CHECK(p.train.size() == 10000);
  CHECK(p.test.size() == 0);
  CHECK(data::load(bdir.string(), 0, 0).train.size() == 0);

  // All images: data_batch_3.bin is missing, so nothing is returned and the error names it.
  std::string msg = data_error_of([&] { data::load(bdir.string()); });
  CHECK_THAT(msg, Contains((bdir / "data_batch_3.bin").string()));
  CHECK_THAT(msg, Contains("not found"));

  // A bad test file fails the whole load even though the training files are fine.
  std::vector<uint8_t> bad = synth_records(9, content);
  bad[5 * data::kRecordBytes] = 10;
  write_padded_batch(bdir / "test_batch.bin", bad);
  msg = data_error_of([&] { data::load(bdir.string(), 100, 10); });
  CHECK_THAT(msg, Contains("test_batch.bin"));
  CHECK_THAT(msg, Contains("record 5"));

  CHECK_THAT(data_error_of([&] { data::load(bdir.string(), 50001, 0); }), Contains("50,000"));
  CHECK_THAT(data_error_of([&] { data::load(bdir.string(), 0, 10001); }), Contains("10,000"));
  std::string nowhere = (tmp.path / "nowhere").string();
  CHECK_THAT(data_error_of([&] { data::load(nowhere, 1, 1); }), Contains(nowhere));
}

TEST_CASE("resolve_data_dir: --data, then CIFAR10_DIR, then the default cache", "[data]") {
  using Catch::Matchers::Contains;
  TempDir tmp;
  fs::path parent = tmp.path / "flag_parent";
  fs::path bdir = parent / data::kBatchesDirName;
  fs::create_directories(bdir);
  fs::path flat = tmp.path / "flat";  // the .bin files directly inside, any folder name
  fs::create_directories(flat);
  write_file(flat / "test_batch.bin", {});
  fs::path env_parent = tmp.path / "env_parent";
  fs::create_directories(env_parent / data::kBatchesDirName);

  SECTION("flag, as the folder itself, its parent, or a folder with the files") {
    EnvGuard env("CIFAR10_DIR", env_parent.string());  // the flag wins over the env var
    CHECK(data::resolve_data_dir(bdir.string()) == bdir.string());
    CHECK(data::resolve_data_dir(bdir.string() + "/") == bdir.string());
    CHECK(data::resolve_data_dir(parent.string()) == bdir.string());
    CHECK(data::resolve_data_dir(flat.string()) == flat.string());
  }
  SECTION("env var when there is no flag") {
    EnvGuard env("CIFAR10_DIR", env_parent.string());
    CHECK(data::resolve_data_dir("") == (env_parent / data::kBatchesDirName).string());
  }
  SECTION("default cache under $HOME when neither is given") {
    EnvGuard env("CIFAR10_DIR", std::nullopt);
    EnvGuard home("HOME", tmp.path.string());
    CHECK(data::default_cache_dir() == (tmp.path / ".cache" / "cifar-speedrun").string());
    fs::path cache_bdir = tmp.path / ".cache" / "cifar-speedrun" / data::kBatchesDirName;
    std::string msg = data_error_of([&] { data::resolve_data_dir(""); });
    CHECK_THAT(msg, Contains((tmp.path / ".cache" / "cifar-speedrun").string()));
    fs::create_directories(cache_bdir);
    CHECK(data::resolve_data_dir("") == cache_bdir.string());
  }
  SECTION("without HOME the default is still an absolute cifar-speedrun folder") {
    EnvGuard home("HOME", std::nullopt);
    fs::path d = data::default_cache_dir();
    CHECK(d.is_absolute());
    CHECK(d.filename() == "cifar-speedrun");
  }
  SECTION("an empty env var counts as unset") {
    EnvGuard env("CIFAR10_DIR", std::string());
    EnvGuard home("HOME", (tmp.path / "no_home").string());
    CHECK_THAT(data_error_of([&] { data::resolve_data_dir(""); }), Contains("no_home"));
  }
  SECTION("nothing found: the message says how to get the data") {
    std::string missing = (tmp.path / "missing").string();
    std::string msg = data_error_of([&] { data::resolve_data_dir(missing); });
    CHECK_THAT(msg, Contains(missing));
    CHECK_THAT(msg, Contains("does not exist"));
    CHECK_THAT(msg, Contains("tools/get_cifar10.sh"));
    CHECK_THAT(msg, Contains("--data DIR"));
    CHECK_THAT(msg, Contains("CIFAR10_DIR"));
    CHECK_THAT(msg, Contains("/usr/bin/python3 ../shared/cifar10/build_bins.py OUT"));

    EnvGuard env("CIFAR10_DIR", tmp.path.string());  // exists but holds no data
    msg = data_error_of([&] { data::resolve_data_dir(""); });
    CHECK_THAT(msg, Contains(tmp.path.string()));
    CHECK_THAT(msg, Contains("CIFAR10_DIR"));
    CHECK_THAT(msg, Contains("holds neither"));
  }
}

TEST_CASE("real CIFAR-10 subsets from ../shared/cifar10", "[data]") {
  std::string shared = testing_support::shared_cifar10_dir();
  if (shared.empty()) {
    std::printf("SKIPPED: ../shared/cifar10 not found\n");
    return;
  }
  data::Split train = data::read_records_file(shared + "/subsets/train_first2000.bin");
  data::Split test = data::read_records_file(shared + "/subsets/test_first1000.bin");
  REQUIRE(train.size() == 2000);
  REQUIRE(test.size() == 1000);
  REQUIRE(train.images.size() == 2000u * data::kImageBytes);
  REQUIRE(test.images.size() == 1000u * data::kImageBytes);

  // First ten labels as published with the dataset (../shared/cifar10/README.md).
  std::vector<uint8_t> train10(train.labels.begin(), train.labels.begin() + 10);
  std::vector<uint8_t> test10(test.labels.begin(), test.labels.begin() + 10);
  CHECK(train10 == std::vector<uint8_t>{6, 9, 9, 4, 1, 1, 2, 7, 8, 3});
  CHECK(test10 == std::vector<uint8_t>{3, 8, 8, 0, 6, 6, 1, 6, 3, 1});

  for (const data::Split* s : {&train, &test}) {
    std::vector<int> count(data::kClasses, 0);
    int out_of_range = 0;
    for (uint8_t l : s->labels) {
      if (l < data::kClasses) count[l]++;
      else out_of_range++;
    }
    CHECK(out_of_range == 0);
    int sum = 0;
    for (int c : count) {
      CHECK(c > 0);  // every class occurs in the first 1,000 images of either split
      sum += c;
    }
    CHECK(sum == s->size());
  }

  // Real images are not blank: the planes span most of the byte range.
  uint8_t lo = 255, hi = 0;
  for (uint8_t v : train.images) { lo = std::min(lo, v); hi = std::max(hi, v); }
  CHECK(lo < 16);
  CHECK(hi > 240);

  // The subsets are not full batches: the full-file reader says so with both sizes.
  std::string msg = data_error_of(
      [&] { data::read_batch_file(shared + "/subsets/train_first2000.bin"); });
  CHECK_THAT(msg, Catch::Matchers::Contains("6,146,000"));
  CHECK_THAT(msg, Catch::Matchers::Contains("30,730,000"));
}

TEST_CASE("full CIFAR-10 from the default folder or CIFAR10_DIR, when present", "[data]") {
  std::string dir;
  try {
    dir = data::resolve_data_dir("");
  } catch (const data::DataError&) {
    std::printf("SKIPPED: no full CIFAR-10 copy in CIFAR10_DIR or %s (tools/get_cifar10.sh)\n",
                data::default_cache_dir().c_str());
    return;
  }
  data::Cifar10 d = data::load(dir);
  REQUIRE(d.train.size() == data::kTrainImages);
  REQUIRE(d.test.size() == data::kTestImages);
  // Published per-class counts: 5,000 training and 1,000 test images of each class.
  std::vector<int> train_count(data::kClasses, 0), test_count(data::kClasses, 0);
  for (uint8_t l : d.train.labels) train_count[l]++;
  for (uint8_t l : d.test.labels) test_count[l]++;
  CHECK(train_count == std::vector<int>(data::kClasses, 5000));
  CHECK(test_count == std::vector<int>(data::kClasses, 1000));

  // The shared subsets are the first records of the same files, byte for byte.
  std::string shared = testing_support::shared_cifar10_dir();
  if (!shared.empty()) {
    data::Split sub = data::read_records_file(shared + "/subsets/train_first2000.bin");
    CHECK(std::equal(sub.labels.begin(), sub.labels.end(), d.train.labels.begin()));
    CHECK(std::equal(sub.images.begin(), sub.images.end(), d.train.images.begin()));
    data::Split tsub = data::read_records_file(shared + "/subsets/test_first1000.bin");
    CHECK(std::equal(tsub.labels.begin(), tsub.labels.end(), d.test.labels.begin()));
    CHECK(std::equal(tsub.images.begin(), tsub.images.end(), d.test.images.begin()));
  }
}
