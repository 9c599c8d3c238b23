"""The one Triton tuning pattern of the package: how every kernel of ``sawa/``, ``dfc/`` and ``gcpu/`` picks its
block sizes.

Each kernel has a :class:`Tuning`: its candidate configs (``benchmarks/compile_check.py`` compiles them all for
sm_90 and reports registers and spills) and, per *case* (what changes register pressure: head width, dtype),
the candidates that compiled free of spills, the one to run without autotuning first. :meth:`Tuning.launch`:

- under the interpreter (``TRITON_INTERPRET=1``, CPU tests; ~6 ms per program): one small config;
- on CUDA with ``MFDR_TRITON_AUTOTUNE=0`` (``_env.triton_autotune``): the case's first spill-free config;
- otherwise ``triton.autotune`` over the case's spill-free configs, one tuner per size bucket (the next power
  of two of the rows the grid covers), so that a config timed at a small batch is not reused at a large one.

A config is written ``"AxBx...xWARPS[xSTAGES]"``: the values of the kernel's block names in order, then
``num_warps`` and ``num_stages`` (default 1), e.g. ``"16x32x8"`` for ``BLOCK_Q=16, BLOCK_N=32``, 8 warps.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import triton

from . import _env


def config(spec: str, blocks: tuple[str, ...]) -> triton.Config:
    """``"AxBx...xWARPS[xSTAGES]"`` -> ``triton.Config({blocks[0]: A, ...}, num_warps, num_stages)``."""
    values = [int(x) for x in spec.split("x")]
    if len(values) not in (len(blocks) + 1, len(blocks) + 2):
        raise ValueError(f"config {spec!r} must give {blocks}, then num_warps and optionally num_stages")
    stages = values[len(blocks) + 1] if len(values) > len(blocks) + 1 else 1
    return triton.Config(dict(zip(blocks, values, strict=False)), num_warps=values[len(blocks)], num_stages=stages)


def configs(specs: str, blocks: tuple[str, ...]) -> list[triton.Config]:
    """Whitespace-separated specs -> configs."""
    return [config(s, blocks) for s in specs.split()]


class Tuning:
    """One kernel's configs and autotuners.

    Args:
        name: label of the kernel in :meth:`tuned` (e.g. ``"sawa fwd"``).
        kernel: the ``@triton.jit`` function.
        blocks: its block-size constexpr names, in the order the specs give them.
        candidates: every config tried (compile_check compiles these).
        spill_free: case -> the candidates free of spills in that case, the ``MFDR_TRITON_AUTOTUNE=0`` one first;
            a plain string: the same for every case.
        key: the constexpr/argument names a tuner re-times on (within a size bucket).
        interpret: the config under the interpreter.
        reset: output arguments to zero before each timed run (kernels that accumulate into them).
    """

    def __init__(self, name: str, kernel, blocks: tuple[str, ...], candidates: str, spill_free: str | dict,
                 key: list[str], interpret: str, reset: list[str] | None = None):
        self.name, self.kernel, self.blocks, self.key, self.reset = name, kernel, blocks, key, reset
        self.configs = configs(candidates, blocks)
        if isinstance(spill_free, str):
            spill_free = {None: spill_free}
        self.spill_free = {case: configs(specs, blocks) for case, specs in spill_free.items()}
        for case, cs in self.spill_free.items():
            unknown = [c for c in cs if c.all_kwargs() not in [k.all_kwargs() for k in self.configs]]
            if not cs or unknown:
                raise ValueError(f"{name}: the spill-free configs of case {case} must be candidates, got {unknown}")
        self.interpret = config(interpret, blocks)
        self.tuners: dict = {}  # (case, size bucket) -> triton.autotune object

    def launch(self, grid: Callable, rows: int, args: tuple, consts: dict, case: Hashable = None,
               allow: Callable[[triton.Config], bool] | None = None) -> None:
        """``kernel[grid](*args, **consts)`` with its config (module docstring). ``rows``: the size the bucket is
        taken from; ``case``: a key of ``spill_free`` (None when it has one list); ``allow``: a filter of the
        case's configs for this call (the first config of the case when it leaves none)."""
        if _env.triton_interpret():
            self.kernel[grid](*args, **consts, **self.interpret.kwargs)
            return
        cases = self.spill_free[case]
        configs = [c for c in cases if allow is None or allow(c)] or cases[:1]
        if not _env.triton_autotune() or len(configs) == 1:
            self.kernel[grid](*args, **consts, **configs[0].all_kwargs())
            return
        bucket = (case, triton.next_power_of_2(max(rows, 1)), tuple(str(c) for c in configs))
        if bucket not in self.tuners:
            self.tuners[bucket] = triton.autotune(configs, key=self.key, reset_to_zero=self.reset)(self.kernel)
        self.tuners[bucket][grid](*args, **consts)

    def tuned(self) -> list[str]:
        """One line per (case, size bucket, autotune key) timed so far, with the config it chose."""
        return [f"{self.name} (case {case}, rows <= {rows}) key {key}: {cfg}"
                for (case, rows, _), tuner in self.tuners.items() for key, cfg in tuner.cache.items()]
