"""Triton GCPU recurrence against the reference (SPEC §3).

On the CPU the kernels run under ``TRITON_INTERPRET=1`` (set by ``tests/conftest.py``): tiny shapes through
the launchers, fp64 and fp32 against the fp64 reference (H and every gradient), fp16 against PyTorch's own
error in fp16. The cases cross the kernels' tiles: 16 batch rows per program (B = 17: a second program
with one row) and 16 columns per chunk under the interpreter (D = 20: a full chunk and a tail). On CUDA
(skipped without it): real sizes in fp32, fp16 and bf16 (the interpreter's bf16 ``tl.dot`` is broken),
the one-config path (``MFDR_TRITON_AUTOTUNE=0``) and ``torch.compile``.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import pytest
import torch

pytest.importorskip("triton")

from mfdr_kernels import _env, gated_context_recurrence  # noqa: E402
from mfdr_kernels.gcpu import reference, torch_impl, triton_impl  # noqa: E402
from mfdr_kernels.gcpu.op import CHECKS  # noqa: E402

CUDA = torch.cuda.is_available()
# Under TRITON_INTERPRET=1 even CUDA tensors would run through the (CPU) interpreter, at real sizes.
requires_cuda = pytest.mark.skipif(not CUDA or _env.triton_interpret(),
                                   reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
_cpu_why = CHECKS["triton"](torch.empty(1, dtype=torch.float64))
requires_interpreter = pytest.mark.skipif(_cpu_why is not None, reason=f"triton on CPU: {_cpu_why}")

WEIGHTS = ("W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu")
# the launchers' gradient outputs, in order
GRADS = ("x_r", "x_z", "x_g", *WEIGHTS, "b_u", "h0")


@dataclass(frozen=True)
class Case:
    B: int
    L: int
    D: int
    context: bool = True
    lengths: tuple | None = None  # None: every step valid
    h0: bool = False  # False: the launcher gets h0=None (a zero state)

    @property
    def id(self) -> str:
        return (f"B{self.B}-L{self.L}-D{self.D}" + ("" if self.context else "-nocontext")
                + ("" if self.lengths is None else "-padded") + ("-h0" if self.h0 else ""))


CASES = [
    Case(1, 1, 8),  # one step, one row, D below one chunk
    Case(3, 5, 20, lengths=(5, 2, 0), h0=True),  # lengths L, short and 0; D = one chunk + a tail
    Case(3, 5, 20, context=False, lengths=(0, 5, 3)),
    Case(17, 5, 8, lengths=(5, 1, 3, 0, 2, 5, 4, 4, 1, 0, 5, 3, 2, 2, 5, 1, 4), h0=True),  # two row tiles
    Case(17, 1, 16, context=False, h0=True),  # one step, exactly one chunk
    Case(3, 5, 16, lengths=(2, 2, 1)),  # every length < L: the steps past a tile's longest are skipped
    Case(17, 4, 20, context=False, lengths=(4,) * 16 + (0,)),  # a tile whose only row is empty
]
IDS = [c.id for c in CASES]


def _inputs(case: Case, dtype, device="cpu"):
    """Launcher arguments (float64 values rounded to ``dtype``; weights scaled like nn.Linear's so the gates
    do not saturate), an upstream gradient, and the float64 leaves of the same values for the reference."""
    g = torch.Generator().manual_seed(zlib.crc32(case.id.encode()))
    B, L, D = case.B, case.L, case.D

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    x = {n: rand(B, L, D) for n in ("x_r", "x_z", "x_g")}
    x.update({n: rand(D, D, scale=1.5 / D**0.5) for n in WEIGHTS})
    x.update(b_u=rand(D), h0=rand(B, D) if case.h0 else torch.zeros(B, D, dtype=torch.float64))
    if not case.context:
        x.update(x_g=None, W_hg=None, W_gu=None)
    x = {n: None if v is None else v.to(dtype).to(torch.float64) for n, v in x.items()}  # rounded to dtype
    grad_H = rand(B, L, D).to(dtype)
    lengths = torch.tensor(case.lengths if case.lengths is not None else (L,) * B, device=device)
    args = {n: None if v is None else v.to(dtype=dtype, device=device, copy=True) for n, v in x.items()}
    if not case.h0:
        args["h0"] = None
    return args, grad_H.to(device), lengths, x


def _launch(args, grad_H, lengths):
    """Forward and backward through the triton launchers: ``(H, gates, {name: gradient})``."""
    a = args
    H, gates = triton_impl.gcpu_fwd(a["x_r"], a["x_z"], a["x_g"], *(a[n] for n in WEIGHTS), a["b_u"], lengths,
                                        a["h0"])
    grads = triton_impl.gcpu_bwd(grad_H, H, gates, *(a[n] for n in WEIGHTS), lengths, a["h0"])
    return H, gates, dict(zip(GRADS, grads, strict=True))


def _reference(x, grad_H, lengths, dtype=torch.float64):
    """The reference loop in ``dtype`` on the values ``x``: ``(H, {name: gradient})`` (autograd through the loop)."""
    leaves = {n: None if v is None else v.to(dtype=dtype, device=lengths.device, copy=True).requires_grad_()
              for n, v in x.items()}
    H = reference.gcpu_reference(*(leaves[n] for n in ("x_r", "x_z", "x_g", *WEIGHTS, "b_u")), lengths, leaves["h0"])
    names = [n for n in GRADS if leaves[n] is not None]
    grads = torch.autograd.grad(H, [leaves[n] for n in names], grad_H.to(dtype))
    return H.detach(), dict(zip(names, grads, strict=True))


def _close(name, got, want, atol, rtol):
    torch.testing.assert_close(got.double().cpu(), want.double().cpu(), atol=atol, rtol=rtol,
                               msg=lambda m: f"{name}: {m}")


def _check_against_reference(case, dtype, device, atol, rtol):
    args, grad_H, lengths, x = _inputs(case, dtype, device)
    H, gates, grads = _launch(args, grad_H, lengths)
    want_H, want = _reference(x, grad_H.double(), lengths)
    assert H.dtype == dtype and H.shape == (case.B, case.L, case.D)
    assert gates.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert gates.shape == (case.B, case.L, 4 if case.context else 3, case.D)
    _close("H", H, want_H, atol, rtol)
    for name in GRADS:
        if x[name] is None:  # w/o context
            assert grads[name] is None, name
            continue
        assert grads[name].dtype == dtype and grads[name].shape == x[name].shape, name
        _close(f"d{name}", grads[name], want[name], atol, rtol)
    return args, lengths, gates


# ----------------------------------------------------------------------------------------------------
# Interpreter (CPU)


@requires_interpreter
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp64_matches_reference(case):
    args, lengths, gates = _check_against_reference(case, torch.float64, "cpu", 1e-12, 1e-10)
    # the saved gates [r, z̃, u, g̃] are those of the torch backend (the backends share the launcher contract):
    # the reference's values at valid steps, 0 at padded ones
    a = dict(args, h0=args["h0"] if case.h0 else torch.zeros(case.B, case.D, dtype=torch.float64))
    _, want = torch_impl.gcpu_fwd(a["x_r"], a["x_z"], a["x_g"], *(a[n] for n in WEIGHTS), a["b_u"], lengths,
                                      a["h0"])
    _close("gates", gates, want, 1e-12, 1e-10)


@requires_interpreter
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fp32_matches_reference(case):
    _check_against_reference(case, torch.float32, "cpu", 2e-5, 1e-5)


@requires_interpreter
def test_padded_inputs_never_reach_the_results():
    """NaN and Inf in the padded steps of x (and every step of an empty sequence) change neither H nor any
    gradient: padded steps carry h, their gates are stored as 0 and their d_a* selected to 0."""
    case = Case(3, 5, 12, lengths=(5, 2, 0), h0=True)
    args, grad_H, lengths, _ = _inputs(case, torch.float64)
    H, gates, grads = _launch(args, grad_H, lengths)
    dirty = dict(args)
    for name in ("x_r", "x_z", "x_g"):
        x = args[name].clone()
        x[1, 2:], x[2] = float("nan"), float("inf")
        dirty[name] = x
    H2, gates2, grads2 = _launch(dirty, grad_H, lengths)
    assert torch.equal(H2, H) and torch.equal(gates2, gates)
    for name in GRADS:
        assert torch.equal(grads2[name], grads[name]), name
    assert not gates[1, 2:].any() and not gates[2].any()


@requires_interpreter
def test_unchecked_lengths_are_clamped():
    """Lengths outside [0, L] (the op clamps them; a caller of the launcher might not) read and write nothing
    out of bounds: the kernels clamp them to 0 and L."""
    case = Case(3, 4, 8, lengths=(4, 0, 2))
    args, grad_H, lengths, _ = _inputs(case, torch.float64)
    want = _launch(args, grad_H, lengths)
    got = _launch(args, grad_H, torch.tensor([1000, -5, 2]))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for name in GRADS:
        assert torch.equal(got[2][name], want[2][name]), name


@requires_interpreter
def test_lengths_none_is_every_step():
    case = Case(3, 4, 8, h0=True)
    args, grad_H, lengths, _ = _inputs(case, torch.float64)
    want = _launch(args, grad_H, lengths)
    got = _launch(args, grad_H, None)
    assert torch.equal(got[0], want[0])
    for name in GRADS:
        assert torch.equal(got[2][name], want[2][name]), name


# Low precision: |triton - fp64 reference| <= factor * |PyTorch in the same dtype - fp64 reference| + floor, per
# tensor (flash-attention's rule). "PyTorch in the same dtype" is the reference loop run in that dtype: the torch
# backend computes half inputs in fp32, so it would not measure what the dtype costs.
TOLERANCE = {
    torch.float16: dict(factor=2.0, floor=2e-3),
    torch.bfloat16: dict(factor=2.0, floor=1.6e-2),
}


def _check_low_precision(case, dtype, device):
    args, grad_H, lengths, x = _inputs(case, dtype, device)
    H, _, grads = _launch(args, grad_H, lengths)
    want_H, want = _reference(x, grad_H.double(), lengths)
    base_H, base = _reference(x, grad_H, lengths, dtype)
    assert H.dtype == dtype
    tol = TOLERANCE[dtype]
    for name, g, w, b in [("H", H, want_H, base_H)] + [(f"d{n}", grads[n], want[n], base[n]) for n in want]:
        assert g.dtype == dtype, name
        err = (g.double() - w).abs().max().item()
        base_err = (b.double() - w).abs().max().item()
        bound = tol["factor"] * base_err + tol["floor"]
        assert err <= bound, f"{name}: triton {dtype} error {err:.3g} > {bound:.3g} (PyTorch: {base_err:.3g})"


@requires_interpreter
@pytest.mark.parametrize("case", CASES[1:4], ids=IDS[1:4])
def test_fp16_launchers(case):
    """fp16 operands (the tensor-core path: weights and staged activations in fp16, fp32 accumulation) under
    the interpreter. bf16 is left to the CUDA tests: the interpreter's bf16 ``tl.dot`` returns garbage."""
    _check_low_precision(case, torch.float16, "cpu")


