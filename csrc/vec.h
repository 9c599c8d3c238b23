// Vectors of a kernel's accumulation type, loaded from and stored to float, double or bf16 memory.
//
// 256-bit vectors through the compiler's vector extensions (GCC/Clang): AVX where the build has it
// (-march=native, see mfdr_kernels/_env.py), pairs of SSE registers otherwise. Explicit vectors keep
// the accumulators in registers, which plain loops over a local array did not (3.5x slower sums).
//
// bf16 (c10::BFloat16) accumulates in fp32 (Vec<BFloat16>::A = float, at::opmath_type's choice): a
// vector is 16 bf16 values with AVX-512 (8 otherwise) widened on load (a 16-bit shift: vpmovzxwd +
// vpslld) and rounded to nearest even on store (vcvtneps2bf16 where the build has AVX512-BF16, else the
// same rounding in integer arithmetic, NaN kept NaN). Kernels on bf16 tensors thus load and store bf16
// and compute in fp32. The bf16 dot product uses vdpbf16ps (exact bf16 products summed in fp32) where
// available. A portable build (no -march=native) compiles the generic vector code alone.
#pragma once

#include <c10/util/BFloat16.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX2__) || defined(__AVX512F__)
#include <immintrin.h>
#endif
#if defined(__AVX512BF16__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define MFDR_HAVE_AVX512_BF16 1
#endif

