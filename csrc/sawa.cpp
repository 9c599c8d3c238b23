// Sliding adaptive window attention (SAWA): CPU forward and backward (SPEC §1).
//
// Each query i reads the keys/values of its span [s_i - w, s_i + 2w) by index from the window
// start: first the base window S0, then, only if the decision asks for it, the neighbour
// half-windows S1 and S2 (the paper's "expansion by index slicing"). Nothing of size L x T and no
// re-windowed copy of K is built; per query the scratch is 3w scores.
//
// Forward  grid: at::parallel_for over B*H*L rows. Besides out and the levels it returns the weights per
//          slot, P (B,H,L,3w) in the accumulation type: P[.., j - s_i + w] = w_j for the frames j the row
//          attends to, 0 elsewhere (the softmax's output, kept for the backward as flash attention keeps
//          its statistics; 0.75 MiB at the paper's shape). Recomputing it in the backward instead (the
//          scores, softmaxes and decisions again) made forward+backward 1.16-1.26x slower.
// Backward pass 1 (B*H*L rows): from P, dq and the score gradients DS = scale * dL/dx_j, per slot into
//          a (B,H,L,3w) buffer.
// Backward pass 2 (B*H*key blocks): dk_j = sum_i DS_ij q_i, dv_j = sum_i P_ij do_i over the queries
//          whose span holds frame j. Window starts are non-decreasing over the valid queries (the
//          op validates it), so those queries form a contiguous range found by binary search: no
//          atomics, no races, deterministic.
//
// Layout: q, k, v, grad_out may be any strided (B, H, N, d) views whose last dim is contiguous, e.g. the
// heads of a (B, N, H*d) projection (x.view(B, N, H, d).transpose(1, 2)) with no copy; dq, dk, dv take the
// layout of q, k, v (empty_like), so their transposes back are free too. out is contiguous (B, H, L, dv).
//
// Dtypes: float and double accumulate in their own type; bf16 loads and stores bf16 and computes in
// fp32 (vec.h): scores, softmax statistics, weights, P/DS and the sums of dq, dk, dv, each output
// rounded once. Decisions (levels) are taken on the fp32 scores.
// Data-dependent values are clamped (k_len into [0, T], q_len into [0, L], forced levels into
// [0, 2]), so values the op did not check never make a kernel read or write out of bounds.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "vec.h"

#include <algorithm>
#include <cstdint>
#include <cmath>
#include <limits>
#include <vector>

