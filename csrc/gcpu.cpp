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
//
// bf16 tensors (what CPU autocast gives): bf16 loads and stores, everything else in fp32 — the state, the
// gates (saved in fp32), the pointwise math, the products' accumulators. The products run on bf16 operands
// (oneDNN's brgemm on AMX where the CPU has it; ATen's bf16 GEMM elsewhere), the fp32 left-hand values
// split into two bf16 parts, so that the result is that of fp32 products to about 2^-16 (see Operand<BF16>);
// the weight gradients likewise, each one bf16 product rounded once.
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__)
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#endif
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
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
#include <memory>
#include <numeric>
#include <type_traits>
#include <vector>

namespace mfdr {
namespace {

constexpr int64_t kRowBlock = 32;  // batch rows per tile
constexpr int64_t kColBlock = 64;  // columns per tile (the brgemm micro-kernel's sweet spot)
constexpr int R = 0, Z = 1, U = 2, G = 3;  // slots of the saved gates

using BF16 = c10::BFloat16;
template <typename T>
constexpr bool kBF16 = std::is_same_v<T, BF16>;
// The type a kernel on T tensors computes, keeps its state and saves its gates in: float for bf16
template <typename T>
using acc_t = at::opmath_type<T>;

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
// Vec<T>::loadu(p + i, n) (or load(p + i, n) from a tensor's memory) and store with v.store(p + i, n).
template <typename T, typename F>
inline void vec_loop(int64_t size, const F& fn) {
  constexpr int64_t W = Vec<T>::size();
  int64_t i = 0;
  for (; i + W <= size; i += W) fn(i, W);
  if (i < size) fn(i, size - i);
}

// m <= Vec<acc_t<T>>::size() values between a tensor's memory (type T) and a vector of the accumulation type:
// bf16 widened on load (exact) and rounded to nearest even on store (as c10::BFloat16 rounds).
template <typename T>
inline Vec<T> load(const T* p, int64_t m) {
  return Vec<T>::loadu(p, m);
}
template <typename T>
inline void store(T* p, const Vec<T>& v, int64_t m) {
  v.store(p, m);
}
#if defined(CPU_CAPABILITY_AVX512)
// 16 lanes as bf16 bits; (the maskz forms with a full mask where the plain form would do: the same
// instructions, without GCC 12's false warnings about the plain forms' undefined pass-through operand)
inline __mmask16 lanes(int64_t m) {
  return static_cast<__mmask16>((uint32_t(1) << m) - 1);
}
inline Vec<float> widen(__m256i h) {
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xffff, _mm512_maskz_cvtepu16_epi32(0xffff, h), 16));
}
inline __m256i round_bf16(const Vec<float>& v) {
#if defined(__AVX512BF16__)
  const __m256bh h = _mm512_cvtneps_pbh(__m512(v));
  __m256i bits;
  std::memcpy(&bits, &h, sizeof(bits));
  return bits;
#else  // to nearest even in integers; NaN -> the quiet NaN 0x7fc0 (as c10 rounds)
  const __m512i u = _mm512_castps_si512(__m512(v)), one = _mm512_set1_epi32(1);
  const __m512i odd = _mm512_maskz_and_epi32(0xffff, _mm512_maskz_srli_epi32(0xffff, u, 16), one);
  const __m512i up = _mm512_add_epi32(u, _mm512_add_epi32(odd, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(__m512(v), __m512(v), _CMP_UNORD_Q);
  const __m512i r = _mm512_mask_mov_epi32(_mm512_maskz_srli_epi32(0xffff, up, 16), nan, _mm512_set1_epi32(0x7fc0));
  return _mm512_maskz_cvtepi32_epi16(0xffff, r);
#endif
}
inline Vec<float> load(const BF16* p, int64_t m) {
  return widen(_mm256_maskz_loadu_epi16(lanes(m), p));
}
inline void store(BF16* p, const Vec<float>& v, int64_t m) {
  _mm256_mask_storeu_epi16(p, lanes(m), round_bf16(v));
}
// hi = bf16(v) into `hi` (and `hi2` where given), lo = bf16(v - hi) into `lo` (where given)
inline void split_store(BF16* hi, BF16* lo, BF16* hi2, const Vec<float>& v, int64_t m) {
  const __m256i h = round_bf16(v);
  _mm256_mask_storeu_epi16(hi, lanes(m), h);
  if (hi2) _mm256_mask_storeu_epi16(hi2, lanes(m), h);
  if (lo) _mm256_mask_storeu_epi16(lo, lanes(m), round_bf16(v - widen(h)));
}
#else
inline Vec<float> load(const BF16* p, int64_t m) {
  float f[Vec<float>::size()];
  for (int64_t k = 0; k < m; ++k) f[k] = static_cast<float>(p[k]);
  return Vec<float>::loadu(f, m);
}
inline void store(BF16* p, const Vec<float>& v, int64_t m) {
  float f[Vec<float>::size()];
  v.store(f, m);
  for (int64_t k = 0; k < m; ++k) p[k] = static_cast<BF16>(f[k]);
}
inline void split_store(BF16* hi, BF16* lo, BF16* hi2, const Vec<float>& v, int64_t m) {
  store(hi, v, m);
  if (hi2) std::memcpy(hi2, hi, m * sizeof(BF16));
  if (lo) store(lo, v - load(hi, m), m);
}
#endif

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

// Whether the bf16 products run on AMX: oneDNN's brgemm on right-hand operands packed in its VNNI layout
// (pairs of rows interleaved). Elsewhere ATen's bf16 GEMM takes them unpacked (correct, not fast).
bool bf16_vnni() {
  static const bool ok = at::native::cpublas::could_pack(at::kBFloat16);
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

// Rows of a kernel's packed operands (one row per packed sample, `ld` apart), written by put(row, column,
// vector): for float and double, the values themselves (x).
template <typename T>
struct Operand {
  acc_t<T>* x;
  int64_t ld;
  void put(int64_t i, int64_t c, const Vec<acc_t<T>>& v, int64_t m) const { v.store(x + i * ld + c, m); }
  Operand at(int64_t row) const { return {x + row * ld, ld}; }
};

// bf16 products, in fp32. A value x of the accumulation type enters a product as two bf16 numbers, hi =
// bf16(x) and lo = bf16(x - hi): hi + lo holds x to about 16 significant bits, and each bf16 product is
// exact in fp32, so x @ W on bf16 W (the weights are bf16 tensors) is one bf16 product of [hi, lo] @ [W; W]
// over twice the K, accumulated in fp32, nearly as exact as in fp32 (hi alone would round the state to 8
// bits at every step). A weight gradient a^T b, both sides computed: hi_a hi_b + lo_a hi_b (a's lo kept,
// b rounded once: half the rounding error of a plain bf16 product, at 2/3 the cost of adding hi_a lo_b).
//
// bf16: the fp32 values (x, where a reader needs them, else null) and their split, rows of bf16 `lda` apart
// made of chunks `kp` wide (kp even: AMX multiplies pairs of columns; the padding stays 0): hi in chunk 0,
// lo in chunk `lo_at` where it is non-zero, and where `hi_at` is non-zero hi again in that chunk. A product's
// left-hand operand reads chunks [hi, lo] of its rows. A weight gradient reads the chunks as rows of their own
// (2 per row, kp apart): a's [hi, lo] against b's [hi, hi], one product over 2x the rows.
template <>
struct Operand<BF16> {
  float* x;
  int64_t ld;
  BF16* p;
  int64_t lda, kp, lo_at, hi_at;
  void put(int64_t i, int64_t c, const Vec<float>& v, int64_t m) const {
    if (x) v.store(x + i * ld + c, m);
    BF16* hi = p + i * lda + c;
    split_store(hi, lo_at ? hi + lo_at * kp : nullptr, hi_at ? hi + hi_at * kp : nullptr, v, m);
  }
  Operand at(int64_t row) const { return {x ? x + row * ld : nullptr, ld, p + row * lda, lda, kp, lo_at, hi_at}; }
};

int64_t even(int64_t k) {
  return k + (k & 1);
}

// The right-hand (K x N) operand of a product: a row-major matrix for float and double.
template <typename T>
struct Right {
  const T* b = nullptr;
  int64_t ld = 0;
  // C (M x w, row stride ldc) = [C +] rows [i0, i0 + M) of a (K columns) @ columns [c0, c0 + w)
  void mul(const Operand<T>& a, int64_t i0, int64_t M, int64_t K, int64_t c0, int64_t w, T* C, int64_t ldc,
           bool accumulate) const {
    gemm<T>(M, w, K, a.x + i0 * a.ld, a.ld, b + c0, ld, C, ldc, accumulate);
  }
};

// bf16: column tiles of kColBlock, each [B; B] (2 Kp x kColBlock, Kp = K rounded up to even, zero padding)
// for the [hi, lo] left-hand operand, packed for AMX where it runs. B is `parts` stacked along K, each a
// (Kpart x N) matrix with row stride N, or with `transposed` its transpose (N x Kpart: a weight W whose
// x W^T this product computes).
template <>
struct Right<BF16> {
  std::unique_ptr<BF16[]> tiles;
  int64_t Kp = 0;
  Right() = default;
  Right(const std::vector<const BF16*>& parts, int64_t Kpart, int64_t N, bool transposed)
      : Kp(even(Kpart * int64_t(parts.size()))) {
    const int64_t K = Kpart * int64_t(parts.size()), ntiles = (N + kColBlock - 1) / kColBlock;
    const int64_t tile = 2 * Kp * kColBlock;
    tiles.reset(new BF16[ntiles * tile]);
    const bool vnni = bf16_vnni();
    at::parallel_for(0, ntiles, 1, [&](int64_t begin, int64_t end) {
      std::unique_ptr<BF16[]> plain(vnni ? new BF16[tile] : nullptr);
      for (int64_t t = begin; t < end; ++t) {
        BF16* out = vnni ? plain.get() : tiles.get() + t * tile;  // (2 Kp x kColBlock), row-major
        const int64_t c0 = t * kColBlock, w = std::min(kColBlock, N - c0);
        if (w < kColBlock || K < Kp) std::fill(out, out + tile / 2, BF16(0));
        for (size_t s = 0; s < parts.size(); ++s) {
          BF16* dst = out + s * Kpart * kColBlock;
          if (transposed)
            for (int64_t n = 0; n < w; ++n)
              for (int64_t k = 0; k < Kpart; ++k) dst[k * kColBlock + n] = parts[s][(c0 + n) * Kpart + k];
          else
            for (int64_t k = 0; k < Kpart; ++k)
              std::memcpy(dst + k * kColBlock, parts[s] + k * N + c0, w * sizeof(BF16));
        }
        std::copy(out, out + tile / 2, out + tile / 2);
        if (vnni)
          at::native::cpublas::pack(2 * Kp, kColBlock, kColBlock, kColBlock, at::kBFloat16, at::kBFloat16, out,
                                    tiles.get() + t * tile);
      }
    });
  }
  // C (M x w, fp32, row stride ldc) = [C +] rows [i0, i0 + M) of a, as [hi, lo], @ columns [c0, c0 + w) of
  // [B; B]; K is the operand's (a's columns past it are 0, as the tiles' rows are)
  void mul(const Operand<BF16>& a, int64_t i0, int64_t M, int64_t, int64_t c0, int64_t w, float* C, int64_t ldc,
           bool accumulate) const {
    const BF16* t = tiles.get() + (c0 / kColBlock) * 2 * Kp * kColBlock;
    at::native::cpublas::brgemm(M, w, 2 * Kp, a.lda, kColBlock, ldc, accumulate, a.p + i0 * a.lda, t, C,
                                bf16_vnni());
  }
};

// Packed rows of a product's left-hand operand for T: `rows` x `cols` values of the accumulation type in `x`,
// and for bf16 their split [hi, lo], chunks `cols` rounded up to even wide, in `storage` (zeroed: the padding
// is 0).
template <typename T>
Operand<T> operand(acc_t<T>* x, int64_t rows, int64_t cols, std::vector<BF16>& storage) {
  if constexpr (kBF16<T>) {
    const int64_t kp = even(cols);
    storage.assign(rows * 2 * kp, BF16(0));
    return {x, cols, storage.data(), 2 * kp, kp, 1, 0};
  } else {
    return {x, cols};
  }
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
// `segments` column ranges of width D each (seg: which one), in parallel. For bf16 each thread then hands
// the AMX tiles back (as ATen's own brgemm users do at the end of a parallel region).
template <typename T, typename F>
void for_tiles(const Dims& d, int64_t rows, int64_t segments, const F& fn) {
  const int64_t nrb = (rows + kRowBlock - 1) / kRowBlock, ncb = (d.D + kColBlock - 1) / kColBlock;
  at::parallel_for(0, nrb * ncb * segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const int64_t seg = k / (nrb * ncb), rb = (k / ncb) % nrb, cb = k % ncb;
      const int64_t i0 = rb * kRowBlock, c0 = cb * kColBlock;
      fn(i0, std::min(i0 + kRowBlock, rows), c0, std::min(c0 + kColBlock, d.D), seg);
    }
    if constexpr (kBF16<T>) at::native::cpublas::brgemm_release(bf16_vnni());
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
// The right-hand operands of the forward's products: W_hr^T (h -> r); W_hz^T, W_hu^T (, W_hg^T) (rh -> z̃ | u
// | g̃, one per column segment); [W_zu^T; W_gu^T] stacked ([z̃, g̃] -> u).
template <typename T>
struct ForwardWeights {
  Right<T> hr, rh[3], u;
  std::vector<T> WhrT, WrhT, WuT;  // float, double: the transposes
};

// From the (D x D) weights: rh_side = {W_hz, W_hu, W_hg or null}, W_gu null without context.
template <typename T>
void build(ForwardWeights<T>& W, int64_t D, const T* W_hr, const T* const* rh_side, const T* W_zu, const T* W_gu) {
  const int64_t nseg = W_gu ? 3 : 2;
  if constexpr (kBF16<T>) {  // packed in column tiles
    W.hr = Right<T>({W_hr}, D, D, true);
    for (int64_t s = 0; s < nseg; ++s) W.rh[s] = Right<T>({rh_side[s]}, D, D, true);
    W.u = Right<T>(W_gu ? std::vector<const T*>{W_zu, W_gu} : std::vector<const T*>{W_zu}, D, D, true);
  } else {  // transposed once per call
    W.WhrT.resize(D * D), W.WrhT.resize(D * nseg * D), W.WuT.resize((W_gu ? 2 : 1) * D * D);
    transpose_into(W_hr, D, D, W.WhrT.data(), D);
    for (int64_t s = 0; s < nseg; ++s) transpose_into(rh_side[s], D, D, W.WrhT.data() + s * D, nseg * D);
    transpose_into(W_zu, D, D, W.WuT.data(), D);  // rows [0, D): z̃ -> u; [D, 2D): g̃ -> u
    if (W_gu) transpose_into(W_gu, D, D, W.WuT.data() + D * D, D);
    W.hr = {W.WhrT.data(), D};
    for (int64_t s = 0; s < nseg; ++s) W.rh[s] = {W.WrhT.data() + s * D, nseg * D};
    W.u = {W.WuT.data(), D};
  }
}

template <typename T>
void gcpu_fwd_kernel(const Dims& d, const Packing& pk, const int64_t* len, const T* x_r, const T* x_z,
                     const T* x_g, const T* b_u, const T* h0, const ForwardWeights<T>& W, T* H, acc_t<T>* gates) {
  using A = acc_t<T>;
  using V = Vec<A>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2, KU = d.context ? 2 * D : D;
  const int64_t ldg = L * GD;  // row stride of the gates at a fixed step and slot
  const int64_t* order = pk.order.data();
  // packed rows: the state h, r ⊙ h, W_hu rh + b_u, and [z̃ (, g̃)] side by side (the A of the u product);
  // h, rh and [z̃, g̃] are the left-hand operands of the products
  std::vector<A> h_buf(B * D, A(0)), rh_buf(B * D), hu_buf(B * D), zg_buf(B * KU);
  std::vector<BF16> h_split, rh_split, zg_split;
  const Operand<T> h = operand<T>(h_buf.data(), B, D, h_split), rh = operand<T>(rh_buf.data(), B, D, rh_split),
                   zg = operand<T>(zg_buf.data(), B, KU, zg_split);
  A* hu = hu_buf.data();
  if (h0)
    for (int64_t i = 0; i < B; ++i)
      vec_loop<A>(D, [&](int64_t k, int64_t m) { h.put(i, k, load(h0 + order[i] * D + k, m), m); });
  for (int64_t t = 0; t < d.steps; ++t) {
    const int64_t n = pk.valid[t];
    A* gt = gates + t * GD;  // gates[b, t, slot, c] = gt[b * ldg + slot * D + c]
    // (1) r = σ(x_r + W_hr h), rh = r ⊙ h
    for_tiles<T>(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      A acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      W.hr.mul(h, i0, i1 - i0, D, c0, w, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A *a = acc + (i - i0) * w, *hp = h.x + i * D + c0;
        const T* xr = x_r + (b * L + t) * D + c0;
        A* r = gt + b * ldg + R * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V rv = sigmoid<A>(load(xr + k, m) + V::loadu(a + k, m));
          rv.store(r + k, m);
          rh.put(i, c0 + k, rv * V::loadu(hp + k, m), m);
        });
      }
    });
    // (2), (3) and W_hu rh: rh @ [W_hz; W_hu; W_hg]^T, column segments z̃ | u | g̃
    for_tiles<T>(d, n, nseg, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t seg) {
      A acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      W.rh[seg].mul(rh, i0, i1 - i0, D, c0, w, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A* a = acc + (i - i0) * w;
        if (seg == 1) {  // W_hu rh + b_u, for (5)
          A* out = hu + i * D + c0;
          vec_loop<A>(w, [&](int64_t k, int64_t m) {
            (V::loadu(a + k, m) + load(b_u + c0 + k, m)).store(out + k, m);
          });
          continue;
        }
        const T* x = (seg == 0 ? x_z : x_g) + (b * L + t) * D + c0;
        A* out = gt + b * ldg + (seg == 0 ? Z : G) * D + c0;  // z̃ or g̃
        const int64_t col = (seg == 0 ? 0 : D) + c0;  // in [z̃, g̃]
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V y = tanh<A>(load(x + k, m) + V::loadu(a + k, m));
          y.store(out + k, m);
          zg.put(i, col + k, y, m);
        });
      }
    });
    // (5), (6): u = σ([z̃, g̃] @ [W_zu, W_gu]^T + W_hu rh + b_u), h_t = rh + u ⊙ (z̃ + g̃), in place
    for_tiles<T>(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      A acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      W.u.mul(zg, i0, i1 - i0, KU, c0, w, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A *a = acc + (i - i0) * w, *rhi = rh.x + i * D + c0, *hui = hu + i * D + c0;
        const A* zgi = zg.x + i * KU + c0;
        A* u = gt + b * ldg + U * D + c0;
        T* out = H + (b * L + t) * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V uv = sigmoid<A>(V::loadu(a + k, m) + V::loadu(hui + k, m));
          V cand = V::loadu(zgi + k, m);
          if (d.context) cand = cand + V::loadu(zgi + D + k, m);
          uv.store(u + k, m);
          const V hv = V::loadu(rhi + k, m) + uv * cand;
          h.put(i, c0 + k, hv, m);
          store(out + k, hv, m);
        });
      }
    });
  }
  // Padded steps: H = 0 and gates 0 (never computed; the backward's weight products multiply them by 0)
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::fill(gates + (b * L + len[b]) * GD, gates + (b + 1) * L * GD, A(0));
      std::fill(H + (b * L + len[b]) * D, H + (b + 1) * L * D, T(0));
    }
  });
}

