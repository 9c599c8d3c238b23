"""Vectorized PyTorch DFC: forward and explicit backward; any device; the fallback backend.

This is the unfold-based formulation one writes by hand (and the baseline of the benchmarks):
``x.unfold`` is a view, but the product with the kernel materializes the unfolded
``(B, N, frame, C)`` tensor in the forward and again in each half of the backward, exactly as
autograd through ``unfold`` would. The ``cpp`` and ``triton`` kernels read the frames in place.

Arguments are the checked ones of ``op.py``: ``x (B, L, C)`` contiguous, ``kernel (N, frame, C)``
or ``(B, N, frame, C)`` contiguous, ``bias`` None, ``(C,)`` or ``(N, C)``.
"""

from __future__ import annotations

import torch


def _unfold(x: torch.Tensor, frame: int, hop: int) -> torch.Tensor:
    """x (B, L, C) -> the frames (B, N, frame, C), a strided view (nothing copied yet)."""
    return x.unfold(1, frame, hop).transpose(2, 3)


def dfc_fwd(x, kernel, bias, frame, hop):
    """Returns ``y (B, N, C)``."""
    xu = _unfold(x, frame, hop)  # (B, N, frame, C)
    y = (xu * kernel).sum(2)  # the product is the unfolded tensor: (B, N, frame, C)
    if bias is not None:
        y = y + bias
    return y


def dfc_bwd(grad_y, x, kernel, frame, hop):
    """Gradients ``(dx (B, L, C), dkernel (kernel's shape), dbias (N, C))``; ``dbias`` is summed over
    the batch and reduced further to ``(C,)`` by the caller when the bias is shared by the frames."""
    B, L, C = x.shape
    g = grad_y.unsqueeze(2)  # (B, N, 1, C)
    dk = g * _unfold(x, frame, hop)  # (B, N, frame, C)
    if kernel.dim() == 3:
        dk = dk.sum(0)
    gu = (g * kernel).transpose(2, 3)  # (B, N, C, frame): the layout of x.unfold(1, frame, hop)
    dx = torch.ops.aten.unfold_backward(gu, [B, L, C], 1, frame, hop)  # overlapping frames add up
    return dx, dk, grad_y.sum(0)
