"""bf16 in the C++ DFC kernels (issue #15): bf16 loads and stores, fp32 sums (the batch sums of the
shared kernel's and the bias's gradients included), each output rounded once.

Flash-attention's rule: against the float64 reference on the same (rounded) inputs, the error of the
``cpp`` backend in a low precision must be at most ``factor`` times the error of the ``torch`` backend
run in that precision (plus a floor far below the dtype's rounding), for y and each gradient.
"""


import pytest
import torch

from mfdr_kernels import dynamic_frame_conv
from mfdr_kernels.dfc import op
from tests.low_precision import DTYPES, TOL, record_backends
from tests.mfdr_kernels.dfc.test_backends import Case

# channels over the kernels' vector paths: chunks of 32, then 8, then scalars (256, 43 = 32 + 8 + 3, 7);
# 130 crosses the dK kernel's 128-channel blocks; B = 19 gives long fp32 batch sums
CASES = [
    Case(19, 50, 256),  # the paper's first layer (batch cut)
    Case(19, 24, 130, frame=3, hop=3),  # the paper's second layer: a partition
    Case(3, 11, 43, frame=2, hop=4),  # gaps between frames (rows of dx with no term)
    Case(2, 10, 43, frame=4, hop=1),  # every row in up to four frames
    Case(4, 9, 7),
]


def make(case: Case, per_sample: bool, bias: str | None):
    """bf16 values (the inputs of both dtypes), an upstream gradient, and the names of the inputs."""
    g = torch.Generator().manual_seed(case.B * case.L * case.C + per_sample)
    kshape = (case.B, case.N, case.frame, case.C) if per_sample else (case.N, case.frame, case.C)
    inputs = {"x": torch.randn(case.B, case.L, case.C, generator=g), "kernel": torch.randn(kshape, generator=g)}
    if bias:
        inputs["bias"] = torch.randn((case.C,) if bias == "C" else (case.N, case.C), generator=g)
    gy = torch.randn(case.B, case.N, case.C, generator=g)
    return {k: v.bfloat16() for k, v in inputs.items()}, gy.bfloat16()


def run(inputs, gy, case, backend, dtype):
    xs = {k: v.to(dtype).requires_grad_() for k, v in inputs.items()}
    y = dynamic_frame_conv(xs["x"], xs["kernel"], frame=case.frame, hop=case.hop, bias=xs.get("bias"),
                           backend=backend)
    grads = torch.autograd.grad(y, list(xs.values()), gy.to(dtype))
    return {"y": y.detach(), **dict(zip(xs, grads))}


def max_error(got, want):
    return float((got.double() - want).abs().max())


@DTYPES
@pytest.mark.parametrize("per_sample, bias", [(False, "C"), (True, "NC"), (False, None)],
                         ids=["shared-bias_C", "per_sample-bias_NC", "shared-nobias"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpp_within_twice_the_torch_error(case, per_sample, bias, dtype):
    inputs, gy = make(case, per_sample, bias)
    ref = run(inputs, gy, case, "reference", torch.float64)  # bf16 values are exact in float64
    cpp = run(inputs, gy, case, "cpp", dtype)
    torch_ = run(inputs, gy, case, "torch", dtype)
    tol = TOL[dtype]
    for name in ref:
        assert cpp[name].dtype == dtype and cpp[name].shape == ref[name].shape, name
        err_cpp, err_torch = max_error(cpp[name], ref[name]), max_error(torch_[name], ref[name])
        assert err_cpp <= tol["factor"] * err_torch + tol["atol"], (
            f"{name}: cpp error {err_cpp:.3g} > {tol['factor']} x torch error {err_torch:.3g} + {tol['atol']:g}")


def test_cpp_rounds_once_to_nearest_even():
    """A frame of one row with a kernel of ones copies the fp32 sum bias + x into bf16: the kernel's
    rounding is torch's (round to nearest even), and NaN and infinities pass through."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 70, generator=g).bfloat16()
    x[0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), 3.0])
    bias = (torch.randn(5, 70, generator=g) * 1e-3).bfloat16()  # below x's last bit: the sum needs rounding
    y = dynamic_frame_conv(x, torch.ones(5, 1, 70, dtype=torch.bfloat16), frame=1, hop=1, bias=bias, backend="cpp")
    want = (x.float() + bias.float()).bfloat16()
    nan = want.isnan()  # NaN payloads differ between conversions (torch's own: 0xffff or 0x7fc0)
    assert torch.equal(y.isnan(), nan) and torch.equal(y.view(torch.int16)[~nan], want.view(torch.int16)[~nan])
    assert not torch.equal(want, x)  # the rounding of the sum decides something


def test_bf16_cpu_tensors_run_the_cpp_kernel(monkeypatch):
    """The default backend of bf16 CPU tensors (what autocast produces) is the C++ kernel, forward and
    backward, not the torch fallback."""
    calls = record_backends(monkeypatch, op)
    inputs, gy = make(CASES[-1], False, "C")
    x = inputs["x"].requires_grad_()
    y = dynamic_frame_conv(x, inputs["kernel"], bias=inputs["bias"])
    assert y.dtype == torch.bfloat16
    y.backward(gy)
    assert calls == ["cpp", "cpp"] and x.grad.dtype == torch.bfloat16


def test_autocast_runs_the_cpp_kernel_in_bf16(monkeypatch):
    """Under CPU autocast (bf16) float32 inputs are cast to bf16 and take the C++ kernel: the same output
    as an explicit bf16 call, float32 gradients for the float32 inputs."""
    calls = record_backends(monkeypatch, op)
    inputs, gy = make(CASES[0], False, "C")
    x, kernel, bias = (inputs[k].float().requires_grad_() for k in ("x", "kernel", "bias"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dynamic_frame_conv(x, kernel, bias=bias)
    y.backward(gy)
    assert calls == ["cpp", "cpp"] and x.grad.dtype == kernel.grad.dtype == bias.grad.dtype == torch.float32
    want = dynamic_frame_conv(*(t.detach().bfloat16() for t in (x, kernel)), bias=bias.detach().bfloat16(),
                              backend="cpp")
    assert torch.equal(y, want)


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_opcheck_bf16(per_sample):
    case = Case(2, 9, 43)
    inputs, gy = make(case, per_sample, "NC")
    x, kernel, b = (inputs[k].requires_grad_() for k in ("x", "kernel", "bias"))
    torch.library.opcheck(op.dfc_fwd_op, (x, kernel, b, case.frame, case.hop, "cpp"))
    torch.library.opcheck(op.dfc_bwd_op, (gy, x.detach(), kernel.detach(), case.frame, case.hop, "cpp"))
