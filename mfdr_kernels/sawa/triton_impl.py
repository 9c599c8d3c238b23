"""Triton SAWA: forward and backward kernels and their launchers (SPEC §1).

CUDA tensors in fp16, bf16 or fp32; CPU tensors in fp32 or fp64 under ``TRITON_INTERPRET=1`` (tests; the
tests also drive these launchers in fp16 there: the interpreter's bf16 ``tl.dot`` is broken).
Scores, softmax statistics and sums accumulate in fp32 (fp64 for fp64 inputs).

**Tiles.** One program per (block of ``BLOCK_Q`` queries, batch·head), as flash-attention. The block's
queries, with window starts ``s_i``, reach the frames ``[s_i - ω, s_i + 2ω)``; the program walks the
block's span ``[s_first - ω, s_last + 2ω) ∩ [0, k_len)`` in chunks of ``BLOCK_N`` frames. A chunk is one
``[BLOCK_N, d]`` tile of K read by index from the frame (the paper's "expansion by index slicing": a
neighbour half-window is a range of frame offsets from the window start, nothing is re-windowed) and
one ``tl.dot`` gives the ``[BLOCK_Q, BLOCK_N]`` scores. Which ring a score belongs to is its offset
``o = j - s_i`` from the query's window start::

    ring 0  (S0)  0 <= o < ω
    ring 1  (S1)  -ω/2 <= o < 0      or  ω <= o < ω + ω/2
    ring 2  (S2)  -ω <= o < -ω/2     or  ω + ω/2 <= o < 2ω

so the three segment softmaxes are masked reductions of the same tile. With regular starts (hop h)
a block's span is ``(BLOCK_Q - 1)·h + 3ω`` frames: one or two chunks at the paper's shape. Starts are
arbitrary non-decreasing frames, so a span can be long (a jump in forced alignments): chunks that no
row of the block reaches are skipped by a scalar test, never loaded. Nothing of size ``L×T`` and no
re-windowed K exists; the forward allocates only ``out``, ``level`` and the scale (one element in the
accumulation dtype: a float argument would be fp32, inexact for fp64 runs).

**Forward passes** over the span (``while`` loops: runtime bounds, see below):

1. per-ring running max ``m_r`` and normalizer ``z_r`` (online softmax, as flash-attention) of every row;
2. with those final statistics, in one walk: the decisions, Alg. 1 lines 5-6 and 11-12
   (``c0 = #{a_j > 1/|S0|}`` over ring 0, ``c1 = #{w_j > mean}`` over rings 0 ∪ 1; the mean over ``A1``
   is ``2/|A1|`` for segment softmaxes and ``1/|A1|`` for the joint one: they sum to 2 and 1; skipped
   for ``levels = 0`` and ``force_level``), and one flash-attention accumulator per ring,
   ``U_r = Σ_{j in ring r} exp(x_j - m_r) v_j`` (``tl.dot``). The output then takes the rings of each
   row's level, normalized: ``out = Σ_{r <= level} U_r / z_r`` (segment) or with one joint normalizer.

So K is read twice and V once per chunk (the first read from DRAM, the second from L1/L2: a block's span
is a few to a few tens of KB). A three-pass forward (statistics; decisions; output over the decided
rings only, one accumulator) read K three times and used fewer registers; offline sm_90 compiles of this
two-pass one stay free of spills at d = 64 (``benchmarks/results/compile_check.md``). Neither is timed:
the three-pass forward is the alternative to measure if a GPU shows this one L2-bound.

**Backward.** Pass 1 (same grid) walks the active frames twice: the statistics of the saved levels
with, accumulated online beside each normalizer, ``Σ_seg w g`` (``g = dL/dw = do Vᵀ``); then
``ds = w (g - Σ_seg w g) · scale`` and ``dq = DS K`` (``tl.dot``). dk/dv then come from one of:

- ``"blocks"`` (default): pass 1 stores the weights P and score gradients DS of each query's reach,
  ``(B·H, L, 3ω)`` in fp32 indexed by the offset from ``s_i - ω`` (12·ω bytes each per query; zeros on
  the inactive frames); pass 2, one program per (key block of ``BLOCK_K`` frames, batch·head), sums
  ``dk = DSᵀ q`` and ``dv = Pᵀ do`` with ``tl.dot`` over the queries whose span holds the block. Starts
  are non-decreasing (the op validates it; padded entries are ``T``), so those queries are a contiguous
  range, found on the host by ``torch.searchsorted`` (O(B·T/BLOCK_K), no sync).
- ``"atomic"``: pass 1 adds the ``[BLOCK_N, d]`` tiles ``DSᵀ Q`` and ``Pᵀ dO`` of each chunk into fp32
  dk/dv buffers with ``tl.atomic_add``.

"blocks" is the default: it is deterministic and needs no fp32 copies of dk/dv (8·T·d bytes per head in
the atomic flavour, plus a cast); each frame is reached by the spans of ~3ω/hop + BLOCK_Q queries'
blocks, whose atomic tiles would collide. The choice is by reasoning, not yet by measurement:
``benchmarks/gpu_check.sh`` times both on a GPU.

**Precision.** fp16/bf16: ``tl.dot`` on tensor cores with fp32 accumulation; the weights and score
gradients are cast to the input dtype for ``W V``, ``DS K`` and pass 2, as flash-attention does. fp32:
exact (``"ieee"``), or TF32 after ``torch.set_float32_matmul_precision("high")`` (:func:`_precision`).
fp64 (interpreter): exact.

**Tuning** (section below; the pattern of ``mfdr_kernels._triton``, shared by every op). On CUDA the configs
that compile free of spills for sm_90, autotuned per size bucket, or one of them with
``MFDR_TRITON_AUTOTUNE=0``; a single config under the interpreter.
``T`` and ``L`` are not specialized (no recompile per length). Loops with runtime bounds are ``while``
loops: the triton 3.6 interpreter cannot take a loaded scalar as a ``range`` bound with numpy >= 2.4.
``torch.compile`` sees these launchers only through the opaque custom op of ``op.py``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton

BLOCK_K = 64  # frames per program of backward pass 2 (fixed: the host-side query ranges depend on it)
DKDV = ("blocks", "atomic")


# ----------------------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)


@triton.jit
def _dot(a, b, PREC: tl.constexpr):
    """a @ b accumulated in fp32 (fp64 for fp64) at the launcher's ``input_precision`` (:func:`_precision`)."""
    return tl.dot(a, b, input_precision=PREC)


