"""Bad input at the SAWA op's entry points, ``sliding_adaptive_window_attention`` on the backends ``cpp``,
``torch`` and ``triton`` (under ``TRITON_INTERPRET=1``, set by tests/conftest.py without CUDA, triton runs
on CPU tensors: tiny shapes only) and ``sawa_attention_map``: one table each, every row an input, the exact
exception type and a fragment of its message. Edge inputs that are valid (expanded, stride-0, overlapping
or transposed memory, empty tensors, huge windows and hops) must not reach a kernel unprepared: each has a
row whose result and gradients must equal the reference loop's, called directly on the raw arguments (not
through the op's argument handling)."""

import math

import numpy as np
import pytest
import torch

from mfdr_kernels import sawa_attention_map, sliding_adaptive_window_attention
from mfdr_kernels.sawa.reference import sawa_reference
from tests.bad_input import BACKENDS, F64, INF, NAN, leaf, nan_at, raises, row


# ====================================================================== sliding_adaptive_window_attention
def q_(B=2, H=1, L=3, d=2, dtype=F64):
    return torch.randn(B, H, L, d, dtype=dtype)


def kv_(B=2, H=1, T=8, d=2, dtype=F64):
    return torch.randn(B, H, T, d, dtype=dtype)


def sawa(be, q=None, k=None, v=None, **kw):
    kw.setdefault("window", 2)
    return sliding_adaptive_window_attention(q_() if q is None else q, kv_() if k is None else k,
                                             kv_() if v is None else v, backend=be, **kw)


