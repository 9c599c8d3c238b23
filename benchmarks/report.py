"""Write BENCHMARKS.md: the machine, the promised ratios, tables of medians and ratios, the sweep plots.

    python -m pytest benchmarks --benchmark-only -q   # 1. suites -> benchmarks/results/pytest_benchmark.json
    python benchmarks/report.py                       # 2. the interleaved scripts, then BENCHMARKS.md
    python benchmarks/report.py --no-run              # only re-render from benchmarks/results/*.json
    python benchmarks/report.py --only sweep,dfc      # rerun some scripts, render all

Step 2 runs, each in its own process and with the same ``--threads`` (default 1, as the suites):
``bench_sawa_cpu.py`` (SAWA at the paper shape, providers interleaved repetition by repetition),
``bench_dfc.py`` (DFC, interleaved), ``sweep.py`` (T = 256 ... 65,536, time and peak memory, plots) and
``bench_model.py`` (training step per backend, backends taking turns step by step). The promised
ratios are read from these interleaved runs, which a busy machine disturbs least; the pytest-benchmark
suite's medians (providers timed one after another) give the second column.
A GPU section is included from ``benchmarks/results/gpu_check.md`` when present
(``benchmarks/gpu_check.sh > benchmarks/results/gpu_check.md`` on a CUDA machine).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

SCRIPTS = {
    "sawa": lambda t, r: ["bench_sawa_cpu.py", "--threads", t, "--out", str(r / "sawa_cpu.json")],
    "sawa-malloc": lambda t, r: ["bench_sawa_cpu.py", "--threads", t, "--no-flex",
                                 "--out", str(r / "sawa_cpu_malloc.json")],
    "dfc": lambda t, r: ["bench_dfc.py", "--threads", t, "--out", str(r / "dfc.json")],
    "gcpu": lambda t, r: ["bench_gcpu.py", "--threads", t, "--out", str(r / "gcpu.json")],
    "sweep": lambda t, r: ["sweep.py", "--threads", t, "--out", str(r / "sweep.json")],
    "ops": lambda t, r: ["op_count.py", "--out", str(r / "op_count.json")],
    # its own thread counts: 1 and 2 for the paper config, 1 for the d_model sweep
    "precision": lambda t, r: ["bench_precision.py", "--compiled", "--out", str(r / "precision.json")],
    "model": lambda t, r: ["bench_model.py", "--threads", t, "--backends", "reference,torch,default",
                           "--reference-steps", "2", "--steps", "7", "--json", str(r / "model.json")],
}
# glibc told to keep freed memory (no trimming, no per-allocation mmap): no first-touch page faults
MALLOC_KEEP = {"MALLOC_MMAP_THRESHOLD_": "1073741824", "MALLOC_TRIM_THRESHOLD_": "4294967296"}
ENV = {"sawa-malloc": MALLOC_KEEP}
TARGETS = {"sawa_vs_sdpa_window": 3.0, "sawa_vs_torch": 5.0, "dfc_vs_unfold": 2.0, "growth_time": 20.0,
           "gcpu_vs_loop": 2.0, "gcpu_vs_compiled": 1.3, "gcpu_ops": 60, "bf16_step": 2.0, "bf16_step_aim": 3.0}


# --------------------------------------------------------------------------- running
def run_scripts(names, threads: int, results: Path) -> dict:
    log = {}
    for name in names:
        argv = [sys.executable, str(HERE / SCRIPTS[name](str(threads), results)[0]),
                *SCRIPTS[name](str(threads), results)[1:]]
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        print(f"[report] {' '.join(argv[1:])}  (load {load0:.2f})", flush=True)
        res = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONWARNINGS": "ignore", **ENV.get(name, {})})
        log[name] = {"rc": res.returncode, "seconds": round(time.perf_counter() - t0, 1),
                     "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2)}
        if name == "model" and res.returncode == 0:  # bench_model's JSON lacks the thread count
            path = results / "model.json"
            data = json.loads(path.read_text())
            data["threads"] = threads
            path.write_text(json.dumps(data, indent=2))
    return log


def _load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- formatting
def _ms(x):
    return "–" if x is None else f"{x:.3g}" if x < 1000 else f"{x:,.0f}"


def _x(x):
    return "–" if x is None else f"{x:.2f}×" if x < 100 else f"{x:,.0f}×"


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def verdict2(inter, pyb, target, higher_is_better=True):
    """A verdict over both measurements: met in both, missed in both (by how much), or split."""
    vals = [v for v in (inter, pyb) if v is not None]
    if len(vals) < 2:
        return verdict(vals[0] if vals else None, target, higher_is_better)
    ok = [v >= target if higher_is_better else v <= target for v in vals]
    if all(ok) or not any(ok):
        worst = min(vals) if higher_is_better else max(vals)
        return verdict(worst, target, higher_is_better) + (" in both" if all(ok) else " (worse of the two)")
    which = "interleaved" if ok[0] else "pytest-benchmark"
    return f"**split**: met in {which} only ({_x(inter)} / {_x(pyb)} vs {_x(target)})"


def verdict(value, target, higher_is_better=True):
    if value is None:
        return "not measured"
    ok = value >= target if higher_is_better else value <= target
    if ok:
        return f"**met** ({_x(value)} vs {'≥' if higher_is_better else '≤'} {_x(target)})"
    if higher_is_better:
        return f"**missed**: {_x(value)}, {100 * (1 - value / target):.0f}% short of {_x(target)}"
    return f"**missed**: {_x(value)}, {100 * (value / target - 1):.0f}% over {_x(target)}"


# --------------------------------------------------------------------------- pytest-benchmark
def pytest_groups(data) -> dict:
    """{(op, shape, device): {provider: {mode: median_ms}}} plus per-group metadata."""
    out = defaultdict(lambda: defaultdict(dict))
    meta = {}
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        key = (info.get("op"), str(info.get("shape", info.get("batch", ""))), info.get("device", "cpu"))
        if info.get("op") == "model":
            key = ("model", "", info.get("device", "cpu"))
        out[key][info.get("provider")][info.get("mode")] = b["stats"]["median"] * 1e3
        out[key][info.get("provider")]["_rounds"] = b["stats"]["rounds"]
        out[key][info.get("provider")]["_batch"] = info.get("batch")
        meta[key] = info
    return out, meta


def pytest_section(data) -> str:
    if not data:
        return ("*No pytest-benchmark results: run `python -m pytest benchmarks --benchmark-only -q` first "
                "(it writes `benchmarks/results/pytest_benchmark.json`).*")
    groups, meta = pytest_groups(data)
    parts = [f"pytest-benchmark {data.get('version', '?')}, run {data.get('datetime', '?')[:19]}; medians "
             "in ms (pytest-benchmark's own rounds; the reference loops one round). **÷ cpp**: the "
             "provider's time over the cpp backend's in the same run (> 1: cpp is faster). Providers ran one "
             "after another, not interleaved."]
    order = {"sawa": 0, "dfc": 1, "model": 2}
    for (op, shape, device), provs in sorted(groups.items(), key=lambda kv: order.get(kv[0][0], 3)):
        info = meta[(op, shape, device)]
        if op == "model":
            parts.append(_model_pytest_table(provs, device))
            continue
        dims = ", ".join(f"{k}={v}" for k, v in info.get("dims", {}).items())
        fast = "triton" if device == "cuda" else "cpp"
        parts.append(f"**{op.upper()} `{shape}`** ({dims}; {info.get('dtype')}; {device})")
        modes = ["fwd", "bwd", "fwd+bwd"]
        rows = []
        for p, m in provs.items():
            ref = provs.get(fast, {})
            ratios = [m[mode] / ref[mode] if mode in m and mode in ref else None for mode in modes]
            rows.append([p, *[_ms(m.get(mode)) for mode in modes], *[_x(r) for r in ratios], m["_rounds"]])
        parts.append(_table(["provider", "fwd ms", "bwd ms", "fwd+bwd ms", f"fwd ÷ {fast}", f"bwd ÷ {fast}",
                             f"fwd+bwd ÷ {fast}", "rounds"], rows))
    return "\n\n".join(parts)


def _model_pytest_table(provs, device) -> str:
    rows = []
    base = provs.get("default", {})
    for p, m in provs.items():
        b = m.get("_batch") or 1
        per = {mode: m[mode] / b for mode in ("train", "infer") if mode in m}
        ratio = {mode: per[mode] / (base[mode] / base["_batch"]) if mode in per and mode in base else None
                 for mode in per}
        rows.append([p, b, _ms(m.get("train")), _ms(m.get("infer")),
                     f"{1e3 / per['train']:.1f}" if "train" in per else "–",
                     f"{1e3 / per['infer']:.1f}" if "infer" in per else "–",
                     _x(ratio.get("train")), _x(ratio.get("infer"))])
    return ("**MFDR model** (paper config, float32; " + device + "): training step (forward, loss, backward, "
            "Adam) and inference (eval, no_grad). Ratios per sample against `default`.\n\n"
            + _table(["backend", "batch", "train ms", "infer ms", "train samples/s", "infer samples/s",
                      "train ÷ default (per sample)", "infer ÷ default (per sample)"], rows))


def pytest_ratio(data, op, shape, baseline, mode="fwd+bwd"):
    if not data:
        return None
    groups, _ = pytest_groups(data)
    for (o, s, d), provs in groups.items():
        if o == op and s == shape and d == "cpu" and baseline in provs and "cpp" in provs:
            if mode in provs[baseline] and mode in provs["cpp"]:
                return provs[baseline][mode] / provs["cpp"][mode]
    return None


# --------------------------------------------------------------------------- sections
def machine_section(infos, run_log) -> str:
    m = next((i for i in infos if i), {})
    rows = [["CPU", m.get("cpu", "?")], ["cores", m.get("cores", "?")], ["RAM", f"{m.get('ram_gb', '?')} GB"],
            ["torch threads", m.get("threads", "?")], ["python", m.get("python", "?")],
            ["torch", m.get("torch", "?")], ["triton", m.get("triton", "?")],
            ["mfdr_kernels", m.get("mfdr_kernels", "?")],
            ["default CPU backend", m.get("default_backend_cpu", "?")],
            ["GPU", m.get("gpu", "none")]]
    try:
        import pytest_benchmark

        rows.append(["pytest-benchmark", pytest_benchmark.__version__])
    except ImportError:
        pass
    loads = [f"{n}: {v['load_before']}→{v['load_after']} ({v['seconds']} s)" for n, v in run_log.items()]
    loads += [f"{n} start: {i['load_avg_1m']}" for n, i in zip(("sawa", "dfc", "sweep"), infos, strict=False)
              if i and "load_avg_1m" in i and not run_log]
    if len(infos) > 3 and infos[3] and "load_avg_1m" in infos[3]:
        loads.insert(0, f"pytest suite end: {infos[3]['load_avg_1m']}")
    if loads:
        rows.append(["1-min load average (2 cores)", "; ".join(loads)])
    return _table(["", ""], rows)


def precision_headline(prec) -> list:
    """The CPU mixed-precision issue's ratio: bf16 vs fp32 training step, paper config (target 2x, aim 3x)."""
    rows = []
    for r in (prec or {}).get("rows", []):
        target = f"≥ {TARGETS['bf16_step']:.0f}× (aim {TARGETS['bf16_step_aim']:.0f}×)"
        rows.append([f"MFDR training step bf16 vs fp32 on this CPU, paper config, batch {prec['batch']}, "
                     f"{r['threads']} thread(s)", target, _x(r["speedup"]), "–",
                     verdict(r["speedup"], TARGETS["bf16_step"])])
    for r in (prec or {}).get("rows", []):
        if "compiled_speedup" in r:
            rows.append([f"(context) the same through `torch.compile` (`train.compile: true`), {r['threads']} "
                         "thread(s)", "–", _x(r["compiled_speedup"]), "–", "no target"])
    return rows


