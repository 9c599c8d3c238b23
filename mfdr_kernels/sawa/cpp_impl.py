"""Thin calls into the compiled C++ SAWA kernels (``csrc/sawa.cpp``): the launchers ``sawa_fwd`` / ``sawa_bwd``
of the ``cpp`` backend, calling the C++ ops ``torch.ops.mfdr_C.sawa_fwd_cpu`` / ``sawa_bwd_cpu``."""

from __future__ import annotations

import torch

from .. import _ext


def sawa_fwd(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale):
    """``(out, level, weights)``: the weights per slot (B, H, L, 3 window) are what ``sawa_bwd`` reads."""
    _ext.load()
    return torch.ops.mfdr_C.sawa_fwd_cpu(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale)


def sawa_bwd(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale, saved=None):
    """Gradients ``(dq, dk, dv)`` from ``saved``, the forward's weights per slot (which hold its levels)."""
    if saved is None:
        raise ValueError("the cpp backward needs saved=: the weights per slot that the cpp sawa_fwd returned")
    _ext.load()
    return torch.ops.mfdr_C.sawa_bwd_cpu(grad_out, q, k, v, q_lens, k_lens, starts, saved, window, joint, scale)
