"""Bad input at every public entry point, in one table per entry point: each row an input, the exact
exception type and a fragment of its message (which names the argument, the file or the option).

- the ops ``sliding_adaptive_window_attention``, ``sawa_attention_map`` and ``dynamic_frame_conv``, on
  the backends ``cpp``, ``torch`` and ``triton`` (under ``TRITON_INTERPRET=1``, set by conftest.py
  without CUDA, triton runs on CPU tensors: tiny shapes only). Edge inputs that are valid (expanded,
  stride-0, overlapping or transposed memory, empty tensors, huge windows and hops) must not reach a
  kernel unprepared: each has a row whose result and gradients must equal the reference loop's,
  called directly on the raw arguments (not through the op's argument handling);
- the modules ``mfdr.DynamicFrameConv``, ``mfdr.GCPU``, ``mfdr.MFDR.forward`` and ``MFDRConfig``;
- the readers ``mfdr.data.read_iemocap``, ``read_mmsa`` and ``read_manifest`` (files built per row);
- the command line: ``python -m mfdr ...`` in a subprocess exits with status 2 and one error line.

Rows marked ``xfail(strict=True)`` are bugs found here in files owned elsewhere (their reason says the
fix); they turn into failures, to be unmarked, once fixed.
"""

import json
import math
import os
import pickle
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from mfdr import GCPU, MFDR, DynamicFrameConv, MFDRConfig
from mfdr.data import DataError, read_iemocap, read_manifest, read_mmsa
from mfdr_kernels import dynamic_frame_conv, sawa_attention_map, sliding_adaptive_window_attention
from mfdr_kernels.dfc.reference import dfc_reference
from mfdr_kernels.sawa.reference import sawa_reference

ROOT = Path(__file__).resolve().parents[1]
# triton runs here on CPU tensors, under the interpreter (conftest.py sets TRITON_INTERPRET=1 without CUDA)
TRITON_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = ["cpp", "torch", pytest.param("triton", marks=pytest.mark.skipif(
    not TRITON_ON_CPU, reason="the rows use CPU tensors: triton needs TRITON_INTERPRET=1 for them"))]
F64 = torch.float64
NAN, INF = float("nan"), float("inf")
DFC_OWNED = "mfdr_kernels/dfc/op.py (owned elsewhere): "
DFC_MODULE_OWNED = "mfdr/dfc.py (owned elsewhere): "


def row(name, call, exc, fragment, env=None, xfail=None, xfail_on=()):
    """A table row: ``call`` raises ``exc`` with ``fragment`` in its message (with ``env`` set).
    ``xfail``: the reason of a known, unfixed bug (strict), on every backend or those of ``xfail_on``."""
    return pytest.param(call, exc, fragment, env or {}, (xfail, tuple(xfail_on)), id=name)


def raises(exc, fragment):
    return pytest.raises(exc, match=re.escape(fragment))


def known_bug(request, backend, xfail) -> None:
    reason, on = xfail
    if reason and (not on or backend in on):
        request.node.add_marker(pytest.mark.xfail(strict=True, reason=reason))


# ====================================================================== SAWA: inputs
def q_(B=2, H=1, L=3, d=2, dtype=F64):
    return torch.randn(B, H, L, d, dtype=dtype)


def kv_(B=2, H=1, T=8, d=2, dtype=F64):
    return torch.randn(B, H, T, d, dtype=dtype)


def sawa(be, q=None, k=None, v=None, **kw):
    kw.setdefault("window", 2)
    return sliding_adaptive_window_attention(q_() if q is None else q, kv_() if k is None else k,
                                             kv_() if v is None else v, backend=be, **kw)


def nan_at(x, *index, value=NAN):
    x = x.clone()
    x[index] = value
    return x


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
@pytest.mark.parametrize("call, exc, fragment, env, xfail", SAWA_BAD)
def test_sawa_bad_input(call, exc, fragment, env, xfail, backend, monkeypatch, request):
    known_bug(request, backend, xfail)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call(backend)


def leaf(shape, expand=None, dtype=F64):
    """A leaf tensor that takes gradients, and the input built from it (``expand(base)``)."""
    base = torch.randn(*shape, dtype=dtype, requires_grad=True)
    return base, (base if expand is None else expand(base))


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


@pytest.mark.parametrize("call, exc, fragment, env, xfail", MAP_BAD)
def test_attention_map_bad_input(call, exc, fragment, env, xfail, monkeypatch, request):
    known_bug(request, None, xfail)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call()


def test_attention_map_huge_window_and_hop():
    q, k = q_(), kv_()
    fixed = amap(q=q, k=k, window=18, levels=0)  # ω >= 2T + 2 = 18: the window covers [s, k_len)
    torch.testing.assert_close(amap(q=q, k=k, window=2**40, levels=2), fixed)
    assert torch.equal(amap(q=q, k=k, hop=2**62)[:, :, 1:], torch.zeros(2, 1, 2, 8, dtype=F64))


# ====================================================================== DFC op
def x_(B=2, L=7, C=3, dtype=F64):
    return torch.randn(B, L, C, dtype=dtype)


