"""The ``torch`` and ``cpp`` SAWA backends against the float64 reference (SPEC §1).

Backends are compared on the same decisions (``force_level`` = the reference's levels); the
levels themselves must agree on every row whose decision margin exceeds the dtype's rounding.
"""

import dataclasses
import zlib

import pytest
import torch

from mfdr_kernels import sliding_adaptive_window_attention as sawa
from mfdr_kernels.sawa.reference import decision_margins

BACKENDS = ["torch", "cpp"]
# per-dtype tolerances (atol, rtol) for the output and for each gradient
TOL = {
    torch.float64: {"out": (1e-10, 1e-9), "grad": (1e-9, 1e-8)},
    torch.float32: {"out": (2e-5, 1e-4), "grad": (1e-4, 1e-3)},
}
MARGIN = {torch.float64: 1e-12, torch.float32: 1e-5}


@dataclasses.dataclass
class Case:
    B: int = 2
    H: int = 2
    L: int = 9
    T: int = 47
    d: int = 8
    dv: int = 8
    window: int = 10
    hop: int | None = None
    levels: int = 2
    normalize: str = "segment"
    q_lens: tuple | None = None
    k_lens: tuple | None = None
    starts: str | None = None  # None: i * hop; "random": sorted random starts; "stretch"
    temp: float = 0.6  # input scale: small enough that all three levels occur

    @property
    def id(self):
        extra = "".join(f"-{k}" for k, v in (("qlen", self.q_lens), ("klen", self.k_lens), ("st", self.starts)) if v)
        return (f"B{self.B}-H{self.H}-L{self.L}-T{self.T}-d{self.d}-dv{self.dv}-w{self.window}-lv{self.levels}"
                f"-{self.normalize}{extra}")


CASES = [
    Case(),
    Case(normalize="joint"),
    Case(B=1, H=1, L=50, T=255, d=16, dv=16, window=10, hop=5),  # the paper's geometry, small d
    Case(H=3, L=11, T=63, d=12, dv=5, window=6),
    Case(L=13, T=31, window=4, hop=3, q_lens=(13, 7), k_lens=(31, 20)),
    Case(L=13, T=31, window=4, hop=3, q_lens=(13, 7), k_lens=(31, 20), normalize="joint"),
    Case(L=10, T=40, window=6, starts="random", q_lens=(10, 6), k_lens=(40, 33)),
    Case(L=10, T=40, window=6, starts="random", normalize="joint", k_lens=(12, 40)),
    Case(levels=1),
    Case(levels=0, window=7, hop=3),
    Case(L=9, T=47, window=8, temp=2.0),
]


def make(case: Case, dtype, requires_grad=True):
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))  # stable across runs: replayable
    q = (torch.randn(case.B, case.H, case.L, case.d, generator=g) * case.temp).to(dtype)
    k = torch.randn(case.B, case.H, case.T, case.d, generator=g).to(dtype)
    v = torch.randn(case.B, case.H, case.T, case.dv, generator=g).to(dtype)
    do = torch.randn(case.B, case.H, case.L, case.dv, generator=g).to(dtype)
    kw = dict(window=case.window, hop=case.hop, levels=case.levels, normalize=case.normalize)
    if case.q_lens:
        kw["q_lens"] = torch.tensor(case.q_lens)
    if case.k_lens:
        kw["k_lens"] = torch.tensor(case.k_lens)
    if case.starts == "random":
        kw["window_starts"] = torch.sort(torch.randint(0, case.T - 2, (case.B, case.L), generator=g), dim=1).values
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, do, kw


def run(q, k, v, do, kw, backend, force_level=None):
    out, level = sawa(q, k, v, backend=backend, return_level=True, force_level=force_level, **kw)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out, level, grads


@pytest.fixture(scope="module")
def references():
    cache = {}

    def get(case):
        if case.id not in cache:
            q, k, v, do, kw = make(case, torch.float64)
            cache[case.id] = run(q, k, v, do, kw, "reference")
        return cache[case.id]

    return get


