"""Stage 1 of the GPU check: SAWA correctness against an fp64 oracle, then timings against the baselines.

Shapes, in order of value: the paper's (one head over the 256-wide fusion), the model's (``mfdr.MFDR``'s
SAWA layer: 4 heads of 64), then long audio (T = 4k, 16k, 64k frames, L = T / hop), batch 32; a dry run
takes two tiny shapes (the timings: the first). Window 10, hop 5 (dry run: 4, 2); fp16 (``--dtype``; dry run: fp32).

Correctness first, with ``MFDR_TRITON_AUTOTUNE=0`` (one spill-free config per kernel: no tuning where
nothing is timed), on a slice of the batch: the Triton output and gradients against an fp64 oracle (the
reference loop up to T = 4k, the torch backend in fp64 above), given the oracle's levels, must be within
2x the error of the torch backend run in the same dtype (+ a small floor); the decided levels must agree
on most rows (a near-tie may flip).

Timings (median ms, ``triton.testing.do_bench``), autotuning on (per size bucket); inputs made on the
device once per shape. Providers:

- ``sawa triton lv0`` / ``lv2``: this package's Triton kernels (fixed window; two expansion levels). The
  ``kernel`` columns time the launchers of ``triton_impl`` called directly, beside the op's time: the
  difference is the wrapper (checks, custom-op dispatch, autograd).
- ``sawa triton lv2 atomic dk/dv``: the backward launcher's ``tl.atomic_add`` flavour (kernel column only).
- ``sawa torch lv2``: the vectorized PyTorch backend.
- ``sdpa dense``: ``scaled_dot_product_attention`` over all T keys (flash kernel).
- ``sdpa window mask``: SDPA with a boolean ``(L, T)`` mask of the fixed windows ``[i·hop, i·hop + ω)``.
- ``flex window``: ``torch.compile(flex_attention)`` with a sliding-window block mask (same windows), at
  the paper and model shapes only (each shape compiles anew); a fallback to the unfused eager path (it
  materializes the scores) or a graph break is detected and reported in the note column.

The forward's bandwidth counts the bytes of q, k, v read and out written once, against ``y.copy_(x)`` of
1 GiB measured in the same run. Targets (H100/H200): faster than flex at the paper and model shapes;
>= 10x faster than dense SDPA at T >= 16k; forward >= 50% of the copy bandwidth at large batch.
"""

from __future__ import annotations

import argparse
import math
import os
import warnings

# common (this folder) sets TRITON_INTERPRET and sys.path before mfdr_kernels imports triton
import torch
import torch.nn.functional as F
from common import DRY_RUN, Table, bench, device, error_line, fmt, heading, out_of_time, phase, versions

from mfdr_kernels import sliding_adaptive_window_attention as sawa
from mfdr_kernels.sawa import triton_impl

