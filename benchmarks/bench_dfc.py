"""Dynamic frame convolution: the fused kernels against the unfold-based ``torch`` backend, in one run.

    python benchmarks/bench_dfc.py                 # the issue's shapes on the CPU (cuda too when present)
    python benchmarks/bench_dfc.py --quick         # tiny sizes (CI smoke)
    python benchmarks/bench_dfc.py --device cuda   # the GPU check: triton against the reference, then timings
    python benchmarks/bench_dfc.py --check         # the correctness check only
    python benchmarks/bench_dfc.py --threads 2     # torch.set_num_threads (default 1, as in the suite:
                                                   # on a busy machine an OpenMP barrier stalls every call)
    python benchmarks/bench_dfc.py --providers cpp,cpp-bf16 --shapes 2 --out results/dfc_bf16.json  # some rows
    pytest benchmarks/test_bench_dfc.py --benchmark-only   # the same providers in the pytest-benchmark suite

Providers (float32 unless named, kernel shared by the batch, as in ``mfdr.DynamicFrameConv``):
  cpp        the C++ kernels (CPU)
  cpp-bf16   the C++ kernels on bfloat16 copies of the same inputs (fp32 sums); ``fp32_x`` = cpp's time /
             cpp-bf16's time, same run
  triton     the Triton kernels (CUDA)
  torch      the unfold-based ``torch`` backend: the baseline; builds the (B, N, frame, C) product
  autograd   plain autograd through ``x.unfold(...)``: what one writes by hand, without the custom op
Times (ms) of forward (grad enabled), backward (of a retained graph: dx, dkernel) and forward+backward
are the best of ``--reps`` timed blocks, the providers interleaved block by block so that a busy machine
slows them alike; ratios are the ``torch`` provider's time over each provider's, from the same run.
Peak memory: the most bytes held at once by tensors allocated during one forward+backward (the
profiler's allocation records, replayed in time order; on CUDA ``max_memory_allocated``), beside the
size of the results themselves (y, dx, dkernel) and of the unfolded (B, N, frame, C) tensor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    """``f(x, kernel) -> y``; a ``*-bf16`` provider takes bfloat16 inputs (``measure`` makes them)."""
    if name == "autograd":
        return lambda x, k: (x.unfold(1, frame, hop).transpose(2, 3) * k).sum(2)
    backend = name.removesuffix("-bf16")
    return lambda x, k: dynamic_frame_conv(x, k, frame=frame, hop=hop, backend=backend)


def fused_for(device):
    return "cpp" if torch.device(device).type == "cpu" else "triton"


def providers_for(device):
    extra = ["cpp-bf16"] if torch.device(device).type == "cpu" else []
    return ["torch", "autograd", fused_for(device), *extra]


def _interleaved(fns: dict, device, reps: int, target_s: float = 0.01) -> dict:
    """Seconds per call of each ``fns[name]()``: the best block of ``reps``, each repetition running every
    provider in turn (other processes only ever add time, so the minimum is the steadiest estimate on a
    shared machine)."""
    times = _timing.interleaved(fns, reps=reps, device=device, target_s=target_s, warmup=2)
    return {name: t["min"] for name, t in times.items()}


def measure(shape, device="cpu", reps=15, names=None):
    B, L, C, frame, hop = shape
    N = (L - frame) // hop + 1
    x, kernel, gy = inputs(*shape, device=device)
    names = names or providers_for(device)
    low = [t.detach().bfloat16().requires_grad_() for t in (x, kernel)] + [gy.bfloat16()]
    args = {n: low if n.endswith("-bf16") else (x, kernel, gy) for n in names}  # (x, kernel, gy) per provider
    fs = {n: provider(n, frame, hop) for n in names}
    outs = {n: fs[n](*args[n][:2]) for n in names}  # retained graphs for the backward-only timing
    fwd = _interleaved({n: (lambda f=fs[n], a=args[n]: f(a[0], a[1])) for n in names}, device, reps)
    bwd = _interleaved({n: (lambda y=outs[n], a=args[n]: torch.autograd.grad(y, a[:2], a[2], retain_graph=True))
                        for n in names}, device, reps)
    both = _interleaved({n: (lambda f=fs[n], a=args[n]: torch.autograd.grad(f(a[0], a[1]), a[:2], a[2]))
                         for n in names}, device, reps)
    del outs
    rows = []
    unfolded_mb = B * N * frame * C * x.element_size() / 2**20
    results_mb = (B * N * C + x.numel() + kernel.numel()) * x.element_size() / 2**20  # y, dx, dkernel
    for n in names:
        a = args[n]
        mem = _timing.tensor_peak_mb(lambda f=fs[n], a=a: torch.autograd.grad(f(a[0], a[1]), a[:2], a[2]), device)
        scale = a[0].element_size() / x.element_size()  # the sizes below are float32's
        rows.append({
            "shape": shape_id(*shape), "provider": n, "dtype": str(a[0].dtype).removeprefix("torch."),
            "fwd_ms": fwd[n] * 1e3, "bwd_ms": bwd[n] * 1e3, "fwd+bwd_ms": both[n] * 1e3,
            "fwd_x": fwd["torch"] / fwd[n], "bwd_x": bwd["torch"] / bwd[n],
            "fwd+bwd_x": both["torch"] / both[n],
            "peak_mb": mem, "results_mb": results_mb * scale, "unfolded_mb": unfolded_mb * scale,
        })
        base = n.removesuffix("-bf16")
        if n != base and base in names:  # same-run ratio of the bf16 kernels over the float32 ones
            rows[-1].update({f"fp32_{m}x": t[base] / t[n] for m, t in (("fwd_", fwd), ("bwd_", bwd), ("", both))})
    return rows


# max |error| / max(1, max |reference|) allowed per dtype in the correctness check
CHECK_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 6e-2}


def check(device) -> list[dict]:
    """The fused backend against the float64 reference (outputs, dx, dkernel, dbias), before any timing:
    on a GPU this is the correctness half of the GPU check. Raises when an error exceeds CHECK_TOL."""
    fused = fused_for(device)
    dtypes = [torch.float64, torch.float32, torch.bfloat16]
    if torch.device(device).type == "cuda":
        dtypes += [torch.float16]
    rows = []
    for B, L, C, frame, hop in [(3, 50, 40, 3, 2), (2, 24, 33, 3, 3), (2, 11, 7, 2, 4), (4, 3, 300, 3, 2)]:
        N = (L - frame) // hop + 1
        for per_sample in (False, True):
            g = torch.Generator().manual_seed(B * L + C)
            x = torch.randn(B, L, C, generator=g, dtype=torch.float64)
            k = torch.randn(*((B,) if per_sample else ()), N, frame, C, generator=g, dtype=torch.float64)
            b = torch.randn(N, C, generator=g, dtype=torch.float64)
            gy = torch.randn(B, N, C, generator=g, dtype=torch.float64)
            want = _with_grads("reference", x, k, b, gy, frame, hop)
            for dtype in dtypes:
                got = _with_grads(fused, *(t.to(device, dtype) for t in (x, k, b, gy)), frame, hop)
                err = max(float((a.double().cpu() - w).abs().max() / max(1.0, float(w.abs().max())))
                          for a, w in zip(got, want, strict=True))
                ok = err <= CHECK_TOL[dtype]
                rows.append({"device": device, "backend": fused, "shape": shape_id(B, L, C, frame, hop),
                             "kernel": "per-sample" if per_sample else "shared", "dtype": str(dtype)[6:],
                             "max_rel_err": err, "ok": ok})
    cols = ["device", "backend", "shape", "kernel", "dtype", "max_rel_err", "ok"]
    print(_timing.markdown_table(rows, cols), end="\n\n")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise SystemExit(f"bench_dfc: {len(bad)} correctness check(s) failed: {bad}")
    return rows


def _with_grads(backend, x, k, b, gy, frame, hop):
    x, k, b = (t.detach().requires_grad_() for t in (x, k, b))
    y = dynamic_frame_conv(x, k, frame=frame, hop=hop, bias=b, backend=backend)
    return (y.detach(), *torch.autograd.grad(y, (x, k, b), gy))


COLUMNS = ["shape", "provider", "dtype", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x",
           "fp32_x", "peak_mb", "results_mb", "unfolded_mb"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions (CI smoke)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when present)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--check", action="store_true", help="only the correctness check against the reference")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU); default 1")
    ap.add_argument("--providers", default=None,
                    help="comma-separated subset of the device's providers (torch, the ratios' base, always runs)")
    ap.add_argument("--shapes", type=int, default=None, help="only the first N shapes (the paper's two: 2)")
    ap.add_argument("--out", default=None,
                    help="JSON results (default: results/dfc.json; --quick writes none unless --out is given)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shapes = (QUICK_SHAPES if args.quick else SHAPES)[:args.shapes]
    reps = 3 if args.quick else args.reps
    checks = [r for device in devices for r in check(device)]
    if args.check:
        return checks
    rows = []
    for device in devices:
        names = providers_for(device)
        if args.providers:
            wanted = set(args.providers.split(","))
            if wanted - set(names):
                ap.error(f"--providers: unknown on {device}: {sorted(wanted - set(names))}; known: {names}")
            names = [n for n in names if n in wanted or n == "torch"]
        for shape in shapes:
            rows += [{"device": device, **r} for r in measure(shape, device, reps, names)]
    result = {"machine": _timing.machine(), "dtype": "float32", "kernel": "shared (N, frame, C)",
              "rows": rows, "checks": checks}
    _timing.write_json(_timing.results_path(args.out, args.quick, "dfc.json"), result)
    print(f"machine: {result['machine']}")
    print("float32 (cpp-bf16: bfloat16), kernel shared by the batch; *_x = time of the `torch` (unfold) backend "
          "/ time, fp32_x = cpp time / cpp-bf16 time, same run\n")
    print(_timing.markdown_table(rows, ["device"] + COLUMNS))
    return result


if __name__ == "__main__":
    main()