// ------------------------------------------------------------------------------------------- backward
// The backward's per-step operands, packed time-major like cuDNN's packed sequences: step t's valid rows
// are rows [offset[t], offset[t] + valid[t]) in the samples' sorted order, S = Σ lengths rows in all. The
// d_a's are the left-hand operands of the step's products, and afterwards all six are those of the weight
// gradients, whose reductions then run over the S valid rows only.
template <typename T>
struct Packed {
  Operand<T> au, azg, ar, rh, hp, zg;  // d_au, [d_az (, d_ag)], d_ar, r ⊙ h_{t-1}, h_{t-1}, [z̃ (, g̃)]
};

// The right-hand operands of the backward's products: W_zu, W_hu (, W_gu) (d_au -> z̃ | rh (| g̃), one per
// column segment, in the order z̃, g̃, rh); [W_hz; W_hg] stacked ([d_az, d_ag] -> rh); W_hr (d_ar -> h).
template <typename T>
struct BackwardWeights {
  Right<T> au[3], zg, hr;
  at::Tensor Wback, Wzg;  // float, double: the weights side by side / stacked
};

template <typename T>
void build(BackwardWeights<T>& W, int64_t D, const at::Tensor& W_hr, const at::Tensor& W_hz,
           const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
           const std::optional<at::Tensor>& W_gu) {
  const bool context = W_hg.has_value() && W_hg->defined();
  const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<T>(); };
  if constexpr (kBF16<T>) {  // packed in column tiles
    W.au[0] = Right<T>({ptr(W_zu)}, D, D, false);
    if (context) W.au[1] = Right<T>({ptr(*W_gu)}, D, D, false);
    W.au[context ? 2 : 1] = Right<T>({ptr(W_hu)}, D, D, false);
    W.zg = Right<T>(context ? std::vector<const T*>{ptr(W_hz), ptr(*W_hg)} : std::vector<const T*>{ptr(W_hz)}, D, D,
                    false);
    W.hr = Right<T>({ptr(W_hr)}, D, D, false);
  } else {  // d_au -> [z̃ | g̃ | rh] side by side (D x 3D); [d_az, d_ag] -> rh stacked (2D x D)
    W.Wback = at::cat(context ? std::vector<at::Tensor>{W_zu, *W_gu, W_hu} : std::vector<at::Tensor>{W_zu, W_hu}, 1);
    W.Wzg = context ? at::cat({W_hz, *W_hg}) : W_hz;
    const int64_t nseg = context ? 3 : 2;
    for (int64_t s = 0; s < nseg; ++s) W.au[s] = {ptr(W.Wback) + s * D, nseg * D};
    W.zg = {ptr(W.Wzg), D};
    W.hr = {ptr(W_hr), D};
  }
}

