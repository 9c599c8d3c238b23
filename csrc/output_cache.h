// A small cache of output buffers for the CPU kernels (see output_cache.cpp).
#pragma once
#include <ATen/core/Tensor.h>

namespace mfdr {
// An uninitialized tensor like at::empty(sizes, options), whose large buffer comes from (and returns
// to) the cache.
at::Tensor cached_empty(at::IntArrayRef sizes, const at::TensorOptions& options);
}  // namespace mfdr
