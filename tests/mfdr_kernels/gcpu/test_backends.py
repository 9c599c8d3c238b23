"""Every GCPU-recurrence backend against the float64 reference (SPEC §3): H and the gradients of every
input (x_r, x_z, x_g, the six weights, b_u, h0), with and without context, padded lengths and h0.
Triton runs under the interpreter on the CPU (tests/conftest.py sets TRITON_INTERPRET=1): tiny shapes."""

import dataclasses

import pytest
import torch

from mfdr_kernels import gated_context_recurrence
from mfdr_kernels.gcpu import CHECKS

BACKENDS = ["torch", "cpp", "triton"]
NAMES = ("x_r", "x_z", "x_g", "W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu", "b_u", "h0")
# (atol, rtol) against the float64 reference, per dtype: H and every gradient
TOL = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 1e-5)}


@dataclasses.dataclass
class Case:
    B: int
    L: int
    D: int
    lengths: tuple | None = None

    @property
    def id(self):
        return f"B{self.B}-L{self.L}-D{self.D}" + ("" if self.lengths is None else "-padded")


CASES = [
    Case(2, 5, 8),  # every step valid
    Case(3, 6, 5, (6, 3, 0)),  # padded, odd D, one empty sequence
    Case(1, 1, 4),  # one step
    Case(2, 4, 9, (1, 2)),  # every sequence shorter than L: the steps past the longest are skipped
]
# Over the C++ kernel's tiles (32 batch rows x 64 columns): several row and column tiles, tails of both.
CPP_CASES = [Case(35, 4, 70, tuple(range(4, 0, -1)) * 8 + (0, 2, 4)), Case(33, 3, 129)]


def make(case: Case, dtype, context: bool, seed: int = 0):
    """Inputs (float64 values rounded to ``dtype``, requiring grad) and an upstream gradient. The weights
    are scaled like nn.Linear's so the gates do not saturate."""
    g = torch.Generator().manual_seed(seed)
    B, L, D = case.B, case.L, case.D

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype).requires_grad_()

    inputs = {"x_r": rand(B, L, D), "x_z": rand(B, L, D), "x_g": rand(B, L, D)}
    inputs.update({name: rand(D, D, scale=1.5 / max(D, 1) ** 0.5) for name in NAMES[3:9]})
    inputs.update(b_u=rand(D), h0=rand(B, D))
    if not context:
        inputs.update(x_g=None, W_hg=None, W_gu=None)
    grad_H = torch.randn(B, L, D, generator=g, dtype=torch.float64).to(dtype)
    return inputs, grad_H


def run(inputs, grad_H, case, backend, lengths="case"):
    lengths = case.lengths if lengths == "case" else lengths
    args = [inputs[n] for n in NAMES[:10]]
    H = gated_context_recurrence(*args, lengths=None if lengths is None else torch.tensor(lengths),
                                 h0=inputs["h0"], backend=backend)
    names = [n for n in NAMES if inputs[n] is not None]
    grads = torch.autograd.grad(H, [inputs[n] for n in names], grad_H)
    return {"H": H, **dict(zip(names, grads))}


def reference_of(inputs, grad_H, case):
    """The reference in float64 on the same (possibly rounded) inputs."""
    up = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}
    return run(up, grad_H.double(), case, "reference")


def assert_match(got, want, dtype):
    assert got.keys() == want.keys()
    atol, rtol = TOL[dtype]
    for name in got:
        assert got[name].dtype == dtype and got[name].shape == want[name].shape, name
        torch.testing.assert_close(got[name].double(), want[name], atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def skip_unless_runs(backend, dtype):
    x = torch.empty(1, 1, 1, dtype=dtype)
    if CHECKS[backend](x, x):
        pytest.skip(CHECKS[backend](x, x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_backend_matches_reference(case, context, dtype, backend):
    skip_unless_runs(backend, dtype)
    inputs, grad_H = make(case, dtype, context)
    assert_match(run(inputs, grad_H, case, backend), reference_of(inputs, grad_H, case), dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
@pytest.mark.parametrize("case", CPP_CASES, ids=[c.id for c in CPP_CASES])
def test_cpp_across_its_tiles(case, context, dtype):
    inputs, grad_H = make(case, dtype, context)
    assert_match(run(inputs, grad_H, case, "cpp"), reference_of(inputs, grad_H, case), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("context", [True, False], ids=["context", "no_context"])
def test_gradcheck(backend, context):
    skip_unless_runs(backend, torch.float64)
    case = Case(2, 3, 3, (3, 2))
    inputs, _ = make(case, torch.float64, context)
    names = [n for n in NAMES if inputs[n] is not None]

    def fn(*tensors):
        given = dict(zip(names, tensors))
        args = [given.get(n) for n in NAMES[:10]]
        return gated_context_recurrence(*args, lengths=torch.tensor(case.lengths), h0=given["h0"], backend=backend)

    # the interpreter runs each launch at ~6 ms per program: the fast (projected) mode for triton
    assert torch.autograd.gradcheck(fn, [inputs[n] for n in names], fast_mode=backend == "triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_lengths_and_h0(backend):
    """``lengths=None`` is every step valid, ``h0=None`` a zero state."""
    skip_unless_runs(backend, torch.float64)
    case = Case(2, 4, 6)
    inputs, _ = make(case, torch.float64, True)
    args = [inputs[n] for n in NAMES[:10]]
    H = gated_context_recurrence(*args, backend=backend)
    want = gated_context_recurrence(*args, lengths=torch.tensor([4, 4]), h0=torch.zeros(2, 6, dtype=torch.float64),
                                    backend="reference")
    torch.testing.assert_close(H, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_padded_inputs_never_reach_the_results(backend):
    """Whatever the padded steps of x hold (NaN, Inf, huge), H and every gradient equal those of clean
    inputs: padded steps carry h, their gates are zeroed, and their d_a are 0 (SPEC §3)."""
    case = Case(3, 5, 7, (5, 2, 0))
    inputs, grad_H = make(case, torch.float64, True)
    clean = run(inputs, grad_H, case, backend)
    dirty = {k: v for k, v in inputs.items()}
    for name in ("x_r", "x_z", "x_g"):
        x = inputs[name].detach().clone()
        x[1, 2:], x[2, :] = float("nan"), float("inf")
        dirty[name] = x.requires_grad_()
    got = run(dirty, grad_H, case, backend)
    for name in clean:
        torch.testing.assert_close(got[name], clean[name], atol=0, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    for name in ("x_r", "x_z", "x_g"):
        assert not got[name][1, 2:].any() and not got[name][2].any()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(0, 3, 4), (2, 0, 4), (2, 3, 0)], ids=["B0", "L0", "D0"])
def test_empty(backend, shape):
    skip_unless_runs(backend, torch.float64)
    B, L, D = shape
    inputs, grad_H = make(Case(B, L, D), torch.float64, True)
    got = run(inputs, grad_H, Case(B, L, D), backend)
    assert got["H"].shape == (B, L, D)
    for name in NAMES:
        assert got[name].shape == inputs[name].shape and not got[name].any(), name
