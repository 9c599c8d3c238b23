// Dynamic frame convolution (DFC): CPU forward and backward (SPEC §2).
//
//   y[b, n, c] = sum_{j < f} K[n, j, c] * x[b, n*hop + j, c]  (+ bias[c] or bias[n, c])
//
// K is shared by the batch (N, f, C) or private to each sample (B, N, f, C). Frames are read from x
// in place: the unfolded (B, N, f, C) tensor is never built. Channels are innermost and contiguous
// in every tensor, so each inner loop is a unit-stride `omp simd` loop over channels.
//
// Forward     grid: at::parallel_for over (block of frames, chunk of samples); an output row is f
//             channel-axpys. Samples loop inside a task, so a shared kernel block is read from cache.
// Backward dx grid: over (block of LB rows of x, chunk of samples). Row l gets a term from every frame n whose
//             rows [n*hop, n*hop + f) hold it (several when hop < f; none in the gaps when hop > f).
//             The block owns its rows and scatters the frames that touch them into them: no atomics,
//             no races, deterministic.
// Backward dK grid: over (n, block of CB channels), the batch looped inside, so one thread owns
//             dK[n, :, block] and dbias[n, block]: the shared kernel's sum over b is race-free.
//             dbias is returned as (N, C), summed over the batch; the caller reduces it to (C,).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "output_cache.h"

#include <algorithm>
#include <cstring>

namespace mfdr {
namespace {

constexpr int64_t kRowBlock = 64;       // LB: rows of x per dx task
constexpr int64_t kFrameBlock = 16;     // frames per forward task
constexpr int64_t kBatchChunk = 8;      // samples per forward / dx task
constexpr int64_t kChannelBlock = 128;  // CB: channels per dK task
constexpr int64_t kGrainWork = 1 << 15;  // elements of work below which a range is not split further

struct Dims {
  int64_t B, L, C, N, f, hop;
  bool per_sample;
};

template <typename T>
inline void axpy(const T* a, const T* b, T* y, int64_t n) {  // y += a * b (elementwise)
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) y[c] += a[c] * b[c];
}

template <typename T>
void forward_kernel(const T* x, const T* k, const T* bias, int64_t bias_dim, T* y, const Dims& d) {
  // task = (block of kFrameBlock frames, chunk of kBatchChunk samples): the samples of a chunk reuse
  // the block's kernel rows from cache instead of streaming the whole kernel once per sample.
  const int64_t nnb = (d.N + kFrameBlock - 1) / kFrameBlock, nbc = (d.B + kBatchChunk - 1) / kBatchChunk;
  const int64_t task_work = std::min(kBatchChunk, d.B) * std::min(kFrameBlock, d.N) * d.f * d.C;
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, task_work));
  at::parallel_for(0, nnb * nbc, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n0 = (r / nbc) * kFrameBlock, n1 = std::min(n0 + kFrameBlock, d.N);
      const int64_t b0 = (r % nbc) * kBatchChunk, b1 = std::min(b0 + kBatchChunk, d.B);
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t n = n0; n < n1; ++n) {
          const T* kn = k + ((d.per_sample ? b * d.N : 0) + n) * d.f * d.C;  // (f, C)
          const T* xn = x + (b * d.L + n * d.hop) * d.C;                     // frame n: rows n*hop ...
          T* yr = y + (b * d.N + n) * d.C;
          if (bias_dim == 0)
            std::fill(yr, yr + d.C, T(0));
          else
            std::memcpy(yr, bias + (bias_dim == 2 ? n * d.C : 0), sizeof(T) * d.C);
          for (int64_t j = 0; j < d.f; ++j) axpy<T>(kn + j * d.C, xn + j * d.C, yr, d.C);
        }
      }
    }
  });
}

