"""bench_precision.py runs (CI smoke, tiny model): both tables, and the results file only where asked."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_precision  # noqa: E402


def test_script_quick_run(tmp_path):
    out = tmp_path / "precision.json"
    assert bench_precision.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["threads"] for r in data["rows"]] == [1]
    assert len(data["sweep"]) == 1 and data["sweep"][0]["auto"] in ("fp32", "bf16")
    for row in data["rows"] + data["sweep"]:
        assert row["fp32_ms"] > 0 and row["bf16_ms"] > 0
        assert abs(row["speedup"] - row["fp32_ms"] / row["bf16_ms"]) < 1e-9
