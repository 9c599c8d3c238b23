"""SAWA on the CPU: the C++ kernel against what a user would write otherwise, interleaved in one run.

    python benchmarks/bench_sawa_cpu.py                # paper shape, writes benchmarks/results/sawa_cpu.json
    python benchmarks/bench_sawa_cpu.py --quick        # tiny sizes (CI smoke)
    python benchmarks/bench_sawa_cpu.py --threads 1    # torch.set_num_threads (recorded either way)
    python benchmarks/bench_sawa_cpu.py --providers cpp,cpp-bf16 --out results/sawa_cpu_bf16.json  # some rows

Also the provider library of the SAWA suites (``test_bench_sawa.py``) and the scaling sweep (``sweep.py``).

Providers (float32 unless named, window ω=10, hop 5; levels 2 unless named):
  cpp / cpp-lv0    the C++ kernel, levels 2 / levels 0 (the fixed window)
  cpp-bf16         the C++ kernel on bfloat16 copies of the same inputs (levels 2; fp32 accumulation):
                   its ``*_x`` is bf16 time / fp32 time, same run
  triton           the Triton kernel (CUDA inputs; the suites run it when a GPU is present)
  torch            the vectorized PyTorch backend (levels 2)
  reference        the readable loop (levels 2; slow: the suites time it once)
  sdpa-window      dense scaled_dot_product_attention with a fixed-window boolean mask (key j in
                   [i·hop, i·hop + ω)): what one writes by hand; its cost does not depend on ω
  sdpa-full        dense scaled_dot_product_attention, no mask (global cross-attention)
  flex-window      FlexAttention (torch.compile'd) with the same sliding window as a block mask;
                   forward only (torch 2.13 has no FlexAttention backward on the CPU)
Inputs: q is scaled by 0.08 so that the base-window weights are flat enough for all three levels to
occur (the fractions are recorded). Times are medians of forward (grad enabled), backward (of a
retained graph) and forward+backward, providers interleaved repetition by repetition (each runs a
block of ~100 ms of whole calls per repetition: warm caches and allocator, fair under noise);
ratios are the baseline's time over cpp's from the same run. Peak memory: tensor allocations during one
forward+backward (``_timing.tensor_peak_mb``, the profiler's allocation records).
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _timing  # noqa: E402

from mfdr_kernels import sliding_adaptive_window_attention as sawa  # noqa: E402

WINDOW, HOP = 10, 5
PAPER = dict(B=32, H=1, L=50, T=255, d=256)
QUICK_PAPER = dict(B=2, H=1, L=10, T=55, d=16)
PROVIDERS = ("cpp", "cpp-lv0", "cpp-bf16", "torch", "reference", "sdpa-window", "sdpa-full", "flex-window")
FORWARD_ONLY = ("flex-window",)
BASELINES = ("torch", "sdpa-window", "sdpa-full", "flex-window", "reference")


def shape_id(B, H, L, T, d):
    return f"B{B}-H{H}-L{L}-T{T}-d{d}"


def inputs(B, H, L, T, d, seed=0, requires_grad=True, dtype=torch.float32, device="cpu"):
    """q, k, v (B, H, L|T, d) and an upstream gradient ``do`` (B, H, L, d)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, d, generator=g) * 0.08  # flat base windows: levels 0, 1 and 2 all occur
    k = torch.randn(B, H, T, d, generator=g)
    v = torch.randn(B, H, T, d, generator=g)
    do = torch.randn(B, H, L, d, generator=g)
    q, k, v, do = (t.to(device, dtype) for t in (q, k, v, do))
    return [t.requires_grad_(requires_grad) for t in (q, k, v)] + [do]


def window_mask(L, T, device="cpu"):
    """(L, T) bool: key j takes part in query i's attention iff i·hop <= j < i·hop + ω."""
    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    return (j >= i * HOP) & (j < i * HOP + WINDOW)


def _window_mod(b, h, q_idx, kv_idx):
    return (kv_idx >= q_idx * HOP) & (kv_idx < q_idx * HOP + WINDOW)


@functools.cache
def _flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def _block_mask(L, T, device="cpu"):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(_window_mod, None, None, L, T, device=device)


def provider(name, L, T, device="cpu"):
    """A callable ``f(q, k, v) -> out`` for provider ``name`` at L queries and T keys."""
    if name in ("cpp", "torch", "reference", "triton"):
        return lambda q, k, v: sawa(q, k, v, window=WINDOW, hop=HOP, levels=2, backend=name)
    if name == "cpp-bf16":  # bfloat16 inputs: see closures()
        return lambda q, k, v: sawa(q, k, v, window=WINDOW, hop=HOP, levels=2, backend="cpp")
    if name == "cpp-lv0":
        return lambda q, k, v: sawa(q, k, v, window=WINDOW, hop=HOP, levels=0, backend="cpp")
    if name == "sdpa-window":
        mask = window_mask(L, T, device)
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if name == "sdpa-full":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v)
    if name == "flex-window":
        flex, mask = _flex(), _block_mask(L, T, str(device))
        if torch.device(device).type == "cuda":
            return lambda q, k, v: flex(q, k, v, block_mask=mask)
        return lambda q, k, v: flex(q.detach(), k.detach(), v.detach(), block_mask=mask)
    raise ValueError(f"unknown provider {name!r}; known: {PROVIDERS}")


