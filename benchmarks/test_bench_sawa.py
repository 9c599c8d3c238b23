"""pytest-benchmark suite: SAWA forward, backward and forward+backward, per backend and baseline.

    pytest benchmarks/test_bench_sawa.py --benchmark-only
    MFDR_BENCH_QUICK=1 pytest benchmarks/test_bench_sawa.py --benchmark-disable   # CI smoke

Providers and inputs: ``bench_sawa_cpu`` (cpp levels 2 and 0, torch, reference, dense SDPA with a
window mask and without, compiled FlexAttention with a sliding-window block mask; Triton when CUDA
is present). Shapes: ``paper`` B=32, H=1, L=50, T=255, d=256 (the kernel issue's) and ``long`` B=1,
H=4, T=4096, L=T/5, d=64; float32. The reference is timed in one round (its backward takes seconds).
Benchmarks of one shape, device and mode share a group; report.py
turns each group into ratios.
"""

from __future__ import annotations

import bench_sawa_cpu as sb
import pytest
import torch

from mfdr_kernels import _env

QUICK = _env.bench_quick()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

SHAPES = {
    "paper": dict(B=32, H=1, L=50, T=255, d=256),
    "long": dict(B=1, H=4, L=819, T=4096, d=64),
}
if QUICK:
    SHAPES = {
        "paper": dict(B=2, H=1, L=10, T=55, d=16),
        "long": dict(B=1, H=2, L=51, T=256, d=16),
    }
PROVIDERS = {
    ("paper", "cpu"): ["cpp", "cpp-lv0", "torch", "sdpa-window", "sdpa-full", "flex-window", "reference"],
    ("long", "cpu"): ["cpp", "cpp-lv0", "torch", "sdpa-window", "sdpa-full", "flex-window", "reference"],
    ("paper", "cuda"): ["triton", "torch", "sdpa-window", "sdpa-full", "flex-window"],
    ("long", "cuda"): ["triton", "torch", "sdpa-window", "sdpa-full", "flex-window"],
}
MODES = ("fwd", "bwd", "fwd+bwd")


def _runs(shape, device, name, mode) -> bool:
    if name in sb.FORWARD_ONLY and device == "cpu":
        return mode == "fwd"  # torch 2.13: no FlexAttention backward on the CPU
    return True


CASES = [
    pytest.param(shape, device, name, mode, id=f"{shape}-{device}-{name}-{mode}")
    for (shape, device), names in PROVIDERS.items() if device in DEVICES
    for name in names for mode in MODES if _runs(shape, device, name, mode)
]


@pytest.fixture(scope="module")
def levels():
    """Fraction of rows at level 0/1/2 per shape (the inputs exercise all three levels)."""
    return {name: sb.levels_present(**dims) for name, dims in SHAPES.items()}


@pytest.mark.parametrize(("shape", "device", "name", "mode"), CASES)
def test_sawa(bench, levels, shape, device, name, mode):
    dims = SHAPES[shape]
    q, k, v, do = sb.inputs(**dims, device=device)
    fn = sb.closures(name, q, k, v, do)[mode]
    bench(fn, group=f"sawa {shape} {sb.shape_id(**dims)} {device} {mode}", slow=name == "reference",
          device=device, op="sawa",
          provider=name, mode=mode, shape=shape, dims=dims, dtype="float32", window=sb.WINDOW, hop=sb.HOP,
          levels=0 if name == "cpp-lv0" else 2, levels_fraction=levels[shape])


def test_sweep_and_report_render(tmp_path):
    """The sweep (two sizes, no RSS probes) and BENCHMARKS.md rendering keep working (not a benchmark)."""
    import report
    import sweep

    sweep.main(["--T", "256", "512", "--no-rss", "--out", str(tmp_path / "sweep.json")])
    assert (tmp_path / "sweep_time.png").stat().st_size > 0
    report.main(["--no-run", "--results", str(tmp_path), "--out", str(tmp_path / "BENCHMARKS.md")])
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "## Scaling sweep" in text and "sdpa-window" in text
