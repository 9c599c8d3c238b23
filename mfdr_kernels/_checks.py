"""Argument checks shared by the ops. Every error names the argument, the expected and the received value."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch

from . import _env


def tensor(name: str, x, ndim: int | Sequence[int], *, floating: bool = True) -> torch.Tensor:
    """``x`` must be a tensor of rank ``ndim`` (one of them) and, when ``floating``, of a floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if x.dim() not in ranks:
        want = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(f"{name} must be {want}, got shape {tuple(x.shape)}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    return x


def same_dtype_device(**tensors: torch.Tensor) -> None:
    items = [(n, t) for n, t in tensors.items() if t is not None]
    name0, t0 = items[0]
    for name, t in items[1:]:
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} must have the dtype of {name0} ({t0.dtype}), got {t.dtype}")
        if t.device != t0.device:
            raise ValueError(f"{name} must be on the device of {name0} ({t0.device}), got {t.device}")


def positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, (bool, torch.Tensor)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def finite_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def choice(name: str, value, options: Sequence[str]) -> str:
    if value not in options:
        raise ValueError(f"{name} must be one of {tuple(options)}, got {value!r}")
    return value


def int_tensor(name: str, x, shape: tuple[int, ...], device) -> torch.Tensor:
    """An integer tensor (or sequence of ints) of ``shape``, returned as contiguous int64 on ``device``."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except Exception as exc:  # noqa: BLE001
            raise TypeError(f"{name} must be an integer tensor of shape {shape}, got {type(x).__name__}") from exc
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.int64).contiguous()


def values_checked(x: torch.Tensor) -> bool:
    """Whether data-dependent value checks run for ``x``: ``MFDR_KERNELS_CHECK_VALUES`` (``auto``: on
    CPU tensors only, where reading a value costs no device-to-host sync), and never while a tracer
    (``torch.compile``, export, fake tensors) runs, since a traced check would be a graph break."""
    if torch.compiler.is_compiling() or not _plain(x):
        return False
    return _env.check_values(x.device)


def _plain(x) -> bool:
    return type(x) in (torch.Tensor, torch.nn.Parameter)


def cpu_eager(x: torch.Tensor) -> bool:
    """Whether ``x`` is a plain CPU tensor outside any tracer (``torch.compile``, export, fake tensors)
    and any ``TorchDispatchMode`` (the op counter): there the model may take CPU-only shortcuts that read
    values (free on the CPU) or call other ops. Elsewhere it runs what a GPU runs, so that the op counter
    (:class:`mfdr_kernels.counting.DispatchCounter`) counts, and a trace holds, the GPU's ops."""
    return (x.device.type == "cpu" and _plain(x) and not torch.compiler.is_compiling()
            and torch._C._len_torch_dispatch_stack() == 0)


def in_range(name: str, x: torch.Tensor, lo: int, hi: int) -> None:
    """Values of ``x`` in [lo, hi] when :func:`values_checked` (``MFDR_KERNELS_CHECK_VALUES``); no
    device-to-host sync otherwise. Callers clamp the values they pass to a kernel regardless."""
    if x.numel() == 0 or not values_checked(x):
        return
    mn, mx = int(x.min()), int(x.max())
    if mn < lo or mx > hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got values in [{mn}, {mx}]")


def finite_if_asked(**tensors: torch.Tensor) -> None:
    """With ``MFDR_KERNELS_CHECK_FINITE=1``: NaN/Inf in any of ``tensors`` raises, naming it."""
    if torch.compiler.is_compiling() or not _env.check_finite():  # a traced check would be a graph break
        return
    for name, t in tensors.items():
        if t is not None and t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or Inf (MFDR_KERNELS_CHECK_FINITE=1)")


def like(name: str, x: torch.Tensor, ref: torch.Tensor, what: str = "the module's parameters") -> None:
    """``x`` on the device of ``ref`` and, outside autocast, of its dtype (for nn.Module inputs)."""
    if x.device != ref.device:
        raise ValueError(f"{name} must be on the device of {what} ({ref.device}), got {x.device}")
    if x.dtype != ref.dtype and not _autocast(x.device.type):
        raise TypeError(f"{name} must have the dtype of {what} ({ref.dtype}), got {x.dtype}")


def lengths(name: str, x, batch: int, lo: int, hi: int, device) -> torch.Tensor:
    """Valid counts per sample: an integer ``(batch,)`` tensor (or sequence) with values in [lo, hi],
    returned as int64 on ``device``."""
    x = int_tensor(name, x, (batch,), device)
    in_range(name, x, lo, hi)
    return x


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The lower-precision dtype of an active ``torch.autocast`` on ``device``'s type, else None.

    The ops follow autocast's policy for matmul-like ops: under autocast their floating inputs are cast
    to this dtype (``torch.get_autocast_dtype``) and the kernels accumulate in fp32."""
    if not _autocast(device.type):
        return None
    return torch.get_autocast_dtype(device.type)


def autocast_inputs(*tensors):
    """``tensors`` (None passes through) cast to the autocast dtype when ``torch.autocast`` is active on
    their device: autocast's policy for matmul-like ops, applied by each op's public function before its
    checks, so the custom op always receives one dtype. fp64 and non-floating tensors are left alone,
    as autocast does."""
    first = next((t for t in tensors if isinstance(t, torch.Tensor)), None)
    dtype = None if first is None else autocast_dtype(first.device)
    if dtype is None:
        return tensors
    cast = (torch.float16, torch.bfloat16, torch.float32)
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.dtype in cast and t.dtype != dtype else t
                 for t in tensors)


def _autocast(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type without autocast (meta, ...)
        return False
