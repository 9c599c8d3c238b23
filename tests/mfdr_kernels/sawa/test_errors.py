"""Bad input to SAWA: a clear ValueError/TypeError naming the argument, never a crash or NaN."""

import pytest
import torch

import mfdr_kernels
from mfdr_kernels import sliding_adaptive_window_attention as sawa


def qkv(B=2, H=1, L=5, T=20, d=4, dv=3, dtype=torch.float32):
    return (torch.randn(B, H, L, d, dtype=dtype), torch.randn(B, H, T, d, dtype=dtype),
            torch.randn(B, H, T, dv, dtype=dtype))


q, k, v = qkv()

BAD = [
    # (description, call kwargs override, exception, message fragment)
    ("q rank", dict(q=q[0]), ValueError, "q must be 4-D"),
    ("k rank", dict(k=k[0]), ValueError, "k must be 4-D"),
    ("v not a tensor", dict(v=[1, 2]), TypeError, "v must be a torch.Tensor"),
    ("int dtype", dict(q=q.long(), k=k.long(), v=v.long()), TypeError, "q must have a floating dtype"),
    ("mixed dtypes", dict(k=k.double()), TypeError, "k must have the dtype of q"),
    ("batch mismatch", dict(k=k[:1]), ValueError, "k must have batch and heads"),
    ("head dim mismatch", dict(k=torch.randn(2, 1, 20, 5)), ValueError, "k must have head dim 4"),
    ("v frames mismatch", dict(v=torch.randn(2, 1, 19, 3)), ValueError, "v must have shape (B, H, T, dv)"),
    ("zero head dim", dict(q=torch.randn(2, 1, 5, 0), k=torch.randn(2, 1, 20, 0)), ValueError,
     "head dims must be >= 1"),
    ("odd window", dict(window=5), ValueError, "window must be even when levels > 0"),
    ("window zero", dict(window=0), ValueError, "window must be >= 1"),
    ("window float", dict(window=4.0), TypeError, "window must be an int"),
    ("levels 3", dict(levels=3), ValueError, "levels must be 0, 1 or 2"),
    ("hop zero", dict(hop=0), ValueError, "hop must be >= 1"),
    ("normalize", dict(normalize="softmax"), ValueError, "normalize must be one of"),
    ("scale nan", dict(scale=float("nan")), ValueError, "scale must be finite"),
    ("q_lens shape", dict(q_lens=torch.tensor([5])), ValueError, "q_lens must have shape (2,)"),
    ("q_lens float", dict(q_lens=torch.tensor([5.0, 4.0])), TypeError, "q_lens must have an integer dtype"),
    ("q_lens too big", dict(q_lens=torch.tensor([6, 5])), ValueError, "q_lens must lie in [0, 5]"),
    ("k_lens negative", dict(k_lens=torch.tensor([-1, 5])), ValueError, "k_lens must lie in [0, 20]"),
    ("starts shape", dict(window_starts=torch.zeros(2, 4, dtype=torch.long)), ValueError,
     "window_starts must have shape (2, 5)"),
    ("starts negative", dict(window_starts=torch.tensor([[-1, 0, 1, 2, 3]] * 2)), ValueError,
     "window_starts must be >= 0"),
    ("starts decreasing", dict(window_starts=torch.tensor([[0, 3, 2, 4, 5]] * 2)), ValueError,
     "window_starts must be non-decreasing"),
    ("force_level range", dict(levels=1, force_level=torch.full((2, 1, 5), 2)), ValueError,
     "force_level must lie in [0, 1]"),
    ("unknown backend", dict(backend="cuda"), ValueError, "backend= must be one of"),
]


@pytest.mark.parametrize("backend", [None, "torch", "reference"])
@pytest.mark.parametrize("desc,override,exc,fragment", BAD, ids=[b[0] for b in BAD])
def test_bad_input(desc, override, exc, fragment, backend):
    kw = dict(q=q, k=k, v=v, window=4, backend=backend)
    kw.update(override)
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace(
            "]", r"\]")):
        sawa(kw.pop("q"), kw.pop("k"), kw.pop("v"), **kw)


def test_device_mismatch_named():
    meta = torch.empty(2, 1, 20, 4, device="meta")
    with pytest.raises(ValueError, match="k must be on the device of q"):
        sawa(q, meta, v, window=4)


def test_padded_start_entries_are_ignored():
    # entries of padded queries may be anything, even negative or decreasing
    starts = torch.tensor([[0, 2, 4, -7, 0], [0, 2, 4, 6, 8]])
    out = sawa(q, k, v, window=4, window_starts=starts, q_lens=[3, 5], backend="torch")
    assert (out[0, :, 3:] == 0).all() and torch.isfinite(out).all()


def test_unavailable_backend_explains_why():
    with pytest.raises(RuntimeError, match="backend 'triton'.*cannot run.*CUDA"):
        import os

        old = os.environ.pop("TRITON_INTERPRET")
        try:
            sawa(q, k, v, window=4, backend="triton")
        finally:
            os.environ["TRITON_INTERPRET"] = old
    with pytest.raises(RuntimeError, match="cpp backend takes float32 or float64 or bfloat16, got torch.float16"):
        sawa(q.half(), k.half(), v.half(), window=4, backend="cpp")


def test_env_override_and_report(monkeypatch):
    monkeypatch.setenv("MFDR_KERNELS_BACKEND", "reference")
    ref = sawa(q.double(), k.double(), v.double(), window=4)
    monkeypatch.setenv("MFDR_KERNELS_BACKEND", "torch")
    torch.testing.assert_close(sawa(q.double(), k.double(), v.double(), window=4), ref)
    monkeypatch.setenv("MFDR_KERNELS_BACKEND", "fastest")
    with pytest.raises(ValueError, match="MFDR_KERNELS_BACKEND must be one of"):
        sawa(q, k, v, window=4)
    monkeypatch.delenv("MFDR_KERNELS_BACKEND")
    assert mfdr_kernels.default_backend() == "cpp"
    assert mfdr_kernels.default_backend(dtype=torch.bfloat16) == "cpp"
    assert mfdr_kernels.default_backend(dtype=torch.float16) == "torch"
    report = mfdr_kernels.backends()["sliding_adaptive_window_attention"]
    assert report["cpp"] is None and report["torch"] is None


def test_nan_input_propagates_without_crash():
    qn = q.clone()
    qn[0, 0, 1] = float("nan")
    for backend in ["torch", "cpp"]:
        out = sawa(qn, k, v, window=4, backend=backend)
        assert torch.isnan(out[0, 0, 1]).all()
        assert torch.isfinite(out[1]).all() and torch.isfinite(out[0, 0, [0, 2, 3, 4]]).all()


def test_check_finite_flag_names_the_argument(monkeypatch):
    monkeypatch.setenv("MFDR_KERNELS_CHECK_FINITE", "1")
    vn = v.clone()
    vn[1, 0, 3, 0] = float("inf")
    with pytest.raises(ValueError, match="v contains NaN or Inf"):
        sawa(q, k, vn, window=4, backend="cpp")
    sawa(q, k, v, window=4, backend="cpp")  # finite inputs pass
