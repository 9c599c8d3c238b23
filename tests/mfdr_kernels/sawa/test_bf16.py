"""bf16 in the C++ SAWA kernels (issue #15): bf16 loads and stores, fp32 accumulation and decisions.

Flash-attention's rule: against the float64 reference on the same (rounded) inputs, the error of the
``cpp`` backend in a low precision must be at most ``factor`` times the error of the ``torch`` backend
run in that precision (plus a floor far below the dtype's rounding), for the output and each gradient.
Both backends take the reference's levels (``force_level``); the ``cpp`` backend's own decisions must
then match the reference on every row whose margin is clear of fp32 rounding: the kernel decides on
fp32 scores, not on bf16-rounded ones.
"""

import dataclasses

import pytest
import torch

from mfdr_kernels import sliding_adaptive_window_attention as sawa
from mfdr_kernels.sawa import op
from mfdr_kernels.sawa.reference import decision_margins
from tests.low_precision import DTYPES, TOL, record_backends

# decisions are taken on fp32 scores in both dtypes: rows clear of fp32 rounding must agree
MARGIN = {torch.bfloat16: 1e-5, torch.float32: 1e-5}


@dataclasses.dataclass
class Case:
    B: int = 2
    H: int = 2
    L: int = 9
    T: int = 47
    d: int = 8
    dv: int = 8
    window: int = 10
    levels: int = 2
    normalize: str = "segment"
    q_lens: tuple | None = None
    k_lens: tuple | None = None
    random_starts: bool = False
    temp: float = 0.6  # query scale: flat enough base windows for all three levels to occur

    @property
    def id(self):
        extra = "".join(f"-{k}" for k, v in (("qlen", self.q_lens), ("klen", self.k_lens),
                                             ("starts", self.random_starts)) if v)
        return (f"B{self.B}-H{self.H}-L{self.L}-T{self.T}-d{self.d}-dv{self.dv}-w{self.window}-lv{self.levels}"
                f"-{self.normalize}{extra}")


# head dims over the kernels' vector paths: whole 128-wide vdpbf16ps blocks (256), 32-wide steps and a
# masked tail (67, 45), a tail alone (8); combine() in chunks of 32, then 8, then scalars (45, 67)
CASES = [
    Case(B=1, H=1, L=50, T=255, d=256, dv=256, temp=0.08),  # the paper's geometry (B and H cut)
    Case(d=67, dv=45, normalize="joint"),
    Case(H=1, L=13, T=40, d=67, dv=45, window=6, q_lens=(13, 7), k_lens=(40, 25)),
    Case(L=10, T=40, d=32, dv=40, window=6, random_starts=True, q_lens=(10, 6), k_lens=(40, 33)),
    Case(),
    Case(levels=1, d=16, dv=24),
    Case(levels=0, window=7, d=40, dv=33),
]


def make(case: Case, dtype):
    g = torch.Generator().manual_seed(sum(map(ord, case.id)))
    q = torch.randn(case.B, case.H, case.L, case.d, generator=g) * case.temp
    k = torch.randn(case.B, case.H, case.T, case.d, generator=g)
    v = torch.randn(case.B, case.H, case.T, case.dv, generator=g)
    do = torch.randn(case.B, case.H, case.L, case.dv, generator=g)
    kw = dict(window=case.window, levels=case.levels, normalize=case.normalize)
    if case.q_lens:
        kw["q_lens"] = torch.tensor(case.q_lens)
    if case.k_lens:
        kw["k_lens"] = torch.tensor(case.k_lens)
    if case.random_starts:
        kw["window_starts"] = torch.sort(torch.randint(0, case.T - 2, (case.B, case.L), generator=g), dim=1).values
    return [t.to(dtype) for t in (q, k, v, do)], kw


def run(q, k, v, do, kw, backend, force_level=None):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    out, level = sawa(q, k, v, backend=backend, return_level=True, force_level=force_level, **kw)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), do)), level


def max_error(got, want):
    return float((got.double() - want).abs().max())


@pytest.fixture(scope="module")
def reference():
    """The float64 reference on the bf16-rounded inputs of a case (exact in float64): rounding the inputs
    is no error of either backend."""
    cache = {}

    def get(case):
        if case.id not in cache:
            (q, k, v, do), kw = make(case, torch.bfloat16)
            cache[case.id] = run(q.double(), k.double(), v.double(), do.double(), kw, "reference")
        return cache[case.id]

    return get


