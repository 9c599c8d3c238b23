"""Triton SAWA: forward and backward kernels and their launchers (SPEC §1).

CUDA tensors in fp16, bf16 or fp32; CPU tensors in fp32 or fp64 under ``TRITON_INTERPRET=1`` (tests).
Scores, softmaxes and sums accumulate in fp32 (fp64 for fp64 inputs).

**Tiles.** One program per (block of ``BLOCK_Q`` queries, batch·head). Each query ``i`` with start
``s`` sees three rings of exactly ω slots each, addressed by index from its window start (the paper's
"expansion by index slicing"; ``RW = next_power_of_2(ω)`` lanes per ring, the tail masked)::

    ring 0  slot t -> frame s + t                                        S0 = [s, s+ω)
    ring r  slot t -> frame s - r·ω/2 + t             (t <  ω/2)         left half-window of S_r
                     frame s + ω + (r-1)·ω/2 + t - ω/2 (t >= ω/2)        right half-window of S_r

A ring's scores and weights are ``[BLOCK_Q, RW]`` tensors. Its keys are read by a loop over its slots,
``SB`` at a time: each step gathers the rows ``k[s_i + o_t]`` of the block's queries as one
``[BLOCK_Q, SB, d]`` tile (whole contiguous rows: vectorized loads) and reduces it against q, held in
registers: ``tl.sum(q[:, None, :] * k, axis=2)``. The output and the gradients are the same loop with
``acc += w[:, t] * v[s_i + o_t]``. We gather per query instead of loading the block's contiguous span
``[s_first - ω, s_last + 2ω)`` and masking a band of ``tl.dot`` scores because ``window_starts`` are
arbitrary non-decreasing frames: a block's span is unbounded (a jump in the starts), a query's is 3ω.
Overlapping spans re-read frames from L1/L2, not from DRAM. Nothing of size ``L×T`` and no
re-windowed K exists; the forward allocates only ``out``, ``level`` and the scale (one element in the
accumulation dtype: a float argument would be fp32, inexact for fp64 runs).

**Lazy expansion.** The forward computes ring 0, its softmax and key-point count, decides level 1 per
row (``tl.where``), then gathers ring 1 *only for the rows that expanded* (masked loads move no bytes;
a block with no expanded row skips the ring's loop), decides level 2, then ring 2 likewise. V is
read only for the active frames. ``force_level`` replaces the decisions.

**Backward.** Pass 1 (same grid) recomputes the weights of the saved levels, ``dL/dw_j = <do_i, v_j>``,
``ds_j = w_j (dL/dw_j - Σ_seg w dL/dw) · scale`` and ``dq``. dk/dv then come from one of:

- ``"blocks"`` (default): pass 1 stores the weights P and the score gradients DS per slot,
  ``(B·H, L, 3, RW)`` in fp32 (24·RW bytes per query: 384 B at ω = 10, q's row at d = 192 in fp16);
  pass 2, one program per (key block of ``BLOCK_K`` frames, batch·head), sums
  ``dk = DSᵀ q`` and ``dv = Pᵀ do`` with ``tl.dot`` over the queries whose span holds the block.
  Starts are non-decreasing (the op validates it; padded entries are ``T``), so those queries are a
  contiguous range, found on the host by ``torch.searchsorted`` (O(B·T/BLOCK_K), no sync).
- ``"atomic"``: pass 1 adds ``ds·q`` and ``w·do`` into fp32 dk/dv buffers with ``tl.atomic_add``.

"blocks" is the default: it is deterministic, needs no fp32 copies of dk/dv (8·T·d bytes per head in
the atomic flavour, plus a cast), does dk/dv on tensor cores (``tl.dot``; fp16/bf16 operands with fp32
accumulation, as flash-attention's backward) instead of 3ω scattered atomic rows per query, and each
frame receives ~3ω/hop contributions, which atomics would serialize.
The choice is by reasoning, not yet by measurement: ``benchmarks/gpu_check.py`` times both on a GPU.

**Tuning.** ``triton.autotune`` over a few configs on CUDA (all compiled offline for sm_90 without
register spills; none timed yet); a single config under the interpreter.
``T`` and ``L`` are not specialized (no recompile per length). ``torch.compile`` sees these
launchers only through the opaque custom op of ``op.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _env

_INTERPRET = _env.triton_interpret()
BLOCK_K = 64  # frames per program of backward pass 2 (fixed: the host-side query ranges depend on it)
DKDV = ("blocks", "atomic")


# ----------------------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)


@triton.jit
def _offset(t, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr):
    """Offset from the window start of slot ``t`` (scalar or tensor) of ring R (module docstring)."""
    if R == 0:
        o = t
    else:
        o = tl.where(t < HALF, t - R * HALF, W + (R - 1) * HALF + t - HALF)
    return o


@triton.jit
def _ring(s, rows, k_len, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr, RW: tl.constexpr):
    """``[BQ, RW]``: which slots of ring R hold an existing frame, for the rows on the mask ``rows [BQ]``."""
    t = tl.arange(0, RW)
    frame = s[:, None] + _offset(t, R, W, HALF)[None, :]  # [BQ, RW] int64
    return (t[None, :] < W) & (frame >= 0) & (frame < k_len) & rows[:, None]


@triton.jit
def _slots(s, rows, k_len, t0, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr, SB: tl.constexpr):
    """Slots ``t = t0 + [0, SB)`` of ring R: ``t [SB]``, frames ``[BQ, SB]`` and which of them exist."""
    t = t0 + tl.arange(0, SB)
    f = s[:, None] + _offset(t, R, W, HALF)[None, :]
    return t, f, rows[:, None] & (t < W)[None, :] & (f >= 0) & (f < k_len)


@triton.jit
def _gather(b_base, f, ok, E: tl.constexpr, EP: tl.constexpr):
    """``[BQ, SB, EP]``: rows ``f`` of a (T, E) matrix (the keys/values by index), 0 where not ``ok``."""
    e = tl.arange(0, EP)
    mask = ok[:, :, None] & (e < E)[None, None, :]
    return tl.load(b_base + f[:, :, None] * E + e[None, None, :], mask=mask, other=0)


@triton.jit
def _columns(c, t, RW: tl.constexpr):
    """``[BQ, SB]``: the columns ``t [SB]`` of ``c [BQ, RW]``."""
    tid = tl.arange(0, RW)
    return tl.sum(tl.where(tid[None, None, :] == t[None, :, None], c[:, None, :], 0), axis=2)


@triton.jit
def _ring_dots(a, b_base, s, rows, k_len, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr,
               RW: tl.constexpr, E: tl.constexpr, EP: tl.constexpr, ACC: tl.constexpr, SB: tl.constexpr):
    """``[BQ, RW]``: <a_i, b_{s_i + o_t}> for the slots t of ring R (0 off ``rows`` and missing frames).

    ``a [BQ, EP]`` stays in registers; SB slots per step, each a gathered ``[BQ, SB, EP]`` load.
    """
    x = tl.zeros([a.shape[0], RW], ACC)
    tid = tl.arange(0, RW)
    for t0 in range(0, W, SB):
        t, f, ok = _slots(s, rows, k_len, t0, R, W, HALF, SB)
        xc = tl.sum(a[:, None, :] * _gather(b_base, f, ok, E, EP).to(ACC), axis=2)  # [BQ, SB]
        x += tl.sum(tl.where(tid[None, None, :] == t[None, :, None], xc[:, :, None], 0), axis=1)  # columns t
    return x


@triton.jit
def _ring_combine(acc, c, b_base, s, rows, k_len, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr,
                  RW: tl.constexpr, E: tl.constexpr, EP: tl.constexpr, ACC: tl.constexpr, SB: tl.constexpr):
    """``acc [BQ, EP] + Σ_t c[:, t] b_{s + o_t}`` over the slots t of ring R."""
    for t0 in range(0, W, SB):
        t, f, ok = _slots(s, rows, k_len, t0, R, W, HALF, SB)
        acc += tl.sum(_columns(c, t, RW)[:, :, None] * _gather(b_base, f, ok, E, EP).to(ACC), axis=1)
    return acc


@triton.jit
def _ring_scatter(dst_base, c, a, s, rows, k_len, R: tl.constexpr, W: tl.constexpr, HALF: tl.constexpr,
                  RW: tl.constexpr, E: tl.constexpr, EP: tl.constexpr, SB: tl.constexpr):
    """Atomic flavour: ``dst_{s_i + o_t} += c[i, t] a_i`` over the slots t of ring R."""
    e = tl.arange(0, EP)
    for t0 in range(0, W, SB):
        t, f, ok = _slots(s, rows, k_len, t0, R, W, HALF, SB)
        val = _columns(c, t, RW)[:, :, None] * a[:, None, :]  # [BQ, SB, EP]
        mask = ok[:, :, None] & (e < E)[None, None, :]
        tl.atomic_add(dst_base + f[:, :, None] * E + e[None, None, :], val, mask=mask)


@triton.jit
def _mmax(x, m):
    """Row max of x over the mask ``m``; -inf for empty rows."""
    return tl.max(tl.where(m, x, float("-inf")), axis=1)


@triton.jit
def _mexp(x, m, mx):
    """exp(x - mx) on the mask, 0 elsewhere (no inf - inf: masked lanes take exp(-inf))."""
    return tl.exp(tl.where(m, x - mx[:, None], float("-inf")))


@triton.jit
def _norm(p, z):
    return p / tl.where(z > 0, z, 1)[:, None]


@triton.jit
def _softmax(x, m):
    """Softmax of each row of x over the mask ``m``; 0 off the mask and on empty rows."""
    p = _mexp(x, m, _mmax(x, m))
    return _norm(p, tl.sum(p, axis=1))


@triton.jit
def _weights(x0, x1, x2, m0, m1, m2, JOINT: tl.constexpr):
    """Weights of the active frames: one softmax per ring (segment) or one over all of them (joint)."""
    if JOINT:
        mx = tl.maximum(tl.maximum(_mmax(x0, m0), _mmax(x1, m1)), _mmax(x2, m2))
        p0, p1, p2 = _mexp(x0, m0, mx), _mexp(x1, m1, mx), _mexp(x2, m2, mx)
        z = tl.sum(p0, axis=1) + tl.sum(p1, axis=1) + tl.sum(p2, axis=1)
        w0, w1, w2 = _norm(p0, z), _norm(p1, z), _norm(p2, z)
    else:
        w0, w1, w2 = _softmax(x0, m0), _softmax(x1, m1), _softmax(x2, m2)
    return w0, w1, w2


@triton.jit
def _count(m, x, thr):
    """Per row: #{j on the mask: x_j > thr} (strict, SPEC §1)."""
    return tl.sum((m & (x > thr[:, None])).to(tl.int32), axis=1)


