"""Triton DFC kernels and their launchers (CUDA; on the CPU under ``TRITON_INTERPRET=1`` for tests).

    y[b, n, c] = Σ_{j < FRAME} K[(b,) n, j, c] * x[b, n*HOP + j, c]  (+ bias[c] or bias[n, c])

Three kernels, none of which builds the unfolded ``(B, N, FRAME, C)`` tensor, and none of which
uses atomics (so results are deterministic and autotuning needs no output reset):

- ``_dfc_fwd_kernel``: one program per (sample, block of N, block of C).
- ``_dfc_bwd_dx_kernel``: one program per (sample, block of L, block of C). It *gathers*: row
  ``l`` of ``dx`` takes ``grad_y[n] * K[n, j]`` from each frame ``n`` with ``n*HOP + j = l``, at
  most one ``n`` per element ``j`` of the frame. Gathering writes each row once; scattering with
  atomics would serialize the overlapping frames (hop < frame), lose determinism and, in fp16/bf16,
  accumulate in the output precision.
- ``_dfc_bwd_dk_kernel``: one program per (block of N, block of C, frame element j), looping
  over the batch: the shared kernel's gradient is a sum over the batch held in registers, so no two
  programs write the same element. Programs with ``j == 0`` also write ``dbias (N, C)``.

Accumulation is in float32 (float64 for float64 inputs). Blocks (``mfdr_kernels._triton``, the pattern every
op shares): autotuned on CUDA per size bucket over the configs that compile free of spills
(``MFDR_TRITON_AUTOTUNE=0``: one of them); under the interpreter (~6 ms per program) one small config.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .. import _triton


@triton.jit(do_not_specialize=["N", "L"])
def _dfc_fwd_kernel(
    x, k, bias, y, N, L, C,
    HOP: tl.constexpr, FRAME: tl.constexpr, PER_SAMPLE: tl.constexpr, BIAS_DIM: tl.constexpr,
    ACC: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid: (B, cdiv(N, BLOCK_N), cdiv(C, BLOCK_C)). Each program writes a [BLOCK_N, BLOCK_C] tile of y."""
    i_b, i_n, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    m = (o_n < N)[:, None] & (o_c < C)[None, :]  # [BN, BC]
    p_x = x + i_b * L * C + (o_n * HOP)[:, None] * C + o_c[None, :]  # [BN, BC]: row n*HOP of each frame
    p_k = k + (o_n * FRAME)[:, None] * C + o_c[None, :]  # [BN, BC]: K[n, 0]
    if PER_SAMPLE:
        p_k += i_b * N * FRAME * C
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    for j in tl.static_range(FRAME):
        b_x = tl.load(p_x + j * C, mask=m, other=0.0).to(ACC)  # [BN, BC]: x[b, n*HOP + j]
        b_k = tl.load(p_k + j * C, mask=m, other=0.0).to(ACC)  # [BN, BC]: K[(b,) n, j]
        acc += b_k * b_x
    if BIAS_DIM == 1:
        acc += tl.load(bias + o_c, mask=o_c < C, other=0.0).to(ACC)[None, :]  # [1, BC]
    elif BIAS_DIM == 2:
        acc += tl.load(bias + o_n[:, None] * C + o_c[None, :], mask=m, other=0.0).to(ACC)  # [BN, BC]
    tl.store(y + i_b * N * C + o_n[:, None] * C + o_c[None, :], acc.to(y.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["N", "L"])
def _dfc_bwd_dx_kernel(
    gy, k, dx, N, L, C,
    HOP: tl.constexpr, FRAME: tl.constexpr, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid: (B, cdiv(L, BLOCK_L), cdiv(C, BLOCK_C)). dx[b, l] = Σ_j gy[b, n] K[(b,) n, j], n*HOP + j = l."""
    i_b, i_l, i_c = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BL]
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    m_c = o_c < C
    p_k = k
    if PER_SAMPLE:
        p_k += i_b * N * FRAME * C
    acc = tl.zeros([BLOCK_L, BLOCK_C], dtype=ACC)
    for j in tl.static_range(FRAME):
        t = o_l - j  # [BL]: n*HOP when row l is element j of frame n
        n = tl.where(t >= 0, t, 0) // HOP
        ok = (t >= 0) & (t % HOP == 0) & (n < N) & (o_l < L)  # [BL]: such a frame exists
        m = ok[:, None] & m_c[None, :]  # [BL, BC]
        b_g = tl.load(gy + i_b * N * C + n[:, None] * C + o_c[None, :], mask=m, other=0.0).to(ACC)
        b_k = tl.load(p_k + (n * FRAME + j)[:, None] * C + o_c[None, :], mask=m, other=0.0).to(ACC)
        acc += b_g * b_k  # [BL, BC]
    m = (o_l < L)[:, None] & m_c[None, :]
    tl.store(dx + i_b * L * C + o_l[:, None] * C + o_c[None, :], acc.to(dx.dtype.element_ty), mask=m)


@triton.jit(do_not_specialize=["B", "N", "L"])
def _dfc_bwd_dk_kernel(
    gy, x, dk, dbias, B, N, L, C,
    HOP: tl.constexpr, FRAME: tl.constexpr, PER_SAMPLE: tl.constexpr, ACC: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """Grid: (cdiv(N, BLOCK_N), cdiv(C, BLOCK_C), FRAME). dK[(b,) n, j] = (Σ_b) gy[b, n] x[b, n*HOP + j];
    the programs of j == 0 also write dbias[n] = Σ_b gy[b, n]."""
    i_n, i_c, j = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    o_c = i_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    m = (o_n < N)[:, None] & (o_c < C)[None, :]  # [BN, BC]
    o_g = o_n[:, None] * C + o_c[None, :]  # [BN, BC]: offsets in a (N, C) slab
    o_x = (o_n * HOP + j)[:, None] * C + o_c[None, :]  # [BN, BC]: row n*HOP + j of a (L, C) slab
    o_k = (o_n * FRAME + j)[:, None] * C + o_c[None, :]  # [BN, BC]: K[n, j] in a (N, FRAME, C) slab
    p_g, p_x, p_k = gy + o_g, x + o_x, dk + o_k  # sample 0; advanced by one sample per step
    acc = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    acc_b = tl.zeros([BLOCK_N, BLOCK_C], dtype=ACC)
    b = 0
    while b < B:  # not `range(B)`: the triton 3.6 interpreter cannot index with a runtime argument (numpy 2.4)
        b_g = tl.load(p_g, mask=m, other=0.0).to(ACC)  # [BN, BC]: gy[b, n]
        b_x = tl.load(p_x, mask=m, other=0.0).to(ACC)  # [BN, BC]: x[b, n*HOP + j]
        if PER_SAMPLE:
            tl.store(p_k, (b_g * b_x).to(dk.dtype.element_ty), mask=m)
            p_k += N * FRAME * C
        else:
            acc += b_g * b_x
        acc_b += b_g
        p_g += N * C
        p_x += L * C
        b += 1
    if not PER_SAMPLE:
        tl.store(dk + o_k, acc.to(dk.dtype.element_ty), mask=m)
    tl.store(dbias + o_g, acc_b.to(dbias.dtype.element_ty), mask=m & (j == 0))


# ----------------------------------------------------------------------------------------------- tuning
# ``_triton.Tuning``, the pattern every op shares. Candidates: rows x channels x warps x stages; all compiled free of
# register spills for sm_90 in fp16, bf16 and fp32 (results/compile_check.md) but the dx kernel's 32 x 64
# (8 bytes in fp16), so one case per kernel. First (``MFDR_TRITON_AUTOTUNE=0``): 8 x 128, coalesced
# 128-channel rows, few registers. Size buckets: the rows of the whole batch (B·N, or B·L for dx).
# Interpreter: 16 x 32. Not timed on a GPU yet: ``benchmarks/gpu_check.sh`` prints what the tuners chose.

_CANDIDATES = "4x256x4x3 8x128x4x3 16x64x4x3 16x128x4x3 32x64x4x3 32x128x8x3"
_SPILL_FREE = "8x128x4x3 4x256x4x3 16x64x4x3 16x128x4x3 32x64x4x3 32x128x8x3"
_KEY = ["C", "HOP", "FRAME", "PER_SAMPLE"]
_fwd = _triton.Tuning("dfc fwd", _dfc_fwd_kernel, ("BLOCK_N", "BLOCK_C"), _CANDIDATES, _SPILL_FREE,
                      [*_KEY, "BIAS_DIM"], "16x32x4")
_bwd_dx = _triton.Tuning("dfc bwd dx", _dfc_bwd_dx_kernel, ("BLOCK_L", "BLOCK_C"), _CANDIDATES,
                         _SPILL_FREE.replace(" 32x64x4x3", ""), _KEY, "16x32x4")
_bwd_dk = _triton.Tuning("dfc bwd dk", _dfc_bwd_dk_kernel, ("BLOCK_N", "BLOCK_C"), _CANDIDATES, _SPILL_FREE, _KEY,
                         "16x32x4")
TUNINGS = (_fwd, _bwd_dx, _bwd_dk)


def tuned_configs() -> list[str]:
    """One line per (kernel, size bucket, autotune key) timed so far, with the config it chose."""
    return [line for t in TUNINGS for line in t.tuned()]


# ----------------------------------------------------------------------------------------------- launchers


def _acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def dfc_fwd(x, kernel, bias, frame, hop):
    """Returns ``y (B, N, C)``; arguments as checked by ``op.py`` (contiguous)."""
    B, L, C = x.shape
    N = (L - frame) // hop + 1
    y = torch.empty(B, N, C, dtype=x.dtype, device=x.device)
    if y.numel() == 0:
        return y
    bias_dim = 0 if bias is None else bias.dim()
    consts = dict(HOP=hop, FRAME=frame, PER_SAMPLE=kernel.dim() == 4, BIAS_DIM=bias_dim, ACC=_acc(x.dtype))
    grid = lambda meta: (B, triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(C, meta["BLOCK_C"]))
    _fwd.launch(grid, B * N, (x, kernel, x if bias is None else bias, y, N, L, C), consts)
    return y


def dfc_bwd(grad_y, x, kernel, frame, hop):
    """Gradients ``(dx (B, L, C), dkernel (kernel's shape), dbias (N, C) summed over the batch)``."""
    B, L, C = x.shape
    N = grad_y.shape[1]
    dx, dk = torch.empty_like(x), torch.empty_like(kernel)
    dbias = torch.empty(N, C, dtype=x.dtype, device=x.device)
    if C == 0:
        return dx, dk, dbias
    if B == 0:
        return dx, dk.zero_(), dbias.zero_()
    consts = dict(HOP=hop, FRAME=frame, PER_SAMPLE=kernel.dim() == 4, ACC=_acc(x.dtype))
    grid_dx = lambda meta: (B, triton.cdiv(L, meta["BLOCK_L"]), triton.cdiv(C, meta["BLOCK_C"]))
    _bwd_dx.launch(grid_dx, B * L, (grad_y, kernel, dx, N, L, C), consts)
    grid_dk = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(C, meta["BLOCK_C"]), frame)
    _bwd_dk.launch(grid_dk, B * N, (grad_y, x, dk, dbias, B, N, L, C), consts)
    return dx, dk, dbias
