"""bf16 in the C++ GCPU recurrence (issue #15): bf16 loads and stores, the state, gates and pointwise math
in fp32, the products with the state and the weight gradients on bf16 operands (AMX where the CPU has it)
accumulated in fp32, every output rounded once.

Flash-attention's rule: against the float64 reference on the same (bf16-rounded) inputs, the error of the
``cpp`` backend in a low precision must be at most ``factor`` times the error of the ``torch`` backend run
in that precision (plus a floor far below the dtype's rounding), for H and for each gradient.
"""

import dataclasses

import pytest
import torch

from mfdr.gcpu import GCPU
from mfdr_kernels import gated_context_recurrence
from mfdr_kernels.gcpu import op
from tests.low_precision import DTYPES, TOL, record_backends

NAMES = ("x_r", "x_z", "x_g", "W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu", "b_u", "h0")


@dataclasses.dataclass
class Case:
    B: int
    L: int
    D: int
    lengths: tuple | None = None  # None: every step valid
    h0: bool = True

    @property
    def id(self):
        return (f"B{self.B}-L{self.L}-D{self.D}" + ("" if self.lengths is None else "-padded")
                + ("" if self.h0 else "-no_h0"))


# D over the kernel's vectors (16 fp32 lanes) and column tiles (64): a tail alone (5), a vector and a tail
# (17, odd: rows padded to an even width for AMX's pairs), a tile and a tail (70), two tiles and one column
# (129); B over its row tiles (32): 35 and 33 rows, lengths 0 and L among them
CASES = [
    Case(32, 50, 256, tuple(range(50, 18, -1))),  # the paper's shape, lengths 50 .. 19
    Case(3, 6, 5, (6, 3, 0)),
    Case(4, 7, 17, (7, 0, 7, 2), h0=False),
    Case(35, 4, 70, tuple(range(4, 0, -1)) * 8 + (0, 2, 4)),
    Case(33, 3, 129, h0=False),
    Case(2, 5, 8),
    Case(2, 3, 6, (0, 0)),  # no valid step at all
]


def make(case: Case, context: bool):
    """bf16 values (the inputs of every dtype) and an upstream gradient. The weights at nn.Linear's scale
    (the model's), so that the recurrence is stable over the paper's 50 steps."""
    g = torch.Generator().manual_seed(case.B * 1000 + case.L * 10 + case.D + context)
    B, L, D = case.B, case.L, case.D
    inputs = {name: torch.randn(B, L, D, generator=g) for name in NAMES[:3]}
    inputs.update({name: (torch.rand(D, D, generator=g) * 2 - 1) / D**0.5 for name in NAMES[3:9]})
    inputs.update(b_u=torch.randn(D, generator=g), h0=torch.randn(B, D, generator=g) if case.h0 else None)
    if not context:
        inputs.update(x_g=None, W_hg=None, W_gu=None)
    grad_H = torch.randn(B, L, D, generator=g)
    return {k: None if v is None else v.bfloat16() for k, v in inputs.items()}, grad_H.bfloat16()


def run(inputs, grad_H, case, backend, dtype):
    xs = {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}
    lengths = None if case.lengths is None else torch.tensor(case.lengths)
    H = gated_context_recurrence(*(xs[n] for n in NAMES[:10]), lengths=lengths, h0=xs["h0"], backend=backend)
    names = [n for n in NAMES if xs[n] is not None]
    grads = torch.autograd.grad(H, [xs[n] for n in names], grad_H.to(dtype))
    return {"H": H.detach(), **dict(zip(names, grads))}


def max_error(got, want):
    return float((got.double() - want).abs().max())


@DTYPES
@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpp_within_twice_the_torch_error(case, context, dtype):
    inputs, grad_H = make(case, context)
    ref = run(inputs, grad_H, case, "reference", torch.float64)  # bf16 values are exact in float64
    cpp = run(inputs, grad_H, case, "cpp", dtype)
    torch_ = run(inputs, grad_H, case, "torch", dtype)
    tol = TOL[dtype]
    assert cpp.keys() == ref.keys()
    for name in ref:
        assert cpp[name].dtype == dtype and cpp[name].shape == ref[name].shape, name
        err_cpp, err_torch = max_error(cpp[name], ref[name]), max_error(torch_[name], ref[name])
        assert err_cpp <= tol["factor"] * err_torch + tol["atol"], (
            f"{name}: cpp error {err_cpp:.3g} > {tol['factor']} x torch error {err_torch:.3g} + {tol['atol']:g}")


