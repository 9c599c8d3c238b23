"""``mfdr ablate`` (mfdr.run.ablate): the paper's Table 3 as copied, row selection, the table written from
known per-row results, the paper's numbers only for their datasets, resuming (killed inside a row and
between rows: the same results as one uninterrupted run), refusal of a folder of another config, and the
quick smoke test on the synthetic corpus through the command."""

import json
import shutil
import types
from pathlib import Path

import pytest
import torch
import yaml

from mfdr.cli import main
from mfdr.config import ALIGN, TABLE3, RunConfig, load_run_config
from mfdr.errors import ConfigError, InputError, RunDirError
from mfdr.run import ablate as A
from tests.mfdr.test_train import make_cache

MODEL = dict(audio_dim=6, text_dim=5, audio_len=40, text_len=12, d_model=16, heads=2, window=4, hop=3,
             dfc_hidden=8, dropout=0.1)
needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                  reason="espeak-ng is not installed (apt-get install espeak-ng)")

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def config(cache: Path | None = None, model=None, **data) -> RunConfig:
    return RunConfig.from_dict({
        "model": {**MODEL, **(model or {})},
        "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "precision": "fp32"},
        "data": {"dataset": "manifest", "features": None if cache is None else str(cache), "protocol": "kfold",
                 "folds": 2, "val_fraction": 0.2, **data}})


# ---------------------------------------------------------------------- the paper's Table 3
def test_paper_table_agrees_with_the_papers_text():
    """Independent checks of the copied numbers: the differences the paper's prose quotes (Sec. 3.4), and
    MFDR's row = its Table 1 (IEMOCAP, 10-fold) and Table 2 (CMU-MOSEI) results."""
    iem, mosei = A.PAPER_TABLE3["iemocap"].rows, A.PAPER_TABLE3["mosei"].rows
    assert set(iem) == set(mosei) == set(TABLE3)
    assert (iem["MFDR"]["wa"], iem["MFDR"]["ua"]) == (78.4, 79.2)
    assert (mosei["MFDR"]["non0_acc2"], mosei["MFDR"]["non0_f1"]) == (85.2, 84.1)
    quoted = {"MGRU": (1.7, 2.0, 1.8, 1.6), "w/o DFC": (1.1, 1.2, 1.5, 0.8)}  # "decrease by ..."
    for row, (wa, ua, acc2, f1) in quoted.items():
        assert round(iem["MFDR"]["wa"] - iem[row]["wa"], 1) == wa
        assert round(iem["MFDR"]["ua"] - iem[row]["ua"], 1) == ua
        assert round(mosei["MFDR"]["non0_acc2"] - mosei[row]["non0_acc2"], 1) == acc2
        assert round(mosei["MFDR"]["non0_f1"] - mosei[row]["non0_f1"], 1) == f1
    # MFDR is the best row on every metric, as the paper's Table 3 shows
    for rows, keys in ((iem, ("wa", "ua")), (mosei, ("non0_acc2", "non0_f1"))):
        for k in keys:
            assert max(rows, key=lambda r, k=k: rows[r][k]) == "MFDR"


def test_paper_numbers_only_for_their_datasets():
    assert A.paper_table(load_run_config("iemocap")) is A.PAPER_TABLE3["iemocap"]
    assert A.paper_table(load_run_config("mosei")) is A.PAPER_TABLE3["mosei"]  # data/MOSEI/unaligned_50.pkl
    mosi = load_run_config("mosei", ["data.path=data/MOSI/unaligned_50.pkl"])
    assert A.paper_table(mosi) is None                                       # CMU-MOSI: not the paper's
    assert A.paper_table(config()) is None                                   # a manifest (user's data)
    assert A.paper_table(load_run_config("iemocap"), "none") is None
    assert A.paper_table(config(), "iemocap") is A.PAPER_TABLE3["iemocap"]   # IEMOCAP given as a manifest
    with pytest.raises(ConfigError, match="paper='mosei'.*task='regression'.*'classification'"):
        A.paper_table(config(), "mosei")
    with pytest.raises(ConfigError, match="paper must be one of"):
        A.paper_table(config(), "iemocap5")
    assert A.headline_metrics("classification") == ("wa", "ua")
    assert A.headline_metrics("regression") == ("non0_acc2", "non0_f1")


