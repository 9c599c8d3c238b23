"""What two pieces of machinery are worth at the model level: the MFDR training step with and without each.

    python benchmarks/bench_machinery.py              # paper config, batch 32, 1 thread; markdown table
    python benchmarks/bench_machinery.py --quick      # tiny model (CI smoke)

A training step = forward + cross-entropy + backward + the training loop's Adam, default kernels (C++ SAWA,
DFC and GCPU), fp32. Two same-run comparisons, each against the step as the package runs it ("as is"):

- ``custom op``: every op called through its ``torch.library`` custom op, not through the eager
  ``torch.autograd.Function`` beside it (``_backends.eager`` patched to False).
- ``no output cache``: the C++ kernels' output-buffer cache turned off
  (``torch.ops.mfdr_C.set_output_cache_limit(0)``, as ``MFDR_KERNELS_OUTPUT_CACHE_MB=0``); only
  measured while the extension still has the cache.

The variants take turns repetition by repetition, each leading the round in turn; each turn runs one
untimed step (which fills the cache for the variants that use it) and then one timed step, so no variant
inherits another's state.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import _timing  # noqa: E402

from mfdr import MFDR, MFDRConfig  # noqa: E402
from mfdr.config import TrainConfig  # noqa: E402
from mfdr.run.loop import make_optimizer  # noqa: E402
from mfdr_kernels import _backends, _ext  # noqa: E402

DEFAULT_CACHE = 256 * 2**20


def make_step(cfg: MFDRConfig, batch: int):
    from op_count import inputs

    torch.manual_seed(0)
    model = MFDR(cfg)
    opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-4), "cpu")
    audio, text, al, tl, y = inputs(cfg, batch)

    def step():
        loss = torch.nn.functional.cross_entropy(model(audio, text, al, tl), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def has_output_cache() -> bool:
    _ext.load()
    return hasattr(torch.ops.mfdr_C, "set_output_cache_limit")


def variants(cfg: MFDRConfig, batch: int) -> dict:
    """name -> (set-up called before each turn, step)."""
    eager = _backends.eager
    cache = has_output_cache()

    def as_is():
        _backends.eager = eager
        if cache:
            torch.ops.mfdr_C.set_output_cache_limit(DEFAULT_CACHE)

    def custom_op():
        as_is()
        _backends.eager = lambda *tensors: False

    def no_cache():
        as_is()
        torch.ops.mfdr_C.set_output_cache_limit(0)

    out = {"as is": (as_is, make_step(cfg, batch)), "custom op": (custom_op, make_step(cfg, batch))}
    if cache:
        out["no output cache"] = (no_cache, make_step(cfg, batch))
    return out


def measure(cfg: MFDRConfig, batch: int, reps: int) -> dict:
    runs = variants(cfg, batch)
    times = {name: [] for name in runs}
    try:
        names = list(runs)
        for rep in range(reps):
            for name in names[rep % len(names):] + names[:rep % len(names)]:  # each variant leads in turn
                setup, step = runs[name]
                setup()
                step()  # untimed: fills what this variant keeps between steps
                t0 = time.perf_counter()
                step()
                times[name].append(time.perf_counter() - t0)
    finally:
        runs["as is"][0]()
    base = times["as is"]
    return {name: (statistics.median(t), min(t), statistics.median(x / b for x, b in zip(t, base, strict=True)))
            for name, t in times.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    cfg, batch, reps = MFDRConfig(num_classes=4), args.batch, args.reps
    if args.quick:
        cfg = cfg.replace(audio_dim=16, text_dim=16, audio_len=64, text_len=12, d_model=16, heads=2, dfc_hidden=8)
        batch, reps = 4, 1
    threads = _timing.set_threads(args.threads)
    t = measure(cfg, batch, reps)
    rows = [{"variant": name, "step_ms": 1e3 * s, "min_ms": 1e3 * lo, "vs_as_is": ratio}
            for name, (s, lo, ratio) in t.items()]
    print(f"MFDR training step, batch {batch}, {threads} thread(s), median of {reps}; paper config = {not args.quick}")
    print("| variant | step ms (median) | min ms | / as is (median of the rounds' ratios) |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['step_ms']:.1f} | {row['min_ms']:.1f} | {row['vs_as_is']:.3f} |", flush=True)
    _timing.write_json(_timing.results_path(args.out, args.quick, "machinery.json"),
                       {"machine": _timing.machine(), "batch": batch, "reps": reps, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
