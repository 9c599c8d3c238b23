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
// Packed rows (as cuDNN packs sequences): the kernels keep their per-step operands (state, r ⊙ h,
// [z̃, g̃], the d_a's) in internal (B, ·) buffers whose rows are the samples sorted by length, longest
// first. The rows still valid at step t are then a prefix [0, n_t), and every product runs on those n_t
// rows only: padded steps cost nothing, and a padded row's state is carried by not being touched. The
// inputs and outputs keep the caller's order (a row index maps through `order`).
//
// Nothing is allocated per step. The forward saves the gates [r, z̃, u, g̃] of every step (B, L, G, D);
// the backward reads h_{t-1} from H (valid steps are a prefix) and takes the weight gradients after its
// loop, one product each over all B·L rows (padded rows hold zeros).
//
// The pointwise parts run on ATen's vectors (at::vec::Vectorized; exp is Sleef's, as in PyTorch's own
// CPU kernels, and tanh x = 1 - 2 / (exp(2x) + 1)); the capability macros below pick the widest the build
// targets (-march=native).
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

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
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

// 1 - 2 / (exp(2x) + 1): within a few ulp of 1 of tanh (absolute), at two thirds of Sleef's tanh's cost
template <typename T>
inline Vec<T> tanh(const Vec<T>& x) {
  return Vec<T>(1) - Vec<T>(2) / ((x + x).exp() + Vec<T>(1));
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

// The samples sorted by length, longest first: packed row i is sample order[i], and the rows valid at
// step t are [0, valid[t]).
struct Packing {
  std::vector<int64_t> order, valid;
  Packing(const std::vector<int64_t>& len, int64_t steps) : order(len.size()), valid(steps) {
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return len[a] > len[b]; });
    for (int64_t t = 0; t < steps; ++t)
      valid[t] = std::count_if(len.begin(), len.end(), [t](int64_t n) { return n > t; });
  }
};

// Runs fn(i0, i1, c0, c1, seg) over tiles of packed rows [i0, i1) ⊂ [0, rows) x columns [c0, c1) of
// `segments` column ranges of width D each (seg: which one), in parallel.
template <typename F>
void for_tiles(const Dims& d, int64_t rows, int64_t segments, const F& fn) {
  const int64_t nrb = (rows + kRowBlock - 1) / kRowBlock, ncb = (d.D + kColBlock - 1) / kColBlock;
  at::parallel_for(0, nrb * ncb * segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t seg = k / (nrb * ncb), rb = (k / ncb) % nrb, cb = k % ncb;
      const int64_t i0 = rb * kRowBlock, c0 = cb * kColBlock;
      fn(i0, std::min(i0 + kRowBlock, rows), c0, std::min(c0 + kColBlock, d.D), seg);
    }
  });
}

// out[k * ld + n] = W[n][k] for a row-major (D x K) W: W^T, the right-hand (K x D) operand of x W^T, into
// a matrix of row stride ld (several transposes side by side), in cache blocks.
template <typename T>
void transpose_into(const T* W, int64_t D, int64_t K, T* out, int64_t ld) {
  constexpr int64_t kB = 32;
  at::parallel_for(0, (D + kB - 1) / kB, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n0 = begin * kB; n0 < std::min(end * kB, D); n0 += kB)
      for (int64_t k0 = 0; k0 < K; k0 += kB)
        for (int64_t n = n0; n < std::min(n0 + kB, D); ++n)
          for (int64_t k = k0; k < std::min(k0 + kB, K); ++k) out[k * ld + n] = W[n * K + k];
  });
}