namespace mfdr {
namespace {

// Row n of head (b, h) of a (B, H, N, d) tensor with a contiguous last dim: p + b sB + h sH + n sN.
template <typename T>
struct Heads {
  T* p;
  int64_t sB, sH, sN, H;
  Heads(const at::Tensor& t, T* ptr) : p(ptr), sB(t.stride(0)), sH(t.stride(1)), sN(t.stride(2)), H(t.size(1)) {}
  T* head(int64_t bh) const { return p + (bh / H) * sB + (bh % H) * sH; }  // row 0 of head bh = b * H + h
  T* row(int64_t bh, int64_t n) const { return head(bh) + n * sN; }
};

// Ring of an offset o = j - s from the window start: 0 for S0, 1 for S1, 2 for S2.
inline int ring_of(int64_t o, int64_t w) {
  const int64_t half = w / 2;
  if (o >= 0 && o < w) return 0;
  if (o >= -half && o < w + half) return 1;
  return 2;
}

// One query row: the frames it attends to, their scores and weights.
template <typename A>
struct Row {
  std::vector<int64_t> frame;  // absolute frame index
  std::vector<int> ring;
  std::vector<A> x;  // scaled score
  std::vector<A> w;  // weight
  int64_t count[3] = {0, 0, 0};
  explicit Row(int64_t window) {
    frame.reserve(3 * window);
    ring.reserve(3 * window);
    x.reserve(3 * window);
    w.reserve(3 * window);
  }
  void clear() {
    frame.clear();
    ring.clear();
    x.clear();
    w.clear();
    count[0] = count[1] = count[2] = 0;
  }
};

template <typename T, typename A>
inline void add_range(Row<A>& row, int r, int64_t lo, int64_t hi, int64_t k_len, const T* q, const T* K, int64_t ldk,
                      int64_t d, A scale) {
  lo = std::max<int64_t>(lo, 0);
  hi = std::min<int64_t>(hi, k_len);
  for (int64_t j = lo; j < hi; ++j) {
    row.frame.push_back(j);
    row.ring.push_back(r);
    row.x.push_back(scale * dot<T>(q, K + j * ldk, d));
    row.w.push_back(0);
    row.count[r]++;
  }
}

// Softmax over the entries whose ring is in [r_lo, r_hi], written into row.w.
template <typename A>
inline void softmax_rings(Row<A>& row, int r_lo, int r_hi) {
  A mx = -std::numeric_limits<A>::infinity();
  const size_t n = row.x.size();
  for (size_t t = 0; t < n; ++t)
    if (row.ring[t] >= r_lo && row.ring[t] <= r_hi) mx = std::max(mx, row.x[t]);
  A sum = 0;
  for (size_t t = 0; t < n; ++t)
    if (row.ring[t] >= r_lo && row.ring[t] <= r_hi) {
      row.w[t] = std::exp(row.x[t] - mx);
      sum += row.w[t];
    }
  if (sum > 0)
    for (size_t t = 0; t < n; ++t)
      if (row.ring[t] >= r_lo && row.ring[t] <= r_hi) row.w[t] /= sum;
}

// Final weights of the active rings (<= level): one softmax per ring, or one joint softmax. `done`: the
// level whose final weights row.w already holds from the decisions (-1: none), not computed again
// (segment: rings <= done; joint: the softmax over rings <= done).
template <typename A>
inline void final_weights(Row<A>& row, int level, bool joint, int done) {
  if (joint) {
    if (done != level) softmax_rings(row, 0, level);
  } else {
    for (int r = done + 1; r <= level; ++r) softmax_rings(row, r, r);
  }
}

// Builds the row for query (q, s). Decides the level (SPEC §1 "Decisions") unless forced >= 0.
// Returns the level, or -1 when S0 is empty (zero output).
template <typename T, typename A>
int build_row(Row<A>& row, const T* q, const T* K, int64_t ldk, int64_t d, int64_t s, int64_t k_len, int64_t w,
              int levels, bool joint, A scale, int forced) {
  row.clear();
  const int64_t half = w / 2;
  add_range<T, A>(row, 0, s, s + w, k_len, q, K, ldk, d, scale);
  if (row.count[0] == 0) return -1;
  // number of existing frames of S1 / S2, known from the ranges alone
  auto exists = [&](int64_t lo, int64_t hi) {
    return std::max<int64_t>(0, std::min<int64_t>(hi, k_len) - std::max<int64_t>(lo, 0));
  };
  const int64_t n1 = exists(s - half, s) + exists(s + w, s + w + half);
  const int64_t n2 = exists(s - w, s - half) + exists(s + w + half, s + 2 * w);
  auto add_ring = [&](int r) {
    const int64_t a = (r == 1) ? half : w;
    const int64_t b = (r == 1) ? 0 : half;
    add_range<T, A>(row, r, s - a, s - b, k_len, q, K, ldk, d, scale);
    add_range<T, A>(row, r, s + w + b, s + w + a, k_len, q, K, ldk, d, scale);
  };

  int level = 0, done = -1;
  if (forced < 0 && levels >= 1) {
    softmax_rings(row, 0, 0);  // base-window weights: Alg. 1 lines 2-4
    done = 0;
    const A thr = A(1) / static_cast<A>(row.count[0]);
    int64_t c0 = 0;
    for (size_t t = 0; t < row.w.size(); ++t) c0 += row.w[t] > thr;
    if (c0 >= half && n1 > 0) {
      level = 1;
      add_ring(1);
      if (levels >= 2) {
        if (joint) softmax_rings(row, 0, 1); else softmax_rings(row, 1, 1);
        done = 1;
        A sum = 0;
        for (A v : row.w) sum += v;
        const A mean = sum / static_cast<A>(row.w.size());
        int64_t c1 = 0;
        for (A v : row.w) c1 += v > mean;
        if (c1 >= w && n2 > 0) {
          level = 2;
          add_ring(2);
        }
      }
    }
  } else if (forced > 0) {
    level = forced;
    for (int r = 1; r <= forced; ++r) add_ring(r);
  }
  final_weights(row, level, joint, done);
  return level;
}

template <typename T>
void sawa_fwd_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_lens,
                    const at::Tensor& k_lens, const at::Tensor& starts, const at::Tensor& force, int64_t w,
                    int64_t levels, bool joint, double scale, at::Tensor& out, at::Tensor& lvl,
                    at::Tensor& weights) {
  using A = acc_t<T>;  // float for float and bf16, double for double
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), d = q.size(3), Tk = k.size(2), dv = v.size(3);
  const Heads<const T> Q(q, q.data_ptr<T>()), K(k, k.data_ptr<T>()), V(v, v.data_ptr<T>());
  const int64_t *ql = q_lens.data_ptr<int64_t>(), *kl = k_lens.data_ptr<int64_t>(), *sp = starts.data_ptr<int64_t>();
  const int8_t* fp = force.defined() ? force.data_ptr<int8_t>() : nullptr;
  T* op = out.data_ptr<T>();
  int8_t* lp = lvl.data_ptr<int8_t>();
  const int64_t S = 3 * w;
  A* const P = weights.data_ptr<A>();
  at::parallel_for(0, B * H * L, 16, [&](int64_t begin, int64_t end) {
    Row<A> row(w);
    std::vector<const T*> rows(S);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (H * L), bh = r / L, i = r % L;
      T* o = op + r * dv;
      A* Pr = P + r * S;
      lp[r] = 0;
      std::fill(o, o + dv, T(0));
      std::fill(Pr, Pr + S, A(0));
      if (i >= ql[b]) continue;
      const int64_t s = sp[b * L + i];
      const int lev = build_row<T, A>(row, Q.row(bh, i), K.head(bh), K.sN, d, s,
                                      std::clamp<int64_t>(kl[b], 0, Tk), w, (int)levels, joint, static_cast<A>(scale),
                                      fp ? std::clamp<int>(fp[r], 0, 2) : -1);
      if (lev < 0) continue;
      lp[r] = (int8_t)lev;
      const size_t n = row.frame.size();  // build_row leaves only the active frames
      const T* Vh = V.head(bh);
      for (size_t t = 0; t < n; ++t) {
        rows[t] = Vh + row.frame[t] * V.sN;
        Pr[row.frame[t] - s + w] = row.w[t];
      }
      combine<T>(row.w.data(), rows.data(), (int64_t)n, o, dv);
    }
  });
}

