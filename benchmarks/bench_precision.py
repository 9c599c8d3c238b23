"""The MFDR training step in fp32 and under bf16 autocast on this CPU: the paper config with 1 and 2 torch
threads, and the model's width swept at the demo's sequence lengths (what ``train.precision: auto`` decides
from: ``mfdr.precision.CPU_BF16_MIN_D_MODEL``).

    python benchmarks/bench_precision.py                  # paper config, batch 32; then the d_model sweep
    python benchmarks/bench_precision.py --quick          # tiny model (CI smoke)
    python benchmarks/bench_precision.py --out results/precision.json
    python benchmarks/bench_precision.py --compiled       # also the steps through torch.compile (train.compile)
    python benchmarks/bench_precision.py --sample-units 600 --out units.json   # the units' speed, every second

A training step = forward under ``mfdr.precision`` (fp32, or ``torch.autocast("cpu", bfloat16)``) +
backward + the training loop's Adam, with the default kernels (C++ SAWA, DFC and GCPU; bf16 loads and
stores, fp32 accumulation). The precisions take turns step by step (``_timing.interleaved``, ``--reps``
turns, about 40 s at the paper config): step times are the means over the turns, a speed-up the ratio of
two of them (the time the turns' fp32 steps took over the time their bf16 steps took), with the quartiles
of the turns' own ratios (``speedup_iqr``) and every turn's ratio (``speedup_turns``) in the results file;
the thread counts and widths run one after the other (``torch.set_num_threads``).
``--compiled`` adds, at each thread count, the same two steps through ``torch.compile(model, fullgraph=True)``
(what ``train.compile: true`` trains through, default mode on the CPU) to the same turns.
The matrix units' speed at the time: a 1024² product in bf16 (8 of them per turn) and one in fp32 take the
same turns as the steps (``bf16_gemm_tflops``, ``fp32_gemm_tflops``), so that each ratio comes with the speed
the CPU's bf16 units and fp32 vector units ran at while it was measured (on a shared VM the bf16 units' speed
changes from second to second, and the bf16 step with it; ``--sample-units`` records it alone).
With two or more thread counts, the projections' product (the step's largest) in bf16 and in fp32 at each
thread count, all taking turns (``product_scaling``): what a second thread adds to the matrix units and to
the vector units at the same moments.
The sweep: the demo's config (80-d log-mel, 384-d MiniLM, 200 frames, 20 tokens, batch 16, 1 thread) with
``d_model`` 32 (the demo's), 64, 128 and 256 (the paper's), ``dfc_hidden = max(16, d_model / 2)``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

from mfdr import MFDR, MFDRConfig  # noqa: E402
from mfdr.config import TrainConfig  # noqa: E402
from mfdr.precision import CPU_BF16_MIN_D_MODEL, cpu_bf16_units, resolve  # noqa: E402
from mfdr.run.loop import make_optimizer  # noqa: E402


def make_step(cfg: MFDRConfig, batch: int, precision: str, compiled: bool = False):
    from op_count import inputs

    torch.manual_seed(0)
    model = MFDR(cfg)
    net = torch.compile(model, fullgraph=True) if compiled else model
    opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-4), "cpu")
    audio, text, al, tl, y = inputs(cfg, batch)
    prec = resolve(precision, "cpu")

    def step():
        with prec.autocast():
            out = net(audio, text, al, tl)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def demo_sized(d_model: int) -> MFDRConfig:
    """The demo's config (``mfdr/configs/demo.yaml``) at width ``d_model``, with ``align="stretch"``."""
    return MFDRConfig(num_classes=4, audio_dim=80, text_dim=384, audio_len=200, text_len=20, d_model=d_model,
                      heads=4, window=10, hop=5, levels=2, align="stretch", dfc_hops=(2, 3),
                      dfc_hidden=max(16, d_model // 2))


def gemm_probe(dtype: torch.dtype, n: int = 1024):
    """``(fn, flop)``: ``fn()`` multiplies two n x n matrices of ``dtype`` (8 times in bf16, about as long as one
    fp32 product on a CPU with bf16 matrix units), ``flop`` the floating-point operations of one call."""
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dtype) for _ in range(2))
    calls = 8 if dtype == torch.bfloat16 else 1

    def fn():
        for _ in range(calls):
            torch.mm(a, b)

    return fn, 2 * n**3 * calls


def gemm_probes(n: int) -> dict:
    """``{"bf16": (fn, flop), "fp32": (fn, flop)}``: the two ``gemm_probe`` s of size n."""
    return {name: gemm_probe(dtype, n) for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32))}


