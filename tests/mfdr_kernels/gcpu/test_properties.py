"""Property-based tests of the GCPU recurrence (hypothesis): random B, L, D, lengths, context, h0, for
every backend against the float64 reference (H and every gradient).

Bounded example counts keep CI fast; ``MFDR_HYPOTHESIS_PROFILE=thorough`` runs many more.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdr_kernels import _env, gated_context_recurrence
from mfdr_kernels.gcpu import CHECKS

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(_env.hypothesis_profile())

# triton: on the CPU under TRITON_INTERPRET=1 (tests/conftest.py), B up to 20 spans two 16-row programs
BACKENDS = ["torch", "cpp"] + ([] if CHECKS["triton"](torch.empty(1, dtype=torch.float64)) else ["triton"])


@st.composite
def problems(draw):
    B = draw(st.integers(1, 20))
    L = draw(st.integers(1, 8))
    D = draw(st.integers(1, 40))
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(0, L), min_size=B, max_size=B)))
    return B, L, D, lengths, draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2**16))


def _run(backend, inputs, lengths, h0, grad_H):
    H = gated_context_recurrence(*inputs, lengths=lengths, h0=h0, backend=backend)
    leaves = [t for t in (*inputs, h0) if t is not None]
    return (H, *torch.autograd.grad(H, leaves, grad_H))


@pytest.mark.parametrize("backend", BACKENDS)
@given(problem=problems())
def test_matches_reference(backend, problem):
    B, L, D, lengths, context, with_h0, seed = problem
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()

    inputs = [rand(B, L, D), rand(B, L, D), rand(B, L, D) if context else None]
    inputs += [rand(D, D, scale=1.5 / D**0.5) if context or i not in (2, 5) else None for i in range(6)]
    inputs.append(rand(D))
    h0 = rand(B, D) if with_h0 else None
    lengths = None if lengths is None else torch.tensor(lengths)
    grad_H = torch.randn(B, L, D, generator=g, dtype=torch.float64)
    got = _run(backend, inputs, lengths, h0, grad_H)
    want = _run("reference", inputs, lengths, h0, grad_H)
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, atol=1e-12, rtol=1e-12)
