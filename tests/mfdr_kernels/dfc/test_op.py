"""The DFC custom op as PyTorch sees it: opcheck, torch.compile, backend choice and argument errors."""

import pytest
import torch

import mfdr_kernels
from mfdr_kernels import dynamic_frame_conv
from mfdr_kernels.dfc import CHECKS, op

BACKENDS = ["torch", "cpp", "triton"]


def _inputs(per_sample=False, bias="C", dtype=torch.float64, B=2, L=9, C=5, frame=3, hop=2):
    N = (L - frame) // hop + 1
    x = torch.randn(B, L, C, dtype=dtype, requires_grad=True)
    kernel = torch.randn(*((B,) if per_sample else ()), N, frame, C, dtype=dtype, requires_grad=True)
    shape = (C,) if bias == "C" else (N, C)
    b = None if bias is None else torch.randn(shape, dtype=dtype, requires_grad=True)
    return x, kernel, b


# ------------------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample, bias", [(False, None), (False, "C"), (True, "NC")],
                         ids=["shared-nobias", "shared-bias_C", "per_sample-bias_NC"])
def test_opcheck_forward(backend, per_sample, bias):
    x, kernel, b = _inputs(per_sample, bias)
    torch.library.opcheck(op.dfc_fwd_op, (x, kernel, b, 3, 2, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_opcheck_backward(backend, per_sample):
    x, kernel, _ = _inputs(per_sample, None)
    gy = torch.randn(2, 4, 5, dtype=torch.float64)
    torch.library.opcheck(op.dfc_bwd_op, (gy, x.detach(), kernel.detach(), 3, 2, backend))


# ------------------------------------------------------------------------------------------ torch.compile
def test_compile_fullgraph_cpu():
    """Dynamo captures the whole function (fake kernels, registered autograd); aot_eager keeps the test
    free of Inductor's C++ code generation, which takes tens of seconds on a small CPU."""
    torch._dynamo.reset()
    x, kernel, b = _inputs(False, "C", torch.float32, B=3, L=50, C=16)

    def f(x, kernel, b):
        y = dynamic_frame_conv(torch.tanh(x), kernel, frame=3, hop=2, bias=b)  # default backend: cpp
        return (y * y).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, kernel, b), (x, kernel, b))
    want = torch.autograd.grad(f(x, kernel, b), (x, kernel, b))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ backend choice
def test_default_backend_on_cpu_is_cpp():
    x = torch.empty(1, 1, 1, 1)
    assert mfdr_kernels.backends()["dynamic_frame_conv"]["cpp"] is None
    assert mfdr_kernels._backends.choose("dynamic_frame_conv", None, CHECKS, (x, x)) == "cpp"


def test_env_forces_backend(monkeypatch):
    calls = []
    real = op._impl

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(op, "_impl", spy)
    monkeypatch.setenv("MFDR_KERNELS_BACKEND", "torch")
    x, kernel, b = _inputs()
    dynamic_frame_conv(x, kernel, bias=b)
    assert calls == ["torch"]
    calls.clear()
    dynamic_frame_conv(x, kernel, bias=b, backend="cpp")  # an explicit backend= wins over the variable
    assert calls == ["cpp"]


def test_cpu_bfloat16_runs_on_cpp():
    x, kernel, _ = _inputs(dtype=torch.bfloat16)
    assert mfdr_kernels._backends.choose("dynamic_frame_conv", None, CHECKS, (x, kernel)) == "cpp"
    y = dynamic_frame_conv(x, kernel)
    want = dynamic_frame_conv(x.double(), kernel.double(), backend="reference")
    torch.testing.assert_close(y.double(), want, atol=0.1, rtol=0.05)


def test_explicit_backend_that_cannot_run_says_why():
    x, kernel, _ = _inputs(dtype=torch.float16)
    with pytest.raises(RuntimeError, match="cpp.*float32 or float64 or bfloat16, got torch.float16"):
        dynamic_frame_conv(x, kernel, backend="cpp")
    with pytest.raises(ValueError, match="backend= must be one of"):
        dynamic_frame_conv(x, kernel, backend="cuda")


# ------------------------------------------------------------------------------------------ bad input
def _bad(**changes):
    x, kernel, b = _inputs(bias="C", dtype=torch.float32)
    kw = {"x": x, "kernel": kernel, "bias": b, "frame": 3, "hop": 2}
    kw.update(changes)
    return kw


def _call(kw):
    return dynamic_frame_conv(kw["x"], kw["kernel"], frame=kw["frame"], hop=kw["hop"], bias=kw["bias"])


BAD = [
    ("L<frame", dict(x=torch.randn(2, 2, 5), kernel=torch.randn(1, 3, 5)), ValueError,
     r"x must have at least frame = 3 rows"),
    ("kernel-N", dict(kernel=torch.randn(5, 3, 5)), ValueError,
     r"kernel must have shape \(N, frame, C\) = \(4, 3, 5\)"),
    ("kernel-frame", dict(kernel=torch.randn(4, 2, 5)), ValueError, r"kernel must have shape"),
    ("kernel-batch", dict(kernel=torch.randn(3, 4, 3, 5)), ValueError,
     r"kernel must have shape \(B, N, frame, C\)"),
    ("kernel-channels", dict(kernel=torch.randn(4, 3, 6)), ValueError, r"kernel must have C = 5 channels"),
    ("kernel-rank", dict(kernel=torch.randn(12, 5)), ValueError, r"kernel must be 3-D or 4-D"),
    ("x-rank", dict(x=torch.randn(9, 5)), ValueError, r"x must be 3-D"),
    ("x-type", dict(x=[[1.0]]), TypeError, r"x must be a torch.Tensor"),
    ("x-int", dict(x=torch.ones(2, 9, 5, dtype=torch.int64)), TypeError, r"x must have a floating dtype"),
    ("kernel-dtype", dict(kernel=torch.randn(4, 3, 5, dtype=torch.float64)), TypeError,
     r"kernel must have the dtype of x \(torch.float32\), got torch.float64"),
    ("bias-dtype", dict(bias=torch.randn(5, dtype=torch.float64)), TypeError,
     r"bias must have the dtype of x"),
    ("kernel-device", dict(kernel=torch.randn(4, 3, 5, device="meta")), ValueError,
     r"kernel must be on the device of x"),
    ("bias-shape", dict(bias=torch.randn(4)), ValueError,
     r"bias must have shape \(C,\) = \(5,\) or \(N, C\) = \(4, 5\)"),
    ("bias-NC-shape", dict(bias=torch.randn(3, 5)), ValueError, r"bias must have shape"),
    ("frame-0", dict(frame=0), ValueError, r"frame must be >= 1, got 0"),
    ("hop-0", dict(hop=0), ValueError, r"hop must be >= 1, got 0"),
    ("hop-float", dict(hop=2.0), TypeError, r"hop must be an int"),
]


@pytest.mark.parametrize("changes, exc, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(changes, exc, match):
    with pytest.raises(exc, match=match):
        _call(_bad(**changes))
