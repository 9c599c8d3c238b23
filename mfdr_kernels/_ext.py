"""Loads the compiled CPU extension ``mfdr_kernels._C`` (ops under ``torch.ops.mfdr_C``).

Order: the library built by ``pip install -e .`` next to this file; else, unless
``MFDR_KERNELS_NO_JIT=1``, an on-first-use build with ``torch.utils.cpp_extension.load`` (ninja)
into ``MFDR_KERNELS_BUILD_DIR``; else the C++ backend is unavailable and :func:`status` says why.
The package itself always imports; only the ``cpp`` backend depends on this module.
"""

from __future__ import annotations

import glob
import threading
import warnings
from pathlib import Path

import torch

from . import _env

_ROOT = Path(__file__).resolve().parent
# The C++ sources: inside the package in an installed wheel (setup.py copies them), else the checkout's.
_CSRC = next((d for d in (_ROOT / "csrc", _ROOT.parent / "csrc") if any(d.glob("*.cpp"))), _ROOT.parent / "csrc")
_lock = threading.Lock()
_state: dict = {"loaded": False, "error": None, "path": None}

BUILD_HINT = (
    "build it with `pip install -e . --no-build-isolation` (or `make install`), "
    "or let it build on first use (needs a C++ compiler and ninja; unset MFDR_KERNELS_NO_JIT)"
)


def _sources() -> list[str]:
    return sorted(str(p) for p in _CSRC.glob("*.cpp"))


def _load_prebuilt() -> str | None:
    for path in sorted(glob.glob(str(_ROOT / "_C*.so")) + glob.glob(str(_ROOT / "_C*.pyd"))):
        torch.ops.load_library(path)
        return path
    return None


def _jit_build() -> str:
    from torch.utils.cpp_extension import load

    sources = _sources()
    if not sources:
        raise RuntimeError(f"no C++ sources found in {_CSRC} (an installed wheel without csrc/?)")
    build = _env.build_dir() / f"torch{torch.__version__.replace('+', '_')}"
    build.mkdir(parents=True, exist_ok=True)
    import sys

    print(f"mfdr_kernels: building the C++ extension on first use into {build} (once; about a minute)",
          file=sys.stderr, flush=True)
    load(
        name="mfdr_kernels_C",
        sources=sources,
        extra_cflags=_env.cxx_flags(),
        extra_ldflags=["-fopenmp"],
        build_directory=str(build),
        is_python_module=False,
        verbose=_env.verbose_build(),
    )
    return str(build)


def load() -> bool:
    """Load the extension once; True when ``torch.ops.mfdr_C`` is usable."""
    if _state["loaded"] or _state["error"] is not None:
        return _state["loaded"]
    with _lock:
        if _state["loaded"] or _state["error"] is not None:
            return _state["loaded"]
        try:
            path = _load_prebuilt()
            if path is None:
                if not _env.jit_build_allowed():
                    raise RuntimeError("the extension is not built and MFDR_KERNELS_NO_JIT=1 forbids building it")
                path = _jit_build()
            _state["path"], _state["loaded"] = path, True
        except Exception as exc:  # noqa: BLE001 - any build/load failure means: no cpp backend
            _state["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    return _state["loaded"]


def _constant_under_compile(fn):
    """``torch.compile`` calls ``fn`` while tracing and keeps its result as a constant (the extension's
    state is fixed for the process), instead of tracing into its lock and file system calls."""
    try:
        from torch._dynamo import assume_constant_result
    except ImportError:  # pragma: no cover - a torch without dynamo
        return fn
    return assume_constant_result(fn)


@_constant_under_compile
def status() -> tuple[bool, str]:
    """(available, reason) for the C++ extension."""
    if load():
        return True, f"loaded from {_state['path']}"
    return False, f"the C++ extension mfdr_kernels._C is unavailable ({_state['error']}); {BUILD_HINT}"


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn once per process and key (the fallback warning)."""
    if key in _warned:
        return
    _warned.add(key)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
