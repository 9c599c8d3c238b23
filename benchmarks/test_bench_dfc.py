"""pytest-benchmark suite: DFC forward, backward and forward+backward, per backend and baseline.

    pytest benchmarks/test_bench_dfc.py --benchmark-only
    MFDR_BENCH_QUICK=1 pytest benchmarks/test_bench_dfc.py --benchmark-disable   # CI smoke

Shapes, inputs and providers come from ``bench_dfc`` (float32, kernel shared by the batch): the
paper's two DFC layers (B=32, L=50 and 24, C=256, frame 3, hops 2 and 3) and a long sequence
(L=4096). Providers: ``cpp`` (fused C++), ``torch`` (the unfold-based backend: the baseline),
``autograd`` (plain autograd through ``x.unfold``: what one writes by hand), ``reference`` (the loop;
paper shapes only: at L=4096 its autograd graph of 65k frame rows takes minutes to run backward),
``triton`` when CUDA is present.
"""

from __future__ import annotations

import bench_dfc as bd
import pytest
import torch

from mfdr_kernels import _env

QUICK = _env.bench_quick()
SHAPES = bd.QUICK_SHAPES if QUICK else bd.SHAPES
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PROVIDERS = {"cpu": ["cpp", "torch", "autograd", "reference"], "cuda": ["triton", "torch", "autograd"]}
MODES = ("fwd", "bwd", "fwd+bwd")

CASES = [
    pytest.param(shape, device, name, mode, id=f"{bd.shape_id(*shape)}-{device}-{name}-{mode}")
    for shape in SHAPES for device in DEVICES for name in PROVIDERS[device] for mode in MODES
    if not (name == "reference" and shape[1] > 512)
]


def closures(name, x, kernel, gy, frame, hop) -> dict:
    f = bd.provider(name, frame, hop)
    y = f(x, kernel)  # retained graph for the backward-only timing
    return {
        "fwd": lambda: f(x, kernel),
        "bwd": lambda: torch.autograd.grad(y, (x, kernel), gy, retain_graph=True),
        "fwd+bwd": lambda: torch.autograd.grad(f(x, kernel), (x, kernel), gy),
    }


@pytest.mark.parametrize(("shape", "device", "name", "mode"), CASES)
def test_dfc(bench, shape, device, name, mode):
    B, L, C, frame, hop = shape
    x, kernel, gy = bd.inputs(*shape, device=device)
    fn = closures(name, x, kernel, gy, frame, hop)[mode]
    bench(fn, group=f"dfc {bd.shape_id(*shape)} {device} {mode}", device=device,
          op="dfc", provider=name, mode=mode, shape=bd.shape_id(*shape),
          dims=dict(B=B, L=L, C=C, frame=frame, hop=hop, N=(L - frame) // hop + 1), dtype="float32",
          kernel="shared (N, frame, C)")