def kernel_(N=3, frame=3, C=3, dtype=F64):  # N = (7 - 3) // 2 + 1 = 3 for the defaults
    return torch.randn(N, frame, C, dtype=dtype)


def dfc(be, x=None, kernel=None, **kw):
    return dynamic_frame_conv(x_() if x is None else x, kernel_() if kernel is None else kernel, backend=be,
                              **kw)


DFC_BAD = [
    row("x-not-a-tensor", lambda be: dfc(be, x=[[1.0]]), TypeError, "x must be a torch.Tensor, got list"),
    row("x-2d", lambda be: dfc(be, x=torch.randn(7, 3, dtype=F64)),
        ValueError, "x must be 3-D, got shape (7, 3)"),
    row("x-int", lambda be: dfc(be, x=torch.ones(2, 7, 3, dtype=torch.long)), TypeError,
        "x must have a floating dtype, got torch.int64"),
    row("kernel-5d", lambda be: dfc(be, kernel=torch.randn(1, 2, 3, 3, 3, dtype=F64)), ValueError,
        "kernel must be 3-D or 4-D"),
    row("kernel-dtype-differs", lambda be: dfc(be, kernel=kernel_(dtype=torch.float32)), TypeError,
        "kernel must have the dtype of x (torch.float64), got torch.float32"),
    row("kernel-device-differs", lambda be: dfc(be, kernel=torch.empty(3, 3, 3, dtype=F64, device="meta")),
        ValueError, "kernel must be on the device of x"),
    row("bias-not-a-tensor", lambda be: dfc(be, bias=[0.0, 0.0, 0.0]),
        TypeError, "bias must be a torch.Tensor"),
    row("bias-int", lambda be: dfc(be, bias=torch.zeros(3, dtype=torch.long)), TypeError,
        "bias must have a floating dtype"),
    row("bias-shape", lambda be: dfc(be, bias=torch.zeros(4, dtype=F64)), ValueError,
        "bias must have shape (C,) = (3,) or (N, C) = (3, 3), got (4,)"),
    row("x-shorter-than-frame", lambda be: dfc(be, x=x_(L=2), kernel=kernel_(N=1)), ValueError,
        "x must have at least frame = 3 rows"),
    row("x-empty-sequence", lambda be: dfc(be, x=x_(L=0), kernel=kernel_(N=1)), ValueError,
        "x must have at least frame = 3 rows"),
    row("kernel-positions", lambda be: dfc(be, kernel=kernel_(N=4)), ValueError,
        "kernel must have shape (N, frame, C) = (3, 3, 3)"),
    row("kernel-channels", lambda be: dfc(be, kernel=kernel_(C=4)),
        ValueError, "kernel must have C = 3 channels"),
    row("kernel-per-sample-batch", lambda be: dfc(be, kernel=torch.randn(3, 3, 3, 3, dtype=F64)), ValueError,
        "kernel must have shape (B, N, frame, C) = (2, 3, 3, 3)"),
    row("frame-0", lambda be: dfc(be, frame=0), ValueError, "frame must be >= 1, got 0"),
    row("frame-bool", lambda be: dfc(be, frame=True), TypeError, "frame must be an int, got bool"),
    row("frame-2**40", lambda be: dfc(be, frame=2**40),
        ValueError, "x must have at least frame = 1099511627776 rows"),
    row("hop-0", lambda be: dfc(be, hop=0), ValueError, "hop must be >= 1, got 0"),
    row("hop-float", lambda be: dfc(be, hop=2.0), TypeError, "hop must be an int, got float"),
    row("x-nan-checked", lambda be: dfc(be, x=nan_at(x_(), 0, 1, 2)), ValueError, "x contains NaN or Inf",
        env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("kernel-inf-checked", lambda be: dfc(be, kernel=nan_at(kernel_(), 2, 0, 0, value=INF)), ValueError,
        "kernel contains NaN or Inf", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("bias-nan-checked", lambda be: dfc(be, bias=torch.full((3,), NAN, dtype=F64)), ValueError,
        "bias contains NaN or Inf", env={"MFDR_KERNELS_CHECK_FINITE": "1"}),
    row("backend-unknown", lambda be: dfc("gpu"), ValueError, "dynamic_frame_conv: backend= must be one of"),
    row("backend-not-a-str", lambda be: dfc(1),
        TypeError, "backend= must be a backend name (str) or None, got int"),
    row("cpp-refuses-float16",
        lambda be: dfc("cpp", x=x_(dtype=torch.float16), kernel=kernel_(dtype=torch.float16)),
        RuntimeError, "backend 'cpp' (backend=) cannot run: the cpp backend takes float32 or float64"),
    row("triton-refuses-float16-on-cpu", lambda be: dfc("triton", x=x_(dtype=torch.float16),
                                                        kernel=kernel_(dtype=torch.float16)),
        RuntimeError, "backend 'triton' (backend=) cannot run"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, exc, fragment, env, xfail", DFC_BAD)
def test_dfc_bad_input(call, exc, fragment, env, xfail, backend, monkeypatch, request):
    known_bug(request, backend, xfail)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call(backend)


# name, () -> ((x leaf, x), (kernel leaf, kernel), None or (bias leaf, bias)), kwargs, backends with a bug
DFC_OK = [
    ("expanded-x", lambda: (leaf((1, 7, 3), lambda b: b.expand(2, 7, 3)), leaf((3, 3, 3)), None), {}, ()),
    ("stride-0-rows-in-x", lambda: (leaf((2, 1, 3), lambda b: b.expand(2, 7, 3)), leaf((3, 3, 3)), None),
     {}, ()),
    ("stride-0-kernel", lambda: (leaf((2, 7, 3)), leaf((1, 1, 3), lambda b: b.expand(3, 3, 3)), None),
     {}, ()),
    ("per-sample-kernel-expanded", lambda: (leaf((2, 7, 3)), leaf((3, 3, 3), lambda b: b.expand(2, 3, 3, 3)),
                                            leaf((3,))), {}, ()),
    ("transposed-x", lambda: (leaf((2, 3, 7), lambda b: b.transpose(1, 2)), leaf((3, 3, 3)), None), {}, ()),
    ("overlapping-rows-in-x",
     lambda: (leaf((9,), lambda b: b.as_strided((2, 7, 3), (0, 1, 1))), leaf((3, 3, 3)), None), {}, ()),
    ("bias-expanded-per-position",
     lambda: (leaf((2, 7, 3)), leaf((3, 3, 3)), leaf((3,), lambda b: b.expand(3, 3))), {}, ()),
    ("empty-batch", lambda: (leaf((0, 7, 3)), leaf((3, 3, 3)), leaf((3,))), {}, ()),
    ("no-channels", lambda: (leaf((2, 7, 0)), leaf((3, 3, 0)), None), {}, ()),
    ("hop-2**31", lambda: (leaf((2, 7, 3)), leaf((1, 3, 3)), None), {"hop": 2**31}, ()),
    ("hop-2**63", lambda: (leaf((2, 7, 3)), leaf((1, 3, 3)), None), {"hop": 2**63}, ()),
]
DFC_HOP_BUG = (DFC_OWNED + "a hop past L - frame reaches the kernels as is (int32 overflow in Triton; "
               "int64 schema error past 2**63); clamp hop to L - frame + 1 in _check (same N = 1)")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, kwargs, buggy", [pytest.param(b, kw, bug, id=n) for n, b, kw, bug in DFC_OK])
def test_dfc_edge_input_matches_reference(build, kwargs, buggy, backend, request):
    known_bug(request, backend, (DFC_HOP_BUG if buggy else None, buggy))
    xp, kp, bp = build()
    leaves = [p[0] for p in (xp, kp, bp) if p is not None]
    x, kernel, bias = xp[1], kp[1], None if bp is None else bp[1]
    frame, hop = 3, kwargs.get("hop", 2)
    y = dynamic_frame_conv(x, kernel, frame=frame, hop=hop, bias=bias, backend=backend)
    ref = dfc_reference(x, kernel, bias, frame=frame, hop=hop)
    torch.testing.assert_close(y, ref)
    weight = torch.randn_like(y)
    grads = torch.autograd.grad((y * weight).sum(), leaves, allow_unused=True)
    if ref.numel():
        ref_grads = torch.autograd.grad((ref * weight).sum(), leaves, allow_unused=True)
    else:  # nothing to differentiate: every gradient is 0
        ref_grads = [torch.zeros_like(t) for t in leaves]
    for g, r, t in zip(grads, ref_grads, leaves, strict=True):
        zero = torch.zeros_like(t)
        torch.testing.assert_close(zero if g is None else g, zero if r is None else r)


# ====================================================================== mfdr.DynamicFrameConv
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


@pytest.mark.parametrize("call, exc, fragment, env, xfail", DFC_MODULE_BAD)
def test_dfc_module_bad_input(call, exc, fragment, env, xfail, request):
    known_bug(request, None, xfail)
    with raises(exc, fragment):
        call()


# ====================================================================== mfdr.GCPU
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


@pytest.mark.parametrize("call, exc, fragment, env, xfail", GCPU_BAD)
def test_gcpu_bad_input(call, exc, fragment, env, xfail, request):
    known_bug(request, None, xfail)
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


# ====================================================================== mfdr.MFDR.forward
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


@pytest.mark.parametrize("call, exc, fragment, env, xfail", MODEL_BAD)
def test_model_bad_input(call, exc, fragment, env, xfail, monkeypatch, request):
    known_bug(request, None, xfail)
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


# ====================================================================== MFDRConfig
def config_file(tmp, name, text):
    path = tmp / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path


CONFIG_BAD = [
    row("int-field-0", lambda tmp: MFDRConfig(audio_dim=0),
        ValueError, "MFDRConfig.audio_dim must be >= 1, got 0"),
    row("int-field-bool", lambda tmp: MFDRConfig(d_model=True),
        TypeError, "MFDRConfig.d_model must be int, got bool"),
    row("int-field-str", lambda tmp: MFDRConfig(text_len="50"), TypeError,
        "MFDRConfig.text_len must be int, got str '50'"),
    row("unknown-field", lambda tmp: MFDRConfig(d_modle=8),
        TypeError, "unexpected keyword argument 'd_modle'"),
    row("dfc_hops-empty", lambda tmp: MFDRConfig(dfc_hops=()),
        ValueError, "MFDRConfig.dfc_hops must be a non-empty"),
    row("dfc_hops-0", lambda tmp: MFDRConfig(dfc_hops=(2, 0)),
        ValueError, "dfc_hops must be a non-empty sequence of ints >= 1"),
    row("dfc_hops-int", lambda tmp: MFDRConfig(dfc_hops=2),
        TypeError, "MFDRConfig.dfc_hops must be tuple[int, ...], got int"),
    row("dfc_hops-floats", lambda tmp: MFDRConfig(dfc_hops=(2.0, 3)), TypeError,
        "MFDRConfig.dfc_hops must be tuple[int, ...], got tuple (2.0, 3)"),
    row("dropout-nan", lambda tmp: MFDRConfig(dropout=NAN),
        ValueError, "MFDRConfig.dropout must lie in [0, 1), got nan"),
    row("dropout-str", lambda tmp: MFDRConfig(dropout="0.1"),
        TypeError, "MFDRConfig.dropout must be float, got str"),
    row("levels-3", lambda tmp: MFDRConfig(levels=3),
        ValueError, "MFDRConfig.levels must be one of (0, 1, 2), got 3"),
    row("window-odd", lambda tmp: MFDRConfig(window=5),
        ValueError, "MFDRConfig.window must be even when levels > 0"),
    row("heads-not-dividing", lambda tmp: MFDRConfig(heads=3), ValueError,
        "MFDRConfig.d_model (256) must be divisible by heads (3)"),
    row("last-window-past-audio", lambda tmp: MFDRConfig(hop=6),
        ValueError, "the last word's (49 * 6) is past audio_len"),
    row("text-too-short-to-pool", lambda tmp: MFDRConfig(text_len=4, align="stretch"), ValueError,
        "MFDRConfig: pooling layer 1 gets a sequence of 1 < dfc_frame (3)"),
    row("choice-unknown", lambda tmp: MFDRConfig(context="lstm"), ValueError,
        "MFDRConfig.context must be one of ('gcpu', 'none', 'gru', 'mgru'), got 'lstm'"),
    row("backend-unknown", lambda tmp: MFDRConfig(backend="gpu"),
        ValueError, "MFDRConfig.backend must be one of"),
    row("from_dict-list", lambda tmp: MFDRConfig.from_dict([1]),
        TypeError, "MFDRConfig.from_dict takes a dict, got list"),
    row("from_dict-unknown", lambda tmp: MFDRConfig.from_dict({"d_modle": 8}), ValueError,
        "MFDRConfig: unknown field(s) ['d_modle']"),
    row("replace-unknown", lambda tmp: MFDRConfig().replace(foo=1),
        ValueError, "MFDRConfig: unknown field(s) ['foo']"),
    row("ablation-unknown", lambda tmp: MFDRConfig.ablation("w=20"), ValueError, "ablation must be one of"),
    row("load-missing", lambda tmp: MFDRConfig.load(tmp / "none.json"), FileNotFoundError,
        "MFDRConfig.load: config file"),
    row("load-suffix", lambda tmp: MFDRConfig.load(config_file(tmp, "c.txt", "{}")), ValueError,
        "MFDRConfig.load: path must end in .json, .yaml or .yml"),
    row("load-bad-json", lambda tmp: MFDRConfig.load(config_file(tmp, "c.json", "{d_model: 4")), ValueError,
        "c.json is not valid JSON"),
    row("load-bad-yaml", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yaml", "d_model: [4\n")), ValueError,
        "c.yaml is not valid YAML"),
    row("load-binary", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yml", b"\xff\xfe\x00")), ValueError,
        "c.yml is not UTF-8 text"),
    row("load-list", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yaml", "- 1\n")), TypeError,
        "c.yaml: MFDRConfig.from_dict takes a dict, got list"),
    row("load-bad-value", lambda tmp: MFDRConfig.load(config_file(tmp, "c.json", '{"heads": 0}')), ValueError,
        "c.json: MFDRConfig.heads must be >= 1, got 0"),
]


@pytest.mark.parametrize("call, exc, fragment, env, xfail", CONFIG_BAD)
def test_config_bad_input(call, exc, fragment, env, xfail, tmp_path, request):
    known_bug(request, None, xfail)
    with raises(exc, fragment):
        call(tmp_path)


# ====================================================================== read_iemocap
UTT = "Ses01F_impro01_F000"


def iemocap(tmp, *, label="neu", utt=UTT, said=UTT, text="Excuse me.", transcript=True, wav=True) -> Path:
    """A one-utterance IEMOCAP tree: Session1's evaluation line for ``utt``, the transcript line of ``said``
    and the wav of ``utt``."""
    session = tmp / "IEMOCAP" / "Session1"
    (session / "dialog" / "EmoEvaluation").mkdir(parents=True)
    (session / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(
        f"% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        f"[6.2901 - 8.2357]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\nC-E1:\tNeutral;\t()\n")
    if transcript:
        (session / "dialog" / "transcriptions").mkdir(parents=True)
        (session / "dialog" / "transcriptions" / "Ses01F_impro01.txt").write_text(
            f"{said} [006.2901-008.2357]: {text}\nM: [BREATHING]\n")
    if wav:
        (session / "sentences" / "wav" / "Ses01F_impro01").mkdir(parents=True)
        (session / "sentences" / "wav" / "Ses01F_impro01" / f"{utt}.wav").write_bytes(b"RIFF")
    return tmp / "IEMOCAP"


def mkdirs(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


IEMOCAP_BAD = [
    row("root-none", lambda tmp: read_iemocap(None),
        TypeError, "root must be a path (str or os.PathLike), got NoneType"),
    row("root-missing", lambda tmp: read_iemocap(tmp / "nowhere"), DataError, "nowhere is not a folder"),
    row("root-is-a-file", lambda tmp: read_iemocap(config_file(tmp, "IEMOCAP.tar", b"x")), DataError,
        "IEMOCAP.tar is not a folder"),
    row("no-session-folders", lambda tmp: read_iemocap(tmp),
        DataError, "no Session1..Session5 folders found"),
    row("on_error-unknown", lambda tmp: read_iemocap(iemocap(tmp), on_error="ignore"), ValueError,
        "on_error must be one of ('raise', 'skip'), got 'ignore'"),
    row("sessions-an-int", lambda tmp: read_iemocap(iemocap(tmp), sessions=1), TypeError,
        "sessions must be a list of session numbers (e.g. [1, 2]), got int 1"),
    row("sessions-names", lambda tmp: read_iemocap(iemocap(tmp), sessions=["Session1"]), ValueError,
        "sessions must be session numbers >= 1 (ints), got 'Session1'"),
    row("sessions-0", lambda tmp: read_iemocap(iemocap(tmp), sessions=[0]), ValueError,
        "sessions must be session numbers >= 1"),
    row("session-folder-missing", lambda tmp: read_iemocap(iemocap(tmp), sessions=[1, 2]), DataError,
        "Session2 does not exist"),
    row("no-evaluation-folder", lambda tmp: read_iemocap(mkdirs(tmp / "R" / "Session1").parent), DataError,
        "EmoEvaluation does not exist"),
    row("no-evaluation-files",
        lambda tmp: read_iemocap(mkdirs(tmp / "R" / "Session1" / "dialog" / "EmoEvaluation").parents[2]),
        DataError, "no evaluation files (*.txt) in"),
    row("no-transcription-file", lambda tmp: read_iemocap(iemocap(tmp, transcript=False)), DataError,
        "Ses01F_impro01.txt does not exist (needed by"),
    row("unknown-label", lambda tmp: read_iemocap(iemocap(tmp, label="joy")), DataError,
        "Ses01F_impro01.txt, line 3: unknown label 'joy' for Ses01F_impro01_F000"),
    row("not-an-utterance-id", lambda tmp: read_iemocap(iemocap(tmp, utt="SesXXF_impro01_F000",
                                                                said="SesXXF_impro01_F000")), DataError,
        "line 3: not an IEMOCAP utterance id: 'SesXXF_impro01_F000'"),
    row("no-transcript-line", lambda tmp: read_iemocap(iemocap(tmp, said="Ses01F_impro01_F001")), DataError,
        "Ses01F_impro01.txt: no transcript line for Ses01F_impro01_F000"),
    row("empty-transcript", lambda tmp: read_iemocap(iemocap(tmp, text="   ")), DataError,
        "Ses01F_impro01.txt: empty transcript for Ses01F_impro01_F000"),
    row("wav-missing", lambda tmp: read_iemocap(iemocap(tmp, wav=False)), DataError,
        "IEMOCAP: wav file "),
]


@pytest.mark.parametrize("call, exc, fragment, env, xfail", IEMOCAP_BAD)
def test_read_iemocap_bad_input(call, exc, fragment, env, xfail, tmp_path, request):
    known_bug(request, None, xfail)
    with raises(exc, fragment):
        call(tmp_path)


# ====================================================================== read_mmsa
def split_(n=3, L=4, T=5, **changes):
    rng = np.random.default_rng(0)
    d = {"id": [f"v{i}" for i in range(n)], "text": rng.normal(size=(n, L, 3)),
         "audio": rng.normal(size=(n, T, 2)), "regression_labels": np.zeros(n)}
    d.update(changes)
    return d


def mmsa(tmp, data=None, name="mosi.pkl", **train) -> Path:
    """A pickle with train/valid/test splits; ``train`` changes the train split's keys (None drops one)."""
    if data is None:
        t = {k: v for k, v in split_(**{k: v for k, v in train.items() if v is not None}).items()
             if train.get(k, 0) is not None}
        data = {"train": t, "valid": split_(), "test": split_()}
    path = tmp / name
    path.write_bytes(pickle.dumps(data))
    return path


MMSA_BAD = [
    row("path-none", lambda tmp: read_mmsa(None),
        TypeError, "path must be a path (str or os.PathLike), got NoneType"),
    row("missing", lambda tmp: read_mmsa(tmp / "mosi.pkl"), DataError, "mosi.pkl does not exist"),
    row("a-folder", lambda tmp: read_mmsa(mkdirs(tmp / "mosi.pkl")), DataError, "mosi.pkl does not exist"),
    row("not-a-pickle", lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", b"not a pickle")), DataError,
        "mosi.pkl cannot be read: invalid load key"),
    row("empty-file", lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", b"")), DataError,
        "mosi.pkl cannot be read: Ran out of input"),
    row("truncated",
        lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", pickle.dumps({"train": split_()})[:40])),
        DataError, "mosi.pkl cannot be read"),
    row("not-a-dict", lambda tmp: read_mmsa(mmsa(tmp, [split_()])),
        DataError, "expected a dict of splits, got list"),
    row("split-missing", lambda tmp: read_mmsa(mmsa(tmp, {"train": split_(), "valid": split_()})), DataError,
        "missing split 'test'; found ['train', 'valid']"),
    row("split-not-a-dict",
        lambda tmp: read_mmsa(mmsa(tmp, {"train": [1], "valid": split_(), "test": split_()})),
        DataError, "mosi.pkl [train]: expected a dict, got list"),
    row("key-missing", lambda tmp: read_mmsa(mmsa(tmp, audio=None)), DataError,
        "[train]: missing key 'audio'; found keys ['id', 'regression_labels', 'text']"),
    row("label-missing", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=None)), DataError,
        "[train]: missing key 'regression_labels'"),
    row("label_key-absent", lambda tmp: read_mmsa(mmsa(tmp), label_key="classification_labels"), DataError,
        "missing key 'classification_labels'"),
    row("audio-2d", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((3, 5)))), DataError,
        "[train]: 'audio' must have 3 dims, got shape (3, 5)"),
    row("audio-ragged",
        lambda tmp: read_mmsa(mmsa(tmp, audio=[np.zeros((5, 2)), np.zeros((4, 2)), np.zeros((5, 2))])),
        DataError, "[train]: 'audio' is not a rectangular array"),
    row("audio-strings", lambda tmp: read_mmsa(mmsa(tmp, audio=np.full((3, 5, 2), "x"))), DataError,
        "[train]: 'audio' must hold numbers, got dtype <U1"),
    row("audio-no-frames", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((3, 0, 2)))), DataError,
        "[train]: 'audio' has no rows (shape (3, 0, 2))"),
    row("text-no-tokens", lambda tmp: read_mmsa(mmsa(tmp, text=np.zeros((3, 0, 3)))), DataError,
        "[train]: 'text' has no rows"),
    row("audio-count-differs", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((2, 5, 2)))), DataError,
        "[train]: 'audio' has 2 entries, expected 3 (len of 'id')"),
    row("label-count-differs", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=np.zeros(4))), DataError,
        "[train]: 'regression_labels' has 4 entries, expected 3"),
    row("label-strings", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=["pos", "neg", "neu"])), DataError,
        "[train]: 'regression_labels' must hold numbers"),
    row("label-nan", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=np.array([0.0, NAN, 1.0]))), DataError,
        "[train]: 'regression_labels' holds NaN/Inf for 1 utterance(s), e.g. id 'v1'"),
    row("audio_lengths-count", lambda tmp: read_mmsa(mmsa(tmp, audio_lengths=[5, 5])), DataError,
        "[train]: audio_lengths has 2 entries, expected 3"),
    row("audio_lengths-strings", lambda tmp: read_mmsa(mmsa(tmp, audio_lengths=["a", "b", "c"])), DataError,
        "[train]: 'audio_lengths' must hold numbers"),
    row("id-not-a-sequence", lambda tmp: read_mmsa(mmsa(tmp, id=7)), DataError,
        "[train]: 'id' must be a sequence of ids, got int"),
]


