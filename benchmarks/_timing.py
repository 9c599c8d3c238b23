"""Shared helpers for the benchmark scripts and suites: timing, peak memory, machine description.

Timing on a shared machine: :func:`interleaved` runs every provider in turn, repetition by
repetition, so a noisy neighbour slows them alike and the same-run ratios stay meaningful.
Peak memory, two ways (each table says which it shows):
  :func:`tensor_peak_mb`   the most bytes held at once by tensors allocated during a call (the
                           profiler's allocation records, replayed in time order); in-process, exact,
                           blind to scratch a kernel takes outside the torch allocator (std::vector)
  :func:`rss_rise_mb`      the rise of the peak resident set size (``getrusage``, high-water mark reset
                           first) of a fresh process across one call, beyond its inputs (run it through
                           :func:`run_isolated`): sees everything, page-granular, includes allocator slack
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, *, device="cpu", warmup: int = 2, reps: int = 7, min_time: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds (``reps`` runs after ``warmup``)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < reps or time.perf_counter() - start_all < min_time:
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) >= 200:
            break
    return statistics.median(times)


def interleaved(fns: dict, *, reps: int = 7, device="cpu", target_s: float = 0.02, warmup: int = 1) -> dict:
    """Seconds per call of each ``fns[name]()``, providers taking turns repetition by repetition.

    Each provider first runs ``max(warmup, 1)`` untimed calls; the last one sizes its block of calls
    (about ``target_s`` per repetition, so fast calls are not lost in timer noise). Returns
    ``{name: {"median": s, "min": s, "times": [s, ...]}}``."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(max(warmup, 1) - 1):
            fn()
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        inner[name] = max(1, min(200, int(target_s / max(time.perf_counter() - t0, 1e-7))))
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) / inner[name])
    return {n: {"median": statistics.median(t), "min": min(t), "times": t} for n, t in times.items()}


def tensor_peak_mb(fn, device="cpu") -> float:
    """Peak MiB held at once by tensors allocated during ``fn()`` (beyond what existed before).

    CUDA: ``max_memory_allocated``. CPU: the profiler's raw allocation (+) and free (-) records replayed
    in time order (its per-op totals misplace the frees)."""
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
    records = prof.profiler.kineto_results.events()
    events = sorted((e.start_ns(), e.nbytes()) for e in records if e.name() == "[memory]")
    held = peak = 0
    for _, nbytes in events:
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def rss_rise_mb(fn) -> float:
    """The peak-RSS rise of ``fn()`` over the RSS just before it (call in a fresh process, inputs built,
    libraries warm). Linux: the high-water mark ``VmHWM`` is first reset to the current RSS
    (``/proc/self/clear_refs``), so that an earlier, higher peak (imports) cannot hide the rise; ``VmHWM``
    is read rather than ``getrusage``, whose maximum also keeps the peak recorded when any thread exited.
    Elsewhere: the rise of ``getrusage``'s peak, which an earlier peak can hide."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_mb("VmRSS")
    except OSError:
        base = None
    if base is None:
        base = peak_rss_mb()
        fn()
        return max(peak_rss_mb() - base, 0.0)
    fn()
    return max((_status_mb("VmHWM") or base) - base, 0.0)


def run_isolated(argv: list[str], timeout: float = 600, threads: int | None = None) -> dict:
    """Run ``python argv...`` in a fresh process and parse the JSON it prints last (peak-memory probes)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        res = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                             env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    if res.returncode != 0:
        err = res.stderr.strip()
        return {"error": err.splitlines()[-1] if err else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


RESULTS = Path(__file__).resolve().parent / "results"


def results_path(out: str | None, quick: bool, name: str) -> Path | None:
    """Where a script writes its JSON (and plots): ``out``, else ``results/<name>``; but a ``--quick`` smoke
    run writes nothing unless given ``out``: it never overwrites the measurements BENCHMARKS.md renders."""
    if out:
        return Path(out)
    return None if quick else RESULTS / name


def write_json(path: Path | None, data: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1))


def set_threads(threads: int | None) -> int:
    """``torch.set_num_threads(threads)`` when given; returns the count in use (recorded with the results)."""
    if threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def machine() -> dict:
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["ram_gb"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = "absent"
    try:
        import mfdr_kernels

        info["mfdr_kernels"] = mfdr_kernels.__version__
        info["default_backend_cpu"] = mfdr_kernels.default_backend("cpu")
    except Exception:  # noqa: BLE001
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def markdown_table(rows: list[dict], columns: list[str], headers: dict | None = None) -> str:
    headers = headers or {}
    lines = ["| " + " | ".join(headers.get(c, c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(x) -> str:
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, float):
        if x != x:
            return "–"
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"
    return str(x)
