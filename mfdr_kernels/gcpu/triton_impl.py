"""Triton GCPU: the fused recurrence (SPEC §3), forward and backward kernels and their launchers.

Per step t, with h = h_{t-1} (row vectors; ``W x`` is ``x @ Wᵀ``)::

    r  = σ(x_r[t] + h W_hrᵀ)                      rh = r ⊙ h
    z̃  = tanh(x_z[t] + rh W_hzᵀ)                  g̃ = tanh(x_g[t] + rh W_hgᵀ)        (g̃ = 0 w/o context)
    u  = σ(z̃ W_zuᵀ + g̃ W_guᵀ + rh W_huᵀ + b_u)     h_t = rh + u ⊙ (z̃ + g̃)  if t < len, else h_t = h

CUDA tensors in fp16, bf16 or fp32; CPU tensors in fp32 or fp64 under ``TRITON_INTERPRET=1`` (tests; they
also drive the launchers in fp16 there: the interpreter's bf16 ``tl.dot`` is broken).

**Tiles.** One launch per direction; one program per tile of ``BLOCK_B`` (>= 16, ``tl.dot``) batch rows,
which loops over the steps itself. Grid ``(cdiv(B, BLOCK_B),)``. The program owns its rows: the state
``h`` and the per-step intermediates are staged through small global scratch buffers ``(·, B, D)`` (a few
KB per program, resident in L1/L2), read back in ``[BLOCK_B, BLOCK_K]`` tiles as ``tl.dot`` operands,
while the weights are streamed from L2 in ``[BLOCK_K, BLOCK_N]`` tiles. This is what lets D go to 256
(the paper) and beyond: no tile spans the whole of D, registers hold one ``[BLOCK_B, BLOCK_N]`` chunk of
outputs at a time. Each step is three phases (forward) or four (backward); every phase reads what the
previous one wrote for *all* columns, so phases are separated by ``tl.debug_barrier()`` (``bar.sync``
orders a CTA's global writes before its later reads; no other program reads these rows). No phase reads
a scratch location that it also writes (the forward's state is double-buffered by the parity of t), so
replicated register layouts can never read a value that a sibling thread has already updated. (The
interpreter runs each program's phases in order whatever the barriers: only the CUDA tests check them.)

Forward phases (columns ``n`` in chunks of ``BLOCK_N``, reductions over ``k`` in chunks of ``BLOCK_K``):

    A  r = σ(x_r + h W_hrᵀ)                       -> gates[t, 0] = r, rh scratch = r ⊙ h
    B  z̃, g̃ = tanh(x_z + rh W_hzᵀ), tanh(x_g + rh W_hgᵀ)   -> gates[t, 1], gates[t, 3]
    C  u = σ(b_u + z̃ W_zuᵀ + g̃ W_guᵀ + rh W_huᵀ)  -> gates[t, 2] = u; h_t = rh + u(z̃ + g̃) or h (padded)
                                                     into the other state buffer; H[t] = h_t or 0

Backward (BPTT, t = t_end-1 .. 0; three (B, D) scratch rows: dh between steps, dh with grad_H[t], and
d_rh ⊙ r; padded rows carry dh and write zeros for every d_a*):

    1  dh += grad_H[t];  d_au = dh ⊙ (z̃ + g̃) ⊙ u(1-u)                               -> d_au[t]
    2  d_az = (dh ⊙ u + d_au W_zu) ⊙ (1 - z̃²), d_ag likewise with W_gu, g̃          -> dx_z[t], dx_g[t]
    3  d_rh = dh + d_au W_hu + d_az W_hz + d_ag W_hg;  d_ar = d_rh ⊙ h ⊙ r(1-r)        -> dx_r[t]
       (and rh[t] = r ⊙ h, h_prev[t] = h for the weight gradients)
    4  dh = d_rh ⊙ r + d_ar W_hr                                                    (dh of step t-1)

Phases 2 and B (the forward's) carry two accumulators over one read of their operand; the others one at
a time (sequential ``_mm`` calls): at most two weight tiles are in flight (spills at D = 256: see Tuning).

``h = h_{t-1}`` is read from ``H[t-1]`` (or ``h0``): valid steps are a prefix, so the forward saves no
state beyond ``H`` and the gates ``[r, z̃, u, g̃]`` (fp32; fp64 for fp64). The weight gradients are then
one GEMM each over all B·L rows (``torch.mm`` on the saved d_a*, rh and h_prev; padded rows are 0), and
``db_u = Σ d_au``. Steps from the longest length of a tile to L are not computed: the kernels write zeros
there (H, gates, the d_a* rows). Gates of padded steps are stored as 0 and every d_a* there is selected
to 0, so whatever padded inputs hold (NaN, Inf) never reaches H or a gradient.

**Precision.** The state, the gates and every accumulator are fp32 (fp64 for fp64 inputs); the ``tl.dot``
operands are the weights in the input dtype and the staged activations cast to it (fp16/bf16 tensor
cores, as torch's matmuls of the same dtype); fp32 dots follow ``torch.set_float32_matmul_precision``
(:func:`_precision`). Besides those operands, only the outputs are rounded to the input dtype.

**Tuning** (section below; the pattern of ``mfdr_kernels._triton``, shared by every op). On CUDA the
configs that compile free of spills for sm_90, autotuned per size bucket, or one of them with
``MFDR_TRITON_AUTOTUNE=0``; a single config under the interpreter. Not timed on a GPU yet. ``B`` and ``L``
are not specialized; loops with runtime bounds are ``while`` loops (the
triton 3.6 interpreter cannot take a loaded scalar as a ``range`` bound with numpy >= 2.4).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton

# ----------------------------------------------------------------------------------------------------
# Helpers (inlined into the kernels)


@triton.jit
def _sigmoid(x):
    return 1 / (1 + tl.exp(-x))


@triton.jit
def _tanh(x):
    """tanh without overflow: exp of a non-positive argument only."""
    e = tl.exp(-2 * tl.abs(x))
    y = (1 - e) / (1 + e)
    return tl.where(x < 0, -y, y)


@triton.jit
def _load(base, row, o_d, m_b, D: tl.constexpr, ACC: tl.constexpr):
    """``[BB, BN]`` in ACC: columns ``o_d`` of the rows at element offsets ``row [BB]``; 0 off ``m_b`` / past D."""
    m = m_b[:, None] & (o_d < D)[None, :]
    return tl.load(base + row[:, None] + o_d[None, :], mask=m, other=0).to(ACC)


@triton.jit
def _store(base, row, o_d, m_b, D: tl.constexpr, value):
    m = m_b[:, None] & (o_d < D)[None, :]
    tl.store(base + row[:, None] + o_d[None, :], value.to(base.dtype.element_ty), mask=m)


@triton.jit
def _operand(base, row, o_k, m_b, D: tl.constexpr, w):
    """``[BB, BK]``: a staged activation tile as a ``tl.dot`` operand, in the weights' dtype."""
    m = m_b[:, None] & (o_k < D)[None, :]
    return tl.load(base + row[:, None] + o_k[None, :], mask=m, other=0).to(w.dtype.element_ty)