// The packed operands in `blocks` at `starts`, `widths` columns, rows `lds` apart (for bf16 2 chunks of kps)
template <typename T>
Packed<T> packed_operands(at::Tensor& blocks, const int64_t* starts, const int64_t* widths, const int64_t* lds,
                          const int64_t* kps) {
  Packed<T> p;
  Operand<T>* ops[6] = {&p.au, &p.azg, &p.ar, &p.rh, &p.hp, &p.zg};
  for (int j = 0; j < 6; ++j) {
    T* base = blocks.mutable_data_ptr<T>() + starts[j];
    if constexpr (kBF16<T>)  // the d_a's: [hi, lo]; the others: [hi, hi]
      *ops[j] = j < 3 ? Operand<T>{nullptr, widths[j], base, lds[j], kps[j], 1, 0}
                      : Operand<T>{nullptr, widths[j], base, lds[j], kps[j], 0, 1};
    else
      *ops[j] = {base, widths[j]};
  }
  return p;
}

template <typename T>
void gcpu_bwd_kernel(const Dims& d, const Packing& pk, const int64_t* len, const T* gH, const T* H,
                     const acc_t<T>* gates, const T* h0, const BackwardWeights<T>& W, T* d_ar, T* d_az, T* d_ag,
                     const Packed<T>& p, T* dh0) {
  using A = acc_t<T>;
  using V = Vec<A>;
  const int64_t B = d.B, L = d.L, D = d.D, GD = d.G * D, nseg = d.context ? 3 : 2, KZ = d.context ? 2 * D : D;
  const int64_t ldg = L * GD;  // row stride of the gates at a fixed step and slot
  const int64_t* order = pk.order.data();
  // packed rows: dh = ∂/∂h_t from the steps after t, dh ⊙ u, d_rh
  std::vector<A> dh_buf(B * D, A(0)), dc_buf(B * D), drh_buf(B * D);
  A *dh = dh_buf.data(), *dc = dc_buf.data(), *drh = drh_buf.data();
  int64_t offset = 0;
  for (int64_t t = 0; t < d.steps; ++t) offset += pk.valid[t];
  const V one(1);
  for (int64_t t = d.steps - 1; t >= 0; --t) {
    const int64_t n = pk.valid[t];
    offset -= n;  // step t's rows of the packed operands
    const A* gt = gates + t * GD;
    const Operand<T> au = p.au.at(offset), azg = p.azg.at(offset), ar = p.ar.at(offset);
    const Operand<T> rhp = p.rh.at(offset), hpp = p.hp.at(offset), zgp = p.zg.at(offset);
    // through (6) and the σ of (5): dh += grad_H[t]; d_au = dh ⊙ h̃ ⊙ u(1-u); d_c = dh ⊙ u
    for_tiles<T>(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A* g = gt + b * ldg + c0;
        const T* gh = gH + (b * L + t) * D + c0;
        A *dhi = dh + i * D + c0, *dci = dc + i * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V u = V::loadu(g + U * D + k, m), dht = V::loadu(dhi + k, m) + load(gh + k, m);
          V cand = V::loadu(g + Z * D + k, m);
          if (d.context) cand = cand + V::loadu(g + G * D + k, m);
          dht.store(dhi + k, m);
          au.put(i, c0 + k, dht * cand * u * (one - u), m);
          (dht * u).store(dci + k, m);
        });
      }
    });
    // d_au @ [W_zu | W_gu | W_hu], column segments z̃ | g̃ | rh: the tanh' of (2), (3); d_rh = dh + W_hu^T d_au
    for_tiles<T>(d, n, nseg, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t seg) {
      A acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      W.au[seg].mul(au, i0, i1 - i0, D, c0, w, acc, w, false);
      const bool to_rh = seg == nseg - 1;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A* a = acc + (i - i0) * w;
        if (to_rh) {
          const A* dhi = dh + i * D + c0;
          A* out = drh + i * D + c0;
          vec_loop<A>(w, [&](int64_t k, int64_t m) { (V::loadu(dhi + k, m) + V::loadu(a + k, m)).store(out + k, m); });
          continue;
        }
        const int64_t col = (seg == 0 ? 0 : D) + c0;  // in [z̃, g̃]
        const A *y = gt + b * ldg + (seg == 0 ? Z : G) * D + c0, *dci = dc + i * D + c0;  // z̃ or g̃
        T* out = (seg == 0 ? d_az : d_ag) + (b * L + t) * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V yv = V::loadu(y + k, m), v = (V::loadu(dci + k, m) + V::loadu(a + k, m)) * (one - yv * yv);
          store(out + k, v, m);
          azg.put(i, col + k, v, m);
          zgp.put(i, col + k, yv, m);
        });
      }
    });
    // d_rh += [d_az, d_ag] @ [W_hz; W_hg] (in place); the σ' of (1): d_ar = d_rh ⊙ h_{t-1} ⊙ r(1-r)
    for_tiles<T>(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      const int64_t w = c1 - c0;
      W.zg.mul(azg, i0, i1 - i0, KZ, c0, w, drh + i0 * D + c0, D, true);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A *r = gt + b * ldg + R * D + c0, *drhi = drh + i * D + c0;
        const T* hp = t > 0 ? H + (b * L + t - 1) * D + c0 : h0 ? h0 + b * D + c0 : nullptr;  // else 0
        T* out = d_ar + (b * L + t) * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          const V rv = V::loadu(r + k, m), hv = hp ? load(hp + k, m) : V(0);
          const V v = V::loadu(drhi + k, m) * hv * rv * (one - rv);
          store(out + k, v, m);
          ar.put(i, c0 + k, v, m);
          rhp.put(i, c0 + k, rv * hv, m);
          hpp.put(i, c0 + k, hv, m);
        });
      }
    });
    // dh_{t-1} = d_rh ⊙ r + W_hr^T d_ar
    for_tiles<T>(d, n, 1, [&](int64_t i0, int64_t i1, int64_t c0, int64_t c1, int64_t) {
      A acc[kRowBlock * kColBlock];
      const int64_t w = c1 - c0;
      W.hr.mul(ar, i0, i1 - i0, D, c0, w, acc, w, false);
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t b = order[i];
        const A *a = acc + (i - i0) * w, *r = gt + b * ldg + R * D + c0, *drhi = drh + i * D + c0;
        A* dhi = dh + i * D + c0;
        vec_loop<A>(w, [&](int64_t k, int64_t m) {
          (V::loadu(drhi + k, m) * V::loadu(r + k, m) + V::loadu(a + k, m)).store(dhi + k, m);
        });
      }
    });
  }
  for (int64_t i = 0; i < B; ++i)
    vec_loop<A>(D, [&](int64_t k, int64_t m) { store(dh0 + order[i] * D + k, V::loadu(dh + i * D + k, m), m); });
  // padded steps: every d_a is 0
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      for (T* x : {d_ar, d_az, d_ag})
        if (x) std::fill(x + (b * L + len[b]) * D, x + (b + 1) * L * D, T(0));
  });
}

