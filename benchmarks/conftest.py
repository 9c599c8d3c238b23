"""Shared set-up of the pytest-benchmark suites (``test_bench_*.py``).

    pytest benchmarks --benchmark-only -q                       # full sizes -> results/pytest_benchmark.json
    MFDR_BENCH_QUICK=1 pytest benchmarks --benchmark-disable -q  # CI: tiny sizes, each body run once
    pytest benchmarks --benchmark-only --bench-threads 2        # torch.set_num_threads (default 1)

Threads: one by default. On a shared or busy machine the OpenMP barrier of a multi-threaded op waits
for the slowest thread, and a descheduled thread makes whole calls 10-100x slower; one thread gives
stable, comparable numbers. ``--bench-threads N`` measures N (recorded in every row either way).
Every benchmark records op, provider, mode, shapes, dtype, device, threads and versions in
``benchmark.extra_info``; the JSON's ``machine_info`` gets the machine description of ``_timing``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))  # the suites import the scripts beside them (import-mode=importlib)

import _timing  # noqa: E402

from mfdr_kernels import _env  # noqa: E402

QUICK = _env.bench_quick()
RESULTS = BENCH_DIR / "results"
JSON_PATH = RESULTS / "pytest_benchmark.json"
HAS_CUDA = torch.cuda.is_available()


def pytest_addoption(parser):
    group = parser.getgroup("mfdr benchmarks")
    group.addoption("--bench-threads", type=int, default=1,
                    help="torch threads of the suites (default 1: steady on a busy machine)")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    torch.set_num_threads(config.getoption("--bench-threads"))
    # torch.compile (FlexAttention) imports torch.jit internals that warn on import
    config.addinivalue_line("filterwarnings",
                            "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
    opt = config.option
    if QUICK:  # one round, no calibration loops: CI only checks that every body runs
        opt.benchmark_min_rounds = 1
        opt.benchmark_max_time = 0.0
        opt.benchmark_min_time = 0.0
        opt.benchmark_warmup = False
    elif getattr(opt, "benchmark_only", False) and not getattr(opt, "benchmark_json", None):
        RESULTS.mkdir(parents=True, exist_ok=True)
        opt.benchmark_json = JSON_PATH  # report.py reads it


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["mfdr"] = _timing.machine()
    machine_info["mfdr"]["quick"] = QUICK


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Keep the JSON small enough to commit: the statistics, not every round's raw time."""
    for b in output_json.get("benchmarks", []):
        b.get("stats", {}).pop("data", None)


def versions() -> dict:
    import mfdr_kernels

    v = {"torch": torch.__version__, "mfdr_kernels": mfdr_kernels.__version__,
         "python": sys.version.split()[0]}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        v["triton"] = "absent"
    return v


class Runner:
    """Times one closure with pytest-benchmark and records what it measured.

    ``slow=True``: one round of one call (the reference loops); otherwise pytest-benchmark's own
    calibration, after one untimed warm-up call (skipped in quick mode, where the body runs once)."""

    def __init__(self, benchmark):
        self.benchmark = benchmark

    def __call__(self, fn, *, group: str, slow: bool = False, device="cpu", **info):
        b = self.benchmark
        b.group = group
        b.extra_info.update(info)
        b.extra_info.update(device=str(device), threads=torch.get_num_threads(), quick=QUICK, **versions())
        if HAS_CUDA and torch.device(device).type == "cuda":
            b.extra_info["gpu"] = torch.cuda.get_device_name()
            inner = fn

            def fn():  # time the kernels, not just their launch
                inner()
                torch.cuda.synchronize()

        if slow or QUICK:
            return b.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
        fn()
        return b(fn)


@pytest.fixture
def bench(benchmark):
    return Runner(benchmark)

