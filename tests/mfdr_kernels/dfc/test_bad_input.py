"""Bad input at the DFC op's entry point, ``dynamic_frame_conv`` on the backends ``cpp``, ``torch`` and
``triton`` (under ``TRITON_INTERPRET=1``, set by tests/conftest.py without CUDA, triton runs on CPU
tensors: tiny shapes only): every row an input, the exact exception type and a fragment of its message.
Edge inputs that are valid (expanded, stride-0, overlapping or transposed memory, empty tensors, huge
hops) must not reach a kernel unprepared: each has a row whose result and gradients must equal the
reference loop's, called directly on the raw arguments."""

import pytest
import torch

from mfdr_kernels import dynamic_frame_conv
from mfdr_kernels.dfc.reference import dfc_reference
from tests.bad_input import BACKENDS, F64, INF, NAN, leaf, nan_at, raises, row


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
@pytest.mark.parametrize("call, exc, fragment, env", DFC_BAD)
def test_dfc_bad_input(call, exc, fragment, env, backend, monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with raises(exc, fragment):
        call(backend)


# name, () -> ((x leaf, x), (kernel leaf, kernel), None or (bias leaf, bias)), kwargs
DFC_OK = [
    ("expanded-x", lambda: (leaf((1, 7, 3), lambda b: b.expand(2, 7, 3)), leaf((3, 3, 3)), None), {}),
    ("stride-0-rows-in-x", lambda: (leaf((2, 1, 3), lambda b: b.expand(2, 7, 3)), leaf((3, 3, 3)), None), {}),
    ("stride-0-kernel", lambda: (leaf((2, 7, 3)), leaf((1, 1, 3), lambda b: b.expand(3, 3, 3)), None), {}),
    ("per-sample-kernel-expanded", lambda: (leaf((2, 7, 3)), leaf((3, 3, 3), lambda b: b.expand(2, 3, 3, 3)),
                                            leaf((3,))), {}),
    ("transposed-x", lambda: (leaf((2, 3, 7), lambda b: b.transpose(1, 2)), leaf((3, 3, 3)), None), {}),
    ("overlapping-rows-in-x",
     lambda: (leaf((9,), lambda b: b.as_strided((2, 7, 3), (0, 1, 1))), leaf((3, 3, 3)), None), {}),
    ("bias-expanded-per-position",
     lambda: (leaf((2, 7, 3)), leaf((3, 3, 3)), leaf((3,), lambda b: b.expand(3, 3))), {}),
    ("empty-batch", lambda: (leaf((0, 7, 3)), leaf((3, 3, 3)), leaf((3,))), {}),
    ("no-channels", lambda: (leaf((2, 7, 0)), leaf((3, 3, 0)), None), {}),
    ("hop-2**31", lambda: (leaf((2, 7, 3)), leaf((1, 3, 3)), None), {"hop": 2**31}),
    ("hop-2**63", lambda: (leaf((2, 7, 3)), leaf((1, 3, 3)), None), {"hop": 2**63}),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("build, kwargs", [pytest.param(b, kw, id=n) for n, b, kw in DFC_OK])
def test_dfc_edge_input_matches_reference(build, kwargs, backend):
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

