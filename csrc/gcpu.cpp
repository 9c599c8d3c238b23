// GCPU recurrence (paper eqs. 1-6, SPEC §3): CPU forward and backpropagation through time.
//
// Per step t, with h = h_{t-1} and row vectors (W x is x W^T):
//   r = σ(x_r[t] + W_hr h);  rh = r ⊙ h;  z̃ = tanh(x_z[t] + W_hz rh);  g̃ = tanh(x_g[t] + W_hg rh)
//   u = σ(W_zu z̃ + W_gu g̃ + W_hu rh + b_u);  h_t = rh + u ⊙ (z̃ + g̃)        (no g̃ without context)
// Steps t >= len[b] carry h and output 0. The input-side terms x_r, x_z, x_g come precomputed for all
// steps; only the products with the state are done here, three dependent ones per step:
//   forward   h -> r;        rh -> [z̃, u, g̃];       [z̃, g̃] -> u
//   backward  d_au -> [z̃, g̃, rh];  [d_az, d_ag] -> rh;  d_ar -> h
// Each of them is one parallel region: at::parallel_for over tiles of (kRowBlock batch rows, kColBlock
// columns); a tile multiplies its rows by its columns of the weights into a small accumulator (ATen's
// brgemm micro-kernel for float where the build has it, else at::mm), and applies the step's pointwise
// equations to it right away (the "epilogue"), writing gates, states and gradients. A region's tiles
// read whole rows of their inputs and write only their own columns, so they never race; the next
// region starts after the barrier at the end of at::parallel_for.
//
// Nothing is allocated per step. The forward saves the gates [r, z̃, u, g̃] of every step (B, L, G, D);
// the backward reads h_{t-1} from H (valid steps are a prefix) and takes the weight gradients after its
// loop, one product each over all B·L rows. Steps past the longest sequence are skipped.
//
// The pointwise parts run on ATen's vectors (at::vec::Vectorized: Sleef's exp and tanh, as PyTorch's
// own CPU kernels use); the capability macros below pick the widest the build targets (-march=native).
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/native/CPUBlas.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "output_cache.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace mfdr {
namespace {

constexpr int64_t kRowBlock = 32;  // batch rows per tile
constexpr int64_t kColBlock = 64;  // columns per tile (the brgemm micro-kernel's sweet spot)
constexpr int R = 0, Z = 1, U = 2, G = 3;  // slots of the saved gates

template <typename T>
using Vec = at::vec::Vectorized<T>;

template <typename T>
inline Vec<T> sigmoid(const Vec<T>& x) {
  return Vec<T>(1) / (Vec<T>(1) + x.neg().exp());
}

// fn(i, n) over [0, size) in vectors: n == Vec<T>::size() but for a shorter tail. Inside, load with
// Vec<T>::loadu(p + i, n) and store with v.store(p + i, n).
template <typename T, typename F>
inline void vec_loop(int64_t size, const F& fn) {
  constexpr int64_t W = Vec<T>::size();
  int64_t i = 0;
  for (; i + W <= size; i += W) fn(i, W);
  if (i < size) fn(i, size - i);
}

// Whether ATen's float brgemm (oneDNN micro-kernel) runs in this build and on this CPU: tried once on a
// 2x2 product whose result is checked.
bool brgemm_float_works() {
  static const bool ok = [] {
    try {
      const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
      float c[4] = {0, 0, 0, 0};
      at::native::cpublas::brgemm(2, 2, 2, 2, 2, 2, false, a, b, c, false);
      return c[0] == 19 && c[1] == 22 && c[2] == 43 && c[3] == 50;
    } catch (...) {
      return false;
    }
  }();
  return ok;
}

// C (M x N, row stride ldc) = [C +] A (M x K, lda) @ B (K x N, ldb); all row-major.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
          bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    if (brgemm_float_works()) {
      at::native::cpublas::brgemm(M, N, K, lda, ldb, ldc, accumulate, A, B, C, false);
      return;
    }
  }
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  auto a = at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
  auto b = at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
  auto c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
  if (accumulate)
    c.addmm_(a, b);
  else
    at::mm_out(c, a, b);
}

struct Dims {
  int64_t B, L, D, G;  // G: gate slots, 4 with context, 3 without
  bool context;
  int64_t steps;  // the longest sequence: steps past it are all padding
};

