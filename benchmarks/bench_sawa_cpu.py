"""SAWA on the CPU: the C++ kernel against what a user would write otherwise, in one run.

    python benchmarks/bench_sawa_cpu.py            # paper shape + T sweep, writes benchmarks/results/sawa_cpu.json
    python benchmarks/bench_sawa_cpu.py --quick    # tiny sizes (CI smoke)

Providers (float32, H=1, d=256, window 10, hop 5):
  cpp / cpp-lv0    the C++ kernel, levels 2 / levels 0 (fixed window)
  torch            the vectorized PyTorch backend
  sdpa-window      scaled_dot_product_attention with a fixed-window boolean mask (L x T)
  sdpa-full        dense scaled_dot_product_attention (global cross-attention)
  reference        the readable loop (paper shape only)
Times are medians (ms) of forward, backward (of a retained graph) and forward+backward; peak memory
is the rise of the peak RSS of a fresh process running one forward+backward, beyond its inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from mfdr_kernels import sliding_adaptive_window_attention as sawa  # noqa: E402

WINDOW, HOP = 10, 5


def inputs(B, L, T, d, seed=0, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    # q scaled down so that the base-window weights are flat enough for all three levels to occur
    q = torch.randn(B, 1, L, d, generator=g) * 0.08
    k = torch.randn(B, 1, T, d, generator=g)
    v = torch.randn(B, 1, T, d, generator=g)
    return [t.requires_grad_(requires_grad) for t in (q, k, v)]


def window_mask(L, T):
    i = torch.arange(L)[:, None]
    j = torch.arange(T)[None, :]
    return (j >= i * HOP) & (j < i * HOP + WINDOW)


def provider(name, L, T):
    if name in ("cpp", "torch", "reference"):
        return lambda q, k, v: sawa(q, k, v, window=WINDOW, hop=HOP, levels=2, backend=name)
    if name == "cpp-lv0":
        return lambda q, k, v: sawa(q, k, v, window=WINDOW, hop=HOP, levels=0, backend="cpp")
    if name == "sdpa-window":
        mask = window_mask(L, T)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if name == "sdpa-full":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    raise ValueError(name)


def time_provider(name, B, L, T, d, reps):
    q, k, v = inputs(B, L, T, d)
    f = provider(name, L, T)
    do = torch.randn(B, 1, L, d)
    fwd = _timing.median_time(lambda: f(q, k, v), reps=reps, warmup=1)
    out = f(q, k, v)
    bwd = _timing.median_time(lambda: torch.autograd.grad(out, (q, k, v), do, retain_graph=True), reps=reps,
                              warmup=1)
    both = _timing.median_time(lambda: torch.autograd.grad(f(q, k, v), (q, k, v), do), reps=reps, warmup=1)
    return {"fwd_ms": fwd * 1e3, "bwd_ms": bwd * 1e3, "fwd+bwd_ms": both * 1e3}


def probe(name, B, L, T, d):
    """Runs in a fresh process: peak RSS rise of one forward+backward beyond the inputs."""
    q, k, v = inputs(B, L, T, d)
    f = provider(name, L, T)
    do = torch.randn(B, 1, L, d)
    base = _timing.peak_rss_mb()
    torch.autograd.grad(f(q, k, v), (q, k, v), do)
    print(json.dumps({"peak_mb": _timing.peak_rss_mb() - base}))


def levels_present(B, L, T, d):
    q, k, v = inputs(B, L, T, d, requires_grad=False)
    _, level = sawa(q, k, v, window=WINDOW, hop=HOP, levels=2, backend="cpp", return_level=True)
    return [round(float((level == i).float().mean()), 3) for i in range(3)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one repetition (CI smoke)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "sawa_cpu.json"))
    ap.add_argument("--probe", nargs=5, metavar=("PROVIDER", "B", "L", "T", "D"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        name, *dims = args.probe
        return probe(name, *map(int, dims))

    reps = 1 if args.quick else 7
    paper = dict(B=4, L=50, T=255, d=32) if args.quick else dict(B=32, L=50, T=255, d=256)
    sweep_T = [256, 512] if args.quick else [1024, 2048, 4096, 8192, 16384]
    sweep_B, d = (2, 32) if args.quick else (4, 256)
    rows = []

    names = ["cpp", "cpp-lv0", "torch", "sdpa-window", "sdpa-full", "reference"]
    for name in names:
        r = time_provider(name, paper["B"], paper["L"], paper["T"], paper["d"], 1 if name == "reference" else reps)
        rows.append({"shape": "paper", "provider": name, **paper, **r})
    for T in sweep_T:
        L = T // 5
        for name in ["cpp", "cpp-lv0", "torch", "sdpa-window"]:
            r = time_provider(name, sweep_B, L, T, d, reps if T <= 4096 or name.startswith("cpp") else 1)
            mem = _timing.run_isolated([__file__, "--probe", name, str(sweep_B), str(L), str(T), str(d)])
            rows.append({"shape": "sweep", "provider": name, "B": sweep_B, "L": L, "T": T, "d": d, **r,
                         "peak_mb": mem.get("peak_mb", mem.get("error"))})

    base = {r["provider"]: r for r in rows if r["shape"] == "paper"}
    for r in rows:
        if r["shape"] == "paper":
            r["speedup_vs_cpp"] = r["fwd+bwd_ms"] / base["cpp"]["fwd+bwd_ms"]
    result = {"machine": _timing.machine(), "levels_fraction_paper_shape": levels_present(**paper), "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"machine: {result['machine']}")
    print(f"fraction of windows at level 0/1/2 (paper shape): {result['levels_fraction_paper_shape']}")
    cols = ["shape", "provider", "B", "L", "T", "d", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "speedup_vs_cpp", "peak_mb"]
    print(_timing.markdown_table(rows, cols))
    return result


if __name__ == "__main__":
    main()