PAPER = dict(B=32, H=1, L=50, T=255, d=256)
MODEL = dict(B=32, H=4, L=50, T=255, d=64)
TINY = [("tiny", dict(B=2, H=1, L=6, T=32, d=16)), ("tiny long", dict(B=1, H=2, L=12, T=64, d=16))]
FLEX_SHAPES = ("paper", "model", "tiny")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
# max |tuned - fixed| / max(1, max |fixed|): a wrong config gives O(1); block order alone a few ulps
TUNED_TOL = {torch.float16: 8e-3, torch.bfloat16: 6.4e-2, torch.float32: 1e-5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", default="fp16", choices=list(DTYPES), help="timing and check dtype (CUDA)")
    p.add_argument("--T", type=int, nargs="*", default=[4096, 16384, 65536], help="long-audio lengths")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rep", type=int, default=100, help="do_bench repetition time, ms")
    return p.parse_args(argv)


def shapes(args, hop):
    if DRY_RUN:
        return TINY
    out = [("paper", dict(PAPER, B=args.batch)), ("model", dict(MODEL, B=args.batch))]
    return out + [(f"T={t // 1024}k", dict(B=args.batch, H=1, L=t // hop, T=t, d=PAPER["d"])) for t in args.T]


def describe(label, s):
    return f"{label} B={s['B']} H={s['H']} L={s['L']} T={s['T']} d={s['d']}"


def make_inputs(shape, dtype, dev, seed=0):
    """q (scaled by 0.5), k, v as leaves that require grad, and an upstream gradient: made on ``dev``."""
    g = torch.Generator(device=dev).manual_seed(seed)
    B, H, L, T, d = (shape[key] for key in ("B", "H", "L", "T", "d"))
    q, k, v, grad = (torch.randn(B, H, n, d, generator=g, device=dev, dtype=dtype) for n in (L, T, T, L))
    q = q * 0.5
    return [x.requires_grad_() for x in (q, k, v)], grad


# ----------------------------------------------------------------------------------------------------
# Correctness


def check(shape, dtype, dev, window, hop, oracle):
    """Max errors of triton and torch (both in ``dtype``) against the fp64 oracle, given its levels."""
    where = "cpu" if oracle == "reference" else dev  # the reference loop is faster on the CPU (tiny ops)
    (q, k, v), grad = make_inputs(shape, torch.float64, where, seed=1)
    kw = dict(window=window, hop=hop, levels=2, return_level=True)
    ref_out, ref_level = sawa(q, k, v, backend=oracle, **kw)
    want = [x.to(dev) for x in (ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad))]
    ref_level = ref_level.to(dev)
    low = [x.detach().to(dev, dtype).requires_grad_() for x in (q, k, v)]
    gl = grad.to(dev, dtype)
    errs = {}
    for backend in ("triton", "torch"):
        out, _ = sawa(*low, backend=backend, force_level=ref_level, **kw)
        got = (out, *torch.autograd.grad(out, low, gl))
        errs[backend] = [(a.double() - b).abs().max().item() for a, b in zip(got, want, strict=True)]
    with torch.no_grad():
        _, level = sawa(*low, backend="triton", **kw)
    agree = (level == ref_level).float().mean().item()
    floor = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-4)
    ok = all(t <= 2 * b + floor for t, b in zip(errs["triton"], errs["torch"], strict=True))
    return ok, errs, agree


def correctness(cases, dtype, dev, window, hop) -> bool:
    heading("SAWA correctness (vs an fp64 oracle, given its levels; bound: 2x the torch error + floor; "
            "MFDR_TRITON_AUTOTUNE=0)")
    table = Table(["shape", "oracle", "max error out / dq / dk / dv: triton", "torch (same dtype)", "levels agree",
                   "ok"])
    all_ok = True
    for label, shape in cases:
        small = dict(shape, B=min(shape["B"], 2 if shape["T"] <= 4096 else 1))
        oracle = "reference" if shape["T"] <= (64 if DRY_RUN else 4096) else "torch"
        if out_of_time(30):
            table.row(describe(label, small), oracle, "skipped: stage time limit", "", "", "SKIP")
            continue
        try:
            ok, errs, agree = check(small, dtype, dev, window, hop, oracle)
        except Exception as exc:  # noqa: BLE001 - reported, and the next shape still runs
            table.row(describe(label, small), oracle, error_line(exc), "", "", "FAIL")
            all_ok = False
            continue
        all_ok &= ok
        tri, tor = (" / ".join(f"{e:.1e}" for e in errs[b]) for b in ("triton", "torch"))
        table.row(describe(label, small), oracle, tri, tor, f"{agree:.2%}", "PASS" if ok else "FAIL")
    print(f"\nSAWA correctness: {'PASS' if all_ok else 'FAIL'}", flush=True)
    return all_ok


# ----------------------------------------------------------------------------------------------------
# Timings


def copy_bandwidth(dev) -> float:
    """GB/s of ``y.copy_(x)`` (bytes read + written)."""
    n = (1 << 29) if dev.type == "cuda" else (1 << 20)  # 1 GiB of fp16 on the GPU
    src = torch.empty(n, dtype=torch.float16, device=dev).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), dev, 100)
    return 2 * n * 2 / (ms * 1e-3) / 1e9