// Runs fn(b0, b1, c0, c1, seg) over tiles of rows [b0, b1) x columns [c0, c1) of `segments` column
// ranges of width D each (seg: which one), in parallel.
template <typename F>
void for_tiles(const Dims& d, int64_t segments, const F& fn) {
  const int64_t nrb = (d.B + kRowBlock - 1) / kRowBlock, ncb = (d.D + kColBlock - 1) / kColBlock;
  at::parallel_for(0, nrb * ncb * segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t seg = i / (nrb * ncb), rb = (i / ncb) % nrb, cb = i % ncb;
      const int64_t b0 = rb * kRowBlock, c0 = cb * kColBlock;
      fn(b0, std::min(b0 + kRowBlock, d.B), c0, std::min(c0 + kColBlock, d.D), seg);
    }
  });
}

// ------------------------------------------------------------------------------------------- forward
template <typename T>
void forward_kernel(const Dims& d, const T* x_r, const T* x_z, const T* x_g, const T* b_u, const int64_t* len,
                    const T* h0, const T* WhrT, const T* WrhT, const T* WzuT, const T* WguT, T* H, T* gates) {
  using V = Vec<T>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2;
  const int64_t ldg = L * GD;  // row stride of the gates at a fixed step and slot
  std::vector<T> state(2 * B * D), rh_buf(B * D), hu_buf(B * D);  // h ping-pong; r ⊙ h; W_hu rh + b_u
  T *h = state.data(), *h_next = state.data() + B * D, *rh = rh_buf.data(), *hu = hu_buf.data();
  if (h0) std::memcpy(h, h0, sizeof(T) * B * D);  // else the zero state of the vector's initialization
  for (int64_t t = 0; t < d.steps; ++t) {
    T* gt = gates + t * GD;  // gates[b, t, slot, c] = gt[b * ldg + slot * D + c]
    // (1) r = σ(x_r + W_hr h), rh = r ⊙ h
    for_tiles(d, 1, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(b1 - b0, w, D, h + b0 * D, D, WhrT + c0, D, acc, w, false);
      for (int64_t b = b0; b < b1; ++b) {
        const T *a = acc + (b - b0) * w, *xr = x_r + (b * L + t) * D + c0, *hp = h + b * D + c0;
        T *r = gt + b * ldg + R * D + c0, *rhb = rh + b * D + c0;
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          const V rv = sigmoid<T>(V::loadu(xr + i, n) + V::loadu(a + i, n));
          rv.store(r + i, n);
          (rv * V::loadu(hp + i, n)).store(rhb + i, n);
        });
      }
    });
    // (2), (3) and W_hu rh: rh @ [W_hz; W_hu; W_hg]^T, column segments z̃ | u | g̃
    for_tiles(d, nseg, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t seg) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(b1 - b0, w, D, rh + b0 * D, D, WrhT + seg * D + c0, nseg * D, acc, w, false);
      for (int64_t b = b0; b < b1; ++b) {
        const T* a = acc + (b - b0) * w;
        if (seg == 1) {  // W_hu rh + b_u, for (5)
          T* out = hu + b * D + c0;
          vec_loop<T>(w, [&](int64_t i, int64_t n) { (V::loadu(a + i, n) + V::loadu(b_u + c0 + i, n)).store(out + i, n); });
          continue;
        }
        const T* x = (seg == 0 ? x_z : x_g) + (b * L + t) * D + c0;
        T* out = gt + b * ldg + (seg == 0 ? Z : G) * D + c0;  // z̃ or g̃
        vec_loop<T>(w, [&](int64_t i, int64_t n) { (V::loadu(x + i, n) + V::loadu(a + i, n)).tanh().store(out + i, n); });
      }
    });
    // (5), (6): u = σ(W_zu z̃ + W_gu g̃ + W_hu rh + b_u), h_t = rh + u ⊙ (z̃ + g̃); padded rows carry h
    for_tiles(d, 1, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(b1 - b0, w, D, gt + b0 * ldg + Z * D, ldg, WzuT + c0, D, acc, w, false);
      if (d.context) gemm<T>(b1 - b0, w, D, gt + b0 * ldg + G * D, ldg, WguT + c0, D, acc, w, true);
      for (int64_t b = b0; b < b1; ++b) {
        T *out = H + (b * L + t) * D + c0, *hn = h_next + b * D + c0;
        const T* hp = h + b * D + c0;
        if (t >= len[b]) {
          std::copy(hp, hp + w, hn);
          std::fill(out, out + w, T(0));
          continue;
        }
        const T *a = acc + (b - b0) * w, *rhb = rh + b * D + c0, *hub = hu + b * D + c0;
        T* g = gt + b * ldg + c0;
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          const V u = sigmoid<T>(V::loadu(a + i, n) + V::loadu(hub + i, n));
          V cand = V::loadu(g + Z * D + i, n);
          if (d.context) cand = cand + V::loadu(g + G * D + i, n);
          u.store(g + U * D + i, n);
          const V hv = V::loadu(rhb + i, n) + u * cand;
          hv.store(hn + i, n);
          hv.store(out + i, n);
        });
      }
    });
    std::swap(h, h_next);
  }
  // Padded steps: H = 0 (the steps past the longest sequence were not run), and gates 0 whatever their
  // inputs held (the backward uses no padded gate, but its weight products multiply them by zeros).
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::fill(gates + (b * L + len[b]) * GD, gates + (b + 1) * L * GD, T(0));
      std::fill(H + (b * L + d.steps) * D, H + (b + 1) * L * D, T(0));
    }
  });
}

