"""bench_precision.py runs (CI smoke, tiny model): both tables, and the results file only where asked."""

import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_precision  # noqa: E402


def test_script_quick_run(tmp_path):
    out = tmp_path / "precision.json"
    assert bench_precision.main(["--quick", "--threads", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert [r["threads"] for r in data["rows"]] == [1] and data["product_scaling"] is None  # one thread count
    assert len(data["sweep"]) == 1 and data["sweep"][0]["auto"] in ("fp32", "bf16")
    for row in data["rows"] + data["sweep"]:
        assert row["fp32_ms"] > 0 and row["bf16_ms"] > 0
        assert abs(row["speedup"] - row["fp32_ms"] / row["bf16_ms"]) < 1e-9
        # --quick takes one turn: the quartiles of the turns' ratios are that turn's ratio, the speed-up
        assert len(row["speedup_turns"]) == 1 and row["speedup_iqr"] == [row["speedup"]] * 2
    # the matrix-unit probe takes the paper config's turns (not the sweep's), and the report shows it
    (row,) = data["rows"]
    assert row["bf16_gemm_tflops"] > 0 and row["fp32_gemm_tflops"] > 0
    assert "bf16_gemm_tflops" not in data["sweep"][0]
    import report

    text = report.precision_section(data, tmp_path)
    assert row["gemm_n"] == 64 and "bf16 64² product TFLOP/s" in text and f"| {row['bf16_gemm_tflops']:.2f} |" in text


def test_speedup_is_the_ratio_of_the_turns_total_times():
    """All the fp32 steps' time over all the bf16 steps' (what a run of them takes), not the median of the
    turns' ratios: here bf16 ran its last two turns in a slow phase, which a median of ratios (3x) hides."""
    fp32 = [3.0, 3.0, 3.0, 12.0, 9.0]
    bf16 = [1.0, 1.0, 1.0, 6.0, 6.0]
    r = bench_precision.speedup(fp32, bf16, "speedup")
    assert r["speedup"] == 2.0 and r["speedup_turns"] == [3.0, 3.0, 3.0, 2.0, 1.5]
    assert statistics.median(r["speedup_turns"]) == 3.0 and r["speedup_iqr"] == [2.0, 3.0]
    import report

    assert report._x_iqr({"speedup": 2.0, "speedup_iqr": [1.5, 3.0]}, "speedup") == "2.00× (1.50–3.00)"
    assert report._x_iqr({"speedup": 2.0}, "speedup") == "2.00×"  # results files from before the quartiles


def test_product_scaling_takes_turns_at_each_thread_count():
    """Each turn runs the product in both dtypes at every thread count (4 mm per turn, after 2 warm-up calls
    each); the thread count is back to what it was."""
    import torch

    from mfdr_kernels.counting import DispatchCounter

    before = torch.get_num_threads()
    with DispatchCounter() as c:
        sc = bench_precision.product_scaling([1, 2], reps=3, shape=(8, 6, 4))
    assert c.by_op["aten.mm"] == 4 * 3 + 4 * 2 and torch.get_num_threads() == before
    assert sc["shape"] == [8, 6, 4] and [r["threads"] for r in sc["rows"]] == [1, 2]
    assert all(r["bf16_tflops"] > 0 and r["fp32_tflops"] > 0 for r in sc["rows"])
    for dt in ("bf16", "fp32"):  # mean time at 1 thread over mean time at 2 = speed at 2 over speed at 1
        assert abs(sc["gains"][dt] - sc["rows"][1][f"{dt}_tflops"] / sc["rows"][0][f"{dt}_tflops"]) < 1e-9



def test_script_two_thread_counts(tmp_path):
    """With two thread counts the script records the product's scaling; the report renders it."""
    import report

    out = tmp_path / "precision.json"
    assert bench_precision.main(["--quick", "--threads", "1", "2", "--widths", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    sc = data["product_scaling"]
    assert [r["threads"] for r in data["rows"]] == [1, 2] == [r["threads"] for r in sc["rows"]]
    assert sc["shape"] == [64, 64, 64]
    text = report.precision_section(data, tmp_path)
    assert "64×64 by 64×64" in text and f"bf16 {sc['gains']['bf16']:.2f}×" in text


def test_gemm_probe_counts_the_products_it_runs():
    """The probe's flop count is that of the n x n products it dispatches: 8 in bf16, 1 in fp32."""
    import torch

    from mfdr_kernels.counting import DispatchCounter

    for dtype, calls in ((torch.bfloat16, 8), (torch.float32, 1)):
        fn, flop = bench_precision.gemm_probe(dtype, n=8)
        with DispatchCounter() as c:
            fn()
        assert c.ops == c.by_op["aten.mm"] == calls and flop == calls * 2 * 8**3


def test_script_compiled_run(tmp_path):
    """``--compiled``: the compiled steps take the same turns; the report renders their columns."""
    import report

    out = tmp_path / "precision.json"
    assert bench_precision.main(["--quick", "--threads", "1", "--widths", "--compiled", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["fp32_compiled_ms"] > 0 and row["bf16_compiled_ms"] > 0
    assert abs(row["compiled_speedup"] - row["fp32_compiled_ms"] / row["bf16_compiled_ms"]) < 1e-9
    assert abs(row["compile_gain"] - row["bf16_ms"] / row["bf16_compiled_ms"]) < 1e-9
    text = report.precision_section(data, tmp_path)
    assert "compiled: bf16 speed-up" in text and f"{row['compiled_speedup']:.2f}×" in text
    assert any("torch.compile" in r[0] for r in report.precision_headline(data))


def test_sample_units(tmp_path):
    """``--sample-units``: the products' speeds about once a second, written where asked."""
    out = tmp_path / "units.json"
    assert bench_precision.main(["--quick", "--threads", "1", "--sample-units", "1.5", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    ts = [r["t"] for r in data["samples"]]
    assert data["threads"] == 1 and len(ts) == 2 and ts[1] - ts[0] >= 0.9  # (a second apart, at least)
    assert all(r["bf16_tflops"] > 0 and r["fp32_tflops"] > 0 for r in data["samples"])


def test_report_renders_the_series_and_the_units(tmp_path):
    """Earlier runs in results/precision_series give the ranges in the text; units.json the minute table."""
    import report

    (tmp_path / "precision_series").mkdir()
    for i, (one, two) in enumerate([(2.2, 1.9), (1.8, 2.05), (2.4, 1.7)]):
        rows = [{"threads": 1, "speedup": one}, {"threads": 2, "speedup": two}]
        (tmp_path / "precision_series" / f"run{i}.json").write_text(json.dumps({"rows": rows}))
    samples = [{"t": float(t), "bf16_tflops": 0.4 if t % 3 else 1.0, "fp32_tflops": 0.2} for t in range(90)]
    (tmp_path / "units.json").write_text(json.dumps({"threads": 2, "samples": samples}))
    prec = {"batch": 32, "rows": [{"threads": 2, "fp32_ms": 100.0, "bf16_ms": 50.0, "speedup": 2.0}]}
    text = report.precision_section(prec, tmp_path)
    assert "over the 3 earlier runs in `results/precision_series/`: 1 thread 1.80–2.40×, 2 threads 1.70–2.05×" in text
    # minute 0: 20 of 60 seconds fast (t divisible by 3); minute 1: 10 of 30; the midpoint is 0.70
    assert "| 0 | 60 | 0.40 | 0.40–1.00 | 33% | 0.200 |" in text and "| 1 | 30 |" in text and "(0.70 TFLOP/s)" in text


def test_bad_arguments_are_refused(capsys):
    import pytest

    for argv in (["--reps", "0"], ["--sample-units", "-1"]):
        with pytest.raises(SystemExit) as e:
            bench_precision.main(["--quick", *argv])
        assert e.value.code == 2
        assert argv[0] in capsys.readouterr().err