class Launchers:
    """The Triton launchers called directly, on the op's normalized arguments (kernel-only times)."""

    def __init__(self, q, k, v, grad, window, hop):
        B, _, L, d = q.shape
        T = k.shape[2]
        dev = q.device
        self.q, self.k, self.v, self.grad, self.window = q.detach(), k.detach(), v.detach(), grad, window
        self.q_lens = torch.full((B,), L, dtype=torch.int64, device=dev)
        self.k_lens = torch.full((B,), T, dtype=torch.int64, device=dev)
        self.starts = (torch.arange(L, device=dev, dtype=torch.int64) * hop).clamp(max=T).expand(B, L).contiguous()
        self.scale = 1 / math.sqrt(d)

    def _args(self):
        return self.q, self.k, self.v, self.q_lens, self.k_lens, self.starts

    def forward(self, levels):
        return lambda: triton_impl.sawa_fwd(*self._args(), None, self.window, levels, False, self.scale)

    def backward(self, levels, dkdv="blocks"):
        _, level = self.forward(levels)()
        return lambda: triton_impl.sawa_bwd(self.grad, *self._args(), level, self.window, False, self.scale,
                                                 dkdv=dkdv)


def flex_provider(L, T, window, hop, dev):
    """flex_attention with a sliding-window block mask: compiled on CUDA (eager on the CPU: a dry run)."""
    state = {}

    def run(q, k, v):
        if "fn" not in state:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def window_mask(b, h, qi, kj):
                return (kj >= qi * hop) & (kj < qi * hop + window)

            state["mask"] = create_block_mask(window_mask, B=None, H=None, Q_LEN=L, KV_LEN=T, device=str(dev))
            state["fn"] = torch.compile(flex_attention, dynamic=False) if dev.type == "cuda" else flex_attention
        return state["fn"](q, k, v, block_mask=state["mask"])

    return run


def providers(shape, label, window, hop, dev):
    L, T = shape["L"], shape["T"]
    i = torch.arange(L, device=dev)[:, None]
    j = torch.arange(T, device=dev)[None, :]
    mask = {}

    def sdpa_window(q, k, v):
        if "m" not in mask:
            mask["m"] = (j >= i * hop) & (j < i * hop + window)  # (L, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask["m"])

    def triton(levels):
        return lambda q, k, v: sawa(q, k, v, window=window, hop=hop, levels=levels, backend="triton")

    fns = {  # dense first: the other rows are compared with it; flex last (it compiles)
        "sdpa dense": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
        "sawa triton lv2": triton(2),
        "sawa triton lv0": triton(0),
        "sawa triton lv2 atomic dk/dv": None,  # kernel-only backward row
        "sawa torch lv2": lambda q, k, v: sawa(q, k, v, window=window, hop=hop, levels=2, backend="torch"),
        "sdpa window mask": sdpa_window,
    }
    if label in FLEX_SHAPES:
        fns["flex window"] = flex_provider(L, T, window, hop, dev)
    return fns