// ------------------------------------------------------------------------------------------- backward
template <typename T>
void backward_kernel(const Dims& d, const T* gH, const T* H, const T* gates, const int64_t* len, const T* h0,
                     const T* Wback, const T* W_hz, const T* W_hg, const T* W_hr, T* d_ar, T* d_az, T* d_ag,
                     T* d_au, T* dh0) {
  using V = Vec<T>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2;
  const int64_t ldg = L * GD, ldx = L * D;  // row strides at a fixed step: gates, (B, L, D) tensors
  std::vector<T> dh_buf(B * D, T(0)), dc_buf(B * D), drh_buf(B * D);
  T *dh = dh_buf.data(), *dc = dc_buf.data(), *drh = drh_buf.data();  // dh: ∂/∂h_t from the steps after t
  const V one(1);
  for (int64_t t = d.steps - 1; t >= 0; --t) {
    const T* gt = gates + t * GD;
    // through (6) and the σ of (5): dh += grad_H[t]; d_au = dh ⊙ h̃ ⊙ u(1-u); d_c = dh ⊙ u
    for_tiles(d, 1, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      for (int64_t b = b0; b < b1; ++b) {
        T* au = d_au + (b * L + t) * D + c0;
        if (t >= len[b]) {  // padded: dh passes unchanged (it is 0: no later step is valid)
          std::fill(au, au + w, T(0));
          continue;
        }
        const T *g = gt + b * ldg + c0, *gh = gH + (b * L + t) * D + c0;
        T *dhb = dh + b * D + c0, *dcb = dc + b * D + c0;
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          const V u = V::loadu(g + U * D + i, n), dht = V::loadu(dhb + i, n) + V::loadu(gh + i, n);
          V cand = V::loadu(g + Z * D + i, n);
          if (d.context) cand = cand + V::loadu(g + G * D + i, n);
          dht.store(dhb + i, n);
          (dht * cand * u * (one - u)).store(au + i, n);
          (dht * u).store(dcb + i, n);
        });
      }
    });
    // d_au @ [W_zu | W_gu | W_hu], column segments z̃ | g̃ | rh: the tanh' of (2), (3); d_rh = dh + W_hu^T d_au
    for_tiles(d, nseg, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t seg) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(b1 - b0, w, D, d_au + (b0 * L + t) * D, ldx, Wback + seg * D + c0, nseg * D, acc, w, false);
      const bool to_rh = seg == nseg - 1;
      for (int64_t b = b0; b < b1; ++b) {
        const T* a = acc + (b - b0) * w;
        T* out = to_rh ? drh + b * D + c0 : (seg == 0 ? d_az : d_ag) + (b * L + t) * D + c0;
        if (t >= len[b]) {
          std::fill(out, out + w, T(0));
          continue;
        }
        if (to_rh) {
          const T* dhb = dh + b * D + c0;
          vec_loop<T>(w, [&](int64_t i, int64_t n) { (V::loadu(dhb + i, n) + V::loadu(a + i, n)).store(out + i, n); });
          continue;
        }
        const T *y = gt + b * ldg + (seg == 0 ? Z : G) * D + c0, *dcb = dc + b * D + c0;  // z̃ or g̃
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          const V yv = V::loadu(y + i, n);
          ((V::loadu(dcb + i, n) + V::loadu(a + i, n)) * (one - yv * yv)).store(out + i, n);
        });
      }
    });
    // d_rh += W_hz^T d_az + W_hg^T d_ag (accumulated in place); the σ' of (1): d_ar = d_rh ⊙ h_{t-1} ⊙ r(1-r)
    for_tiles(d, 1, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      T* drh_tile = drh + b0 * D + c0;
      gemm<T>(b1 - b0, w, D, d_az + (b0 * L + t) * D, ldx, W_hz + c0, D, drh_tile, D, true);
      if (d.context) gemm<T>(b1 - b0, w, D, d_ag + (b0 * L + t) * D, ldx, W_hg + c0, D, drh_tile, D, true);
      for (int64_t b = b0; b < b1; ++b) {
        T* out = d_ar + (b * L + t) * D + c0;
        if (t >= len[b]) {
          std::fill(out, out + w, T(0));
          continue;
        }
        const T *r = gt + b * ldg + R * D + c0, *drb = drh + b * D + c0;
        const T* hp = (t > 0 ? H + (b * L + t - 1) * D : h0 + b * D) + c0;
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          const V rv = V::loadu(r + i, n);
          (V::loadu(drb + i, n) * V::loadu(hp + i, n) * rv * (one - rv)).store(out + i, n);
        });
      }
    });
    // dh_{t-1} = d_rh ⊙ r + W_hr^T d_ar (padded rows: unchanged)
    for_tiles(d, 1, [&](int64_t b0, int64_t b1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(b1 - b0, w, D, d_ar + (b0 * L + t) * D, ldx, W_hr + c0, D, acc, w, false);
      for (int64_t b = b0; b < b1; ++b) {
        if (t >= len[b]) continue;
        const T *a = acc + (b - b0) * w, *r = gt + b * ldg + R * D + c0, *drb = drh + b * D + c0;
        T* dhb = dh + b * D + c0;
        vec_loop<T>(w, [&](int64_t i, int64_t n) {
          (V::loadu(drb + i, n) * V::loadu(r + i, n) + V::loadu(a + i, n)).store(dhb + i, n);
        });
      }
    });
  }
  std::memcpy(dh0, dh, sizeof(T) * B * D);
}