// ------------------------------------------------------------------------------------------- forward
template <typename T>
void gcpu_fwd_kernel(const Dims& d, const Packing& pk, const int64_t* len, const T* x_r, const T* x_z,
                     const T* x_g, const T* b_u, const T* h0, const T* WhrT, const T* WrhT, const T* WuT, T* H,
                     T* gates) {
  using V = Vec<T>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2, KU = d.context ? 2 * D : D;
  const int64_t ldg = L * GD;  // row stride of the gates at a fixed step and slot
  const int64_t* order = pk.order.data();
  // packed rows: the state h, r ⊙ h, W_hu rh + b_u, and [z̃ (, g̃)] side by side (the A of the u product)
  std::vector<T> h_buf(B * D, T(0)), rh_buf(B * D), hu_buf(B * D), zg_buf(B * KU);
  T *h = h_buf.data(), *rh = rh_buf.data(), *hu = hu_buf.data(), *zg = zg_buf.data();
  if (h0)
    for (int64_t i = 0; i < B; ++i) std::copy(h0 + order[i] * D, h0 + (order[i] + 1) * D, h + i * D);
  for (int64_t t = 0; t < d.steps; ++t) {
    const int64_t n = pk.valid[t];
    T* gt = gates + t * GD;  // gates[b, t, slot, c] = gt[b * ldg + slot * D + c]
    // (1) r = σ(x_r + W_hr h), rh = r ⊙ h
    for_tiles(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, D, h + i0 * D, D, WhrT + c0, D, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T *a = acc + (i - i0) * w, *xr = x_r + (b * L + t) * D + c0, *hp = h + i * D + c0;
        T *r = gt + b * ldg + R * D + c0, *rhi = rh + i * D + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V rv = sigmoid<T>(V::loadu(xr + k, m) + V::loadu(a + k, m));
          rv.store(r + k, m);
          (rv * V::loadu(hp + k, m)).store(rhi + k, m);
        });
      }
    });
    // (2), (3) and W_hu rh: rh @ [W_hz; W_hu; W_hg]^T, column segments z̃ | u | g̃
    for_tiles(d, n, nseg, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t seg) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, D, rh + i0 * D, D, WrhT + seg * D + c0, nseg * D, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T* a = acc + (i - i0) * w;
        if (seg == 1) {  // W_hu rh + b_u, for (5)
          T* out = hu + i * D + c0;
          vec_loop<T>(w, [&](int64_t k, int64_t m) {
            (V::loadu(a + k, m) + V::loadu(b_u + c0 + k, m)).store(out + k, m);
          });
          continue;
        }
        const T* x = (seg == 0 ? x_z : x_g) + (b * L + t) * D + c0;
        T* out = gt + b * ldg + (seg == 0 ? Z : G) * D + c0;  // z̃ or g̃
        T* packed = zg + i * KU + (seg == 0 ? 0 : D) + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V y = tanh<T>(V::loadu(x + k, m) + V::loadu(a + k, m));
          y.store(out + k, m);
          y.store(packed + k, m);
        });
      }
    });
    // (5), (6): u = σ([z̃, g̃] @ [W_zu, W_gu]^T + W_hu rh + b_u), h_t = rh + u ⊙ (z̃ + g̃), in place
    for_tiles(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, KU, zg + i0 * KU, KU, WuT + c0, D, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T *a = acc + (i - i0) * w, *rhi = rh + i * D + c0, *hui = hu + i * D + c0;
        const T* zgi = zg + i * KU + c0;
        T *u = gt + b * ldg + U * D + c0, *out = H + (b * L + t) * D + c0, *hi = h + i * D + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V uv = sigmoid<T>(V::loadu(a + k, m) + V::loadu(hui + k, m));
          V cand = V::loadu(zgi + k, m);
          if (d.context) cand = cand + V::loadu(zgi + D + k, m);
          uv.store(u + k, m);
          const V hv = V::loadu(rhi + k, m) + uv * cand;
          hv.store(hi + k, m);
          hv.store(out + k, m);
        });
      }
    });
  }
  // Padded steps: H = 0 and gates 0 (never computed; the backward's weight products multiply them by 0)
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::fill(gates + (b * L + len[b]) * GD, gates + (b + 1) * L * GD, T(0));
      std::fill(H + (b * L + len[b]) * D, H + (b + 1) * L * D, T(0));
    }
  });
}

// ------------------------------------------------------------------------------------------- backward
// The backward's per-step operands, packed time-major like cuDNN's packed sequences: step t's valid rows
// are rows [offset[t], offset[t] + valid[t]) in the samples' sorted order, S = Σ lengths rows in all. They
// are the A operands of the step's products, and afterwards those of the weight gradients, whose
// reductions then run over the S valid rows only.
template <typename T>
struct Packed {
  T *au, *azg, *ar, *rh, *hp, *zg;  // d_au, [d_az (, d_ag)], d_ar, r ⊙ h_{t-1}, h_{t-1}, [z̃ (, g̃)]
};