@triton.jit
def _rows(q_lens_ptr, k_lens_ptr, starts_ptr, bh, H, L, BLOCK_Q: tl.constexpr):
    """The block's query indices, in-range and valid-query masks, window starts, k_len, row ids (int64)."""
    b = bh // H
    offs = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BQ]
    in_l = offs < L
    row_ok = in_l & (offs < tl.load(q_lens_ptr + b))
    s = tl.load(starts_ptr + b * L + offs, mask=in_l, other=0)  # [BQ] int64
    return offs, in_l, row_ok, s, tl.load(k_lens_ptr + b), bh * L + offs


@triton.jit
def _load_rows(base, row, rows, E: tl.constexpr, EP: tl.constexpr, ACC: tl.constexpr):
    """``[BQ, EP]`` rows ``row`` of a (·, E) matrix, 0 off the mask ``rows`` and past E."""
    e = tl.arange(0, EP)
    mask = rows[:, None] & (e < E)[None, :]
    return tl.load(base + row[:, None] * E + e[None, :], mask=mask, other=0).to(ACC)


# ----------------------------------------------------------------------------------------------------
# Forward


@triton.jit(do_not_specialize=["T", "L"])
def _sawa_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, level_ptr, force_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr,
    T, L, H,
    W: tl.constexpr, HALF: tl.constexpr, RW: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    DV: tl.constexpr, DVP: tl.constexpr, LEVELS: tl.constexpr, JOINT: tl.constexpr, FORCED: tl.constexpr,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, SB: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_Q), B·H)``: out ``(B, H, L, DV)`` and int8 level ``(B, H, L)`` of a block."""
    bh = tl.program_id(1).to(tl.int64)
    offs, in_l, row_ok, s, k_len, row = _rows(q_lens_ptr, k_lens_ptr, starts_ptr, bh, H, L, BLOCK_Q)
    scale = tl.load(scale_ptr)
    k_base = k_ptr + bh * T * D
    v_base = v_ptr + bh * T * DV
    q = _load_rows(q_ptr, row, row_ok, D, DP, ACC)  # [BQ, DP]

    # Ring 0 (S0): base-window scores and softmax, Alg. 1 lines 2-4.
    m0 = _ring(s, row_ok, k_len, 0, W, HALF, RW)  # [BQ, RW]
    n0 = tl.sum(m0.to(tl.int32), axis=1)  # [BQ]
    base = row_ok & (n0 > 0)  # else: empty S0 (start at or past k_len) or padded query -> 0, level 0
    x0 = _ring_dots(q, k_base, s, row_ok, k_len, 0, W, HALF, RW, D, DP, ACC, SB) * scale
    a0 = _softmax(x0, m0)
    level = tl.zeros([BLOCK_Q], tl.int32)
    if FORCED:
        level = tl.where(base, tl.load(force_ptr + row, mask=in_l, other=0).to(tl.int32), 0)
    x1 = tl.zeros([BLOCK_Q, RW], ACC)
    x2 = tl.zeros([BLOCK_Q, RW], ACC)
    m1 = tl.zeros([BLOCK_Q, RW], tl.int32) > 0  # rings 1 and 2: inactive until decided
    m2 = m1
    if LEVELS >= 1:
        e1 = _ring(s, base, k_len, 1, W, HALF, RW)
        e2 = _ring(s, base, k_len, 2, W, HALF, RW)
        if not FORCED:  # lines 5-6: expand iff #{a_j > 1/|S0|} >= ω/2 and S1 is non-empty
            c0 = _count(m0, a0, 1.0 / tl.maximum(n0, 1).to(ACC))
            level = tl.where(base & (c0 >= HALF) & (tl.sum(e1.to(tl.int32), axis=1) > 0), 1, 0)
        rows1 = base & (level >= 1)  # only the expanded rows read their ring-1 keys
        m1 = e1 & rows1[:, None]
        if tl.max(level, axis=0) >= 1:
            x1 = _ring_dots(q, k_base, s, rows1, k_len, 1, W, HALF, RW, D, DP, ACC, SB) * scale
        if LEVELS >= 2:
            if not FORCED:  # lines 11-12: over A1 = S0 ∪ S1, #{w_j > mean(w)} >= ω and S2 non-empty
                w0, w1, _ = _weights(x0, x1, x2, m0, m1, m2, JOINT)
                n1 = tl.sum(m0.to(tl.int32), axis=1) + tl.sum(m1.to(tl.int32), axis=1)
                mean = (tl.sum(w0, axis=1) + tl.sum(w1, axis=1)) / tl.maximum(n1, 1).to(ACC)
                c1 = _count(m0, w0, mean) + _count(m1, w1, mean)
                n2 = tl.sum(e2.to(tl.int32), axis=1)
                level = tl.where((level >= 1) & (c1 >= W) & (n2 > 0), 2, level)
            rows2 = base & (level >= 2)
            m2 = e2 & rows2[:, None]
            if tl.max(level, axis=0) >= 2:
                x2 = _ring_dots(q, k_base, s, rows2, k_len, 2, W, HALF, RW, D, DP, ACC, SB) * scale

    # out_i = Σ_j w_j v_j over the active frames; V is read only there.
    w0, w1, w2 = _weights(x0, x1, x2, m0, m1, m2, JOINT)
    acc = tl.zeros([BLOCK_Q, DVP], ACC)
    acc = _ring_combine(acc, w0, v_base, s, row_ok, k_len, 0, W, HALF, RW, DV, DVP, ACC, SB)
    if LEVELS >= 1:
        if tl.max(level, axis=0) >= 1:
            acc = _ring_combine(acc, w1, v_base, s, rows1, k_len, 1, W, HALF, RW, DV, DVP, ACC, SB)
    if LEVELS >= 2:
        if tl.max(level, axis=0) >= 2:
            acc = _ring_combine(acc, w2, v_base, s, rows2, k_len, 2, W, HALF, RW, DV, DVP, ACC, SB)
    e = tl.arange(0, DVP)
    tl.store(out_ptr + row[:, None] * DV + e[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=in_l[:, None] & (e < DV)[None, :])
    tl.store(level_ptr + row, level.to(tl.int8), mask=in_l)


# ----------------------------------------------------------------------------------------------------
# Backward


@triton.jit(do_not_specialize=["T", "L"])
def _sawa_bwd_q_kernel(
    do_ptr, q_ptr, k_ptr, v_ptr, level_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr,
    dq_ptr, p_ptr, ds_ptr, dk_ptr, dv_ptr,
    T, L, H,
    W: tl.constexpr, HALF: tl.constexpr, RW: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
    DV: tl.constexpr, DVP: tl.constexpr, REACH: tl.constexpr, JOINT: tl.constexpr, ATOMIC: tl.constexpr,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, SB: tl.constexpr,
):
    """Pass 1, grid ``(cdiv(L, BLOCK_Q), B·H)``: dq; then P and DS per slot (blocks) or atomic dk/dv."""
    bh = tl.program_id(1).to(tl.int64)
    offs, in_l, row_ok, s, k_len, row = _rows(q_lens_ptr, k_lens_ptr, starts_ptr, bh, H, L, BLOCK_Q)
    scale = tl.load(scale_ptr)
    k_base = k_ptr + bh * T * D
    v_base = v_ptr + bh * T * DV
    q = _load_rows(q_ptr, row, row_ok, D, DP, ACC)  # [BQ, DP]
    do = _load_rows(do_ptr, row, row_ok, DV, DVP, ACC)  # [BQ, DVP]

    m0 = _ring(s, row_ok, k_len, 0, W, HALF, RW)
    base = row_ok & (tl.sum(m0.to(tl.int32), axis=1) > 0)
    level = tl.where(base, tl.load(level_ptr + row, mask=in_l, other=0).to(tl.int32), 0)
    rows1 = base & (level >= 1)
    rows2 = base & (level >= 2)
    m1 = _ring(s, rows1, k_len, 1, W, HALF, RW)
    m2 = _ring(s, rows2, k_len, 2, W, HALF, RW)

    # Recompute the weights of the saved levels; g_j = dL/dw_j = <do_i, v_j>.
    x0 = _ring_dots(q, k_base, s, row_ok, k_len, 0, W, HALF, RW, D, DP, ACC, SB) * scale
    g0 = _ring_dots(do, v_base, s, row_ok, k_len, 0, W, HALF, RW, DV, DVP, ACC, SB)
    x1 = tl.zeros([BLOCK_Q, RW], ACC)
    x2 = tl.zeros([BLOCK_Q, RW], ACC)
    g1 = tl.zeros([BLOCK_Q, RW], ACC)
    g2 = tl.zeros([BLOCK_Q, RW], ACC)
    if REACH >= 1:
        if tl.max(level, axis=0) >= 1:
            x1 = _ring_dots(q, k_base, s, rows1, k_len, 1, W, HALF, RW, D, DP, ACC, SB) * scale
            g1 = _ring_dots(do, v_base, s, rows1, k_len, 1, W, HALF, RW, DV, DVP, ACC, SB)
        if tl.max(level, axis=0) >= 2:
            x2 = _ring_dots(q, k_base, s, rows2, k_len, 2, W, HALF, RW, D, DP, ACC, SB) * scale
            g2 = _ring_dots(do, v_base, s, rows2, k_len, 2, W, HALF, RW, DV, DVP, ACC, SB)
    w0, w1, w2 = _weights(x0, x1, x2, m0, m1, m2, JOINT)

    # ds_j = dL/dx_j · scale = w_j (g_j - Σ_{j' in j's softmax} w_j' g_j') · scale; 0 off the active frames.
    s0 = tl.sum(w0 * g0, axis=1)
    s1 = tl.sum(w1 * g1, axis=1)
    s2 = tl.sum(w2 * g2, axis=1)
    if JOINT:
        s0 = s0 + s1 + s2
        s1 = s0
        s2 = s0
    ds0 = w0 * (g0 - s0[:, None]) * scale  # [BQ, RW]
    ds1 = w1 * (g1 - s1[:, None]) * scale
    ds2 = w2 * (g2 - s2[:, None]) * scale

    # dq_i = Σ_j ds_ij k_j
    dq = tl.zeros([BLOCK_Q, DP], ACC)
    dq = _ring_combine(dq, ds0, k_base, s, row_ok, k_len, 0, W, HALF, RW, D, DP, ACC, SB)
    if REACH >= 1:
        if tl.max(level, axis=0) >= 1:
            dq = _ring_combine(dq, ds1, k_base, s, rows1, k_len, 1, W, HALF, RW, D, DP, ACC, SB)
        if tl.max(level, axis=0) >= 2:
            dq = _ring_combine(dq, ds2, k_base, s, rows2, k_len, 2, W, HALF, RW, D, DP, ACC, SB)
    e = tl.arange(0, DP)
    tl.store(dq_ptr + row[:, None] * D + e[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=in_l[:, None] & (e < D)[None, :])

    if ATOMIC:  # dk_j += ds_ij q_i, dv_j += w_ij do_i
        dk_base = dk_ptr + bh * T * D
        dv_base = dv_ptr + bh * T * DV
        _ring_scatter(dk_base, ds0, q, s, row_ok, k_len, 0, W, HALF, RW, D, DP, SB)
        _ring_scatter(dv_base, w0, do, s, row_ok, k_len, 0, W, HALF, RW, DV, DVP, SB)
        if REACH >= 1:
            if tl.max(level, axis=0) >= 1:
                _ring_scatter(dk_base, ds1, q, s, rows1, k_len, 1, W, HALF, RW, D, DP, SB)
                _ring_scatter(dv_base, w1, do, s, rows1, k_len, 1, W, HALF, RW, DV, DVP, SB)
            if tl.max(level, axis=0) >= 2:
                _ring_scatter(dk_base, ds2, q, s, rows2, k_len, 2, W, HALF, RW, D, DP, SB)
                _ring_scatter(dv_base, w2, do, s, rows2, k_len, 2, W, HALF, RW, DV, DVP, SB)
    else:  # P, DS: (B·H, L, 3, RW), every slot written (zeros off the active frames)
        t = tl.arange(0, RW)
        slot = row[:, None] * (3 * RW) + t[None, :]  # [BQ, RW]
        keep = in_l[:, None] & (t[None, :] < RW)
        tl.store(p_ptr + slot, w0, mask=keep)
        tl.store(p_ptr + slot + RW, w1, mask=keep)
        tl.store(p_ptr + slot + 2 * RW, w2, mask=keep)
        tl.store(ds_ptr + slot, ds0, mask=keep)
        tl.store(ds_ptr + slot + RW, ds1, mask=keep)
        tl.store(ds_ptr + slot + 2 * RW, ds2, mask=keep)


@triton.jit
def _kv_block(src_ptr, g_ptr, dst_ptr, starts_row, bh, i0, i1, j, jm, L,
              W: tl.constexpr, HALF: tl.constexpr, RW: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
              E: tl.constexpr, LOW_DOT: tl.constexpr, ACC: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[j] = Σ_i S_ij g_i over the queries i in [i0, i1): S per slot (P or DS), g rows (do or q)."""
    for e0 in range(0, E, BLOCK_D):
        e = e0 + tl.arange(0, BLOCK_D)
        em = e < E
        acc = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        for q0 in range(i0, i1, BLOCK_Q):
            ii = q0 + tl.arange(0, BLOCK_Q)  # [BQ]
            im = ii < i1
            s = tl.load(starts_row + ii, mask=im, other=0)
            o = j[None, :] - s[:, None]  # [BQ, BK] offset of frame j from query i's window start
            ring = tl.where((o >= 0) & (o < W), 0, tl.where((o >= -HALF) & (o < W + HALF), 1, 2))
            t = tl.where(ring == 0, o, tl.where(o < 0, o + ring * HALF, o - W - (ring - 1) * HALF + HALF))
            m = im[:, None] & jm[None, :] & (o >= LO) & (o < HI)
            r = bh * L + ii  # [BQ] int64
            sv = tl.load(src_ptr + (r[:, None] * 3 + ring) * RW + t, mask=m, other=0)  # [BQ, BK]
            gm = im[:, None] & em[None, :]
            g = tl.load(g_ptr + r[:, None] * E + e[None, :], mask=gm, other=0)  # [BQ, BD]
            if LOW_DOT:  # fp16/bf16: tensor-core dot in the input dtype, fp32 accumulation (flash-attention)
                acc += tl.dot(tl.trans(sv.to(g.dtype)), g)
            else:
                acc += tl.dot(tl.trans(sv), g.to(ACC), input_precision="ieee")  # [BK, BQ] @ [BQ, BD]
        tl.store(dst_ptr + j[:, None] * E + e[None, :], acc.to(dst_ptr.dtype.element_ty),
                 mask=jm[:, None] & em[None, :])


