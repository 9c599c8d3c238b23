"""Stage 3 of the GPU check: the fused GCPU recurrence ``mfdr_kernels.gated_context_recurrence``.

When the op is not importable (it lands with its own issue), the stage says so and exits 3 ("not
available"). Otherwise:

Correctness (``MFDR_TRITON_AUTOTUNE=0``): H and the gradients of every input (x_r, x_z, x_g, the six
weights, b_u, h0) of the ``triton`` backend against ``mfdr_kernels.gcpu.reference`` in float64, padded
lengths, with and without context; bound: 2x the error of the ``torch`` backend in the same dtype + a
floor (fp32 and bf16; a dry run: fp32).

Timings (autotuning on; inputs made on the device once per shape): the paper's shape (B = 32, L = 50
words, D = 256) and a long one (L = 500), fp32. Providers: ``triton`` (the op; the ``kernel`` columns time
``triton_impl.gcpu_fwd`` / ``gcpu_bwd`` called directly), the ``torch`` backend, the
``reference`` backend (a Python loop over the steps) and ``mfdr.GCPU.recurrence`` (the model's unit on
its own weights, its input-side products included: a Python loop until it calls the op).
"""

from __future__ import annotations

import inspect
import math
import os

# common (this folder) sets TRITON_INTERPRET and sys.path before mfdr_kernels imports triton
import torch
from common import DRY_RUN, Table, bench, device, error_line, heading, out_of_time, phase, versions

NOT_AVAILABLE = 3  # exit status the driver reports as "not available"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FLOOR = {torch.float32: 1e-4, torch.bfloat16: 1.6e-2}
WEIGHTS = ("W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu")


def make_inputs(B, L, D, context, dtype, dev, seed=0):
    """The op's arguments as a dict (floating ones require grad), made on ``dev``; lengths padded."""
    g = torch.Generator(device=dev).manual_seed(seed)
    rnd = lambda *shape, s=1.0: (torch.randn(*shape, generator=g, device=dev, dtype=dtype) * s).requires_grad_()
    args = {name: rnd(B, L, D) for name in ("x_r", "x_z", "x_g")}
    args.update({name: rnd(D, D, s=1 / math.sqrt(D)) for name in WEIGHTS})
    args["b_u"] = rnd(D, s=0.1)
    args["h0"] = rnd(B, D, s=0.5)
    if not context:
        args.update(x_g=None, W_hg=None, W_gu=None)
    lengths = torch.tensor([L - (3 * b) % max(L, 1) for b in range(B)], dtype=torch.int64)
    args["lengths"] = lengths.clamp(min=1).to(dev)
    return args


def _floats(args):
    return [name for name, x in args.items() if isinstance(x, torch.Tensor) and x.is_floating_point()]


def run_op(op, args, grad, backend):
    """H and the gradients of every floating input (in ``_floats`` order)."""
    names = _floats(args)
    pos = [args[n] for n in ("x_r", "x_z", "x_g", *WEIGHTS, "b_u")]
    H = op(*pos, lengths=args["lengths"], h0=args["h0"], backend=backend)
    return [H, *torch.autograd.grad(H, [args[n] for n in names], grad)]


def check(op, dev, dtype, context):
    B, L, D = (3, 7, 16) if DRY_RUN else (4, 50, 256)
    ref_args = make_inputs(B, L, D, context, torch.float64, "cpu", seed=1)
    grad = torch.randn(B, L, D, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want = run_op(op, ref_args, grad, "reference")
    low = {n: (x.detach().to(dev, dtype if x.is_floating_point() else x.dtype).requires_grad_(x.is_floating_point())
               if isinstance(x, torch.Tensor) else x) for n, x in ref_args.items()}
    errs = {}
    for backend in ("triton", "torch"):
        got = run_op(op, low, grad.to(dev, dtype), backend)
        errs[backend] = max((a.double().cpu() - w).abs().max().item() / max(1.0, w.abs().max().item())
                            for a, w in zip(got, want, strict=True))
    return errs["triton"] <= 2 * errs["torch"] + FLOOR[dtype], errs


def correctness(op, dev) -> bool:
    heading("GCPU correctness (vs the float64 reference; bound: 2x the torch error + floor; MFDR_TRITON_AUTOTUNE=0)")
    table = Table(["context", "dtype", "max rel. error H and all grads: triton", "torch (same dtype)", "ok"])
    all_ok = True
    for dt in ["fp32"] if DRY_RUN else list(DTYPES):
        for context in (True, False):
            try:
                ok, errs = check(op, dev, DTYPES[dt], context)
                table.row(context, dt, f"{errs['triton']:.1e}", f"{errs['torch']:.1e}", "PASS" if ok else "FAIL")
            except Exception as exc:  # noqa: BLE001 - reported; the other cases still run
                ok = False
                table.row(context, dt, error_line(exc), "", "FAIL")
            all_ok &= ok
    print(f"\nGCPU correctness: {'PASS' if all_ok else 'FAIL'}", flush=True)
    return all_ok




def time_fn(fwd, leaves, grad, dev, rep, row):
    """fwd / bwd / fwd+bwd of ``fwd()`` (an output of (B, L, D)) with the gradients of ``leaves``."""
    def forward():
        with torch.no_grad():
            return bench(fwd, dev, rep)

    def backward():
        out = fwd()
        return bench(lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True, allow_unused=True), dev,
                     rep)

    phase(row, "fwd", forward)
    phase(row, "bwd", backward)
    phase(row, "both", lambda: bench(lambda: torch.autograd.grad(fwd(), leaves, grad, allow_unused=True), dev, rep))


