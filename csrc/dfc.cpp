// Dynamic frame convolution (DFC): CPU forward and backward (SPEC §2).
//
//   y[b, n, c] = sum_{j < f} K[n, j, c] * x[b, n*hop + j, c]  (+ bias[c] or bias[n, c])
//
// K is shared by the batch (N, f, C) or private to each sample (B, N, f, C). Frames are read from x
// in place: the unfolded (B, N, f, C) tensor is never built. Channels are innermost and contiguous
// in every tensor, so every output row is a sum of elementwise products of whole rows, computed over
// unit-stride vectors of channels in registers and stored once (vec.h: sum_products).
//
// Forward     grid: at::parallel_for over (block of frames, chunk of samples); an output row is the
//             bias plus f products. Samples loop inside a task, so a shared kernel block is read from cache.
// Backward dx grid: over (block of LB rows of x, chunk of samples). Row l gets a term from every frame n whose
//             rows [n*hop, n*hop + f) hold it (several when hop < f; none in the gaps when hop > f),
//             gathered: each row is written once by the task that owns it: no atomics, no races,
//             deterministic.
// Backward dK grid: over (n, block of CB channels), the batch summed inside, so one thread owns
//             dK[n, :, block] and dbias[n, block]: the shared kernel's sum over b is race-free.
//             dbias is returned as (N, C), summed over the batch; the caller reduces it to (C,).
//
// Dtypes: float and double accumulate in their own type; bf16 loads and stores bf16 and sums in fp32
// (each output element rounded once, the batch sums of dK and dbias included).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "vec.h"

#include <algorithm>

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
void dfc_fwd_kernel(const T* x, const T* k, const T* bias, int64_t bias_dim, T* y, const Dims& d) {
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
          const T* bn = bias_dim == 0 ? nullptr : bias + (bias_dim == 2 ? n * d.C : 0);
          sum_products<T>(kn, d.C, xn, d.C, d.f, bn, y + (b * d.N + n) * d.C, d.C);
        }
      }
    }
  });
}

template <typename T>
void dfc_bwd_dx_kernel(const T* gy, const T* k, T* dx, const Dims& d) {
  // task = (block of kRowBlock rows of x, chunk of kBatchChunk samples), kernel rows reused as above
  const int64_t nlb = (d.L + kRowBlock - 1) / kRowBlock, nbc = (d.B + kBatchChunk - 1) / kBatchChunk;
  const int64_t task_work = std::min(kBatchChunk, d.B) * std::min(kRowBlock, d.L) * d.C * ((d.f + d.hop - 1) / d.hop);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, task_work));
  at::parallel_for(0, nlb * nbc, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t l0 = (r / nbc) * kRowBlock, l1 = std::min(l0 + kRowBlock, d.L);
      const int64_t b0 = (r % nbc) * kBatchChunk, b1 = std::min(b0 + kBatchChunk, d.B);
      for (int64_t b = b0; b < b1; ++b) {
        const T* kb = k + (d.per_sample ? b * d.N : 0) * d.f * d.C;
        for (int64_t l = l0; l < l1; ++l) {
          // frames n with n*hop <= l < n*hop + f: n in [n0, n1); row j = l - n*hop of frame n's kernel
          const int64_t lo = l - d.f + 1;
          const int64_t n0 = lo <= 0 ? 0 : (lo + d.hop - 1) / d.hop;
          const int64_t n1 = std::min(d.N, l / d.hop + 1);
          T* dxl = dx + (b * d.L + l) * d.C;
          if (n1 <= n0) {  // a row between frames (hop > f) or past the last one
            std::fill(dxl, dxl + d.C, T(0));
            continue;
          }
          // terms gy[b, n] * K[n, l - n*hop]: rows C apart in gy, (f - hop) * C apart in K
          sum_products<T>(gy + (b * d.N + n0) * d.C, d.C, kb + (n0 * d.f + l - n0 * d.hop) * d.C, (d.f - d.hop) * d.C,
                          n1 - n0, nullptr, dxl, d.C);
        }
      }
    }
  });
}

