"""SAWA on a GPU in one command: correctness against the reference, then timings against the baselines.

    python benchmarks/gpu_check.py            # CUDA: paper shape and T = 4k, 16k, 64k; one markdown table
    python benchmarks/gpu_check.py --dry-run  # CPU smoke test: tiny shapes, Triton under TRITON_INTERPRET=1

Providers (forward, backward and both are timed separately; peak memory of fwd+bwd):

- ``sawa triton lv0`` / ``lv2``: this package's Triton kernels (fixed window; two expansion levels).
- ``sawa triton lv2 atomic dk/dv``: backward only, the ``tl.atomic_add`` flavour of ``triton_impl``
  (the measurement behind the key-block default).
- ``sawa torch lv2``: the vectorized PyTorch backend.
- ``sdpa dense``: ``scaled_dot_product_attention`` over all T keys (flash kernel).
- ``sdpa window mask``: SDPA with a boolean ``(L, T)`` mask of the fixed windows ``[i·hop, i·hop + ω)``.
- ``flex window``: ``torch.compile(flex_attention)`` with a sliding-window block mask (same windows).

Correctness (before timing, on a slice of the batch): the Triton output and gradients against an fp64
oracle (the reference loop up to T = 4k, the torch backend in fp64 above), given the oracle's levels,
must be within 2× the error of the torch backend run in the same dtype (+ a small floor), and the
decided levels must agree on the rows whose decision margin is clear.

The forward's achieved bandwidth counts the bytes of q, k, v read and out written once; the copy
bandwidth (``y.copy_(x)`` of 1 GiB) is measured in the same run. Targets (H100): faster than flex at
the paper's shape; ≥ 10× faster than dense SDPA at T ≥ 16k; forward ≥ 50% of copy bandwidth.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

PAPER = dict(B=32, H=1, L=50, T=255, d=256)  # as bench_sawa_cpu.py: one head over the 256-wide fusion
MODEL = dict(B=32, H=4, L=50, T=255, d=64)  # mfdr.MFDR's default SAWA layer: 4 heads of 64
TINY = [dict(B=2, H=1, L=6, T=32, d=16), dict(B=1, H=2, L=12, T=64, d=16)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dry-run", action="store_true",
                   help="CPU smoke test: tiny shapes, Triton under TRITON_INTERPRET=1 (no CUDA needed)")
    p.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"], help="timing dtype (CUDA)")
    p.add_argument("--T", type=int, nargs="*", default=[4096, 16384, 65536],
                   help="long-audio lengths besides the paper shape (L = T / hop)")
    p.add_argument("--batch", type=int, default=PAPER["B"], help="batch size of every shape")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--hop", type=int, default=5)
    p.add_argument("--providers", nargs="*", default=None, help="subset of providers (substring match)")
    p.add_argument("--no-check", action="store_true", help="skip the correctness section")
    p.add_argument("--rep", type=int, default=100, help="timing repetitions target in ms (do_bench rep)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
if ARGS.dry_run:  # must precede the first import of triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mfdr_kernels import sliding_adaptive_window_attention as sawa  # noqa: E402

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


# ----------------------------------------------------------------------------------------------------
# Timing


def bench(fn, device, rep_ms: int) -> float:
    """Median milliseconds of ``fn()``."""
    if device.type == "cuda":
        import triton.testing

        return triton.testing.do_bench(fn, warmup=max(5, rep_ms // 4), rep=rep_ms, return_mode="median")
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def copy_bandwidth(device) -> float:
    """GB/s of ``y.copy_(x)`` (bytes read + written)."""
    n = (1 << 29) if device.type == "cuda" else (1 << 20)  # 1 GiB of fp16 on the GPU
    src = torch.empty(n, dtype=torch.float16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = bench(lambda: dst.copy_(src), device, 100)
    return 2 * n * 2 / (ms * 1e-3) / 1e9


# ----------------------------------------------------------------------------------------------------
# Providers: each returns a function of (q, k, v) -> out (B, H, L, dv), or raises


def provider_fns(shape, window, hop, device):
    L, T = shape["L"], shape["T"]
    fns = {}

    def triton_fn(levels):
        return lambda q, k, v: sawa(q, k, v, window=window, hop=hop, levels=levels, backend="triton")

    fns["sawa triton lv0"] = triton_fn(0)
    fns["sawa triton lv2"] = triton_fn(2)
    fns["sawa triton lv2 atomic dk/dv"] = "atomic"  # backward-only row, see time_provider
    fns["sawa torch lv2"] = lambda q, k, v: sawa(q, k, v, window=window, hop=hop, levels=2, backend="torch")
    fns["sdpa dense"] = lambda q, k, v: F.scaled_dot_product_attention(q, k, v)

    i = torch.arange(L, device=device)[:, None]
    j = torch.arange(T, device=device)[None, :]
    mask_cache = {}

    def sdpa_window(q, k, v):
        if "m" not in mask_cache:
            mask_cache["m"] = (j >= i * hop) & (j < i * hop + window)  # (L, T)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_cache["m"])

    fns["sdpa window mask"] = sdpa_window

    flex_cache = {}

    def flex_window(q, k, v):
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention

        if "fn" not in flex_cache:
            def window_mask(b, h, qi, kj):
                return (kj >= qi * hop) & (kj < qi * hop + window)

            flex_cache["mask"] = create_block_mask(window_mask, B=None, H=None, Q_LEN=L, KV_LEN=T,
                                                   device=str(device))
            flex_cache["fn"] = torch.compile(flex_attention) if device.type == "cuda" else flex_attention
        return flex_cache["fn"](q, k, v, block_mask=flex_cache["mask"])

    fns["flex window"] = flex_window
    return fns


def make_inputs(shape, dtype, device, requires_grad=True, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, H, L, T, d = shape["B"], shape["H"], shape["L"], shape["T"], shape["d"]
    xs = [torch.randn(B, H, n, d, generator=g) for n in (L, T, T)]
    xs[0] = xs[0] * 0.5
    grad = torch.randn(B, H, L, d, generator=g)
    xs = [x.to(device=device, dtype=dtype).requires_grad_(requires_grad) for x in xs]
    return xs, grad.to(device, dtype)


def _atomic_backward(q, k, v, grad, window, hop):
    """Backward of the triton lv2 op through the atomic dk/dv flavour (launcher level)."""
    from mfdr_kernels.sawa import triton_impl

    B, _, L, d = q.shape
    T = k.shape[2]
    q_lens = torch.full((B,), L, dtype=torch.int64, device=q.device)
    k_lens = torch.full((B,), T, dtype=torch.int64, device=q.device)
    starts = (torch.arange(L, device=q.device) * hop).clamp(max=T).expand(B, L).contiguous()
    args = (q.detach(), k.detach(), v.detach(), q_lens, k_lens, starts)
    scale = 1 / math.sqrt(d)
    _, level = triton_impl.sawa_forward(*args, None, window, 2, False, scale)
    return lambda: triton_impl.sawa_backward(grad, *args, level, window, False, scale, dkdv="atomic")


def _phase(row, key, thunk):
    """row[key] = thunk(); an OOM or another failure is recorded instead of raised."""
    try:
        row[key] = thunk()
    except torch.OutOfMemoryError:
        row[key] = "OOM"
    except Exception as exc:  # noqa: BLE001 - a provider that cannot run this shape is reported, not fatal
        row[key] = "ERR"
        text = str(exc).splitlines()[0][:160] if str(exc) else ""
        row.setdefault("error", f"{key}: {type(exc).__name__}: {text}")


def time_provider(name, fn, shape, dtype, device, window, hop, rep):
    """{"fwd", "bwd", "both" (ms), "peak" (MB)}; a value may be "OOM", "ERR" or "—"."""
    row = {}
    try:
        (q, k, v), grad = make_inputs(shape, dtype, device)
    except torch.OutOfMemoryError:
        return {key: "OOM" for key in ("fwd", "bwd", "both", "peak")}
    if fn == "atomic":
        row.update(fwd="—", both="—")
        _phase(row, "bwd", lambda: bench(_atomic_backward(q, k, v, grad, window, hop), device, rep))
        return row

    def forward():  # inputs without grad: no autograd bookkeeping in the forward time
        qd, kd, vd = q.detach(), k.detach(), v.detach()
        return bench(lambda: fn(qd, kd, vd), device, rep)

    def backward():
        out = fn(q, k, v)
        return bench(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True), device, rep)

    def both():
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = bench(lambda: torch.autograd.grad(fn(q, k, v), (q, k, v), grad), device, rep)
        if device.type == "cuda":
            row["peak"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return ms

    for key, thunk in (("fwd", forward), ("bwd", backward), ("both", both)):
        _phase(row, key, thunk)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return row


# ----------------------------------------------------------------------------------------------------
# Correctness


def check(shape, dtype, device, window, hop, oracle):
    """Max errors of triton (dtype) and torch (dtype) against the fp64 oracle, given the oracle's levels."""
    # the reference loop is faster on the CPU (many tiny ops); the torch backend runs on the device
    (q, k, v), grad = make_inputs(shape, torch.float64, "cpu" if oracle == "reference" else device, seed=1)
    kw = dict(window=window, hop=hop, levels=2, return_level=True)
    ref_out, ref_level = sawa(q, k, v, backend=oracle, **kw)
    want = [x.to(device) for x in (ref_out, *torch.autograd.grad(ref_out, (q, k, v), grad))]
    ref_level = ref_level.to(device)
    (ql, kl, vl), gl = make_inputs(shape, dtype, device, seed=1)
    errs = {}
    for backend in ("triton", "torch"):
        out, _ = sawa(ql, kl, vl, backend=backend, force_level=ref_level, **kw)
        got = (out, *torch.autograd.grad(out, (ql, kl, vl), gl))
        errs[backend] = [(a.double() - b).abs().max().item() for a, b in zip(got, want, strict=True)]
    with torch.no_grad():
        _, level = sawa(ql, kl, vl, backend="triton", **kw)
    agree = (level == ref_level).float().mean().item()
    floor = {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-4)
    ok = all(t <= 2 * b + floor for t, b in zip(errs["triton"], errs["torch"], strict=True))
    return ok, errs, agree


