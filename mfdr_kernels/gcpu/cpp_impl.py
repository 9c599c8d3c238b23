"""Thin calls into the compiled C++ GCPU recurrence (``csrc/gcpu.cpp``, ops ``torch.ops.mfdr_C``)."""

from __future__ import annotations

import torch

from .. import _ext


def gcpu_forward(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0):
    _ext.load()
    return torch.ops.mfdr_C.gcpu_forward(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0)


def gcpu_backward(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0):
    _ext.load()
    return tuple(torch.ops.mfdr_C.gcpu_backward(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0))
