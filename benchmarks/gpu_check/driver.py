"""The GPU check: the stages in order of value, each in its own process with its own time limit, inside
one global budget. Run it through ``benchmarks/gpu_check.sh`` (which finds Python and the package).

    benchmarks/gpu_check.sh                          # CUDA: all stages, <= 460 s
    OUT=/some/dir benchmarks/gpu_check.sh            # also writes the report and the logs there
    benchmarks/gpu_check.sh --dry-run                # CPU rehearsal: Triton interpreter, tiny shapes
    benchmarks/gpu_check.sh --stages sawa,model --budget 300

Stages (scripts beside this one, or a command):

1. ``sawa``   SAWA correctness against an fp64 oracle, then timings against SDPA and FlexAttention
2. ``dfc``    DFC correctness and timings
3. ``gcpu``   the fused GCPU recurrence, when ``mfdr_kernels.gated_context_recurrence`` exists
4. ``model``  the MFDR training step: eager, AMP, torch.compile, CUDA graphs; IEMOCAP projection
              (``MFDR_TRITON_AUTOTUNE=0``: each variant's process would tune every kernel anew)
5. ``pytest`` the CUDA tests (``pytest tests -k cuda``, compiled kernels, ``MFDR_TRITON_AUTOTUNE=0``)

**Budget.** Before a stage starts, its limit is the smaller of its own and what the budget leaves after
reserving the minimum of every later stage (an earlier stage still gets its own minimum: they are in
order of value); a stage that cannot get its minimum is skipped. Shortened and skipped stages are said
so. A stage is told its deadline (``GPU_CHECK_DEADLINE``, a little before its kill) and skips the shapes
that would not fit; at its limit its process group is killed. A stage that fails (compile error, CUDA
error, tolerance miss, timeout) is reported, and the next stage runs.

**Output.** Every stage's stdout (markdown tables, printed row by row as measured) goes to stdout, its
stderr (warnings, tracebacks) to stderr; a summary table comes last. Headings start at level 3: the
report reads as a section of BENCHMARKS.md (``benchmarks/results/gpu_check.md``, see report.py). With
``OUT`` set (or ``--out``), at most 8 files there, at most one folder deep (what a lent device returns):
``gpu_check.md`` (stdout, as it is printed), ``summary.json`` and ``logs/<n>-<stage>.log`` (stdout and
stderr of a stage).

Exit status 0 when every stage passed or had nothing to check ("n/a"), else 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
import proc  # noqa: E402

NOT_AVAILABLE = 3  # a stage's exit status for "nothing to check here" (stage_gcpu: no op yet)
MAX_OUT_FILES = 8


@dataclasses.dataclass
class Stage:
    name: str
    title: str
    cmd: list[str]
    limit_s: float  # CUDA: its own time limit
    min_s: float  # CUDA: not worth starting with less
    dry_limit_s: float
    dry_min_s: float
    env: dict = dataclasses.field(default_factory=dict)
    fenced: bool = False  # plain-text output: a code block in the markdown


def stages(python: str) -> list[Stage]:
    script = lambda name: [python, str(HERE / f"stage_{name}.py")]
    pytest = [python, "-m", "pytest", "tests", "-q", "-p", "no:cacheprovider", "-k", "cuda",
              "--continue-on-collection-errors", "--durations=5"]
    return [
        Stage("sawa", "SAWA correctness and timings", script("sawa"), 160, 60, 90, 20),
        Stage("dfc", "DFC correctness and timings", script("dfc"), 50, 20, 60, 15),
        Stage("gcpu", "GCPU fused recurrence", script("gcpu"), 50, 20, 60, 15),
        Stage("model", "MFDR training step", script("model"), 170, 60, 150, 30, env={"MFDR_TRITON_AUTOTUNE": "0"}),
        Stage("pytest", "CUDA tests", pytest, 150, 30, 90, 20, env={"MFDR_TRITON_AUTOTUNE": "0"}, fenced=True),
    ]


class Report:
    """stdout (and ``OUT/gpu_check.md``) for the tables, stderr for the rest, one log per stage in ``OUT``."""

    def __init__(self, out: Path | None):
        self.out, self.md, self.log = out, None, None
        self.written: list[Path] = []  # what this run writes under out (a lent device returns 8 files)
        if out is not None:
            (out / "logs").mkdir(parents=True, exist_ok=True)
            self.md = open(self._new(out / "gpu_check.md"), "w")  # noqa: SIM115 - kept open for the whole run

    def _new(self, path: Path) -> Path:
        self.written.append(path)
        return path

    def stdout(self, line: str) -> None:
        print(line, flush=True)
        for f in (self.md, self.log):
            if f is not None:
                f.write(line + "\n")
                f.flush()

    def stderr(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if self.log is not None:
            self.log.write(line + "\n")
            self.log.flush()

    def open_log(self, index: int, name: str) -> None:
        if self.out is not None:
            self.log = open(self._new(self.out / "logs" / f"{index}-{name}.log"), "w")  # noqa: SIM115

    def close_log(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None


def run_stage(stage: Stage, index: int, allowed: float, dry_run: bool, report: Report) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MFDR_KERNELS_NO_JIT="1",
               TRITON_INTERPRET="1" if dry_run else "0", GPU_CHECK_DRY_RUN="1" if dry_run else "0",
               GPU_CHECK_DEADLINE=f"{time.time() + allowed - min(15.0, 0.1 * allowed):.1f}", **stage.env)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    report.open_log(index, stage.name)
    if stage.fenced:
        report.stdout("```")
    try:
        result = proc.run(stage.cmd, allowed, env, report.stdout, report.stderr, cwd=str(ROOT))
    finally:
        if stage.fenced:
            report.stdout("```")
    if result["timed_out"]:
        status, note = "TIMEOUT", f"killed at its limit of {allowed:.0f} s"
    elif result["rc"] == 0:
        status, note = "PASS", ""
    elif result["rc"] == NOT_AVAILABLE:
        status, note = "n/a", (result["stdout_tail"] or [""])[-1].strip()
    else:
        status, note = "FAIL", f"exit {result['rc']}: {proc.last_error(result)}"
    if stage.name == "pytest" and result["stdout_tail"]:  # pytest's own verdict line
        note = (note + "; " if note else "") + result["stdout_tail"][-1].strip("= ")
    report.stdout(f"\n**{stage.name}: {status}** in {result['seconds']:.0f} s (limit {allowed:.0f} s)"
                  + (f": {note}" if note else ""))
    report.close_log()
    return {"stage": stage.name, "status": status, "seconds": round(result["seconds"], 1),
            "limit_s": round(allowed), "note": note}


def plan(stage: Stage, rest: list[Stage], left: float, dry_run: bool) -> tuple[float, str]:
    """(seconds allowed, why shortened) or (0, why skipped)."""
    limit, minimum = (stage.dry_limit_s, stage.dry_min_s) if dry_run else (stage.limit_s, stage.min_s)
    reserve = sum(s.dry_min_s if dry_run else s.min_s for s in rest)
    if left < minimum:
        return 0.0, f"budget: {max(left, 0):.0f} s left, it needs >= {minimum:.0f} s"
    allowed = min(limit, max(left - reserve, minimum))
    why = "" if allowed >= limit else f"shortened from {limit:.0f} s: {left:.0f} s of budget left, " \
                                      f"{reserve:.0f} s kept for the later stages"
    return allowed, why


def summary_table(results: list[dict]) -> list[str]:
    lines = ["| stage | status | seconds | limit s | note |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['stage']} | {r['status']} | {r['seconds']} | {r['limit_s']} | "
                     f"{r['note'].replace('|', '/')} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dry-run", action="store_true", help="CPU rehearsal: Triton interpreter, tiny shapes")
    p.add_argument("--budget", type=float, default=None, help="seconds for all stages (CUDA 460, dry run 300)")
    p.add_argument("--stages", default=None, help="comma-separated subset, in the order given")
    p.add_argument("--out", default=os.environ.get("OUT") or None, help="report and logs folder (default: $OUT)")
    args = p.parse_args(argv)
    t0 = time.time()
    budget = args.budget if args.budget is not None else (300.0 if args.dry_run else 460.0)
    all_stages = {s.name: s for s in stages(sys.executable)}
    names = args.stages.split(",") if args.stages else list(all_stages)
    unknown = [n for n in names if n not in all_stages]
    if unknown:
        p.error(f"--stages: unknown {unknown}; choose from {list(all_stages)}")
    chosen = [all_stages[n] for n in names]
    report = Report(Path(args.out) if args.out else None)
    mode = "dry run (CPU, TRITON_INTERPRET=1, tiny shapes)" if args.dry_run else "CUDA"
    report.stdout(f"### GPU check: {mode}\n\n{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
                  f"{platform.node()}, Python {platform.python_version()} ({sys.executable}), budget {budget:.0f} s, "
                  f"stages {', '.join(names)}")
    results = []
    for i, stage in enumerate(chosen, 1):
        left = budget - (time.time() - t0)
        allowed, why = plan(stage, chosen[i:], left, args.dry_run)
        report.stdout(f"\n### {i}. {stage.title} (`{stage.name}`)\n")
        if allowed <= 0:
            report.stdout(f"**{stage.name}: SKIPPED** ({why})")
            results.append({"stage": stage.name, "status": "SKIPPED", "seconds": 0, "limit_s": 0, "note": why})
            continue
        if why:
            report.stdout(f"_{why}_\n")
        results.append(run_stage(stage, i, allowed, args.dry_run, report))
    ok = all(r["status"] in ("PASS", "n/a") for r in results)
    wall = time.time() - t0
    report.stdout(f"\n### Summary ({mode}): {'PASS' if ok else 'FAIL'} in {wall:.0f} s\n")
    for line in summary_table(results):
        report.stdout(line)
    if report.out is not None:
        summary = {"mode": mode, "ok": ok, "wall_s": round(wall, 1), "budget_s": budget, "stages": results}
        report._new(report.out / "summary.json").write_text(json.dumps(summary, indent=1))
        if len(report.written) > MAX_OUT_FILES:  # never expected: the device would drop files
            print(f"gpu_check: wrote {len(report.written)} files, more than {MAX_OUT_FILES}", file=sys.stderr)
            ok = False
    if report.md is not None:
        report.md.close()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
