"""GCPU (SPEC §3) against a plain loop of the paper's equations (1)-(6); the MGRU and GRU alternatives."""

import pytest
import torch
from torch import nn

from mfdr.gcpu import GCPU, MGRU, GRUContext

D, HEADS = 6, 2


def _W(m, name, x):
    return x @ getattr(m, name).weight.T


def gcpu_loop(m: GCPU, z, g, lengths=None, h0=None):
    """Equations (1)-(6) step by step, one sample at a time; padded steps carry h and output 0."""
    B, L, _ = z.shape
    out = torch.zeros_like(z)
    for b in range(B):
        h = torch.zeros(D, dtype=z.dtype) if h0 is None else h0[b]
        n = L if lengths is None else int(lengths[b])
        for t in range(n):
            zt = z[b, t]
            if m.context:
                gt = g[b, t]
                r = torch.sigmoid(_W(m, "W_hr", h) + _W(m, "W_zr", zt) + _W(m, "W_gr", gt) + m.b_r)  # (1)
                zc = torch.tanh(_W(m, "W_zz", zt) + _W(m, "W_hz", r * h) + m.b_z)  # (2)
                gc = torch.tanh(_W(m, "W_gg", gt) + _W(m, "W_hg", r * h) + m.b_g)  # (3)
                hc = zc + gc  # (4)
                u = torch.sigmoid(_W(m, "W_zu", zc) + _W(m, "W_gu", gc) + _W(m, "W_hu", r * h) + m.b_u)  # (5)
            else:  # w/o Context: no W_gr, no g̃, no W_gu
                r = torch.sigmoid(_W(m, "W_hr", h) + _W(m, "W_zr", zt) + m.b_r)
                zc = torch.tanh(_W(m, "W_zz", zt) + _W(m, "W_hz", r * h) + m.b_z)
                hc = zc
                u = torch.sigmoid(_W(m, "W_zu", zc) + _W(m, "W_hu", r * h) + m.b_u)
            h = r * h + u * hc  # (6)
            out[b, t] = h
    return out


def mgru_loop(m: MGRU, z, g, lengths=None):
    """The MGRU of the paper's Fig. 4a: GCPU's r, z̃, g̃, h̃; a GRU's update gate and complementary update."""
    B, L, _ = z.shape
    out = torch.zeros_like(z)
    for b in range(B):
        h = torch.zeros(D, dtype=z.dtype)
        for t in range(L if lengths is None else int(lengths[b])):
            zt, gt = z[b, t], g[b, t]
            r = torch.sigmoid(_W(m, "W_hr", h) + _W(m, "W_zr", zt) + _W(m, "W_gr", gt) + m.b_r)
            zc = torch.tanh(_W(m, "W_zz", zt) + _W(m, "W_hz", r * h) + m.b_z)
            gc = torch.tanh(_W(m, "W_gg", gt) + _W(m, "W_hg", r * h) + m.b_g)
            u = torch.sigmoid(_W(m, "W_zu", zt) + _W(m, "W_gu", gt) + _W(m, "W_hu", h) + m.b_u)
            h = (1 - u) * h + u * (zc + gc)
            out[b, t] = h
    return out


def _randomize_biases(m):
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.startswith("b_"):
                p.normal_()
    return m


def _inputs(B=3, L=7):
    z = torch.randn(B, L, D, dtype=torch.float64)
    g = torch.randn(B, L, D, dtype=torch.float64)
    return z, g, torch.tensor([7, 4, 1])


def test_parameter_names_follow_the_equations():
    names = {n for n, _ in GCPU(D, HEADS).named_parameters() if not n.startswith("mha.")}
    assert names == {"W_hr.weight", "W_zr.weight", "W_gr.weight", "W_zz.weight", "W_hz.weight", "W_gg.weight",
                     "W_hg.weight", "W_zu.weight", "W_gu.weight", "W_hu.weight", "b_r", "b_z", "b_g", "b_u"}
    m = GCPU(D, HEADS)
    assert all(getattr(m, n).bias is None and getattr(m, n).weight.shape == (D, D) for n in ("W_hr", "W_zu"))
    assert isinstance(m.mha, nn.MultiheadAttention)
    no_ctx = {n for n, _ in GCPU(D, HEADS, context=False).named_parameters()}
    assert no_ctx == names - {"W_gr.weight", "W_gg.weight", "W_hg.weight", "W_gu.weight", "b_g"}
    assert GCPU(D, HEADS, context=False).mha is None