@requires_interpreter
def test_fp32_dot_precision_follows_torch():
    """fp32 dots: exact ("ieee") under torch's default matmul precision, TF32 after "high"; fp64 exact."""
    before = torch.get_float32_matmul_precision()
    try:
        assert triton_impl._precision(torch.float32) == "ieee"
        torch.set_float32_matmul_precision("high")
        assert triton_impl._precision(torch.float32) == "tf32"
        assert triton_impl._precision(torch.float64) == "ieee"
    finally:
        torch.set_float32_matmul_precision(before)


def test_sizes_past_32_bit_scratch_indexing_raise():
    with pytest.raises(ValueError, match=r"3\*B\*D must be < 2\*\*31, got B=3000000, D=256"):
        triton_impl._check_sizes(3_000_000, 256)
    triton_impl._check_sizes(32, 256)


@requires_interpreter
def test_torch_compile_fullgraph_interpreter():
    """The triton backend under torch.compile: no graph break (the custom op is opaque), same values."""
    torch._dynamo.reset()
    case = Case(3, 4, 8, lengths=(4, 1, 3), h0=True)
    args, grad_H, lengths, _ = _inputs(case, torch.float32)
    leaves = [None if v is None else v.requires_grad_() for v in (args["x_r"], args["x_z"], args["x_g"])]

    def f(x_r, x_z, x_g):
        return gated_context_recurrence(x_r * 2, x_z, x_g, *(args[n] for n in WEIGHTS), args["b_u"], lengths=lengths,
                                        h0=args["h0"], backend="triton")

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(*leaves)
    want = f(*leaves)
    torch.testing.assert_close(out, want)
    for a, b in zip(torch.autograd.grad(out, leaves, grad_H), torch.autograd.grad(want, leaves, grad_H), strict=True):
        torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------------------------------