def headline_section(sawa, dfc, sweep, pyb, gcpu=None, prec=None) -> str:
    rows = []
    by = {r["provider"]: r for r in (sawa or {}).get("rows", [])}
    shape = (sawa or {}).get("shape", {})
    shape_s = ", ".join(f"{k}={v}" for k, v in shape.items())
    for base, target, label in (("sdpa-window", "sawa_vs_sdpa_window", "SAWA cpp vs SDPA with a window mask"),
                                ("torch", "sawa_vs_torch", "SAWA cpp vs the torch backend")):
        val = by.get(base, {}).get("fwd+bwd_x")
        py = pytest_ratio(pyb, "sawa", "paper", base)
        rows.append([f"{label} (paper shape {shape_s}, levels 2, fwd+bwd)", f"≥ {TARGETS[target]:.0f}×",
                     _x(val), _x(py), verdict2(val, py, TARGETS[target])])
    for extra in ("sdpa-full", "flex-window"):
        if extra in by:
            mode = "fwd+bwd" if extra != "flex-window" else "fwd"
            rows.append([f"(context) SAWA cpp vs {extra} ({mode})", "–", _x(by[extra].get(f"{mode}_x")),
                         _x(pytest_ratio(pyb, "sawa", "paper", extra, mode)), "no target"])
    for r in (dfc or {}).get("rows", []):
        if r.get("provider") == "cpp" and r.get("device", "cpu") == "cpu":
            val = r.get("fwd+bwd_x")
            py = pytest_ratio(pyb, "dfc", r["shape"], "torch")
            rows.append([f"DFC fused (cpp) vs unfold (torch backend), {r['shape']}, fwd+bwd",
                         f"≥ {TARGETS['dfc_vs_unfold']:.0f}×", _x(val), _x(py),
                         verdict2(val, py, TARGETS["dfc_vs_unfold"])])
    rows += gcpu_headline(gcpu, pyb)
    rows += precision_headline(prec)
    for g in (sweep or {}).get("growth", []):
        if g["provider"] in ("cpp", "cpp-lv0"):
            lo, hi = (int(t) for t in g["T"].split(" → "))
            rows.append([f"SAWA {g['provider']} time growth, T {g['T']}, L = T/5 ({hi // lo}× the work), "
                         "fwd+bwd",
                         f"≤ {TARGETS['growth_time']:.0f}×", _x(g["time_x"]), "–",
                         verdict(g["time_x"], TARGETS["growth_time"], higher_is_better=False)])
    return ("Measured ratios against the targets of the kernel issues. *Interleaved*: `bench_sawa_cpu.py`, "
            "`bench_dfc.py`, `bench_gcpu.py`, `sweep.py`, `bench_precision.py` (providers take turns repetition by "
            "repetition in one process); *pytest-benchmark*: the suite's medians from the same `make bench`. "
            "Ratio = baseline time ÷ our time (or, for growth, time at the larger T ÷ time at the smaller).\n\n"
            + _table(["claim", "target", "interleaved", "pytest-benchmark", "verdict"], rows))