@pytest.mark.parametrize("context", [True, False], ids=["context", "no-context"])
@pytest.mark.parametrize("padded", [False, True], ids=["full", "padded"])
def test_recurrence_matches_equations(context, padded):
    m = _randomize_biases(GCPU(D, HEADS, context=context).double())
    z, g, lengths = _inputs()
    lengths = lengths if padded else None
    got = m.recurrence(z, g if context else None, lengths)
    torch.testing.assert_close(got, gcpu_loop(m, z, g, lengths), rtol=1e-12, atol=1e-12)


def test_recurrence_with_h0():
    m = _randomize_biases(GCPU(D, HEADS).double())
    z, g, lengths = _inputs()
    h0 = torch.randn(3, D, dtype=torch.float64)
    torch.testing.assert_close(m.recurrence(z, g, lengths, h0), gcpu_loop(m, z, g, lengths, h0))


def test_no_context_drops_the_g_stream():
    """context=False equals the full cell with every g-stream weight at zero (g̃ = 0, no W_gr / W_gu)."""
    full = _randomize_biases(GCPU(D, HEADS).double())
    bare = GCPU(D, HEADS, context=False).double()
    bare.load_state_dict({k: v for k, v in full.state_dict().items() if k in bare.state_dict()})
    with torch.no_grad():
        for name in ("W_gr", "W_gg", "W_hg", "W_gu"):
            getattr(full, name).weight.zero_()
        full.b_g.zero_()
    z, g, lengths = _inputs()
    torch.testing.assert_close(bare(z, lengths), full.recurrence(z, g, lengths), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bare(z, lengths), bare.recurrence(z, None, lengths))


def test_forward_is_recurrence_of_masked_attention():
    m = _randomize_biases(GCPU(D, HEADS).double())
    z, _, lengths = _inputs()
    pad = torch.arange(7)[None, :] >= lengths[:, None]
    g, _ = m.mha(z, z, z, key_padding_mask=pad)
    torch.testing.assert_close(m.global_context(z, lengths), g)
    torch.testing.assert_close(m(z, lengths), gcpu_loop(m, z, g, lengths))