template <typename T>
void gcpu_bwd_kernel(const Dims& d, const Packing& pk, const int64_t* len, const T* gH, const T* H,
                     const T* gates, const T* h0, const T* Wback, const T* Wzg, const T* W_hr, T* d_ar, T* d_az,
                     T* d_ag, const Packed<T>& p, T* dh0) {
  using V = Vec<T>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2, KZ = d.context ? 2 * D : D;
  const int64_t ldg = L * GD;  // row stride of the gates at a fixed step and slot
  const int64_t* order = pk.order.data();
  // packed rows: dh = ∂/∂h_t from the steps after t, dh ⊙ u, d_rh
  std::vector<T> dh_buf(B * D, T(0)), dc_buf(B * D), drh_buf(B * D);
  T *dh = dh_buf.data(), *dc = dc_buf.data(), *drh = drh_buf.data();
  int64_t offset = 0;
  for (int64_t t = 0; t < d.steps; ++t) offset += pk.valid[t];
  const V one(1);
  for (int64_t t = d.steps - 1; t >= 0; --t) {
    const int64_t n = pk.valid[t];
    offset -= n;  // step t's rows of the packed buffers
    const T* gt = gates + t * GD;
    T *au = p.au + offset * D, *azg = p.azg + offset * KZ, *ar = p.ar + offset * D;
    T *rhp = p.rh + offset * D, *hpp = p.hp + offset * D, *zgp = p.zg + offset * KZ;
    // through (6) and the σ of (5): dh += grad_H[t]; d_au = dh ⊙ h̃ ⊙ u(1-u); d_c = dh ⊙ u
    for_tiles(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T *g = gt + b * ldg + c0, *gh = gH + (b * L + t) * D + c0;
        T *dhi = dh + i * D + c0, *dci = dc + i * D + c0, *aui = au + i * D + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V u = V::loadu(g + U * D + k, m), dht = V::loadu(dhi + k, m) + V::loadu(gh + k, m);
          V cand = V::loadu(g + Z * D + k, m);
          if (d.context) cand = cand + V::loadu(g + G * D + k, m);
          dht.store(dhi + k, m);
          (dht * cand * u * (one - u)).store(aui + k, m);
          (dht * u).store(dci + k, m);
        });
      }
    });
    // d_au @ [W_zu | W_gu | W_hu], column segments z̃ | g̃ | rh: the tanh' of (2), (3); d_rh = dh + W_hu^T d_au
    for_tiles(d, n, nseg, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t seg) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, D, au + i0 * D, D, Wback + seg * D + c0, nseg * D, acc, w, false);
      const bool to_rh = seg == nseg - 1;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T* a = acc + (i - i0) * w;
        if (to_rh) {
          const T* dhi = dh + i * D + c0;
          T* out = drh + i * D + c0;
          vec_loop<T>(w, [&](int64_t k, int64_t m) { (V::loadu(dhi + k, m) + V::loadu(a + k, m)).store(out + k, m); });
          continue;
        }
        const int64_t part = seg == 0 ? 0 : D;
        const T *y = gt + b * ldg + (seg == 0 ? Z : G) * D + c0, *dci = dc + i * D + c0;  // z̃ or g̃
        T* out = (seg == 0 ? d_az : d_ag) + (b * L + t) * D + c0;
        T *ap = azg + i * KZ + part + c0, *yp = zgp + i * KZ + part + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V yv = V::loadu(y + k, m), v = (V::loadu(dci + k, m) + V::loadu(a + k, m)) * (one - yv * yv);
          v.store(out + k, m);
          v.store(ap + k, m);
          yv.store(yp + k, m);
        });
      }
    });
    // d_rh += [d_az, d_ag] @ [W_hz; W_hg] (in place); the σ' of (1): d_ar = d_rh ⊙ h_{t-1} ⊙ r(1-r)
    for_tiles(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, KZ, azg + i0 * KZ, KZ, Wzg + c0, D, drh + i0 * D + c0, D, true);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T *r = gt + b * ldg + R * D + c0, *drhi = drh + i * D + c0;
        const T* hp = t > 0 ? H + (b * L + t - 1) * D + c0 : h0 ? h0 + b * D + c0 : nullptr;  // else 0
        T *out = d_ar + (b * L + t) * D + c0, *arp = ar + i * D + c0;
        T *rhi = rhp + i * D + c0, *hpi = hpp + i * D + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          const V rv = V::loadu(r + k, m), hv = hp ? V::loadu(hp + k, m) : V(0);
          const V v = V::loadu(drhi + k, m) * hv * rv * (one - rv);
          v.store(out + k, m);
          v.store(arp + k, m);
          (rv * hv).store(rhi + k, m);
          hv.store(hpi + k, m);
        });
      }
    });
    // dh_{t-1} = d_rh ⊙ r + W_hr^T d_ar
    for_tiles(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      T acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      gemm<T>(i1 - i0, w, D, ar + i0 * D, D, W_hr + c0, D, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const T *a = acc + (i - i0) * w, *r = gt + b * ldg + R * D + c0, *drhi = drh + i * D + c0;
        T* dhi = dh + i * D + c0;
        vec_loop<T>(w, [&](int64_t k, int64_t m) {
          (V::loadu(drhi + k, m) * V::loadu(r + k, m) + V::loadu(a + k, m)).store(dhi + k, m);
        });
      }
    });
  }
  for (int64_t i = 0; i < B; ++i) std::copy(dh + i * D, dh + (i + 1) * D, dh0 + order[i] * D);
  // padded steps: every d_a is 0
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (T* x : {d_ar, d_az, d_ag})
        if (x) std::fill(x + (b * L + len[b]) * D, x + (b + 1) * L * D, T(0));
  });
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