@triton.jit
def _w_tile(w, o_k, o_n, D: tl.constexpr, WT: tl.constexpr):
    """``[BK, BN]``: ``Wᵀ[k, n] = W[n, k]`` (WT: the forward's ``x Wᵀ``) or ``W[k, n]`` (the backward's ``d W``)."""
    m = (o_k < D)[:, None] & (o_n < D)[None, :]
    if WT:
        tile = tl.load(w + o_n[None, :] * D + o_k[:, None], mask=m, other=0)
    else:
        tile = tl.load(w + o_k[:, None] * D + o_n[None, :], mask=m, other=0)
    return tile


@triton.jit
def _dot(a, w, acc, PREC: tl.constexpr):
    """``acc + a @ w`` accumulated in acc's dtype (fp32; fp64 for fp64)."""
    return tl.dot(a, w, acc, input_precision=PREC, out_dtype=acc.dtype)


@triton.jit
def _mm(acc, a_base, a_row, m_b, w, o_n, D: tl.constexpr, WT: tl.constexpr, PREC: tl.constexpr,
        BLOCK_K: tl.constexpr):
    """``acc [BB, BN] += A[:, :D] @ M[:, o_n]`` with A the staged rows ``a_row`` and M = Wᵀ (WT) or W."""
    for k0 in range(0, D, BLOCK_K):
        o_k = k0 + tl.arange(0, BLOCK_K)  # [BK]
        a = _operand(a_base, a_row, o_k, m_b, D, w)  # [BB, BK]
        acc = _dot(a, _w_tile(w, o_k, o_n, D, WT), acc, PREC)  # [BB, BK] @ [BK, BN]
    return acc