def closures(name, q, k, v, do):
    """``{"fwd", "bwd", "fwd+bwd"}`` closures of one provider (``bwd`` uses a retained graph);
    forward-only providers get ``fwd`` alone. ``*-bf16`` providers run on bfloat16 copies of the inputs."""
    f = provider(name, q.shape[2], k.shape[2], q.device)
    if name.endswith("-bf16"):
        q, k, v = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
        do = do.bfloat16()
    out = {"fwd": lambda: f(q, k, v)}
    if name in FORWARD_ONLY and q.device.type == "cpu":
        return out
    y = f(q, k, v)
    out["bwd"] = lambda: torch.autograd.grad(y, (q, k, v), do, retain_graph=True)
    out["fwd+bwd"] = lambda: torch.autograd.grad(f(q, k, v), (q, k, v), do)
    return out


def levels_present(B, H, L, T, d, dtype=torch.float32):
    """Fraction of (b, h, i) rows at level 0, 1, 2 for these inputs (cpp backend, levels 2)."""
    q, k, v, _ = inputs(B, H, L, T, d, requires_grad=False, dtype=dtype)
    _, level = sawa(q, k, v, window=WINDOW, hop=HOP, levels=2, backend="cpp", return_level=True)
    return [round(float((level == i).float().mean()), 3) for i in range(3)]


def measure(shape: dict, names, reps: int, block_s: float = 0.1) -> list[dict]:
    """Interleaved medians (ms) of each mode of each provider at one shape, plus tensor peak memory.
    Each repetition runs every provider for a block of about ``block_s`` (whole calls, at least one), so
    most calls find caches and the allocator warm, as in a training loop, not after another provider."""
    q, k, v, do = inputs(**shape)
    fns = {n: closures(n, q, k, v, do) for n in names}
    times = {}
    for mode in ("fwd", "bwd", "fwd+bwd"):
        times[mode] = _timing.interleaved({n: c[mode] for n, c in fns.items() if mode in c}, reps=reps,
                                          target_s=block_s)
    rows = []
    for n in names:
        last = "fwd+bwd" if "fwd+bwd" in fns[n] else "fwd"
        row = {"shape": shape_id(**shape), "provider": n, "dtype": "bfloat16" if n.endswith("-bf16") else "float32"}
        for mode in ("fwd", "bwd", "fwd+bwd"):
            if n in times[mode]:
                row[f"{mode}_ms"] = times[mode][n]["median"] * 1e3
                row[f"{mode}_x"] = times[mode][n]["median"] / times[mode]["cpp"]["median"]
        row["peak_mb"] = _timing.tensor_peak_mb(fns[n][last])
        row["peak_of"] = last
        rows.append(row)
    return rows


COLUMNS = ["shape", "provider", "dtype", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x", "peak_mb",
           "peak_of"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, two repetitions (CI smoke)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--block-ms", type=float, default=100.0, help="time per provider per repetition")
    ap.add_argument("--no-flex", action="store_true", help="leave out FlexAttention (compiles for ~20 s)")
    ap.add_argument("--providers", default=None,
                    help=f"comma-separated subset of {','.join(PROVIDERS)} (cpp, the ratios' base, always runs)")
    ap.add_argument("--out", default=None,
                    help="JSON results (default: results/sawa_cpu.json; --quick writes none unless --out is given)")
    args = ap.parse_args(argv)
    threads = _timing.set_threads(args.threads)
    shape = QUICK_PAPER if args.quick else PAPER
    names = [n for n in PROVIDERS if n != "reference" and not (args.no_flex and n == "flex-window")]
    if args.providers:
        wanted = set(args.providers.split(","))
        unknown = wanted - set(PROVIDERS)
        if unknown:
            ap.error(f"--providers: unknown {sorted(unknown)}; known: {PROVIDERS}")
        names = [n for n in PROVIDERS if n in wanted or n == "cpp"]
    rows = measure(shape, names, 2 if args.quick else args.reps, args.block_ms / 1e3)
    result = {"machine": _timing.machine(), "threads": threads, "dtype": "float32", "window": WINDOW,
              "hop": HOP, "levels_fraction": levels_present(**shape), "shape": shape,
              "reps": 2 if args.quick else args.reps, "block_ms": args.block_ms, "rows": rows}
    if "cpp-bf16" in names:
        result["levels_fraction_bf16"] = levels_present(**shape, dtype=torch.bfloat16)
    _timing.write_json(_timing.results_path(args.out, args.quick, "sawa_cpu.json"), result)
    print(f"machine: {result['machine']}")
    print(f"fraction of rows at level 0/1/2: {result['levels_fraction']}"
          + (f" (bf16 inputs: {result['levels_fraction_bf16']})" if "levels_fraction_bf16" in result else ""))
    print("*_x = provider time / cpp time, same run (interleaved)\n")
    print(_timing.markdown_table(rows, COLUMNS))
    return result


if __name__ == "__main__":
    main()
