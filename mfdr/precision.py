"""Training precision: ``train.precision`` = ``auto`` | ``fp32`` | ``bf16`` | ``fp16``.

``auto`` is bf16 where the hardware multiplies bf16 natively — CUDA cards that support it, and CPUs
with AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``), detected once per process — and fp32
elsewhere; on such a CPU a model narrower than ``CPU_BF16_MIN_D_MODEL`` stays fp32, since its small
products gain nothing from bf16 and pay for the casts (training step, 1 thread, batch 16 with the demo's
sequence lengths, bf16 vs fp32 speed: 0.81x at d_model 32, 0.99x at 64, 1.07x at 128, 1.33x at 256;
``benchmarks/bench_precision.py``; BENCHMARKS.md). bf16 and fp16 run the forward under
``torch.autocast`` (the kernels accumulate in fp32);
fp16 adds a gradient scaler. Weights, optimizer state and checkpoints stay fp32 in every mode.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from .config.run import PRECISIONS
from .errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
CPU_BF16_MIN_D_MODEL = 128  # auto on a CPU with bf16 units: bf16 from this d_model up (measured above)


@functools.cache
def cpu_bf16_units() -> str | None:
    """The CPU's bf16 matrix/vector units (``"amx_bf16"``, ``"avx512_bf16"``), or None without them."""
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:  # not Linux: ask torch
        cpu = getattr(torch._C, "_cpu", None)
        if cpu is not None and getattr(cpu, "_is_amx_tile_supported", lambda: False)():
            flags.add("amx_bf16")
        if cpu is not None and getattr(cpu, "_is_avx512_bf16_supported", lambda: False)():
            flags.add("avx512_bf16")
    return next((f for f in ("amx_bf16", "avx512_bf16") if f in flags), None)


@dataclass(frozen=True)
class Precision:
    """A resolved precision: ``name`` (fp32, bf16, fp16), the autocast dtype (None for fp32), why."""

    name: str
    device_type: str
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.name)

    def autocast(self):
        """The forward's context: ``torch.autocast`` for bf16/fp16, nothing for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")

    def to_dict(self) -> dict:
        return {"precision": self.name, "device": self.device_type, "reason": self.reason}


def resolve(precision: str, device: torch.device | str, d_model: int | None = None) -> Precision:
    """The precision ``precision`` means on ``device`` (``auto`` decided by the hardware and, on a CPU,
    by the model's width ``d_model`` when given)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device_type = torch.device(device).type
    if precision != "auto":
        if precision == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision bf16: this CUDA device does not support bf16; use fp16 or fp32")
        return Precision(precision, device_type, "asked for")
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "cuda", f"auto: {torch.cuda.get_device_name()} supports bf16")
        return Precision("fp32", "cuda", "auto: this CUDA device has no bf16")
    if device_type == "cpu":
        units = cpu_bf16_units()
        if units and d_model is not None and d_model < CPU_BF16_MIN_D_MODEL:
            return Precision("fp32", "cpu", f"auto: the CPU has {units}, but bf16 is slower than fp32 for "
                                            f"d_model {d_model} < {CPU_BF16_MIN_D_MODEL} (measured)")
        if units:
            return Precision("bf16", "cpu", f"auto: the CPU has {units}")
        return Precision("fp32", "cpu", "auto: the CPU has no bf16 units (amx_bf16 / avx512_bf16)")
    return Precision("fp32", device_type, f"auto: fp32 on {device_type}")