def test_cases_cover_every_level(reference):
    seen = set()
    for case in CASES:
        seen |= set(reference(case)[1].unique().tolist())
    assert seen == {0, 1, 2}


@DTYPES
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpp_within_twice_the_torch_error(case, dtype, reference):
    ref, ref_level = reference(case)
    (q, k, v, do), kw = make(case, torch.bfloat16)
    q, k, v, do = (t.to(dtype) for t in (q, k, v, do))  # the same values in both dtypes
    cpp, _ = run(q, k, v, do, kw, "cpp", force_level=ref_level)
    torch_, _ = run(q, k, v, do, kw, "torch", force_level=ref_level)
    tol = TOL[dtype]
    for name, c, t, r in zip(("out", "dq", "dk", "dv"), cpp, torch_, ref):
        assert c.dtype == dtype and c.shape == r.shape, name
        err_cpp, err_torch = max_error(c, r), max_error(t, r)
        assert err_torch > 0, f"{name}: the torch backend is exact here; the comparison says nothing"
        assert err_cpp <= tol["factor"] * err_torch + tol["atol"], (
            f"{name}: cpp error {err_cpp:.3g} > {tol['factor']} x torch error {err_torch:.3g} + {tol['atol']:g}")


@DTYPES
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_cpp_decisions_agree_where_the_margin_is_clear(case, dtype, reference):
    _, ref_level = reference(case)
    (q, k, v, _), kw = make(case, torch.bfloat16)
    with torch.no_grad():
        _, level = sawa(q.to(dtype), k.to(dtype), v.to(dtype), backend="cpp", return_level=True, **kw)
    B, _, L, _ = q.shape
    T = k.shape[2]
    starts = kw.get("window_starts", (torch.arange(L) * (case.window // 2)).expand(B, L))
    margins = decision_margins(
        q.double(), k.double(), window=case.window, levels=case.levels, joint=case.normalize == "joint",
        scale=case.d ** -0.5, q_lens=kw.get("q_lens", torch.full((B,), L)),
        k_lens=kw.get("k_lens", torch.full((B,), T)), starts=starts)
    clear = margins > MARGIN[dtype]
    assert clear.float().mean() > 0.9  # the test is about something
    assert torch.equal(level[clear], ref_level[clear])


def test_bf16_cpu_tensors_run_the_cpp_kernel(monkeypatch):
    """The default backend of bf16 CPU tensors (what autocast produces) is the C++ kernel, forward and
    backward, not the torch fallback."""
    calls = record_backends(monkeypatch, op)
    (q, k, v, do), kw = make(Case(), torch.bfloat16)
    q.requires_grad_()
    out = sawa(q, k, v, **kw)
    assert out.dtype == torch.bfloat16
    out.backward(do)
    assert calls == ["cpp", "cpp"] and q.grad.dtype == torch.bfloat16


def test_autocast_runs_the_cpp_kernel_in_bf16(monkeypatch):
    """Under CPU autocast (bf16) float32 inputs are cast to bf16 and take the C++ kernel: the same output
    as an explicit bf16 call, float32 gradients for the float32 inputs."""
    calls = record_backends(monkeypatch, op)
    (q, k, v, do), kw = make(Case(d=40, dv=24), torch.float32)
    q.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sawa(q, k, v, **kw)
    out.backward(do.bfloat16())
    assert calls == ["cpp", "cpp"] and q.grad.dtype == torch.float32
    assert torch.equal(out, sawa(q.detach().bfloat16(), k.bfloat16(), v.bfloat16(), backend="cpp", **kw))


def test_opcheck_bf16():
    (q, k, v, _), _ = make(Case(d=40, dv=24), torch.bfloat16)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    lens, klens = torch.tensor([9, 6]), torch.tensor([47, 30])
    starts = (torch.arange(9) * 5).expand(2, 9).contiguous()
    torch.library.opcheck(op.sawa_fwd_op, (q, k, v, lens, klens, starts, None, 10, 2, False, 40 ** -0.5, "cpp"))