def time_provider(name, fn, inputs, launchers, dev, rep):
    """{"fwd", "bwd", "both", "kfwd", "kbwd" (ms), "peak" (MB), "note"}; a value may be "OOM" or "ERR"."""
    (q, k, v), grad = inputs
    row = {}
    if name.startswith("sawa triton"):
        levels = 0 if "lv0" in name else 2
        if fn is not None:
            phase(row, "kfwd", lambda: bench(launchers.forward(levels), dev, rep))
        dkdv = "atomic" if "atomic" in name else "blocks"
        phase(row, "kbwd", lambda: bench(launchers.backward(levels, dkdv), dev, rep))
    if fn is None:
        return row
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    phase(row, "fwd", lambda: bench(lambda: fn(qd, kd, vd), dev, rep))  # no autograd bookkeeping

    def backward():
        out = fn(q, k, v)
        return bench(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True), dev, rep)

    def both():
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = bench(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), dev, rep)
        if dev.type == "cuda":
            row["peak"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return ms

    phase(row, "bwd", backward)
    phase(row, "both", both)
    return row


def time_flex(fn, inputs, launchers, dev, rep):
    """time_provider for flex, with its compile watched: the eager fallback warns, a graph break counts."""
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        row = time_provider("flex window", fn, inputs, launchers, dev, rep)
    eager = [str(w.message).splitlines()[0] for w in caught
             if "torch.compile" in str(w.message) or "unfused" in str(w.message)]
    new_breaks = sum(counters["graph_break"].values()) - breaks
    if dev.type != "cuda":
        status = "eager (CPU dry run: not compiled)"
    elif eager:
        status = f"EAGER FALLBACK: {eager[0][:120]}"
    elif new_breaks:
        status = f"GRAPH BREAKS: {new_breaks}"
    else:
        status = "compiled, no graph break"
    row["note"] = status + (f"; {row['note']}" if "note" in row else "")
    return row


def tuned_vs_fixed(launchers, dtype):
    """Max relative difference of the autotuned launchers' results from the fixed config's (the one the
    correctness section checked), out on the rows whose levels agree, and dq/dk/dv given the same levels."""
    results = {}
    for tune in ("1", "0"):
        os.environ["MFDR_TRITON_AUTOTUNE"] = tune
        out, level = launchers.forward(2)()
        results[tune] = (out, level)
    os.environ["MFDR_TRITON_AUTOTUNE"] = "1"
    (out_t, lvl_t), (out_f, lvl_f) = results["1"], results["0"]
    same = (lvl_t == lvl_f)[..., None]
    rel = lambda a, b: ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp(min=1)).item()
    errs = [rel(torch.where(same, out_t, 0), torch.where(same, out_f, 0))]
    grads = {}
    for tune in ("1", "0"):
        os.environ["MFDR_TRITON_AUTOTUNE"] = tune
        args = launchers._args()
        grads[tune] = triton_impl.sawa_bwd(launchers.grad, *args, lvl_f, launchers.window, False,
                                                launchers.scale)
    os.environ["MFDR_TRITON_AUTOTUNE"] = "1"
    errs += [rel(a, b) for a, b in zip(grads["1"], grads["0"], strict=True)]
    agree = same.float().mean().item()
    return errs, agree, all(e <= TUNED_TOL[dtype] for e in errs)


def timings(cases, dtype, dev, window, hop, rep):
    os.environ["MFDR_TRITON_AUTOTUNE"] = "1"  # tuning only here, where it is timed
    bw = copy_bandwidth(dev)
    heading(f"SAWA timings (median ms; copy bandwidth {bw:.1f} GB/s; kernel = the triton_impl launcher alone)")
    table = Table(["shape", "provider", "fwd ms", "fwd kernel ms", "bwd ms", "bwd kernel ms", "fwd+bwd ms",
                   "fwd GB/s (% copy)", "peak MB", "fwd+bwd vs dense SDPA", "note"])
    verdicts, checks, ok = [], [], True
    for label, shape in cases:
        B, H, L, T, d = (shape[key] for key in ("B", "H", "L", "T", "d"))
        where = describe(label, shape)
        if out_of_time(25 if T <= 4096 else 45):
            table.row(where, "all", *["—"] * 8, "skipped: stage time limit")
            continue
        try:
            inputs = make_inputs(shape, dtype, dev)
            launchers = Launchers(*inputs[0], inputs[1], window, hop)
        except torch.OutOfMemoryError:
            table.row(where, "all", *["OOM"] * 8, "inputs do not fit")
            continue
        nbytes = B * H * (2 * L + 2 * T) * d * inputs[0][0].element_size()
        rows = {}
        for name, fn in providers(shape, label, window, hop, dev).items():
            if out_of_time(45 if name == "flex window" else 10):
                table.row(where, name, *["—"] * 8, "skipped: stage time limit")
                continue
            if name == "flex window":
                r = time_flex(fn, inputs, launchers, dev, rep)
            else:
                r = time_provider(name, fn, inputs, launchers, dev, rep)
            rows[name] = r
            ok &= not (name.startswith("sawa triton") and "ERR" in r.values())  # a baseline may fail; ours not
            gbs = "—"
            if name.startswith("sawa triton") and isinstance(r.get("fwd"), float):
                g = nbytes / (r["fwd"] * 1e-3) / 1e9
                gbs = f"{g:.1f} ({g / bw:.0%})"
            dense = rows.get("sdpa dense", {}).get("both")
            both = r.get("both")
            vs = f"{dense / both:.1f}x" if isinstance(dense, float) and isinstance(both, float) else "—"
            table.row(where, name, *(r.get(key) for key in ("fwd", "kfwd", "bwd", "kbwd", "both")), gbs,
                      fmt(r.get("peak"), 0), vs, r.get("note", ""))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        verdicts += targets(label, T, rows, nbytes, bw)
        try:
            errs, agree, same = tuned_vs_fixed(launchers, dtype)
            checks.append(f"{where}: max rel. difference out / dq / dk / dv "
                          f"{' / '.join(f'{e:.1e}' for e in errs)}, levels agree {agree:.2%} -> "
                          f"{'PASS' if same else 'FAIL'} (bound {TUNED_TOL[dtype]:.0e})")
        except Exception as exc:  # noqa: BLE001
            same = False
            checks.append(f"{where}: {error_line(exc)} -> FAIL")
        ok &= same
        del inputs, launchers
    if verdicts:
        heading("SAWA targets")
        print("\n".join(f"- {v}" for v in verdicts), flush=True)
    if checks:
        heading("Autotuned configs vs the checked fixed config (same inputs)")
        print("\n".join(f"- {c}" for c in checks), flush=True)
    tuned = triton_impl.tuned_configs()
    heading("Configs the SAWA autotuners chose")
    print("\n".join(f"- {t}" for t in tuned) if tuned else "- none (one config each: interpreter or a single "
          "spill-free config)", flush=True)
    return ok