namespace mfdr {

template <typename T>
struct Vec;

template <>
struct Vec<float> {
  using A = float;
  typedef float type __attribute__((vector_size(32)));
  static constexpr int64_t W = 8;
  static type load(const float* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(float* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

template <>
struct Vec<double> {
  using A = double;
  typedef double type __attribute__((vector_size(32)));
  static constexpr int64_t W = 4;
  static type load(const double* p) {
    type v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  }
  static void store(double* p, type v) { std::memcpy(p, &v, sizeof(v)); }
};

// bf16 -> fp32 is exact (the 16 dropped bits are zero); fp32 -> bf16 rounds to nearest even, NaN -> the
// quiet NaN 0x7fc0 (as c10 does). Generic over the lane count for builds without the instructions.
template <typename F, typename U, typename H>
inline F widen_bf16(H h) {
  return (F)(__builtin_convertvector(h, U) << 16);
}
template <typename F, typename U, typename H>
inline H round_bf16(F v) {
  const U u = (U)v;
  const U nan = (U)(v != v);
  const U r = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16 & ~nan) | (0x7fc0u & nan);
  return __builtin_convertvector(r, H);
}

#if defined(__AVX512F__)
// 16 lanes (zmm): one vpmovzxwd + vpslld per 16 values; 1.5x the speed of 8-lane vectors in combine()
template <>
struct Vec<c10::BFloat16> {
  using A = float;
  typedef float type __attribute__((vector_size(64)));
  static constexpr int64_t W = 16;
  static type load(const c10::BFloat16* p) {
    // (the maskz forms with a full mask: the same instructions, without GCC 12's false warnings about
    // the unmasked forms' undefined pass-through operand)
    const __m512i h = _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256((const __m256i*)p));
    return (type)_mm512_maskz_slli_epi32(0xffff, h, 16);
  }
  static void store(c10::BFloat16* p, type v) {
#ifdef MFDR_HAVE_AVX512_BF16
    const __m256bh h = _mm512_cvtneps_pbh((__m512)v);
#else
    typedef uint32_t u32x16 __attribute__((vector_size(64)));
    typedef uint16_t u16x16 __attribute__((vector_size(32)));
    const u16x16 h = round_bf16<type, u32x16, u16x16>(v);
#endif
    std::memcpy(p, &h, sizeof(h));
  }
};
#else
// 8 lanes: vpmovzxwd + vpslld with AVX2 (GCC's own lowering of the generic widening is 2x slower
// there), the generic vector code otherwise
template <>
struct Vec<c10::BFloat16> {
  using A = float;
  typedef float type __attribute__((vector_size(32)));
  typedef uint16_t u16x8 __attribute__((vector_size(16)));
  typedef uint32_t u32x8 __attribute__((vector_size(32)));
  static constexpr int64_t W = 8;
  static type load(const c10::BFloat16* p) {
#if defined(__AVX2__)
    return (type)_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16);
#else
    u16x8 h;
    std::memcpy(&h, p, sizeof(h));
    return widen_bf16<type, u32x8>(h);
#endif
  }
  static void store(c10::BFloat16* p, type v) {
    const u16x8 h = round_bf16<type, u32x8, u16x8>(v);
    std::memcpy(p, &h, sizeof(h));
  }
};
#endif

template <typename T>
using acc_t = typename Vec<T>::A;

// <a, b> over n elements in the accumulation type, four vector accumulators.
template <typename T>
inline acc_t<T> dot(const T* a, const T* b, int64_t n) {
  using V = Vec<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::W;
  typename V::type s0 = {}, s1 = {}, s2 = {}, s3 = {};
  int64_t t = 0;
  for (; t + 4 * W <= n; t += 4 * W) {
    s0 += V::load(a + t) * V::load(b + t);
    s1 += V::load(a + t + W) * V::load(b + t + W);
    s2 += V::load(a + t + 2 * W) * V::load(b + t + 2 * W);
    s3 += V::load(a + t + 3 * W) * V::load(b + t + 3 * W);
  }
  const typename V::type s = (s0 + s1) + (s2 + s3);
  A acc = 0;
  for (int64_t u = 0; u < W; ++u) acc += s[u];
  for (; t < n; ++t) acc += static_cast<A>(a[t]) * static_cast<A>(b[t]);
  return acc;
}

#ifdef MFDR_HAVE_AVX512_BF16
// bf16: vdpbf16ps, 32 products per instruction (each exact in fp32) summed in fp32; the tail through a
// masked load (zeros past n).
template <>
inline float dot<c10::BFloat16>(const c10::BFloat16* a, const c10::BFloat16* b, int64_t n) {
  auto ld = [](const c10::BFloat16* p) {
    const __m512i v = _mm512_loadu_si512(p);
    __m512bh h;
    std::memcpy(&h, &v, sizeof(h));
    return h;
  };
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
  int64_t t = 0;
  for (; t + 128 <= n; t += 128) {
    s0 = _mm512_dpbf16_ps(s0, ld(a + t), ld(b + t));
    s1 = _mm512_dpbf16_ps(s1, ld(a + t + 32), ld(b + t + 32));
    s2 = _mm512_dpbf16_ps(s2, ld(a + t + 64), ld(b + t + 64));
    s3 = _mm512_dpbf16_ps(s3, ld(a + t + 96), ld(b + t + 96));
  }
  for (; t + 32 <= n; t += 32) s0 = _mm512_dpbf16_ps(s0, ld(a + t), ld(b + t));
  if (t < n) {
    const __mmask32 m = (__mmask32)((uint64_t(1) << (n - t)) - 1);
    const __m512i va = _mm512_maskz_loadu_epi16(m, a + t), vb = _mm512_maskz_loadu_epi16(m, b + t);
    __m512bh ha, hb;
    std::memcpy(&ha, &va, sizeof(ha));
    std::memcpy(&hb, &vb, sizeof(hb));
    s1 = _mm512_dpbf16_ps(s1, ha, hb);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3));
  Vec<float>::type half[2];  // (not _mm512_reduce_add_ps: GCC 12 warns inside it)
  std::memcpy(half, &s, sizeof(half));
  const Vec<float>::type h = half[0] + half[1];
  float acc = 0;
  for (int u = 0; u < 8; ++u) acc += h[u];
  return acc;
}
#endif

