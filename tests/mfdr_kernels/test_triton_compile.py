"""Every Triton kernel compiles for an H100 (sm_90), on a machine without a GPU.

The interpreter runs what the kernels compute; it never lowers them. ``benchmarks/compile_check.py``
runs triton's real compiler and the ptxas of the triton wheel for one config per kernel and dtype
(fp16, bf16, fp32): dot shapes, layouts and loop-carried types that only the GPU path checks fail here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PTXAS = None
try:
    import triton

    PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
except ImportError:  # pragma: no cover - triton is a dependency
    pass


@pytest.mark.skipif(PTXAS is None or not PTXAS.exists(), reason="the triton wheel has no NVIDIA backend")
def test_triton_kernels_compile_for_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--quick"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith(("| sawa", "| dfc", "| gcpu"))]
    # 4 SAWA + 3 DFC + 2 GCPU (D = 256) kernels (flavours) x 3 dtypes, all compiled
    assert len(rows) == 3 * 9, proc.stdout
