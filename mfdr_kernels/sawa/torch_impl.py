"""Vectorized PyTorch SAWA: forward and explicit backward; any device; the fallback backend.

No Python loop over batch, heads or queries. Each query's span ``[s-ω, s+2ω)`` (only the rings
that ``levels`` can reach) is gathered from K/V by index: this backend does build a
``(B, H, L, span, d)`` gather (``span ≤ 3ω``), linear in L — it is the portable fallback; the
``cpp`` and ``triton`` kernels read the frames in place instead.

Arguments are the normalized ones of ``op.py``: lengths ``(B,)`` int64, ``starts (B, L)`` int64
with padded entries already set to ``T``, ``force_level`` None or ``(B, H, L)`` int8.
"""

from __future__ import annotations

import torch


def _offsets(window: int, reach: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame offsets from the window start and their ring (0: S0, 1: S1, 2: S2), up to ring ``reach``."""
    half = window // 2
    lo, hi = [(0, window), (-half, window + half), (-window, 2 * window)][reach]
    o = torch.arange(lo, hi, device=device)
    ring = torch.full_like(o, 2)
    ring[(o >= -half) & (o < window + half)] = 1
    ring[(o >= 0) & (o < window)] = 0
    return o, ring


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, e), idx (B, L, W) clamped frames -> (B, H, L, W, e)."""
    B, H, T, e = x.shape
    L, W = idx.shape[1:]
    flat = idx.reshape(B, 1, L * W).expand(B, H, L * W)
    return x.gather(2, flat.unsqueeze(-1).expand(B, H, L * W, e)).reshape(B, H, L, W, e)


def _softmax_groups(x, mask, groups, n_groups):
    """Softmax of scores x over each group (ids in ``groups``) restricted to ``mask``; 0 elsewhere."""
    w = torch.zeros_like(x)
    for g in range(n_groups):
        m = mask & (groups == g)
        xg = x.masked_fill(~m, float("-inf"))
        mx = xg.amax(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).min)  # all-masked rows: finite
        e = torch.exp(xg - mx)
        w = w + e / e.sum(-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    return w


def _setup(q, k, q_lens, k_lens, starts, window, reach):
    B, H, L, _ = q.shape
    T = k.shape[2]
    o, ring = _offsets(window, reach, q.device)
    frame = starts[:, :, None] + o  # (B, L, W)
    exists = (frame >= 0) & (frame < k_lens[:, None, None])
    row_ok = torch.arange(L, device=q.device)[None, :] < q_lens[:, None]  # (B, L)
    base = (exists & (ring == 0)).any(-1) & row_ok  # S0 non-empty and a valid query
    exists = exists & base[..., None]
    return frame.clamp(0, max(T - 1, 0)), exists[:, None], ring, base[:, None]


def _final_weights(x, exists, ring, level, joint):
    active = exists & (ring <= level[..., None].long())
    groups = torch.zeros_like(ring) if joint else ring
    return _softmax_groups(x, active, groups, 1 if joint else 3), active


def sawa_fwd(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale):
    """Returns ``(out (B, H, L, dv), level (B, H, L) int8)``."""
    reach = levels if force_level is None else max(levels, int(force_level.max()) if force_level.numel() else 0)
    idx, exists, ring, base = _setup(q, k, q_lens, k_lens, starts, window, reach)
    kg = _gather(k, idx)  # (B, H, L, W, d)
    x = torch.einsum("bhld,bhlwd->bhlw", q, kg) * scale
    if force_level is not None:
        level = torch.where(base, force_level.long(), 0)
    else:
        level = _decide(x, exists, ring, base, window, levels, joint)
    w, _ = _final_weights(x, exists, ring, level, joint)
    out = torch.einsum("bhlw,bhlwe->bhle", w, _gather(v, idx))
    return out, level.to(torch.int8)


def _decide(x, exists, ring, base, window, levels, joint):
    half = window // 2
    level = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
    if levels == 0:
        return level
    seg = _softmax_groups(x, exists, ring, 3)  # per-ring softmax
    in0, in1, in2 = (exists & (ring == r) for r in range(3))
    n0 = in0.sum(-1, keepdim=True)
    c0 = ((seg > 1.0 / n0.clamp_min(1)) & in0).sum(-1)
    lvl1 = base & (c0 >= half) & in1.any(-1)
    level = lvl1.long()
    if levels >= 2:
        a1 = in0 | in1
        w1 = _softmax_groups(x, a1, torch.zeros_like(ring), 1) if joint else seg * a1
        mean = w1.sum(-1, keepdim=True) / a1.sum(-1, keepdim=True).clamp_min(1)
        c1 = ((w1 > mean) & a1).sum(-1)
        level = level + (lvl1 & (c1 >= window) & in2.any(-1)).long()
    return level


def sawa_bwd(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale, saved=None):
    """Gradients ``(dq, dk, dv)`` given the forward's levels (the decisions are not differentiated); ``saved``
    is unused (the weights are recomputed from the inputs)."""
    B, H, L, _ = q.shape
    reach = int(level.max()) if level.numel() else 0
    idx, exists, ring, _ = _setup(q, k, q_lens, k_lens, starts, window, reach)
    kg, vg = _gather(k, idx), _gather(v, idx)
    x = torch.einsum("bhld,bhlwd->bhlw", q, kg) * scale
    w, active = _final_weights(x, exists, ring, level.long(), joint)
    dot = torch.einsum("bhle,bhlwe->bhlw", grad_out, vg)  # dL/dw_j = <do_i, v_j>
    groups = torch.zeros_like(ring) if joint else ring
    centred = torch.zeros_like(dot)
    for g in range(1 if joint else 3):
        in_g = active & (groups == g)
        centred = centred + torch.where(in_g, dot - (w * dot * in_g).sum(-1, keepdim=True), 0)
    ds = w * centred * scale  # dL/d(q.k_j)
    dq = torch.einsum("bhlw,bhlwd->bhld", ds, kg)
    flat = idx.reshape(B, 1, -1).expand(B, H, -1)  # (B, H, L*W)
    dk = torch.zeros_like(k).scatter_add_(
        2, flat.unsqueeze(-1).expand(-1, -1, -1, k.shape[-1]),
        (ds.unsqueeze(-1) * q.unsqueeze(3)).reshape(B, H, -1, k.shape[-1]))
    dv = torch.zeros_like(v).scatter_add_(
        2, flat.unsqueeze(-1).expand(-1, -1, -1, v.shape[-1]),
        (w.unsqueeze(-1) * grad_out.unsqueeze(3)).reshape(B, H, -1, v.shape[-1]))
    return dq, dk, dv