// ------------------------------------------------------------------------------------------- entry points
// Checks the tensors; returns the sizes, and the lengths clamped to [0, L] in `len` (unchecked values never
// index out of bounds; op.py checks them where MFDR_KERNELS_CHECK_VALUES says so).
Dims check_inputs(const char* fn, const at::Tensor& x_r, bool context, const at::Tensor& lengths,
                  const std::vector<const at::Tensor*>& same, std::vector<int64_t>& len) {
  TORCH_CHECK(x_r.dim() == 3, fn, ": x_r must be a (B, L, D) tensor, got shape ", x_r.sizes());
  const int64_t B = x_r.size(0), L = x_r.size(1), D = x_r.size(2);
  for (const at::Tensor* t : same) {
    TORCH_CHECK(t->is_contiguous() && t->scalar_type() == x_r.scalar_type(), fn,
                ": every tensor must be contiguous with the dtype of x_r");
    TORCH_CHECK(t->device().is_cpu(), fn, ": CPU tensors only");
  }
  TORCH_CHECK(lengths.dim() == 1 && lengths.size(0) == B && lengths.scalar_type() == at::kLong &&
                  lengths.is_contiguous(),
              fn, ": lengths must be a contiguous int64 (B,) tensor");
  const int64_t* given = lengths.const_data_ptr<int64_t>();
  len.resize(B);
  int64_t steps = 0;
  for (int64_t b = 0; b < B; ++b) {
    len[b] = std::clamp<int64_t>(given[b], 0, L);
    steps = std::max(steps, len[b]);
  }
  return Dims{B, L, D, context ? 4 : 3, context, steps};
}