# ---------------------------------------------------------------------- rows
def test_rows_and_selection():
    cfg = config()  # align "paper" (MFDRConfig's default)
    rows, skipped = A.available_rows(cfg)
    names = [r.name for r in rows]
    assert names[0] == "MFDR" and names[1:11] == [n for n in TABLE3 if n != "MFDR"]
    assert names[11:] == ["align=paper", "align=stretch"]
    assert "align=forced" in skipped and "word starts" in skipped["align=forced"]
    by = {r.name: r for r in rows}
    assert by["GRU"].cfg.model.context == "gru" and by["GRU"].cfg.model.d_model == 16
    assert by["w=30"].cfg.model.window == 30 and by["w=30"].cfg.model.levels == 0
    assert by["GRU"].cfg.data == cfg.data and by["GRU"].cfg.train == cfg.train   # one protocol, one seed
    assert by["align=paper"].same_as == "MFDR" and by["align=stretch"].same_as is None
    assert [r.folder for r in rows][:3] == ["mfdr", "w-10", "w-30"] and by["w/o DFC"].folder == "wo-dfc"

    pick = lambda *req: [r.name for r in A.select_rows(rows, req, skipped)]  # noqa: E731
    assert pick("GRU") == ["MFDR", "GRU"]                                  # MFDR always: the reference
    assert pick("w/o dfc") == pick("wo-dfc") == pick("W/O DFC") == ["MFDR", "w/o DFC"]
    assert pick("w-50", "MGRU") == ["MFDR", "w=50", "MGRU"]               # run order, not the given order
    assert pick("table3") == names[:11]
    assert pick("align") == ["MFDR", "align=paper", "align=stretch"]
    assert pick("all") == names
    with pytest.raises(InputError, match="unknown row 'GRU2'.*'w/o DFC'"):
        pick("GRU2")
    with pytest.raises(InputError, match="'align=forced' cannot run here: .*word starts"):
        pick("align=forced")

    # a stretch config: its own alignment is the MFDR row; paper's windows must fit the audio
    rows2, skipped2 = A.available_rows(config(model={"align": "stretch", "text_len": 20, "hop": 3}))
    assert {r.name: r.same_as for r in rows2}["align=stretch"] == "MFDR"
    assert "align=paper" in skipped2 and "audio_len" in skipped2["align=paper"]


@pytest.mark.skipif("forced" not in ALIGN, reason="MFDRConfig has no align='forced' yet")
def test_forced_row_needs_word_starts_in_the_features():
    no_starts = types.SimpleNamespace(path="c", has_window_starts=False, entries=[{"aligned": False}])
    none_aligned = types.SimpleNamespace(path="c", has_window_starts=True, entries=[{"aligned": False}])
    aligned = types.SimpleNamespace(path="c", has_window_starts=True, entries=[{"aligned": False}, {"aligned": True}])
    for cache, ok in ((no_starts, False), (none_aligned, False), (aligned, True)):
        rows, skipped = A.available_rows(config(), cache)
        assert ("align=forced" in [r.name for r in rows]) is ok and ("align=forced" in skipped) is not ok


def test_the_config_must_be_the_full_model():
    for change, match in (({"context": "gru"}, "model.context must be 'gcpu', got 'gru'"),
                          ({"pooling": "max"}, "model.pooling must be 'dfc'"),
                          ({"attention": "full"}, "model.attention must be 'sawa'"),
                          ({"levels": 0}, "model.levels must be >= 1")):
        with pytest.raises(ConfigError, match=match):
            A.check_full_model(config(model=change))
    A.check_full_model(config())


# ---------------------------------------------------------------------- the table
def summary(folds: dict[str, list[float]], pooled: dict[str, float]) -> dict:
    """A results.json summary with the given per-fold test metrics."""
    import numpy as np

    n = len(next(iter(folds.values())))
    results = [{"fold": f"fold-{i}", "n_test": 10, "test": {k: v[i] for k, v in folds.items()}} for i in range(n)]
    return {"folds": results, "mean": {k: float(np.mean(v)) for k, v in folds.items()},
            "std": {k: float(np.std(v, ddof=1)) if n > 1 else 0.0 for k, v in folds.items()}, "pooled": pooled}