@triton.jit
def _block(q_ptr, k_ptr, v_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr, T, L, H, D: tl.constexpr,
           DP: tl.constexpr, DV: tl.constexpr, BLOCK_Q: tl.constexpr):
    """The program's block of queries: batch·head ``bh``; in-range and valid-query masks; window starts
    and k_len (int32: frame arithmetic stays in 32 bits, the launcher checks T·d < 2**31); row ids (int64);
    the scale; the head's K and V; the block's q ``[BQ, DP]``."""
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    offs = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BQ]
    in_l = offs < L
    row_ok = in_l & (offs < tl.load(q_lens_ptr + b))
    s = tl.load(starts_ptr + b * L + offs, mask=in_l, other=0).to(tl.int32)  # [BQ]
    k_len = tl.load(k_lens_ptr + b).to(tl.int32)
    row = bh * L + offs
    q = _load_rows(q_ptr, row, row_ok, D, DP)
    return bh, in_l, row_ok, s, k_len, row, tl.load(scale_ptr), k_ptr + bh * T * D, v_ptr + bh * T * DV, q


@triton.jit
def _load_rows(base, row, rows, E: tl.constexpr, EP: tl.constexpr):
    """``[BQ, EP]`` rows ``row`` of a (·, E) matrix in its dtype, 0 off the mask ``rows`` and past E."""
    e = tl.arange(0, EP)
    return tl.load(base + row[:, None] * E + e[None, :], mask=rows[:, None] & (e < E)[None, :], other=0)


@triton.jit
def _tile(base, j, jm, E: tl.constexpr, EP: tl.constexpr):
    """``[BN, EP]``: frames ``j`` of a (T, E) matrix (K or V read by index), 0 off ``jm`` and past E."""
    e = tl.arange(0, EP)
    return tl.load(base + j[:, None] * E + e[None, :], mask=jm[:, None] & (e < E)[None, :], other=0)


@triton.jit
def _nrange(a, b, k_len):
    """Per row: the number of frames of ``[a, b) ∩ [0, k_len)``."""
    return tl.maximum(tl.minimum(b, k_len) - tl.maximum(a, 0), 0)


@triton.jit
def _span(lo_i, hi_i, rows, k_len):
    """``[lo, hi)``: the union of the rows' ranges ``[lo_i, hi_i)`` on the mask, clipped to the frames."""
    lo = tl.maximum(tl.min(tl.where(rows, lo_i, k_len), axis=0), 0)
    hi = tl.minimum(tl.max(tl.where(rows, hi_i, 0), axis=0), k_len)
    return lo, hi


@triton.jit
def _touches(lo_i, hi_i, rows, c, BLOCK_N: tl.constexpr):
    """Whether a row on the mask reaches a frame of the chunk ``[c, c + BLOCK_N)``."""
    return tl.sum((rows & (lo_i < c + BLOCK_N) & (hi_i > c)).to(tl.int32), axis=0) > 0