def measure(cfg: MFDRConfig, batch: int, reps: int, compiled: bool = False, probe: int = 0) -> dict:
    """Mean step times (ms) and ``speedup`` = fp32 / bf16 (see ``speedup``); with ``compiled`` also
    ``fp32_compiled_ms``, ``bf16_compiled_ms``, their ``compiled_speedup`` and ``compile_gain`` (bf16 eager /
    bf16 compiled); with ``probe`` = n the mean speed of an n x n product in bf16 and in fp32 taking the same
    turns (``bf16_gemm_tflops``, ``fp32_gemm_tflops``, ``gemm_n``)."""
    steps = {name: make_step(cfg, batch, name) for name in ("fp32", "bf16")}
    if compiled:
        steps.update({f"{name}_compiled": make_step(cfg, batch, name, compiled=True) for name in ("fp32", "bf16")})
    probes = {f"{name}_gemm": p for name, p in gemm_probes(probe).items()} if probe else {}
    fns = {**steps, **{name: fn for name, (fn, _) in probes.items()}}
    t = _timing.interleaved(fns, reps=reps, target_s=0.0, warmup=2)
    mean = {name: statistics.fmean(v["times"]) for name, v in t.items()}
    row = {f"{name}_ms": 1e3 * mean[name] for name in steps}
    row.update({f"{name}_tflops": flop / mean[name] / 1e12 for name, (_, flop) in probes.items()})
    if probe:
        row["gemm_n"] = probe
    row.update(speedup(t["fp32"]["times"], t["bf16"]["times"], "speedup"))
    if compiled:
        row.update(speedup(t["fp32_compiled"]["times"], t["bf16_compiled"]["times"], "compiled_speedup"))
        row.update(speedup(t["bf16"]["times"], t["bf16_compiled"]["times"], "compile_gain"))
    return row


def speedup(slow: list, fast: list, key: str) -> dict:
    """Two steps timed in the same turns: ``key`` = the time of all of ``slow``'s over all of ``fast``'s (the
    ratio of the mean step times: what a training run of these steps would take), ``key_iqr`` the quartiles of
    the turns' own ratios ``slow[i] / fast[i]``, ``key_turns`` those ratios.

    The mean, not the median: on a VM whose matrix units are fast one second and slow (2-3x) the next, a
    step's times are bimodal, and a median jumps from one mode to the other as the share of fast seconds
    in the run passes one half; the mean moves with that share."""
    r = [a / b for a, b in zip(slow, fast, strict=True)]
    q = statistics.quantiles(r, n=4, method="inclusive") if len(r) > 1 else [r[0]] * 3
    return {key: sum(slow) / sum(fast), f"{key}_iqr": [q[0], q[2]], f"{key}_turns": r}


def product_scaling(threads: list, reps: int, shape=(8160, 768, 256)) -> dict:
    """The audio projections' product (M x K by K x N: 32 x 255 frames of 768-d features into 256, the
    largest of the step) in bf16 and in fp32 at each thread count, the thread counts and dtypes taking turns
    (``torch.set_num_threads`` before each call): how much a second thread adds to each kind of unit at the
    same moments. Returns ``{"shape", "rows": [{"threads", "bf16_tflops", "fp32_tflops"}], "gains"}``, speeds
    from the mean times, ``gains[dtype]`` = mean time at the first thread count / at the last."""
    M, K, N = shape
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(M, K, generator=g), torch.randn(K, N, generator=g)
    operands = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16())}
    fns = {(t, dt): (lambda t=t, x=x: (_timing.set_threads(t), torch.mm(*x)))
           for t in threads for dt, x in operands.items()}
    before = torch.get_num_threads()
    try:
        times = _timing.interleaved(fns, reps=reps, target_s=0.0, warmup=2)
    finally:
        _timing.set_threads(before)
    mean = {key: statistics.fmean(v["times"]) for key, v in times.items()}
    flop = 2 * M * K * N
    rows = [{"threads": t, **{f"{dt}_tflops": flop / mean[(t, dt)] / 1e12 for dt in operands}} for t in threads]
    gains = {dt: mean[(threads[0], dt)] / mean[(threads[-1], dt)] for dt in operands}
    return {"shape": list(shape), "rows": rows, "gains": gains}