def test_cases_cover_every_level(references):
    seen = set()
    for case in CASES:
        seen |= set(references(case)[1].unique().tolist())
    assert seen == {0, 1, 2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_backend_matches_reference(case, backend, dtype, references):
    ref_out, ref_level, ref_grads = references(case)
    q, k, v, do, kw = make(case, dtype)
    out, level, grads = run(q, k, v, do, kw, backend, force_level=ref_level)
    assert torch.equal(level, ref_level)
    atol, rtol = TOL[dtype]["out"]
    torch.testing.assert_close(out.double(), ref_out, atol=atol, rtol=rtol)
    atol, rtol = TOL[dtype]["grad"]
    for name, g, rg in zip("qkv", grads, ref_grads):
        torch.testing.assert_close(g.double(), rg, atol=atol, rtol=rtol, msg=lambda m, n=name: f"d{n}: {m}")

    # decisions made by the backend itself agree wherever the margin is clear
    with torch.no_grad():
        _, own_level = sawa(q, k, v, backend=backend, return_level=True, **kw)
    q64, k64 = q.detach().double(), k.detach().double()
    B, _, L, _ = q.shape
    T = k.shape[2]
    hop = case.hop or case.window // 2
    starts = kw.get("window_starts", (torch.arange(L) * hop).expand(B, L))
    margins = decision_margins(
        q64, k64, window=case.window, levels=case.levels, joint=case.normalize == "joint",
        scale=case.d ** -0.5, q_lens=kw.get("q_lens", torch.full((B,), L)),
        k_lens=kw.get("k_lens", torch.full((B,), T)), starts=starts)
    clear = margins > MARGIN[dtype]
    assert clear.float().mean() > 0.9  # the test is about something
    assert torch.equal(own_level[clear], ref_level[clear])


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
@pytest.mark.parametrize("normalize", ["segment", "joint"])
def test_gradcheck(backend, normalize):
    torch.manual_seed(3)
    q = (torch.randn(1, 2, 5, 3, dtype=torch.float64) * 0.5).requires_grad_()
    k = torch.randn(1, 2, 17, 3, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 17, 2, dtype=torch.float64, requires_grad=True)
    kw = dict(window=4, normalize=normalize, k_lens=[15], q_lens=[4])
    _, level = sawa(q, k, v, backend="reference", return_level=True, **kw)
    assert level.max() > 0
    # fixed levels: the decisions are piecewise constant and not differentiated
    fn = lambda q, k, v: sawa(q, k, v, backend=backend, force_level=level, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), eps=1e-6, atol=1e-7)


def test_padded_rows_and_empty_windows_are_zero_with_zero_gradients():
    q = torch.randn(2, 1, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 20, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 20, 4, dtype=torch.float64, requires_grad=True)
    starts = torch.tensor([[0, 2, 4, 30, 30, 30], [0, 0, 1, 1, 2, 2]])
    for backend in ["reference", *BACKENDS]:
        out = sawa(q, k, v, window=4, window_starts=starts, q_lens=[6, 3], k_lens=[20, 0], backend=backend)
        assert torch.isfinite(out).all()
        assert (out[0, :, 3:] == 0).all() and (out[1] == 0).all()
        dq, dk, dv = torch.autograd.grad(out.sum(), (q, k, v))
        assert (dq[0, :, 3:] == 0).all() and (dq[1] == 0).all() and (dk[1] == 0).all() and (dv[1] == 0).all()
        assert all(torch.isfinite(g).all() for g in (dq, dk, dv))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sizes(backend):
    for L, T in [(0, 5), (4, 0)]:
        q = torch.randn(1, 1, L, 2, requires_grad=True)
        k = torch.randn(1, 1, T, 2, requires_grad=True)
        v = torch.randn(1, 1, T, 3, requires_grad=True)
        out = sawa(q, k, v, window=2, backend=backend)
        assert out.shape == (1, 1, L, 3) and (out == 0).all()
        out.sum().backward()
        assert q.grad.shape == q.shape and k.grad.shape == k.shape


