"""Thin calls into the compiled C++ GCPU recurrence (``csrc/gcpu.cpp``): the launchers ``gcpu_fwd`` /
``gcpu_bwd`` of the ``cpp`` backend, calling the C++ ops ``torch.ops.mfdr_C.gcpu_fwd_cpu`` / ``gcpu_bwd_cpu``."""

from __future__ import annotations

import torch

from .. import _ext


def gcpu_fwd(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0):
    _ext.load()
    return torch.ops.mfdr_C.gcpu_fwd_cpu(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0)


def gcpu_bwd(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0):
    _ext.load()
    grads = torch.ops.mfdr_C.gcpu_bwd_cpu(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0)
    dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0 = grads[:8]
    dx_g, dW_hg, dW_gu = grads[8:] if W_hg is not None else (None, None, None)
    return dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh0
