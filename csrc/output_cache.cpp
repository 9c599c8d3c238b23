// Output-buffer cache for the CPU kernels.
//
// glibc returns large freed blocks to the OS, so every call of an op that allocates megabytes of
// outputs (SAWA's dk and dv: 2 x 8 MiB at the paper's shape) page-faults them back in: a few thousand
// minor faults per call, a large part of the backward's time (BENCHMARKS.md, "Allocator sensitivity").
// Like PyTorch's CUDA caching allocator, this keeps freed output blocks of 256 KiB or more, by size, up
// to a limit (MFDR_KERNELS_OUTPUT_CACHE_MB, default 256; 0 turns it off), and hands them out again.
// The tensors are ordinary CPU tensors with resizable storage; only where their memory goes when
// freed differs.
#include "output_cache.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/core/CPUAllocator.h>
#include <torch/library.h>

#include <cstdlib>
#include <mutex>
#include <new>
#include <unordered_map>
#include <vector>

namespace mfdr {
namespace {

constexpr size_t kMinBytes = size_t(256) << 10;  // smaller blocks come from malloc's own free lists

struct Cache {
  std::mutex mu;
  std::unordered_map<size_t, std::vector<void*>> blocks;  // free blocks by size in bytes
  size_t held = 0;
  size_t limit = size_t(256) << 20;
};

// Never destroyed: tensors freed during interpreter shutdown still call release().
Cache& cache() {
  static Cache* c = new Cache();
  return *c;
}

void release(void* ptr, size_t bytes) {
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> guard(c.mu);
    if (c.held + bytes <= c.limit) {
      c.blocks[bytes].push_back(ptr);
      c.held += bytes;
      return;
    }
  }
  std::free(ptr);
}

// Sets the limit in bytes, freeing what no longer fits; returns the previous limit.
int64_t set_output_cache_limit(int64_t bytes) {
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.mu);
  const int64_t previous = static_cast<int64_t>(c.limit);
  c.limit = bytes > 0 ? static_cast<size_t>(bytes) : 0;
  for (auto& entry : c.blocks) {
    while (c.held > c.limit && !entry.second.empty()) {
      std::free(entry.second.back());
      entry.second.pop_back();
      c.held -= entry.first;
    }
  }
  return previous;
}

int64_t output_cache_held() {
  Cache& c = cache();
  std::lock_guard<std::mutex> guard(c.mu);
  return static_cast<int64_t>(c.held);
}

}  // namespace

at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
  Cache& c = cache();
  void* ptr = nullptr;
  {
    std::lock_guard<std::mutex> guard(c.mu);
    if (bytes < kMinBytes || c.limit == 0) return at::empty(sizes, options);
    auto it = c.blocks.find(bytes);
    if (it != c.blocks.end() && !it->second.empty()) {
      ptr = it->second.back();
      it->second.pop_back();
      c.held -= bytes;
    }
  }
  if (ptr == nullptr && posix_memalign(&ptr, 64, bytes) != 0) throw std::bad_alloc();
  return at::for_blob(ptr, sizes)
      .deleter([bytes](void* p) { release(p, bytes); })
      .options(options)
      .resizeable_storage()
      .allocator(c10::GetCPUAllocator())
      .make_tensor();
}

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def("set_output_cache_limit(int bytes) -> int", &set_output_cache_limit);
  m.def("output_cache_held() -> int", &output_cache_held);
}

}  // namespace mfdr
