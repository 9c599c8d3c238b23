"""Compile every Triton kernel of the package for an NVIDIA GPU, without one, and report registers and spills.

    python benchmarks/compile_check.py              # every autotune config, fp16/bf16/fp32, sm_90
    python benchmarks/compile_check.py --quick      # one config per kernel (the test suite runs this)
    python benchmarks/compile_check.py --arch 80 --head-dim 128
    python benchmarks/compile_check.py --gcpu-dims 64,256 --dtypes fp32,bf16   # the GCPU recurrence at two D

The interpreter (``TRITON_INTERPRET=1``, the CPU test suite) checks what the kernels compute, not that
they lower to a GPU: dot shapes, layouts, loop-carried types, register pressure. This script runs the
real compiler (TTIR -> TTGIR -> LLVM -> PTX) for the target and the ``ptxas`` bundled with the triton
wheel (-> cubin, with ``-v`` for registers and spill bytes), so those errors show up on a machine
without a GPU. It prints a markdown table and exits 1 if a kernel fails to compile. Spills are
reported, not judged: only timings on a GPU (``gpu_check.sh``) say whether a config is worth keeping.
"""

from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "0"  # before triton is imported: compile, don't interpret

import argparse  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mfdr_kernels import _triton  # noqa: E402
from mfdr_kernels.dfc import triton_impl as dfc  # noqa: E402
from mfdr_kernels.gcpu import triton_impl as gcpu  # noqa: E402
from mfdr_kernels.sawa import triton_impl as sawa  # noqa: E402

