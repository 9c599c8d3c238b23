"""Bad input at ``mfdr.MFDR`` (mfdr/model.py), at construction and in ``forward``: every row an input, the
exact exception type and a fragment of its message; edge inputs that are valid run."""

import pytest
import torch

from mfdr import MFDR, MFDRConfig
from tests.bad_input import F64, nan_at, raises, row

SMALL = dict(audio_dim=3, text_dim=2, audio_len=12, text_len=4, d_model=4, heads=2, window=2, hop=2,
             dfc_hidden=2, dfc_hops=(1,), dropout=0.0)


def model(audio=None, text=None, *args, **kw):
    m = MFDR(MFDRConfig(**SMALL)).eval()
    audio = torch.randn(2, 12, 3) if audio is None else audio
    return m(audio, torch.randn(2, 4, 2) if text is None else text, *args, **kw)


MODEL_BAD = [
    row("config-not-a-config", lambda: MFDR({"d_model": 4}),
        TypeError, "config must be an MFDRConfig, got dict"),
    row("config-change-unknown", lambda: MFDR(MFDRConfig(**SMALL), d_modle=8), ValueError,
        "MFDRConfig: unknown field(s) ['d_modle']"),
    row("audio-not-a-tensor", lambda: model(audio=[[0.0]]),
        TypeError, "audio must be a torch.Tensor, got list"),
    row("audio-2d", lambda: model(audio=torch.randn(12, 3)),
        ValueError, "audio must be 3-D, got shape (12, 3)"),
    row("audio-dim", lambda: model(audio=torch.randn(2, 12, 4)), ValueError,
        "audio must have shape (B, T >= 1, audio_dim=3), got (2, 12, 4)"),
    row("audio-no-frames", lambda: model(audio=torch.randn(2, 0, 3)), ValueError,
        "audio must have shape (B, T >= 1, audio_dim=3), got (2, 0, 3)"),
    row("audio-int", lambda: model(audio=torch.ones(2, 12, 3, dtype=torch.long)), TypeError,
        "audio must have a floating dtype"),
    row("audio-dtype-differs", lambda: model(audio=torch.randn(2, 12, 3, dtype=F64)), TypeError,
        "audio must have the dtype of the module's parameters (torch.float32), got torch.float64"),
    row("text-device-differs", lambda: model(text=torch.empty(2, 4, 2, device="meta")), ValueError,
        "text must be on the device of the module's parameters (cpu), got meta"),
    row("text-tokens", lambda: model(text=torch.randn(2, 5, 2)), ValueError,
        "text must have shape (B, text_len=4, text_dim=2) (pad or cut the tokens to text_len), "
        "got (2, 5, 2)"),
    row("batch-differs", lambda: model(text=torch.randn(1, 4, 2)), ValueError,
        "audio and text must have the same batch size, got 2 and 1"),
    row("audio_lengths-float", lambda: model(None, None, torch.tensor([3.0, 4.0])), TypeError,
        "audio_lengths must have an integer dtype"),
    row("audio_lengths-0", lambda: model(None, None, [0, 4]),
        ValueError, "audio_lengths must lie in [1, 12]"),
    row("audio_lengths-past-T", lambda: model(None, None, [13, 4]), ValueError,
        "audio_lengths must lie in [1, 12], got values in [4, 13]"),
    row("audio_lengths-shape", lambda: model(None, None, [4]),
        ValueError, "audio_lengths must have shape (2,)"),
    row("text_lengths-0", lambda: model(None, None, None, [0, 4]),
        ValueError, "text_lengths must lie in [1, 4]"),
    row("text_lengths-past-L", lambda: model(None, None, None, torch.tensor([5, 4])), ValueError,
        "text_lengths must lie in [1, 4], got values in [4, 5]"),
    row("window_starts-shape", lambda: model(window_starts=torch.zeros(2, 3, dtype=torch.long)), ValueError,
        "window_starts must have shape (2, 4), got (2, 3)"),
    row("window_starts-negative", lambda: model(window_starts=torch.full((2, 4), -1)), ValueError,
        "window_starts must be >= 0 for valid queries"),
    row("window_starts-decreasing", lambda: model(window_starts=[[3, 2, 1, 0], [0, 0, 0, 0]]), ValueError,
        "window_starts must be non-decreasing"),
    row("audio-nan-checked", lambda: model(audio=nan_at(torch.randn(2, 12, 3), 1, 5, 0)), ValueError,
        "audio contains NaN or Inf (MFDR_KERNELS_CHECK_FINITE=1)", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
]


@pytest.mark.parametrize("call, exc, fragment, env", MODEL_BAD)
def test_model_bad_input(call, exc, fragment, env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call()


def test_model_edge_input():
    """An empty batch gives empty logits; expanded (stride-0) inputs give what their copies give."""
    m = MFDR(MFDRConfig(**SMALL)).eval()
    assert m(torch.randn(0, 12, 3), torch.randn(0, 4, 2)).shape == (0, 4)
    audio, text = torch.randn(1, 12, 3).expand(2, 12, 3), torch.randn(1, 1, 2).expand(2, 4, 2)
    torch.testing.assert_close(m(audio, text, [12, 7]), m(audio.contiguous(), text.contiguous(), [12, 7]))