@pytest.mark.parametrize("call, exc, fragment, env, xfail", MMSA_BAD)
def test_read_mmsa_bad_input(call, exc, fragment, env, xfail, tmp_path, request):
    known_bug(request, None, xfail)
    with raises(exc, fragment):
        call(tmp_path)


def test_read_mmsa_edge_input(tmp_path):
    """-inf (COVAREP) and NaN features become 0; one split by name; an empty split is empty."""
    audio = np.ones((3, 5, 2))
    audio[0, 0, 0], audio[1, 1, 1] = -np.inf, np.nan
    data = read_mmsa(mmsa(tmp_path, {"train": split_(audio=audio), "valid": split_(n=0), "test": split_()}),
                     splits="train")
    assert list(data) == ["train"] and np.isfinite(data["train"].audio).all()
    assert len(read_mmsa(tmp_path / "mosi.pkl", splits=["valid"])["valid"]) == 0


# ====================================================================== read_manifest
HEADER = "id,wav,text,label,speaker\n"


def manifest(tmp, text, name="m.csv", wav=True) -> Path:
    if wav:
        (tmp / "a.wav").write_bytes(b"RIFF")
    return config_file(tmp, name, text)


MANIFEST_BAD = [
    row("path-none", lambda tmp: read_manifest(None),
        TypeError, "path must be a path (str or os.PathLike), got NoneType"),
    row("missing", lambda tmp: read_manifest(tmp / "m.csv"), DataError, "m.csv does not exist"),
    row("suffix", lambda tmp: read_manifest(manifest(tmp, HEADER, "m.tsv")), DataError,
        "m.tsv: expected a .csv or .jsonl file, got suffix '.tsv'"),
    row("on_error-unknown", lambda tmp: read_manifest(manifest(tmp, HEADER), on_error="warn"), ValueError,
        "on_error must be one of ('raise', 'skip'), got 'warn'"),
    row("labels-a-string", lambda tmp: read_manifest(manifest(tmp, HEADER), labels="happy"), TypeError,
        "labels must be a collection of label names (e.g. a tuple), got str 'happy'"),
    row("empty-csv", lambda tmp: read_manifest(manifest(tmp, "")), DataError,
        "m.csv: missing columns ['id', 'wav', 'text', 'label', 'speaker']"),
    row("columns-missing", lambda tmp: read_manifest(manifest(tmp, "id,wav\nu1,a.wav\n")), DataError,
        "m.csv: missing columns ['text', 'label', 'speaker']"),
    row("row-short", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hello\n")), DataError,
        "m.csv, line 2: empty or missing ['label', 'speaker']"),
    row("text-empty", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,  ,happy,s1\n")), DataError,
        "m.csv, line 2: empty transcript for id 'u1'"),
    row("label-unknown", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hi,joy,s1\n"),
                                                   labels=("happy", "sad")), DataError,
        "m.csv, line 2: unknown label 'joy' for id 'u1'; expected one of ['happy', 'sad']"),
    row("wav-missing", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,b.wav,hi,happy,s1\n")), DataError,
        "m.csv, line 2: wav file "),
    row("id-duplicate", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hi,happy,s1\n"
                                                                         "u1,a.wav,ho,sad,s1\n")), DataError,
        "m.csv, line 3: duplicate id 'u1' (first on line 2)"),
    row("csv-not-utf8",
        lambda tmp: read_manifest(manifest(tmp, HEADER.encode() + b"u1,a.wav,\xff\xfe,happy,s1\n")),
        DataError, "m.csv: not UTF-8 text"),
    row("jsonl-not-json", lambda tmp: read_manifest(manifest(tmp, '{"id": "u1",\n', "m.jsonl")), DataError,
        "m.jsonl, line 1: not valid JSON"),
    row("jsonl-not-an-object", lambda tmp: read_manifest(manifest(tmp, "[1, 2]\n", "m.jsonl")), DataError,
        "m.jsonl, line 1: expected a JSON object, got list"),
    row("jsonl-wav-a-list", lambda tmp: read_manifest(manifest(tmp, json.dumps(
        {"id": "u1", "wav": ["a.wav"], "text": "hi", "label": "happy", "speaker": "s1"}) + "\n", "m.jsonl")),
        DataError, "m.jsonl, line 1: wav must be a string, got list ['a.wav']"),
    row("jsonl-id-an-object", lambda tmp: read_manifest(manifest(tmp, json.dumps(
        {"id": {"n": 1}, "wav": "a.wav", "text": "hi", "label": "happy", "speaker": "s1"}) + "\n",
        "m.jsonl")),
        DataError, "m.jsonl, line 1: id must be a string, got dict"),
    row("jsonl-not-utf8", lambda tmp: read_manifest(manifest(tmp, b'{"id": "\xff"}\n', "m.jsonl")), DataError,
        "m.jsonl: not UTF-8 text"),
]