# CUDA

REAL = [
    Case(32, 50, 256, lengths=tuple(50 - (7 * i) % 43 for i in range(32)), h0=True),  # the paper's shape, padded
    Case(32, 50, 256, context=False),
    Case(100, 20, 64, lengths=tuple(i % 21 for i in range(100))),  # 7 row tiles, every length 0..20
]
REAL_IDS = [c.id for c in REAL]


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_cuda_fp32_small(case):
    _check_against_reference(case, torch.float32, "cuda", 2e-5, 1e-5)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_cuda_fp32_real_sizes(case):
    """Exact fp32 dots ("ieee", torch's default matmul precision) over 50 steps of D = 256."""
    _check_against_reference(case, torch.float32, "cuda", 1e-4, 1e-4)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", REAL, ids=REAL_IDS)
def test_cuda_low_precision(case, dtype):
    _check_low_precision(case, dtype, "cuda")


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_single_config_matches_autotuned(monkeypatch, dtype):
    """MFDR_TRITON_AUTOTUNE=0 (one config) and the autotuned kernels give the same results to rounding."""
    case = REAL[0]
    args, grad_H, lengths, _ = _inputs(case, dtype, "cuda")
    tuned = _launch(args, grad_H, lengths)
    monkeypatch.setenv("MFDR_TRITON_AUTOTUNE", "0")
    single = _launch(args, grad_H, lengths)
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    _close("H", single[0], tuned[0], **tol)
    for name in GRADS:
        _close(f"d{name}", single[2][name], tuned[2][name], **tol)


@requires_cuda
@pytest.mark.cuda
def test_cuda_default_backend_and_torch_compile():
    from mfdr_kernels import _backends

    x = torch.empty(1, 1, 1, device="cuda", dtype=torch.bfloat16)
    assert _backends.choose("gated_context_recurrence", None, CHECKS, (x, x)) == "triton"
    torch._dynamo.reset()
    case = REAL[0]
    args, grad_H, lengths, _ = _inputs(case, torch.bfloat16, "cuda")
    x_r = args["x_r"].requires_grad_()

    def f(x_r):
        return gated_context_recurrence(x_r, args["x_z"], args["x_g"], *(args[n] for n in WEIGHTS), args["b_u"],
                                        lengths=lengths, h0=args["h0"], backend="triton")

    eager = f(x_r)
    compiled = torch.compile(f, fullgraph=True)(x_r)  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled, eager)
    (g_compiled,), (g_eager,) = torch.autograd.grad(compiled, x_r, grad_H), torch.autograd.grad(eager, x_r, grad_H)
    torch.testing.assert_close(g_compiled, g_eager)
