// CIFAR-10 in the official binary format: data_batch_1..5.bin and test_batch.bin, each 10,000
// records of 1 label byte + 3072 pixel bytes ([3][32][32]: R plane, G plane, B plane).
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace data {

constexpr int kImageBytes = 3072;
constexpr int kRecordBytes = 1 + kImageBytes;
constexpr int kRecordsPerFile = 10000;
constexpr int kTrainFiles = 5;
constexpr int kClasses = 10;

// One split, kept as the official planes so it uploads to the GPU as-is.
struct Split {
  std::vector<uint8_t> labels;  // [n]
  std::vector<uint8_t> images;  // [n][3][32][32]
  int size() const { return (int)labels.size(); }
};

struct Cifar10 {
  Split train, test;
  std::string dir;  // the cifar-10-batches-bin directory it was read from
};

// Every reader error: names the file and what was wrong, and says what to do.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Reads one batch file; throws DataError if the file is missing, unreadable, not exactly
// 10,000 records of 3,073 bytes, or holds a label > 9. Reads at most `limit` records
// (-1: all); the size check always applies to the whole file.
Split read_batch_file(const std::string& path, int limit = -1);

// Resolves the data directory: `flag` if non-empty, else $CIFAR10_DIR, else the default cache
// (~/.cache/cifar-speedrun). Accepts either the cifar-10-batches-bin folder itself or a folder
// that contains it.
std::string resolve_data_dir(const std::string& flag);
std::string default_cache_dir();

// Reads the first train_limit training and test_limit test images (-1: all) from dir (as
// resolved above). All-or-nothing: throws DataError before returning anything on bad input.
Cifar10 load(const std::string& dir, int train_limit = -1, int test_limit = -1);

}  // namespace data
