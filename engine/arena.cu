#include "engine/arena.h"

#include <cuda_runtime.h>

#include <cstdio>
#include <stdexcept>

#include "engine/cuda_check.h"

namespace cs {

std::string format_bytes(size_t bytes) {
  char buf[64];
  const double b = (double)bytes;
  if (b >= 1024.0 * 1024.0 * 1024.0)
    std::snprintf(buf, sizeof(buf), "%.2f GiB", b / (1024.0 * 1024.0 * 1024.0));
  else if (b >= 1024.0 * 1024.0)
    std::snprintf(buf, sizeof(buf), "%.1f MiB", b / (1024.0 * 1024.0));
  else if (b >= 1024.0)
    std::snprintf(buf, sizeof(buf), "%.1f KiB", b / 1024.0);
  else
    std::snprintf(buf, sizeof(buf), "%zu B", bytes);
  return buf;
}

Arena::Arena(size_t capacity_bytes) : capacity_(capacity_bytes) {
  if (capacity_ == 0) throw std::invalid_argument("Arena: capacity must be > 0");
  void* p = nullptr;
  CUDA_CHECK(cudaMalloc(&p, capacity_));
  base_ = static_cast<char*>(p);
}

Arena::~Arena() {
  // No throwing from a destructor: a failure here (e.g. after a sticky kernel fault) is ignored.
  if (base_) cudaFree(base_);
}

void* Arena::alloc_bytes(size_t bytes, const std::string& what) {
  const size_t rounded = (bytes + kAlignment - 1) / kAlignment * kAlignment;
  if (rounded < bytes || rounded > capacity_ - used_) {
    throw std::runtime_error("GPU arena overflow: request '" + what + "' of " +
                             format_bytes(bytes) + " does not fit (used " + format_bytes(used_) +
                             " of " + format_bytes(capacity_) + ", free " +
                             format_bytes(capacity_ - used_) + ")");
  }
  void* p = base_ + used_;
  blocks_.push_back(Block{what, used_, rounded});
  used_ += rounded;
  if (used_ > peak_) peak_ = used_;
  return p;
}

void Arena::release_to(size_t m) {
  if (m > used_) throw std::invalid_argument("Arena::release_to: mark beyond the used size");
  while (!blocks_.empty() && blocks_.back().offset >= m) blocks_.pop_back();
  used_ = m;
}

std::string Arena::report() const {
  std::string s;
  char line[256];
  for (const auto& b : blocks_) {
    std::snprintf(line, sizeof(line), "  %-28s %12zu  %s\n", b.what.c_str(), b.offset,
                  format_bytes(b.bytes).c_str());
    s += line;
  }
  s += "  used " + format_bytes(used_) + ", peak " + format_bytes(peak_) + ", capacity " +
       format_bytes(capacity_) + "\n";
  return s;
}

}  // namespace cs
