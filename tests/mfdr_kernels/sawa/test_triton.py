"""Triton SAWA against the reference (SPEC §1).

On the CPU the kernels run under ``TRITON_INTERPRET=1`` (set by ``tests/conftest.py``): tiny shapes,
fp64 and fp32. On CUDA (skipped without it): the same cases, real sizes, fp16/bf16 against a
per-dtype tolerance table, the atomic dk/dv flavour and ``torch.compile``.

Backends are compared given the same levels (``force_level=``); levels themselves must agree on
every row whose decision margin is clear of the dtype's rounding (SPEC §1 "Ties").
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import pytest
import torch

from mfdr_kernels import _env
from mfdr_kernels import sliding_adaptive_window_attention as sawa
from mfdr_kernels.sawa import reference
from mfdr_kernels.sawa.op import CHECKS

CUDA = torch.cuda.is_available()
# Under TRITON_INTERPRET=1 even CUDA tensors would run through the (CPU) interpreter, at real sizes.
requires_cuda = pytest.mark.skipif(not CUDA or _env.triton_interpret(),
                                   reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
_cpu_why = CHECKS["triton"](torch.empty(1, dtype=torch.float64))
requires_interpreter = pytest.mark.skipif(_cpu_why is not None, reason=f"triton on CPU: {_cpu_why}")


@dataclass(frozen=True)
class Case:
    B: int
    H: int
    L: int
    T: int
    w: int
    levels: int
    normalize: str
    d: int = 8
    dv: int = 8
    hop: int | None = None
    q_lens: tuple | None = None
    k_lens: tuple | None = None
    starts: tuple | None = None  # window_starts rows; None = i * hop
    q_scale: float = 0.4  # small scores: near-uniform windows, so every level occurs

    @property
    def id(self) -> str:
        extra = ("-lens" if self.q_lens or self.k_lens else "") + ("-starts" if self.starts else "")
        return f"B{self.B}-H{self.H}-L{self.L}-T{self.T}-w{self.w}-lv{self.levels}-{self.normalize}{extra}"

    def kwargs(self, device) -> dict:
        def t(x):
            return None if x is None else torch.tensor(x, device=device)

        return dict(window=self.w, hop=self.hop, levels=self.levels, normalize=self.normalize,
                    q_lens=t(self.q_lens), k_lens=t(self.k_lens), window_starts=t(self.starts))

    def start(self, b: int, i: int) -> int:
        return self.starts[b][i] if self.starts else i * (self.hop or max(1, self.w // 2))


CASES = [
    # paper alignment (hop 5): the first windows clip at frame 0, the last ones at T
    Case(1, 1, 12, 64, 10, 2, "segment", d=16, dv=16),
    # padded queries, short audio: valid queries whose window starts past k_len; dv != d
    Case(2, 2, 9, 40, 6, 2, "joint", dv=12, hop=3, q_lens=(9, 5), k_lens=(40, 23)),
    # forced-alignment starts: repeats and jumps (a key block's query range is long, then empty)
    Case(2, 1, 12, 50, 4, 1, "segment", q_lens=(12, 10), k_lens=(50, 47),
         starts=((0, 0, 1, 5, 5, 5, 12, 20, 21, 30, 44, 49), (2, 3, 3, 3, 4, 9, 9, 15, 40, 46, 0, 0))),
    # fixed odd window (levels 0 allows it), head dims not powers of two
    Case(1, 2, 7, 33, 5, 0, "segment", d=12, dv=6, hop=4),
    # two query blocks and two key blocks of backward pass 2; starts 57 and 67 reach exactly one frame
    # into the other key block (the edges of the host-side query ranges)
    Case(1, 1, 20, 72, 4, 2, "joint", q_scale=0.6,
         starts=((0, 2, 5, 8, 12, 15, 20, 24, 30, 33, 38, 41, 47, 50, 54, 57, 60, 63, 67, 70),)),
    # audio shorter than the widest span: rows that would expand but whose S2 (sample 0) or S1 (sample 1,
    # k_len < ω) is empty
    Case(2, 2, 6, 6, 4, 2, "segment", q_scale=1.5, k_lens=(6, 3), starts=((0, 0, 0, 1, 1, 2), (0,) * 6)),
]
IDS = [c.id for c in CASES]


def _inputs(case: Case, dtype, device, requires_grad=True):
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    q = torch.randn(case.B, case.H, case.L, case.d, generator=g, dtype=torch.float64) * case.q_scale
    k = torch.randn(case.B, case.H, case.T, case.d, generator=g, dtype=torch.float64)
    v = torch.randn(case.B, case.H, case.T, case.dv, generator=g, dtype=torch.float64)
    grad = torch.randn(case.B, case.H, case.L, case.dv, generator=g, dtype=torch.float64)
    to = dict(dtype=dtype, device=device)
    return [x.to(**to).requires_grad_(requires_grad) for x in (q, k, v)], grad.to(**to)


def _run(backend, q, k, v, grad, case, force_level=None):
    out, level = sawa(q, k, v, backend=backend, return_level=True, force_level=force_level,
                      **case.kwargs(q.device))
    grads = torch.autograd.grad(out, (q, k, v), grad)
    return out.detach(), level, grads


def _margins(q, k, case: Case) -> torch.Tensor:
    """(B, H, L): distance of each row's decision scores to their thresholds, fp64 (inf: none decided)."""
    B, L = case.B, case.L
    q_lens = torch.tensor(case.q_lens or (L,) * B)
    k_lens = torch.tensor(case.k_lens or (case.T,) * B)
    starts = torch.tensor([[case.start(b, i) for i in range(L)] for b in range(B)])
    return reference.decision_margins(q.detach().cpu(), k.detach().cpu(), window=case.w, levels=case.levels,
                                      joint=case.normalize == "joint", scale=1 / math.sqrt(case.d),
                                      q_lens=q_lens, k_lens=k_lens, starts=starts)


