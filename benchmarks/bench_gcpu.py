"""The GCPU recurrence: the fused op against the readable loop, compiled and not, in one run.

    python benchmarks/bench_gcpu.py                 # the paper's shape on the CPU (cuda too when present)
    python benchmarks/bench_gcpu.py --quick         # tiny sizes, no torch.compile (CI smoke)
    python benchmarks/bench_gcpu.py --device cuda   # the GPU check: triton against the reference, then timings
    python benchmarks/bench_gcpu.py --check         # the correctness check only
    python benchmarks/bench_gcpu.py --threads 2     # torch.set_num_threads (default 1, as in the suites)
    pytest benchmarks/test_bench_gcpu.py --benchmark-only   # the same providers in the pytest-benchmark suite

Two levels, float32 (cpp-bf16: under bf16 autocast), padded lengths (each sample's in [L/2, L], one full):
  stage  ``GCPU.recurrence(z, g, lengths)``, the model's GCPU stage (``bench_model.py``): the input-side
         products for all steps (one matmul per stream) and the recurrence, on the backend under test
  op     ``gated_context_recurrence(x_r, x_z, x_g, ...)`` alone, on given input-side terms
Providers:
  cpp        the fused C++ kernels (CPU)          triton    the fused Triton kernels (CUDA)
  cpp-bf16   the fused C++ kernels under ``torch.autocast("cpu", bfloat16)``, the training loop's bf16 (the
             stage's input-side products in bf16 too); ``fp32_x`` = cpp's time / cpp-bf16's, same run
  torch      the vectorized backend: a Python loop over the steps with hand-written backpropagation
  loop       the reference backend: the readable loop of the equations, autograd through it (eager)
  compiled   ``torch.compile`` (Inductor) of that loop (not in --quick: it compiles for a minute)
Times (ms) of forward (grad enabled), backward (of a retained graph) and forward+backward are the best of
``--reps`` blocks, the providers interleaved block by block; ratios are the ``loop`` provider's time over
each provider's, from the same run. ``ops``: aten ops dispatched by one forward+backward (custom ops count
once; value checks off, as on an accelerator), what a GPU pays about one launch for (none for ``compiled``:
under the counting dispatch mode torch.compile runs the function eagerly). Peak memory: the most
bytes held at once by tensors allocated during one forward+backward.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _timing  # noqa: E402

from mfdr.gcpu import GCPU  # noqa: E402
from mfdr_kernels import gated_context_recurrence  # noqa: E402
from mfdr_kernels.counting import DispatchCounter  # noqa: E402

# (B, L, D, context): the paper's shape with and without the context stream
SHAPES = [(32, 50, 256, True), (32, 50, 256, False)]
QUICK_SHAPES = [(4, 8, 32, True), (3, 6, 16, False)]
LEVELS = ("stage", "op")


def shape_id(B, L, D, context):
    return f"B{B}-L{L}-D{D}" + ("" if context else "-nocontext")


def fused_for(device):
    return "cpp" if torch.device(device).type == "cpu" else "triton"


def providers_for(device, quick=False):
    bf16 = ["cpp-bf16"] if torch.device(device).type == "cpu" else []
    return [fused_for(device), *bf16, "torch", "loop"] + ([] if quick else ["compiled"])


class Problem:
    """One shape's module, inputs and upstream gradient (float32 on ``device``)."""

    def __init__(self, B, L, D, context, device="cpu", seed=0):
        torch.manual_seed(seed)
        self.module = GCPU(D, 4, context=context).to(device)
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                if name.startswith("b_"):
                    p.normal_(0, 0.5)
        g = torch.Generator().manual_seed(seed)
        self.z = torch.randn(B, L, D, generator=g).to(device).requires_grad_()
        self.g = torch.randn(B, L, D, generator=g).to(device).requires_grad_() if context else None
        lengths = torch.randint(L // 2, L + 1, (B,), generator=g)
        lengths[0] = L
        self.lengths = lengths.to(device)
        self.grad_H = torch.randn(B, L, D, generator=g).to(device)
        with torch.no_grad():  # the op level's inputs: the input-side terms, as leaves
            x = self.module._input_side(self.z, self.g)
        self.x = [None if t is None else t.detach().requires_grad_() for t in x]

    def leaves(self, level):
        if level == "stage":
            params = [p for n, p in self.module.named_parameters() if not n.startswith("mha.")]
            return [t for t in (self.z, self.g) if t is not None] + params
        m = self.module
        W = [m.W_hr, m.W_hz, getattr(m, "W_hg", None), m.W_hu, m.W_zu, getattr(m, "W_gu", None)]
        return [t for t in self.x if t is not None] + [w.weight for w in W if w is not None] + [m.b_u]

    def forward(self, name, level):
        """``f() -> H`` of a provider at a level."""
        m = self.module
        backend = {"loop": "reference", "compiled": "reference", "cpp-bf16": "cpp"}.get(name, name)
        if name == "cpp-bf16":  # the same fp32 leaves, cast by autocast (the op's and the linears' policy)
            fp32 = self.forward("cpp", level)

            def bf16():
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return fp32()

            return bf16
        if name == "compiled":  # the backward-only timing reruns a retained graph: no donated buffers
            torch._functorch.config.donated_buffer = False
        if level == "stage":
            mod = copy.copy(m)  # shares the parameters; only the backend differs
            mod.backend = backend
            fn = torch.compile(mod.recurrence) if name == "compiled" else mod.recurrence
            return lambda: fn(self.z, self.g, self.lengths)
        W = [m.W_hr.weight, m.W_hz.weight, m.W_hg.weight if m.context else None, m.W_hu.weight, m.W_zu.weight,
             m.W_gu.weight if m.context else None]

        def op(*x):
            return gated_context_recurrence(*x, *W, m.b_u, lengths=self.lengths, backend=backend)

        fn = torch.compile(op) if name == "compiled" else op
        return lambda: fn(*self.x)


def count_ops(fn, leaves, grad_H) -> int:
    """Dispatched ops of one forward+backward, value checks off (an accelerator's default)."""
    before = os.environ.get("MFDR_KERNELS_CHECK_VALUES")
    os.environ["MFDR_KERNELS_CHECK_VALUES"] = "0"
    try:
        with DispatchCounter() as c:
            torch.autograd.grad(fn(), leaves, grad_H)
    finally:
        if before is None:
            del os.environ["MFDR_KERNELS_CHECK_VALUES"]
        else:
            os.environ["MFDR_KERNELS_CHECK_VALUES"] = before
    return c.ops


def measure(shape, device="cpu", reps=15, names=None, levels=LEVELS):
    p = Problem(*shape, device=device)
    names = names or providers_for(device)
    return [row for level in levels for row in _measure_level(p, shape, level, names, device, reps)]


def _measure_level(p: Problem, shape, level, names, device, reps):
    fs = {n: p.forward(n, level) for n in names}
    leaves, grad_H = p.leaves(level), p.grad_H
    for n in names:  # warm-up (the compiled providers compile here)
        torch.autograd.grad(fs[n](), leaves, grad_H)
    # a dispatch mode makes torch.compile run the function eagerly: no count for the compiled provider
    ops = {n: None if n == "compiled" else count_ops(fs[n], leaves, grad_H) for n in names}
    outs = {n: fs[n]() for n in names}  # retained graphs for the backward-only timing
    t = {"fwd": {n: (lambda f=fs[n]: f()) for n in names},
         "bwd": {n: (lambda y=outs[n]: torch.autograd.grad(y, leaves, grad_H, retain_graph=True)) for n in names},
         "fwd+bwd": {n: (lambda f=fs[n]: torch.autograd.grad(f(), leaves, grad_H)) for n in names}}
    t = {mode: {n: v["min"] for n, v in _timing.interleaved(fns, reps=reps, device=device, warmup=2).items()}
         for mode, fns in t.items()}
    del outs
    rows = []
    for n in names:
        mem = _timing.tensor_peak_mb(lambda f=fs[n]: torch.autograd.grad(f(), leaves, grad_H), device)
        row = {"shape": shape_id(*shape), "level": level, "provider": n, "ops": ops[n], "peak_mb": mem}
        for mode in ("fwd", "bwd", "fwd+bwd"):
            row[f"{mode}_ms"] = t[mode][n] * 1e3
            row[f"{mode}_x"] = t[mode]["loop"] / t[mode][n]
        if "compiled" in names:
            row["vs_compiled_x"] = t["fwd+bwd"]["compiled"] / t["fwd+bwd"][n]
        if n == "cpp-bf16" and "cpp" in names:  # same-run ratio of the bf16 kernels over the float32 ones
            row.update({f"fp32_{m}x": t[mode]["cpp"] / t[mode][n] for m, mode in (("fwd_", "fwd"), ("bwd_", "bwd"),
                                                                                  ("", "fwd+bwd"))})
        rows.append(row)
    return rows


# The check's rule (after flash-attention): the fused kernel's error against the float64 reference at most
# twice PyTorch's own (the reference loop run in the same dtype on the same device), plus a small floor;
# float64 within 1e-10. Errors: max |error| / max(1, max |reference|) over H and every gradient.
FLOOR = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check(device) -> list[dict]:
    """The fused backend against the float64 reference (H and every gradient), before any timing: on a GPU
    this is the correctness half of the GPU check. Weights at nn.Linear's scale (the model's). Raises when
    the rule above fails."""
    fused = fused_for(device)
    dtypes = [torch.float64, torch.float32, torch.bfloat16]
    if torch.device(device).type == "cuda":
        dtypes = [torch.float32, torch.float16, torch.bfloat16]
    rows = []
    for B, L, D, context in [(3, 7, 40, True), (5, 9, 33, False), (40, 6, 130, True), (32, 50, 256, True)]:
        g = torch.Generator().manual_seed(B * L + D)
        x = [torch.randn(B, L, D, generator=g, dtype=torch.float64) if context or i != 2 else None for i in range(3)]
        W = [(torch.rand(D, D, generator=g, dtype=torch.float64) * 2 - 1) / D**0.5 if context or i not in (2, 5)
             else None for i in range(6)]
        b_u, h0 = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
        lengths = torch.randint(0, L + 1, (B,), generator=g)
        grad_H = torch.randn(B, L, D, generator=g, dtype=torch.float64)
        want = _with_grads("reference", [*x, *W, b_u, h0], lengths, grad_H)
        for dtype in dtypes:
            inputs = [None if t is None else t.to(device, dtype) for t in (*x, *W, b_u, h0)]
            err = {name: _error(_with_grads(name, inputs, lengths.to(device), grad_H.to(device, dtype)), want)
                   for name in (fused, "reference")}
            bound = 1e-10 if dtype == torch.float64 else 2 * err["reference"] + FLOOR[dtype]
            rows.append({"device": device, "backend": fused, "shape": shape_id(B, L, D, context),
                         "dtype": str(dtype)[6:], "max_rel_err": err[fused], "torch_err": err["reference"],
                         "bound": bound, "ok": err[fused] <= bound})
    cols = ["device", "backend", "shape", "dtype", "max_rel_err", "torch_err", "bound", "ok"]
    print(_timing.markdown_table(rows, cols), end="\n\n")
    bad = [r for r in rows if not r["ok"]]
    if bad:
        raise SystemExit(f"bench_gcpu: {len(bad)} correctness check(s) failed: {bad}")
    return rows


def _error(got, want) -> float:
    return max(float((a.double().cpu() - w).abs().max() / max(1.0, float(w.abs().max())))
               for a, w in zip(got, want, strict=True))


def _with_grads(backend, inputs, lengths, grad_H):
    inputs = [None if t is None else t.detach().requires_grad_() for t in inputs]
    H = gated_context_recurrence(*inputs[:10], lengths=lengths, h0=inputs[10], backend=backend)
    return (H.detach(), *torch.autograd.grad(H, [t for t in inputs if t is not None], grad_H))


COLUMNS = ["shape", "level", "provider", "fwd_ms", "bwd_ms", "fwd+bwd_ms", "fwd_x", "bwd_x", "fwd+bwd_x",
           "vs_compiled_x", "fp32_x", "ops", "peak_mb"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions, no torch.compile (CI)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda when present)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--check", action="store_true", help="only the correctness check against the reference")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (CPU); default 1")
    ap.add_argument("--shapes", type=int, default=None, help="only the first N shapes")
    ap.add_argument("--out", default=None,
                    help="JSON results (default: results/gcpu.json; --quick writes none unless --out is given)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    shapes = (QUICK_SHAPES if args.quick else SHAPES)[:args.shapes]
    reps = 2 if args.quick else args.reps
    checks = [r for device in devices for r in check(device)]
    if args.check:
        return checks
    rows = []
    for device in devices:
        for shape in shapes:
            rows += [{"device": device, **r} for r in measure(shape, device, reps, providers_for(device, args.quick))]
    result = {"machine": _timing.machine(), "dtype": "float32", "rows": rows, "checks": checks}
    _timing.write_json(_timing.results_path(args.out, args.quick, "gcpu.json"), result)
    print(f"machine: {result['machine']}")
    print("float32 (cpp-bf16: bf16 autocast); *_x = time of the `loop` provider (the readable reference loop, "
          "eager) / time, vs_compiled_x = fwd+bwd time of torch.compile of that loop / time, fp32_x = fwd+bwd time "
          "of cpp / cpp-bf16, same run\n")
    print(_timing.markdown_table(rows, ["device"] + COLUMNS))
    return result


if __name__ == "__main__":
    main()
