"""Property-based tests of SAWA (hypothesis): random shapes, lengths, starts, levels, modes, dtypes.

Bounded example counts keep CI fast; ``MFDR_HYPOTHESIS_PROFILE=thorough`` runs many more.
"""

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mfdr_kernels import _env
from mfdr_kernels import sliding_adaptive_window_attention as sawa
from mfdr_kernels.sawa.op import CHECKS
from mfdr_kernels.sawa.reference import decision_margins

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(_env.hypothesis_profile())

# triton: on the CPU under TRITON_INTERPRET=1 (tests/conftest.py), where these tiny problems take a few
# query blocks and chunks of 16 frames each: random jumps in the starts exercise the chunk skipping.
BACKENDS = ["torch", "cpp"] + ([] if CHECKS["triton"](torch.empty(1, dtype=torch.float64)) else ["triton"])


@st.composite
def problems(draw, L_range=(1, 9), T_range=(1, 40)):
    B = draw(st.integers(1, 2))
    H = draw(st.integers(1, 2))
    L = draw(st.integers(*L_range))
    T = draw(st.integers(*T_range))
    d = draw(st.integers(1, 6))
    dv = draw(st.integers(1, 5))
    levels = draw(st.integers(0, 2))
    window = draw(st.integers(1, 6)) * (2 if levels else 1)
    hop = draw(st.integers(1, 6))
    normalize = draw(st.sampled_from(["segment", "joint"]))
    q_lens = draw(st.lists(st.integers(0, L), min_size=B, max_size=B))
    k_lens = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    starts = None
    if draw(st.booleans()):
        starts = [sorted(draw(st.lists(st.integers(0, T + 3), min_size=L, max_size=L))) for _ in range(B)]
    temp = draw(st.sampled_from([0.1, 0.5, 1.0, 3.0]))
    seed = draw(st.integers(0, 2**16))
    return dict(B=B, H=H, L=L, T=T, d=d, dv=dv, levels=levels, window=window, hop=hop, normalize=normalize,
                q_lens=q_lens, k_lens=k_lens, starts=starts, temp=temp, seed=seed)


def build(p, dtype):
    g = torch.Generator().manual_seed(p["seed"])
    q = (torch.randn(p["B"], p["H"], p["L"], p["d"], generator=g) * p["temp"]).to(dtype).requires_grad_()
    k = torch.randn(p["B"], p["H"], p["T"], p["d"], generator=g).to(dtype).requires_grad_()
    v = torch.randn(p["B"], p["H"], p["T"], p["dv"], generator=g).to(dtype).requires_grad_()
    kw = dict(window=p["window"], hop=p["hop"], levels=p["levels"], normalize=p["normalize"],
              q_lens=torch.tensor(p["q_lens"]), k_lens=torch.tensor(p["k_lens"]),
              window_starts=None if p["starts"] is None else torch.tensor(p["starts"]))
    return q, k, v, kw


@given(problems(), st.sampled_from(BACKENDS), st.sampled_from([torch.float64, torch.float32]))
def test_backend_equals_reference_given_levels(p, backend, dtype):
    q64, k64, v64, kw = build(p, torch.float64)
    ref, ref_level = sawa(q64, k64, v64, backend="reference", return_level=True, **kw)
    q, k, v, _ = build(p, dtype)
    out, level = sawa(q, k, v, backend=backend, return_level=True, force_level=ref_level, **kw)
    assert torch.equal(level, ref_level)
    tol = 1e-9 if dtype == torch.float64 else 5e-5
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol * 10)

    do = torch.randn_like(ref)
    ref_g = torch.autograd.grad(ref, (q64, k64, v64), do, allow_unused=True, materialize_grads=True)
    got_g = torch.autograd.grad(out, (q, k, v), do.to(dtype))
    for a, b in zip(got_g, ref_g):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a.double(), b, atol=tol * 10, rtol=tol * 100)

    # padded rows are exactly zero
    for b in range(p["B"]):
        assert (out[b, :, p["q_lens"][b]:] == 0).all()

    # own decisions agree where the margin is clear of rounding
    with torch.no_grad():
        _, own = sawa(q, k, v, backend=backend, return_level=True, **kw)
    L = p["L"]
    starts = kw["window_starts"] if kw["window_starts"] is not None else (torch.arange(L) * p["hop"]).expand(p["B"], L)
    margins = decision_margins(q64.detach(), k64.detach(), window=p["window"], levels=p["levels"],
                               joint=p["normalize"] == "joint", scale=p["d"] ** -0.5, q_lens=kw["q_lens"],
                               k_lens=kw["k_lens"], starts=starts)
    clear = margins > (1e-12 if dtype == torch.float64 else 1e-5)
    assert torch.equal(own[clear], ref_level[clear])


@pytest.mark.parametrize("backend", BACKENDS)
@given(p=problems(), scale=st.sampled_from([1e-3, 1.0, 50.0, 1e4]))
def test_finite_for_finite_inputs_even_extreme(backend, p, scale):
    q, k, v, kw = build(p, torch.float32)
    with torch.no_grad():
        q.mul_(scale)
    out = sawa(q, k, v, backend=backend, **kw)
    assert torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.skipif("triton" not in BACKENDS, reason="triton on CPU needs TRITON_INTERPRET=1")
@settings(max_examples=max(8, settings().max_examples // 3))
@given(problems(L_range=(17, 40), T_range=(1, 160)))
def test_triton_several_blocks_and_chunks(p):
    """Longer problems for the span kernels: 2-3 query blocks of 16, spans of many 16-frame chunks, jumps
    in the starts that leave chunks no row reaches (skipped), blocks whose rows all start past k_len."""
    q64, k64, v64, kw = build(p, torch.float64)
    ref, ref_level = sawa(q64, k64, v64, backend="torch", return_level=True, **kw)
    out, level = sawa(q64, k64, v64, backend="triton", return_level=True, force_level=ref_level, **kw)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-9)
    do = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (q64, k64, v64), do)
    for a, b in zip(torch.autograd.grad(out, (q64, k64, v64), do), want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=1e-8)
    with torch.no_grad():
        _, own = sawa(q64, k64, v64, backend="triton", return_level=True, **kw)
    assert torch.equal(own, ref_level)  # fp64 in both: ties would need margins below 1e-15