template <typename T>
void dfc_bwd_dk_kernel(const T* gy, const T* x, T* dk, T* dbias, const Dims& d) {
  const int64_t ncb = (d.C + kChannelBlock - 1) / kChannelBlock;
  const int64_t task_work = d.B * (d.f + 1) * std::min(d.C, kChannelBlock);
  const int64_t grain = std::max<int64_t>(1, kGrainWork / std::max<int64_t>(1, task_work));
  at::parallel_for(0, d.N * ncb, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / ncb, c0 = (r % ncb) * kChannelBlock, cw = std::min(kChannelBlock, d.C - c0);
      const T* g = gy + n * d.C + c0;                   // gy[b, n, block]: rows N*C apart over b
      const T* xn = x + n * d.hop * d.C + c0;           // x[b, n*hop + j, block]: rows L*C apart over b
      sum_rows<T>(g, d.N * d.C, d.B, dbias + n * d.C + c0, cw);  // dbias[n, block] = sum_b gy[b, n, block]
      for (int64_t j = 0; j < d.f; ++j) {
        if (d.per_sample) {
          for (int64_t b = 0; b < d.B; ++b)
            sum_products<T>(g + b * d.N * d.C, 0, xn + b * d.L * d.C + j * d.C, 0, 1, nullptr,
                            dk + ((b * d.N + n) * d.f + j) * d.C + c0, cw);
        } else {  // dK[n, j, block] = sum_b gy[b, n, block] * x[b, n*hop + j, block]
          sum_products<T>(g, d.N * d.C, xn + j * d.C, d.L * d.C, d.B, nullptr, dk + (n * d.f + j) * d.C + c0, cw);
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

at::Tensor dfc_fwd_cpu(const at::Tensor& x, const at::Tensor& kernel, const std::optional<at::Tensor>& bias,
                       int64_t frame, int64_t hop) {
  const Dims d = check_inputs("mfdr_C::dfc_fwd_cpu", x, kernel, frame, hop);
  int64_t bias_dim = 0;
  at::Tensor bias_t;
  if (bias.has_value() && bias->defined()) {
    bias_t = bias->contiguous();
    bias_dim = bias_t.dim();
    TORCH_CHECK(bias_t.scalar_type() == x.scalar_type(), "mfdr_C::dfc_fwd_cpu: bias must have the dtype of x");
    TORCH_CHECK((bias_dim == 1 && bias_t.size(0) == d.C) ||
                    (bias_dim == 2 && bias_t.size(0) == d.N && bias_t.size(1) == d.C),
                "mfdr_C::dfc_fwd_cpu: bias must have shape (C,) or (N, C), got ", bias_t.sizes());
  }
  auto y = at::empty({d.B, d.N, d.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dfc_fwd_cpu", [&] {
    dfc_fwd_kernel<scalar_t>(x.const_data_ptr<scalar_t>(), kernel.const_data_ptr<scalar_t>(),
                             bias_dim ? bias_t.const_data_ptr<scalar_t>() : nullptr, bias_dim,
                             y.mutable_data_ptr<scalar_t>(), d);
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dfc_bwd_cpu(const at::Tensor& grad_y, const at::Tensor& x,
                                                           const at::Tensor& kernel, int64_t frame, int64_t hop) {
  const Dims d = check_inputs("mfdr_C::dfc_bwd_cpu", x, kernel, frame, hop);
  TORCH_CHECK(grad_y.is_contiguous() && grad_y.sizes() == at::IntArrayRef({d.B, d.N, d.C}) &&
                  grad_y.scalar_type() == x.scalar_type(),
              "mfdr_C::dfc_bwd_cpu: grad_y must be a contiguous (B, N, C) tensor of the dtype of x");
  auto dx = at::empty(x.sizes(), x.options()), dk = at::empty(kernel.sizes(), kernel.options());
  auto dbias = at::empty({d.N, d.C}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "dfc_bwd_cpu", [&] {
    const scalar_t *gp = grad_y.const_data_ptr<scalar_t>(), *xp = x.const_data_ptr<scalar_t>(),
                   *kp = kernel.const_data_ptr<scalar_t>();
    dfc_bwd_dx_kernel<scalar_t>(gp, kp, dx.mutable_data_ptr<scalar_t>(), d);
    dfc_bwd_dk_kernel<scalar_t>(gp, xp, dk.mutable_data_ptr<scalar_t>(), dbias.mutable_data_ptr<scalar_t>(), d);
  });
  return {dx, dk, dbias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def("dfc_fwd_cpu(Tensor x, Tensor kernel, Tensor? bias, int frame, int hop) -> Tensor");
  m.def("dfc_bwd_cpu(Tensor grad_y, Tensor x, Tensor kernel, int frame, int hop) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mfdr_C, CPU, m) {
  m.impl("dfc_fwd_cpu", &dfc_fwd_cpu);
  m.impl("dfc_bwd_cpu", &dfc_bwd_cpu);
}

}  // namespace mfdr
