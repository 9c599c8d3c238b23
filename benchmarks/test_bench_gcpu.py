"""pytest-benchmark suite: the GCPU recurrence forward, backward and forward+backward, per provider.

    pytest benchmarks/test_bench_gcpu.py --benchmark-only
    MFDR_BENCH_QUICK=1 pytest benchmarks/test_bench_gcpu.py --benchmark-disable   # CI smoke

Shapes, inputs and providers come from ``bench_gcpu`` (float32, padded lengths): the paper's GCPU (B=32,
L=50, D=256) with and without the context stream, at the level of the model's stage (``GCPU.recurrence``:
the input-side products and the recurrence). Providers: ``cpp`` (the fused C++ kernels), ``torch`` (the
vectorized backend), ``loop`` (the readable reference loop, eager: the baseline), ``triton`` when CUDA is
present. ``torch.compile`` of the loop is measured by ``bench_gcpu.py`` only (a minute of compiling).
"""

from __future__ import annotations

import json

import _timing
import bench_gcpu as bg
import pytest
import torch

from mfdr_kernels import _env

QUICK = _env.bench_quick()
SHAPES = bg.QUICK_SHAPES if QUICK else bg.SHAPES
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
MODES = ("fwd", "bwd", "fwd+bwd")

CASES = [
    pytest.param(shape, device, name, mode, id=f"{bg.shape_id(*shape)}-{device}-{name}-{mode}")
    for shape in SHAPES for device in DEVICES for name in bg.providers_for(device, quick=True) for mode in MODES
]


@pytest.mark.parametrize(("shape", "device", "name", "mode"), CASES)
def test_gcpu(bench, shape, device, name, mode):
    B, L, D, context = shape
    p = bg.Problem(*shape, device=device)
    f, leaves = p.forward(name, "stage"), p.leaves("stage")
    H = f()  # retained graph for the backward-only timing
    fn = {"fwd": f,
          "bwd": lambda: torch.autograd.grad(H, leaves, p.grad_H, retain_graph=True),
          "fwd+bwd": lambda: torch.autograd.grad(f(), leaves, p.grad_H)}[mode]
    bench(fn, group=f"gcpu {bg.shape_id(*shape)} {device} {mode}", device=device,
          op="gcpu", provider=name, mode=mode, shape=bg.shape_id(*shape), level="stage",
          dims=dict(B=B, L=L, D=D, context=context), dtype="float32")


def test_script_quick_run(tmp_path):
    """The interleaved script runs (its correctness check first) and keeps the committed results: --quick
    writes only where --out says."""
    committed = _timing.RESULTS / "gcpu.json"
    before = committed.read_bytes() if committed.exists() else None
    result = bg.main(["--quick", "--reps", "1", "--shapes", "1", "--out", str(tmp_path / "gcpu.json")])
    assert (committed.read_bytes() if committed.exists() else None) == before
    rows = json.loads((tmp_path / "gcpu.json").read_text())["rows"]
    assert {r["provider"] for r in rows} >= {"cpp", "torch", "loop"} and rows == result["rows"]
    assert all(c["ok"] for c in result["checks"])
