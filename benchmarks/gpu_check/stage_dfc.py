"""Stage 2 of the GPU check: DFC (dynamic frame convolution) correctness and timings of the Triton kernels.

Correctness (``MFDR_TRITON_AUTOTUNE=0``): the ``triton`` backend's output, dx, dkernel and dbias against
the float64 reference (``bench_dfc.CHECK_TOL``: max error / max(1, max |reference|) per dtype: fp64, fp32,
fp16, bf16; a dry run: fp32), kernel shared by the batch and per sample, awkward sizes included.

Timings (autotuning on, per size bucket; inputs made on the device once per shape): the paper's two DFC
layers and a long sequence, batch 32, fp32 and bf16 (dry run: one tiny shape, fp32). Providers: ``triton``
(the op; its ``kernel`` columns time ``triton_impl``'s launchers called directly), ``torch`` (the
unfold-based backend, the baseline of the ratio column) and ``autograd`` (plain autograd through
``x.unfold``).
"""

from __future__ import annotations

import os
import sys

# common (this folder) sets TRITON_INTERPRET and sys.path before mfdr_kernels imports triton
import torch
from common import DRY_RUN, ROOT, Table, bench, device, error_line, fmt, heading, out_of_time, phase, versions

from mfdr_kernels.dfc import triton_impl

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench_dfc  # noqa: E402  (the scripts beside: shapes, tolerances, the reference run)

CHECK_SHAPES = [(3, 50, 40, 3, 2), (2, 24, 33, 3, 3), (2, 11, 7, 2, 4), (4, 3, 300, 3, 2)]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def correctness(dev) -> bool:
    heading("DFC correctness (triton vs the float64 reference; MFDR_TRITON_AUTOTUNE=0)")
    dtypes = [torch.float32] if DRY_RUN else [torch.float64, torch.float32, torch.float16, torch.bfloat16]
    table = Table(["shape", "kernel", "dtype", "max rel. error y / dx / dk / dbias", "bound", "ok"])
    all_ok = True
    for B, L, C, frame, hop in CHECK_SHAPES:
        N = (L - frame) // hop + 1
        for per_sample in (False, True):
            g = torch.Generator().manual_seed(B * L + C)
            x = torch.randn(B, L, C, generator=g, dtype=torch.float64)
            k = torch.randn(*((B,) if per_sample else ()), N, frame, C, generator=g, dtype=torch.float64)
            b = torch.randn(N, C, generator=g, dtype=torch.float64)
            gy = torch.randn(B, N, C, generator=g, dtype=torch.float64)
            want = bench_dfc._with_grads("reference", x, k, b, gy, frame, hop)
            kind = "per-sample" if per_sample else "shared"
            for dtype in dtypes:
                name = str(dtype).removeprefix("torch.")
                try:
                    got = bench_dfc._with_grads("triton", *(t.to(dev, dtype) for t in (x, k, b, gy)), frame, hop)
                except Exception as exc:  # noqa: BLE001 - reported; the other cases still run
                    table.row(bench_dfc.shape_id(B, L, C, frame, hop), kind, name, error_line(exc), "", "FAIL")
                    all_ok = False
                    continue
                errs = [float((a.double().cpu() - w).abs().max() / max(1.0, float(w.abs().max())))
                        for a, w in zip(got, want, strict=True)]
                ok = max(errs) <= bench_dfc.CHECK_TOL[dtype]
                all_ok &= ok
                table.row(bench_dfc.shape_id(B, L, C, frame, hop), kind, name, " / ".join(f"{e:.1e}" for e in errs),
                          f"{bench_dfc.CHECK_TOL[dtype]:.0e}", "PASS" if ok else "FAIL")
    print(f"\nDFC correctness: {'PASS' if all_ok else 'FAIL'}", flush=True)
    return all_ok




def time_provider(name, x, kernel, gy, frame, hop, dev, rep) -> dict:
    """{"fwd", "kfwd", "bwd", "kbwd", "both" (ms), "peak" (MB), "note"}; a value may be "OOM" or "ERR"."""
    fn = bench_dfc.provider(name, frame, hop)
    row = {}
    xd, kd = x.detach(), kernel.detach()
    phase(row, "fwd", lambda: bench(lambda: fn(xd, kd), dev, rep))
    if name == "triton":
        phase(row, "kfwd", lambda: bench(lambda: triton_impl.dfc_fwd(xd, kd, None, frame, hop), dev, rep))
        phase(row, "kbwd", lambda: bench(lambda: triton_impl.dfc_bwd(gy, xd, kd, frame, hop), dev, rep))

    def backward():
        y = fn(x, kernel)
        return bench(lambda: torch.autograd.grad(y, (x, kernel), gy, retain_graph=True), dev, rep)

    def both():
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        ms = bench(lambda: torch.autograd.grad(fn(x, kernel), (x, kernel), gy), dev, rep)
        if dev.type == "cuda":
            row["peak"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        return ms

    phase(row, "bwd", backward)
    phase(row, "both", both)
    return row


def timings(dev, rep) -> bool:
    os.environ["MFDR_TRITON_AUTOTUNE"] = "1"  # tuning only here, where it is timed
    heading("DFC timings (median ms; kernel = the triton_impl launcher alone; ratio = torch backend / provider)")
    table = Table(["shape", "dtype", "provider", "fwd ms", "fwd kernel ms", "bwd ms", "bwd kernel ms",
                   "fwd+bwd ms", "fwd+bwd vs torch", "peak MB", "note"])
    shapes = [(2, 12, 8, 3, 2)] if DRY_RUN else bench_dfc.SHAPES
    dtypes = ["fp32"] if DRY_RUN else list(DTYPES)
    ok = True
    for shape in shapes:
        B, L, C, frame, hop = shape
        for dt in dtypes:
            dtype = DTYPES[dt]
            sid = bench_dfc.shape_id(*shape)
            if out_of_time(15):
                table.row(sid, dt, "all", *["—"] * 7, "skipped: stage time limit")
                continue
            x, kernel, gy = (t.to(dtype) for t in bench_dfc.inputs(*shape, device=dev))
            x, kernel = x.detach().requires_grad_(), kernel.detach().requires_grad_()
            torch_both = None
            for name in ("torch", "autograd", "triton"):
                row = time_provider(name, x, kernel, gy, frame, hop, dev, rep)
                if name == "torch":
                    torch_both = row.get("both")
                vs = (f"{torch_both / row['both']:.2f}x" if isinstance(torch_both, float)
                      and isinstance(row.get("both"), float) else "—")
                ok &= not (name == "triton" and "ERR" in row.values())
                table.row(sid, dt, name, *(row.get(k) for k in ("fwd", "kfwd", "bwd", "kbwd", "both")), vs,
                          fmt(row.get("peak"), 1), row.get("note", ""))
    tuned = triton_impl.tuned_configs()
    heading("Configs the DFC autotuners chose")
    print("\n".join(f"- {t}" for t in tuned) if tuned else "- none (interpreter: one config)", flush=True)
    return ok


def main() -> int:
    dev = device()
    print(versions(), flush=True)
    os.environ["MFDR_TRITON_AUTOTUNE"] = "0"
    ok = correctness(dev)
    ok &= timings(dev, 1 if DRY_RUN else 100)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
