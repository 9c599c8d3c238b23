"""The reference GCPU recurrence (the source of truth) against the paper's equations written out element
by element, and the properties SPEC §3 fixes: padded steps carry h and output 0, h0 continues a
sequence, and "w/o Context" is the cell without its g stream."""

import math

import pytest
import torch

from mfdr_kernels.gcpu.reference import gcpu_reference

ARGS = ("x_r", "x_z", "x_g", "W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu", "b_u")


def _inputs(B=3, L=6, D=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = {n: torch.randn(B, L, D, generator=g, dtype=torch.float64) for n in ARGS[:3]}
    W = {n: torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5 for n in ARGS[3:9]}
    return {**x, **W, "b_u": torch.randn(D, generator=g, dtype=torch.float64)}, torch.randn(
        B, D, generator=g, dtype=torch.float64)


def _ref(a, lengths, h0):
    return gcpu_reference(*(a[n] for n in ARGS), lengths, h0)


def test_one_step_element_by_element():
    """Equations (1)-(6) for one sample, with plain Python floats: (W x)_i = Σ_j W[i][j] x_j."""
    a, h0 = _inputs(B=1, L=2, D=3)
    H = _ref(a, torch.tensor([2]), h0)
    sig = lambda v: 1 / (1 + math.exp(-v))
    L_ = lambda name: a[name].tolist()
    h = h0[0].tolist()
    for t in range(2):
        mv = lambda W, x: [sum(W[i][j] * x[j] for j in range(3)) for i in range(3)]
        r = [sig(L_("x_r")[0][t][i] + mv(L_("W_hr"), h)[i]) for i in range(3)]  # (1)
        rh = [r[i] * h[i] for i in range(3)]
        z = [math.tanh(L_("x_z")[0][t][i] + mv(L_("W_hz"), rh)[i]) for i in range(3)]  # (2)
        gg = [math.tanh(L_("x_g")[0][t][i] + mv(L_("W_hg"), rh)[i]) for i in range(3)]  # (3)
        cand = [z[i] + gg[i] for i in range(3)]  # (4)
        wz, wg, wh = mv(L_("W_zu"), z), mv(L_("W_gu"), gg), mv(L_("W_hu"), rh)
        u = [sig(wz[i] + wg[i] + wh[i] + a["b_u"][i].item()) for i in range(3)]  # (5)
        h = [rh[i] + u[i] * cand[i] for i in range(3)]  # (6)
        assert H[0, t].tolist() == pytest.approx(h, abs=1e-12)


def test_padded_steps_carry_h_and_output_zero():
    a, h0 = _inputs()
    lengths = torch.tensor([6, 3, 0])
    H = _ref(a, lengths, h0)
    for b, n in enumerate(lengths.tolist()):
        assert not H[b, n:].any()
        alone = {k: (v[b:b + 1, :n] if v.dim() == 3 else v) for k, v in a.items()}
        torch.testing.assert_close(H[b:b + 1, :n], _ref(alone, torch.tensor([n]), h0[b:b + 1]), atol=1e-14, rtol=0)


def test_h0_continues_a_sequence():
    """Running steps [0, k) and then [k, L) from h0 = H[:, k-1] is running [0, L) at once."""
    a, h0 = _inputs()
    full = torch.tensor([6, 6, 6])
    H = _ref(a, full, h0)
    first = {k: (v[:, :2] if v.dim() == 3 else v) for k, v in a.items()}
    rest = {k: (v[:, 2:] if v.dim() == 3 else v) for k, v in a.items()}
    torch.testing.assert_close(H[:, :2], _ref(first, full.clamp(max=2), h0), atol=0, rtol=0)
    torch.testing.assert_close(H[:, 2:], _ref(rest, full - 2, H[:, 1]), atol=1e-15, rtol=0)


def test_without_context_is_the_cell_without_its_g_stream():
    """context=False equals the full cell with g̃ = 0 (x_g = 0 and W_hg = 0; W_gu then multiplies zeros)."""
    a, h0 = _inputs()
    lengths = torch.tensor([6, 4, 1])
    bare = dict(a, x_g=None, W_hg=None, W_gu=None)
    zeroed = dict(a, x_g=torch.zeros_like(a["x_g"]), W_hg=torch.zeros_like(a["W_hg"]))
    torch.testing.assert_close(_ref(bare, lengths, h0), _ref(zeroed, lengths, h0), atol=0, rtol=0)
    assert not torch.equal(_ref(bare, lengths, h0), _ref(a, lengths, h0))


def test_gradients_flow_to_every_input():
    a, h0 = _inputs(B=2, L=3, D=3)
    leaves = {k: v.requires_grad_() for k, v in {**a, "h0": h0}.items()}
    H = _ref(leaves, torch.tensor([3, 2]), leaves["h0"])
    grads = torch.autograd.grad(H.sum(), list(leaves.values()))
    assert all(g.abs().sum() > 0 for g in grads)
    assert torch.autograd.gradcheck(lambda *t: _ref(dict(zip(leaves, t)), torch.tensor([3, 2]), t[-1]),
                                    tuple(leaves.values()))