TL = {"fp16": "fp16", "bf16": "bf16", "fp32": "fp32"}
TORCH = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _signature(fn, pointers: dict, consts: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in pointers:
            sig[name] = pointers[name]
        else:
            sig[name] = "i32"
    return sig


def _ptxas(ptx: str, arch: str) -> tuple[int, int]:
    exe = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        out = subprocess.run([str(exe), "-v", "--gpu-name", arch, f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores", out)
    return int(regs.group(1)) if regs else -1, int(spills.group(1)) if spills else 0


def _configs(spec: str | None, tuner, quick: bool) -> list:
    """The tuner's configs (the first only if quick), or ``spec``: "BQxBNxWARPS,..." for the query kernels."""
    if spec:
        return _triton.configs(spec.replace(",", " "), ("BLOCK_Q", "BLOCK_N"))
    return tuner.configs[:1] if quick else tuner.configs


def _jobs(dt: str, d: int, quick: bool, spec: str | None = None, gcpu_dims: tuple = (256,)):
    """(label, kernel, pointer types, constexprs, config kwargs, num_warps, num_stages) to compile."""
    acc = tl.float32
    p = f"*{TL[dt]}"
    dp = max(16, triton.next_power_of_2(d))
    ptr = dict(q_ptr=p, k_ptr=p, v_ptr=p, out_ptr=p, do_ptr=p, dq_ptr=p, level_ptr="*i8", force_ptr="*i8",
               q_lens_ptr="*i64", k_lens_ptr="*i64", starts_ptr="*i64", ranges_ptr="*i64", scale_ptr="*fp32",
               p_ptr="*fp32", ds_ptr="*fp32", dk_ptr="*fp32", dv_ptr="*fp32")
    prec = sawa._precision(TORCH[dt])
    query = dict(W=10, HALF=5, D=d, DP=dp, DV=d, DVP=dp, JOINT=False, PREC=prec, ACC=acc)

    def configs(tuner):
        return _configs(spec, tuner, quick)

    for c in configs(sawa._fwd):
        yield ("sawa fwd lv2", sawa._fwd.kernel, ptr, dict(query, LEVELS=2, FORCED=False), c)
    for atomic in (False, True):
        for c in configs(sawa._bwd_q):
            yield (f"sawa bwd pass 1 ({'atomic' if atomic else 'blocks'})", sawa._bwd_q.kernel, ptr,
                   dict(query, REACH=2, SPAN=30, ATOMIC=atomic), c)
    if spec:
        return
    for c in configs(sawa._bwd_kv):
        yield ("sawa bwd pass 2 (key blocks)", sawa._bwd_kv.kernel, dict(ptr, dk_ptr=p, dv_ptr=p),
               dict(LO=-10, HI=20, D=d, DV=d, PREC=prec, ACC=acc, BLOCK_K=sawa.BLOCK_K), c)
    dfc_ptr = dict(x=p, k=p, bias=p, y=p, gy=p, dx=p, dk=p, dbias=p)
    dfc_consts = dict(HOP=2, FRAME=3, PER_SAMPLE=True, ACC=acc)
    for tuning, extra in [(dfc._fwd, dict(BIAS_DIM=1)), (dfc._bwd_dx, {}), (dfc._bwd_dk, {})]:
        for c in tuning.configs[:1] if quick else tuning.configs:
            yield (tuning.name, tuning.kernel, dfc_ptr, dict(dfc_consts, **extra), c)
    # GCPU recurrence (model dim D; with context and h0, as the op launches it), scratch in fp32
    a = "*fp32"
    gcpu_ptr = dict(xr=p, xz=p, xg=p, w_hr=p, w_hz=p, w_hg=p, w_hu=p, w_zu=p, w_gu=p, b_u=p, lens="*i64", h0=p,
                    out=p, gates=a, hbuf=a, rhbuf=a, gH=p, H=p, dxr=a, dxz=a, dxg=a, dau=a, rh_ws=a, hp_ws=a,
                    scratch=a)
    for D in gcpu_dims:
        consts = dict(D=D, G=4, CONTEXT=True, HAS_H0=True, PREC=gcpu._precision(TORCH[dt]), ACC=acc)
        for tuning in (gcpu._fwd, gcpu._bwd):
            for c in tuning.configs[:1] if quick else tuning.configs:
                yield (f"{tuning.name} D={D}", tuning.kernel, gcpu_ptr, consts, c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one config per kernel")
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100)")
    ap.add_argument("--head-dim", type=int, default=64, help="SAWA head dim (MFDR default: 256 / 4 heads)")
    ap.add_argument("--dtypes", default="fp16,bf16,fp32")
    ap.add_argument("--gcpu-dims", default="256", help="GCPU model dims D, comma-separated (paper: 256)")
    ap.add_argument("--configs", help='SAWA query-kernel configs to try instead, "BQxBNxWARPS,...", e.g. 16x32x8')
    args = ap.parse_args(argv)
    target = GPUTarget("cuda", args.arch, 32)
    arch = f"sm_{args.arch}a" if args.arch >= 90 else f"sm_{args.arch}"
    print(f"triton {triton.__version__}, target {arch}, SAWA head dim {args.head_dim}\n")
    print("| kernel | dtype | config | warps | stages | registers | spill bytes | compile s |")
    print("|---|---|---|---|---|---:|---:|---:|")
    failed = 0
    gcpu_dims = tuple(int(D) for D in args.gcpu_dims.split(","))
    for dt in args.dtypes.split(","):
        for label, fn, ptrs, consts, cfg in _jobs(dt, args.head_dim, args.quick, args.configs, gcpu_dims):
            consts = dict(consts, **cfg.kwargs)
            kw = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
            t0 = time.time()
            try:
                src = ASTSource(fn=fn, signature=_signature(fn, ptrs, consts), constexprs=consts)
                compiled = triton.compile(src, target=target,
                                          options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
                regs, spills = _ptxas(compiled.asm["ptx"], arch)
                row = f"{regs} | {spills}"
            except Exception as exc:  # report every failure, then exit 1
                failed += 1
                row = f"FAILED: {type(exc).__name__}: {str(exc).splitlines()[0][:200]} | -"
            print(f"| {label} | {dt} | {kw} | {cfg.num_warps} | {cfg.num_stages} | {row} | {time.time() - t0:.1f} |",
                  flush=True)
    if failed:
        print(f"\n{failed} kernel(s) failed to compile", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