SAWA_BAD = [
    # --- tensors
    row("q-not-a-tensor", lambda be: sawa(be, q=[[0.0, 1.0]]),
        TypeError, "q must be a torch.Tensor, got list"),
    row("k-not-a-tensor", lambda be: sawa(be, k=np.zeros((2, 1, 8, 2))), TypeError,
        "k must be a torch.Tensor, got ndarray"),
    row("q-3d", lambda be: sawa(be, q=torch.randn(2, 3, 2, dtype=F64)),
        ValueError, "q must be 4-D, got shape (2, 3, 2)"),
    row("v-5d", lambda be: sawa(be, v=torch.randn(2, 1, 8, 2, 1, dtype=F64)), ValueError, "v must be 4-D"),
    row("int-dtype", lambda be: sawa(be, q=torch.ones(2, 1, 3, 2, dtype=torch.long)), TypeError,
        "q must have a floating dtype, got torch.int64"),
    row("bool-dtype", lambda be: sawa(be, k=torch.ones(2, 1, 8, 2, dtype=torch.bool)), TypeError,
        "k must have a floating dtype, got torch.bool"),
    row("complex-dtype", lambda be: sawa(be, q=q_().to(torch.complex128)),
        TypeError, "q must have a floating dtype"),
    row("k-dtype-differs", lambda be: sawa(be, k=kv_(dtype=torch.float32)), TypeError,
        "k must have the dtype of q (torch.float64), got torch.float32"),
    row("v-device-differs", lambda be: sawa(be, v=torch.empty(2, 1, 8, 2, dtype=F64, device="meta")),
        ValueError,
        "v must be on the device of q (cpu), got meta"),
    row("k-batch-differs", lambda be: sawa(be, k=kv_(B=1), v=kv_(B=1)),
        ValueError, "k must have batch and heads (2, 1)"),
    row("k-heads-differ", lambda be: sawa(be, k=kv_(H=2), v=kv_(H=2)),
        ValueError, "k must have batch and heads (2, 1)"),
    row("k-head-dim-differs", lambda be: sawa(be, k=kv_(d=3)), ValueError, "k must have head dim 2 like q"),
    row("v-frames-differ", lambda be: sawa(be, v=kv_(T=7)),
        ValueError, "v must have shape (B, H, T, dv) = (2, 1, 8)"),
    row("zero-head-dim", lambda be: sawa(be, q=q_(d=0), k=kv_(d=0)), ValueError, "head dims must be >= 1"),
    row("zero-value-dim", lambda be: sawa(be, v=kv_(d=0)), ValueError, "head dims must be >= 1"),
    # --- options
    row("window-0", lambda be: sawa(be, window=0), ValueError, "window must be >= 1, got 0"),
    row("window-negative", lambda be: sawa(be, window=-2), ValueError, "window must be >= 1, got -2"),
    row("window-float", lambda be: sawa(be, window=2.0), TypeError, "window must be an int, got float"),
    row("window-bool", lambda be: sawa(be, window=True), TypeError, "window must be an int, got bool"),
    row("window-tensor", lambda be: sawa(be, window=torch.tensor(2)),
        TypeError, "window must be an int, got Tensor"),
    row("window-odd-with-levels", lambda be: sawa(be, window=3, levels=1), ValueError,
        "window must be even when levels > 0"),
    row("levels-3", lambda be: sawa(be, levels=3), ValueError, "levels must be 0, 1 or 2, got 3"),
    row("levels-negative", lambda be: sawa(be, levels=-1), ValueError, "levels must be >= 0, got -1"),
    row("hop-0", lambda be: sawa(be, hop=0), ValueError, "hop must be >= 1, got 0"),
    row("hop-str", lambda be: sawa(be, hop="2"), TypeError, "hop must be an int, got str"),
    row("normalize-unknown", lambda be: sawa(be, normalize="softmax"), ValueError,
        "normalize must be one of ('segment', 'joint'), got 'softmax'"),
    row("normalize-none", lambda be: sawa(be, normalize=None), ValueError, "normalize must be one of"),
    row("scale-nan", lambda be: sawa(be, scale=NAN), ValueError, "scale must be finite, got nan"),
    row("scale-inf", lambda be: sawa(be, scale=-INF), ValueError, "scale must be finite, got -inf"),
    row("scale-str", lambda be: sawa(be, scale="0.5"), TypeError, "scale must be a float, got str"),
    # --- lengths, starts, forced levels: values checked before any kernel
    row("q_lens-shape", lambda be: sawa(be, q_lens=torch.tensor([3])),
        ValueError, "q_lens must have shape (2,), got (1,)"),
    row("q_lens-2d", lambda be: sawa(be, q_lens=[[3, 3]]),
        ValueError, "q_lens must have shape (2,), got (1, 2)"),
    row("q_lens-float", lambda be: sawa(be, q_lens=torch.tensor([3.0, 2.0])), TypeError,
        "q_lens must have an integer dtype, got torch.float32"),
    row("q_lens-bool", lambda be: sawa(be, q_lens=torch.tensor([True, True])), TypeError,
        "q_lens must have an integer dtype, got torch.bool"),
    row("q_lens-str", lambda be: sawa(be, q_lens="ab"),
        TypeError, "q_lens must be an integer tensor of shape (2,)"),
    row("q_lens-past-L", lambda be: sawa(be, q_lens=[4, 3]),
        ValueError, "q_lens must lie in [0, 3], got values in [3, 4]"),
    row("q_lens-negative", lambda be: sawa(be, q_lens=[-1, 3]), ValueError, "q_lens must lie in [0, 3]"),
    row("k_lens-past-T", lambda be: sawa(be, k_lens=torch.tensor([9, 8])), ValueError,
        "k_lens must lie in [0, 8], got values in [8, 9]"),
    row("k_lens-huge", lambda be: sawa(be, k_lens=[2**62, 1]), ValueError, "k_lens must lie in [0, 8]"),
    row("k_lens-int32-negative", lambda be: sawa(be, k_lens=torch.tensor([-5, 1], dtype=torch.int32)),
        ValueError,
        "k_lens must lie in [0, 8], got values in [-5, 1]"),
    row("starts-shape", lambda be: sawa(be, window_starts=torch.zeros(2, 2, dtype=torch.long)), ValueError,
        "window_starts must have shape (2, 3), got (2, 2)"),
    row("starts-float", lambda be: sawa(be, window_starts=torch.zeros(2, 3)), TypeError,
        "window_starts must have an integer dtype"),
    row("starts-negative", lambda be: sawa(be, window_starts=[[0, -1, 2], [0, 1, 2]]), ValueError,
        "window_starts must be >= 0 for valid queries, got minimum -1"),
    row("starts-decreasing", lambda be: sawa(be, window_starts=[[0, 4, 2], [0, 1, 2]]), ValueError,
        "window_starts must be non-decreasing over the valid queries"),
    row("starts-decreasing-within-q_lens",
        lambda be: sawa(be, window_starts=[[3, 2, 9], [0, 1, 2]], q_lens=[2, 3]),
        ValueError, "window_starts must be non-decreasing"),
    row("force_level-past-levels", lambda be: sawa(be, levels=1, force_level=torch.full((2, 1, 3), 2)),
        ValueError,
        "force_level must lie in [0, 1], got values in [2, 2]"),
    row("force_level-negative", lambda be: sawa(be, force_level=torch.full((2, 1, 3), -1)), ValueError,
        "force_level must lie in [0, 2]"),
    row("force_level-shape", lambda be: sawa(be, force_level=torch.zeros(2, 3, dtype=torch.long)), ValueError,
        "force_level must have shape (2, 1, 3)"),
    # --- NaN/Inf with MFDR_KERNELS_CHECK_FINITE=1 (by default they propagate, as in PyTorch)
    row("q-nan-checked", lambda be: sawa(be, q=nan_at(q_(), 1, 0, 2, 1)), ValueError,
        "q contains NaN or Inf (MFDR_KERNELS_CHECK_FINITE=1)", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("k-inf-checked", lambda be: sawa(be, k=nan_at(kv_(), 0, 0, 7, 0, value=INF)), ValueError,
        "k contains NaN or Inf", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("v-nan-in-padding-checked", lambda be: sawa(be, v=nan_at(kv_(), 0, 0, 7, 1), k_lens=[4, 8]),
        ValueError,
        "v contains NaN or Inf", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    # --- backends
    row("backend-unknown", lambda be: sawa("cuda"),
        ValueError, "backend= must be one of ('triton', 'cpp', 'torch'"),
    row("backend-not-a-str", lambda be: sawa(3),
        TypeError, "backend= must be a backend name (str) or None, got int"),
    row("env-backend-unknown", lambda be: sawa(None), ValueError, "MFDR_KERNELS_BACKEND must be one of",
        env={"MFDR_KERNELS_BACKEND": "fastest"}),
    row("cpp-refuses-float16", lambda be: sawa("cpp", q=q_(dtype=torch.float16), k=kv_(dtype=torch.float16),
                                               v=kv_(dtype=torch.float16)),
        RuntimeError, "backend 'cpp' (backend=) cannot run: the cpp backend takes float32 or float64"),
    row("triton-refuses-float16-on-cpu",
        lambda be: sawa("triton", q=q_(dtype=torch.float16), k=kv_(dtype=torch.float16),
                        v=kv_(dtype=torch.float16)),
        RuntimeError, "backend 'triton' (backend=) cannot run"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, exc, fragment, env", SAWA_BAD)
def test_sawa_bad_input(call, exc, fragment, env, backend, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call(backend)

def overlapping(B, H, T, d):
    """A (B, H, T, d) view whose frames overlap in memory: frame t is base[t : t + d]."""
    def view(base):
        return base.as_strided((B, H, T, d), (0, 0, 1, 1))
    return leaf((T + d,), view)


SAWA_OK = [  # name, (q, k, v) as (leaf, input) pairs, keyword arguments
    ("expanded-q-over-batch", lambda: (leaf((1, 1, 3, 2), lambda b: b.expand(2, 1, 3, 2)), leaf((2, 1, 8, 2)),
                                       leaf((2, 1, 8, 2))), {}),
    ("expanded-kv-over-heads",
     lambda: (leaf((2, 2, 3, 2)), leaf((2, 1, 8, 2), lambda b: b.expand(2, 2, 8, 2)),
              leaf((2, 1, 8, 2), lambda b: b.expand(2, 2, 8, 2))), {}),
    ("stride-0-frames-in-v", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)),
                                      leaf((2, 1, 1, 2), lambda b: b.expand(2, 1, 8, 2))), {}),
    ("stride-0-frames-in-k-fixed-window",  # equal keys: every weight ties with the mean, so no levels
     lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 1, 2), lambda b: b.expand(2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"levels": 0}),
    ("overlapping-frames-in-k", lambda: (leaf((2, 1, 3, 2)), overlapping(2, 1, 8, 2), leaf((2, 1, 8, 2))),
     {}),
    ("transposed-v",
     lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 2, 8), lambda b: b.transpose(-1, -2))), {}),
    ("heads-and-queries-swapped-q",
     lambda: (leaf((2, 3, 1, 2), lambda b: b.transpose(1, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))), {}),
    ("empty-batch", lambda: (leaf((0, 1, 3, 2)), leaf((0, 1, 8, 2)), leaf((0, 1, 8, 2))), {}),
    ("no-heads", lambda: (leaf((2, 0, 3, 2)), leaf((2, 0, 8, 2)), leaf((2, 0, 8, 2))), {}),
    ("no-queries", lambda: (leaf((2, 1, 0, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))), {}),
    ("no-frames", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 0, 2)), leaf((2, 1, 0, 2))), {}),
    ("all-lengths-zero", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"q_lens": [0, 0], "k_lens": [0, 0]}),
    ("window-2**40", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))), {"window": 2**40}),
    ("window-2**31-forced-level-2", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"window": 2**31, "force_level": torch.full((2, 1, 3), 2), "window_starts": [[0, 3, 5], [1, 2, 8]]}),
    ("window-2**31-joint-fixed", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"window": 2**31 + 1, "levels": 0, "normalize": "joint"}),
    ("hop-2**40", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))), {"hop": 2**40}),
    ("starts-2**40", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"window_starts": [[0, 2**40, 2**40], [7, 8, 2**40]]}),
    ("padded-starts-anything", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"window_starts": [[2, -9, 0], [0, 1, 2]], "q_lens": [1, 3]}),
    ("int32-lengths-as-lists", lambda: (leaf((2, 1, 3, 2)), leaf((2, 1, 8, 2)), leaf((2, 1, 8, 2))),
     {"q_lens": torch.tensor([2, 3], dtype=torch.int32), "k_lens": [5, 8],
      "window_starts": torch.tensor([[0, 1, 1], [0, 3, 6]], dtype=torch.uint8)}),
]