def _close(name, got, want, atol, rtol):
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------------
# Interpreter (CPU)


@requires_interpreter
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp64_matches_reference(case):
    (q, k, v), grad = _inputs(case, torch.float64, "cpu")
    # Decisions: in fp64 every level agrees with the reference (no row of these inputs is a tie).
    with torch.no_grad():
        ref_out, ref_level = sawa(q, k, v, backend="reference", return_level=True, **case.kwargs("cpu"))
        out, level = sawa(q, k, v, backend="triton", return_level=True, **case.kwargs("cpu"))
    assert level.dtype == torch.int8
    assert torch.equal(level, ref_level)
    _close("out (decided)", out, ref_out, 1e-12, 1e-10)
    # Forced levels: a random mix (blocks where a ring is skipped), then every row at the widest level.
    mixed = torch.randint(0, case.levels + 1, ref_level.shape, generator=torch.Generator().manual_seed(1))
    for force in (mixed, torch.full_like(mixed, case.levels)):
        ref = _run("reference", q, k, v, grad, case, force)
        got = _run("triton", q, k, v, grad, case, force)
        assert torch.equal(got[1], ref[1])
        _close("out", got[0], ref[0], 1e-12, 1e-10)
        for name, a, b in zip(("dq", "dk", "dv"), got[2], ref[2], strict=True):
            _close(name, a, b, 1e-12, 1e-10)


@requires_interpreter
def test_cases_reach_every_level():
    """The inputs above are not degenerate: decided levels 1 and 2 both occur (so the lazy rings run)."""
    seen = set()
    for case in CASES:
        (q, k, v), _ = _inputs(case, torch.float64, "cpu", requires_grad=False)
        _, level = sawa(q, k, v, backend="triton", return_level=True, **case.kwargs("cpu"))
        seen |= set(level.unique().tolist())
    assert seen == {0, 1, 2}