// y = sum_m alpha[m] * x_m over rows x_m given by pointers, in the accumulation type; each chunk of 4
// vectors of y is summed in registers (one load and one multiply-add per term) and stored once.
template <typename T>
inline void combine(const acc_t<T>* alpha, const T* const* x, int64_t m, T* y, int64_t n) {
  using V = Vec<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::W;
  int64_t t = 0;
  for (; t + 4 * W <= n; t += 4 * W) {
    typename V::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
    for (int64_t r = 0; r < m; ++r) {
      const T* xr = x[r] + t;
      const A c = alpha[r];
      a0 += c * V::load(xr);
      a1 += c * V::load(xr + W);
      a2 += c * V::load(xr + 2 * W);
      a3 += c * V::load(xr + 3 * W);
    }
    V::store(y + t, a0);
    V::store(y + t + W, a1);
    V::store(y + t + 2 * W, a2);
    V::store(y + t + 3 * W, a3);
  }
  for (; t + W <= n; t += W) {
    typename V::type a0 = {};
    for (int64_t r = 0; r < m; ++r) a0 += alpha[r] * V::load(x[r] + t);
    V::store(y + t, a0);
  }
  for (; t < n; ++t) {
    A acc = 0;
    for (int64_t r = 0; r < m; ++r) acc += alpha[r] * static_cast<A>(x[r][t]);
    y[t] = static_cast<T>(acc);
  }
}

// y[t] = init[t] + sum_{r < m} a[r*sa + t] * b[r*sb + t] for t < n, in the accumulation type, stored
// once (init null: 0). Without b (kProducts false) the terms are a[r*sa + t] alone.
template <typename T, bool kProducts>
inline void sum_rows_impl(const T* a, int64_t sa, const T* b, int64_t sb, int64_t m, const T* init, T* y, int64_t n) {
  using V = Vec<T>;
  using A = acc_t<T>;
  constexpr int64_t W = V::W;
  auto term = [&](int64_t r, int64_t t) {
    if constexpr (kProducts)
      return V::load(a + r * sa + t) * V::load(b + r * sb + t);
    else
      return V::load(a + r * sa + t);
  };
  int64_t t = 0;
  for (; t + 4 * W <= n; t += 4 * W) {
    typename V::type a0 = {}, a1 = {}, a2 = {}, a3 = {};
    if (init) a0 = V::load(init + t), a1 = V::load(init + t + W), a2 = V::load(init + t + 2 * W),
              a3 = V::load(init + t + 3 * W);
    for (int64_t r = 0; r < m; ++r) {
      a0 += term(r, t);
      a1 += term(r, t + W);
      a2 += term(r, t + 2 * W);
      a3 += term(r, t + 3 * W);
    }
    V::store(y + t, a0);
    V::store(y + t + W, a1);
    V::store(y + t + 2 * W, a2);
    V::store(y + t + 3 * W, a3);
  }
  for (; t + W <= n; t += W) {
    typename V::type a0 = {};
    if (init) a0 = V::load(init + t);
    for (int64_t r = 0; r < m; ++r) a0 += term(r, t);
    V::store(y + t, a0);
  }
  for (; t < n; ++t) {
    A acc = init ? static_cast<A>(init[t]) : A(0);
    for (int64_t r = 0; r < m; ++r) {
      if constexpr (kProducts)
        acc += static_cast<A>(a[r * sa + t]) * static_cast<A>(b[r * sb + t]);
      else
        acc += static_cast<A>(a[r * sa + t]);
    }
    y[t] = static_cast<T>(acc);
  }
}

// y = init + sum_r a_r * b_r (elementwise), rows a_r = a + r*sa and b_r = b + r*sb.
template <typename T>
inline void sum_products(const T* a, int64_t sa, const T* b, int64_t sb, int64_t m, const T* init, T* y, int64_t n) {
  sum_rows_impl<T, true>(a, sa, b, sb, m, init, y, n);
}

// y = sum_r a_r, rows a_r = a + r*sa.
template <typename T>
inline void sum_rows(const T* a, int64_t sa, int64_t m, T* y, int64_t n) {
  sum_rows_impl<T, false>(a, sa, nullptr, 0, m, nullptr, y, n);
}

}  // namespace mfdr