template <typename T>
void backward_dx_kernel(const T* gy, const T* k, T* dx, const Dims& d) {
  // task = (block of kRowBlock rows of x, chunk of kBatchChunk samples), kernel rows reused as above
  const int64_t nlb = (d.L + kRowBlock - 1) / kRowBlock, nbc = (d.B + kBatchChunk - 1) / kBatchChunk;
  const int64_t task_work = std::min(kBatchChunk, d.B) * std::min(kRowBlock, d.L) * d.C * ((d.f + d.hop - 1) / d.hop);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, task_work));
  at::parallel_for(0, nlb * nbc, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t l0 = (r / nbc) * kRowBlock, l1 = std::min(l0 + kRowBlock, d.L);
      const int64_t b0 = (r % nbc) * kBatchChunk, b1 = std::min(b0 + kBatchChunk, d.B);
      // frames n with [n*hop, n*hop + f) meeting [l0, l1): n*hop > l0 - f and n*hop < l1
      const int64_t lo = l0 - d.f + 1;
      const int64_t n0 = lo <= 0 ? 0 : (lo + d.hop - 1) / d.hop;
      const int64_t n1 = std::min(d.N, (l1 - 1) / d.hop + 1);
      for (int64_t b = b0; b < b1; ++b) {
        std::fill(dx + (b * d.L + l0) * d.C, dx + (b * d.L + l1) * d.C, T(0));
        for (int64_t n = n0; n < n1; ++n) {
          const T* g = gy + (b * d.N + n) * d.C;
          const T* kn = k + ((d.per_sample ? b * d.N : 0) + n) * d.f * d.C;
          const int64_t j0 = std::max<int64_t>(0, l0 - n * d.hop), j1 = std::min(d.f, l1 - n * d.hop);
          for (int64_t j = j0; j < j1; ++j) axpy<T>(g, kn + j * d.C, dx + (b * d.L + n * d.hop + j) * d.C, d.C);
        }
      }
    }
  });
}

template <typename T>
void backward_dk_kernel(const T* gy, const T* x, T* dk, T* dbias, const Dims& d) {
  const int64_t ncb = (d.C + kChannelBlock - 1) / kChannelBlock;
  const int64_t task_work = d.B * (d.f + 1) * std::min(d.C, kChannelBlock);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, task_work));
  at::parallel_for(0, d.N * ncb, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / ncb, c0 = (r % ncb) * kChannelBlock, cw = std::min(kChannelBlock, d.C - c0);
      T* db = dbias + n * d.C + c0;
      std::fill(db, db + cw, T(0));
      T* dks = dk + n * d.f * d.C + c0;  // shared: dK[n, :, c0:c0+cw], summed over b
      if (!d.per_sample)
        for (int64_t j = 0; j < d.f; ++j) std::fill(dks + j * d.C, dks + j * d.C + cw, T(0));
      for (int64_t b = 0; b < d.B; ++b) {
        const T* g = gy + (b * d.N + n) * d.C + c0;
        const T* xn = x + (b * d.L + n * d.hop) * d.C + c0;
#pragma omp simd
        for (int64_t c = 0; c < cw; ++c) db[c] += g[c];
        if (d.per_sample) {
          T* dkb = dk + (b * d.N + n) * d.f * d.C + c0;
          for (int64_t j = 0; j < d.f; ++j) {
            const T* xj = xn + j * d.C;
            T* o = dkb + j * d.C;
#pragma omp simd
            for (int64_t c = 0; c < cw; ++c) o[c] = g[c] * xj[c];
          }
        } else {
          for (int64_t j = 0; j < d.f; ++j) axpy<T>(g, xn + j * d.C, dks + j * d.C, cw);
        }
      }
    }
  });
}