// bf16: the column sums of S split rows (`ld` apart, hi at 0 and lo at kp), in fp32, rounded once
at::Tensor split_column_sums(const at::Tensor& rows, int64_t S, int64_t ld, int64_t kp, int64_t D) {
  using V = Vec<float>;
  std::vector<float> acc(D, 0.f);
  const BF16* p = rows.const_data_ptr<BF16>();
  for (int64_t r = 0; r < S; ++r)
    vec_loop<float>(D, [&](int64_t k, int64_t m) {
      const BF16* hi = p + r * ld + k;
      (V::loadu(acc.data() + k, m) + load(hi, m) + load(hi + kp, m)).store(acc.data() + k, m);
    });
  auto out = at::empty({D}, rows.options());
  BF16* o = out.mutable_data_ptr<BF16>();
  vec_loop<float>(D, [&](int64_t k, int64_t m) { store(o + k, V::loadu(acc.data() + k, m), m); });
  return out;
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

// The dtype the kernels compute in and save the gates in: float32 for bf16 and float32, float64 for float64.
at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
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
  auto gates = at::empty({B, L, d.G, D}, x_r.options().dtype(acc_dtype(x_r.scalar_type())));
  const Packing pk(len, d.steps);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x_r.scalar_type(), "gcpu_fwd_cpu", [&] {
    using T = scalar_t;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<T>(); };
    const T* rh_side[3] = {ptr(W_hz), ptr(W_hu), context ? ptr(*W_hg) : nullptr};  // column segments z̃ | u | g̃
    ForwardWeights<T> W;
    build<T>(W, D, ptr(W_hr), rh_side, ptr(W_zu), context ? ptr(*W_gu) : nullptr);
    gcpu_fwd_kernel<T>(d, pk, len.data(), ptr(x_r), ptr(x_z), context ? ptr(*x_g) : nullptr, ptr(b_u),
                       has_h0 ? ptr(*h0) : nullptr, W, H.mutable_data_ptr<T>(), gates.mutable_data_ptr<acc_t<T>>());
  });
  return {H, gates};
}

