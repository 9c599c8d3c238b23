"""Stage 4 of the GPU check: one MFDR training step, four ways, each in its own process.

``mfdr.MFDR`` with the paper's configuration (``MFDRConfig()``: T = 255 frames, L = 50 words, 768-dim
inputs, d_model 256, SAWA levels 2, GCPU, DFC), batch 32, random features with padded lengths
(``bench_model.make_batch``), default kernel backends (triton on CUDA) at their fixed spill-free configs
(the driver sets ``MFDR_TRITON_AUTOTUNE=0``: a step is launch-bound, and every variant's process would
tune every kernel anew), Adam. Variants:

- ``eager fp32``: the plain step.
- ``AMP bf16``: forward and loss under ``torch.autocast(dtype=torch.bfloat16)``, weights fp32.
- ``torch.compile``: ``torch.compile(model)`` (inductor, graph breaks allowed).
- ``CUDA graphs``: ``torch.compile(model, mode="reduce-overhead")``.

A dry run (CPU) takes a tiny configuration at batch 2: the eager step on the triton backend (under the
interpreter), the other variants on the torch backend (the interpreter takes no bf16, and the same custom
ops are traced); it compiles with the ``aot_eager`` backend (dynamo and AOT autograd through the custom
ops, no code generation) and, for the CUDA-graphs row, ``eager`` (dynamo alone). It rehearses the code; it
measures nothing.

Each variant runs in a child process with its own time limit (a CUDA error poisons a process; a slow
compile must not eat the next variant's time): one failing variant is reported with its exception's last
line and the next one still runs. Per variant: the first step's wall time (compilation included), the
mean of ``--steps`` steps run back to back (warm-up steps first; one
synchronization at the end, as a training loop), samples/s, peak memory, the loss after the timed steps
(finite?), graphs and graph breaks (dynamo's counters).

Projected wall time of the paper's IEMOCAP protocol (leave-one-speaker-out, 10 folds x 40 epochs over
~5,531 utterances, ~90% of them training each fold): ``10 x 40 x ceil(0.9 x 5531 / 32) = 62,400`` steps
at the measured ms/step: training steps only (no data loading, no evaluation passes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback

# common (this folder) sets TRITON_INTERPRET and sys.path before mfdr_kernels imports triton
from common import DRY_RUN, ROOT, Table, error_line, heading, remaining, versions

VARIANTS = {  # name -> (time cap s, minimum worth starting s) on CUDA
    "eager fp32": (45, 15),
    "AMP bf16": (45, 15),
    "torch.compile": (120, 40),
    "CUDA graphs": (120, 40),
}
FOLDS, EPOCHS, UTTERANCES, TRAIN_FRACTION = 10, 40, 5531, 0.9
RESULT = "RESULT "


def protocol_steps(batch: int) -> int:
    return FOLDS * EPOCHS * math.ceil(TRAIN_FRACTION * UTTERANCES / batch)


# ----------------------------------------------------------------------------------------------------
# Child: one variant


def build(variant: str, batch: int):
    """The model, its optimizer, a batch and the step function of ``variant``."""
    import torch
    import torch.nn.functional as F

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_model

    from mfdr import MFDR, MFDRConfig

    dev = torch.device("cpu" if DRY_RUN else "cuda")
    cfg = MFDRConfig()
    if DRY_RUN:  # the interpreter takes fp32 only, and costs ~1 s a step: triton for the eager step alone
        cfg = MFDRConfig(audio_dim=24, text_dim=24, audio_len=55, text_len=10, d_model=16, heads=2, dfc_hidden=8,
                         backend="triton" if variant == "eager fp32" else "torch")
    torch.manual_seed(0)
    model = MFDR(cfg).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    audio, text, al, tl, y = bench_model.make_batch(cfg, batch, dev, torch.float32)
    fwd = model
    if variant == "torch.compile":
        fwd = torch.compile(model, backend="aot_eager") if DRY_RUN else torch.compile(model)
    elif variant == "CUDA graphs":
        fwd = torch.compile(model, backend="eager") if DRY_RUN else torch.compile(model, mode="reduce-overhead")
    amp = variant == "AMP bf16"
    graphs = variant == "CUDA graphs" and not DRY_RUN

    def step():
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(fwd(audio, text, al, tl), y)
        loss.backward()
        opt.step()
        return loss

    return dev, cfg, step


def run_variant(variant: str, batch: int, steps: int, warmup: int) -> dict:
    import torch
    from torch._dynamo.utils import counters

    dev, cfg, step = build(variant, batch)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        step()
    sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):  # back to back, one sync at the end: the throughput of a training loop
        loss = step()
    sync()
    ms = (time.perf_counter() - t0) / steps * 1e3
    loss = float(loss.detach())
    return {"variant": variant, "batch": batch, "first_s": first, "ms": ms, "samples_s": batch / ms * 1e3,
            "loss": loss, "finite": math.isfinite(loss),
            "peak_mb": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
            "graphs": counters["stats"].get("unique_graphs", 0),
            "breaks": sum(counters["graph_break"].values()), "steps": steps}


def child(args) -> int:
    try:
        result = run_variant(args.variant, args.batch, args.steps, args.warmup)
    except BaseException as exc:  # noqa: BLE001 - the parent reports it; the traceback goes to the log
        traceback.print_exc()
        print(RESULT + json.dumps({"variant": args.variant, "error": error_line(exc)}), flush=True)
        return 1
    print(RESULT + json.dumps(result), flush=True)
    return 0 if result["finite"] else 1


# ----------------------------------------------------------------------------------------------------
# Parent: the variants in turn, a row each as it finishes


def _hms(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


def parent(args) -> int:
    import proc

    print(versions(), flush=True)
    heading(f"MFDR training step ({'dry run: tiny config, CPU' if DRY_RUN else 'paper config'}, batch {args.batch}, "
            f"padded lengths, Adam; mean of {args.steps} steps back to back)")
    total = protocol_steps(args.batch)
    table = Table(["variant", "ms/step", "samples/s", "first step s (compile)", "peak MB", "loss",
                   "graphs / breaks", f"IEMOCAP 10x40 projected ({total:,} steps)", "status"])
    names = list(VARIANTS)
    ok = True
    for i, name in enumerate(names):
        cap, minimum = VARIANTS[name]
        if DRY_RUN:
            cap, minimum = 90, 5
        later = sum(VARIANTS[n][1] for n in names[i + 1:]) if not DRY_RUN else 0
        left = remaining() - 5
        if left < minimum:  # else it gets at least its minimum: the variants are in order of value
            table.row(name, *["—"] * 7, f"SKIPPED: stage time limit ({max(left, 0):.0f} s left)")
            ok = False
            continue
        allowed = min(cap, max(left - later, minimum))
        results = []

        def on_out(line, results=results):
            if line.startswith(RESULT):
                results.append(json.loads(line[len(RESULT):]))
            else:
                print(line, file=sys.stderr, flush=True)

        cmd = [sys.executable, __file__, "--variant", name, "--batch", str(args.batch), "--steps",
               str(args.steps), "--warmup", str(args.warmup)]
        res = proc.run(cmd, allowed, dict(os.environ), on_out, lambda line: print(line, file=sys.stderr, flush=True))
        r = results[-1] if results else {}
        if res["timed_out"]:
            status = f"TIMEOUT after {allowed:.0f} s"
        elif "error" in r:
            status = f"FAILED: {r['error']}"
        elif res["rc"] != 0 or not r:
            status = f"FAILED (exit {res['rc']}): {proc.last_error(res)}"
        elif not r["finite"]:
            status = "FAILED: loss is not finite"
        else:
            status = "ok"
        ok &= status == "ok"
        if "ms" in r:
            table.row(name, r["ms"], r["samples_s"], r["first_s"], r["peak_mb"], f"{r['loss']:.4f}",
                      f"{r['graphs']} / {r['breaks']}", _hms(total * r["ms"] / 1e3), status)
        else:
            table.row(name, *["—"] * 7, status)
    print(f"\nProjection: {FOLDS} folds x {EPOCHS} epochs x ceil({TRAIN_FRACTION} x {UTTERANCES} / {args.batch}) "
          f"steps x ms/step; training steps only (no data loading, no evaluation passes). "
          "Target (H200): <= 3 ms/step at batch 32.", flush=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", choices=list(VARIANTS), help="run one variant here (the child)")
    p.add_argument("--batch", type=int, default=2 if DRY_RUN else 32)
    p.add_argument("--steps", type=int, default=1 if DRY_RUN else 20)
    p.add_argument("--warmup", type=int, default=0 if DRY_RUN else 3)
    args = p.parse_args(argv)
    return child(args) if args.variant else parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