def sawa_truth(q, k, v, *, window=2, hop=None, levels=2, normalize="segment", q_lens=None, k_lens=None,
               window_starts=None, force_level=None):
    """The reference loop on the raw arguments (no clamping, no clipping of starts)."""
    B, _, L, d = q.shape
    T = k.shape[2]
    hop = max(1, window // 2) if hop is None else hop
    if window_starts is None:
        starts = torch.tensor([[i * hop for i in range(L)]] * B, dtype=torch.int64).reshape(B, L)
    else:
        starts = torch.as_tensor(window_starts).long()
    lens = lambda x, n: torch.full((B,), n) if x is None else torch.as_tensor(x).long()  # noqa: E731
    return sawa_reference(q, k, v, window=window, levels=levels, joint=normalize == "joint",
                          scale=1 / math.sqrt(d), q_lens=lens(q_lens, L), k_lens=lens(k_lens, T),
                          starts=starts, force_level=force_level)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, kwargs", [pytest.param(b, kw, id=n) for n, b, kw in SAWA_OK])
def test_sawa_edge_input_matches_reference(build, kwargs, backend):
    leaves, inputs = zip(*build(), strict=True)
    out, level = sliding_adaptive_window_attention(*inputs, backend=backend, return_level=True,
                                                   **{"window": 2, **kwargs})
    ref, ref_level = sawa_truth(*inputs, **kwargs)
    torch.testing.assert_close(out, ref)
    assert torch.equal(level, ref_level)
    weight = torch.randn_like(out)
    grads = torch.autograd.grad((out * weight).sum(), leaves, allow_unused=True)
    ref_grads = torch.autograd.grad((ref * weight).sum(), leaves, allow_unused=True)
    for g, r, x in zip(grads, ref_grads, leaves, strict=True):
        g = torch.zeros_like(x) if g is None else g
        torch.testing.assert_close(g, torch.zeros_like(x) if r is None else r)


# ====================================================================== SAWA attention map
def amap(**kw):
    kw.setdefault("window", 2)
    return sawa_attention_map(kw.pop("q", q_()), kw.pop("k", kv_()), **kw)


MAP_BAD = [
    row("k-3d", lambda: amap(k=torch.randn(2, 8, 2, dtype=F64)), ValueError, "k must be 4-D"),
    row("k-dtype-differs", lambda: amap(k=kv_(dtype=torch.float32)), TypeError, "k must have the dtype of q"),
    row("window-0", lambda: amap(window=0), ValueError, "window must be >= 1"),
    row("levels-3", lambda: amap(levels=3), ValueError, "levels must be 0, 1 or 2"),
    row("k_lens-past-T", lambda: amap(k_lens=[9, 1]), ValueError, "k_lens must lie in [0, 8]"),
    row("starts-negative", lambda: amap(window_starts=[[-3, 0, 0], [0, 0, 0]]), ValueError,
        "window_starts must be >= 0 for valid queries"),
    row("q-nan-checked", lambda: amap(q=nan_at(q_(), 0, 0, 0, 0)), ValueError, "q contains NaN or Inf",
        env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("backend-is-not-an-option", lambda: amap(backend="cpp"),
        TypeError, "unexpected keyword argument 'backend'"),
]


@pytest.mark.parametrize("call, exc, fragment, env", MAP_BAD)
def test_attention_map_bad_input(call, exc, fragment, env, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call()


def test_attention_map_huge_window_and_hop():
    q, k = q_(), kv_()
    fixed = amap(q=q, k=k, window=18, levels=0)  # ω >= 2T + 2 = 18: the window covers [s, k_len)
    torch.testing.assert_close(amap(q=q, k=k, window=2**40, levels=2), fixed)
    assert torch.equal(amap(q=q, k=k, hop=2**62)[:, :, 1:], torch.zeros(2, 1, 2, 8, dtype=F64))

