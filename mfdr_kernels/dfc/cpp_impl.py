"""Thin calls into the compiled C++ DFC kernels (``csrc/dfc.cpp``): the launchers ``dfc_fwd`` / ``dfc_bwd``
of the ``cpp`` backend, calling the C++ ops ``torch.ops.mfdr_C.dfc_fwd_cpu`` / ``dfc_bwd_cpu``."""

from __future__ import annotations

import torch

from .. import _ext


def dfc_fwd(x, kernel, bias, frame, hop):
    _ext.load()
    return torch.ops.mfdr_C.dfc_fwd_cpu(x, kernel, bias, frame, hop)


def dfc_bwd(grad_y, x, kernel, frame, hop):
    _ext.load()
    return torch.ops.mfdr_C.dfc_bwd_cpu(grad_y, x, kernel, frame, hop)