def test_noncontiguous_and_expanded_inputs():
    q = torch.randn(2, 6, 1, 8).transpose(1, 2)  # (B, H=1, L=6, d) non-contiguous
    k = torch.randn(1, 1, 30, 8).expand(2, 1, 30, 8)  # stride-0 batch
    v = torch.randn(2, 30, 1, 5).transpose(1, 2)
    ref = sawa(q.double(), k.double(), v.double(), window=4, backend="reference")
    for backend in BACKENDS:
        torch.testing.assert_close(sawa(q, k, v, window=4, backend=backend).double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_cpp_reads_head_views_without_copies(dtype):
    """cpp on the heads of (B, N, H*d) projections (x.view(B, N, H, d).transpose(1, 2), as SAWALayer passes
    them): the same output and gradients, bit for bit, as on contiguous copies, the gradients in the
    inputs' own layout (their transposes back are free), and no copy of q, k, v or grad_out dispatched."""
    from mfdr_kernels.counting import DispatchCounter

    g = torch.Generator().manual_seed(7)
    B, H, L, T, d = 3, 4, 9, 41, 8
    heads = lambda N, w: torch.randn(B, N, H * w, generator=g).to(dtype).view(B, N, H, w).transpose(1, 2)
    q, k, v = heads(L, d), heads(T, d), heads(T, 5)
    q_, k_, v_ = (x.detach().requires_grad_() for x in (q, k, v))
    grad = torch.randn(B, L, H, 5, generator=g).to(dtype).transpose(1, 2)  # a reshape's gradient, transposed
    lens, klens = torch.tensor([9, 5, 1]), torch.tensor([41, 30, 12])
    kw = dict(window=10, hop=4, q_lens=lens, k_lens=klens, backend="cpp")

    copies = lambda counter: {op: n for op, n in counter.by_op.items() if op in ("aten.clone", "aten.copy_")}
    with DispatchCounter() as viewed:
        out = sawa(q_, k_, v_, **kw)
        dq, dk, dv = torch.autograd.grad(out, (q_, k_, v_), grad)
    assert (dq.stride(), dk.stride(), dv.stride()) == (q.stride(), k.stride(), v.stride())
    c = [x.contiguous().requires_grad_() for x in (q, k, v)]
    grad_c = grad.contiguous()
    with DispatchCounter() as contiguous:  # the op's own copies (window starts): the same in both
        want = sawa(*c, **kw)
        wants = torch.autograd.grad(want, c, grad_c)
    assert copies(viewed) == copies(contiguous), (viewed.by_op, contiguous.by_op)
    assert torch.equal(out, want)
    for got, ref in zip((dq, dk, dv), wants):
        assert torch.equal(got, ref)


def test_opcheck():
    q = torch.randn(2, 2, 6, 4, requires_grad=True)
    k = torch.randn(2, 2, 25, 4, requires_grad=True)
    v = torch.randn(2, 2, 25, 3, requires_grad=True)
    lens = torch.tensor([6, 4])
    klens = torch.tensor([25, 18])
    starts = (torch.arange(6) * 2).expand(2, 6).contiguous()
    for backend in BACKENDS:
        args = (q, k, v, lens, klens, starts, None, 4, 2, False, 0.5, backend)
        torch.library.opcheck(torch.ops.mfdr_kernels.sawa_fwd_op.default, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph(backend):
    torch._dynamo.reset()
    q = torch.randn(2, 1, 8, 4, requires_grad=True)
    k = torch.randn(2, 1, 40, 4, requires_grad=True)
    v = torch.randn(2, 1, 40, 4, requires_grad=True)
    lens = torch.tensor([40, 31])

    def f(q, k, v):
        return sawa(q * 2, k, v, window=10, hop=5, k_lens=lens, backend=backend).sum(-1)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    torch.testing.assert_close(out, f(q, k, v))
    g1 = torch.autograd.grad(out.sum(), (q, k, v))
    g2 = torch.autograd.grad(f(q, k, v).sum(), (q, k, v))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("case", [CASES[0], CASES[1], CASES[4], CASES[6], CASES[8]], ids=lambda c: c.id)
def test_cpp_saves_the_weights_per_slot(case):
    """The cpp forward's third output, which its backward reads instead of recomputing the softmaxes: row i's
    weight of frame s_i - ω + slot at ``slot``, the dense attention map's entries on the span, 0 elsewhere."""
    from mfdr_kernels.sawa import op

    q, k, v, _, kw = make(case, torch.float64, requires_grad=False)
    window, levels, joint, scale, q_lens, k_lens, starts, _ = op._prepare(
        q, k, v, kw["window"], kw.get("hop"), kw["levels"], kw["normalize"], None, kw.get("q_lens"),
        kw.get("k_lens"), kw.get("window_starts"), None)
    q_lens, k_lens, starts, _ = op._sanitized(q_lens, k_lens, starts, None, case.L, case.T, levels)
    _, level, weights = op.sawa_fwd_op(q, k, v, q_lens, k_lens, starts, None, window, levels, joint, scale, "cpp")
    att, want_level = op.sawa_attention_map(q, k, return_level=True, **kw)
    assert torch.equal(level, want_level)
    slots = torch.arange(3 * window)
    frame = starts[:, None, :, None] - window + slots  # (B, 1, L, 3ω)
    inside = (frame >= 0) & (frame < case.T)
    want = torch.where(inside, att.gather(3, frame.clamp(0, case.T - 1).expand(-1, case.H, -1, -1)), 0.0)
    assert weights.shape == (case.B, case.H, case.L, 3 * window) and weights.dtype == torch.float64
    torch.testing.assert_close(weights, want, atol=1e-12, rtol=1e-12)


def test_cpp_backward_checks_and_clamps_the_saved_weights():
    """The C++ backward takes the weights from its caller: a wrong shape or dtype is refused by name, and
    weights on frames outside [0, k_len) (which no forward writes) are never read there."""
    from mfdr_kernels import _ext

    _ext.load()
    q, k, v, do, _ = make(Case(), torch.float32, requires_grad=False)
    lens, klens = torch.tensor([9, 9]), torch.tensor([47, 20])
    starts = (torch.arange(9) * 5).expand(2, 9).contiguous()
    args = (do, q, k, v, lens, klens, starts)
    for bad in (torch.zeros(2, 2, 9, 29), torch.zeros(2, 2, 9, 30, dtype=torch.float64),
                torch.zeros(2, 2, 9, 60)[..., ::2]):
        with pytest.raises(RuntimeError, match="weights must be the forward's"):
            torch.ops.mfdr_C.sawa_bwd_cpu(*args, bad, 10, False, 0.5)
    dq, dk, dv = torch.ops.mfdr_C.sawa_bwd_cpu(*args, torch.ones(2, 2, 9, 30), 10, False, 0.5)
    assert all(t.isfinite().all() for t in (dq, dk, dv))
    assert not dk[1, :, 20:].any() and not dv[1, :, 20:].any()  # past k_len: no query reads them
    with pytest.raises(ValueError, match="saved="):
        from mfdr_kernels.sawa import cpp_impl

        cpp_impl.sawa_bwd(*args, torch.zeros(2, 2, 9, dtype=torch.int8), 10, False, 0.5)