@pytest.mark.parametrize("cls", [GCPU, MGRU, GRUContext], ids=lambda c: c.__name__)
def test_padding_has_no_influence(cls):
    m = (GRUContext(D) if cls is GRUContext else cls(D, HEADS)).double().eval()
    z, _, lengths = _inputs()
    H = m(z, lengths)
    z2 = z.clone()
    for b, n in enumerate(lengths.tolist()):
        z2[b, n:] = 100 * torch.randn_like(z2[b, n:])
    assert torch.equal(H, m(z2, lengths))
    for b, n in enumerate(lengths.tolist()):
        assert H[b, n:].abs().sum() == 0
        torch.testing.assert_close(m(z[b:b + 1, :n], lengths[b:b + 1])[0], H[b, :n], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cls", [GCPU, MGRU, GRUContext], ids=lambda c: c.__name__)
@pytest.mark.parametrize("bad", [float("nan"), float("-inf"), float("inf")], ids=["nan", "-inf", "inf"])
def test_non_finite_padding_has_no_influence(cls, bad):
    """NaN or Inf in padded steps (the global context's attention weighs them by 0, and 0 * NaN is NaN)
    changes neither the output nor the gradients of z's valid steps and of the weights."""
    m = (GRUContext(D) if cls is GRUContext else cls(D, HEADS)).double()
    z, _, lengths = _inputs()
    padded = torch.arange(z.shape[1])[None, :, None] >= lengths[:, None, None]
    runs = []
    for fill in (0.0, bad):
        x = z.masked_fill(padded, fill).requires_grad_()
        m.zero_grad()
        H = m(x, lengths)
        (H * torch.linspace(-1, 1, H.numel(), dtype=H.dtype).view_as(H)).sum().backward()
        runs.append((H, x.grad.masked_fill(padded, 0.0), {n: p.grad.clone() for n, p in m.named_parameters()}))
    (H0, dz0, dw0), (H1, dz1, dw1) = runs
    assert torch.equal(H0, H1) and torch.equal(dz0, dz1)
    assert all(torch.equal(dw0[n], dw1[n]) for n in dw0), [n for n in dw0 if not torch.equal(dw0[n], dw1[n])]
    assert torch.isfinite(H1).all() and all(torch.isfinite(g).all() for g in dw1.values())


def test_mgru_matches_its_equations():
    m = _randomize_biases(MGRU(D, HEADS).double())
    z, g, lengths = _inputs()
    want = mgru_loop(m, z, g, lengths)
    torch.testing.assert_close(m.recurrence(z, g, lengths), want, rtol=1e-12, atol=1e-12)
    assert {n for n, _ in m.named_parameters()} == {n for n, _ in GCPU(D, HEADS).named_parameters()}


def test_mgru_without_context():
    m = _randomize_biases(MGRU(D, HEADS, context=False).double())
    full = MGRU(D, HEADS).double()
    full.load_state_dict(m.state_dict(), strict=False)
    with torch.no_grad():
        for name in ("W_gr", "W_gg", "W_hg", "W_gu"):
            getattr(full, name).weight.zero_()
        full.b_g.zero_()
    z, g, lengths = _inputs()
    # g̃ = tanh(0) = 0, so the candidate is z̃ alone, as with context=False
    torch.testing.assert_close(m(z, lengths), full.recurrence(z, g, lengths), rtol=1e-12, atol=1e-12)


def test_gru_context_is_a_gru_on_z():
    m = GRUContext(D).double()
    gru = torch.nn.GRU(D, D, batch_first=True).double()
    gru.load_state_dict(m.gru.state_dict())  # same parameter names and shapes as nn.GRU
    z, _, lengths = _inputs()
    ref, _ = gru(z)
    H = m(z, lengths)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(H[b, :n], ref[b, :n])


@pytest.mark.parametrize("cls", [GCPU, MGRU], ids=lambda c: c.__name__)
def test_gradcheck(cls):
    m = _randomize_biases(cls(4, 2).double())
    z = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z, g: m.recurrence(z, g, torch.tensor([3, 2])), (z, g))


def test_errors():
    with pytest.raises(ValueError, match=r"dim \(6\) must be divisible by heads \(4\)"):
        GCPU(6, 4)
    m = GCPU(D, HEADS)
    with pytest.raises(ValueError, match=r"z must have shape \(B, L, 6\), got \(2, 3, 5\)"):
        m(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"g must have the shape of z"):
        m.recurrence(torch.randn(2, 3, D), None)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 6\)"):
        m.recurrence(torch.randn(2, 3, D), torch.randn(2, 3, D), h0=torch.zeros(D))
    with pytest.raises(ValueError, match=r"lengths must have shape \(2,\)"):
        m(torch.randn(2, 3, D), torch.tensor([3]))


@pytest.mark.parametrize("backend", ["reference", "torch", "cpp", "triton"])
@pytest.mark.parametrize("context", [True, False], ids=["context", "no-context"])
def test_recurrence_on_every_backend(backend, context):
    """GCPU.recurrence runs the fused op on the module's backend: the equations' values, and the gradients
    of the reference backend (autograd through the readable loop) for z, g, h0 and every parameter."""
    from mfdr_kernels.gcpu import CHECKS

    if CHECKS[backend](torch.empty(1, dtype=torch.float64)):
        pytest.skip(CHECKS[backend](torch.empty(1, dtype=torch.float64)))
    m = _randomize_biases(GCPU(D, HEADS, context=context, backend=backend).double())
    z, g, lengths = _inputs()
    z, g, h0 = z.requires_grad_(), g.requires_grad_(), torch.randn(3, D, dtype=torch.float64, requires_grad=True)
    H = m.recurrence(z, g if context else None, lengths, h0)
    torch.testing.assert_close(H, gcpu_loop(m, z, g, lengths, h0), rtol=1e-12, atol=1e-12)
    leaves = [z, h0, *(p for n, p in m.named_parameters() if not n.startswith("mha."))] + ([g] if context else [])
    grad_H = torch.randn_like(H)
    got = torch.autograd.grad(H, leaves, grad_H)
    m.backend = "reference"
    want = torch.autograd.grad(m.recurrence(z, g if context else None, lengths, h0), leaves, grad_H)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, rtol=1e-12, atol=1e-12)