std::tuple<at::Tensor, at::Tensor> gcpu_fwd_cpu(
    const at::Tensor& x_r, const at::Tensor& x_z, const std::optional<at::Tensor>& x_g, const at::Tensor& W_hr,
    const at::Tensor& W_hz, const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
    const std::optional<at::Tensor>& W_gu, const at::Tensor& b_u, const at::Tensor& lengths,
    const std::optional<at::Tensor>& h0) {
  constexpr const char* fn = "mfdr_C::gcpu_fwd_cpu";
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
  auto H = at::empty({B, L, D}, x_r.options());
  auto gates = at::empty({B, L, d.G, D}, x_r.options());
  const Packing pk(len, d.steps);
  AT_DISPATCH_FLOATING_TYPES(x_r.scalar_type(), "gcpu_fwd_cpu", [&] {
    using T = scalar_t;
    // the weights as the right-hand (K x N) operands of the row-major products: transposed once per call
    const int64_t nseg = context ? 3 : 2;
    std::vector<T> WhrT(D * D), WrhT(D * nseg * D), WuT((context ? 2 : 1) * D * D);
    transpose_into(W_hr.const_data_ptr<T>(), D, D, WhrT.data(), D);
    const at::Tensor* rh_side[3] = {&W_hz, &W_hu, context ? &*W_hg : nullptr};  // column segments z̃ | u | g̃
    for (int64_t s = 0; s < nseg; ++s)
      transpose_into(rh_side[s]->const_data_ptr<T>(), D, D, WrhT.data() + s * D, nseg * D);
    transpose_into(W_zu.const_data_ptr<T>(), D, D, WuT.data(), D);  // rows [0, D): z̃ -> u; [D, 2D): g̃ -> u
    if (context) transpose_into(W_gu->const_data_ptr<T>(), D, D, WuT.data() + D * D, D);
    gcpu_fwd_kernel<T>(d, pk, len.data(), x_r.const_data_ptr<T>(), x_z.const_data_ptr<T>(),
                       context ? x_g->const_data_ptr<T>() : nullptr, b_u.const_data_ptr<T>(),
                       has_h0 ? h0->const_data_ptr<T>() : nullptr, WhrT.data(), WrhT.data(), WuT.data(),
                       H.mutable_data_ptr<T>(), gates.mutable_data_ptr<T>());
  });
  return {H, gates};
}

