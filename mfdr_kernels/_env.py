"""Every environment flag of the package, read in one place.

| variable | meaning | default |
|---|---|---|
| ``MFDR_KERNELS_BACKEND`` | force a backend for every op (``triton``, ``cpp``, ``torch``, ``reference``) | unset: fastest that can run |
| ``MFDR_KERNELS_NO_JIT`` | ``1``: never build the C++ extension on first use; fall back to ``torch`` | ``0`` |
| ``MFDR_KERNELS_BUILD_DIR`` | where the on-first-use build of the extension goes | ``~/.cache/mfdr_kernels`` |
| ``MFDR_KERNELS_VERBOSE_BUILD`` | ``1``: show the compiler output of the on-first-use build | ``0`` |
| ``TRITON_INTERPRET`` | ``1``: run Triton kernels on the CPU (tests); read, never set, here | ``0`` |
| ``MFDR_KERNELS_CHECK_FINITE`` | ``1``: every op checks its float inputs for NaN/Inf and raises ValueError naming the argument (costs a pass over the inputs); by default NaN/Inf propagate to the outputs that read them, as in PyTorch | ``0`` |
| ``MFDR_KERNELS_CHECK_VALUES`` | data-dependent value checks (lengths, window starts, forced levels): ``auto`` checks when the tensors are on the CPU (no cost) and skips them on accelerators (a check there is a device-to-host sync); ``1`` always; ``0`` never. Unchecked values never make a kernel read or write out of bounds (they are clamped) | ``auto`` |
| ``MFDR_TRITON_AUTOTUNE`` | ``0``: every Triton kernel runs one spill-free config instead of autotuning (fast start on a lent GPU) | ``1`` |
| ``MFDR_HYPOTHESIS_PROFILE`` | ``ci`` (bounded examples) or ``thorough`` for the property tests | ``ci`` |
| ``MFDR_KERNELS_PORTABLE_BUILD`` | ``1``: compile the C++ kernels without ``-march=native`` (for a binary that moves between machines); read by ``setup.py`` too | ``0`` |
| ``MFDR_SKIP_BUILD`` | ``1``: ``setup.py`` installs the Python packages only (the extension then builds on first use) | ``0`` |
| ``MAX_JOBS`` | parallel compile jobs for ``setup.py`` / the on-first-use build (torch's own flag) | torch's choice |
| ``MFDR_BENCH_QUICK`` | ``1``: the benchmark suites (``benchmarks/``) use tiny sizes and one round (CI smoke) | ``0`` |

Values are read when asked for (functions, not constants), so tests can monkeypatch ``os.environ``.
"""

from __future__ import annotations

import os
from pathlib import Path

BACKENDS = ("triton", "cpp", "torch", "reference")


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def forced_backend() -> str | None:
    """The backend named by ``MFDR_KERNELS_BACKEND``, or None. An unknown name raises ValueError."""
    value = os.environ.get("MFDR_KERNELS_BACKEND", "").strip().lower()
    if not value or value in ("auto", "none"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"MFDR_KERNELS_BACKEND must be one of {BACKENDS} or unset, got {value!r}")
    return value


def jit_build_allowed() -> bool:
    return not _flag("MFDR_KERNELS_NO_JIT")


def build_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mfdr_kernels"
    return Path(os.environ.get("MFDR_KERNELS_BUILD_DIR", default))


def skip_build() -> bool:
    return _flag("MFDR_SKIP_BUILD")


def portable_build() -> bool:
    return _flag("MFDR_KERNELS_PORTABLE_BUILD")


def cxx_flags() -> list[str]:
    """Compiler flags of the C++ extension (setup.py and the on-first-use build share them)."""
    flags = ["-O3", "-fopenmp", "-std=c++17", "-Wno-unknown-pragmas"]  # ATen's vector headers: clang/unroll pragmas
    return flags if portable_build() else [*flags, "-march=native"]


def verbose_build() -> bool:
    return _flag("MFDR_KERNELS_VERBOSE_BUILD")


def triton_interpret() -> bool:
    return _flag("TRITON_INTERPRET")


def check_finite() -> bool:
    return _flag("MFDR_KERNELS_CHECK_FINITE")


def check_values(device=None) -> bool:
    """``MFDR_KERNELS_CHECK_VALUES``: whether data-dependent value checks run for tensors on ``device``.

    ``auto`` (default): only on the CPU, where reading a value costs no device-to-host sync.
    """
    value = os.environ.get("MFDR_KERNELS_CHECK_VALUES", "").strip().lower()
    if value in ("", "auto"):
        return device is None or str(device).split(":")[0] == "cpu"
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"MFDR_KERNELS_CHECK_VALUES must be auto, 1 or 0, got {value!r}")


def triton_autotune() -> bool:
    """``MFDR_TRITON_AUTOTUNE`` (default on): autotune the Triton kernels on CUDA; ``0``: one config each."""
    return _flag("MFDR_TRITON_AUTOTUNE", default=True)


def hypothesis_profile() -> str:
    return os.environ.get("MFDR_HYPOTHESIS_PROFILE", "ci").strip() or "ci"


def bench_quick() -> bool:
    """``MFDR_BENCH_QUICK``: the benchmark suites run tiny sizes, one round (CI keeps them from rotting)."""
    return _flag("MFDR_BENCH_QUICK")
