"""Readable reference of sliding adaptive window attention (SAWA): the source of truth.

A plain loop over (batch, head, query) that mirrors the paper's Algorithm 1 ("Adaptive Width
Adjustment") as fixed by SPEC §1. Gradients come from PyTorch autograd through the loop, so the
hand-written backward passes of the fast backends are checked against something independent.
Use float64 in tests; it runs in any dtype on any device, slowly.

For query ``i`` with window start ``s`` and ``half = window // 2`` (frames clipped to ``[0, k_len)``):

    S0 = [s, s+ω)                               base window i
    S1 = [s-half, s) ∪ [s+ω, s+ω+half)          k[i-1, :ω/2] ++ k[i+1, ω/2:]   (Alg. 1, line 7)
    S2 = [s-ω, s-half) ∪ [s+ω+half, s+2ω)       k[i-2, :ω/2] ++ k[i+2, ω/2:]   (Alg. 1, line 13)
"""

from __future__ import annotations

import torch


def _frames(lo: int, hi: int, k_len: int) -> list[int]:
    """The frames of the half-open range [lo, hi) that exist, i.e. inside [0, k_len)."""
    return list(range(max(lo, 0), min(hi, k_len)))


def segments(s: int, window: int, k_len: int) -> tuple[list[int], list[int], list[int]]:
    """Frames of S0, S1 and S2 for a window starting at frame ``s`` (SPEC §1, table "Segments")."""
    half = window // 2
    s0 = _frames(s, s + window, k_len)
    s1 = _frames(s - half, s, k_len) + _frames(s + window, s + window + half, k_len)
    s2 = _frames(s - window, s - half, k_len) + _frames(s + window + half, s + 2 * window, k_len)
    return s0, s1, s2


def _row(q_i, k_bh, s, k_len, window, levels, joint, scale, forced):
    """Weights of one query row: (frames, weights, level), or (None, None, 0) for an empty window."""
    half = window // 2
    s0, s1, s2 = segments(s, window, k_len)
    if not s0:
        return None, None, 0

    def softmax(frames):  # Alg. 1 line 8: Softmax(q k^T / sqrt(D)) over the sliced keys
        return torch.softmax(scale * (k_bh[frames] @ q_i), dim=0)

    # Lines 2-4: key points = base-window weights above the row mean (1/|S0|), counted.
    a0 = softmax(s0)
    level = 0
    if levels >= 1 and int((a0 > 1.0 / len(s0)).sum()) >= half and s1:
        level = 1  # lines 6-10: widen by the neighbour half-windows
        w1 = softmax(s0 + s1) if joint else torch.cat([a0, softmax(s1)])
        # Line 11-12: "perform 1~3 on diag_att_i" over the active entries.
        if levels >= 2 and int((w1 > w1.mean()).sum()) >= window and s2:
            level = 2  # lines 13-16
    if forced is not None:
        level = forced

    active = [s0, s1, s2][: level + 1]
    frames = [j for seg in active for j in seg]
    if joint:
        weights = softmax(frames)
    else:
        weights = torch.cat([softmax(seg) for seg in active if seg])
    return frames, weights, level


def _loop(q, k, v, *, window, levels, joint, scale, q_lens, k_lens, starts, force_level, dense):
    B, H, L, _ = q.shape
    T = k.shape[2]
    rows, level = [], torch.zeros(B, H, L, dtype=torch.int8, device=q.device)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                frames, weights = None, None
                if i < int(q_lens[b]):
                    forced = None if force_level is None else int(force_level[b, h, i])
                    frames, weights, lvl = _row(
                        q[b, h, i], k[b, h], int(starts[b, i]), int(k_lens[b]), window, levels, joint, scale, forced
                    )
                    level[b, h, i] = lvl
                if dense:
                    row = q.new_zeros(T)
                    if frames:
                        row = row.index_put((torch.tensor(frames, device=q.device),), weights)
                    rows.append(row)
                else:
                    # an empty window still yields a row of the graph (an empty sum), so backward always works
                    rows.append(weights @ v[b, h, frames] if frames else v[b, h, :0].sum(0))
    shape = (B, H, L, T) if dense else (B, H, L, v.shape[-1])
    out = torch.stack(rows).reshape(shape) if rows else q.new_zeros(shape)
    # With empty inputs, keep every input in the graph (gradient 0, as the other backends give), so
    # backward works; the sums are 0 (empty tensor) or land in an empty output (no rows), never NaN.
    links = [x for x in (q, k, v) if x is not None and (not rows or x.numel() == 0)]
    if links:
        out = out + sum(x.sum() * 0 for x in links)
    return out, level


def sawa_reference(
    q, k, v, *, window, levels, joint, scale, q_lens, k_lens, starts, force_level=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference SAWA on normalized arguments (see ``op.py``): returns ``(out (B,H,L,dv), level int8)``.

    ``force_level`` (B, H, L): take these levels instead of deciding (for comparing backends on
    the same decisions); padded rows and empty windows stay at level 0 with a zero output.
    """
    return _loop(q, k, v, window=window, levels=levels, joint=joint, scale=scale, q_lens=q_lens,
                 k_lens=k_lens, starts=starts, force_level=force_level, dense=False)


def sawa_attention_map_reference(
    q, k, *, window, levels, joint, scale, q_lens, k_lens, starts, force_level=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense ``(B, H, L, T)`` attention weights (the paper's ``diag_att``) and the levels."""
    return _loop(q, k, None, window=window, levels=levels, joint=joint, scale=scale, q_lens=q_lens,
                 k_lens=k_lens, starts=starts, force_level=force_level, dense=True)


def decision_margins(q, k, *, window, levels, joint, scale, q_lens, k_lens, starts) -> torch.Tensor:
    """Per row, the smallest distance of a weight to the threshold it was compared with.

    ``(B, H, L)`` float64; ``inf`` where no comparison decided the row (padded rows, empty windows,
    ``levels=0``). Rows whose margin exceeds a dtype's rounding error must get the same level in
    every backend and precision (SPEC §1 "Ties").
    """
    B, H, L, _ = q.shape
    q, k = q.double(), k.double()
    out = torch.full((B, H, L), float("inf"), dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(min(int(q_lens[b]), L)):
                s0, s1, _ = segments(int(starts[b, i]), window, int(k_lens[b]))
                if not s0 or levels == 0:
                    continue
                k_bh, q_i = k[b, h], q[b, h, i]
                x = lambda frames: scale * (k_bh[frames] @ q_i)  # noqa: E731, B023 (used in this iteration)
                a0 = torch.softmax(x(s0), 0)
                margin = float((a0 - 1.0 / len(s0)).abs().min())
                if levels >= 2 and s1 and int((a0 > 1.0 / len(s0)).sum()) >= window // 2:
                    w1 = torch.softmax(x(s0 + s1), 0) if joint else torch.cat([a0, torch.softmax(x(s1), 0)])
                    margin = min(margin, float((w1 - w1.mean()).abs().min()))
                out[b, h, i] = margin
    return out