def _check_fp32(case, device, atol=2e-5, rtol=1e-4):
    (q, k, v), grad = _inputs(case, torch.float64, "cpu")
    ref_out, ref_level, ref_grads = _run("reference", q, k, v, grad, case)
    (q32, k32, v32), grad32 = _inputs(case, torch.float32, device)
    with torch.no_grad():
        _, level = sawa(q32, k32, v32, backend="triton", return_level=True, **case.kwargs(device))
    margin = _margins(q, k, case)
    clear = margin > 100 * torch.finfo(torch.float32).eps
    assert bool(((level.cpu() == ref_level) | ~clear).all()), "levels differ on a row with a clear margin"
    out, level, grads = _run("triton", q32, k32, v32, grad32, case, ref_level.to(device))
    assert torch.equal(level.cpu(), ref_level)
    _close("out", out, ref_out, atol, rtol)
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _close(name, a, b, atol, rtol)


@requires_interpreter
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_matches_reference(case):
    _check_fp32(case, "cpu")


@requires_interpreter
def test_gradcheck_fp64():
    case = Case(1, 1, 5, 16, 4, 2, "segment", d=4, dv=4, hop=3)
    (q, k, v), _ = _inputs(case, torch.float64, "cpu")
    force = torch.tensor([[[2, 1, 0, 2, 1]]])  # fixed levels: the op is smooth in q, k, v

    def f(q, k, v):
        return sawa(q, k, v, backend="triton", force_level=force, **case.kwargs("cpu"))

    assert torch.autograd.gradcheck(f, (q, k, v), fast_mode=True)


@requires_interpreter
@pytest.mark.parametrize("normalize", ["segment", "joint"])
def test_atomic_dkdv_matches_blocks(normalize):
    """The alternative dk/dv flavour (tl.atomic_add in pass 1) gives the key-block pass's gradients."""
    from mfdr_kernels.sawa import triton_impl

    case = Case(2, 1, 9, 40, 6, 2, normalize, hop=3, q_lens=(9, 6), k_lens=(40, 25))
    (q, k, v), grad = _inputs(case, torch.float64, "cpu", requires_grad=False)
    q_lens, k_lens = torch.tensor(case.q_lens), torch.tensor(case.k_lens)
    i = torch.arange(case.L)
    starts = torch.where(i < q_lens[:, None], (i * case.hop).clamp(max=case.T), case.T).contiguous()
    args = (q, k, v, q_lens, k_lens, starts)
    _, level = triton_impl.sawa_fwd(*args, None, case.w, case.levels, normalize == "joint", 0.5)
    assert int(level.max()) == 2
    blocks = triton_impl.sawa_bwd(grad, *args, level, case.w, normalize == "joint", 0.5)
    atomic = triton_impl.sawa_bwd(grad, *args, level, case.w, normalize == "joint", 0.5, dkdv="atomic")
    for name, a, b in zip(("dq", "dk", "dv"), atomic, blocks, strict=True):
        _close(name, a, b, 1e-12, 1e-10)


def _launcher_fp16(case: Case, force, grad):
    """fp16 through the launchers (the op takes fp32/fp64 on the CPU), arguments normalized as op.py does."""
    from mfdr_kernels.sawa import op, triton_impl

    (q, k, v), _ = _inputs(case, torch.float16, "cpu", requires_grad=False)
    B, L, T = case.B, case.L, case.T
    q_lens = torch.tensor(case.q_lens or (L,) * B)
    k_lens = torch.tensor(case.k_lens or (T,) * B)
    starts = torch.tensor([[case.start(b, i) for i in range(L)] for b in range(B)])
    op._check_values(q_lens, k_lens, starts, force, L, T, case.levels)
    q_lens, k_lens, starts, force = op._sanitized(q_lens, k_lens, starts, force, L, T, case.levels)
    args = (q, k, v, q_lens, k_lens, starts)
    scale, joint = 1 / math.sqrt(case.d), case.normalize == "joint"
    out, level = triton_impl.sawa_fwd(*args, force, case.w, case.levels, joint, scale)
    return (out, *triton_impl.sawa_bwd(grad.half(), *args, level, case.w, joint, scale))


