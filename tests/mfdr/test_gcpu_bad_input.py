"""Bad input at ``mfdr.GCPU`` (mfdr/gcpu.py), at construction, in ``forward`` and ``recurrence``: every row
an input, the exact exception type and a fragment of its message; edge inputs that are valid run."""

import pytest
import torch

from mfdr import GCPU
from tests.bad_input import F64, NAN, raises, row


def gcpu(z, *args, context=True, **kw):
    return GCPU(4, 2, context=context)(z, *args, **kw)


GCPU_BAD = [
    row("dim-0", lambda: GCPU(0, 1), ValueError, "dim must be >= 1, got 0"),
    row("dim-float", lambda: GCPU(4.0, 2), TypeError, "dim must be an int, got float"),
    row("dim-str", lambda: GCPU("4", 2), TypeError, "dim must be an int, got str"),
    row("heads-0", lambda: GCPU(4, 0), ValueError, "heads must be >= 1, got 0"),
    row("dim-not-divisible", lambda: GCPU(4, 3), ValueError, "dim (4) must be divisible by heads (3)"),
    row("context-str", lambda: GCPU(4, 2, context="none"),
        TypeError, "context must be a bool, got str 'none'"),
    row("dropout-1", lambda: GCPU(4, 2, dropout=1.0), ValueError, "dropout must lie in [0, 1), got 1.0"),
    row("dropout-nan", lambda: GCPU(4, 2, dropout=NAN), ValueError, "dropout must be finite"),
    row("z-not-a-tensor", lambda: gcpu([[[0.0] * 4]]), TypeError, "z must be a torch.Tensor, got list"),
    row("z-2d", lambda: gcpu(torch.randn(3, 4)), ValueError, "z must be 3-D, got shape (3, 4)"),
    row("z-width", lambda: gcpu(torch.randn(2, 3, 5)),
        ValueError, "z must have shape (B, L, 4), got (2, 3, 5)"),
    row("z-no-steps", lambda: gcpu(torch.randn(2, 0, 4)),
        ValueError, "z must have at least one step (L >= 1)"),
    row("z-int", lambda: gcpu(torch.ones(2, 3, 4, dtype=torch.long)),
        TypeError, "z must have a floating dtype"),
    row("z-dtype-differs", lambda: gcpu(torch.randn(2, 3, 4, dtype=F64)), TypeError,
        "z must have the dtype of the module's parameters (torch.float32), got torch.float64"),
    row("z-device-differs", lambda: gcpu(torch.empty(2, 3, 4, device="meta")), ValueError,
        "z must be on the device of the module's parameters (cpu), got meta"),
    row("lengths-shape", lambda: gcpu(torch.randn(2, 3, 4), torch.tensor([3])), ValueError,
        "lengths must have shape (2,), got (1,)"),
    row("lengths-float", lambda: gcpu(torch.randn(2, 3, 4), torch.tensor([3.0, 1.0])), TypeError,
        "lengths must have an integer dtype, got torch.float32"),
    row("lengths-past-L", lambda: gcpu(torch.randn(2, 3, 4), torch.tensor([4, 1])), ValueError,
        "lengths must lie in [0, 3], got values in [1, 4]"),
    row("lengths-negative", lambda: gcpu(torch.randn(2, 3, 4), [-1, 2]),
        ValueError, "lengths must lie in [0, 3]"),
    row("lengths-without-context", lambda: gcpu(torch.randn(2, 3, 4), [9, 2], context=False), ValueError,
        "lengths must lie in [0, 3]"),
    row("h0-shape", lambda: gcpu(torch.randn(2, 3, 4), h0=torch.zeros(4)), ValueError,
        "h0 must have shape (2, 4), got (4,)"),
    row("h0-not-a-tensor", lambda: gcpu(torch.randn(2, 3, 4), h0=[0.0] * 4),
        TypeError, "h0 must be a torch.Tensor"),
    row("h0-dtype-differs", lambda: gcpu(torch.randn(2, 3, 4), h0=torch.zeros(2, 4, dtype=F64)), TypeError,
        "h0 must have the dtype of z (torch.float32), got torch.float64"),
    row("recurrence-without-g", lambda: GCPU(4, 2).recurrence(torch.randn(2, 3, 4)), ValueError,
        "g must have the shape of z (2, 3, 4), got None"),
    row("recurrence-g-shape", lambda: GCPU(4, 2).recurrence(torch.randn(2, 3, 4), torch.randn(2, 2, 4)),
        ValueError,
        "g must have the shape of z (2, 3, 4), got (2, 2, 4)"),
]


@pytest.mark.parametrize("call, exc, fragment, env", GCPU_BAD)
def test_gcpu_bad_input(call, exc, fragment, env):
    with raises(exc, fragment):
        call()


def test_gcpu_edge_input():
    """An empty batch, a zero length and an expanded (stride-0) z run; padded steps are 0."""
    m = GCPU(4, 2).eval()
    assert m(torch.randn(0, 3, 4)).shape == (0, 3, 4)
    z = torch.randn(1, 3, 4).expand(2, 3, 4)
    H = m(z, torch.tensor([0, 2]))
    assert (H[0] == 0).all() and (H[1, 2] == 0).all()
    torch.testing.assert_close(H[1, :2], m(z[1:, :2])[0])

