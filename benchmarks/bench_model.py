"""Time one MFDR training step (forward + backward + Adam) per kernel backend, with a per-module breakdown.

    .venv/bin/python benchmarks/bench_model.py                      # paper config, batch 32, float32, CPU
    .venv/bin/python benchmarks/bench_model.py --backends torch,default --steps 10 --json out.json
    .venv/bin/python benchmarks/bench_model.py --device cuda --backends torch,default

Backends: ``reference`` (the readable loops: slow, timed for ``--reference-steps`` steps at
``--reference-batch``), ``torch`` (vectorized PyTorch), ``default`` (what ``backend=None`` picks: the
C++ kernels on the CPU, Triton on CUDA). Each backend runs the same weights on the same batch.

The step time is the median over ``--steps`` timed steps after ``--warmup`` untimed ones, the backends
taking turns step by step (a busy machine then slows them alike). The breakdown
times each stage alone, forward + backward, on the inputs it sees inside the model:
projections (the q/k/v Linear layers), SAWA (the attention op), MHA (the GCPU's global context),
GCPU (the recurrence), DFC (the pooling layers), head (flatten, dropout, Linear); "other" is the step
minus their sum (LayerNorm, residual, loss, Adam).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfdr import MFDR, MFDRConfig  # noqa: E402

STAGES = ("projections", "SAWA", "MHA", "GCPU", "DFC", "head")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_batch(cfg: MFDRConfig, batch: int, device, dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, cfg.audio_len, cfg.audio_dim, generator=g).to(device, dtype)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g).to(device, dtype)
    audio_lengths = torch.randint(cfg.audio_len // 2, cfg.audio_len + 1, (batch,), generator=g).to(device)
    text_lengths = torch.randint(cfg.text_len // 3, cfg.text_len + 1, (batch,), generator=g).to(device)
    labels = torch.randint(0, cfg.num_classes, (batch,), generator=g).to(device)
    return audio, text, audio_lengths, text_lengths, labels


def _fwd_bwd(fn, *inputs, input_grad: bool = True):
    """A closure running ``fn(*inputs)`` forward and backward (upstream gradient of ones); the inputs get
    gradients when ``input_grad`` (activations inside the model), not otherwise (the data)."""
    leaves = [x.detach().requires_grad_(input_grad) if x.is_floating_point() else x for x in inputs]

    def run():
        out = fn(*leaves)
        outs = out if isinstance(out, tuple) else (out,)
        outs = [o for o in outs if o.requires_grad]
        torch.autograd.backward(outs, [torch.ones_like(o) for o in outs])

    return run


def stages(model: MFDR, batch) -> dict:
    """One forward + backward closure per stage, on the inputs the stage sees inside the model."""
    audio, text, al, tl, _ = batch
    f, ctx = model.fusion, model.context
    with torch.no_grad():
        _, q, k, v = f.project(audio, text)
        z = f(audio, text, al, tl)
        has_g = hasattr(ctx, "recurrence") and ctx.context
        g = ctx.global_context(z, tl) if has_g else None
        H = ctx(z, tl)
        P = model.pool(H)
    return {
        "projections": _fwd_bwd(f.project, audio, text, input_grad=False),
        "SAWA": _fwd_bwd(lambda q, k, v: f.attend(q, k, v, al, tl), q, k, v),
        "MHA": _fwd_bwd(lambda z: ctx.global_context(z, tl), z) if has_g else None,
        "GCPU": (_fwd_bwd(lambda z, g: ctx.recurrence(z, g, tl), z, g) if has_g
                 else _fwd_bwd(lambda z: ctx(z, tl), z)),
        "DFC": _fwd_bwd(model.pool, H),
        "head": _fwd_bwd(model.head, P),
    }


def setup(cfg: MFDRConfig, backend: str | None, batch_size: int, device, dtype, seed: int = 0) -> dict:
    """The model (same weights for every backend), its optimizer, a batch, and the closures to time."""
    torch.manual_seed(seed)
    model = MFDR(cfg.replace(backend=backend)).to(device, dtype).train()
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    batch = make_batch(cfg, batch_size, device, dtype, seed)
    audio, text, al, tl, y = batch

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(audio, text, al, tl), y)
        loss.backward()
        opt.step()

    return {"backend": backend or "default", "batch": batch_size, "model": model,
            "fns": {"step": step, **{k: fn for k, fn in stages(model, batch).items() if fn is not None}}}


def bench(runs: list[dict], device, steps: int, warmup: int) -> list[dict]:
    """Time every closure of every run, round-robin (so a noisy neighbour hits all backends alike)."""
    times = [{name: [] for name in run["fns"]} for run in runs]
    for i in range(warmup + steps):
        for run, t in zip(runs, times, strict=True):
            for name, fn in run["fns"].items():
                _sync(device)
                t0 = time.perf_counter()
                fn()
                _sync(device)
                if i >= warmup:
                    t[name].append(time.perf_counter() - t0)
    results = []
    for run, t in zip(runs, times, strict=True):
        med = {name: statistics.median(v) for name, v in t.items()}
        parts = {name: med.get(name, 0.0) for name in STAGES}
        parts["other"] = max(med["step"] - sum(parts.values()), 0.0)
        results.append({"backend": run["backend"], "batch": run["batch"], "steps": steps,
                        "step_s": med["step"], "step_min_s": min(t["step"]), "parts_s": parts,
                        "levels": run["model"].level_fractions()})
    return results


def environment(device) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import mfdr_kernels

    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
           "threads": torch.get_num_threads(), "device": str(device),
           "default_backend": mfdr_kernels.default_backend(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def table(results: list[dict]) -> str:
    head = "| stage | " + " | ".join(f"{r['backend']} (B={r['batch']})" for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    for stage in (*STAGES, "other"):
        lines.append(f"| {stage} | " + " | ".join(f"{1e3 * r['parts_s'][stage]:.1f}" for r in results) + " |")
    lines.append("| **step (ms)** | " + " | ".join(f"**{1e3 * r['step_s']:.1f}**" for r in results) + " |")
    lines.append("| step, min (ms) | " + " | ".join(f"{1e3 * r['step_min_s']:.1f}" for r in results) + " |")
    lines.append("| samples/s | " + " | ".join(f"{r['batch'] / r['step_s']:.1f}" for r in results) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--backends", default="reference,torch,default")
    p.add_argument("--reference-batch", type=int, default=None, help="reference's batch (default: --batch)")
    p.add_argument("--reference-steps", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16", "float16"))
    p.add_argument("--config", default=None, help="MFDRConfig .json/.yaml (default: the paper's)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    cfg = MFDRConfig.load(args.config) if args.config else MFDRConfig()
    env = environment(device)
    print(f"# MFDR training step, {args.dtype}, {env}", flush=True)
    names = args.backends.split(",")
    fast = [setup(cfg, None if n == "default" else n, args.batch, device, dtype)
            for n in names if n != "reference"]
    results = bench(fast, device, args.steps, args.warmup) if fast else []
    if "reference" in names:  # slow: its own few steps, no warm-up
        ref = setup(cfg, "reference", args.reference_batch or args.batch, device, dtype)
        results.insert(names.index("reference"), bench([ref], device, args.reference_steps, 0)[0])
    for r in results:
        print(f"{r['backend']}: step {1e3 * r['step_s']:.1f} ms (median of {r['steps']}; min "
              f"{1e3 * r['step_min_s']:.1f} ms) at batch {r['batch']}", flush=True)
    print()
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "config": cfg.to_dict(), "dtype": args.dtype,
                                               "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
