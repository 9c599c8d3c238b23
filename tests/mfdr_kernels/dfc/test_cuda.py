"""Compiled Triton DFC kernels on a GPU (skipped without CUDA, or under TRITON_INTERPRET=1, where even
CUDA tensors would go through the interpreter): real sizes and every CUDA dtype against the float64
reference, the default backend choice and ``torch.compile``. ``benchmarks/bench_dfc.py --device cuda``
adds the timings."""

import pytest
import torch

from mfdr_kernels import _backends, _env, dynamic_frame_conv
from mfdr_kernels.dfc import CHECKS

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available() or _env.triton_interpret(),
                                   reason="needs a CUDA device and TRITON_INTERPRET=0 (compiled kernels)")
pytestmark = requires_cuda

# max |error| / max(1, max |reference|), per dtype: outputs and gradients (a sum over B=32 samples)
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
SHAPES = [(32, 50, 256, 3, 2), (32, 24, 256, 3, 3), (4, 4096, 256, 3, 2), (3, 257, 130, 4, 1),
          (2, 9, 5, 2, 4)]


def _grads(backend, x, k, b, gy, frame, hop):
    x, k, b = (t.detach().requires_grad_() for t in (x, k, b))
    y = dynamic_frame_conv(x, k, frame=frame, hop=hop, bias=b, backend=backend)
    return (y.detach(), *torch.autograd.grad(y, (x, k, b), gy))


@pytest.mark.parametrize("dtype", list(TOL), ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per_sample"])
@pytest.mark.parametrize("shape", SHAPES, ids=[f"B{B}-L{L}-C{C}-f{f}-h{h}" for B, L, C, f, h in SHAPES])
def test_cuda_triton_matches_reference(shape, per_sample, dtype):
    B, L, C, frame, hop = shape
    N = (L - frame) // hop + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, L, C, generator=g, dtype=torch.float64)
    k = torch.randn(*((B,) if per_sample else ()), N, frame, C, generator=g, dtype=torch.float64)
    b = torch.randn(N, C, generator=g, dtype=torch.float64)
    gy = torch.randn(B, N, C, generator=g, dtype=torch.float64)
    x, k, b, gy = (t.to(dtype) for t in (x, k, b, gy))  # the inputs, rounded to the dtype
    # float64 on the CPU on the same rounded inputs: the torch backend, held to the reference by the CPU tests
    want = _grads("torch", *(t.double() for t in (x, k, b, gy)), frame, hop)
    got = _grads("triton", *(t.cuda() for t in (x, k, b, gy)), frame, hop)
    for name, a, w in zip(("y", "dx", "dkernel", "dbias"), got, want, strict=True):
        assert a.dtype == dtype and a.shape == w.shape, name
        err = float((a.double().cpu() - w).abs().max()) / max(1.0, float(w.abs().max()))
        assert err <= TOL[dtype], (name, err)


def test_cuda_default_backend_is_triton():
    x = torch.empty(1, 1, 1, device="cuda")
    assert _backends.choose("dynamic_frame_conv", None, CHECKS, (x, x)) == "triton"


def test_cuda_compile_fullgraph():
    torch._dynamo.reset()
    x = torch.randn(4, 50, 64, device="cuda", requires_grad=True)
    k = torch.randn(24, 3, 64, device="cuda", requires_grad=True)

    def f(x, k):
        return dynamic_frame_conv(x, k, frame=3, hop=2).square().sum()

    got = torch.autograd.grad(torch.compile(f, fullgraph=True)(x, k), (x, k))
    want = torch.autograd.grad(f(x, k), (x, k))
    for a, w in zip(got, want, strict=True):
        torch.testing.assert_close(a, w, atol=1e-4, rtol=1e-4)
