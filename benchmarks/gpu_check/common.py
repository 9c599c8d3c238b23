"""What the stages of the GPU check share: the mode, the device, the deadline, timing and tables.

A stage is a script of this folder run by ``driver.py`` in its own process. It reads two variables the
driver sets: ``GPU_CHECK_DRY_RUN=1`` (CPU, Triton under ``TRITON_INTERPRET=1``, tiny shapes) and
``GPU_CHECK_DEADLINE`` (Unix time by which the stage should be done: it skips what would not fit and says
so; the driver kills it a little later). Import this module first: it puts the repository root on
``sys.path`` (the package is not installed on a lent GPU) and sets ``TRITON_INTERPRET`` before anything
imports triton.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
DRY_RUN = os.environ.get("GPU_CHECK_DRY_RUN", "") == "1"
os.environ["TRITON_INTERPRET"] = "1" if DRY_RUN else "0"  # before the first import of triton
os.environ.setdefault("MFDR_KERNELS_NO_JIT", "1")  # no C++ extension build on a lent GPU

import torch  # noqa: E402

DEADLINE = float(os.environ.get("GPU_CHECK_DEADLINE", "inf"))


def device() -> torch.device:
    """cuda, or cpu in a dry run; exits 2 (the stage fails) when CUDA is asked for and absent."""
    if DRY_RUN:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        print("no CUDA device: run `benchmarks/gpu_check.sh --dry-run` for the CPU rehearsal", flush=True)
        sys.exit(2)
    return torch.device("cuda")


def remaining() -> float:
    """Seconds left before the stage's deadline (inf without one)."""
    return DEADLINE - time.time()


def out_of_time(need_s: float) -> bool:
    """True when fewer than ``need_s`` seconds are left: the caller skips the next item and says so."""
    return remaining() < need_s


def sync(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.synchronize()


def bench(fn, dev, rep_ms: int = 100) -> float:
    """Median milliseconds of ``fn()``: ``triton.testing.do_bench`` on CUDA (``rep_ms`` of repetitions);
    on the CPU one warm-up call and one timed (a dry run only checks that the code runs)."""
    if torch.device(dev).type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")
    fn()
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def error_line(exc: BaseException) -> str:
    """``Type: last line of the message`` (a compile error's last line names the cause), shortened."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = f"{type(exc).__name__}: {lines[-1] if lines else ''}"
    return (text[:237] + "...") if len(text) > 240 else text


def phase(row: dict, key: str, thunk) -> None:
    """row[key] = thunk(); an OOM or another failure is recorded (in row["note"]) instead of raised, so a
    provider that cannot run a shape is reported and the others still run."""
    try:
        row[key] = thunk()
    except torch.OutOfMemoryError:
        row[key] = "OOM"
    except Exception as exc:  # noqa: BLE001 - reported in the note column
        row[key] = "ERR"
        row.setdefault("note", f"{key}: {error_line(exc)}")


def fmt(x, digits: int = 3) -> str:
    """A table cell: strings as they are, floats to ``digits`` decimals (one above 100), None as —."""
    if x is None:
        return "—"
    if isinstance(x, (str, bool, int)):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}" if abs(x) < 100 else f"{x:.1f}"


def cell(text: str) -> str:
    """Text safe inside a markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")


class Table:
    """A markdown table printed row by row as it is measured (flushed: a killed stage keeps its rows)."""

    def __init__(self, columns: list[str]):
        self.columns = columns
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns), flush=True)

    def row(self, *values) -> None:
        assert len(values) == len(self.columns), (values, self.columns)
        print("| " + " | ".join(cell(fmt(v)) for v in values) + " |", flush=True)


def heading(text: str) -> None:
    print(f"\n#### {text}\n", flush=True)


def versions() -> str:
    import triton

    where = torch.cuda.get_device_name() if torch.cuda.is_available() and not DRY_RUN else "CPU (TRITON_INTERPRET=1)"
    return (f"{where}; torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
            f"Python {sys.version.split()[0]}")
