"""Backend choice, shared by every op. Reads like prose (after NATTEN):

    explicit ``backend=`` > ``MFDR_KERNELS_BACKEND`` > the fastest that can run
    (CUDA: triton, then torch; CPU: cpp, then torch). ``reference`` is never chosen automatically.

Each op folder provides ``can_run_<backend>(*tensors) -> str | None`` functions that return None when
the backend can run on these tensors and else the reason it cannot.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from . import _env, _ext

CanRun = Callable[..., "str | None"]


def triton_available() -> str | None:
    try:
        import triton  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"triton cannot be imported ({type(exc).__name__}: {exc}); `pip install triton`"
    return None


def can_run_triton(*tensors: torch.Tensor) -> str | None:
    why = triton_available()
    if why:
        return why
    if all(t.is_cuda for t in tensors):
        return None
    if _env.triton_interpret() and all(t.device.type == "cpu" for t in tensors):
        return None
    return "the triton backend needs CUDA tensors (or CPU tensors with TRITON_INTERPRET=1)"


def can_run_cpp(*tensors: torch.Tensor) -> str | None:
    if not all(t.device.type == "cpu" for t in tensors):
        return "the cpp backend runs on CPU tensors only"
    ok, why = _ext.status()
    return None if ok else why


def can_run_torch(*tensors: torch.Tensor) -> str | None:
    return None


def checks(*, cpp: tuple, triton_cuda: tuple, triton_cpu: tuple) -> dict[str, CanRun]:
    """The ``CHECKS`` table of an op: which dtypes its cpp and triton (CUDA / interpreter) kernels take."""

    def can_run_cpp_dtype(x, *rest):
        if x.dtype not in cpp:
            return f"the cpp backend takes {' or '.join(str(d).removeprefix('torch.') for d in cpp)}, got {x.dtype}"
        return can_run_cpp(x, *rest)

    def can_run_triton_dtype(x, *rest):
        why = can_run_triton(x, *rest)
        if why:
            return why
        ok = triton_cuda if x.is_cuda else triton_cpu
        if x.dtype not in ok:
            return f"the triton backend on {x.device.type} takes {ok}, got {x.dtype}"
        return None

    return {"triton": can_run_triton_dtype, "cpp": can_run_cpp_dtype, "torch": can_run_torch,
            "reference": can_run_torch}


def implementation(package: str, backend: str):
    """The launcher module of ``backend`` in an op folder: ``triton_impl``, ``cpp_impl`` or ``torch_impl``."""
    import importlib

    name = {"triton": "triton_impl", "cpp": "cpp_impl"}.get(backend, "torch_impl")
    return importlib.import_module(f"{package}.{name}")


def choose(
    op: str,
    requested: str | None,
    checks: Mapping[str, CanRun],
    tensors: tuple[torch.Tensor, ...],
) -> str:
    """Pick the backend for ``op``; an explicit choice that cannot run raises, saying why."""
    if requested is None:
        requested = _env.forced_backend()
        source = "MFDR_KERNELS_BACKEND"
    else:
        source = "backend="
    if requested is not None:
        if not isinstance(requested, str):
            raise TypeError(f"{op}: {source} must be a backend name (str) or None, "
                            f"got {type(requested).__name__}")
        requested = requested.lower()
        if requested not in checks:
            raise ValueError(f"{op}: {source} must be one of {tuple(checks)}, got {requested!r}")
        why = checks[requested](*tensors)
        if why:
            raise RuntimeError(f"{op}: backend {requested!r} ({source}) cannot run: {why}")
        return requested
    order = ("triton", "torch") if tensors[0].is_cuda else ("cpp", "torch")
    for name in order:
        if name in checks and checks[name](*tensors) is None:
            ext_missing = can_run_cpp(*tensors) if name == "torch" and not tensors[0].is_cuda else None
            if ext_missing and "cpp" in checks:
                _ext.warn_once("cpp-fallback",
                               f"mfdr_kernels: falling back to the slower `torch` backend: {ext_missing}")
            return name
    return "torch"