@requires_interpreter
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp16_launchers_match_reference(case):
    """fp16 operands (the tensor-core path: dots in fp16, weights cast to fp16) under the interpreter:
    within 2x the error of the torch backend in fp16 (+ a floor), given the reference's levels. bf16 is
    left to the CUDA tests: the interpreter's bf16 ``tl.dot`` returns garbage (triton 3.6 and 3.7)."""
    (q, k, v), grad = _inputs(case, torch.float64, "cpu")
    want_out, level, want_grads = _run("reference", q, k, v, grad, case)
    got = _launcher_fp16(case, level, grad)
    (qh, kh, vh), gh = _inputs(case, torch.float16, "cpu")
    base_out, _, base_grads = _run("torch", qh, kh, vh, gh, case, level)
    tol = TOLERANCE[torch.float16]
    for name, g, w, b in zip(("out", "dq", "dk", "dv"), got, (want_out, *want_grads), (base_out, *base_grads),
                             strict=True):
        err = (g.double() - w).abs().max().item()
        bound = tol["factor"] * (b.double() - w).abs().max().item() + tol["floor"]
        assert err <= bound, f"{name}: triton fp16 error {err:.3g} > {bound:.3g}"


# ----------------------------------------------------------------------------------------------------
# CUDA

REAL = [
    Case(4, 2, 50, 255, 10, 2, "segment", d=64, dv=64, q_scale=0.5),
    Case(4, 2, 50, 255, 10, 2, "joint", d=64, dv=64, q_lens=(50, 31, 50, 7), k_lens=(255, 160, 90, 255)),
    Case(2, 4, 400, 2000, 10, 0, "segment", d=128, dv=128),
]
# Low precision: |triton - fp64| <= factor * |torch backend in the same dtype - fp64| + floor, per tensor.
TOLERANCE = {
    torch.float16: dict(factor=2.0, floor=2e-3),
    torch.bfloat16: dict(factor=2.0, floor=1.6e-2),
}


@requires_cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_fp32_matches_reference(case):
    _check_fp32(case, "cuda")


@requires_cuda
@pytest.mark.parametrize("case", REAL, ids=[c.id for c in REAL])
def test_cuda_real_sizes_fp32(case):
    """Against the torch backend in fp64 (itself tested against the reference), given the same levels."""
    (q, k, v), grad = _inputs(case, torch.float64, "cuda")
    ref_out, ref_level, ref_grads = _run("torch", q, k, v, grad, case)
    (q32, k32, v32), grad32 = _inputs(case, torch.float32, "cuda")
    with torch.no_grad():
        _, level = sawa(q32, k32, v32, backend="triton", return_level=True, **case.kwargs("cuda"))
    clear = _margins(q, k, case) > 100 * torch.finfo(torch.float32).eps
    assert bool(((level.cpu() == ref_level.cpu()) | ~clear).all())
    out, _, grads = _run("triton", q32, k32, v32, grad32, case, ref_level)
    _close("out", out, ref_out, 1e-4, 1e-4)
    for name, a, b in zip(("dq", "dk", "dv"), grads, ref_grads, strict=True):
        _close(name, a, b, 1e-4, 1e-4)


@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", REAL[:2], ids=[c.id for c in REAL[:2]])
def test_cuda_low_precision(case, dtype):
    (q, k, v), grad = _inputs(case, torch.float64, "cuda")
    ref_out, ref_level, ref_grads = _run("torch", q, k, v, grad, case)
    (ql, kl, vl), gl = _inputs(case, dtype, "cuda")
    tri = _run("triton", ql, kl, vl, gl, case, ref_level)
    tor = _run("torch", ql, kl, vl, gl, case, ref_level)
    tol = TOLERANCE[dtype]
    for name, want, got, base in zip(("out", "dq", "dk", "dv"), (ref_out, *ref_grads), (tri[0], *tri[2]),
                                     (tor[0], *tor[2]), strict=True):
        err = (got.double() - want).abs().max().item()
        base_err = (base.double() - want).abs().max().item()
        bound = tol["factor"] * base_err + tol["floor"]
        assert err <= bound, f"{name}: triton error {err:.3g} > {bound:.3g} (torch backend {base_err:.3g})"


