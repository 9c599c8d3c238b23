"""The GCPU-recurrence custom ops as PyTorch sees them: opcheck, torch.compile, dispatched ops, backend
choice, autocast and argument errors."""

import pytest
import torch

import mfdr_kernels
from mfdr_kernels import gated_context_recurrence
from mfdr_kernels.counting import DispatchCounter
from mfdr_kernels.gcpu import CHECKS, op

BACKENDS = ["torch", "cpp", "triton"]


def _inputs(B=2, L=4, D=5, context=True, dtype=torch.float64, requires_grad=True):
    """``[x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u]`` and ``h0``."""
    x = [torch.randn(B, L, D, dtype=dtype) for _ in range(3)]
    W = [torch.randn(D, D, dtype=dtype) / D**0.5 for _ in range(6)]
    args = [*x, *W, torch.randn(D, dtype=dtype)]
    args = [a.requires_grad_(requires_grad) for a in args]
    if not context:
        args[2] = args[5] = args[8] = None
    return args, torch.randn(B, D, dtype=dtype, requires_grad=requires_grad)


# ------------------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("context, with_h0", [(True, True), (False, True), (True, False)],
                         ids=["context", "no_context", "context-no_h0"])
def test_opcheck_forward(backend, context, with_h0):
    args, h0 = _inputs(context=context)
    lengths = torch.tensor([4, 2])
    torch.library.opcheck(op.gcpu_fwd_op, (*args, lengths, h0 if with_h0 else None, backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("context, with_h0", [(True, True), (False, True), (True, False)],
                         ids=["context", "no_context", "context-no_h0"])
def test_opcheck_backward(backend, context, with_h0):
    args, h0 = _inputs(context=context, requires_grad=False)
    h0 = h0 if with_h0 else None
    lengths = torch.tensor([4, 2])
    H, gates = op.gcpu_fwd_op(*args, lengths, h0, backend)
    W = args[3:9]
    torch.library.opcheck(op.gcpu_bwd_op, (torch.randn_like(H), H, gates, *W, lengths, h0, backend))


# ------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
def test_compile_fullgraph_cpu(context):
    """Dynamo captures the whole function (fake kernels, registered autograd); aot_eager keeps the test
    free of Inductor's C++ code generation, which takes tens of seconds on a small CPU."""
    torch._dynamo.reset()
    args, h0 = _inputs(B=3, L=6, D=16, context=context, dtype=torch.float32)
    lengths = torch.tensor([6, 3, 1])
    leaves = [a for a in (*args, h0) if a is not None]

    def f(*tensors):
        it = iter(tensors)
        given = [None if a is None else next(it) for a in args]
        H = gated_context_recurrence(*given, lengths=lengths, h0=next(it))  # default backend: cpp
        return (H * H).sum()

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(*leaves), leaves)
    want = torch.autograd.grad(f(*leaves), leaves)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------ dispatched ops
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_dispatched_ops_do_not_grow_with_the_steps(backend, monkeypatch):
    """The cpp op's forward + backward is a fixed handful of dispatched ops, whatever L (the loop over t
    is inside the kernel): the op pair, the detach of the two saved outputs and one gradient accumulation
    per leaf. The torch backend's grow with L. The ops a GPU would launch, counted on the CPU (value checks off,
    as on an accelerator)."""
    monkeypatch.setenv("MFDR_KERNELS_CHECK_VALUES", "0")

    def count(L):
        args, h0 = _inputs(B=2, L=L, D=8, dtype=torch.float32)
        lengths, grad = torch.tensor([L, L - 1]), torch.ones(2, L, 8)
        with DispatchCounter() as c:
            H = gated_context_recurrence(*args, lengths=lengths, h0=h0, backend=backend)
            H.backward(grad)
        return c.ops

    count(3)  # warm-up: loads the extension
    short, long = count(3), count(30)
    if backend == "cpp":
        assert short == long <= 11 + 4, (short, long)  # 11 leaves
    else:
        assert long > short + 27 * 10, (short, long)


# ------------------------------------------------------------------------------------------ backend choice
def test_default_backend_on_cpu_is_cpp():
    x = torch.empty(1, 1, 1)
    assert mfdr_kernels.backends()["gated_context_recurrence"]["cpp"] is None
    assert mfdr_kernels._backends.choose("gated_context_recurrence", None, CHECKS, (x, x)) == "cpp"


def test_env_forces_backend(monkeypatch):
    calls = []
    real = op._impl

    def spy(name):
        calls.append(name)
        return real(name)

    monkeypatch.setattr(op, "_impl", spy)
    monkeypatch.setenv("MFDR_KERNELS_BACKEND", "torch")
    args, h0 = _inputs()
    gated_context_recurrence(*args, h0=h0).sum().backward()
    assert calls == ["torch", "torch"]  # forward and backward
    calls.clear()
    gated_context_recurrence(*args, h0=h0, backend="cpp")  # an explicit backend= wins over the variable
    assert calls == ["cpp"]


def test_cpu_float16_runs_on_torch():
    """The C++ kernel takes float32, float64 and bf16 (test_bf16.py); float16 CPU tensors run the torch backend."""
    args, h0 = _inputs(dtype=torch.float16)
    x = args[0]
    assert mfdr_kernels._backends.choose("gated_context_recurrence", None, CHECKS, (x, x)) == "torch"
    H = gated_context_recurrence(*args, h0=h0)
    assert H.dtype == torch.float16
    want = gated_context_recurrence(*(a.double() for a in args), h0=h0.double(), backend="reference")
    torch.testing.assert_close(H.double(), want, atol=0.05, rtol=0.05)


def test_autocast_casts_the_inputs():
    """Under CPU autocast (bf16) the op takes its inputs in bf16, as a matmul would, and returns bf16."""
    args, h0 = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        H = gated_context_recurrence(*args, h0=h0)
    assert H.dtype == torch.bfloat16
    H.float().sum().backward()
    assert all(a.grad is not None and a.grad.dtype == torch.float32 for a in args)
    want = gated_context_recurrence(*(a.double() for a in args), h0=h0.double(), backend="reference")
    torch.testing.assert_close(H.double(), want, atol=0.05, rtol=0.05)


def test_explicit_backend_that_cannot_run_says_why():
    args, h0 = _inputs(dtype=torch.float16)
    with pytest.raises(RuntimeError, match="cpp.*float32 or float64 or bfloat16, got torch.float16"):
        gated_context_recurrence(*args, h0=h0, backend="cpp")
    with pytest.raises(ValueError, match="backend= must be one of"):
        gated_context_recurrence(*args, h0=h0, backend="cuda")


# ------------------------------------------------------------------------------------------ bad input
ARGS = ("x_r", "x_z", "x_g", "W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu", "b_u")


def _call(**changes):
    args, h0 = _inputs(B=2, L=4, D=5, dtype=torch.float32, requires_grad=False)
    kw = dict(zip(ARGS, args), lengths=torch.tensor([4, 2]), h0=h0)
    kw.update(changes)
    positional = [kw.pop(n) for n in ARGS]
    return gated_context_recurrence(*positional, **kw)


BAD = [
    ("x_r-rank", dict(x_r=torch.randn(4, 5)), ValueError, r"x_r must be 3-D"),
    ("x_r-type", dict(x_r=[[1.0]]), TypeError, r"x_r must be a torch.Tensor"),
    ("x_r-int", dict(x_r=torch.ones(2, 4, 5, dtype=torch.int64)), TypeError, r"x_r must have a floating dtype"),
    ("x_z-shape", dict(x_z=torch.randn(2, 3, 5)), ValueError,
     r"x_z must have the shape of x_r \(B, L, D\) = \(2, 4, 5\), got \(2, 3, 5\)"),
    ("x_g-shape", dict(x_g=torch.randn(2, 4, 6)), ValueError, r"x_g must have the shape of x_r"),
    ("W_hz-shape", dict(W_hz=torch.randn(5, 4)), ValueError, r"W_hz must have shape \(D, D\) = \(5, 5\)"),
    ("W_hr-rank", dict(W_hr=torch.randn(5)), ValueError, r"W_hr must be 2-D"),
    ("b_u-shape", dict(b_u=torch.randn(4)), ValueError, r"b_u must have shape \(D,\) = \(5,\), got \(4,\)"),
    ("h0-shape", dict(h0=torch.randn(5)), ValueError, r"h0 must have shape \(B, D\) = \(2, 5\), got \(5,\)"),
    ("W_zu-dtype", dict(W_zu=torch.randn(5, 5, dtype=torch.float64)), TypeError,
     r"W_zu must have the dtype of x_r \(torch.float32\), got torch.float64"),
    ("h0-device", dict(h0=torch.randn(2, 5, device="meta")), ValueError, r"h0 must be on the device of x_r"),
    ("context-W_hg", dict(W_hg=None), ValueError, r"W_hg must be a \(D, D\) tensor when x_g is given"),
    ("no-context-W_gu", dict(x_g=None, W_hg=None), ValueError, r"W_gu must be None when x_g is None"),
    ("lengths-shape", dict(lengths=torch.tensor([4])), ValueError, r"lengths must have shape \(2,\), got \(1,\)"),
    ("lengths-float", dict(lengths=torch.tensor([4.0, 2.0])), TypeError, r"lengths must have an integer dtype"),
    ("lengths-range", dict(lengths=torch.tensor([5, 2])), ValueError, r"lengths must lie in \[0, 4\], got values in"),
    ("lengths-negative", dict(lengths=torch.tensor([-1, 2])), ValueError, r"lengths must lie in \[0, 4\]"),
    ("backend", dict(backend="gpu"), ValueError, r"backend= must be one of"),
]


@pytest.mark.parametrize("changes, exc, match", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_argument(changes, exc, match):
    with pytest.raises(exc, match=match):
        _call(**changes)


def test_unchecked_lengths_are_clamped(monkeypatch):
    """With MFDR_KERNELS_CHECK_VALUES=0 (an accelerator's default), lengths past L act as L and negative
    ones as 0: clamped, never an out-of-bounds read or write."""
    monkeypatch.setenv("MFDR_KERNELS_CHECK_VALUES", "0")
    args, h0 = _inputs(dtype=torch.float64, requires_grad=False)
    for backend in BACKENDS:
        got = gated_context_recurrence(*args, lengths=torch.tensor([99, -3]), h0=h0, backend=backend)
        want = gated_context_recurrence(*args, lengths=torch.tensor([4, 0]), h0=h0, backend="reference")
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)