@pytest.mark.parametrize("call, exc, fragment, env, xfail", MANIFEST_BAD)
def test_read_manifest_bad_input(call, exc, fragment, env, xfail, tmp_path, request):
    known_bug(request, None, xfail)
    with raises(exc, fragment):
        call(tmp_path)


def test_read_manifest_skips_bad_rows_when_asked(tmp_path):
    path = manifest(tmp_path, HEADER + "u1,a.wav,hi,happy,s1\nu2,b.wav,ho,sad,s1\nu3,a.wav,,sad,s2\n")
    with pytest.warns(UserWarning) as warned:
        records = read_manifest(path, on_error="skip")
    assert [r.id for r in records] == ["u1"] and len(records.skipped) == 2
    assert ["wav file" in str(w.message) for w in warned] == [True, False]


# ====================================================================== the command line
# (name, argv with {d} for a scratch folder, message fragment). Every row exits
# with status 2 and prints exactly one "PROG: error: ..." line, no traceback, and writes nothing
# (no --out folder appears). They run in subprocesses, started together by the fixture below.
CLI_BAD = [
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    ("train-config-missing", ["train", "--config", "{d}/none.yaml"], "none.yaml does not exist"),
    ("train-config-not-yaml", ["train", "--config", "{d}/bad.yaml"],
     "bad.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
    ("train-config-not-utf8", ["train", "--config", "{d}/binary.yaml"], "binary.yaml is not UTF-8 text"),
    ("train-config-a-list", ["train", "--config", "{d}/list.yaml"],
     "list.yaml: a run config must be a mapping of sections, got list"),
    ("train-config-unknown-key", ["train", "--config", "{d}/unknown.yaml"],
     "unknown key(s) ['train.bogus']"),
    ("train-set-without-section", ["train", "--set", "epochs=2"],
     "override 'epochs=2' must look like section.key=value"),
    ("train-set-not-yaml", ["train", "--set", "train.epochs=["],
     "override 'train.epochs=[': the value is not valid YAML"),
    ("train-set-bad-value", ["train", "--set", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    ("train-set-unknown-section", ["train", "--set", "optim.lr=1"], "unknown config section(s) ['optim']"),
    ("train-set-device-unknown", ["train", "--set", "train.device=banana", "--features", "{d}/empty"],
     "train.device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'banana'"),
    ("train-epochs-not-an-int", ["train", "--epochs", "two"], "argument --epochs: must be an int, got 'two'"),
    ("train-threads-0", ["train", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("train-device-unknown", ["train", "--device", "banana"],
     "argument --device: must be a torch device such as cpu, cuda or cuda:1, got 'banana'"),
    ("train-protocol-unknown", ["train", "--protocol", "loso"],
     "argument --protocol: invalid choice: 'loso'"),
    ("train-folds-1", ["train", "--folds", "1"], "argument --folds: must be >= 2, got 1"),
    ("train-stop-after-epoch-0", ["train", "--stop-after-epoch", "0"],
     "argument --stop-after-epoch: must be >= 1, got 0"),
    ("train-no-feature-cache", ["train", "--features", "{d}/empty"], "no feature cache at"),
    ("extract-no-path", ["extract"], "data.path is not set"),
    ("extract-manifest-missing", ["extract", "--path", "{d}/none.csv"], "none.csv does not exist"),
    ("extract-manifest-columns", ["extract", "--path", "{d}/m.csv"],
     "m.csv: missing columns ['text', 'label', 'speaker']"),
    ("extract-iemocap-empty", ["extract", "--dataset", "iemocap", "--path", "{d}/empty"],
     "no Session1..Session5 folders found"),
    ("extract-mmsa", ["extract", "--set", "data.dataset=mmsa"], "MMSA pickles already hold features"),
    ("extract-batch-size-0", ["extract", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("evaluate-missing", ["evaluate", "{d}/none"], "none does not exist"),
    ("evaluate-model-without-features", ["evaluate", "{d}/empty"],
     "evaluating one model needs --features"),
    ("evaluate-not-a-model", ["evaluate", "{d}/empty", "--features", "{d}/empty"],
     "must hold config.json and model.safetensors"),
    ("predict-no-text", ["predict", "{d}/empty", "--wav", "a.wav"],
     "give one --text per --wav (got 1 --wav and 0 --text)"),
    ("predict-no-model", ["predict", "{d}/empty", "--wav", "a.wav", "--text", "hi"],
     "no trained model at"),
    ("bench-batch-0", ["bench", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    ("bench-warmup-negative", ["bench", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    ("demo-utterances-0", ["demo", "--utterances", "0"], "argument --utterances: must be >= 1, got 0"),
]
OUT_FLAG = {"train": "--out", "extract": "--out", "demo": "--out"}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Start every CLI row (three at a time); ``{name: (future, its --out folder or None)}``."""
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.yaml").write_text("model: [1, 2\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00 model")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("train:\n  bogus: 1\n")
    (d / "m.csv").write_text("id,wav\nu1,a.wav\n")
    (d / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFDR_")}
    pool = ThreadPoolExecutor(max_workers=3)
    runs = {}
    for name, argv, _ in CLI_BAD:
        argv = [a.format(d=d) for a in argv]
        out = None
        if argv and argv[0] in OUT_FLAG:
            out = d / f"out-{name}"
            argv += [OUT_FLAG[argv[0]], str(out)]
        runs[name] = (pool.submit(subprocess.run, [sys.executable, "-m", "mfdr", *argv], cwd=d, env=env,
                                  capture_output=True, text=True, timeout=300), out)
    yield runs
    pool.shutdown(wait=True)


COMMANDS = ("extract", "train", "evaluate", "predict", "demo", "bench")


@pytest.mark.parametrize("name, argv, fragment", [pytest.param(*r, id=r[0]) for r in CLI_BAD])
def test_cli_bad_input(name, argv, fragment, cli_runs):
    prog = f"mfdr {argv[0]}" if argv and argv[0] in COMMANDS else "mfdr"  # who reports the error
    future, out = cli_runs[name]
    result = future.result()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    assert out is None or not out.exists()
