"""Readable reference of the GCPU recurrence (paper eqs. 1-6, SPEC §3): the source of truth.

A plain loop over the steps that mirrors the equations, one product per weight, given the input-side
terms of all steps (``x_r = W_zr z + W_gr g + b_r``, ``x_z = W_zz z + b_z``, ``x_g = W_gg g + b_g``)::

    r_t  = σ(x_r[t] + W_hr h_{t-1})                                  (1)
    z̃_t  = tanh(x_z[t] + W_hz (r_t ⊙ h_{t-1}))                       (2)
    g̃_t  = tanh(x_g[t] + W_hg (r_t ⊙ h_{t-1}))                       (3)
    h̃_t  = z̃_t + g̃_t                                                 (4)
    u_t  = σ(W_zu z̃_t + W_gu g̃_t + W_hu (r_t ⊙ h_{t-1}) + b_u)       (5)
    h_t  = r_t ⊙ h_{t-1} + u_t ⊙ h̃_t                                 (6)

Without context (``x_g``, ``W_hg``, ``W_gu`` None) there is no g̃: ``h̃_t = z̃_t`` and no ``W_gu`` term.
Steps ``t >= lengths[b]`` carry ``h`` unchanged and output 0. Gradients come from PyTorch autograd
through the loop, so the hand-written backpropagation through time of the fast backends is checked
against something independent. Use float64 in tests; it runs in any dtype on any device, slowly.
"""

from __future__ import annotations

import torch


def _W(W: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W x`` for the rows of ``x`` (``nn.Linear`` convention: ``x @ W.T``)."""
    return x @ W.T


def gcpu_reference(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0) -> torch.Tensor:
    """Reference recurrence on checked arguments (see ``op.py``): ``x_* (B, L, D)``, ``W_* (D, D)``,
    ``b_u (D,)``, ``lengths (B,)`` int64 (values past [0, L] act as clamped), ``h0 (B, D)`` or None (zeros).
    Returns ``H (B, L, D)``."""
    context = x_g is not None
    B, L, D = x_r.shape
    h = x_r.new_zeros(B, D) if h0 is None else h0
    out = []
    for t in range(L):
        r = torch.sigmoid(x_r[:, t] + _W(W_hr, h))  # (1)
        rh = r * h
        z_c = torch.tanh(x_z[:, t] + _W(W_hz, rh))  # (2)
        if context:
            g_c = torch.tanh(x_g[:, t] + _W(W_hg, rh))  # (3)
            h_c = z_c + g_c  # (4)
            u = torch.sigmoid(_W(W_zu, z_c) + _W(W_gu, g_c) + _W(W_hu, rh) + b_u)  # (5)
        else:  # w/o Context: h̃ = z̃, no W_gu term
            h_c = z_c
            u = torch.sigmoid(_W(W_zu, z_c) + _W(W_hu, rh) + b_u)
        h_new = rh + u * h_c  # (6)
        valid = (t < lengths)[:, None]  # (B, 1)
        h = torch.where(valid, h_new, h)  # padded steps carry h
        out.append(torch.where(valid, h, 0.0))  # ... and output 0
    if not out:  # L = 0: an empty result that is still part of the graph
        return x_r * 0
    return torch.stack(out, 1)