void check_shape(const char* fn, const char* name, const at::Tensor& t, at::IntArrayRef shape) {
  TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

std::tuple<at::Tensor, at::Tensor> gcpu_forward(
    const at::Tensor& x_r, const at::Tensor& x_z, const std::optional<at::Tensor>& x_g, const at::Tensor& W_hr,
    const at::Tensor& W_hz, const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
    const std::optional<at::Tensor>& W_gu, const at::Tensor& b_u, const at::Tensor& lengths,
    const std::optional<at::Tensor>& h0) {
  constexpr const char* fn = "mfdr_C::gcpu_forward";
  std::vector<const at::Tensor*> same = {&x_r, &x_z, &W_hr, &W_hz, &W_hu, &W_zu, &b_u};
  const bool context = x_g.has_value() && x_g->defined(), has_h0 = h0.has_value() && h0->defined();
  TORCH_CHECK(context == (W_hg.has_value() && W_hg->defined()) && context == (W_gu.has_value() && W_gu->defined()),
              fn, ": x_g, W_hg and W_gu must be all given (context) or all None");
  if (context) same.insert(same.end(), {&*x_g, &*W_hg, &*W_gu});
  if (has_h0) same.push_back(&*h0);
  std::vector<int64_t> len;
  const Dims d = check_inputs(fn, x_r, context, lengths, same, len);
  const int64_t B = d.B, L = d.L, D = d.D;
  for (const at::Tensor* t : {&x_z, context ? &*x_g : &x_z}) check_shape(fn, "x_z and x_g", *t, {B, L, D});
  for (const at::Tensor* t : {&W_hr, &W_hz, &W_hu, &W_zu}) check_shape(fn, "each W", *t, {D, D});
  if (context) for (const at::Tensor* t : {&*W_hg, &*W_gu}) check_shape(fn, "each W", *t, {D, D});
  check_shape(fn, "b_u", b_u, {D});
  if (has_h0) check_shape(fn, "h0", *h0, {B, D});
  // the weights as the right-hand (K x N) operands of the row-major products: transposes, built once
  const auto WhrT = W_hr.t().contiguous(), WzuT = W_zu.t().contiguous();
  const auto WrhT = (context ? at::cat({W_hz, W_hu, *W_hg}) : at::cat({W_hz, W_hu})).t().contiguous();
  const auto WguT = context ? W_gu->t().contiguous() : at::Tensor();
  auto H = cached_empty({B, L, D}, x_r.options());
  auto gates = cached_empty({B, L, d.G, D}, x_r.options());
  AT_DISPATCH_FLOATING_TYPES(x_r.scalar_type(), "mfdr_gcpu_forward", [&] {
    forward_kernel<scalar_t>(
        d, x_r.const_data_ptr<scalar_t>(), x_z.const_data_ptr<scalar_t>(),
        context ? x_g->const_data_ptr<scalar_t>() : nullptr, b_u.const_data_ptr<scalar_t>(),
        len.data(), has_h0 ? h0->const_data_ptr<scalar_t>() : nullptr, WhrT.const_data_ptr<scalar_t>(),
        WrhT.const_data_ptr<scalar_t>(), WzuT.const_data_ptr<scalar_t>(),
        context ? WguT.const_data_ptr<scalar_t>() : nullptr, H.mutable_data_ptr<scalar_t>(),
        gates.mutable_data_ptr<scalar_t>());
  });
  return {H, gates};
}

std::vector<at::Tensor> gcpu_backward(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& gates, const at::Tensor& W_hr,
    const at::Tensor& W_hz, const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
    const std::optional<at::Tensor>& W_gu, const at::Tensor& lengths, const std::optional<at::Tensor>& h0) {
  constexpr const char* fn = "mfdr_C::gcpu_backward";
  std::vector<const at::Tensor*> same = {&grad_H, &H, &gates, &W_hr, &W_hz, &W_hu, &W_zu};
  const bool context = W_hg.has_value() && W_hg->defined(), has_h0 = h0.has_value() && h0->defined();
  TORCH_CHECK(context == (W_gu.has_value() && W_gu->defined()), fn, ": W_hg and W_gu must be both given or None");
  if (context) same.insert(same.end(), {&*W_hg, &*W_gu});
  if (has_h0) same.push_back(&*h0);
  std::vector<int64_t> len;
  const Dims d = check_inputs(fn, H, context, lengths, same, len);
  const int64_t B = d.B, L = d.L, D = d.D;
  check_shape(fn, "grad_H", grad_H, {B, L, D});
  check_shape(fn, "gates", gates, {B, L, d.G, D});
  for (const at::Tensor* t : {&W_hr, &W_hz, &W_hu, &W_zu}) check_shape(fn, "each W", *t, {D, D});
  if (context) for (const at::Tensor* t : {&*W_hg, &*W_gu}) check_shape(fn, "each W", *t, {D, D});
  if (has_h0) check_shape(fn, "h0", *h0, {B, D});
  const auto h0_or_zeros = has_h0 ? *h0 : at::zeros({B, D}, H.options());
  const auto Wback = at::cat(context ? std::vector<at::Tensor>{W_zu, *W_gu, W_hu} : std::vector<at::Tensor>{W_zu, W_hu}, 1);
  auto dx_r = cached_empty({B, L, D}, H.options()), dx_z = cached_empty({B, L, D}, H.options());
  auto dx_g = context ? cached_empty({B, L, D}, H.options()) : at::Tensor();
  auto d_au = cached_empty({B, L, D}, H.options());
  auto dh0 = at::empty({B, D}, H.options());
  // steps past the longest sequence are padding in every row: their d_a are 0
  if (d.steps < L) {
    for (at::Tensor* t : {&dx_r, &dx_z, &d_au, context ? &dx_g : &d_au}) t->narrow(1, d.steps, L - d.steps).zero_();
  }
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "mfdr_gcpu_backward", [&] {
    backward_kernel<scalar_t>(
        d, grad_H.const_data_ptr<scalar_t>(), H.const_data_ptr<scalar_t>(), gates.const_data_ptr<scalar_t>(),
        len.data(), h0_or_zeros.const_data_ptr<scalar_t>(), Wback.const_data_ptr<scalar_t>(),
        W_hz.const_data_ptr<scalar_t>(), context ? W_hg->const_data_ptr<scalar_t>() : nullptr,
        W_hr.const_data_ptr<scalar_t>(), dx_r.mutable_data_ptr<scalar_t>(), dx_z.mutable_data_ptr<scalar_t>(),
        context ? dx_g.mutable_data_ptr<scalar_t>() : nullptr, d_au.mutable_data_ptr<scalar_t>(),
        dh0.mutable_data_ptr<scalar_t>());
  });
  // Weight gradients: one product each over all B·L rows (padded rows have d_a = 0). h_{t-1} of step t
  // is H[:, t-1] for t >= 1 (valid steps are a prefix) and h0 for t = 0.
  auto h_prev = cached_empty({B, L, D}, H.options());
  h_prev.select(1, 0).copy_(h0_or_zeros);
  if (L > 1) h_prev.narrow(1, 1, L - 1).copy_(H.narrow(1, 0, L - 1));
  const auto rows = [&](const at::Tensor& x) { return x.reshape({B * L, D}); };
  auto rh = rows(gates.select(2, R)).mul(rows(h_prev));
  auto dW_hr = at::mm(rows(dx_r).t(), rows(h_prev));
  auto dW_hz = at::mm(rows(dx_z).t(), rh), dW_hu = at::mm(rows(d_au).t(), rh);
  auto dW_zu = at::mm(rows(d_au).t(), rows(gates.select(2, Z)));
  auto dW_hg = context ? at::mm(rows(dx_g).t(), rh) : at::Tensor();
  auto dW_gu = context ? at::mm(rows(d_au).t(), rows(gates.select(2, G))) : at::Tensor();
  auto db_u = rows(d_au).sum(0);
  // no undefined tensors in a Tensor[] (a Python dispatch mode could not return them): the context ones last
  std::vector<at::Tensor> grads = {dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0};
  if (context) grads.insert(grads.end(), {dx_g, dW_hg, dW_gu});
  return grads;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def(
      "gcpu_forward(Tensor x_r, Tensor x_z, Tensor? x_g, Tensor W_hr, Tensor W_hz, Tensor? W_hg, Tensor W_hu, "
      "Tensor W_zu, Tensor? W_gu, Tensor b_u, Tensor lengths, Tensor? h0) -> (Tensor, Tensor)");
  m.def(
      "gcpu_backward(Tensor grad_H, Tensor H, Tensor gates, Tensor W_hr, Tensor W_hz, Tensor? W_hg, Tensor W_hu, "
      "Tensor W_zu, Tensor? W_gu, Tensor lengths, Tensor? h0) -> Tensor[]");  // [dx_r, dx_z, dW_hr, dW_hz, dW_hu,
  // dW_zu, db_u, dh0] and, with context, [dx_g, dW_hg, dW_gu]
}

TORCH_LIBRARY_IMPL(mfdr_C, CPU, m) {
  m.impl("gcpu_forward", &gcpu_forward);
  m.impl("gcpu_backward", &gcpu_backward);
}

}  // namespace mfdr
