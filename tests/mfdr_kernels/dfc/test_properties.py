"""Property-based tests of DFC (hypothesis): random shapes, frames, hops, kernel and bias forms.

Bounded example counts keep CI fast; ``MFDR_HYPOTHESIS_PROFILE=thorough`` runs many more.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdr_kernels import _env, dynamic_frame_conv

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(_env.hypothesis_profile())


@st.composite
def problems(draw):
    frame = draw(st.integers(1, 5))
    hop = draw(st.integers(1, 6))
    L = draw(st.integers(frame, 20))
    B = draw(st.integers(1, 3))
    C = draw(st.integers(1, 40))
    per_sample = draw(st.booleans())
    bias = draw(st.sampled_from([None, "C", "NC"]))
    seed = draw(st.integers(0, 2**16))
    return B, L, C, frame, hop, per_sample, bias, seed


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@given(problem=problems())
def test_matches_reference(backend, problem):
    B, L, C, frame, hop, per_sample, bias, seed = problem
    N = (L - frame) // hop + 1
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, L, C, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(*((B,) if per_sample else ()), N, frame, C, generator=g, dtype=torch.float64,
                    requires_grad=True)
    b_shape = (C,) if bias == "C" else (N, C)
    b = None if bias is None else torch.randn(b_shape, generator=g, dtype=torch.float64, requires_grad=True)
    gy = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    inputs = [t for t in (x, k, b) if t is not None]
    results = {}
    for name in ("reference", backend):
        y = dynamic_frame_conv(x, k, frame=frame, hop=hop, bias=b, backend=name)
        results[name] = (y, *torch.autograd.grad(y, inputs, gy))
    for got, want in zip(results[backend], results["reference"], strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton"])
@pytest.mark.parametrize("B, C", [(0, 4), (2, 0)], ids=["B0", "C0"])
def test_empty_batch_or_channels(backend, B, C):
    x = torch.randn(B, 9, C, dtype=torch.float64, requires_grad=True)
    k = torch.randn(4, 3, C, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, dtype=torch.float64, requires_grad=True)
    y = dynamic_frame_conv(x, k, frame=3, hop=2, bias=b, backend=backend)
    assert y.shape == (B, 4, C)
    dx, dk, db = torch.autograd.grad(y, (x, k, b), torch.ones_like(y), allow_unused=True)
    assert dx.shape == x.shape and dk.shape == k.shape and db.shape == b.shape
    if B == 0:
        assert not dk.any() and not db.any()