def test_backend_is_checked_and_shown():
    with pytest.raises(ValueError, match=r"backend must be one of \('triton', 'cpp', 'torch', 'reference'\)"):
        GCPU(D, HEADS, backend="cuda")
    assert "backend='torch'" in repr(GCPU(D, HEADS, backend="torch"))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_context_attention_paths_agree_with_multihead_attention(dtype):
    """The CPU path (matrix products, fp32/fp64 scores) and the GPU's (scaled_dot_product_attention, taken
    under a dispatch mode such as the op counter) both equal nn.MultiheadAttention, gradients included;
    a row with no valid key attends to all (finite) instead of giving NaN."""
    from mfdr.gcpu import multi_head_attention
    from mfdr_kernels.counting import DispatchCounter

    torch.manual_seed(0)
    m = _randomize_biases(GCPU(8, 2)).to(dtype)
    z = torch.randn(3, 7, 8, dtype=dtype, requires_grad=True)
    valid = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    want, _ = m.mha(z, z, z, key_padding_mask=~valid, need_weights=False)
    (gz_want,) = torch.autograd.grad(want.sum(), z)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    for counted in (False, True):
        with DispatchCounter() if counted else torch.enable_grad():
            got = multi_head_attention(m.mha, z, z, valid)
            (gz,) = torch.autograd.grad(got.sum(), z)
        torch.testing.assert_close(got, want, **tol)
        torch.testing.assert_close(gz, gz_want, **tol)
        none = multi_head_attention(m.mha, z, z, torch.zeros_like(valid))
        assert torch.isfinite(none).all()


def test_context_attention_under_bf16_autocast_keeps_fp32_scores():
    """Under CPU bf16 autocast the context attention (paper's shape) is as close to the fp64 one as
    torch's fused bf16 attention is: fp32 scores (bf16 scores measured 1.38x the fused error here)."""
    from mfdr.gcpu import multi_head_attention

    torch.manual_seed(1)
    m = GCPU(256, 4).double()
    z = 2 * torch.randn(4, 50, 256, dtype=torch.float64)
    valid = torch.arange(50)[None, :] < torch.tensor([50, 13, 7, 2])[:, None]
    want = multi_head_attention(m.mha, z, z, valid)
    m32 = m.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = multi_head_attention(m32.mha, z.float(), z.float(), valid)
        fused, _ = m32.mha(z.float(), z.float(), z.float(), key_padding_mask=~valid, need_weights=False)
    assert got.dtype == torch.bfloat16
    err, fused_err = ((x.double() - want).abs().max().item() for x in (got, fused))
    assert err <= 1.1 * fused_err, (err, fused_err)


def test_context_attention_compiles_to_the_cpu_products():
    """torch.compile on the CPU traces the same matrix products as eager (not the CPU's fused attention,
    whose bf16 backward is slow): one graph, no scaled_dot_product_attention in it, the eager result."""
    from mfdr.gcpu import multi_head_attention

    torch._dynamo.reset()
    torch.manual_seed(2)
    m = GCPU(8, 2).double()
    z = torch.randn(3, 7, 8, dtype=torch.float64)
    valid = torch.arange(7)[None, :] < torch.tensor([7, 4, 2])[:, None]
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    f = torch.compile(lambda z: multi_head_attention(m.mha, z, z, valid), backend=backend, fullgraph=True)
    torch.testing.assert_close(f(z), multi_head_attention(m.mha, z, z, valid), rtol=0, atol=0)
    targets = [str(n.target) for g in graphs for n in g.graph.nodes]
    assert len(graphs) == 1 and not any("scaled_dot_product" in t for t in targets), targets