std::vector<at::Tensor> gcpu_bwd_cpu(
    const at::Tensor& grad_H, const at::Tensor& H, const at::Tensor& gates, const at::Tensor& W_hr,
    const at::Tensor& W_hz, const std::optional<at::Tensor>& W_hg, const at::Tensor& W_hu, const at::Tensor& W_zu,
    const std::optional<at::Tensor>& W_gu, const at::Tensor& lengths, const std::optional<at::Tensor>& h0) {
  constexpr const char* fn = "mfdr_C::gcpu_bwd_cpu";
  std::vector<const at::Tensor*> same = {&grad_H, &H, &W_hr, &W_hz, &W_hu, &W_zu};
  const bool context = W_hg.has_value() && W_hg->defined(), has_h0 = h0.has_value() && h0->defined();
  TORCH_CHECK(context == (W_gu.has_value() && W_gu->defined()), fn, ": W_hg and W_gu must be both given or None");
  if (context) same.insert(same.end(), {&*W_hg, &*W_gu});
  if (has_h0) same.push_back(&*h0);
  std::vector<int64_t> len;
  const Dims d = check_inputs(fn, H, context, lengths, same, len);
  const int64_t B = d.B, L = d.L, D = d.D;
  check_shape(fn, "grad_H", grad_H, {B, L, D});
  const auto acc = acc_dtype(H.scalar_type());
  TORCH_CHECK(gates.is_contiguous() && gates.device().is_cpu() && gates.scalar_type() == acc, fn,
              ": gates must be a contiguous CPU tensor of dtype ", acc, " (the forward's), got ", gates.scalar_type());
  check_shape(fn, "gates", gates, {B, L, d.G, D});
  for (const at::Tensor* t : {&W_hr, &W_hz, &W_hu, &W_zu}) check_shape(fn, "each W", *t, {D, D});
  if (context) for (const at::Tensor* t : {&*W_hg, &*W_gu}) check_shape(fn, "each W", *t, {D, D});
  if (has_h0) check_shape(fn, "h0", *h0, {B, D});
  const bool bf16 = H.scalar_type() == at::kBFloat16;
  auto dx_r = at::empty({B, L, D}, H.options()), dx_z = at::empty({B, L, D}, H.options());
  auto dx_g = context ? at::empty({B, L, D}, H.options()) : at::Tensor();
  auto dh0 = at::empty({B, D}, H.options());
  const Packing pk(len, d.steps);
  const int64_t S = std::accumulate(len.begin(), len.end(), int64_t(0)), KZ = context ? 2 * D : D;
  // The packed operands: d_au, [d_az (, d_ag)], d_ar, r ⊙ h_{t-1}, h_{t-1}, [z̃ (, g̃)], S rows each: for bf16
  // rows of 2 chunks (the d_a's chunks padded to an even width), which the weight gradients read as 2S rows
  const int64_t widths[6] = {D, KZ, D, D, D, KZ};
  int64_t kps[6], lds[6], starts[6], total = 0;
  for (int j = 0; j < 6; ++j) {
    kps[j] = bf16 && j < 3 ? even(widths[j]) : widths[j];
    lds[j] = (bf16 ? 2 : 1) * kps[j];
    starts[j] = total, total += S * lds[j];
  }
  // (zeroed where chunks are padded: the padding meets the weight tiles' zero rows)
  auto blocks = kps[0] != widths[0] ? at::zeros({total}, H.options()) : at::empty({total}, H.options());
  std::vector<at::Tensor> P(6);  // the weight gradients' operands: (S, width), or (2S, width) for bf16
  for (int j = 0; j < 6; ++j)
    P[j] = blocks.narrow(0, starts[j], S * lds[j]).view({S * lds[j] / kps[j], kps[j]}).narrow(1, 0, widths[j]);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, H.scalar_type(), "gcpu_bwd_cpu", [&] {
    using T = scalar_t;
    const auto ptr = [](const at::Tensor& t) { return t.const_data_ptr<T>(); };
    BackwardWeights<T> W;
    build<T>(W, D, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu);
    gcpu_bwd_kernel<T>(d, pk, len.data(), ptr(grad_H), ptr(H), gates.const_data_ptr<acc_t<T>>(),
                       has_h0 ? ptr(*h0) : nullptr, W, dx_r.mutable_data_ptr<T>(), dx_z.mutable_data_ptr<T>(),
                       context ? dx_g.mutable_data_ptr<T>() : nullptr,
                       packed_operands<T>(blocks, starts, widths, lds, kps), dh0.mutable_data_ptr<T>());
  });
  // Weight gradients: one product each over the S valid (sample, step) rows, packed (bf16: over their 2S
  // chunk rows, rounded once); db_u sums d_au (bf16: hi + lo, in fp32)
  const auto &P_au = P[0], &P_azg = P[1], &P_ar = P[2], &P_rh = P[3], &P_hp = P[4], &P_zg = P[5];
  auto dW_hr = at::mm(P_ar.t(), P_hp);
  auto dW_hz = at::mm(P_azg.narrow(1, 0, D).t(), P_rh), dW_hu = at::mm(P_au.t(), P_rh);
  auto dW_zu = at::mm(P_au.t(), P_zg.narrow(1, 0, D));
  auto dW_hg = context ? at::mm(P_azg.narrow(1, D, D).t(), P_rh) : at::Tensor();
  auto dW_gu = context ? at::mm(P_au.t(), P_zg.narrow(1, D, D)) : at::Tensor();
  auto db_u = bf16 ? split_column_sums(blocks.narrow(0, starts[0], S * lds[0]), S, lds[0], kps[0], D) : P_au.sum(0);
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
