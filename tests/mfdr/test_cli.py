"""The ``mfdr`` command: --help everywhere, clear errors (exit 2, nothing written), and a tiny end-to-end
run on a synthetic espeak-ng corpus: extract -> train (2 folds, 2 epochs) -> evaluate -> predict; the
quick demo."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mfdr.cli import main

HAVE_ESPEAK = shutil.which("espeak-ng") is not None
NO_ESPEAK = "espeak-ng is not installed (apt-get install espeak-ng)"
needs_espeak = pytest.mark.skipif(not HAVE_ESPEAK, reason=NO_ESPEAK)
ROOT = Path(__file__).resolve().parents[2]

TINY = {  # log-mel 20 bands + MiniLM (384-d), 12 tokens, 100 frames spread over each utterance (stretch)
    "model": {"audio_dim": 20, "text_dim": 384, "audio_len": 100, "text_len": 12, "d_model": 16, "heads": 2,
              "window": 4, "hop": 3, "align": "stretch", "dfc_hidden": 8, "dropout": 0.0},
    "train": {"epochs": 2, "batch_size": 4, "lr": 1.0e-3},
    "data": {"dataset": "manifest", "protocol": "kfold", "folds": 2, "val_fraction": 0.25},
    "features": {"audio": "fbank", "n_mels": 20},
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def write_config(path: Path, **sections) -> Path:
    d = json.loads(json.dumps(TINY))
    for k, v in sections.items():
        d.setdefault(k, {}).update(v)
    path.write_text(yaml.safe_dump(d))
    return path


# ---------------------------------------------------------------------- help and errors
@pytest.mark.parametrize("command", [None, "config", "extract", "train", "evaluate", "predict", "demo", "bench"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main(([command] if command else []) + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: mfdr") and (command is None or "--quiet" in out)


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "mfdr", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "extract" in r.stdout and "predict" in r.stdout


@pytest.mark.parametrize("change, match", [
    ({"train": {"bogus": 1}}, r"unknown key\(s\) \['train.bogus'\]"),
    ({"train": {"epochs": "many"}}, "train.epochs must be int, got str 'many'"),
    ({"model": {"heads": 3}}, "d_model .16. must be divisible by heads .3."),
])
def test_bad_config_is_one_clear_line(tmp_path, capsys, change, match):
    cfg = write_config(tmp_path / "run.yaml", **change)
    out = str(tmp_path / "r")
    assert main(["train", "--config", str(cfg), "--features", str(tmp_path), "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfdr train: error: ") and str(cfg) in err
    import re

    assert re.search(match, err), err
    assert not (tmp_path / "r").exists()


def test_missing_feature_cache(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml")
    assert main(["train", "--config", str(cfg), "--features", str(tmp_path / "none"), "--out",
                 str(tmp_path / "r")]) == 2
    assert "no feature cache at" in capsys.readouterr().err and not (tmp_path / "r").exists()
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert main(["predict", str(tmp_path), "--wav", "a.wav"]) == 2
    assert "one --text per --wav" in capsys.readouterr().err


def test_extract_without_a_path(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml")
    assert main(["extract", "--config", str(cfg), "--out", str(tmp_path / "c")]) == 2
    assert "data.path is not set" in capsys.readouterr().err


def test_bench(tmp_path, capsys):
    cfg = write_config(tmp_path / "run.yaml", model={"audio_dim": 6, "text_dim": 5})
    assert main(["bench", "--config", str(cfg), "--batch", "2", "--steps", "1", "--warmup", "0"]) == 0
    out = capsys.readouterr().out
    assert "train step" in out and "\ntorch " in out


# ---------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    if not HAVE_ESPEAK:
        pytest.skip(NO_ESPEAK)
    from mfdr.data import make_synthetic_corpus

    return make_synthetic_corpus(tmp_path_factory.mktemp("corpus"), 16, speakers=4, workers=2, progress=False)


@needs_espeak
def test_extract_train_evaluate_predict(corpus, tmp_path, capsys):
    cfg, cache, run = write_config(tmp_path / "tiny.yaml"), tmp_path / "cache", tmp_path / "run"
    assert main(["extract", "--config", str(cfg), "--path", str(corpus), "--out", str(cache), "-q"]) == 0
    lines = (cache / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == 17 and json.loads(lines[1])["speaker"].startswith("spk")

    assert main(["train", "--config", str(cfg), "--features", str(cache), "--out", str(run), "-q"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == ["fold-0", "fold-1"]
    assert all(0 <= results["mean"][k] <= 1 for k in ("wa", "ua", "macro_f1", "weighted_f1"))
    assert all(len(json.loads((run / f"fold-{i}" / "metrics.jsonl").read_text().splitlines()[-1])) > 4
               for i in range(2))
    assert "| **mean ± std** |" in (run / "results.md").read_text()
    for rel in ("figures/curves.png", "figures/confusion.png", "fold-1/predictions.csv",
                "fold-1/checkpoint.pt"):
        assert (run / rel).is_file(), rel

    # evaluate re-tests each fold's best model on its test split: the same numbers as training found
    assert main(["evaluate", str(run), "-q"]) == 0
    evaluation = json.loads((run / "evaluation.json").read_text())
    for a, b in zip(evaluation["folds"], results["folds"], strict=True):
        assert a["test"]["wa"] == pytest.approx(b["test"]["wa"]) and a["best_epoch"] == b["best_epoch"]
    assert main(["evaluate", str(run / "fold-0" / "best"), "--features", str(cache), "--out",
                 str(tmp_path / "one.json"), "-q"]) == 0
    assert json.loads((tmp_path / "one.json").read_text())["folds"][0]["n_test"] == 16

    # predict: a run folder averages its 2 folds' models; a checkpoint works too
    capsys.readouterr()
    wav = sorted((corpus.parent / "wavs").glob("*.wav"))[0]
    assert main(["predict", str(run), "--wav", str(wav), "--text", "I am so happy, this is wonderful news!",
                 "--json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert pred["models"] == 2 and list(pred["probabilities"]) == ["neutral", "happy", "angry", "sad"]
    assert sum(pred["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert pred["prediction"] == max(pred["probabilities"], key=pred["probabilities"].get)
    checkpoint = str(run / "fold-0" / "checkpoint.pt")
    assert main(["predict", checkpoint, "--wav", str(wav), "--text", "Hello."]) == 0
    assert "->" in capsys.readouterr().out

    # a model with another config than the one asked for: refused, nothing written
    other = write_config(tmp_path / "other.yaml", model={"d_model": 32})
    assert main(["evaluate", str(run / "fold-0" / "best"), "--features", str(cache), "--config", str(other),
                 "--out", str(tmp_path / "two.json")]) == 2
    assert "d_model: saved 16, given 32" in capsys.readouterr().err and not (tmp_path / "two.json").exists()
    # training again into the same folder without --resume: refused
    before = (run / "fold-0" / "checkpoint.pt").read_bytes()
    assert main(["train", "--config", str(cfg), "--features", str(cache), "--out", str(run), "-q"]) == 2
    assert (run / "fold-0" / "checkpoint.pt").read_bytes() == before


@needs_espeak
def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path / "demo"), "-q"]) == 0
    out = capsys.readouterr().out
    assert "| MFDR (audio + text) |" in out and "| text only (audio zeroed) |" in out
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(results["variants"]) == {"MFDR (audio + text)", "text only (audio zeroed)",
                                        "audio only (text zeroed)"}
    for rel in ("results.md", "figures/attention.png", "figures/levels.png", "mfdr/figures/curves.png",
                "text_only/results.json", "audio_only/fold-1/result.json"):
        assert (tmp_path / "demo" / rel).is_file(), rel


# ---------------------------------------------------------------------- mfdr config; errors vs bugs
def test_config_prints_the_resolved_config(capsys, tmp_path):
    """One override parser for every section: YAML 1.2 numbers (1e-1 and 5e-4 are floats everywhere)."""
    assert main(["config", "--config", "iemocap", "--set", "model.dropout=1e-1", "--set", "train.lr=5e-4"]) == 0
    d = yaml.safe_load(capsys.readouterr().out)
    assert d["model"]["dropout"] == 0.1 and d["train"]["lr"] == 5e-4 and d["train"]["epochs"] == 40
    path = write_config(tmp_path / "c.yaml", model={"dropout": "1e-1"})  # a YAML file with 1e-1 as text
    path.write_text(path.read_text().replace("'1e-1'", "1e-1"))
    assert main(["config", "--config", str(path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["model"]["dropout"] == 0.1


@pytest.mark.parametrize("args, match", [
    (["--set", "model.dropout=often"], "model.dropout must be float, got str 'often'"),
    (["--set", "train.bogus=1"], r"unknown key\(s\) \['train.bogus'\]"),
    (["--config", "nowhere"], "'nowhere' is neither a file nor a shipped config"),
])
def test_config_errors_name_the_key(args, match, capsys):
    assert main(["config", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mfdr config: error: ") and __import__("re").search(match, err), err


def test_a_bug_is_not_reported_as_bad_input(monkeypatch):
    """The command catches MFDRError alone: any other exception is a bug and keeps its traceback."""
    from mfdr import cli

    def broken(args):
        raise ValueError("a programming error")

    monkeypatch.setattr(cli, "cmd_config", broken)
    with pytest.raises(ValueError, match="a programming error"):
        main(["config"])


@needs_espeak
def test_forced_alignment_end_to_end(corpus, tmp_path, capsys):
    """The synthetic corpus's exact word timings -> a cache with word starts -> a model trained with
    align: forced -> predict with --alignment (the words' windows move; without it: stretch windows)."""
    import csv

    cfg = write_config(tmp_path / "forced.yaml", model={"align": "forced"}, train={"epochs": 1})
    cache, run = tmp_path / "cache", tmp_path / "run"
    assert main(["extract", "--config", str(cfg), "--path", str(corpus), "--out", str(cache), "-q"]) == 0
    assert main(["train", "--config", str(cfg), "--features", str(cache), "--out", str(run), "-q",
                 "--no-figures"]) == 0
    row = next(csv.DictReader(open(corpus, newline="")))
    wav, text = str(Path(corpus).parent / row["wav"]), row["text"]
    alignment = str(Path(corpus).parent / row["alignment"])
    capsys.readouterr()
    assert main(["predict", str(run), "--wav", wav, "--text", text, "--alignment", alignment, "--json"]) == 0
    (aligned,) = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run), "--wav", wav, "--text", text, "--json"]) == 0
    (spread,) = json.loads(capsys.readouterr().out)
    assert aligned["probabilities"] != spread["probabilities"]
    assert main(["predict", str(run), "--wav", wav, "--text", text, "--alignment", alignment,
                 "--alignment", alignment]) == 2
    assert "one --alignment per --wav" in capsys.readouterr().err