def known_rows():
    return [
        {"name": "MFDR", "changes": {}, "params": 1234, "train_seconds": 12.0,
         "summary": summary({"wa": [0.8, 0.7, 0.9], "ua": [0.8, 0.6, 0.9]}, {"wa": 0.8, "ua": 0.77})},
        {"name": "GRU", "changes": {"context": "gru"}, "params": 1000, "train_seconds": 9.5,
         "summary": summary({"wa": [0.6, 0.5, 0.7], "ua": [0.65, 0.55, 0.75]}, {"wa": 0.6, "ua": 0.65})},
        {"name": "align=paper", "group": "align", "changes": {"align": "paper"}, "params": 1234,
         "train_seconds": 11.0,
         "summary": summary({"wa": [0.85, 0.65, 0.9], "ua": [0.8, 0.6, 0.9]}, {"wa": 0.8, "ua": 0.77})},
    ]


def test_table_from_known_results(tmp_path):
    t = A.ablation_table(known_rows(), task="classification", protocol="kfold",
                         skipped={"align=forced": "no word starts"})
    assert [r["name"] for r in t["rows"]] == ["GRU", "MFDR", "align=paper"]  # the paper's order, then variants
    assert t["metrics"] == ["wa", "ua"] and t["folds"] == 3 and t["paper"] is None
    gru = t["rows"][0]
    assert gru["mean"]["wa"] == pytest.approx(0.6) and gru["std"]["wa"] == pytest.approx(0.1)
    assert gru["pooled"] == {"wa": 0.6, "ua": 0.65} and gru["params"] == 1000 and gru["train_seconds"] == 9.5
    # paired differences: wa -0.2 on every fold (beyond the spread); ua -0.15, -0.05, -0.15
    assert gru["delta"]["wa"]["mean"] == pytest.approx(-0.2) and gru["delta"]["wa"]["std"] == pytest.approx(0)
    assert gru["delta"]["wa"]["noise"] is False
    assert gru["delta"]["ua"]["mean"] == pytest.approx(-0.35 / 3)
    assert gru["delta"]["ua"]["std"] == pytest.approx(0.057735, abs=1e-6) and gru["delta"]["ua"]["noise"] is False
    al = t["rows"][2]  # wa differences +0.05, -0.05, 0: within the spread
    assert al["delta"]["wa"]["mean"] == pytest.approx(0) and al["delta"]["wa"]["std"] == pytest.approx(0.05)
    assert al["delta"]["wa"]["noise"] is True and al["group"] == "align"

    md = A.ablation_markdown(t, "Known")
    assert "| GRU | context=gru | 60.00 ± 10.00 | -20.00 ± 0.00 | 65.00 ± 10.00 | -11.67 ± 5.77 | 60.00 | 65.00 | " \
           "1,000 | 9.5 s |" in md
    assert "| MFDR | the full model | 80.00 ± 10.00 | (reference) |" in md
    assert "| align=paper | align=paper | 80.00 ± 13.23 | *+0.00 ± 5.00* |" in md
    assert md.index("| MFDR |") < md.index("**Word-alignment variants**") < md.index("| align=paper |")
    assert "fold-to-fold spread is noise" in md and "`align=forced`: no word starts" in md
    assert "paper WA" not in md and "not shown for this data" in md
    png = A.plot_ablations(t, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(ValueError, match="the MFDR row is missing"):
        A.ablation_table(known_rows()[1:], task="classification", protocol="kfold")


def test_table_with_the_papers_numbers(tmp_path):
    t = A.ablation_table(known_rows()[:2], task="classification", protocol="kfold",
                         paper=A.PAPER_TABLE3["iemocap"])
    gru, mfdr = t["rows"]
    assert gru["paper"] == {"wa": 75.4, "ua": 76.1} and gru["paper_delta"] == {"wa": -3.0, "ua": -3.1}
    md = A.ablation_markdown(t)
    assert "paper WA (Δ) | paper UA (Δ)" in md
    assert "| 75.4 (-3.0) | 76.1 (-3.1) |" in md and "| 78.4 | 79.2 |" in md
    assert "IEMOCAP" in md and "10-fold cross-validation" in md and "not the paper's (`speaker`)" in md
    A.plot_ablations(t, tmp_path / "p.png")
    # one test split (CMU-MOSEI's): no spread, no noise verdict
    one = [{**r, "summary": summary({"non0_acc2": [v], "non0_f1": [v]}, {})} for r, v in
           zip(known_rows()[:2], (0.8, 0.7), strict=True)]
    t = A.ablation_table(one, task="regression", protocol="split", paper=A.PAPER_TABLE3["mosei"])
    assert t["rows"][0]["delta"]["non0_acc2"] == {"mean": pytest.approx(-0.1), "std": None, "noise": None}
    md = A.ablation_markdown(t)
    assert "One test split" in md and "| 82.6 (-2.6) | 81.1 (-3.0) |" in md and "not the paper's" not in md


# ---------------------------------------------------------------------- runs: resume, refusal
def fold_tests(out: Path) -> dict:
    """{row folder: {fold: test metrics}} of a finished ablation folder."""
    table = json.loads((out / "ablations.json").read_text())
    return {r["folder"]: {f: json.loads((out / r["folder"] / f / "result.json").read_text())["test"]
                          for f in r["folds"]} for r in table["rows"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted ablation (MFDR and GRU) on a random feature cache."""
    root = tmp_path_factory.mktemp("ablate")
    cache = make_cache(root / "cache", n=24)
    cfg = config(cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        table = A.run_ablation(cfg, root / "a", ablations=["GRU"], progress=False, figures=False)
    finally:
        torch.set_num_threads(threads)
    return cfg, root / "a", table


def test_uninterrupted_run_writes_the_folder(finished):
    cfg, out, table = finished
    assert [r["name"] for r in table["rows"]] == ["GRU", "MFDR"]
    for rel in ("ablation.yaml", "ablations.md", "ablations.json", "mfdr/results.json", "gru/fold-1/result.json"):
        assert (out / rel).is_file(), rel
    saved = [yaml.safe_load((out / r / "config.yaml").read_text()) for r in ("mfdr", "gru")]
    assert saved[0]["data"] == saved[1]["data"] == cfg.to_dict()["data"]       # one feature cache, one protocol
    assert saved[0]["train"] == saved[1]["train"]                               # one seed
    assert (out / "mfdr" / "folds.json").read_text() == (out / "gru" / "folds.json").read_text()
    gru = table["rows"][0]
    results = json.loads((out / "gru" / "results.json").read_text())
    assert gru["mean"]["wa"] == results["mean"]["wa"] and gru["pooled"]["ua"] == results["pooled"]["ua"]
    from mfdr.model import MFDR

    assert gru["params"] == sum(p.numel() for p in MFDR(cfg.model.replace(context="gru")).parameters())
    assert gru["train_seconds"] > 0
    assert json.loads((out / "ablations.json").read_text())["rows"][0]["delta"] == table["rows"][0]["delta"]


def test_resume_inside_a_row_and_between_rows(finished, tmp_path, monkeypatch):
    """Stopped after epoch 1 of MFDR's first fold, then killed between the MFDR and GRU rows, then run to
    the end: the same per-fold results as the uninterrupted run; the finished row is kept, not redone."""
    cfg, ref, ref_table = finished
    out = tmp_path / "b"
    assert A.run_ablation(cfg, out, ablations=["GRU"], stop_after=1, progress=False, figures=False) is None
    assert (out / "mfdr" / "fold-0" / "checkpoint.pt").is_file()
    assert not (out / "mfdr" / "fold-0" / "result.json").exists() and not (out / "gru").exists()

    import mfdr.run.training as T

    real, calls = T.run_training, []

    def killed_after_one_row(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt  # the process dies between two rows
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "run_training", killed_after_one_row)
    with pytest.raises(KeyboardInterrupt):
        A.run_ablation(cfg, out, ablations=["GRU"], progress=False, figures=False)
    monkeypatch.setattr(T, "run_training", real)
    assert calls == [out / "mfdr"] and (out / "mfdr" / "results.json").is_file()
    assert not (out / "ablations.json").exists()
    kept = {p: p.read_bytes() for p in (out / "mfdr").rglob("*") if p.is_file()}

    table = A.run_ablation(cfg, out, ablations=["GRU"], progress=False, figures=False)
    assert {p: p.read_bytes() for p in (out / "mfdr").rglob("*") if p.is_file()} == kept  # not redone
    assert fold_tests(out) == fold_tests(ref)
    for a, b in zip(table["rows"], ref_table["rows"], strict=True):
        assert (a["name"], a["mean"], a["std"], a["pooled"], a["delta"], a["params"]) == \
               (b["name"], b["mean"], b["std"], b["pooled"], b["delta"], b["params"])


def test_folder_of_another_config_is_refused(finished, tmp_path):
    cfg, out, _ = finished
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = RunConfig.from_dict({**cfg.to_dict(), "model": {**cfg.model.to_dict(), "d_model": 32}})
    with pytest.raises(RunDirError, match=r"holds the ablation rows of another config: model\.d_model: now 32, "
                                          r"saved 16"):
        A.run_ablation(other, out, ablations=["GRU"], progress=False)
    with pytest.raises(RunDirError, match="train.seed: now 1, saved 0"):
        A.run_ablation(RunConfig.from_dict(cfg.to_dict(), ["train.seed=1"]), out, progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing written
    # the same config with a row not run yet is fine: tested by the resume test; a folder of something else:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match="holds no mfdr ablation"):
        A.run_ablation(cfg, tmp_path / "x", progress=False)
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["notes.txt"]


def test_bad_arguments_write_nothing(finished, tmp_path):
    cfg, _, _ = finished
    out = tmp_path / "c"
    with pytest.raises(InputError, match="unknown row 'gru2'"):
        A.run_ablation(cfg, out, ablations=["gru2"], progress=False)
    with pytest.raises(ConfigError, match="model.context must be 'gcpu'"):
        A.run_ablation(RunConfig.from_dict(cfg.to_dict(), ["model.context=mgru"]), out, progress=False)
    with pytest.raises(InputError, match="--quick runs on the synthetic demo corpus"):
        A.run_ablation("iemocap", out, quick=True, progress=False)
    with pytest.raises(InputError, match="needs --config"):
        A.run_ablation(None, out, progress=False)
    assert not out.exists()


# ---------------------------------------------------------------------- the quick smoke test
@needs_espeak
def test_ablate_quick_through_the_command(tmp_path, capsys):
    """``mfdr ablate --quick``: every row on the tiny synthetic corpus, one feature cache; run again, it
    keeps every row."""
    out = tmp_path / "q"
    assert main(["ablate", "--quick", "--out", str(out), "-q"]) == 0
    table = json.loads((out / "ablations.json").read_text())
    names = [r["name"] for r in table["rows"]]
    assert names[:11] == list(TABLE3)
    # the corpus records word timings: every alignment variant runs where MFDRConfig has it
    assert names[11:] == [f"align={a}" for a in ("paper", "stretch", "forced") if a in ALIGN]
    from mfdr.demo import load_demo_config

    own = f"align={load_demo_config('demo', quick=True)[0].model.align}"   # the demo config's own alignment
    same = {r["name"]: r["same_as"] for r in table["rows"]}
    assert same[own] == "MFDR" and all(v is None for k, v in same.items() if k != own)
    assert table["folds"] == 2 and table["paper"] is None and table["demo"]["utterances"] == 32
    md = (out / "ablations.md").read_text()
    assert all(f"| {n} |" in md for n in TABLE3) and "fold-to-fold spread is noise" in md
    assert (out / "ablations.png").read_bytes()[:4] == b"\x89PNG"
    features = {yaml.safe_load((out / r["folder"] / "config.yaml").read_text())["data"]["features"]
                for r in table["rows"] if not r["same_as"]}
    assert features == {str(out / "features")}
    assert "| GRU | context=gru |" in capsys.readouterr().out
    kept = (out / "gru" / "results.json").read_bytes()
    assert main(["ablate", "--quick", "--out", str(out), "--ablations", "GRU", "-q"]) == 0
    assert (out / "gru" / "results.json").read_bytes() == kept
    assert "finished earlier, kept" in capsys.readouterr().out