def sample_units(seconds: float, n: int = 1024, every: float = 1.0) -> list[dict]:
    """The square products' speeds (``gemm_probe``) once every ``every`` seconds for ``seconds``, at the current
    thread count: ``[{"t", "bf16_tflops", "fp32_tflops"}]``, ``t`` seconds from the start. What a shared machine
    does to its matrix units between the turns of a run."""
    probes = gemm_probes(n)
    for fn, _ in probes.values():
        fn()
    samples, start = [], time.perf_counter()
    while not samples or time.perf_counter() - start < seconds:
        row = {"t": time.perf_counter() - start}
        for name, (fn, flop) in probes.items():
            t0 = time.perf_counter()
            fn()
            row[f"{name}_tflops"] = flop / (time.perf_counter() - t0) / 1e12
        samples.append(row)
        time.sleep(max(0.0, row["t"] + every - (time.perf_counter() - start)))
    return samples


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, nargs="*", default=[1, 2])
    p.add_argument("--widths", type=int, nargs="*", default=[32, 64, 128, 256],
                   help="d_model values of the sweep at the demo's sizes (none: skip it)")
    p.add_argument("--reps", type=int, default=41,
                   help="turns at each thread count and at each width of the sweep")
    p.add_argument("--compiled", action="store_true", help="also the steps through torch.compile (fullgraph)")
    p.add_argument("--sample-units", type=float, default=0, metavar="SECONDS",
                   help="only sample the square products' speeds every second for SECONDS at the last thread count")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.reps < 1 or args.sample_units < 0:
        p.error(f"--reps must be >= 1 (got {args.reps}) and --sample-units >= 0 (got {args.sample_units})")
    if args.sample_units:
        _timing.set_threads(args.threads[-1] if args.threads else None)
        samples = sample_units(args.sample_units, 64 if args.quick else 1024)
        bf = sorted(r["bf16_tflops"] for r in samples)  # (report.py tabulates them minute by minute)
        print(f"{len(bf)} samples: bf16 TFLOP/s median {statistics.median(bf):.2f}, range {bf[0]:.2f}-{bf[-1]:.2f}")
        _timing.write_json(_timing.results_path(args.out, args.quick, "units.json"),
                           {"machine": _timing.machine(), "threads": torch.get_num_threads(), "samples": samples})
        return 0
    cfg, batch, reps, widths, probe = MFDRConfig(num_classes=4), args.batch, args.reps, args.widths, 1024
    if args.quick:  # (a small probe: a CPU without bf16 units multiplies bf16 slowly)
        cfg = cfg.replace(audio_dim=16, text_dim=16, audio_len=64, text_len=12, d_model=16, heads=2, dfc_hidden=8)
        batch, reps, widths, probe = 4, 1, widths[:1], 64
    rows, sweep = [], []
    print(f"bf16 units: {cpu_bf16_units()}; batch {batch}; paper config = {not args.quick}")
    head = (f"| threads | fp32 step ms | bf16 step ms | bf16 speed-up (quartiles) | bf16 {probe}² TFLOP/s "
            f"| fp32 {probe}² TFLOP/s |")
    if args.compiled:
        head += " compiled: fp32 ms | bf16 ms | bf16 speed-up | bf16 compiled vs eager |"
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for threads in args.threads:
        _timing.set_threads(threads)
        row = {"threads": threads, **measure(cfg, batch, reps, args.compiled, probe=probe)}
        rows.append(row)
        lo, hi = row["speedup_iqr"]
        line = (f"| {threads} | {row['fp32_ms']:.1f} | {row['bf16_ms']:.1f} | {row['speedup']:.2f}x "
                f"({lo:.2f}-{hi:.2f}) | "
                f"{row['bf16_gemm_tflops']:.2f} | {row['fp32_gemm_tflops']:.3f} |")
        if args.compiled:
            line += (f" {row['fp32_compiled_ms']:.1f} | {row['bf16_compiled_ms']:.1f} | {row['compiled_speedup']:.2f}x"
                     f" | {row['compile_gain']:.2f}x |")
        print(line, flush=True)
    scaling = None
    if len(args.threads) > 1:
        scaling = product_scaling(args.threads, reps, shape=(64, 64, 64) if args.quick else (8160, 768, 256))
        M, K, N = scaling["shape"]
        print(f"\nthe {M}x{K} by {K}x{N} product, thread counts taking turns: " + "; ".join(
            f"{r['threads']} thread(s) bf16 {r['bf16_tflops']:.2f} fp32 {r['fp32_tflops']:.3f} TFLOP/s"
            for r in scaling["rows"]) + "; gain " + ", ".join(f"{dt} {g:.2f}x" for dt, g in scaling["gains"].items()))
    if widths:
        _timing.set_threads(1)
        print(f"\ndemo sizes, batch 16, 1 thread; auto picks bf16 from d_model {CPU_BF16_MIN_D_MODEL}")
        print("| d_model | fp32 step ms | bf16 step ms | bf16 speed-up | auto |\n|---|---|---|---|---|")
        for d in widths:
            cfg_d = demo_sized(d) if not args.quick else cfg.replace(d_model=d, heads=2)
            row = {"d_model": d, **measure(cfg_d, 16 if not args.quick else batch, reps),
                   "auto": resolve("auto", "cpu", d).name if cpu_bf16_units() else "fp32"}
            sweep.append(row)
            print(f"| {d} | {row['fp32_ms']:.1f} | {row['bf16_ms']:.1f} | {row['speedup']:.2f}x | {row['auto']} |",
                  flush=True)
    _timing.write_json(_timing.results_path(args.out, args.quick, "precision.json"),
                       {"machine": _timing.machine(), "batch": batch, "bf16_units": cpu_bf16_units(),
                        "rows": rows, "product_scaling": scaling, "demo_batch": 16, "sweep": sweep,
                        "cpu_bf16_min_d_model": CPU_BF16_MIN_D_MODEL})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
