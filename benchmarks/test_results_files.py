"""Smoke runs leave the measurements alone: ``--quick`` writes no results file unless given ``--out``
(a quick run once replaced the committed ``results/dfc.json`` that BENCHMARKS.md is rendered from)."""

from __future__ import annotations

import json

import _timing
import bench_dfc


def test_results_path():
    assert _timing.results_path(None, quick=True, name="x.json") is None
    assert _timing.results_path(None, quick=False, name="x.json") == _timing.RESULTS / "x.json"
    assert str(_timing.results_path("elsewhere.json", quick=True, name="x.json")) == "elsewhere.json"


def test_quick_run_keeps_committed_results(tmp_path):
    committed = _timing.RESULTS / "dfc.json"
    before = committed.read_bytes() if committed.exists() else None
    bench_dfc.main(["--quick", "--reps", "1"])
    assert (committed.read_bytes() if committed.exists() else None) == before
    bench_dfc.main(["--quick", "--reps", "1", "--out", str(tmp_path / "dfc.json")])
    assert json.loads((tmp_path / "dfc.json").read_text())["rows"]