@requires_cuda
def test_cuda_default_backend_and_atomic_flavour():
    from mfdr_kernels import default_backend
    from mfdr_kernels.sawa import triton_impl

    assert default_backend("cuda", torch.float16) == "triton"
    case = REAL[1]
    (q, k, v), grad = _inputs(case, torch.float32, "cuda", requires_grad=False)
    q_lens, k_lens = torch.tensor(case.q_lens, device="cuda"), torch.tensor(case.k_lens, device="cuda")
    i = torch.arange(case.L, device="cuda")
    starts = torch.where(i < q_lens[:, None], (i * 5).clamp(max=case.T), case.T).contiguous()
    args = (q, k, v, q_lens, k_lens, starts)
    _, level = triton_impl.sawa_fwd(*args, None, case.w, case.levels, True, 0.125)
    blocks = triton_impl.sawa_bwd(grad, *args, level, case.w, True, 0.125)
    atomic = triton_impl.sawa_bwd(grad, *args, level, case.w, True, 0.125, dkdv="atomic")
    for name, a, b in zip(("dq", "dk", "dv"), atomic, blocks, strict=True):
        _close(name, a, b, 1e-5, 1e-5)


@requires_cuda
def test_cuda_torch_compile_fullgraph():
    case = REAL[0]
    (q, k, v), grad = _inputs(case, torch.float16, "cuda")

    def f(q, k, v):
        return sawa(q, k, v, window=case.w, levels=case.levels, backend="triton")

    eager = f(q, k, v)
    compiled = torch.compile(f, fullgraph=True)(q, k, v)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled, eager)
    g_eager = torch.autograd.grad(eager, (q, k, v), grad)
    g_comp = torch.autograd.grad(compiled, (q, k, v), grad)
    for a, b in zip(g_comp, g_eager, strict=True):
        torch.testing.assert_close(a, b)


@requires_interpreter
def test_fp32_dot_precision_follows_torch():
    """fp32 dots: exact ("ieee") by default, TF32 after torch.set_float32_matmul_precision("high")."""
    from mfdr_kernels.sawa import triton_impl

    case = CASES[0]
    (q, k, v), _ = _inputs(case, torch.float32, "cpu", requires_grad=False)
    before = torch.get_float32_matmul_precision()
    try:
        assert triton_impl._precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert triton_impl._precision(torch.float32) == "tf32"
        out = sawa(q, k, v, backend="triton", **case.kwargs("cpu"))  # the kernels take either
    finally:
        torch.set_float32_matmul_precision(before)
    want = sawa(q, k, v, backend="reference", **case.kwargs("cpu"))
    _close("out", out, want, 2e-5, 1e-4)  # the interpreter's dots are exact fp32 whatever the precision
    assert triton_impl._precision(torch.float16) == "tf32" and triton_impl._precision(torch.float64) == "ieee"


@requires_interpreter
def test_torch_compile_fullgraph_interpreter():
    """The triton backend under torch.compile: no graph break (the custom op is opaque), same values."""
    torch._dynamo.reset()
    case = Case(2, 1, 8, 40, 10, 2, "segment", hop=5, k_lens=(40, 31))
    (q, k, v), grad = _inputs(case, torch.float32, "cpu")

    def f(q, k, v):
        return sawa(q * 2, k, v, backend="triton", **case.kwargs("cpu"))

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = compiled(q, k, v)
    want = f(q, k, v)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(want, (q, k, v), grad),
                    strict=True):
        torch.testing.assert_close(a, b)
