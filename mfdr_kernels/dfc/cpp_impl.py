"""Thin calls into the compiled C++ DFC kernels (``csrc/dfc.cpp``, ops ``torch.ops.mfdr_C``)."""

from __future__ import annotations

import torch

from .. import _ext


def dfc_forward(x, kernel, bias, frame, hop):
    _ext.load()
    return torch.ops.mfdr_C.dfc_forward(x, kernel, bias, frame, hop)


def dfc_backward(grad_y, x, kernel, frame, hop):
    _ext.load()
    return torch.ops.mfdr_C.dfc_backward(grad_y, x, kernel, frame, hop)
