// CIFAR-10 in the official binary format: data_batch_1..5.bin and test_batch.bin, each 10,000
// records of 1 label byte + 3072 pixel bytes ([3][32][32]: R plane, G plane, B plane).
// Where the data is looked for and what every error means: docs/data.md.
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
constexpr int kTrainImages = kTrainFiles * kRecordsPerFile;  // 50,000
constexpr int kTestImages = kRecordsPerFile;                 // 10,000
constexpr long kBatchFileBytes = (long)kRecordsPerFile * kRecordBytes;  // 30,730,000
constexpr const char* kBatchesDirName = "cifar-10-batches-bin";

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
// (negative: all); the size check always applies to the whole file, the label check to the
// records read.
Split read_batch_file(const std::string& path, int limit = -1);

// Reads a file of any whole, non-zero number of records in the same layout (e.g. the
// subsets/train_first2000.bin of ../shared/cifar10); throws DataError if it is missing,
// unreadable, empty, not a multiple of 3,073 bytes, or holds a label > 9 among the records
// read. Reads at most `limit` records (negative: all).
Split read_records_file(const std::string& path, int limit = -1);

// Resolves the data directory: `flag` (--data) if non-empty, else $CIFAR10_DIR if set and
// non-empty, else default_cache_dir(). Accepts either the cifar-10-batches-bin folder itself
// or a folder that contains it, and returns the cifar-10-batches-bin folder. Throws DataError,
// saying how to get the data, when the chosen folder does not exist or holds neither.
std::string resolve_data_dir(const std::string& flag);
// $HOME/.cache/cifar-speedrun (the home directory from the password database if HOME is unset,
// the system temp directory if there is none). tools/get_cifar10.sh uses the same default.
std::string default_cache_dir();

// Reads the first train_limit training and test_limit test images (negative: all; in the
// official order) from dir, the cifar-10-batches-bin folder or its parent. Opens only the
// files those images live in (data_batch_1.bin first, then 2, ...; test_batch.bin) and reads
// only the needed records, but checks the full size of each file it opens. All-or-nothing:
// throws DataError before returning anything on bad input or a limit above 50,000 / 10,000.
Cifar10 load(const std::string& dir, int train_limit = -1, int test_limit = -1);

}  // namespace data