def test_padded_steps_output_zero_and_carry_the_state():
    """bf16 H is exactly 0 at padded steps, a sample of length 0 outputs zeros, and the state a padded step
    carries is the one its sample ended with (a longer run from it continues the same)."""
    case = Case(3, 6, 17, (6, 3, 0))
    inputs, _ = make(case, True)
    args = [inputs[n] for n in NAMES[:10]]
    H = gated_context_recurrence(*args, lengths=torch.tensor(case.lengths), h0=inputs["h0"], backend="cpp")
    assert H.dtype == torch.bfloat16
    assert torch.all(H[1, 3:] == 0) and torch.all(H[2] == 0) and torch.all(H[0] != 0)
    full = gated_context_recurrence(*args, lengths=torch.tensor([6, 6, 6]), h0=inputs["h0"], backend="cpp")
    torch.testing.assert_close(H[1, :3], full[1, :3], atol=0, rtol=0)  # the valid prefix does not see the padding


def test_bf16_cpu_tensors_run_the_cpp_kernel(monkeypatch):
    """The default backend of bf16 CPU tensors (what autocast produces) is the C++ kernel, forward and
    backward, not the torch fallback."""
    calls = record_backends(monkeypatch, op)
    case = CASES[1]
    inputs, grad_H = make(case, True)
    x_r = inputs["x_r"].requires_grad_()
    H = gated_context_recurrence(*(inputs[n] for n in NAMES[:10]), lengths=torch.tensor(case.lengths),
                                 h0=inputs["h0"])
    assert H.dtype == torch.bfloat16
    H.backward(grad_H)
    assert calls == ["cpp", "cpp"] and x_r.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("with_h0", [True, False], ids=["h0", "no_h0"])
def test_autocast_runs_the_cpp_kernel_in_bf16(monkeypatch, with_h0):
    """Under CPU autocast (bf16) float32 inputs are cast to bf16 and take the C++ kernel: the same H as an
    explicit bf16 call, float32 gradients for the float32 inputs."""
    calls = record_backends(monkeypatch, op)
    case = CASES[3]
    inputs, grad_H = make(case, True)
    xs = {k: v.float().requires_grad_() for k, v in inputs.items() if v is not None and (with_h0 or k != "h0")}
    lengths = torch.tensor(case.lengths)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        H = gated_context_recurrence(*(xs[n] for n in NAMES[:10]), lengths=lengths, h0=xs.get("h0"))
    H.backward(grad_H)
    assert calls == ["cpp", "cpp"] and all(x.grad.dtype == torch.float32 for x in xs.values())
    want = gated_context_recurrence(*(inputs[n] for n in NAMES[:10]), lengths=lengths,
                                    h0=inputs["h0"] if with_h0 else None, backend="cpp")
    assert H.dtype == torch.bfloat16 and torch.equal(H, want)


@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
def test_gcpu_module_under_autocast(monkeypatch, context):
    """``mfdr.GCPU`` under autocast: the input-side terms come from bf16 linears, the recurrence runs the
    C++ kernel in bf16 on them with the bf16-rounded weights and h0 (the semantics of the fp32 module:
    padded steps zero), close to the fp32 module's H."""
    calls = record_backends(monkeypatch, op)
    torch.manual_seed(0)
    module = GCPU(64, 4, context=context)
    z, h0 = torch.randn(3, 9, 64), torch.randn(3, 64)
    lengths = torch.tensor([9, 4, 0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        H = module(z, lengths, h0)
        x = module._input_side(z, module.global_context(z, lengths) if context else None)
    assert calls == ["cpp"] and H.dtype == torch.bfloat16
    W = [None if w is None else w.weight.bfloat16() for w in (module.W_hr, module.W_hz, getattr(module, "W_hg", None),
                                                              module.W_hu, module.W_zu, getattr(module, "W_gu", None))]
    want = gated_context_recurrence(*(None if t is None else t.bfloat16() for t in x), *W, module.b_u.bfloat16(),
                                    lengths=lengths, h0=h0.bfloat16(), backend="cpp")
    assert torch.equal(H, want)
    assert torch.all(H[1, 4:] == 0) and torch.all(H[2] == 0)
    H32 = module(z, lengths, h0)
    torch.testing.assert_close(H.float(), H32, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("context, with_h0", [(True, True), (False, True), (True, False)],
                         ids=["context", "no_context", "context-no_h0"])
def test_opcheck_bf16(context, with_h0):
    case = Case(3, 5, 17, (5, 2, 0))
    inputs, grad_H = make(case, context)
    args = [inputs[n] for n in NAMES[:10]]
    h0 = inputs["h0"] if with_h0 else None
    lengths = torch.tensor(case.lengths)
    torch.library.opcheck(op.gcpu_fwd_op, (*args, lengths, h0, "cpp"))
    H, gates = op.gcpu_fwd_op(*args, lengths, h0, "cpp")
    assert H.dtype == torch.bfloat16 and gates.dtype == torch.float32
    torch.library.opcheck(op.gcpu_bwd_op, (grad_H, H, gates, *args[3:9], lengths, h0, "cpp"))
