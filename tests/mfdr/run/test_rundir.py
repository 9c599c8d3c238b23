"""The run folder's rules (mfdr.run.rundir): --overwrite replaces only a folder mfdr marked as its run, and
only what mfdr wrote there; --resume takes only the fold's own checkpoint; one process writes a folder at a
time; results cover every finished fold; --resume on nothing says so. Each bad input is built as a user
would make it: a folder of their files, a checkpoint copied between folds, an edited checkpoint."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from mfdr import run as R
from mfdr.errors import CheckpointError, RunDirError
from mfdr.run import rundir
from mfdr.run.checkpoint import load_checkpoint, save_checkpoint
from tests.mfdr.test_train import config, make_cache, snapshot

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return make_cache(tmp_path_factory.mktemp("rundir") / "cache")


@pytest.fixture
def stopped(cache, tmp_path):
    """A run of 2 folds (3 epochs) stopped after epoch 1 of fold-0 and after epoch 1 of fold-1."""
    out, cfg = tmp_path / "run", config(cache, train={"epochs": 3})
    assert R.run_training(cfg, out, folds=["fold-0"], stop_after=1, progress=False) is None
    assert R.run_training(cfg, out, folds=["fold-1"], stop_after=1, resume=True, progress=False) is None
    return out, cfg


# ---------------------------------------------------------------------- --overwrite
def test_overwrite_refuses_a_folder_that_is_not_an_mfdr_run(cache, tmp_path):
    """The issue's case: `mkdir -p D/figures D/fold-old; touch D/figures/fig1.png D/fold-old/x` then
    `mfdr train --out D --overwrite`: refused, naming what is there; nothing deleted."""
    out = tmp_path / "D"
    (out / "figures").mkdir(parents=True)
    (out / "fold-old").mkdir()
    (out / "figures" / "fig1.png").write_bytes(b"my figure")
    (out / "fold-old" / "x").write_text("mine")
    for name in ("results.json", "folds.json", "config.yaml"):  # names mfdr uses, but not written by it
        (out / name).write_text("{}\n")
    before = snapshot(out)
    for overwrite in (True, False):
        with pytest.raises(RunDirError, match=r"is not an mfdr run folder \(no \.mfdr-run\): it holds config.yaml, "
                                              r"figures/, fold-old/, folds.json, results.json"):
            R.run_training(config(cache), out, folds=["fold-0"], overwrite=overwrite, progress=False)
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "figures", "fold-old", "folds.json",
                                                     "results.json"]


def test_overwrite_of_a_run_with_foreign_files_deletes_nothing(cache, tmp_path):
    out = tmp_path / "run"
    R.run_training(config(cache, train={"epochs": 1}), out, progress=False)
    assert json.loads((out / ".mfdr-run").read_text()) == {"format": "mfdr-run", "version": 1}
    (out / "figures" / "fig1.png").write_bytes(b"my figure")   # a user's files inside mfdr's folders
    (out / "fold-1" / "notes.txt").write_text("mine")
    (out / "fold-0" / "best" / "extra.bin").write_bytes(b"x")
    before = snapshot(out)
    with pytest.raises(RunDirError, match=r"--overwrite: .* holds an mfdr run, and also files mfdr did not write: "
                                          r"figures/fig1.png, fold-0/best/extra.bin, fold-1/notes.txt.*nothing was "
                                          r"deleted"):
        R.run_training(config(cache, train={"epochs": 1}), out, overwrite=True, progress=False)
    assert snapshot(out) == before


def test_overwrite_replaces_only_what_mfdr_wrote(cache, tmp_path):
    """A marked run is replaced: every file the old run wrote is gone (fold-1 of a 2-fold run, when the new
    run has 1 fold), kept temp files of a killed process too; the new run is whole."""
    out = tmp_path / "run"
    R.run_training(config(cache, train={"epochs": 1}), out, progress=False)
    (out / "fold-1" / ".checkpoint.pt.tmp-12345").write_bytes(b"half")  # left by a killed process
    R.run_training(config(cache, train={"epochs": 1}, data={"protocol": "split"}), out, overwrite=True,
                   progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".mfdr-run", ".mfdr-run.lock", "config.yaml", "figures",
                                                     "folds.json", "results.json", "results.md", "standard"]
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["protocol"] == "split"
    assert [f["fold"] for f in json.loads((out / "results.json").read_text())["folds"]] == ["standard"]
    assert rundir.foreign_files(out) == []


def test_a_run_made_before_the_marker_is_still_resumed_and_replaced(cache, tmp_path):
    """A run folder written before mfdr marked its runs (config.yaml and folds.json, no .mfdr-run)."""
    out = tmp_path / "run"
    cfg = config(cache, train={"epochs": 2})
    R.run_training(cfg, out, folds=["fold-0"], stop_after=1, progress=False)
    (out / ".mfdr-run").unlink()
    R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False)
    assert (out / ".mfdr-run").is_file() and (out / "fold-0" / "result.json").is_file()
    (out / ".mfdr-run").unlink()
    R.run_training(cfg, out, folds=["fold-0"], overwrite=True, stop_after=1, progress=False)
    assert not (out / "fold-0" / "result.json").exists()


def test_a_broken_marker_is_refused(cache, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".mfdr-run").write_text("mine\n")
    with pytest.raises(RunDirError, match=r"\.mfdr-run is not an mfdr run marker"):
        R.run_training(config(cache), out, overwrite=True, progress=False)
    assert [p.name for p in out.iterdir()] == [".mfdr-run"]


# ---------------------------------------------------------------------- --resume: the fold's own checkpoint
def test_checkpoint_copied_from_another_fold_is_refused(stopped):
    """The issue's case: fold-1/checkpoint.pt copied into a stopped run's fold-0/, then --resume: refused
    (it would train fold-0's model on fold-0's test speakers), nothing written."""
    out, cfg = stopped
    shutil.copy(out / "fold-1" / "checkpoint.pt", out / "fold-0" / "checkpoint.pt")
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=r"fold-0.checkpoint.pt belongs to 'fold-1', not to 'fold-0'.*"
                                              r"train on fold-0's test utterances"):
        R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False)
    assert snapshot(out) == before


def test_checkpoint_of_other_utterances_is_refused(stopped):
    """A checkpoint whose fold name fits but whose train / validation / test ids do not (edited here: the
    ids of another split) is refused: the split is compared, not only the name."""
    out, cfg = stopped
    path = out / "fold-0" / "checkpoint.pt"
    ck = load_checkpoint(path)
    folds = json.loads((out / "folds.json").read_text())
    assert ck["fold"] == "fold-0" and ck["split"] == rundir.split_hash(folds[0]["train"], folds[0]["val"],
                                                                        folds[0]["test"])
    ck["split"] = rundir.split_hash(folds[0]["train"][1:], folds[0]["val"], folds[0]["test"])
    save_checkpoint(path, ck)
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=r"was trained on other utterances than fold-0 now has"):
        R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False)
    assert snapshot(out) == before


def test_resume_of_the_right_checkpoints_finishes(stopped):
    out, cfg = stopped
    summary = R.run_training(cfg, out, resume=True, progress=False, figures=False)
    assert [f["fold"] for f in summary["folds"]] == ["fold-0", "fold-1"]


# ---------------------------------------------------------------------- results over every finished fold
def test_results_cover_every_finished_fold_after_fold_by_fold_calls(cache, tmp_path, capsys):
    out, cfg = tmp_path / "run", config(cache, train={"epochs": 1})
    first = R.run_training(cfg, out, folds=["fold-1"], progress=False, figures=False)
    assert [f["fold"] for f in first["folds"]] == ["fold-1"]
    assert "results over 1 of 2 folds; not finished yet: fold-0" in capsys.readouterr().out
    R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False, figures=False)
    results = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == ["fold-0", "fold-1"]
    assert sum(map(sum, results["pooled"]["confusion"])) == 32  # every utterance tested once, pooled
    assert "fold-1" in (out / "results.md").read_text()


# ---------------------------------------------------------------------- one writer at a time
def test_a_second_process_writing_the_same_folder_is_refused(cache, tmp_path):
    """A lock held by another process (a child holding ``run_lock``): refused, naming its pid."""
    out = tmp_path / "run"
    R.run_training(config(cache, train={"epochs": 2}), out, folds=["fold-0"], stop_after=1, progress=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from mfdr.run.rundir import run_lock\n"
         "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)", str(out)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(out)
        with pytest.raises(RunDirError, match=rf"is being written by another mfdr process \(pid {holder.pid} on "):
            R.run_training(config(cache, train={"epochs": 2}), out, folds=["fold-0"], resume=True, progress=False)
        assert snapshot(out) == before
    finally:
        holder.kill()
        holder.wait()
    R.run_training(config(cache, train={"epochs": 2}), out, folds=["fold-0"], resume=True, progress=False)


# ---------------------------------------------------------------------- --resume on nothing; saved config
def test_resume_needs_a_run(tmp_path):
    with pytest.raises(RunDirError, match="nothing to resume in .*nowhere \\(it does not exist\\)"):
        rundir.require_run_to_resume(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunDirError, match="nothing to resume in .*empty \\(it is empty\\)"):
        rundir.require_run_to_resume(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(RunDirError, match=r"holds no mfdr run .*it holds notes.txt"):
        rundir.require_run_to_resume(tmp_path / "other")


def test_the_continue_hint_works_as_printed(cache, tmp_path, capsys):
    """`--stop-after-epoch` prints how to continue; that command, run as printed, finishes the run: --resume
    takes the run's config.yaml (with its --epochs and --set values), and the hint keeps --fold."""
    import shlex

    from mfdr.cli import main

    cfg_file = tmp_path / "c.yaml"
    config(cache).save(cfg_file)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--out", str(out), "--epochs", "3", "--fold", "fold-1",
                 "--set", "train.lr=0.002", "--stop-after-epoch", "1", "-q", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    hint = printed[printed.index("continue with: ") + len("continue with: "):].split(" (")[0].strip()
    assert hint == f"mfdr train --out {out} --resume --fold fold-1"
    assert main([*shlex.split(hint)[1:], "-q", "--no-figures"]) == 0
    ck = load_checkpoint(out / "fold-1" / "checkpoint.pt")
    assert ck["epoch"] == 3 and ck["config"]["train"]["lr"] == 0.002
    assert (out / "fold-1" / "result.json").is_file() and not (out / "fold-0").exists()


def test_a_folder_holding_only_the_marker_starts_a_new_run(cache, tmp_path):
    """A run killed right after it marked its folder (before config.yaml): the next run starts in it."""
    out = tmp_path / "run"
    out.mkdir()
    rundir.write_marker(out)
    (out / rundir.LOCK).write_text("pid 1 on elsewhere\n")  # a lock file whose holder is gone (flock released)
    summary = R.run_training(config(cache, train={"epochs": 1}), out, folds=["fold-0"], progress=False,
                             figures=False)
    assert [f["fold"] for f in summary["folds"]] == ["fold-0"] and (out / "config.yaml").is_file()