@triton.jit(do_not_specialize=["T", "L"])
def _sawa_bwd_kv_kernel(
    do_ptr, q_ptr, p_ptr, ds_ptr, ranges_ptr, starts_ptr, dk_ptr, dv_ptr,
    T, L, H, NKB,
    W: tl.constexpr, HALF: tl.constexpr, RW: tl.constexpr, LO: tl.constexpr, HI: tl.constexpr,
    D: tl.constexpr, DV: tl.constexpr, LOW_DOT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Pass 2, grid ``(cdiv(T, BLOCK_K), B·H)``: dk = DSᵀ q, dv = Pᵀ do for a block of frames.

    The queries whose span ``[s_i + LO, s_i + HI)`` meets the block are ``[i0, i1)`` from ``ranges``.
    """
    kb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    i0 = tl.load(ranges_ptr + (b * NKB + kb) * 2)
    i1 = tl.load(ranges_ptr + (b * NKB + kb) * 2 + 1)
    j = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK] frames
    jm = j < T
    starts_row = starts_ptr + b * L
    _kv_block(ds_ptr, q_ptr, dk_ptr + bh * T * D, starts_row, bh, i0, i1, j, jm, L, W, HALF, RW, LO, HI, D,
              LOW_DOT, ACC, BLOCK_K, BLOCK_Q, BLOCK_D)
    _kv_block(p_ptr, do_ptr, dv_ptr + bh * T * DV, starts_row, bh, i0, i1, j, jm, L, W, HALF, RW, LO, HI, DV,
              LOW_DOT, ACC, BLOCK_K, BLOCK_Q, BLOCK_D)


# ----------------------------------------------------------------------------------------------------
# Tuning: several configs on CUDA, one under the interpreter.


def _prune_kv(configs, named_args, **kwargs):
    """Drop head-dim chunks wider than the padded head dim: they only add masked lanes."""
    width = max(16, triton.next_power_of_2(max(kwargs.get("D", 16), kwargs.get("DV", 16))))
    kept = [c for c in configs if c.kwargs["BLOCK_D"] <= width]
    return kept or configs[:1]


def _tuned(cuda_configs, interpret_config, key, **kw):
    configs = [interpret_config] if _INTERPRET else cuda_configs
    return triton.autotune(configs, key=key, **kw)


# SB: slots gathered per step ([BLOCK_Q, SB, head dim] tiles): one on the GPU, all RW at once under the
# interpreter (numpy is fast per op, slow per op count). On the GPU the registers grow with the rows per
# thread (BLOCK_Q / num_warps, each holding its [RW] score/weight rows): offline compiles for sm_90
# (fp16, d=256, ω=10) showed no spills at <= 2 rows per thread and spills at 4, or with SB = 2.
_fwd = _tuned(
    [triton.Config({"BLOCK_Q": bq, "SB": 1}, num_warps=nw, num_stages=1)
     for bq, nw in [(4, 4), (8, 4), (8, 8), (16, 8)]],
    triton.Config({"BLOCK_Q": 16}), ["W", "D", "DV", "JOINT", "LEVELS", "FORCED"],
)(_sawa_fwd_kernel)
_bwd_q = _tuned(
    [triton.Config({"BLOCK_Q": bq, "SB": 1}, num_warps=nw, num_stages=1)
     for bq, nw in [(4, 4), (8, 8), (16, 8)]],
    triton.Config({"BLOCK_Q": 16}), ["W", "D", "DV", "JOINT", "REACH", "ATOMIC"],
    reset_to_zero=["dk_ptr", "dv_ptr"],  # the atomic flavour accumulates: every benchmark run starts from 0
)(_sawa_bwd_q_kernel)
_bwd_kv = _tuned(
    [triton.Config({"BLOCK_Q": bq, "BLOCK_D": bd}, num_warps=nw, num_stages=ns)
     for bq, bd, nw, ns in [(16, 64, 4, 2), (16, 128, 8, 2), (32, 128, 8, 2), (32, 64, 8, 3)]],
    triton.Config({"BLOCK_Q": 16, "BLOCK_D": 16}), ["W", "D", "DV"],
    prune_configs_by={"early_config_prune": _prune_kv},
)(_sawa_bwd_kv_kernel)


# ----------------------------------------------------------------------------------------------------
# Launchers (normalized arguments of op.py: contiguous q/k/v, int64 lengths (B,), starts (B, L) with
# padded entries = T, force_level None or int8 (B, H, L)).


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _scale(q: torch.Tensor, scale: float) -> torch.Tensor:
    """The scale as a 1-element tensor in the accumulation dtype (a float argument would be fp32)."""
    return torch.full((1,), scale, dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
                      device=q.device)


def _consts(q: torch.Tensor, window: int, D: int, DV: int) -> dict:
    """Compile-time arguments shared by the query-block kernels (head dims padded to a power of 2)."""
    rw = triton.next_power_of_2(window)
    slots = {"SB": rw} if _INTERPRET else {}  # the interpreter's config leaves SB to the launcher
    return dict(W=window, HALF=window // 2, RW=rw, D=D, DP=triton.next_power_of_2(D), DV=DV,
                DVP=triton.next_power_of_2(DV), ACC=_acc(q.dtype), **slots)


def _check_grid(B: int, H: int) -> None:
    if B * H > 65535:
        raise ValueError(f"the triton SAWA kernels take B*H <= 65535 (grid axis 1), got B*H = {B * H}")


def sawa_forward(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale):
    """Returns ``(out (B, H, L, dv), level (B, H, L) int8)``."""
    B, H, L, D = q.shape
    T, DV = k.shape[2], v.shape[3]
    _check_grid(B, H)
    out = torch.empty(B, H, L, DV, dtype=q.dtype, device=q.device)
    level = torch.empty(B, H, L, dtype=torch.int8, device=q.device)
    forced = force_level is not None

    def grid(meta):
        return (triton.cdiv(L, meta["BLOCK_Q"]), B * H)

    _fwd[grid](
        q, k, v, out, level, force_level if forced else level, q_lens, k_lens, starts, _scale(q, scale),
        T, L, H, LEVELS=levels, JOINT=joint, FORCED=forced, **_consts(q, window, D, DV),
    )
    return out, level


def _query_ranges(starts, q_lens, T, lo, hi, nkb):
    """(B, nkb, 2) int64: the queries ``[i0, i1)`` whose span ``[s + lo, s + hi)`` meets key block ``kb``.

    Query i touches frame j iff ``j - hi < s_i <= j - lo``; starts are non-decreasing, padded ones = T.
    """
    j0 = torch.arange(nkb, device=starts.device, dtype=torch.int64) * BLOCK_K
    j1 = torch.clamp(j0 + BLOCK_K, max=T)
    B = starts.shape[0]
    i0 = torch.searchsorted(starts, (j0 - hi).expand(B, nkb).contiguous(), right=True)
    i1 = torch.searchsorted(starts, (j1 - 1 - lo).expand(B, nkb).contiguous(), right=True)
    i1 = torch.minimum(i1, q_lens[:, None])
    return torch.stack([i0, torch.maximum(i1, i0)], dim=-1).contiguous()


def sawa_backward(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale, dkdv="blocks"):
    """Gradients ``(dq, dk, dv)`` for the forward's levels. ``dkdv``: "blocks" (default) or "atomic"."""
    if dkdv not in DKDV:
        raise ValueError(f"dkdv must be one of {DKDV}, got {dkdv!r}")
    B, H, L, D = q.shape
    T, DV = k.shape[2], v.shape[3]
    _check_grid(B, H)
    acc_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    RW = triton.next_power_of_2(window)
    expandable = window % 2 == 0  # levels > 0 needs an even window; an odd one only ever has ring 0
    reach = 2 if expandable else 0
    lo, hi = (-window, 2 * window) if expandable else (0, window)
    dq = torch.empty_like(q)
    atomic = dkdv == "atomic"
    if atomic:
        dk_acc = torch.zeros(B, H, T, D, dtype=acc_dtype, device=q.device)
        dv_acc = torch.zeros(B, H, T, DV, dtype=acc_dtype, device=q.device)
        p = ds = dk_acc  # unused
    else:
        p = torch.empty(B * H, L, 3, RW, dtype=acc_dtype, device=q.device)
        ds = torch.empty_like(p)
        dk_acc, dv_acc = p, ds  # unused (reset_to_zero only during autotuning; pass 1 rewrites them)

    def grid_q(meta):
        return (triton.cdiv(L, meta["BLOCK_Q"]), B * H)

    consts = _consts(q, window, D, DV)
    _bwd_q[grid_q](
        grad_out, q, k, v, level, q_lens, k_lens, starts, _scale(q, scale), dq, p, ds, dk_acc, dv_acc,
        T, L, H, REACH=reach, JOINT=joint, ATOMIC=atomic, **consts,
    )
    if atomic:
        return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype)

    nkb = triton.cdiv(T, BLOCK_K)
    ranges = _query_ranges(starts, q_lens, T, lo, hi, nkb)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    _bwd_kv[(nkb, B * H)](
        grad_out, q, p, ds, ranges, starts, dk, dv, T, L, H, nkb, W=window, HALF=window // 2, RW=RW,
        LO=lo, HI=hi, D=D, DV=DV, LOW_DOT=q.dtype in (torch.float16, torch.bfloat16), ACC=consts["ACC"],
        BLOCK_K=BLOCK_K,
    )
    return dq, dk, dv
