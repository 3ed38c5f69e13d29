// Device-memory arena: one cudaMalloc at construction, bump allocation with 256-byte alignment,
// nothing freed until the arena dies (llm.c's malloc_and_point, on the GPU). Training never
// calls cudaMalloc / cudaFree: every buffer is carved out at setup.
//
// mark() / release_to(mark) give back the tail for short-lived setup buffers (the uint8 upload
// staging); peak_bytes() keeps the high-water mark, so the reported peak includes them.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace cs {

class Arena {
 public:
  // cudaMalloc's own alignment; enough for 16-byte vector loads and cuDNN's tensors.
  static constexpr size_t kAlignment = 256;

  explicit Arena(size_t capacity_bytes);  // throws CudaError when the cudaMalloc fails
  ~Arena();
  Arena(const Arena&) = delete;
  Arena& operator=(const Arena&) = delete;

  // `bytes` (rounded up to kAlignment) from the tail. Throws std::runtime_error naming `what`,
  // the request and the arena's state when it does not fit. Zero bytes gives a valid pointer.
  void* alloc_bytes(size_t bytes, const std::string& what);
  // Typed view: `count` elements of T.
  template <class T>
  T* alloc(size_t count, const std::string& what) {
    return static_cast<T*>(alloc_bytes(count * sizeof(T), what));
  }

  size_t mark() const { return used_; }
  // Frees everything allocated after `m` (the caller makes sure the GPU is done with it).
  void release_to(size_t m);

  size_t capacity_bytes() const { return capacity_; }
  size_t used_bytes() const { return used_; }
  size_t peak_bytes() const { return peak_; }
  // One line per live allocation (name, offset, size) and the totals, for logs and docs.
  std::string report() const;

 private:
  struct Block {
    std::string what;
    size_t offset, bytes;
  };
  char* base_ = nullptr;
  size_t capacity_ = 0, used_ = 0, peak_ = 0;
  std::vector<Block> blocks_;
};

// "1.50 GiB", "12.0 MiB", "300 B": sizes for messages.
std::string format_bytes(size_t bytes);

}  // namespace cs
