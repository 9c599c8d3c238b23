"""The GPU check never rots: ``gpu_check.py --dry-run`` (tiny shapes, Triton under the interpreter) runs
every provider and the correctness section on the CPU, and its Triton rows must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_gpu_check_dry_run():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, str(HERE / "gpu_check.py"), "--dry-run", "--rep", "1"],
                          capture_output=True, text=True, env=env, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert "correctness: PASS" in out, out
    for provider in ("sawa triton lv0", "sawa triton lv2", "sawa triton lv2 atomic dk/dv", "sdpa dense"):
        rows = [line for line in out.splitlines() if line.startswith("| tiny") and f"| {provider} |" in line]
        assert len(rows) == 2 and not any("ERR" in r for r in rows), (provider, out)