template <typename T>
void sawa_bwd_kernel(const at::Tensor& go, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     const at::Tensor& q_lens, const at::Tensor& k_lens, const at::Tensor& starts,
                     const at::Tensor& weights, int64_t w, bool joint, double scale, at::Tensor& dq, at::Tensor& dk,
                     at::Tensor& dv_t) {
  using A = acc_t<T>;  // float for float and bf16, double for double
  const int64_t B = q.size(0), H = q.size(1), L = q.size(2), d = q.size(3), Tk = k.size(2), dv = v.size(3);
  const int64_t S = 3 * w;  // slots per row: offsets [-w, 2w)
  const Heads<const T> Q(q, q.data_ptr<T>()), K(k, k.data_ptr<T>()), V(v, v.data_ptr<T>()), G(go, go.data_ptr<T>());
  const int64_t *ql = q_lens.data_ptr<int64_t>(), *kl = k_lens.data_ptr<int64_t>(), *sp = starts.data_ptr<int64_t>();
  // The score gradients DS of every row per slot (B*H*L*3w, in A), allocated per call and freed at its end
  // (0.75 MiB at the paper's shape, fp32). Pass 1 zeroes the rows pass 2 reads.
  const at::Tensor scratch = at::empty({B * H * L * S}, q.options().dtype(c10::CppTypeToScalarType<A>::value));
  const A* const P = weights.data_ptr<A>();
  A* const DS = scratch.data_ptr<A>();
  const Heads<T> dQ(dq, dq.data_ptr<T>());

  // Pass 1: per query row.
  at::parallel_for(0, B * H * L, 16, [&](int64_t begin, int64_t end) {
    std::vector<A> dot_v(S), ds(S);
    std::vector<int64_t> slot_of(S);
    std::vector<int> ring(S);
    std::vector<const T*> rows(S);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (H * L), bh = r / L, i = r % L;
      T* dqr = dQ.row(bh, i);
      std::fill(dqr, dqr + d, T(0));
      if (i >= ql[b]) continue;  // pass 2 reads valid rows only
      const A* Pr = P + r * S;
      A* Dr = DS + r * S;
      std::fill(Dr, Dr + S, A(0));
      const int64_t s = sp[b * L + i], k_len = std::clamp<int64_t>(kl[b], 0, Tk);
      const T *g = G.row(bh, i), *Vh = V.head(bh), *Kh = K.head(bh);
      int64_t n = 0;
      A gsum[3] = {0, 0, 0};
      for (int64_t slot = 0; slot < S; ++slot) {
        const int64_t j = s - w + slot;  // (a frame outside [0, k_len) is read from no P the forward wrote)
        if (Pr[slot] == A(0) || j < 0 || j >= k_len) continue;
        slot_of[n] = slot;
        ring[n] = joint ? 0 : ring_of(slot - w, w);
        dot_v[n] = dot<T>(g, Vh + j * V.sN, dv);
        gsum[ring[n]] += Pr[slot] * dot_v[n];
        rows[n] = Kh + j * K.sN;
        ++n;
      }
      for (int64_t t = 0; t < n; ++t) {
        ds[t] = Pr[slot_of[t]] * (dot_v[t] - gsum[ring[t]]) * static_cast<A>(scale);
        Dr[slot_of[t]] = ds[t];
      }
      combine<T>(ds.data(), rows.data(), n, dqr, d);
    }
  });

  // Pass 2: per key block; the queries touching frame j satisfy j - 2w < s_i <= j + w.
  const int64_t KB = 16;
  const int64_t nkb = (Tk + KB - 1) / KB;
  const Heads<T> dK(dk, dk.data_ptr<T>()), dV(dv_t, dv_t.data_ptr<T>());
  at::parallel_for(0, B * H * nkb, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> ck, cv;
    std::vector<const T*> rk, rv;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t bh = r / nkb, b = bh / H, j0 = (r % nkb) * KB, j1 = std::min(j0 + KB, Tk);
      const int64_t n_q = std::clamp<int64_t>(ql[b], 0, L), k_len = std::clamp<int64_t>(kl[b], 0, Tk);
      const int64_t* st = sp + b * L;
      const int64_t i0 = std::upper_bound(st, st + n_q, j0 - 2 * w) - st;
      const int64_t i1 = std::upper_bound(st, st + n_q, j1 - 1 + w) - st;
      const T *Qh = Q.head(bh), *Gh = G.head(bh);
      T *dKh = dK.head(bh), *dVh = dV.head(bh);
      for (int64_t j = j0; j < j1; ++j) {
        ck.clear(), cv.clear(), rk.clear(), rv.clear();
        for (int64_t i = i0; i < i1 && j < k_len; ++i) {  // frames past k_len: zero gradients
          const int64_t slot = j - st[i] + w, row_id = bh * L + i;
          if (slot < 0 || slot >= S) continue;
          const A dsv = DS[row_id * S + slot], pv = P[row_id * S + slot];
          if (dsv != A(0)) ck.push_back(dsv), rk.push_back(Qh + i * Q.sN);
          if (pv != A(0)) cv.push_back(pv), rv.push_back(Gh + i * G.sN);
        }
        combine<T>(ck.data(), rk.data(), (int64_t)ck.size(), dKh + j * dK.sN, d);
        combine<T>(cv.data(), rv.data(), (int64_t)cv.size(), dVh + j * dV.sN, dv);
      }
    }
  });
}