def targets(label, T, rows, nbytes, bw) -> list[str]:
    out = []
    lv2 = rows.get("sawa triton lv2", {})
    flex, dense = rows.get("flex window", {}).get("both"), rows.get("sdpa dense", {}).get("both")
    both = lv2.get("both")
    if isinstance(flex, float) and isinstance(both, float):
        out.append(f"{label}: triton lv2 fwd+bwd {both:.3f} ms vs flex {flex:.3f} ms -> "
                   f"{'MET' if both < flex else 'MISSED'} (target: faster than flex)")
    if T >= 16384 and isinstance(dense, float) and isinstance(both, float):
        out.append(f"{label}: dense SDPA / triton lv2 = {dense / both:.1f}x -> "
                   f"{'MET' if dense / both >= 10 else 'MISSED'} (target >= 10x)")
    atomic = rows.get("sawa triton lv2 atomic dk/dv", {}).get("kbwd")
    if isinstance(atomic, float) and isinstance(lv2.get("kbwd"), float):
        faster = "key blocks (the default)" if lv2["kbwd"] <= atomic else "atomic"
        out.append(f"{label}: triton lv2 backward kernels, key-block dk/dv {lv2['kbwd']:.3f} ms vs atomic "
                   f"{atomic:.3f} ms -> faster: {faster}")
    if isinstance(lv2.get("fwd"), float) and not DRY_RUN:
        frac = nbytes / (lv2["fwd"] * 1e-3) / 1e9 / bw
        out.append(f"{label}: triton lv2 forward at {frac:.0%} of copy bandwidth"
                   + (f" -> {'MET' if frac >= 0.5 else 'MISSED'} (target >= 50% at large batch)" if T >= 16384 else ""))
    for name in ("sawa triton lv2", "sawa triton lv0"):
        r = rows.get(name, {})
        if all(isinstance(r.get(k), float) for k in ("fwd", "kfwd", "bwd", "kbwd")):
            out.append(f"{label}: {name} wrapper overhead: fwd {r['fwd'] - r['kfwd']:+.3f} ms, "
                       f"bwd {r['bwd'] - r['kbwd']:+.3f} ms (op - kernel)")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    dev = device()
    dtype = torch.float32 if DRY_RUN else DTYPES[args.dtype]
    window, hop = (4, 2) if DRY_RUN else (10, 5)
    cases = shapes(args, hop)
    print(f"{versions()}; dtype {str(dtype).removeprefix('torch.')}, window {window}, hop {hop}", flush=True)
    os.environ["MFDR_TRITON_AUTOTUNE"] = "0"
    ok = correctness(cases, dtype, dev, window, hop)
    ok &= timings(cases[:1] if DRY_RUN else cases, dtype, dev, window, hop, 1 if DRY_RUN else args.rep)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