std::vector<at::Tensor> gcpu_bwd_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& gates, const at::Tensor& W_hr,
    const at::Tensor& W_hz, const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
    const std::optional<at::Tensor>& W_gu, const at::Tensor& lengths, const std::optional<at::Tensor>& h0) {
  constexpr const char* fn = "mfdr_C::gcpu_bwd_cpu";
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
  // right-hand operands: d_au -> [z̃ | g̃ | rh] side by side (D x 3D); [d_az, d_ag] -> rh stacked (2D x D)
  const auto Wback =
      at::cat(context ? std::vector<at::Tensor>{W_zu, *W_gu, W_hu} : std::vector<at::Tensor>{W_zu, W_hu}, 1);
  const auto Wzg = context ? at::cat({W_hz, *W_hg}) : W_hz;
  auto dx_r = at::empty({B, L, D}, H.options()), dx_z = at::empty({B, L, D}, H.options());
  auto dx_g = context ? at::empty({B, L, D}, H.options()) : at::Tensor();
  auto dh0 = at::empty({B, D}, H.options());
  const Packing pk(len, d.steps);
  const int64_t S = std::accumulate(len.begin(), len.end(), int64_t(0)), KZ = context ? 2 * D : D;
  // the packed operands (S rows each): d_au, [d_az (, d_ag)], d_ar, r ⊙ h_{t-1}, h_{t-1}, [z̃ (, g̃)]
  auto blocks = at::empty({4 * S * D + 2 * S * KZ}, H.options());
  const auto block = [&](int64_t start, int64_t w) { return blocks.narrow(0, start, S * w).view({S, w}); };
  const auto P_au = block(0, D), P_azg = block(S * D, KZ), P_ar = block(S * (D + KZ), D),
             P_rh = block(S * (2 * D + KZ), D), P_hp = block(S * (3 * D + KZ), D), P_zg = block(S * (4 * D + KZ), KZ);
  AT_DISPATCH_FLOATING_TYPES(H.scalar_type(), "gcpu_bwd_cpu", [&] {
    using T = scalar_t;
    const Packed<T> p{P_au.mutable_data_ptr<T>(), P_azg.mutable_data_ptr<T>(), P_ar.mutable_data_ptr<T>(),
                      P_rh.mutable_data_ptr<T>(), P_hp.mutable_data_ptr<T>(), P_zg.mutable_data_ptr<T>()};
    gcpu_bwd_kernel<T>(d, pk, len.data(), grad_H.const_data_ptr<T>(), H.const_data_ptr<T>(),
                       gates.const_data_ptr<T>(), has_h0 ? h0->const_data_ptr<T>() : nullptr,
                       Wback.const_data_ptr<T>(), Wzg.const_data_ptr<T>(), W_hr.const_data_ptr<T>(),
                       dx_r.mutable_data_ptr<T>(), dx_z.mutable_data_ptr<T>(),
                       context ? dx_g.mutable_data_ptr<T>() : nullptr, p, dh0.mutable_data_ptr<T>());
  });
  // Weight gradients: one product each over the S valid (sample, step) rows, packed.
  auto dW_hr = at::mm(P_ar.t(), P_hp);
  auto dW_hz = at::mm(P_azg.narrow(1, 0, D).t(), P_rh), dW_hu = at::mm(P_au.t(), P_rh);
  auto dW_zu = at::mm(P_au.t(), P_zg.narrow(1, 0, D));
  auto dW_hg = context ? at::mm(P_azg.narrow(1, D, D).t(), P_rh) : at::Tensor();
  auto dW_gu = context ? at::mm(P_au.t(), P_zg.narrow(1, D, D)) : at::Tensor();
  auto db_u = P_au.sum(0);
  // no undefined tensors in a Tensor[] (a Python dispatch mode could not return them): the context ones last
  std::vector<at::Tensor> grads = {dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0};
  if (context) grads.insert(grads.end(), {dx_g, dW_hg, dW_gu});
  return grads;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def(
      "gcpu_fwd_cpu(Tensor x_r, Tensor x_z, Tensor? x_g, Tensor W_hr, Tensor W_hz, Tensor? W_hg, Tensor W_hu, "
      "Tensor W_zu, Tensor? W_gu, Tensor b_u, Tensor lengths, Tensor? h0) -> (Tensor, Tensor)");
  m.def(
      "gcpu_bwd_cpu(Tensor grad_H, Tensor H, Tensor gates, Tensor W_hr, Tensor W_hz, Tensor? W_hg, Tensor W_hu, "
      "Tensor W_zu, Tensor? W_gu, Tensor lengths, Tensor? h0) -> Tensor[]");  // [dx_r, dx_z, dW_hr, dW_hz, dW_hu,
  // dW_zu, db_u, dh0] and, with context, [dx_g, dW_hg, dW_gu]
}

TORCH_LIBRARY_IMPL(mfdr_C, CPU, m) {
  m.impl("gcpu_fwd_cpu", &gcpu_fwd_cpu);
  m.impl("gcpu_bwd_cpu", &gcpu_bwd_cpu);
}

}  // namespace mfdr