bool last_dim_contiguous(const at::Tensor& t) { return t.size(3) <= 1 || t.stride(3) == 1; }

// The dtype of the saved weights: the kernels' accumulation type (float64 for float64, else float32)
at::ScalarType weights_dtype(const at::Tensor& q) { return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_lens,
                  const at::Tensor& k_lens, const at::Tensor& starts) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "mfdr_C::sawa: q, k, v must be 4-D");
  TORCH_CHECK(last_dim_contiguous(q) && last_dim_contiguous(k) && last_dim_contiguous(v),
              "mfdr_C::sawa: q, k, v must have a contiguous last dim (any strides before it)");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(),
              "mfdr_C::sawa: q, k, v must share a dtype");
  TORCH_CHECK(q_lens.scalar_type() == at::kLong && k_lens.scalar_type() == at::kLong &&
                  starts.scalar_type() == at::kLong && q_lens.is_contiguous() && k_lens.is_contiguous() &&
                  starts.is_contiguous(),
              "mfdr_C::sawa: lengths and starts must be contiguous int64");
  TORCH_CHECK(q_lens.numel() == q.size(0) && k_lens.numel() == q.size(0) && starts.numel() == q.size(0) * q.size(2),
              "mfdr_C::sawa: lengths (B,) and starts (B, L) do not match q");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sawa_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& q_lens, const at::Tensor& k_lens,
    const at::Tensor& starts, const std::optional<at::Tensor>& force_level, int64_t window, int64_t levels, bool joint,
    double scale) {
  check_inputs(q, k, v, q_lens, k_lens, starts);
  auto out = at::empty({q.size(0), q.size(1), q.size(2), v.size(3)}, q.options());
  auto lvl = at::empty({q.size(0), q.size(1), q.size(2)}, q.options().dtype(at::kChar));
  auto weights = at::empty({q.size(0), q.size(1), q.size(2), 3 * window}, q.options().dtype(weights_dtype(q)));
  at::Tensor force = force_level.has_value() ? force_level->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "sawa_fwd_cpu", [&] {
    sawa_fwd_kernel<scalar_t>(q, k, v, q_lens, k_lens, starts, force, window, levels, joint, scale, out, lvl, weights);
  });
  return {out, lvl, weights};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> sawa_bwd_cpu(const at::Tensor& grad_out, const at::Tensor& q,
                                                             const at::Tensor& k, const at::Tensor& v,
                                                             const at::Tensor& q_lens, const at::Tensor& k_lens,
                                                             const at::Tensor& starts, const at::Tensor& weights,
                                                             int64_t window, bool joint, double scale) {
  check_inputs(q, k, v, q_lens, k_lens, starts);
  TORCH_CHECK(last_dim_contiguous(grad_out) &&
                  grad_out.sizes() == at::IntArrayRef({q.size(0), q.size(1), q.size(2), v.size(3)}),
              "mfdr_C::sawa_bwd_cpu: grad_out must be (B, H, L, dv) with a contiguous last dim");
  const int64_t S = 3 * window;
  TORCH_CHECK(weights.is_contiguous() && weights.device().is_cpu() &&
                  weights.scalar_type() == weights_dtype(q) &&
                  weights.sizes() == at::IntArrayRef({q.size(0), q.size(1), q.size(2), S}),
              "mfdr_C::sawa_bwd_cpu: weights must be the forward's (B, H, L, 3 window) per-slot weights (contiguous, "
              "float64 for float64 inputs, else float32)");
  // the gradients in the layout of q, k, v (a head view of a (B, N, H*d) tensor gives one: no copy back)
  auto dq = at::empty_like(q), dk = at::empty_like(k), dv = at::empty_like(v);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, q.scalar_type(), "sawa_bwd_cpu", [&] {
    sawa_bwd_kernel<scalar_t>(grad_out, q, k, v, q_lens, k_lens, starts, weights, window, joint, scale, dq, dk, dv);
  });
  return {dq, dk, dv};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(mfdr_C, m) {
  m.def(
      "sawa_fwd_cpu(Tensor q, Tensor k, Tensor v, Tensor q_lens, Tensor k_lens, Tensor starts, Tensor? force_level, "
      "int window, int levels, bool joint, float scale) -> (Tensor, Tensor, Tensor)");
  m.def(
      "sawa_bwd_cpu(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor q_lens, Tensor k_lens, Tensor starts, "
      "Tensor weights, int window, bool joint, float scale) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(mfdr_C, CPU, m) {
  m.impl("sawa_fwd_cpu", &sawa_fwd_cpu);
  m.impl("sawa_bwd_cpu", &sawa_bwd_cpu);
}

}  // namespace mfdr
