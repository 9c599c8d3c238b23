"""Bad input at ``mfdr.DynamicFrameConv`` (mfdr/dfc.py), at construction and in ``forward``: every row an
input, the exact exception type and a fragment of its message."""

import pytest
import torch

from mfdr import DynamicFrameConv
from tests.bad_input import F64, raises, row


def _with_backend(module, backend):
    module.backend = backend
    return module


def dfc_module(x, **kw):
    return DynamicFrameConv(7, 3, hidden=2, **kw)(x)


DFC_MODULE_BAD = [
    row("length-below-frame", lambda: DynamicFrameConv(2, 3),
        ValueError, "length must be >= frame = 3, got 2"),
    row("length-float", lambda: DynamicFrameConv(7.0, 3), TypeError, "length must be an int, got float"),
    row("channels-0", lambda: DynamicFrameConv(7, 0), ValueError, "channels must be >= 1, got 0"),
    row("frame-0", lambda: DynamicFrameConv(7, 3, frame=0), ValueError, "frame must be >= 1, got 0"),
    row("hop-negative", lambda: DynamicFrameConv(7, 3, hop=-1), ValueError, "hop must be >= 1, got -1"),
    row("hidden-0", lambda: DynamicFrameConv(7, 3, hidden=0), ValueError, "hidden must be >= 1, got 0"),
    row("activation-unknown", lambda: DynamicFrameConv(7, 3, activation="swish"), ValueError,
        "activation must be one of ('relu', 'gelu', 'silu', 'tanh'), got 'swish'"),
    row("backend-unknown-at-construction", lambda: DynamicFrameConv(7, 3, backend="cuda"), ValueError,
        "backend must be one of"),
    row("x-not-a-tensor", lambda: dfc_module([[0.0] * 3] * 7),
        TypeError, "x must be a torch.Tensor, got list"),
    row("x-2d", lambda: dfc_module(torch.randn(7, 3)), ValueError, "x must be 3-D, got shape (7, 3)"),
    row("x-length-differs", lambda: dfc_module(torch.randn(2, 6, 3)), ValueError,
        "x must have shape (B, length=7, channels=3), got (2, 6, 3)"),
    row("x-channels-differ", lambda: dfc_module(torch.randn(2, 7, 4)), ValueError,
        "x must have shape (B, length=7, channels=3), got (2, 7, 4)"),
    row("x-int", lambda: dfc_module(torch.ones(2, 7, 3, dtype=torch.long)), TypeError,
        "x must have a floating dtype, got torch.int64"),
    row("x-dtype-differs-from-parameters", lambda: dfc_module(torch.randn(2, 7, 3, dtype=F64)), TypeError,
        "x must have the dtype of the module's parameters (torch.float32), got torch.float64"),
    row("x-device-differs-from-parameters", lambda: dfc_module(torch.empty(2, 7, 3, device="meta")),
        ValueError,
        "x must be on the device of the module's parameters (cpu), got meta"),
    row("backend-set-unknown-after-construction", lambda: _with_backend(DynamicFrameConv(7, 3, hidden=2), "cuda")(
        torch.randn(2, 7, 3)), ValueError, "dynamic_frame_conv: backend= must be one of"),
]


@pytest.mark.parametrize("call, exc, fragment, env", DFC_MODULE_BAD)
def test_dfc_module_bad_input(call, exc, fragment, env):
    with raises(exc, fragment):
        call()

