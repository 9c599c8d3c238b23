"""Readable reference of dynamic frame convolution (DFC): the source of truth.

A plain loop over (batch, frame position) that mirrors the paper's §2.3 as fixed by SPEC §2: the
sequence ``x (B, L, C)`` is cut into ``N = floor((L - frame) / hop) + 1`` frames of ``frame`` rows
(paper eq. 7), and frame ``n`` is reduced to one row by its private depthwise kernel ``Φ[n]``:

    y[b, n, c] = Σ_{j < frame} kernel[n, j, c] * x[b, n*hop + j, c]  (+ bias[n, c] or bias[c])

Gradients come from PyTorch autograd through the loop, so the hand-written backward passes of the
fast backends are checked against something independent. Use float64 in tests; it runs in any
dtype on any device, slowly.
"""

from __future__ import annotations

import torch


def num_frames(length: int, frame: int, hop: int) -> int:
    """``N = floor((L - frame) / hop) + 1`` (paper eq. 7); the caller ensures ``length >= frame``."""
    return (length - frame) // hop + 1


def dfc_reference(x, kernel, bias=None, *, frame: int, hop: int) -> torch.Tensor:
    """Reference DFC on checked arguments (see ``op.py``): ``x (B, L, C)``, ``kernel (N, frame, C)``
    shared by the batch or ``(B, N, frame, C)`` per sample, ``bias`` None, ``(C,)`` or ``(N, C)``.
    Returns ``y (B, N, C)``."""
    B, L, C = x.shape
    N = num_frames(L, frame, hop)
    rows = []
    for b in range(B):
        phi = kernel if kernel.dim() == 3 else kernel[b]  # (N, frame, C): this sample's kernels
        for n in range(N):
            window = x[b, n * hop : n * hop + frame]  # (frame, C): frame n, the paper's H_n
            row = (phi[n] * window).sum(0)  # depthwise: one weight per frame element and channel
            if bias is not None:
                row = row + (bias if bias.dim() == 1 else bias[n])
            rows.append(row)
    # an empty batch still yields a result in the graph (an empty sum), so backward always works
    return torch.stack(rows).reshape(B, N, C) if rows else x[:, :0].sum(1, keepdim=True).expand(B, N, C) * 0
