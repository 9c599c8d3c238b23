"""Thin calls into the compiled C++ SAWA kernels (``csrc/sawa.cpp``, ops ``torch.ops.mfdr_C``)."""

from __future__ import annotations

import torch

from .. import _ext


def sawa_forward(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale):
    _ext.load()
    return torch.ops.mfdr_C.sawa_forward(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale)


def sawa_backward(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale):
    _ext.load()
    return torch.ops.mfdr_C.sawa_backward(grad_out, q, k, v, q_lens, k_lens, starts, level, window, joint, scale)
