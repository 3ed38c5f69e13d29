// CIFAR-10 binary reader. Every failure is a DataError of the form
//   data/cifar10: <file or folder>: <what is wrong>. <what to do>
// so a bad path, a truncated download or a CIFAR-100 file is diagnosed without a debugger.
#include "data/cifar10.h"

#include <pwd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <system_error>

namespace data {
namespace {

namespace fs = std::filesystem;

const char* const kRefetch =
    "Fetch a good copy with tools/get_cifar10.sh, or point --data / CIFAR10_DIR at one "
    "(see docs/data.md)";

[[noreturn]] void fail(const std::string& what, const std::string& problem,
                       const std::string& todo) {
  throw DataError("data/cifar10: " + what + ": " + problem + ". " + todo + ".");
}

// 30730000 -> "30,730,000": sizes in messages are compared by eye against the expected ones.
std::string with_commas(long v) {
  std::string s = std::to_string(v);  // v >= 0: sizes and counts
  for (int i = (int)s.size() - 3; i > 0; i -= 3) s.insert((size_t)i, ",");
  return s;
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

// "dir/" and "dir" name the same folder; filename() needs the form without the separator.
fs::path strip_trailing_separator(fs::path p) {
  if (!p.has_filename() && p.has_parent_path()) p = p.parent_path();
  return p;
}

// Appends the first `limit` records (negative: all) of path to dst, checking their labels.
// expected_records > 0: the file must hold exactly that many records; otherwise any whole,
// non-zero number. On a throw dst may hold part of the file: callers fill a local.
void append_records(const std::string& path, long expected_records, long limit, Split& dst) {
  fs::path p(path);
  fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(parent, ec))
    fail(path, "the directory " + parent.string() + " does not exist",
         "Point --data or CIFAR10_DIR at the folder holding cifar-10-batches-bin, or fetch the "
         "data with tools/get_cifar10.sh (see docs/data.md)");
  fs::file_status st = fs::status(p, ec);
  if (!fs::exists(st))
    fail(path, "file not found",
         "A complete cifar-10-batches-bin folder holds data_batch_1.bin .. data_batch_5.bin and "
         "test_batch.bin. " + std::string(kRefetch));
  if (!fs::is_regular_file(st))
    fail(path, "unreadable: it is not a regular file", kRefetch);

  std::unique_ptr<FILE, FileCloser> f(std::fopen(path.c_str(), "rb"));
  if (!f)
    fail(path, std::string("unreadable: cannot open it (") + std::strerror(errno) + ")",
         "Check the file's permissions. " + std::string(kRefetch));
  // The size is taken from the open file so it is the size of what is read.
  if (std::fseek(f.get(), 0, SEEK_END) != 0)
    fail(path, std::string("unreadable: cannot seek (") + std::strerror(errno) + ")", kRefetch);
  long bytes = std::ftell(f.get());
  if (bytes < 0 || std::fseek(f.get(), 0, SEEK_SET) != 0)
    fail(path, std::string("unreadable: cannot tell its size (") + std::strerror(errno) + ")",
         kRefetch);

  if (expected_records > 0) {
    long expected = expected_records * kRecordBytes;
    if (bytes != expected)
      fail(path,
           "size is " + with_commas(bytes) + " bytes, expected " + with_commas(expected) + " (" +
               with_commas(expected_records) + " records of 3,073 bytes)",
           "The file is truncated or not a CIFAR-10 binary batch (CIFAR-100 records are 3,074 "
           "bytes). " + std::string(kRefetch));
  } else if (bytes == 0) {
    fail(path, "the file is empty", kRefetch);
  } else if (bytes % kRecordBytes != 0) {
    fail(path,
         "size is " + with_commas(bytes) + " bytes, not a whole number of 3,073-byte records",
         "The file is truncated or not in the CIFAR-10 binary format. " + std::string(kRefetch));
  }

  long n = bytes / kRecordBytes;
  if (limit >= 0 && limit < n) n = limit;
  size_t base = dst.labels.size();
  dst.labels.resize(base + (size_t)n);
  dst.images.resize((base + (size_t)n) * kImageBytes);

  // Read in chunks of records (3 MB) rather than the whole file, so peak memory is the split
  // itself. Record r: the label byte, then the 3072 bytes of the R, G, B planes.
  constexpr long kChunk = 1024;
  std::vector<uint8_t> buf((size_t)(std::min(n, kChunk) * kRecordBytes));
  for (long r0 = 0; r0 < n; r0 += kChunk) {
    long m = std::min(kChunk, n - r0);
    size_t want = (size_t)(m * kRecordBytes);
    size_t got = std::fread(buf.data(), 1, want, f.get());
    if (got != want)
      fail(path,
           "unreadable: read stopped at byte " + with_commas(r0 * kRecordBytes + (long)got) +
               " of " + with_commas(bytes) + " (" +
               (std::ferror(f.get()) ? std::strerror(errno) : "unexpected end of file") + ")",
           kRefetch);
    for (long r = 0; r < m; r++) {
      const uint8_t* rec = buf.data() + r * kRecordBytes;
      if (rec[0] >= kClasses)
        fail(path,
             "record " + std::to_string(r0 + r) + " (0-based) has label " +
                 std::to_string(rec[0]) + ", but CIFAR-10 labels are 0..9",
             "The file is corrupt or not CIFAR-10 (CIFAR-100 has 2 label bytes per record). " +
                 std::string(kRefetch));
      dst.labels[base + (size_t)(r0 + r)] = rec[0];
      std::memcpy(dst.images.data() + (base + (size_t)(r0 + r)) * kImageBytes, rec + 1,
                  kImageBytes);
    }
  }
}

// The cifar-10-batches-bin folder that dir is or contains, or "" if neither.
std::string batches_dir_in(const fs::path& dir_in) {
  fs::path dir = strip_trailing_separator(dir_in);
  std::error_code ec;
  if (fs::exists(dir / "data_batch_1.bin", ec) || fs::exists(dir / "test_batch.bin", ec))
    return dir.string();
  if (fs::is_directory(dir / kBatchesDirName, ec)) return (dir / kBatchesDirName).string();
  // A folder with the right name but missing files: load() will name the missing file.
  if (dir.filename() == kBatchesDirName) return dir.string();
  return "";
}

[[noreturn]] void no_data(const std::string& dir, const std::string& source,
                          const std::string& problem) {
  throw DataError(
      "data/cifar10: " + dir + " (" + source + "): " + problem +
      ". Get CIFAR-10 in one of these ways:\n"
      "  tools/get_cifar10.sh [DEST]    downloads it into DEST (default " +
      default_cache_dir() +
      ", where it is found without flags)\n"
      "  --data DIR or CIFAR10_DIR=DIR  uses a copy you have: the cifar-10-batches-bin folder "
      "or its parent\n"
      "  /usr/bin/python3 ../shared/cifar10/build_bins.py OUT\n"
      "                                 (from the repo root) rebuilds it offline from the shared "
      "tiles, on machines that have them; then use --data OUT");
}

}  // namespace

Split read_batch_file(const std::string& path, int limit) {
  Split s;
  append_records(path, kRecordsPerFile, limit, s);
  return s;
}

Split read_records_file(const std::string& path, int limit) {
  Split s;
  append_records(path, -1, limit, s);
  return s;
}

std::string default_cache_dir() {
  fs::path home;
  if (const char* h = std::getenv("HOME"); h && *h) {
    home = h;
  } else if (const passwd* pw = getpwuid(getuid()); pw && pw->pw_dir && *pw->pw_dir) {
    home = pw->pw_dir;
  } else {
    // No home at all (some containers): a per-machine cache is better than none.
    std::error_code ec;
    fs::path tmp = fs::temp_directory_path(ec);
    return ((ec ? fs::path("/tmp") : tmp) / "cifar-speedrun").string();
  }
  return (home / ".cache" / "cifar-speedrun").string();
}

std::string resolve_data_dir(const std::string& flag) {
  std::string dir, source;
  if (!flag.empty()) {
    dir = flag;
    source = "from --data";
  } else if (const char* env = std::getenv("CIFAR10_DIR"); env && *env) {
    dir = env;
    source = "from $CIFAR10_DIR";
  } else {
    dir = default_cache_dir();
    source = "the default data folder; no --data or $CIFAR10_DIR given";
  }
  std::error_code ec;
  fs::file_status st = fs::status(dir, ec);
  if (!fs::exists(st)) no_data(dir, source, "the folder does not exist");
  if (!fs::is_directory(st)) no_data(dir, source, "not a folder");
  std::string found = batches_dir_in(dir);
  if (found.empty())
    no_data(dir, source,
            "holds neither a cifar-10-batches-bin folder nor data_batch_1.bin / test_batch.bin");
  return found;
}

Cifar10 load(const std::string& dir, int train_limit, int test_limit) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail(dir, "the data folder does not exist",
         "Point --data or CIFAR10_DIR at the folder holding cifar-10-batches-bin, or fetch the "
         "data with tools/get_cifar10.sh (see docs/data.md)");
  std::string bdir = batches_dir_in(dir);
  // Neither form found: look for the files in dir itself, so the error names the first one.
  if (bdir.empty()) bdir = strip_trailing_separator(dir).string();

  int n_train = train_limit < 0 ? kTrainImages : train_limit;
  int n_test = test_limit < 0 ? kTestImages : test_limit;
  if (n_train > kTrainImages)
    fail(bdir,
         "train limit " + std::to_string(train_limit) + " is more than the 50,000 training images",
         "Ask for at most 50000, or -1 for all");
  if (n_test > kTestImages)
    fail(bdir, "test limit " + std::to_string(test_limit) + " is more than the 10,000 test images",
         "Ask for at most 10000, or -1 for all");

  // Everything goes into this local; a throw below leaves the caller with nothing.
  Cifar10 out;
  out.dir = bdir;
  out.train.labels.reserve((size_t)n_train);
  out.train.images.reserve((size_t)n_train * kImageBytes);
  for (int b = 0; b < kTrainFiles && out.train.size() < n_train; b++) {
    fs::path file = fs::path(bdir) / ("data_batch_" + std::to_string(b + 1) + ".bin");
    append_records(file.string(), kRecordsPerFile, n_train - out.train.size(), out.train);
  }
  if (n_test > 0)
    append_records((fs::path(bdir) / "test_batch.bin").string(), kRecordsPerFile, n_test, out.test);
  return out;
}

}  // namespace data