def sawa_section(sawa) -> str:
    if not sawa:
        return "*not run*"
    cols = ["provider", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x", "peak_mb"]
    heads = {"fwd_ms": "fwd ms", "bwd_ms": "bwd ms", "fwd+bwd_ms": "fwd+bwd ms", "fwd_x": "fwd ÷ cpp",
             "bwd_x": "bwd ÷ cpp", "fwd+bwd_x": "fwd+bwd ÷ cpp", "peak_mb": "peak MiB (tensors)"}
    lf = sawa.get("levels_fraction")
    shape = ", ".join(f"{k}={v}" for k, v in sawa.get("shape", {}).items())
    return (f"Shape {shape}, float32, window {sawa.get('window')}, hop {sawa.get('hop')}, "
            f"{sawa.get('threads')} thread(s), medians of {sawa.get('reps')} interleaved repetitions. "
            f"Rows at level 0/1/2: {lf}. `sdpa-window` masks keys outside `[i·hop, i·hop+ω)`; "
            "`flex-window` is forward-only on the CPU. Peak memory: tensors allocated during one "
            "forward+backward (forward for flex), from the profiler's allocation records.\n\n"
            + _timing.markdown_table(sawa["rows"], cols, heads))


def malloc_section(sawa, kept) -> str:
    if not sawa or not kept:
        return "*not run* (`python benchmarks/report.py --only sawa-malloc`)"
    a = {r["provider"]: r for r in sawa["rows"]}
    b = {r["provider"]: r for r in kept["rows"]}
    rows = [[n, _ms(a[n].get("fwd+bwd_ms")), _ms(b[n].get("fwd+bwd_ms")), _x(a[n].get("fwd+bwd_x")),
             _x(b[n].get("fwd+bwd_x"))] for n in b if n in a and "fwd+bwd_ms" in b[n]]
    env = " ".join(f"{k}={v}" for k, v in MALLOC_KEEP.items())
    return ("The same script run again in a process whose glibc keeps freed memory "
            f"(`{env}`), so that no call page-faults fresh memory for its outputs and gradients. With the "
            "default glibc settings, freed blocks of megabytes go back to the OS and the next call faults "
            "them in again (18 MiB of gradients per SAWA call at this shape). The C++ kernels allocate their "
            "outputs per call, with no cache of their own (one was worth under 5% of an MFDR training step and "
            "is gone, README \"Backends\"): the difference between the columns is what each provider pays for "
            "page faults. The targets above are judged with the default allocator, which is what a user gets."
            "\n\n"
            + _table(["provider", "fwd+bwd ms (default)", "fwd+bwd ms (memory kept)", "÷ cpp (default)",
                      "÷ cpp (memory kept)"], rows))


def dfc_section(dfc) -> str:
    if not dfc:
        return "*not run*"
    cols = ["shape", "provider", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x", "peak_mb",
            "unfolded_mb"]
    heads = {"fwd_ms": "fwd ms", "bwd_ms": "bwd ms", "fwd+bwd_ms": "fwd+bwd ms", "fwd_x": "torch ÷ fwd",
             "bwd_x": "torch ÷ bwd", "fwd+bwd_x": "torch ÷ fwd+bwd", "peak_mb": "peak MiB",
             "unfolded_mb": "unfolded MiB"}
    return ("From `bench_dfc.py` (float32, kernel shared by the batch; `torch` is the unfold-based backend, "
            "`autograd` plain autograd through `x.unfold`). Here the ratio is **the torch backend's time ÷ "
            "the provider's** (> 1: faster than unfold). Peak: tensors allocated during one forward+backward "
            f"(profiler records); unfolded: the (B, N, frame, C) tensor the fused kernel never builds. "
            f"Threads: {dfc.get('machine', {}).get('threads')}.\n\n"
            + _timing.markdown_table(dfc["rows"], cols, heads))


def _gcpu_rows(gcpu, level="stage", shape=None) -> dict:
    """{provider: row} of bench_gcpu's CPU rows at a level (the first shape unless named)."""
    rows = [r for r in (gcpu or {}).get("rows", []) if r.get("device", "cpu") == "cpu" and r["level"] == level]
    shape = shape or next((r["shape"] for r in rows), None)
    return {r["provider"]: r for r in rows if r["shape"] == shape}


def gcpu_headline(gcpu, pyb) -> list:
    by = _gcpu_rows(gcpu)
    if "cpp" not in by:
        return []
    cpp, shape = by["cpp"], by["cpp"]["shape"]
    rows = [[f"GCPU recurrence cpp vs the readable loop (eager), {shape}, fwd+bwd", f"≥ {TARGETS['gcpu_vs_loop']:.0f}×",
             _x(cpp["fwd+bwd_x"]), _x(pytest_ratio(pyb, "gcpu", shape, "loop")),
             verdict2(cpp["fwd+bwd_x"], pytest_ratio(pyb, "gcpu", shape, "loop"), TARGETS["gcpu_vs_loop"])]]
    if cpp.get("vs_compiled_x") is not None:
        rows.append([f"GCPU recurrence cpp vs `torch.compile` of the loop, {shape}, fwd+bwd",
                     f"≥ {TARGETS['gcpu_vs_compiled']:.1f}×", _x(cpp["vs_compiled_x"]), "–",
                     verdict(cpp["vs_compiled_x"], TARGETS["gcpu_vs_compiled"])])
    rows.append([f"GCPU recurrence stage, dispatched aten ops per fwd+bwd (loop: {by.get('loop', {}).get('ops', '?')})",
                 f"≤ {TARGETS['gcpu_ops']}", str(cpp["ops"]), "–",
                 "**met**" if cpp["ops"] <= TARGETS["gcpu_ops"] else f"**missed**: {cpp['ops']}"])
    return rows


def gcpu_section(gcpu) -> str:
    if not gcpu:
        return "*not run*"
    cols = ["shape", "level", "provider", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x",
            "vs_compiled_x", "ops", "peak_mb"]
    heads = {"fwd_ms": "fwd ms", "bwd_ms": "bwd ms", "fwd+bwd_ms": "fwd+bwd ms", "fwd_x": "loop ÷ fwd",
             "bwd_x": "loop ÷ bwd", "fwd+bwd_x": "loop ÷ fwd+bwd", "vs_compiled_x": "compiled ÷ fwd+bwd",
             "ops": "aten ops", "peak_mb": "peak MiB"}
    return ("From `bench_gcpu.py` (float32, padded lengths, providers interleaved). *stage*: "
            "`GCPU.recurrence(z, g, lengths)`, the model's GCPU stage (the input-side products for all steps, "
            "one matmul per stream, then the recurrence); *op*: `gated_context_recurrence` alone on given "
            "input-side terms. `loop` is the reference backend (the readable loop of eqs. 1-6, autograd "
            "through it), `compiled` is `torch.compile` (Inductor) of that loop, `torch` the vectorized "
            "backend (a Python loop with hand-written backpropagation through time), `cpp` the fused kernels. "
            "Ratios: the `loop`'s time ÷ the provider's, and `torch.compile`'s fwd+bwd ÷ the provider's, "
            "same run. *aten ops*: dispatched by one forward+backward with `autograd.grad` (value checks off, "
            "as on an accelerator); a `.backward()` into parameters' `.grad` adds one op per leaf. Peak: "
            f"tensors allocated during one forward+backward. Threads: {gcpu.get('machine', {}).get('threads')}."
            "\n\n" + _timing.markdown_table([r for r in gcpu["rows"] if r.get("device", "cpu") == "cpu"], cols, heads))


def model_section(model) -> str:
    if not model:
        return "*not run*"
    import bench_model

    res = model["results"]
    lines = [f"{r['backend']}: step {1e3 * r['step_s']:.1f} ms at batch {r['batch']} "
             f"({r['batch'] / r['step_s']:.1f} samples/s; median of {r['steps']})" for r in res]
    return ("From `bench_model.py` (paper config, float32, backends taking turns step by step; per-stage "
            "forward+backward times on the stage's own inputs, \"other\" = step − their sum). "
            f"Threads: {model.get('threads', model.get('env', {}).get('threads'))}.\n\n"
            + "\n".join(f"- {x}" for x in lines) + "\n\n" + bench_model.table(res))


# Before the GPU-readiness and fused-GCPU work (commit 3f855cc), the same counter, paper config, batch 32:
# forward+backward+AdamW of the default config, and its host syncs with the CPU's default value checks.
OPS_BEFORE = {"MFDR": {"forward": 1452, "backward": 2739, "optimizer": 492, "total": 4683, "syncs": 20},
              "w/o Context": {"forward": 1143, "backward": 2409, "optimizer": 402, "total": 3954, "syncs": 18}}


def precision_series(results: Path) -> dict:
    """``{threads: [speed-up, ...]}`` over the earlier runs of ``bench_precision.py`` kept in
    ``results/precision_series/`` (one results file per run; the name says when it ran)."""
    runs = {}
    for path in sorted((results / "precision_series").glob("*.json")):
        for r in (_load(path) or {}).get("rows", []):
            runs.setdefault(r["threads"], []).append(r["speedup"])
    return runs


def _series_text(series: dict) -> str:
    if not series:
        return ""
    n = max(len(v) for v in series.values())
    ranges = ", ".join(f"{t} thread{'s' if t > 1 else ''} {min(v):.2f}–{max(v):.2f}×"
                       for t, v in sorted(series.items()))
    return f" (over the {n} earlier runs in `results/precision_series/`: {ranges})"


def units_section(results: Path) -> str:
    """The matrix units' speed sampled every second (``bench_precision.py --sample-units``), minute by minute."""
    units = _load(results / "units.json")
    if not units or not units.get("samples"):
        return ""
    samples = units["samples"]
    bf = [r["bf16_tflops"] for r in samples]
    mid = (min(bf) + max(bf)) / 2
    rows = []
    for minute in range(int(samples[-1]["t"] // 60) + 1):
        rs = [r for r in samples if minute * 60 <= r["t"] < minute * 60 + 60]
        if not rs:
            continue
        b = sorted(r["bf16_tflops"] for r in rs)
        rows.append([minute, len(rs), f"{statistics.median(b):.2f}", f"{b[0]:.2f}–{b[-1]:.2f}",
                     f"{sum(x > mid for x in b) / len(b):.0%}",
                     f"{statistics.median(r['fp32_tflops'] for r in rs):.3f}"])
    return (f"\n\nThe matrix units between the turns: the 1024² products alone, once a second for "
            f"{len(samples)} seconds at {units['threads']} thread(s) (`bench_precision.py --sample-units`, "
            "`results/units.json`). *Fast*: the share of seconds above the midpoint of the slowest and the fastest "
            f"bf16 sample ({mid:.2f} TFLOP/s).\n\n"
            + _table(["minute", "samples", "bf16 TFLOP/s (median)", "bf16 range", "fast", "fp32 TFLOP/s (median)"],
                     rows))


def bf16_ops_table(results: Path) -> str:
    """Each op's cpp kernel in bf16 against fp32, forward+backward, from the ops' own interleaved runs."""
    rows = []
    sawa = {r["provider"]: r for r in (_load(results / "sawa_cpu.json") or {}).get("rows", [])}
    if "cpp" in sawa and "cpp-bf16" in sawa:
        rows.append(["SAWA (B32-H1-L50-T255-d256)", _ms(sawa["cpp"]["fwd+bwd_ms"]), _ms(sawa["cpp-bf16"]["fwd+bwd_ms"]),
                     _x(sawa["cpp"]["fwd+bwd_ms"] / sawa["cpp-bf16"]["fwd+bwd_ms"]), "sawa_cpu.json"])
    dfc = defaultdict(dict)
    for r in (_load(results / "dfc_bf16.json") or {}).get("rows", []):
        dfc[r["shape"]][r["provider"]] = r["fwd+bwd_ms"]
    for shape, by in dfc.items():
        if "cpp" in by and "cpp-bf16" in by:
            rows.append([f"DFC ({shape})", _ms(by["cpp"]), _ms(by["cpp-bf16"]), _x(by["cpp"] / by["cpp-bf16"]),
                         "dfc_bf16.json"])
    gcpu = defaultdict(dict)
    for r in (_load(results / "gcpu.json") or {}).get("rows", []):
        gcpu[(r["shape"], r["level"])][r["provider"]] = r["fwd+bwd_ms"]
    for (shape, level), by in gcpu.items():
        if "cpp" in by and "cpp-bf16" in by:
            rows.append([f"GCPU {level} ({shape})", _ms(by["cpp"]), _ms(by["cpp-bf16"]),
                         _x(by["cpp"] / by["cpp-bf16"]), "gcpu.json"])
    if not rows:
        return ""
    return ("\n\nPer op, the `cpp` kernels in fp32 and in bf16 (forward+backward ms, 1 thread, each op's own "
            "interleaved run):\n\n" + _table(["op (shape)", "fp32 ms", "bf16 ms", "bf16 speed-up", "from"], rows))


def _x_iqr(row: dict, key: str) -> str:
    """``row[key]`` as a ratio, with its quartiles over the turns where the results file has them."""
    iqr = row.get(f"{key}_iqr")
    return _x(row[key]) + (f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else "")


def precision_section(prec, results: Path = RESULTS) -> str:
    if not prec:
        return "*not run* (`python benchmarks/report.py --only precision`)"
    compiled = all("compiled_speedup" in r for r in prec["rows"])
    head = ["threads", "fp32 step ms", "bf16 step ms", "bf16 speed-up"]
    rows = [[r["threads"], _ms(r["fp32_ms"]), _ms(r["bf16_ms"]), _x_iqr(r, "speedup")] for r in prec["rows"]]
    probed = all("bf16_gemm_tflops" in r for r in prec["rows"])
    if probed:
        n = prec["rows"][0].get("gemm_n", 1024)
        head += [f"bf16 {n}² product TFLOP/s", f"fp32 {n}² product TFLOP/s"]
        for row, r in zip(rows, prec["rows"], strict=True):
            row += [f"{r['bf16_gemm_tflops']:.2f}", f"{r['fp32_gemm_tflops']:.3f}"]
    if compiled:
        head += ["compiled: fp32 ms", "compiled: bf16 ms", "compiled: bf16 speed-up", "bf16: compiled vs eager"]
        for row, r in zip(rows, prec["rows"], strict=True):
            row += [_ms(r["fp32_compiled_ms"]), _ms(r["bf16_compiled_ms"]), _x_iqr(r, "compiled_speedup"),
                    _x_iqr(r, "compile_gain")]
    scaling, series = prec.get("product_scaling"), precision_series(results)
    sweep = [[r["d_model"], _ms(r["fp32_ms"]), _ms(r["bf16_ms"]), _x_iqr(r, "speedup"), r["auto"]]
             for r in prec.get("sweep", [])]
    text = ("From `bench_precision.py`: one training step (forward, backward, the loop's fused Adam) in fp32 and "
            "under `torch.autocast(\"cpu\", bfloat16)`, the precisions taking turns step by step; step times are "
            "means over the turns and a speed-up is the ratio of two of them (in brackets the quartiles of the "
            "turns' own ratios); with the "
            f"default kernels (C++ SAWA, DFC, GCPU in bf16). CPU bf16 units: `{prec.get('bf16_units')}`. Paper "
            f"config, batch {prec['batch']}. On the 2-core VM these were measured on, the matrix units' speed "
            "jumps from second to second between two levels (the per-second samples further down), and the bf16 "
            "step, about 40% "
            "of it in matrix products, moves with it; hence means over the turns, and still the ratios move "
            "between runs" + _series_text(series)
            + ("; the *product* columns give the speed a square product in bf16 and in fp32 ran at, taking "
               "the same turns as the steps" if probed else "")
            + (". *compiled*: the same steps through `torch.compile(model, fullgraph=True)` (what "
               "`train.compile: true` trains through; default mode), taking the same turns" if compiled else "")
            + ":\n\n" + _table(head, rows))
    if scaling:
        M, K, N = scaling["shape"]
        first, last = scaling["rows"][0]["threads"], scaling["rows"][-1]["threads"]
        text += (f"\n\nWhat more threads add to each kind of unit: the step's largest product ({M}×{K} by {K}×{N}, "
                 "the audio projections) in bf16 and in fp32 at each thread count, thread counts and dtypes taking "
                 "turns call by call (mean speeds). Where the bf16 product gains less from a second thread than "
                 "the fp32 one, the bf16 step's speed-up shrinks with the thread count.\n\n"
                 + _table(["threads", "bf16 TFLOP/s", "fp32 TFLOP/s", "bf16 ÷ fp32 speed"],
                          [[r["threads"], f"{r['bf16_tflops']:.2f}", f"{r['fp32_tflops']:.3f}",
                            _x(r["bf16_tflops"] / r["fp32_tflops"])] for r in scaling["rows"]])
                 + f"\n\nGain from {first} to {last} threads: bf16 {_x(scaling['gains']['bf16'])}, fp32 "
                 f"{_x(scaling['gains']['fp32'])}.")
    if sweep:
        text += ("\n\nThe model's width at the demo's sizes (80-d log-mel, 384-d MiniLM, 200 frames, 20 tokens, "
                 f"batch {prec.get('demo_batch', 16)}, 1 thread): what `train.precision: auto` decides from on "
                 f"such a CPU (bf16 from d_model {prec.get('cpu_bf16_min_d_model')}, "
                 "`mfdr.precision.CPU_BF16_MIN_D_MODEL`).\n\n"
                 + _table(["d_model", "fp32 step ms", "bf16 step ms", "bf16 speed-up", "auto"], sweep))
    return text + units_section(results) + bf16_ops_table(results)


def ops_section(ops) -> str:
    if not ops:
        return "*not run*"
    rows = [[name, r["forward"], r["backward"], r["optimizer"], r["total"], r["syncs"],
             OPS_BEFORE.get(name, {}).get("total", ""), OPS_BEFORE.get(name, {}).get("syncs", "")]
            for name, r in ops["rows"].items()]
    return ("From `op_count.py`: the aten ops one training step dispatches (≈ kernel launches on a GPU, ~5 µs "
            "each) and its host syncs, counted on the CPU by `mfdr_kernels.counting.DispatchCounter` (paper "
            f"config, batch {ops['meta']['batch']}, padded lengths, `MFDR_KERNELS_CHECK_VALUES="
            f"{ops['meta']['check_values']}` as on a GPU). *Before*: the code before the GPU-readiness work "
            "(value checks reading device data in forward and backward, GCPU as a Python loop of ~70 ops per "
            "step, a per-parameter Adam). Now: lengths and starts clamped instead of read, the fused GCPU op "
            "(`gated_context_recurrence`), fused Adam; padded frames and tokens zeroed before they meet valid ones "
            "(~20 ops). Counted with the CPU's kernels (`cpp`), which read the projections' heads in place; "
            "the Triton kernels take contiguous q, k, v, so a GPU step adds their copies and those of the "
            "gradients (about 6 ops). The counter sees the GPU's path elsewhere (fused attention, "
            "`torch.where`; `mfdr_kernels._checks.cpu_eager`). GRU and MGRU keep per-step loops (cuDNN runs "
            "`torch.gru` as one op on CUDA; MGRU is not fused).\n\n"
            + _table(["config", "forward", "backward", "optimizer", "total ops", "host syncs", "before: ops",
                      "before: syncs"], rows))


def sweep_section(sweep) -> str:
    if not sweep:
        return "*not run*"
    rows = sweep["rows"]
    names = list(dict.fromkeys(r["provider"] for r in rows))
    Ts = sorted({r["T"] for r in rows})
    cell = {(r["provider"], r["T"]): r for r in rows}

    def fmt(r, key):
        if r is None:
            return "–"
        if "skipped" in r:
            return "skipped (memory/time)"
        v = r.get(key)
        return _ms(v) if isinstance(v, (int, float)) else str(v)

    t_rows = [[T, T // 5, *[fmt(cell.get((n, T)), "fwd+bwd_ms") for n in names]] for T in Ts]
    m_rows = [[T, T // 5, *[f"{fmt(cell.get((n, T)), 'rss_mb')} / {fmt(cell.get((n, T)), 'tensor_mb')}"
                            if (n, T) in cell and "skipped" not in cell[(n, T)] else fmt(cell.get((n, T)), "")
                            for n in names]] for T in Ts]
    skipped = [f"{r['provider']} at T={r['T']}: {r['skipped']}" for r in rows if "skipped" in r]
    growth = sweep.get("growth", [])
    g_rows = [[g["provider"], g["T"], _x(g["time_x"]), f"{g['time_slope']:.2f}", _x(g.get("rss_x")),
               f"{g['rss_slope']:.2f}" if "rss_slope" in g else "–", _x(g.get("tensor_x")),
               f"{g['tensor_slope']:.2f}" if "tensor_slope" in g else "–"] for g in growth]
    plots = "\n\n".join(f"![{p}](benchmarks/results/{p})" for p in sweep.get("plots", []))
    return (f"B=1, H=1, d=64, L=T/5, float32, window {sweep.get('window')}, hop {sweep.get('hop')}, "
            f"{sweep.get('threads')} thread(s); rows at level 0/1/2 at T=4096: "
            f"{sweep.get('levels_fraction_T4096')}. "
            "`sdpa-full` is torch's CPU flash kernel (it never holds the L×T scores, so its memory grows "
            "linearly; its time grows quadratically); `sdpa-window` passes the boolean window mask, which "
            "torch expands to an L×T float bias (4 bytes per score). Peak memory, two ways: **RSS** = rise "
            "of the peak resident set of a fresh process (`VmHWM`, high-water mark reset first) across one "
            "forward+backward beyond its inputs; **tensors** = most bytes held at once by tensors allocated "
            "during it (profiler allocation records; blind to a kernel's std::vector scratch).\n\n"
            "Forward+backward time (ms):\n\n"
            + _table(["T", "L", *names], t_rows)
            + "\n\nPeak memory rise (MiB), RSS / tensors:\n\n" + _table(["T", "L", *names], m_rows)
            + ("\n\n" + "; ".join(skipped) if skipped else "")
            + "\n\nGrowth between the two sizes (ratio, and log-log slope: 1 = linear, 2 = quadratic):\n\n"
            + _table(["provider", "T", "time ×", "time slope", "RSS ×", "RSS slope", "tensors ×",
                      "tensors slope"], g_rows)
            + "\n\n" + plots)


def compile_section(results: Path) -> str:
    path = results / "compile_check.md"
    if not path.exists():
        return "Not run: `python benchmarks/compile_check.py > benchmarks/results/compile_check.md`."
    return ("Every Triton kernel and autotune config compiled for sm_90 (H100) on this CPU-only machine with "
            "triton's compiler and the wheel's `ptxas -v` (`benchmarks/compile_check.py`): proof that the "
            "kernels lower to a GPU, and their register use. The kernels autotune over the configs free of "
            "spills only (`mfdr_kernels/_triton.py`); `gpu_check.sh` timings say which of those win. From "
            f"`{path.relative_to(ROOT)}`:\n\n" + path.read_text())


def gpu_section(results: Path) -> str:
    path = results / "gpu_check.md"
    if path.exists():
        return f"From `{path.relative_to(ROOT)}`:\n\n" + path.read_text()
    return ("**Not measured: no GPU lent** to the session that produced this file. On a CUDA machine, one "
            "command checks the Triton kernels against the reference and times them against dense SDPA, "
            "SDPA with a window mask and FlexAttention:\n\n"
            "```\nbenchmarks/gpu_check.sh > benchmarks/results/gpu_check.md\n"
            "python benchmarks/report.py --no-run   # re-render with the GPU section\n```\n\n"
            "`pytest benchmarks --benchmark-only` also adds `triton` (and CUDA baseline) rows by itself when "
            "CUDA is present.")


REPRODUCE = """```
make bench       # = the two lines below (after creating .venv and building the extension)
.venv/bin/python -m pytest benchmarks --benchmark-only -q   # -> benchmarks/results/pytest_benchmark.json
.venv/bin/python benchmarks/report.py       # interleaved scripts + sweep + plots -> BENCHMARKS.md

# pieces
.venv/bin/python benchmarks/bench_sawa_cpu.py --threads 1   # SAWA paper shape, interleaved
.venv/bin/python benchmarks/bench_dfc.py --threads 1        # DFC, interleaved
.venv/bin/python benchmarks/sweep.py --threads 1            # scaling sweep + PNG plots
.venv/bin/python benchmarks/bench_model.py --threads 1      # training step per backend, per-stage breakdown
.venv/bin/python benchmarks/bench_precision.py --compiled   # fp32 vs bf16 step (report.py --only precision)
.venv/bin/python benchmarks/bench_precision.py --widths \
    --out benchmarks/results/precision_series/$(date +%FT%H-%M-%S).json   # one more run for the range
.venv/bin/python benchmarks/bench_precision.py --threads 2 --sample-units 600 \
    --out benchmarks/results/units.json                    # the matrix units' speed, once a second
.venv/bin/python benchmarks/report.py --no-run              # re-render from benchmarks/results/*.json

# CI smoke (tiny sizes, every benchmark body once, < 90 s on 2 cores)
MFDR_BENCH_QUICK=1 .venv/bin/python -m pytest benchmarks --benchmark-disable -q
```
Threads: 1 by default everywhere (`--bench-threads N` for pytest, `--threads N` for the scripts and
report.py). On a busy machine the OpenMP barrier of a multi-threaded op waits for a descheduled
thread, and whole calls become 10-100× slower; one thread keeps the ratios meaningful. On a quiet
machine, measure more threads with those flags."""


def render(results: Path, out: Path, run_log: dict) -> str:
    sawa, dfc, sweep, gcpu = (_load(results / f) for f in ("sawa_cpu.json", "dfc.json", "sweep.json", "gcpu.json"))
    model, pyb = _load(results / "model.json"), _load(results / "pytest_benchmark.json")
    infos = [(x or {}).get("machine") for x in (sawa, dfc, sweep)]
    if pyb:
        infos.append(pyb.get("machine_info", {}).get("mfdr"))
    text = "\n\n".join([
        "# Benchmarks",
        f"Written by `benchmarks/report.py` on {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} from "
        "`benchmarks/results/` (see *Reproduce*). CPU only unless the GPU section says otherwise. "
        "The machine was shared with other jobs while these ran: expect a few tens of percent of noise in "
        "any single median; the ratios come from runs in which the providers take turns.",
        "## Machine\n\n" + machine_section(infos, run_log),
        "## Promised ratios\n\n" + headline_section(sawa, dfc, sweep, pyb, gcpu, _load(results / "precision.json")),
        "## SAWA at the paper's shape (interleaved)\n\n" + sawa_section(sawa),
        "### Allocator sensitivity\n\n" + malloc_section(sawa, _load(results / "sawa_cpu_malloc.json")),
        "## Scaling sweep: SAWA vs dense SDPA as T grows\n\n" + sweep_section(sweep),
        "## DFC (interleaved)\n\n" + dfc_section(dfc),
        "## GCPU recurrence (interleaved)\n\n" + gcpu_section(gcpu),
        "## MFDR training step (interleaved)\n\n" + model_section(model),
        "## MFDR training step: fp32 vs bf16 on the CPU (interleaved)\n\n"
        + precision_section(_load(results / "precision.json"), results),
        "## Dispatched ops and host syncs per training step\n\n" + ops_section(_load(results / "op_count.json")),
        "## pytest-benchmark suite\n\n" + pytest_section(pyb),
        "## GPU\n\n" + gpu_section(results),
        "### Offline compile for sm_90 (no GPU)\n\n" + compile_section(results),
        "## Reproduce\n\n" + REPRODUCE,
    ]) + "\n"
    out.write_text(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--no-run", action="store_true", help="only render from the JSON files in --results")
    ap.add_argument("--only", default=",".join(SCRIPTS), help=f"scripts to run (of {','.join(SCRIPTS)})")
    ap.add_argument("--threads", type=int, default=1, help="torch threads of every script (default 1)")
    ap.add_argument("--results", default=str(RESULTS))
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    log_path = results / "run_log.json"
    run_log = _load(log_path) or {}
    if not args.no_run:
        names = [n for n in args.only.split(",") if n]
        unknown = set(names) - set(SCRIPTS)
        if unknown:
            raise SystemExit(f"--only: unknown {sorted(unknown)}; known {list(SCRIPTS)}")
        run_log.update(run_scripts(names, args.threads, results))
        log_path.write_text(json.dumps(run_log, indent=1))
        failed = [n for n, v in run_log.items() if v["rc"] != 0]
        if failed:
            print(f"[report] failed: {failed} (their sections show the previous results, if any)", flush=True)
    render(results, Path(args.out), run_log)
    print(f"[report] wrote {args.out}")


if __name__ == "__main__":
    main()
