"""The GPU check's plumbing (``benchmarks/gpu_check/driver.py``), on stand-in stages: a failing stage does
not stop the later ones, a stage past its limit is killed with its whole process group and reported,
the budget shortens and skips stages and says so, and ``OUT`` holds what a lent device returns.

The stages themselves run in ``make test``: ``benchmarks/gpu_check.sh --dry-run`` under a Python in which
the package is not installed (every stage, on the CPU, under the Triton interpreter).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "gpu_check"))
import driver  # noqa: E402


def _alive(pid: int) -> bool:
    """Running (a zombie, killed and waiting for init to reap it, is not)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    except OSError:  # no procfs
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    return "\nState:\tZ" not in status


def _stage(name, code, limit=30.0, minimum=1.0):
    return driver.Stage(name, f"stand-in {name}", [sys.executable, "-c", code], limit, minimum, limit, minimum)


def _run(monkeypatch, tmp_path, stages, *args):
    monkeypatch.setattr(driver, "stages", lambda python: stages)
    out = tmp_path / "out"
    rc = driver.main(["--dry-run", "--out", str(out), *args])
    return rc, json.loads((out / "summary.json").read_text()), out


def test_failing_and_timed_out_stages_are_reported_and_later_stages_run(monkeypatch, tmp_path, capsys):
    pidfile = tmp_path / "grandchild.pid"
    stages = [
        _stage("fails", "import sys; print('| a |'); sys.exit('boom: the last line')"),
        _stage("hangs", "import subprocess, sys, time\n"  # a child of its own, as torch.compile's workers
               f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
               f"open({str(pidfile)!r}, 'w').write(str(p.pid))\nprint('measured so far', flush=True)\n"
               "time.sleep(120)", limit=3.0),
        _stage("absent", f"import sys; print('nothing to check'); sys.exit({driver.NOT_AVAILABLE})"),
        _stage("passes", "print('| ok |')"),
    ]
    t0 = time.time()
    rc, summary, out = _run(monkeypatch, tmp_path, stages)
    assert time.time() - t0 < 3.0 + 2 * driver.proc.GRACE_S + 20, "the hanging stage was not killed at its limit"
    assert rc == 1 and summary["ok"] is False
    status = {s["stage"]: s for s in summary["stages"]}
    assert [s["stage"] for s in summary["stages"]] == ["fails", "hangs", "absent", "passes"]
    assert status["fails"]["status"] == "FAIL" and "boom: the last line" in status["fails"]["note"]
    assert status["hangs"]["status"] == "TIMEOUT" and "limit of 3 s" in status["hangs"]["note"]
    assert status["absent"]["status"] == "n/a" and status["absent"]["note"] == "nothing to check"
    assert status["passes"]["status"] == "PASS"
    assert not _alive(int(pidfile.read_text())), "the stage's own child outlived it"
    stdout = capsys.readouterr().out
    assert "| a |" in stdout and "measured so far" in stdout and "| ok |" in stdout  # streamed, not lost
    assert "**hangs: TIMEOUT**" in stdout and stdout.rstrip().splitlines()[-1].startswith("| passes | PASS")
    md = (out / "gpu_check.md").read_text()
    assert "| a |" in md and "measured so far" in md and "### Summary" in md
    assert "boom: the last line" in (out / "logs" / "1-fails.log").read_text()  # stderr is in the stage's log


def test_out_stays_within_what_a_device_returns(monkeypatch, tmp_path):
    """At most 8 files, at most 2 folders deep, names of letters, digits, '.', '_' and '-' only, with the
    real stage list (stand-in commands)."""
    real = driver.stages(sys.executable)
    stages = [_stage(s.name, "print('| row |')") for s in real]
    rc, summary, out = _run(monkeypatch, tmp_path, stages)
    assert rc == 0 and [s["status"] for s in summary["stages"]] == ["PASS"] * len(real)
    files = [f.relative_to(out) for f in out.rglob("*") if f.is_file()]
    assert len(files) <= 8, files
    for f in files:
        assert len(f.parts) <= 3, f  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
        assert all(re.fullmatch(r"[A-Za-z0-9._-]+", part) for part in f.parts), f


def test_budget_shortens_then_skips_and_says_so(monkeypatch, tmp_path, capsys):
    stages = [_stage("first", "print('| 1 |')", limit=100, minimum=5),
              _stage("second", "print('| 2 |')", limit=100, minimum=5)]
    allowed, why = driver.plan(stages[0], stages[1:], 60.0, dry_run=True)
    assert allowed == 55.0 and "shortened from 100 s" in why and "5 s kept for the later stages" in why
    allowed, why = driver.plan(stages[0], stages[1:], 7.0, dry_run=True)
    assert allowed == 5.0  # an earlier stage keeps its minimum: stages are in order of value
    allowed, why = driver.plan(stages[0], stages[1:], 4.0, dry_run=True)
    assert allowed == 0.0 and "needs >= 5 s" in why
    rc, summary, _ = _run(monkeypatch, tmp_path, stages, "--budget", "3")
    assert rc == 1 and [s["status"] for s in summary["stages"]] == ["SKIPPED", "SKIPPED"]
    assert "**first: SKIPPED** (budget: 3 s left, it needs >= 5 s)" in capsys.readouterr().out