@triton.jit
def _ring_id(s, rows, j, jm, W: tl.constexpr, HALF: tl.constexpr, RINGS: tl.constexpr):
    """``[BQ, BN]`` int32: the ring (0, 1, 2; module docstring) of frame j for row i, 3 where the frame is
    in no ring up to ``RINGS``, off the rows on the mask, or off ``jm``."""
    o = j[None, :] - s[:, None]  # offset from the window start
    inner = (o >= 0) & (o < W)
    if RINGS == 0:
        ring = tl.where(inner, 0, 3)
    else:
        d = tl.where(o < 0, -o - 1, o - W)  # distance outside S0: [0, ω/2) ring 1, [ω/2, ω) ring 2
        ring = tl.where(inner, 0, tl.minimum(1 + d // HALF, 3))
    return tl.where(rows[:, None] & jm[None, :] & (ring <= RINGS), ring, 3)


@triton.jit
def _select(rid, a0, a1, a2):
    """``[BQ, BN]``: the per-row value of each element's ring (a2 for ring 3: masked by the callers)."""
    return tl.where(rid == 0, a0[:, None], tl.where(rid == 1, a1[:, None], a2[:, None]))


@triton.jit
def _finite(m):
    """A row max with -inf (empty row) replaced by 0: ``m' - _finite(m)`` is -inf, never inf - inf."""
    return tl.where(m > float("-inf"), m, 0)


@triton.jit
def _ringsum(v, rid, R: tl.constexpr):
    return tl.sum(tl.where(rid == R, v, 0), axis=1)


@triton.jit
def _ringmax(m, x, rid, R: tl.constexpr):
    return tl.maximum(m, tl.max(tl.where(rid == R, x, float("-inf")), axis=1))


@triton.jit
def _rescale(z, m, mx):
    """A normalizer of max ``m`` brought to the max ``mx >= m`` (0 for an empty segment). The clamp only
    matters for the rings a row does not use (``m > mx``), whose terms the callers drop: no inf there."""
    return z * tl.exp(tl.minimum(m - _finite(mx), 0))


@triton.jit
def _nz(z):
    return tl.where(z > 0, z, 1)


@triton.jit
def _count(mask, w, thr):
    """Per row: #{j on the mask: w_j > thr} (strict, SPEC §1)."""
    return tl.sum((mask & (w > thr[:, None])).to(tl.int32), axis=1)


@triton.jit
def _joint_stats(m0, z0, m1, z1, m2, z2, level):
    """Max and normalizer of one softmax over the rings of each row's level."""
    mx = tl.maximum(m0, tl.maximum(tl.where(level >= 1, m1, float("-inf")), tl.where(level >= 2, m2, float("-inf"))))
    z = _rescale(z0, m0, mx)
    z += tl.where(level >= 1, _rescale(z1, m1, mx), 0)
    z += tl.where(level >= 2, _rescale(z2, m2, mx), 0)
    return mx, z


@triton.jit
def _weights(x, rid, level, m0, z0, m1, z1, m2, z2, mx, zz, JOINT: tl.constexpr):
    """``[BQ, BN]`` weights of the active frames (ring <= the row's level): one softmax per ring, or one
    joint one; 0 elsewhere."""
    active = rid <= level[:, None]
    if JOINT:
        w = tl.exp(tl.where(active, x - mx[:, None], float("-inf"))) / _nz(zz)[:, None]
    else:
        w = tl.exp(tl.where(active, x - _select(rid, m0, m1, m2), float("-inf"))) / _select(rid, _nz(z0), _nz(z1),
                                                                                            _nz(z2))
    return w


@triton.jit
def _chunk(q, k_base, s, rows, c, hi, scale, W: tl.constexpr, HALF: tl.constexpr, RINGS: tl.constexpr,
           D: tl.constexpr, DP: tl.constexpr, PREC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Frames ``j = c + [0, BLOCK_N)`` (``jm``: below ``hi``), their K tile, scores and ring ids."""
    j = c + tl.arange(0, BLOCK_N)
    jm = j < hi
    kc = _tile(k_base, j, jm, D, DP)  # [BN, DP]
    x = _dot(q, tl.trans(kc), PREC) * scale  # [BQ, BN]
    return j, jm, kc, x, _ring_id(s, rows, j, jm, W, HALF, RINGS)


@triton.jit
def _stats(q, k_base, s, rows, lo_i, hi_i, k_len, scale, do, v_base, W: tl.constexpr, HALF: tl.constexpr,
           RINGS: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr, DVP: tl.constexpr,
           WITH_G: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    """Per-ring max ``m_r`` and normalizer ``z_r`` (rings ``0..RINGS``; online softmax) of the rows on the
    mask over ``[lo_i, hi_i)``. ``WITH_G`` (backward): also ``y_r = Σ_{ring r} exp(x_j - m_r) <do, v_j>``,
    rescaled as ``z_r`` is, so that ``Σ_ring w g = y_r / z_r`` needs no walk of its own (``do``, ``v_base``
    are unused otherwise)."""
    m0 = tl.full([q.shape[0]], float("-inf"), ACC)
    z0 = tl.zeros([q.shape[0]], ACC)
    m1, m2, z1, z2, y0, y1, y2 = m0, m0, z0, z0, z0, z0, z0
    c, hi = _span(lo_i, hi_i, rows, k_len)
    while c < hi:
        if _touches(lo_i, hi_i, rows, c, BLOCK_N):
            j, jm, kc, x, rid = _chunk(q, k_base, s, rows, c, hi, scale, W, HALF, RINGS, D, DP, PREC, BLOCK_N)
            n0 = _ringmax(m0, x, rid, 0)
            n1 = _ringmax(m1, x, rid, 1)
            n2 = _ringmax(m2, x, rid, 2)
            p = tl.exp(tl.where(rid < 3, x - _select(rid, n0, n1, n2), float("-inf")))
            z0 = _rescale(z0, m0, n0) + _ringsum(p, rid, 0)
            z1 = _rescale(z1, m1, n1) + _ringsum(p, rid, 1)
            z2 = _rescale(z2, m2, n2) + _ringsum(p, rid, 2)
            if WITH_G:
                pg = p * _dot(do, tl.trans(_tile(v_base, j, jm, DV, DVP)), PREC)  # [BQ, BN]
                y0 = _rescale(y0, m0, n0) + _ringsum(pg, rid, 0)
                y1 = _rescale(y1, m1, n1) + _ringsum(pg, rid, 1)
                y2 = _rescale(y2, m2, n2) + _ringsum(pg, rid, 2)
            m0, m1, m2 = n0, n1, n2
        c += BLOCK_N
    return m0, z0, m1, z1, m2, z2, y0, y1, y2


# ----------------------------------------------------------------------------------------------------
# Forward


@triton.jit(do_not_specialize=["T", "L"])
def _sawa_fwd_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, level_ptr, force_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr,
    T, L, H,
    W: tl.constexpr, HALF: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr,
    DVP: tl.constexpr, LEVELS: tl.constexpr, JOINT: tl.constexpr, FORCED: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Grid ``(cdiv(L, BLOCK_Q), B·H)``: out ``(B, H, L, DV)`` and int8 level ``(B, H, L)`` of a block."""
    bh, in_l, row_ok, s, k_len, row, scale, k_base, v_base, q = _block(
        q_ptr, k_ptr, v_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr, T, L, H, D, DP, DV, BLOCK_Q)
    n0 = _nrange(s, s + W, k_len)
    n1 = _nrange(s - HALF, s, k_len) + _nrange(s + W, s + W + HALF, k_len)
    n2 = _nrange(s - W, s - HALF, k_len) + _nrange(s + W + HALF, s + 2 * W, k_len)
    base = row_ok & (n0 > 0)  # else: empty S0 (start at or past k_len) or padded query -> 0, level 0

    # Pass 1: statistics of every ring a row may reach (the y's are the backward's: zeros here).
    m0, z0, m1, z1, m2, z2, y0, y1, y2 = _stats(q, k_base, s, base, s - LEVELS * HALF, s + W + LEVELS * HALF, k_len,
                                                scale, q, k_base, W, HALF, LEVELS, D, DP, D, DP, False, PREC, ACC,
                                                BLOCK_N)

    # Pass 2: the decisions (Alg. 1 lines 5-6 and 11-12) and, per ring, the output before normalization
    # U_r = Σ_{j in ring r} exp(x_j - m_r) v_j (flash-attention's accumulator, one per ring); the levels then
    # pick the rings of each row and normalize them. K and V are read once more, over the whole reach.
    level = tl.zeros([BLOCK_Q], tl.int32)
    if FORCED:
        level = tl.where(base, tl.load(force_ptr + row, mask=in_l, other=0).to(tl.int32), 0)
    thr0 = 1.0 / tl.maximum(n0, 1).to(ACC)  # a_j > 1/|S0|
    if JOINT:  # w over A1 = S0 ∪ S1 sums to 1 (one softmax) or 2 (one per segment): mean = that / |A1|
        mean = 1.0 / tl.maximum(n0 + n1, 1).to(ACC)
    else:
        mean = 2.0 / tl.maximum(n0 + n1, 1).to(ACC)
    m01 = tl.maximum(m0, m1)
    z01 = _nz(_rescale(z0, m0, m01) + _rescale(z1, m1, m01))
    c0 = tl.zeros([BLOCK_Q], tl.int32)
    c1 = tl.zeros([BLOCK_Q], tl.int32)
    u0 = tl.zeros([BLOCK_Q, DVP], ACC)
    u1 = u0
    u2 = u0
    lo_i = s - LEVELS * HALF
    hi_i = s + W + LEVELS * HALF
    c, hi = _span(lo_i, hi_i, base, k_len)
    while c < hi:
        if _touches(lo_i, hi_i, base, c, BLOCK_N):
            j, jm, kc, x, rid = _chunk(q, k_base, s, base, c, hi, scale, W, HALF, LEVELS, D, DP, PREC, BLOCK_N)
            e = tl.exp(tl.where(rid < 3, x - _select(rid, m0, m1, m2), float("-inf")))  # [BQ, BN]
            if not FORCED:
                if LEVELS >= 1:
                    a = e / _select(rid, _nz(z0), _nz(z1), _nz(z2))  # a0 on ring 0, the S1 softmax on ring 1
                    c0 += _count(rid == 0, a, thr0)
                    if LEVELS >= 2:
                        on = rid <= 1
                        if JOINT:
                            c1 += _count(on, tl.exp(tl.where(on, x - m01[:, None], float("-inf"))) / z01[:, None],
                                         mean)
                        else:
                            c1 += _count(on, a, mean)
            vc = _tile(v_base, j, jm, DV, DVP)  # [BN, DVP]
            u0 += _dot(tl.where(rid == 0, e, 0).to(vc.dtype), vc, PREC)
            if LEVELS >= 1:
                u1 += _dot(tl.where(rid == 1, e, 0).to(vc.dtype), vc, PREC)
            if LEVELS >= 2:
                u2 += _dot(tl.where(rid == 2, e, 0).to(vc.dtype), vc, PREC)
        c += BLOCK_N
    if not FORCED:
        if LEVELS >= 1:
            level = tl.where(base & (c0 >= HALF) & (n1 > 0), 1, 0)  # expand iff c0 >= ω/2 and S1 non-empty
            if LEVELS >= 2:
                level = tl.where((level >= 1) & (c1 >= W) & (n2 > 0), 2, level)

    # out_i = Σ_j w_j v_j over the rings of the row's level: each normalized by its own softmax (segment)
    # or all by one (joint).
    if JOINT:
        mx, zz = _joint_stats(m0, z0, m1, z1, m2, z2, level)
        f0 = _rescale(1.0 / _nz(zz), m0, mx)
        f1 = _rescale(1.0 / _nz(zz), m1, mx)
        f2 = _rescale(1.0 / _nz(zz), m2, mx)
    else:
        f0, f1, f2 = 1.0 / _nz(z0), 1.0 / _nz(z1), 1.0 / _nz(z2)
    acc = u0 * f0[:, None]
    acc += u1 * tl.where(level >= 1, f1, 0)[:, None]
    acc += u2 * tl.where(level >= 2, f2, 0)[:, None]
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
    W: tl.constexpr, HALF: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, DV: tl.constexpr,
    DVP: tl.constexpr, REACH: tl.constexpr, SPAN: tl.constexpr, JOINT: tl.constexpr, ATOMIC: tl.constexpr,
    PREC: tl.constexpr, ACC: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Pass 1, grid ``(cdiv(L, BLOCK_Q), B·H)``: dq; then P and DS per slot (blocks) or atomic dk/dv."""
    bh, in_l, row_ok, s, k_len, row, scale, k_base, v_base, q = _block(
        q_ptr, k_ptr, v_ptr, q_lens_ptr, k_lens_ptr, starts_ptr, scale_ptr, T, L, H, D, DP, DV, BLOCK_Q)
    do = _load_rows(do_ptr, row, row_ok, DV, DVP)  # [BQ, DVP]
    base = row_ok & (_nrange(s, s + W, k_len) > 0)
    level = tl.where(base, tl.load(level_ptr + row, mask=in_l, other=0).to(tl.int32), 0)
    lo_i = s - level * HALF  # the active frames of each row
    hi_i = s + W + level * HALF

    # Statistics of the saved levels and Σ_seg w g with g_j = dL/dw_j = <do_i, v_j>, in one walk.
    m0, z0, m1, z1, m2, z2, y0, y1, y2 = _stats(q, k_base, s, base, lo_i, hi_i, k_len, scale, do, v_base, W, HALF,
                                                REACH, D, DP, DV, DVP, True, PREC, ACC, BLOCK_N)
    mx, zz = _joint_stats(m0, z0, m1, z1, m2, z2, level)
    if JOINT:  # one softmax over the rings of the level: bring each ring's sum to the common max
        sg0 = _rescale(y0, m0, mx)
        sg0 += tl.where(level >= 1, _rescale(y1, m1, mx), 0)
        sg0 += tl.where(level >= 2, _rescale(y2, m2, mx), 0)
        sg0 = sg0 / _nz(zz)
        sg1 = sg0
        sg2 = sg0
    else:
        sg0, sg1, sg2 = y0 / _nz(z0), y1 / _nz(z1), y2 / _nz(z2)

    # ds_j = dL/dx_j · scale = w_j (g_j - Σ_{j' in j's softmax} w_j' g_j') · scale; dq = DS K.
    # The blocks flavour walks every row's whole reach [s - ω·REACH/2, s + ω + ω·REACH/2): pass 2 reads
    # every slot there, so the inactive ones are written too (zeros).
    if ATOMIC:
        lo_w, hi_w, rows_w = lo_i, hi_i, base
    else:
        lo_w, hi_w, rows_w = s - REACH * HALF, s + W + REACH * HALF, row_ok
    dq = tl.zeros([BLOCK_Q, DP], ACC)
    c, hi = _span(lo_w, hi_w, rows_w, k_len)
    while c < hi:
        if _touches(lo_w, hi_w, rows_w, c, BLOCK_N):
            j, jm, kc, x, rid = _chunk(q, k_base, s, base, c, hi, scale, W, HALF, REACH, D, DP, PREC, BLOCK_N)
            w = _weights(x, rid, level, m0, z0, m1, z1, m2, z2, mx, zz, JOINT)
            g = _dot(do, tl.trans(_tile(v_base, j, jm, DV, DVP)), PREC)
            ds = w * (g - _select(rid, sg0, sg1, sg2)) * scale
            dq += _dot(ds.to(kc.dtype), kc, PREC)
            if ATOMIC:  # dk_j += Σ_i ds_ij q_i, dv_j += Σ_i w_ij do_i: one [BN, d] tile each
                e = tl.arange(0, DP)
                tl.atomic_add(dk_ptr + bh * T * D + j[:, None] * D + e[None, :],
                              _dot(tl.trans(ds).to(q.dtype), q, PREC), mask=jm[:, None] & (e < D)[None, :])
                ev = tl.arange(0, DVP)
                tl.atomic_add(dv_ptr + bh * T * DV + j[:, None] * DV + ev[None, :],
                              _dot(tl.trans(w).to(do.dtype), do, PREC), mask=jm[:, None] & (ev < DV)[None, :])
            else:  # P, DS: (B·H, L, SPAN); slot o - LO for the frame at offset o from the window start
                o = j[None, :] - s[:, None] + REACH * HALF
                keep = row_ok[:, None] & jm[None, :] & (o >= 0) & (o < SPAN)
                tl.store((p_ptr + row * SPAN)[:, None] + o, w, mask=keep)
                tl.store((ds_ptr + row * SPAN)[:, None] + o, ds, mask=keep)
        c += BLOCK_N
    e = tl.arange(0, DP)
    tl.store(dq_ptr + row[:, None] * D + e[None, :], dq.to(dq_ptr.dtype.element_ty),
             mask=in_l[:, None] & (e < D)[None, :])


@triton.jit
def _kv_block(src_ptr, g_ptr, dst_ptr, starts_row, bh, i0, i1, j, jm, jt, L, LO: tl.constexpr, HI: tl.constexpr,
              E: tl.constexpr, PREC: tl.constexpr, ACC: tl.constexpr,
              BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """dst[j] = Σ_i S_ij g_i over the queries i in [i0, i1) for the frames ``jm`` (0 for the rest of ``jt``).

    S per slot (P or DS), g rows (do or q).
    """
    for e0 in range(0, E, BLOCK_D):
        e = e0 + tl.arange(0, BLOCK_D)
        em = e < E
        acc = tl.zeros([BLOCK_K, BLOCK_D], ACC)
        q0 = i0
        while q0 < i1:
            ii = q0 + tl.arange(0, BLOCK_Q)  # [BQ]
            im = ii < i1
            s = tl.load(starts_row + ii, mask=im, other=0).to(tl.int32)
            o = j[None, :] - s[:, None] - LO  # [BQ, BK] slot: offset of frame j from query i's reach start
            m = im[:, None] & jm[None, :] & (o >= 0) & (o < HI - LO)
            r = bh * L + ii  # [BQ] int64
            sv = tl.load((src_ptr + r * (HI - LO))[:, None] + o, mask=m, other=0)  # [BQ, BK]
            g = tl.load(g_ptr + r[:, None] * E + e[None, :], mask=im[:, None] & em[None, :], other=0)  # [BQ, BD]
            acc += _dot(tl.trans(sv).to(g.dtype), g, PREC)  # [BK, BQ] @ [BQ, BD]
            q0 += BLOCK_Q
        tl.store(dst_ptr + j[:, None] * E + e[None, :], acc.to(dst_ptr.dtype.element_ty),
                 mask=jt[:, None] & em[None, :])


@triton.jit(do_not_specialize=["T", "L"])
def _sawa_bwd_kv_kernel(
    do_ptr, q_ptr, p_ptr, ds_ptr, ranges_ptr, starts_ptr, k_lens_ptr, dk_ptr, dv_ptr,
    T, L, H, NKB,
    LO: tl.constexpr, HI: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr,
):
    """Pass 2, grid ``(cdiv(T, BLOCK_K), B·H)``: dk = DSᵀ q, dv = Pᵀ do for a block of frames.

    The queries whose span ``[s_i + LO, s_i + HI)`` meets the block are ``[i0, i1)`` from ``ranges``;
    frames at or past ``k_len`` get 0 (pass 1 wrote no slot for them).
    """
    kb = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    i0 = tl.load(ranges_ptr + (b * NKB + kb) * 2)
    i1 = tl.load(ranges_ptr + (b * NKB + kb) * 2 + 1)
    j = kb * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK] frames
    jt = j < T
    jm = j < tl.minimum(T, tl.load(k_lens_ptr + b))
    starts_row = starts_ptr + b * L
    _kv_block(ds_ptr, q_ptr, dk_ptr + bh * T * D, starts_row, bh, i0, i1, j, jm, jt, L, LO, HI, D,
              PREC, ACC, BLOCK_K, BLOCK_Q, BLOCK_D)
    _kv_block(p_ptr, do_ptr, dv_ptr + bh * T * DV, starts_row, bh, i0, i1, j, jm, jt, L, LO, HI, DV,
              PREC, ACC, BLOCK_K, BLOCK_Q, BLOCK_D)


# ----------------------------------------------------------------------------------------------------
# Tuning (``_triton.Tuning``, the pattern every op shares). Cases: (d > 64, fp32). The spill-free configs
# are those that compiled free of register spills for sm_90 (``benchmarks/compile_check.py`` ->
# results/compile_check.md) at the head width (d <= 64, or wider: compiled at d = 256) and the dtype
# (fp16/bf16, or fp32 "ieee"; fp32 wider than 64 was not compiled: the configs spill-free in both
# neighbouring cases). Size buckets: the B·H·L queries, B·H·T frames for pass 2. Not timed on a GPU yet:
# ``benchmarks/gpu_check.sh`` prints what the tuners chose.

_QUERY_BLOCKS = ("BLOCK_Q", "BLOCK_N")
_QUERY_KEY = ["W", "D", "DV", "JOINT", "PREC"]
# Query blocks of 16-64 rows (tl.dot needs >= 16) against chunks of 32-64 frames: at the paper's hop (5)
# a block of 16 queries spans 105 frames, of 32 queries 185. Interpreter: 16 x 16 (every span takes chunks).
_fwd = _triton.Tuning("sawa fwd", _sawa_fwd_kernel, _QUERY_BLOCKS, "16x32x4 16x32x8 16x64x8 32x32x4 32x64x8 64x32x8", {
    (False, False): "16x32x8 16x32x4 16x64x8 32x32x4 32x64x8 64x32x8",
    (True, False): "16x32x8 16x64x8",
    (False, True): "16x32x8 16x32x4 16x64x8",
    (True, True): "16x32x8 16x64x8",
}, [*_QUERY_KEY, "LEVELS", "FORCED"], "16x16x4")
_BWD_CANDIDATES = "16x32x4 16x32x8 16x64x4 16x64x8 32x64x8"
_bwd_q = _triton.Tuning("sawa bwd pass 1", _sawa_bwd_q_kernel, _QUERY_BLOCKS, _BWD_CANDIDATES, {
    (False, False): "16x32x8 16x32x4 16x64x4 16x64x8 32x64x8",
    (True, False): "16x32x8", (False, True): "16x32x8", (True, True): "16x32x8",
}, [*_QUERY_KEY, "REACH", "ATOMIC"], "16x16x4")
_bwd_q_atomic = _triton.Tuning("sawa bwd pass 1 atomic", _sawa_bwd_q_kernel, _QUERY_BLOCKS, _BWD_CANDIDATES, {
    (False, False): "16x64x8 16x32x4 16x64x4 32x64x8",
    (True, False): "16x32x8 16x64x8", (False, True): "16x32x8", (True, True): "16x32x8",
}, [*_QUERY_KEY, "REACH", "ATOMIC"], "16x16x4", reset=["dk_ptr", "dv_ptr"])  # it accumulates: timed runs start at 0
_KV_SPILL_FREE_FP32 = "32x64x8x3 16x64x4x2 16x128x8x2"
_bwd_kv = _triton.Tuning("sawa bwd pass 2", _sawa_bwd_kv_kernel, ("BLOCK_Q", "BLOCK_D"),
                         "16x64x4x2 16x128x8x2 32x128x8x2 32x64x8x3", {
    (False, False): "32x64x8x3 16x64x4x2 16x128x8x2 32x128x8x2",
    (True, False): "32x64x8x3 16x64x4x2 16x128x8x2 32x128x8x2",
    (False, True): _KV_SPILL_FREE_FP32, (True, True): _KV_SPILL_FREE_FP32,
}, ["W", "D", "DV", "PREC"], "16x16x4")
TUNINGS = (_fwd, _bwd_q, _bwd_q_atomic, _bwd_kv)


def tuned_configs() -> list[str]:
    """One line per (kernel, case, size bucket, autotune key) timed so far, with the config it chose."""
    return [line for t in TUNINGS for line in t.tuned()]


def _case(q: torch.Tensor, D: int, DV: int) -> tuple[bool, bool]:
    return max(D, DV) > 64, q.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# Launchers (normalized arguments of op.py: contiguous q/k/v, int64 lengths (B,), starts (B, L) with
# padded entries = T, force_level None or int8 (B, H, L)).


def _precision(dtype: torch.dtype) -> str:
    """tl.dot ``input_precision``: fp16/bf16 go to the tensor cores as they are; fp64 is exact; fp32 follows
    ``torch.set_float32_matmul_precision`` as torch's matmuls do: "highest" (torch's default) -> "ieee"
    (exact fp32 on the CUDA cores: these dots are small, and in offline sm_90 compiles "ieee" spilled no
    more than "tf32x3" did), "high" or "medium" -> "tf32" (tensor cores; fewest registers)."""
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"  # ignored for fp16/bf16 operands


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _scale(q: torch.Tensor, scale: float) -> torch.Tensor:
    """The scale as a 1-element tensor in the accumulation dtype (a float argument would be fp32)."""
    return torch.full((1,), scale, dtype=_acc_dtype(q.dtype), device=q.device)


def _consts(q: torch.Tensor, window: int, D: int, DV: int) -> dict:
    """Compile-time arguments shared by the query-block kernels (head dims padded to a power of 2, >= 16)."""
    return dict(W=window, HALF=window // 2, D=D, DP=max(16, triton.next_power_of_2(D)), DV=DV,
                DVP=max(16, triton.next_power_of_2(DV)), PREC=_precision(q.dtype),
                ACC=tl.float64 if q.dtype == torch.float64 else tl.float32)


def _check_sizes(B: int, H: int, T: int, D: int, DV: int) -> None:
    if B * H > 65535:
        raise ValueError(f"the triton SAWA kernels take B*H <= 65535 (grid axis 1), got B*H = {B * H}")
    if T * max(D, DV) >= 2**31:
        raise ValueError(f"the triton SAWA kernels index one head's k/v in 32 bits: T*d must be < 2**31, "
                         f"got T={T}, d={max(D, DV)}")


def _query_grid(L: int, BH: int):
    return lambda meta: (triton.cdiv(L, meta["BLOCK_Q"]), BH)


def sawa_fwd(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale):
    """Returns ``(out (B, H, L, dv), level (B, H, L) int8)``."""
    B, H, L, D = q.shape
    T, DV = k.shape[2], v.shape[3]
    _check_sizes(B, H, T, D, DV)
    out = torch.empty(B, H, L, DV, dtype=q.dtype, device=q.device)
    level = torch.empty(B, H, L, dtype=torch.int8, device=q.device)
    forced = force_level is not None
    _fwd.launch(_query_grid(L, B * H), B * H * L, (
        q, k, v, out, level, force_level if forced else level, q_lens, k_lens, starts, _scale(q, scale),
        T, L, H), dict(LEVELS=levels, JOINT=joint, FORCED=forced, **_consts(q, window, D, DV)), _case(q, D, DV))
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


def sawa_bwd(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale, dkdv="blocks", saved=None):
    """Gradients ``(dq, dk, dv)`` for the forward's levels. ``dkdv``: "blocks" (default) or "atomic";
    ``saved`` is unused (the kernels recompute the weights)."""
    if dkdv not in DKDV:
        raise ValueError(f"dkdv must be one of {DKDV}, got {dkdv!r}")
    B, H, L, D = q.shape
    T, DV = k.shape[2], v.shape[3]
    _check_sizes(B, H, T, D, DV)
    acc_dtype = _acc_dtype(q.dtype)
    reach = 2 if window % 2 == 0 else 0  # levels > 0 needs an even window; an odd one only ever has ring 0
    lo, hi = -reach * (window // 2), window + reach * (window // 2)  # a query's reach from its window start
    dq = torch.empty_like(q)
    atomic = dkdv == "atomic"
    if atomic:
        dk_acc = torch.zeros(B, H, T, D, dtype=acc_dtype, device=q.device)
        dv_acc = torch.zeros(B, H, T, DV, dtype=acc_dtype, device=q.device)
        p = ds = dk_acc  # unused
    else:
        p = torch.empty(B * H, L, hi - lo, dtype=acc_dtype, device=q.device)
        ds = torch.empty_like(p)
        dk_acc, dv_acc = p, ds  # unused (reset_to_zero only during autotuning; pass 1 rewrites them)

    consts = _consts(q, window, D, DV)
    (_bwd_q_atomic if atomic else _bwd_q).launch(_query_grid(L, B * H), B * H * L, (
        grad_out, q, k, v, level, q_lens, k_lens, starts, _scale(q, scale), dq, p, ds, dk_acc, dv_acc,
        T, L, H), dict(REACH=reach, SPAN=hi - lo, JOINT=joint, ATOMIC=atomic, **consts), _case(q, D, DV))
    if atomic:
        return dq, dk_acc.to(k.dtype), dv_acc.to(v.dtype)

    nkb = triton.cdiv(T, BLOCK_K)
    ranges = _query_ranges(starts, q_lens, T, lo, hi, nkb)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    width = max(16, triton.next_power_of_2(max(D, DV)))
    _bwd_kv.launch((nkb, B * H), B * H * T, (grad_out, q, p, ds, ranges, starts, k_lens, dk, dv, T, L, H, nkb),
                   dict(LO=lo, HI=hi, D=D, DV=DV, PREC=consts["PREC"], ACC=consts["ACC"], BLOCK_K=BLOCK_K),
                   _case(q, D, DV), allow=lambda c: c.kwargs["BLOCK_D"] <= width)  # no d chunks wider than d
    return dq, dk, dv
