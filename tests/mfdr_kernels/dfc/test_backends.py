"""Every DFC backend against the float64 reference (SPEC §2): outputs and the gradients of x, kernel and
bias, for kernels shared by the batch and per sample. Triton runs under the interpreter on the CPU
(tests/conftest.py sets TRITON_INTERPRET=1), so the shapes stay tiny."""

import dataclasses

import pytest
import torch

from mfdr_kernels import dynamic_frame_conv
from mfdr_kernels.dfc import CHECKS

BACKENDS = ["torch", "cpp", "triton"]
# per-dtype tolerances (atol, rtol) for the output and each gradient, against the float64 reference
TOL = {
    torch.float64: {"y": (1e-12, 1e-12), "x": (1e-12, 1e-12), "kernel": (1e-12, 1e-12),
                    "bias": (1e-12, 1e-12)},
    torch.float32: {"y": (1e-5, 1e-5), "x": (1e-5, 1e-5), "kernel": (3e-5, 1e-5), "bias": (3e-5, 1e-5)},
}


@dataclasses.dataclass
class Case:
    B: int
    L: int
    C: int
    frame: int = 3
    hop: int = 2

    @property
    def N(self):
        return (self.L - self.frame) // self.hop + 1

    @property
    def id(self):
        return f"B{self.B}-L{self.L}-C{self.C}-f{self.frame}-h{self.hop}"


CASES = [
    Case(2, 9, 5),  # odd L, odd C
    Case(2, 10, 6),  # even L: the last row belongs to no frame
    Case(3, 11, 7, frame=2, hop=4),  # hop > frame: gaps between frames
    Case(2, 12, 6, frame=3, hop=3),  # hop = frame: a partition (the paper's second layer)
    Case(2, 3, 4, frame=3, hop=2),  # N = 1
    Case(1, 10, 33, frame=4, hop=1),  # hop = 1: every row in up to 4 frames; C over one Triton block
    Case(2, 50, 8, frame=3, hop=2),  # the paper's first layer, few channels
    Case(2, 7, 3, frame=1, hop=1),  # frame 1: a per-position channel scale
]


def make(case: Case, dtype, per_sample: bool, bias: str | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(case.B, case.L, case.C, generator=g, dtype=torch.float64)
    shape = (case.B, case.N, case.frame, case.C) if per_sample else (case.N, case.frame, case.C)
    kernel = torch.randn(shape, generator=g, dtype=torch.float64)
    b = None if bias is None else torch.randn((case.C,) if bias == "C" else (case.N, case.C), generator=g,
                                              dtype=torch.float64)
    gy = torch.randn(case.B, case.N, case.C, generator=g, dtype=torch.float64)
    inputs = {"x": x, "kernel": kernel, "bias": b}
    return {k: None if v is None else v.to(dtype).requires_grad_() for k, v in inputs.items()}, gy.to(dtype)


def run(inputs, gy, case, backend):
    y = dynamic_frame_conv(inputs["x"], inputs["kernel"], frame=case.frame, hop=case.hop, bias=inputs["bias"],
                           backend=backend)
    names = [k for k, v in inputs.items() if v is not None]
    grads = torch.autograd.grad(y, [inputs[k] for k in names], gy)
    return {"y": y, **dict(zip(names, grads, strict=True))}


def reference_of(inputs, gy, case):
    """The reference in float64 on the same (possibly rounded) inputs."""
    up = {k: None if v is None else v.detach().double().requires_grad_() for k, v in inputs.items()}
    return run(up, gy.double(), case, "reference")


def assert_match(got, want, dtype):
    assert got.keys() == want.keys()
    for name in got:
        atol, rtol = TOL[dtype][name]
        assert got[name].dtype == dtype, name
        assert got[name].shape == want[name].shape, name
        torch.testing.assert_close(got[name].double(), want[name], atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_backend_matches_reference(case, per_sample, dtype, backend):
    x = torch.empty(1, 1, 1, dtype=dtype)
    if CHECKS[backend](x, x):
        pytest.skip(CHECKS[backend](x, x))
    bias = "NC" if per_sample else "C"
    inputs, gy = make(case, dtype, per_sample, bias)
    assert_match(run(inputs, gy, case, backend), reference_of(inputs, gy, case), dtype)


BLOCK_CASES = [Case(19, 203, 130, frame=3, hop=2), Case(11, 150, 257, frame=4, hop=3)]


@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c.id for c in BLOCK_CASES])
def test_cpp_across_its_blocks(case, per_sample):
    """Shapes over several of the C++ kernel's tiles: 8-sample chunks, 16-frame and 64-row blocks,
    128-channel blocks. Too large for the reference loop: compared with the ``torch`` backend, which
    the tests above hold to the reference."""
    inputs, gy = make(case, torch.float64, per_sample, "NC" if per_sample else "C")
    assert_match(run(inputs, gy, case, "cpp"), run(inputs, gy, case, "torch"), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [None, "C", "NC"], ids=["nobias", "bias_C", "bias_NC"])
def test_bias_forms(bias, backend):
    case = Case(2, 9, 5)
    inputs, gy = make(case, torch.float64, False, bias)
    assert_match(run(inputs, gy, case, backend), reference_of(inputs, gy, case), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    case = Case(2, 9, 6)
    inputs, gy = make(case, torch.float64, False, "C")
    # the same values through strided views
    x_t = inputs["x"].detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    k_big = torch.zeros(case.N, case.frame, 2 * case.C, dtype=torch.float64)
    k_big[..., ::2] = inputs["kernel"].detach()
    k_view = k_big[..., ::2].requires_grad_()
    strided = {"x": x_t, "kernel": k_view, "bias": inputs["bias"]}
    assert_match(run(strided, gy, case, backend), reference_of(inputs, gy, case), torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
def test_gradcheck(backend, per_sample):
    case = Case(2, 7, 3, frame=3, hop=2)
    inputs, _ = make(case, torch.float64, per_sample, "NC" if per_sample else "C")

    def fn(x, kernel, bias):
        return dynamic_frame_conv(x, kernel, frame=case.frame, hop=case.hop, bias=bias, backend=backend)

    # the interpreter runs each launch at ~6 ms per program: the fast (projected) mode for triton
    fast = backend == "triton"
    assert torch.autograd.gradcheck(fn, (inputs["x"], inputs["kernel"], inputs["bias"]), fast_mode=fast)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fused_backends_never_build_the_unfolded_tensor(backend):
    """No allocation as large as the (B, N, frame, C) unfolding, forward or backward (shared kernel)."""
    from torch.profiler import ProfilerActivity, profile

    case = Case(2, 61, 16, frame=3, hop=1)
    inputs, gy = make(case, torch.float32, False, "C")
    unfolded = case.B * case.N * case.frame * case.C * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run(inputs, gy, case, backend)
    sizes = [e.self_cpu_memory_usage for e in prof.events() if e.self_cpu_memory_usage > 0]  # allocations
    assert sizes and max(sizes) < unfolded, (max(sizes), unfolded)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:  # the check can see it
        run(inputs, gy, case, "torch")
    assert max(e.self_cpu_memory_usage for e in prof.events()) >= unfolded
