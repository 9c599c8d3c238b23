"""mfdr_kernels: the MFDR operators — sliding adaptive window attention (SAWA), dynamic frame
convolution (DFC) and the fused GCPU recurrence — with Triton (CUDA), C++ (CPU), vectorized PyTorch
and reference backends.

    from mfdr_kernels import sliding_adaptive_window_attention, dynamic_frame_conv, gated_context_recurrence
"""

from __future__ import annotations

import torch

from . import _backends
from .dfc import dynamic_frame_conv
from .gcpu import gated_context_recurrence
from .sawa import sawa_attention_map, sliding_adaptive_window_attention

__version__ = "0.1.0"

_OPS = {"sliding_adaptive_window_attention": "sawa", "dynamic_frame_conv": "dfc", "gated_context_recurrence": "gcpu"}


def backends(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> dict:
    """Which backend can run each op on ``device``/``dtype``: ``{op: {backend: None | why not}}``."""
    import importlib

    x = torch.empty(1, 1, 1, 2, device=device, dtype=dtype)
    out = {}
    for op, folder in _OPS.items():
        checks = importlib.import_module(f".{folder}", __name__).CHECKS
        out[op] = {name: fn(x, x) for name, fn in checks.items()}
    return out


def default_backend(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> str:
    """The backend ``backend=None`` picks for SAWA on ``device``/``dtype``."""
    from .sawa import CHECKS

    x = torch.empty(1, 1, 1, 2, device=device, dtype=dtype)
    return _backends.choose("sliding_adaptive_window_attention", None, CHECKS, (x, x, x))


__all__ = [
    "backends",
    "default_backend",
    "dynamic_frame_conv",
    "gated_context_recurrence",
    "sawa_attention_map",
    "sliding_adaptive_window_attention",
]