# ----------------------------------------------------------------------------------------------------


def fmt(x, digits=3):
    if isinstance(x, str):
        return x
    return f"{x:.{digits}f}" if x < 100 else f"{x:.1f}"


def main():
    args = ARGS
    device = torch.device("cpu" if args.dry_run else "cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --dry-run for the CPU smoke test)")
    import triton

    dtype = torch.float32 if args.dry_run else DTYPES[args.dtype]
    window, hop = (4, 2) if args.dry_run else (args.window, args.hop)
    if args.dry_run:
        shapes = [("tiny", s) for s in TINY]
    else:
        shapes = [("paper", dict(PAPER, B=args.batch)), ("model", dict(MODEL, B=args.batch))]
        shapes += [(f"T={t // 1024}k", dict(B=args.batch, H=1, L=t // hop, T=t, d=PAPER["d"]))
                   for t in args.T]
    dev_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (TRITON_INTERPRET=1)"
    print(f"# SAWA GPU check — {dev_name}\n")
    print(f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}, "
          f"dtype {str(dtype).removeprefix('torch.')}, ω={window}, hop={hop}\n")

    if not args.no_check:
        print("## Correctness (vs an fp64 oracle, given its levels; bound: 2× the torch error + floor)\n")
        print("| shape | oracle | max error out / dq / dk / dv: triton | torch (same dtype) | levels agree "
              "| ok |")
        print("|---|---|---|---|---|---|")
        all_ok = True
        for label, shape in shapes:
            small = dict(shape, B=min(shape["B"], 2 if shape["T"] <= 4096 else 1))
            oracle = "reference" if shape["T"] <= (64 if args.dry_run else 4096) else "torch"
            try:
                ok, errs, agree = check(small, dtype, device, window, hop, oracle)
                all_ok &= ok
                tri, tor = (" / ".join(f"{e:.1e}" for e in errs[b]) for b in ("triton", "torch"))
                print(f"| {label} B={small['B']} | {oracle} | {tri} | {tor} | {agree:.2%} | "
                      f"{'PASS' if ok else 'FAIL'} |")
            except torch.OutOfMemoryError:
                print(f"| {label} | {oracle} | OOM | | | |")
        print(f"\ncorrectness: {'PASS' if all_ok else 'FAIL'}\n")

    bw = copy_bandwidth(device)
    print(f"## Timings (median ms; copy bandwidth {bw:.1f} GB/s)\n")
    print("| shape | provider | fwd ms | bwd ms | fwd+bwd ms | fwd GB/s (% copy) | peak MB "
          "| fwd+bwd vs dense SDPA | fwd+bwd vs flex |")
    print("|---|---|---|---|---|---|---|---|---|")
    verdicts, errors = [], []
    for label, shape in shapes:
        rows = {}
        fns = provider_fns(shape, window, hop, device)
        for name, fn in fns.items():
            if args.providers and not any(p in name for p in args.providers):
                continue
            rows[name] = time_provider(name, fn, shape, dtype, device, window, hop, args.rep)
            if "error" in rows[name]:
                errors.append(f"{label} / {name}: {rows[name]['error']}")
        B, H, L, T, d = (shape[key] for key in ("B", "H", "L", "T", "d"))
        nbytes = B * H * (2 * L + 2 * T) * d * torch.empty(0, dtype=dtype).element_size()
        dense = rows.get("sdpa dense", {}).get("both")
        flex = rows.get("flex window", {}).get("both")
        for name, r in rows.items():
            gbs = "—"
            if name.startswith("sawa triton") and isinstance(r.get("fwd"), float):
                g = nbytes / (r["fwd"] * 1e-3) / 1e9
                gbs = f"{g:.1f} ({g / bw:.0%})"
            both = r.get("both")
            vs = [f"{x / both:.1f}×" if isinstance(x, float) and isinstance(both, float) else "—"
                  for x in (dense, flex)]
            times = " | ".join(fmt(r.get(key, "—")) for key in ("fwd", "bwd", "both"))
            peak = fmt(r.get("peak", "—"), 0)
            where = f"{label} B={B} L={L} T={T} d={d}"
            print(f"| {where} | {name} | {times} | {gbs} | {peak} | {vs[0]} | {vs[1]} |")
        lv2 = rows.get("sawa triton lv2", {})
        if label in ("paper", "model") and isinstance(flex, float) and isinstance(lv2.get("both"), float):
            verdicts.append(f"{label} shape: triton lv2 fwd+bwd {lv2['both']:.3f} ms vs flex {flex:.3f} ms -> "
                            f"{'MET' if lv2['both'] < flex else 'MISSED'} (target: faster than flex)")
        if T >= 16384 and isinstance(dense, float) and isinstance(lv2.get("both"), float):
            verdicts.append(f"{label}: dense SDPA / triton lv2 = {dense / lv2['both']:.1f}× -> "
                            f"{'MET' if dense / lv2['both'] >= 10 else 'MISSED'} (target ≥ 10×)")
        atomic = rows.get("sawa triton lv2 atomic dk/dv", {}).get("bwd")
        if isinstance(atomic, float) and isinstance(lv2.get("bwd"), float):
            faster = "key blocks (the default)" if lv2["bwd"] <= atomic else "atomic"
            verdicts.append(f"{label}: triton lv2 backward, key-block dk/dv {lv2['bwd']:.3f} ms vs atomic "
                            f"{atomic:.3f} ms -> faster: {faster}")
        if isinstance(lv2.get("fwd"), float) and label != "tiny":
            frac = nbytes / (lv2["fwd"] * 1e-3) / 1e9 / bw
            verdicts.append(f"{label}: triton lv2 forward at {frac:.0%} of copy bandwidth"
                            + (f" -> {'MET' if frac >= 0.5 else 'MISSED'} (target ≥ 50% at large batch)"
                               if T >= 16384 else ""))
    if verdicts:
        print("\n## Targets\n")
        print("\n".join(f"- {v}" for v in verdicts))
    if errors:
        print("\n## Providers that failed\n")
        print("\n".join(f"- {e}" for e in errors))
    tuned = autotuned_configs()
    if tuned:
        print("\n## Configs the autotuner chose (prune the others in triton_impl.py)\n")
        print("\n".join(f"- {t}" for t in tuned))


def autotuned_configs() -> list[str]:
    """One line per (kernel, shape key) that an autotuner of the package timed in this run."""
    from mfdr_kernels.dfc import triton_impl as dfc_impl
    from mfdr_kernels.sawa import triton_impl as sawa_impl

    tuners = {"sawa fwd": sawa_impl._fwd, "sawa bwd pass 1": sawa_impl._bwd_q, "sawa bwd pass 2": sawa_impl._bwd_kv}
    tuners.update({f"dfc {name}": t for name, t in dfc_impl._tuned.items()})
    lines = []
    for name, tuner in tuners.items():
        for key, config in getattr(tuner, "cache", {}).items():
            lines.append(f"{name}, key {key}: {config}")
    return lines


if __name__ == "__main__":
    main()