Dims check_inputs(const char* fn, const at::Tensor& x, const at::Tensor& kernel, int64_t frame, int64_t hop) {
  TORCH_CHECK(x.dim() == 3 && x.is_contiguous(), fn, ": x must be a contiguous (B, L, C) tensor");
  TORCH_CHECK((kernel.dim() == 3 || kernel.dim() == 4) && kernel.is_contiguous(), fn,
              ": kernel must be a contiguous (N, frame, C) or (B, N, frame, C) tensor");
  TORCH_CHECK(x.scalar_type() == kernel.scalar_type(), fn, ": x and kernel must share a dtype");
  TORCH_CHECK(frame >= 1 && hop >= 1, fn, ": frame and hop must be >= 1");
  const int64_t B = x.size(0), L = x.size(1), C = x.size(2);
  TORCH_CHECK(L >= frame, fn, ": x has ", L, " rows, fewer than frame = ", frame);
  const int64_t N = (L - frame) / hop + 1;
  const bool per_sample = kernel.dim() == 4;
  const auto want = per_sample ? std::vector<int64_t>{B, N, frame, C} : std::vector<int64_t>{N, frame, C};
  TORCH_CHECK(kernel.sizes() == at::IntArrayRef(want), fn, ": kernel must have shape ", at::IntArrayRef(want),
              ", got ", kernel.sizes());
  return Dims{B, L, C, N, frame, hop, per_sample};
}

at::Tensor dfc_forward(const at::Tensor& x, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                       int64_t frame, int64_t hop) {
  const Dims d = check_inputs("mfdr_C::dfc_forward", x, kernel, frame, hop);
  int64_t bias_dim = 0;
  at::Tensor bias_t;
  if (bias.has_value() && bias->defined()) {
    bias_t = bias->contiguous();
    bias_dim = bias_t.dim();
    TORCH_CHECK(bias_t.scalar_type() == x.scalar_type(), "mfdr_C::dfc_forward: bias must have the dtype of x");
    TORCH_CHECK((bias_dim == 1 && bias_t.size(0) == d.C) ||
                    (bias_dim == 2 && bias_t.size(0) == d.N && bias_t.size(1) == d.C),
                "mfdr_C::dfc_forward: bias must have shape (C,) or (N, C), got ", bias_t.sizes());
  }
  auto y = cached_empty({d.B, d.N, d.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mfdr_dfc_forward", [&] {
    forward_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(),
                             bias_dim ? bias_t.const_data_ptr<scalar_t>() : nullptr, bias_dim,
                             y.mutable_data_ptr<scalar_t>(), d);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dfc_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                            const at::Tensor& kernel, int64_t frame, int64_t hop) {
  const Dims d = check_inputs("mfdr_C::dfc_backward", x, kernel, frame, hop);
  TORCH_CHECK(grad_y.is_contiguous() && grad_y.sizes() == at::IntArrayRef({d.B, d.N, d.C}) &&
                  grad_y.scalar_type() == x.scalar_type(),
              "mfdr_C::dfc_backward: grad_y must be a contiguous (B, N, C) tensor of the dtype of x");
  auto dx = cached_empty(x.sizes(), x.options()), dk = cached_empty(kernel.sizes(), kernel.options());
  auto dbias = cached_empty({d.N, d.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "mfdr_dfc_backward", [&] {
    const scalar_t *gp = grad_y.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *kp = kernel.const_data_ptr<scalar_t>();
    backward_dx_kernel<scalar_t>(gp, kp, dx.mutable_data_ptr<scalar_t>(), d);
    backward_dk_kernel<scalar_t>(gp, xp, dk.mutable_data_ptr<scalar_t>(), dbias.mutable_data_ptr<scalar_t>(), d);
  });
  return {dx, dk, dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def("dfc_forward(Tensor x, Tensor kernel, Tensor? bias, int frame, int hop) -> Tensor");
  m.def("dfc_backward(Tensor grad_y, Tensor x, Tensor kernel, int frame, int hop) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mfdr_C, CPU, m) {
  m.impl("dfc_forward", &dfc_forward);
  m.impl("dfc_backward", &dfc_backward);
}

}  // namespace mfdr