def kernel_only(args, grad, dev, rep, row):
    from mfdr_kernels.gcpu import triton_impl

    a = {n: (x.detach() if isinstance(x, torch.Tensor) else x) for n, x in args.items()}
    pos = [a[n] for n in ("x_r", "x_z", "x_g", *WEIGHTS, "b_u")]
    phase(row, "kfwd", lambda: bench(lambda: triton_impl.gcpu_fwd(*pos, a["lengths"], a["h0"]), dev, rep))

    def backward():
        H, gates = triton_impl.gcpu_fwd(*pos, a["lengths"], a["h0"])
        W = [a[n] for n in WEIGHTS]
        return bench(lambda: triton_impl.gcpu_bwd(grad, H, gates, *W, a["lengths"], a["h0"]), dev, rep)

    phase(row, "kbwd", backward)


def module_provider(B, L, D, dtype, dev):
    """mfdr.GCPU's recurrence (the model's unit) on z, g of the shape, and whether it runs the op."""
    from mfdr import GCPU

    unit = GCPU(D, heads=4).to(dev, dtype)
    g = torch.Generator(device=dev).manual_seed(3)
    z, ctx = (torch.randn(B, L, D, generator=g, device=dev, dtype=dtype).requires_grad_() for _ in range(2))
    lengths = torch.full((B,), L, dtype=torch.int64, device=dev)
    fused = "gated_context_recurrence" in inspect.getsource(type(unit).recurrence)
    label = "mfdr.GCPU.recurrence (" + ("calls the op" if fused else "Python loop") + ")"
    return label, (lambda: unit.recurrence(z, ctx, lengths)), [z, ctx, *unit.parameters()]


def timings(op, dev, rep) -> bool:
    os.environ["MFDR_TRITON_AUTOTUNE"] = "1"  # tuning only here, where it is timed
    heading("GCPU timings (median ms, fp32; kernel = the triton_impl launcher alone)")
    table = Table(["shape", "provider", "fwd ms", "fwd kernel ms", "bwd ms", "bwd kernel ms", "fwd+bwd ms",
                   "fwd+bwd time / triton's", "note"])
    shapes = [(2, 6, 16)] if DRY_RUN else [(32, 50, 256), (32, 500, 256)]
    ok = True
    for B, L, D in shapes:
        where = f"B={B} L={L} D={D}"
        if out_of_time(20):
            table.row(where, "all", *["—"] * 6, "skipped: stage time limit")
            continue
        args = make_inputs(B, L, D, True, torch.float32, dev)
        grad = torch.randn(B, L, D, device=dev)
        leaves = [args[n] for n in _floats(args)]
        base = None
        rows = [("triton", "triton"), ("torch", "torch"), ("reference (Python loop)", "reference"), ("module", None)]
        for label, backend in rows:
            if out_of_time(10):
                table.row(where, label, *["—"] * 6, "skipped: stage time limit")
                continue
            row = {}
            if backend is None:
                try:
                    label, fwd, module_leaves = module_provider(B, L, D, torch.float32, dev)
                    time_fn(fwd, module_leaves, grad, dev, rep, row)
                except Exception as exc:  # noqa: BLE001 - mfdr not importable, or its unit failed
                    row["note"] = error_line(exc)
            else:
                pos = [args[n] for n in ("x_r", "x_z", "x_g", *WEIGHTS, "b_u")]
                fwd = lambda pos=pos, a=args, backend=backend: op(*pos, lengths=a["lengths"], h0=a["h0"],
                                                                  backend=backend)
                time_fn(fwd, leaves, grad, dev, rep, row)
                if backend == "triton":
                    kernel_only(args, grad, dev, rep, row)
                    base = row.get("both")
                    ok &= "ERR" not in row.values()
            both = row.get("both")
            vs = f"{both / base:.1f}x" if isinstance(both, float) and isinstance(base, float) else "—"
            table.row(where, label, *(row.get(k) for k in ("fwd", "kfwd", "bwd", "kbwd", "both")), vs,
                      row.get("note", ""))
    return ok


def main() -> int:
    dev = device()
    print(versions(), flush=True)
    try:
        from mfdr_kernels import gated_context_recurrence as op
    except ImportError as exc:
        print(f"\nGCPU: not available (mfdr_kernels.gated_context_recurrence: {error_line(exc)})", flush=True)
        return NOT_AVAILABLE
    os.environ["MFDR_TRITON_AUTOTUNE"] = "0"
    ok = correctness(op, dev)
    ok &= timings(op, dev, 1 if DRY_RUN else 100)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