@triton.jit
def _rows(B, L, D: tl.constexpr, BLOCK_B: tl.constexpr, lens):
    """The program's batch rows: ids (int64), in-range mask, lengths clamped to [0, L], the longest; and
    ``B·D``, one slot of a (·, B, D) scratch buffer (int32: the launchers check 3·B·D < 2**31)."""
    o_b = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    m_b = o_b < B
    n = tl.load(lens + o_b, mask=m_b, other=0)
    n = tl.minimum(tl.maximum(n, 0), L).to(tl.int32)  # unchecked lengths never index out of bounds
    b = o_b.to(tl.int64)
    return b, m_b, n, tl.max(n, axis=0), B * D


# ----------------------------------------------------------------------------------------------------
# Forward


@triton.jit(do_not_specialize=["B", "L"])
def _gcpu_fwd_kernel(
    xr, xz, xg, w_hr, w_hz, w_hg, w_hu, w_zu, w_gu, b_u, lens, h0, out, gates, hbuf, rhbuf,
    B, L,
    D: tl.constexpr, G: tl.constexpr, CONTEXT: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(cdiv(B, BLOCK_B),)``: ``H (B, L, D)`` and ``gates (B, L, G, D)`` of a tile of batch rows,
    all steps. Scratch: ``hbuf (2, B, D)`` (h_{t-1} in slot t % 2), ``rhbuf (B, D)``."""
    b, m_b, n, t_end, BD = _rows(B, L, D, BLOCK_B, lens)
    s_row = b * D  # [BB] rows of a (B, D) buffer
    for c in range(0, D, BLOCK_N):  # h_{-1} = h0 (or 0) into slot 0
        o_n = c + tl.arange(0, BLOCK_N)
        h = tl.zeros([BLOCK_B, BLOCK_N], ACC)
        if HAS_H0:
            h = _load(h0, s_row, o_n, m_b, D, ACC)
        _store(hbuf, s_row, o_n, m_b, D, h)
    tl.debug_barrier()

    t = 0
    while t < t_end:
        valid = m_b & (t < n)  # [BB]
        x_row = (b * L + t) * D  # [BB] rows of (B, L, D)
        g_row = (b * L + t) * (G * D)  # [BB] rows of gates (B, L, G, D); slot s at + s * D
        h_in = (t % 2) * BD + s_row  # [BB] h_{t-1}
        h_out = ((t + 1) % 2) * BD + s_row  # [BB] h_t
        # A: r = σ(x_r + h W_hrᵀ); rh = r ⊙ h
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)  # [BN]
            a = _mm(tl.zeros([BLOCK_B, BLOCK_N], ACC), hbuf, h_in, m_b, w_hr, o_n, D, True, PREC, BLOCK_K)
            r = _sigmoid(a + _load(xr, x_row, o_n, m_b, D, ACC))  # [BB, BN]
            _store(gates, g_row, o_n, m_b, D, tl.where(valid[:, None], r, 0))
            _store(rhbuf, s_row, o_n, m_b, D, r * _load(hbuf, h_in, o_n, m_b, D, ACC))
        tl.debug_barrier()
        # B: z̃ = tanh(x_z + rh W_hzᵀ), g̃ = tanh(x_g + rh W_hgᵀ): one read of rh for both
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            az = tl.zeros([BLOCK_B, BLOCK_N], ACC)  # [BB, BN]
            ag = tl.zeros([BLOCK_B, BLOCK_N], ACC)
            for k0 in range(0, D, BLOCK_K):
                o_k = k0 + tl.arange(0, BLOCK_K)
                rh = _operand(rhbuf, s_row, o_k, m_b, D, w_hz)  # [BB, BK]
                az = _dot(rh, _w_tile(w_hz, o_k, o_n, D, True), az, PREC)
                if CONTEXT:
                    ag = _dot(rh, _w_tile(w_hg, o_k, o_n, D, True), ag, PREC)
            z = _tanh(az + _load(xz, x_row, o_n, m_b, D, ACC))
            _store(gates, g_row + D, o_n, m_b, D, tl.where(valid[:, None], z, 0))
            if CONTEXT:
                g = _tanh(ag + _load(xg, x_row, o_n, m_b, D, ACC))
                _store(gates, g_row + 3 * D, o_n, m_b, D, tl.where(valid[:, None], g, 0))
        tl.debug_barrier()
        # C: u = σ(b_u + z̃ W_zuᵀ + g̃ W_guᵀ + rh W_huᵀ); h_t = rh + u ⊙ (z̃ + g̃) on valid rows, else h
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            au = tl.zeros([BLOCK_B, BLOCK_N], ACC)
            au = _mm(au, gates, g_row + D, m_b, w_zu, o_n, D, True, PREC, BLOCK_K)
            if CONTEXT:
                au = _mm(au, gates, g_row + 3 * D, m_b, w_gu, o_n, D, True, PREC, BLOCK_K)
            au = _mm(au, rhbuf, s_row, m_b, w_hu, o_n, D, True, PREC, BLOCK_K)
            bias = tl.load(b_u + o_n, mask=o_n < D, other=0).to(ACC)  # [BN]
            u = _sigmoid(au + bias[None, :])  # [BB, BN]
            hc = _load(gates, g_row + D, o_n, m_b, D, ACC)  # z̃ + g̃
            if CONTEXT:
                hc += _load(gates, g_row + 3 * D, o_n, m_b, D, ACC)
            h_new = _load(rhbuf, s_row, o_n, m_b, D, ACC) + u * hc
            h = tl.where(valid[:, None], h_new, _load(hbuf, h_in, o_n, m_b, D, ACC))  # padded rows carry h
            _store(hbuf, h_out, o_n, m_b, D, h)
            _store(out, x_row, o_n, m_b, D, tl.where(valid[:, None], h, 0))
            _store(gates, g_row + 2 * D, o_n, m_b, D, tl.where(valid[:, None], u, 0))
        tl.debug_barrier()
        t += 1

    zero = tl.zeros([BLOCK_B, BLOCK_N], ACC)
    while t < L:  # steps past every length of the tile: H = 0, gates = 0 (finite, ignored)
        x_row = (b * L + t) * D
        g_row = (b * L + t) * (G * D)
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            _store(out, x_row, o_n, m_b, D, zero)
            for s in tl.static_range(G):
                _store(gates, g_row + s * D, o_n, m_b, D, zero)
        t += 1


# ----------------------------------------------------------------------------------------------------
# Backward


@triton.jit(do_not_specialize=["B", "L"])
def _gcpu_bwd_kernel(
    gH, H, gates, w_hr, w_hz, w_hg, w_hu, w_zu, w_gu, lens, h0, dxr, dxz, dxg, dau, rh_ws, hp_ws, scratch,
    B, L,
    D: tl.constexpr, G: tl.constexpr, CONTEXT: tl.constexpr, HAS_H0: tl.constexpr, PREC: tl.constexpr,
    ACC: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """Grid ``(cdiv(B, BLOCK_B),)``: BPTT of a tile of batch rows over all steps. Writes the pre-activation
    gradients ``dx_r, dx_z, dx_g, d_au`` and ``rh``, ``h_prev`` (all (B, L, D) in ACC; zero rows at padded
    steps) for the weight gradients, and leaves ``dh0`` in ``scratch[0]``. ``scratch (3, B, D)``: dh between
    steps (0), dh with grad_H[t] (1), d_rh ⊙ r (2)."""
    b, m_b, n, t_end, BD = _rows(B, L, D, BLOCK_B, lens)
    dh_row = b * D  # [BB] rows of scratch[0]
    dhg_row = BD + dh_row  # scratch[1]
    dr_row = 2 * BD + dh_row  # scratch[2]
    zero = tl.zeros([BLOCK_B, BLOCK_N], ACC)
    for c in range(0, D, BLOCK_N):  # dh = 0
        _store(scratch, dh_row, c + tl.arange(0, BLOCK_N), m_b, D, zero)
    t = L - 1
    while t >= t_end:  # steps past every length of the tile: no gradient
        x_row = (b * L + t) * D
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            _store(dxr, x_row, o_n, m_b, D, zero)
            _store(dxz, x_row, o_n, m_b, D, zero)
            if CONTEXT:
                _store(dxg, x_row, o_n, m_b, D, zero)
            _store(dau, x_row, o_n, m_b, D, zero)
            _store(rh_ws, x_row, o_n, m_b, D, zero)
            _store(hp_ws, x_row, o_n, m_b, D, zero)
        t -= 1
    tl.debug_barrier()

    while t >= 0:
        valid = m_b & (t < n)  # [BB]
        v = valid[:, None]  # [BB, 1]
        x_row = (b * L + t) * D  # [BB] rows of (B, L, D)
        g_row = (b * L + t) * (G * D)  # [BB] rows of gates; slot s at + s * D
        # 1: dh += grad_H[t] (valid rows); d_au = dh ⊙ (z̃ + g̃) ⊙ u(1-u)
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            dh = _load(scratch, dh_row, o_n, m_b, D, ACC)  # [BB, BN]
            dh = tl.where(v, dh + _load(gH, x_row, o_n, m_b, D, ACC), dh)
            _store(scratch, dhg_row, o_n, m_b, D, dh)
            hc = _load(gates, g_row + D, o_n, m_b, D, ACC)
            if CONTEXT:
                hc += _load(gates, g_row + 3 * D, o_n, m_b, D, ACC)
            u = _load(gates, g_row + 2 * D, o_n, m_b, D, ACC)
            _store(dau, x_row, o_n, m_b, D, tl.where(v, dh * hc * u * (1 - u), 0))
        tl.debug_barrier()
        # 2: d_az = (dh ⊙ u + d_au W_zu) ⊙ (1 - z̃²); d_ag = (dh ⊙ u + d_au W_gu) ⊙ (1 - g̃²): one read of d_au
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            az = tl.zeros([BLOCK_B, BLOCK_N], ACC)  # [BB, BN]
            ag = tl.zeros([BLOCK_B, BLOCK_N], ACC)
            for k0 in range(0, D, BLOCK_K):
                o_k = k0 + tl.arange(0, BLOCK_K)
                a = _operand(dau, x_row, o_k, m_b, D, w_zu)  # [BB, BK]
                az = _dot(a, _w_tile(w_zu, o_k, o_n, D, False), az, PREC)
                if CONTEXT:
                    ag = _dot(a, _w_tile(w_gu, o_k, o_n, D, False), ag, PREC)
            dc = _load(scratch, dhg_row, o_n, m_b, D, ACC) * _load(gates, g_row + 2 * D, o_n, m_b, D, ACC)  # dh ⊙ u
            z = _load(gates, g_row + D, o_n, m_b, D, ACC)
            _store(dxz, x_row, o_n, m_b, D, tl.where(v, (dc + az) * (1 - z * z), 0))
            if CONTEXT:
                g = _load(gates, g_row + 3 * D, o_n, m_b, D, ACC)
                _store(dxg, x_row, o_n, m_b, D, tl.where(v, (dc + ag) * (1 - g * g), 0))
        tl.debug_barrier()
        # 3: d_rh = dh + d_au W_hu + d_az W_hz + d_ag W_hg; d_ar = d_rh ⊙ h ⊙ r(1-r); d_rh ⊙ r -> scratch[2]
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            d_rh = _load(scratch, dhg_row, o_n, m_b, D, ACC)  # [BB, BN]
            d_rh = _mm(d_rh, dau, x_row, m_b, w_hu, o_n, D, False, PREC, BLOCK_K)
            d_rh = _mm(d_rh, dxz, x_row, m_b, w_hz, o_n, D, False, PREC, BLOCK_K)
            if CONTEXT:
                d_rh = _mm(d_rh, dxg, x_row, m_b, w_hg, o_n, D, False, PREC, BLOCK_K)
            r = _load(gates, g_row, o_n, m_b, D, ACC)
            m = m_b[:, None] & (o_n < D)[None, :]
            o = o_n[None, :]
            h = tl.load(H + (x_row - D)[:, None] + o, mask=m & (t > 0), other=0).to(ACC)  # h_{t-1} = H[t-1]
            if HAS_H0:
                h += tl.load(h0 + dh_row[:, None] + o, mask=m & (t == 0), other=0).to(ACC)  # ... or h0
            _store(dxr, x_row, o_n, m_b, D, tl.where(v, d_rh * h * r * (1 - r), 0))
            _store(scratch, dr_row, o_n, m_b, D, tl.where(v, d_rh * r, d_rh))  # padded rows: d_rh = dh
            _store(rh_ws, x_row, o_n, m_b, D, tl.where(v, r * h, 0))
            _store(hp_ws, x_row, o_n, m_b, D, tl.where(v, h, 0))
        tl.debug_barrier()
        # 4: dh_{t-1} = d_rh ⊙ r + d_ar W_hr -> scratch[0]
        for c in range(0, D, BLOCK_N):
            o_n = c + tl.arange(0, BLOCK_N)
            dh = _mm(_load(scratch, dr_row, o_n, m_b, D, ACC), dxr, x_row, m_b, w_hr, o_n, D, False, PREC, BLOCK_K)
            _store(scratch, dh_row, o_n, m_b, D, dh)
        tl.debug_barrier()
        t -= 1


# ----------------------------------------------------------------------------------------------------
# Tuning (``_triton.Tuning``, the pattern every op shares). Cases: (D > 64, fp32). Configs: BLOCK_B x BLOCK_N x
# BLOCK_K x warps x stages; BLOCK_B = 16 rows, the fewest ``tl.dot`` takes, so the most programs (each streams
# all weights every step); fp32 "ieee" dots run on FMA units with their operands in registers, so BLOCK_K <= 32.
# The spill-free configs of each case: offline sm_90 compiles at D = 64 and 256 in fp32, bf16 and fp16
# (``benchmarks/compile_check.py --gcpu-dims 64,256``; 16-bit dtypes alike). No backward config tried (16 of
# them) is spill-free at D = 256 in 16-bit dtypes (16-500 bytes): that case runs the least-spilling candidate
# (16 bytes). Registers reach the 255 limit in most: the weights' addresses are loop-invariant and stay live
# across the step loop; harmless with the grid's handful of programs. Size buckets: the B rows the grid covers.
# Every kernel rewrites all it reads, so autotuning needs no reset. Not timed on a GPU yet.

_BLOCKS = ("BLOCK_B", "BLOCK_N", "BLOCK_K")
_KEY = ["D", "CONTEXT", "HAS_H0", "PREC"]
_fwd = _triton.Tuning("gcpu fwd", _gcpu_fwd_kernel, _BLOCKS, "16x64x32x8x3 16x64x32x8x2 16x32x32x8x2 16x32x32x4x2", {
    (False, True): "16x64x32x8x3 16x64x32x8x2 16x32x32x8x2 16x32x32x4x2",
    (False, False): "16x64x32x8x3 16x64x32x8x2 16x32x32x4x2",
    (True, True): "16x64x32x8x3 16x64x32x8x2 16x32x32x8x2",
    (True, False): "16x64x32x8x3 16x64x32x8x2",
}, _KEY, "16x16x16x4")  # interpreter: D > 16 takes several chunks
_bwd = _triton.Tuning("gcpu bwd", _gcpu_bwd_kernel, _BLOCKS, "16x32x16x4x1 16x64x16x8x2 16x32x16x4x2 16x64x32x8x1", {
    (False, True): "16x32x16x4x1 16x64x32x8x1",
    (False, False): "16x32x16x4x1 16x64x16x8x2",
    (True, True): "16x32x16x4x1 16x64x16x8x2 16x32x16x4x2 16x64x32x8x1",
    (True, False): "16x32x16x4x2",
}, _KEY, "16x16x16x4")
TUNINGS = (_fwd, _bwd)


def tuned_configs() -> list[str]:
    """One line per (kernel, case, size bucket, autotune key) timed so far, with the config it chose."""
    return [line for t in TUNINGS for line in t.tuned()]


def _case(x: torch.Tensor, D: int) -> tuple[bool, bool]:
    return D > 64, x.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------
# Launchers (arguments as op.py normalizes them: contiguous, one dtype and device, lengths int64 (B,)
# clamped to [0, L] (the kernels clamp again), h0 (B, D) or None; x_g, W_hg, W_gu None without context).


def _precision(dtype: torch.dtype) -> str:
    """tl.dot ``input_precision``: exact ("ieee") for fp64 and for fp32 under torch's default matmul precision
    ("highest"); "tf32" for fp32 after ``torch.set_float32_matmul_precision("high"/"medium")``, as torch's
    matmuls; ignored for fp16/bf16."""
    if dtype == torch.float32 and torch.get_float32_matmul_precision() != "highest":
        return "tf32"
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _consts(x: torch.Tensor, D: int, context: bool, h0) -> dict:
    return dict(D=D, G=4 if context else 3, CONTEXT=context, HAS_H0=h0 is not None, PREC=_precision(x.dtype),
                ACC=tl.float64 if x.dtype == torch.float64 else tl.float32)


def _lengths(lengths, B: int, L: int, device) -> torch.Tensor:
    return torch.full((B,), L, dtype=torch.int64, device=device) if lengths is None else lengths


def _check_sizes(B: int, D: int) -> None:
    if 3 * B * D >= 2**31:
        raise ValueError(f"the triton GCPU kernels index their (3, B, D) scratch in 32 bits: 3*B*D must be "
                         f"< 2**31, got B={B}, D={D}")


def _grid(B: int):
    return lambda meta: (triton.cdiv(B, meta["BLOCK_B"]),)


def gcpu_fwd(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0):
    """Returns ``(H (B, L, D) in the input dtype, gates (B, L, G, D) fp32 (fp64 for fp64))``, slots
    ``[r, z̃, u, g̃]`` (G = 4 with context, 3 without)."""
    B, L, D = x_r.shape
    _check_sizes(B, D)
    context = x_g is not None
    acc = _acc_dtype(x_r.dtype)
    H = torch.empty_like(x_r)
    gates = torch.empty(B, L, 4 if context else 3, D, dtype=acc, device=x_r.device)
    if H.numel() == 0:
        return H, gates
    hbuf = torch.empty(2, B, D, dtype=acc, device=x_r.device)  # h_{t-1}, h_t
    rhbuf = torch.empty(B, D, dtype=acc, device=x_r.device)
    g = (x_g, W_hg, W_gu) if context else (x_r, W_hr, W_hr)  # unused stand-ins without context
    _fwd.launch(_grid(B), B, (
        x_r, x_z, g[0], W_hr, W_hz, g[1], W_hu, W_zu, g[2], b_u, _lengths(lengths, B, L, x_r.device),
        x_r if h0 is None else h0, H, gates, hbuf, rhbuf, B, L), _consts(x_r, D, context, h0), _case(x_r, D))
    return H, gates


def gcpu_bwd(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0):
    """``(dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh0)``, each in its input's
    dtype; dx_g, dW_hg, dW_gu None without context."""
    B, L, D = H.shape
    _check_sizes(B, D)
    context = W_hg is not None
    dtype, dev = H.dtype, H.device
    acc = _acc_dtype(dtype)
    G = gates.shape[2]
    # d_ar, d_az, d_ag (the dx's), d_au, rh, h_prev: (B, L, D) each
    dxr, dxz, dau, rh, hp = (torch.empty(B, L, D, dtype=acc, device=dev) for _ in range(5))
    dxg = torch.empty(B, L, D, dtype=acc, device=dev) if context else None
    scratch = torch.empty(3, B, D, dtype=acc, device=dev)  # dh (-> dh0), dh + grad_H[t], d_rh ⊙ r
    if H.numel() == 0:
        for t in (dxr, dxz, dxg, dau, rh, hp, scratch):
            if t is not None:
                t.zero_()
    else:
        _bwd.launch(_grid(B), B, (
            grad_H.contiguous(), H, gates, W_hr, W_hz, W_hg if context else W_hr, W_hu, W_zu,
            W_gu if context else W_hr, _lengths(lengths, B, L, dev), H if h0 is None else h0,
            dxr, dxz, dxg if context else dxz, dau, rh, hp, scratch, B, L), _consts(H, D, context, h0), _case(H, D))

    def rows(t):  # (B·L, D) view
        return t.reshape(B * L, D)

    gv = gates.view(B * L, G, D)

    def wgrad(d, x, like):  # Σ over all B·L rows of dᵀ x, in the weight's dtype
        return torch.mm(rows(d).t(), x).to(like.dtype)

    dW_hr = wgrad(dxr, rows(hp), W_hr)
    dW_hz = wgrad(dxz, rows(rh), W_hz)
    dW_hu = wgrad(dau, rows(rh), W_hu)
    dW_zu = wgrad(dau, gv[:, 1], W_zu)
    dW_hg = wgrad(dxg, rows(rh), W_hg) if context else None
    dW_gu = wgrad(dau, gv[:, 3], W_gu) if context else None
    db_u = rows(dau).sum(0).to(dtype)
    dh0 = scratch[0].to(dtype if h0 is None else h0.dtype)
    dx_g = dxg.to(dtype) if context else None
    return (dxr.to(dtype), dxz.to(dtype), dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh0)
