"""Dynamic frame convolution: the fused kernels against the unfold-based ``torch`` backend, in one run.

    python benchmarks/bench_dfc.py                 # the issue's shapes on the CPU (cuda too when present)
    python benchmarks/bench_dfc.py --quick         # tiny sizes (CI smoke)
    python benchmarks/bench_dfc.py --device cuda   # triton vs torch on the GPU
    pytest benchmarks/bench_dfc.py --benchmark-only

Providers (float32, kernel shared by the batch, as in ``mfdr.DynamicFrameConv``):
  cpp        the C++ kernels (CPU)
  triton     the Triton kernels (CUDA)
  torch      the unfold-based ``torch`` backend: the baseline; builds the (B, N, frame, C) product
  autograd   plain autograd through ``x.unfold(...)``: what one writes by hand, without the custom op
Times are medians (ms) of forward (grad enabled), backward (of a retained graph: dx, dkernel) and
forward+backward, with the providers interleaved repetition by repetition so that a noisy machine
slows them alike; ratios are the ``torch`` provider's time over each provider's, from the same run.
Peak memory: the most bytes held at once by tensors allocated during one forward+backward (the
profiler's allocation records, replayed in time order; on CUDA ``max_memory_allocated``), beside the
size of the unfolded (B, N, frame, C) tensor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from mfdr_kernels import dynamic_frame_conv  # noqa: E402

# (B, L, C, frame, hop): the paper's two DFC layers, then a long sequence
SHAPES = [(32, 50, 256, 3, 2), (32, 24, 256, 3, 3), (32, 4096, 256, 3, 2)]
QUICK_SHAPES = [(4, 50, 32, 3, 2), (4, 24, 32, 3, 3), (2, 512, 32, 3, 2)]


def shape_id(B, L, C, frame, hop):
    return f"B{B}-L{L}-C{C}-f{frame}-h{hop}"


def inputs(B, L, C, frame, hop, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    N = (L - frame) // hop + 1
    x = torch.randn(B, L, C, generator=g).to(device, dtype).requires_grad_()
    kernel = torch.randn(N, frame, C, generator=g).to(device, dtype).requires_grad_()
    gy = torch.randn(B, N, C, generator=g).to(device, dtype)
    return x, kernel, gy


def provider(name, frame, hop):
    if name == "autograd":
        return lambda x, k: (x.unfold(1, frame, hop).transpose(2, 3) * k).sum(2)
    return lambda x, k: dynamic_frame_conv(x, k, frame=frame, hop=hop, backend=name)


def providers_for(device):
    return ["torch", "autograd", "cpp"] if torch.device(device).type == "cpu" else ["torch", "autograd", "triton"]


def _interleaved(fns: dict, device, reps: int, target_s: float = 0.02) -> dict:
    """Median seconds per call of each ``fns[name]()``; each repetition runs every provider in turn."""
    inner = {}
    for name, fn in fns.items():  # warm up, then size each block to ~target_s
        fn()
        _timing.sync(device)
        t0 = time.perf_counter()
        fn()
        _timing.sync(device)
        inner[name] = max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            _timing.sync(device)
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(t) for name, t in times.items()}


def peak_mb(fn, device) -> float:
    """Peak bytes held beyond what was allocated before ``fn()`` runs, in MiB."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the raw allocation (+) and free (-) records, in time order (the per-op totals misplace the frees)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def measure(shape, device="cpu", reps=9, names=None):
    B, L, C, frame, hop = shape
    N = (L - frame) // hop + 1
    x, kernel, gy = inputs(*shape, device=device)
    names = names or providers_for(device)
    fs = {n: provider(n, frame, hop) for n in names}
    outs = {n: fs[n](x, kernel) for n in names}  # retained graphs for the backward-only timing
    fwd = _interleaved({n: (lambda f=fs[n]: f(x, kernel)) for n in names}, device, reps)
    bwd = _interleaved({n: (lambda y=outs[n]: torch.autograd.grad(y, (x, kernel), gy, retain_graph=True))
                        for n in names}, device, reps)
    both = _interleaved({n: (lambda f=fs[n]: torch.autograd.grad(f(x, kernel), (x, kernel), gy)) for n in names},
                        device, reps)
    del outs
    rows = []
    unfolded_mb = B * N * frame * C * x.element_size() / 2**20
    for n in names:
        mem = peak_mb(lambda f=fs[n]: torch.autograd.grad(f(x, kernel), (x, kernel), gy), device)
        rows.append({
            "shape": shape_id(*shape), "provider": n,
            "fwd_ms": fwd[n] * 1e3, "bwd_ms": bwd[n] * 1e3, "fwd+bwd_ms": both[n] * 1e3,
            "fwd_x": fwd["torch"] / fwd[n], "bwd_x": bwd["torch"] / bwd[n], "fwd+bwd_x": both["torch"] / both[n],
            "peak_mb": mem, "unfolded_mb": unfolded_mb,
        })
    return rows


COLUMNS = ["shape", "provider", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x", "peak_mb",
           "unfolded_mb"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (CI smoke)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when present)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "dfc.json"))
    args = ap.parse_args(argv)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shapes = QUICK_SHAPES if args.quick else SHAPES
    reps = 3 if args.quick else args.reps
    rows = []
    for device in devices:
        for shape in shapes:
            rows += [{"device": device, **r} for r in measure(shape, device, reps)]
    result = {"machine": _timing.machine(), "dtype": "float32", "kernel": "shared (N, frame, C)", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}")
    print("float32, kernel shared by the batch; *_x = time of the `torch` (unfold) backend / time, same run\n")
    print(_timing.markdown_table(rows, ["device"] + COLUMNS))
    return result


# --------------------------------------------------------------------------- pytest-benchmark
@pytest.mark.parametrize("name", ["torch", "cpp"])
@pytest.mark.parametrize("shape", SHAPES[:2], ids=[shape_id(*s) for s in SHAPES[:2]])
def test_dfc_cpu_fwd_bwd(benchmark, shape, name):
    x, kernel, gy = inputs(*shape)
    f = provider(name, shape[3], shape[4])
    benchmark(lambda: torch.autograd.grad(f(x, kernel), (x, kernel), gy))


if __name__ == "__main__":
    main()
