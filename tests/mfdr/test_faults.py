"""Faults in training: a ``python -m mfdr train`` process killed with SIGKILL in the middle of an epoch
resumes from its last checkpoint (``--resume``) and ends with the weights and metrics of an
uninterrupted run; and the same seed gives the same weights and metrics on the CPU.

(A truncated or corrupt checkpoint and a NaN loss are tested in test_train.py.)

The run is killed at a known point: a ``sitecustomize`` module on ``PYTHONPATH`` (imported by Python
at start-up, before ``-m mfdr`` runs) wraps ``mfdr.run.loop.loss_fn`` so that the second training step after
the first checkpoint (epoch 2, step 2) writes a marker file and sleeps. The test polls until the
epoch-1 checkpoint and the marker exist, then sends SIGKILL from outside.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mfdr import run as R
from mfdr.config import RunConfig
from mfdr.run.checkpoint import load_checkpoint
from tests.processes import kill_when_paused

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("neutral", "happy", "angry", "sad")
EPOCHS = 3
RUN = {  # 24 utterances of random features that carry their label; a small model; fold-0 of 2
    "model": {"audio_dim": 4, "text_dim": 4, "audio_len": 24, "text_len": 8, "d_model": 8, "heads": 2,
              "window": 4, "hop": 2, "dfc_hidden": 4, "dfc_hops": [1, 2], "dropout": 0.1},
    "train": {"epochs": EPOCHS, "batch_size": 4, "lr": 3e-3, "seed": 7},
    "data": {"dataset": "manifest", "protocol": "kfold", "folds": 2, "val_fraction": 0.25},
}

HOOK = '''
import os, time
from pathlib import Path

marker = os.environ.get("MFDR_TEST_PAUSE_MARKER")
if marker:
    import torch
    import mfdr.run.loop as T

    state = {"saved": 0, "steps": 0}
    real_save, real_loss = T.save_checkpoint, T.loss_fn

    def save_checkpoint(*args, **kwargs):
        out = real_save(*args, **kwargs)
        state["saved"] += 1
        return out

    def _loss(*args, **kwargs):
        if torch.is_grad_enabled() and state["saved"] >= 1:
            state["steps"] += 1
            if state["steps"] == 2:  # epoch 2, step 2: mid-epoch, after an optimizer step
                Path(marker).write_text(str(os.getpid()))
                time.sleep(600)
        return real_loss(*args, **kwargs)

    T.save_checkpoint, T.loss_fn = save_checkpoint, _loss
'''


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def write_cache(path: Path, n: int = 24) -> Path:
    from mfdr.data import CacheWriter

    g = torch.Generator().manual_seed(3)
    writer = CacheWriter(path, {"audio": {"kind": "random", "dim": 4}, "text": {"kind": "random", "dim": 4},
                                "dtype": "float32"})
    entries, audio, text = [], [], []
    for i in range(n):
        label = i % 4
        a, t = torch.randn(10 + i % 15, 4, generator=g), torch.randn(3 + i % 6, 4, generator=g)
        a[:, label] += 1.0
        t[:, label] += 1.0
        entries.append({"id": f"f{i:02d}", "label": CLASSES[label], "speaker": f"s{i % 4}", "session": 1,
                        "wav": f"f{i:02d}.wav", "text": "some words"})
        audio.append(a)
        text.append(t)
    writer.write_shard(entries, audio, text)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The cache, the run config (a YAML file too) and an uninterrupted in-process reference run."""
    root = tmp_path_factory.mktemp("faults")
    cache = write_cache(root / "cache")
    d = json.loads(json.dumps(RUN))
    d["data"]["features"] = str(cache)
    config_file = root / "run.yaml"
    config_file.write_text(yaml.safe_dump(d))
    cfg = RunConfig.from_dict(d)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        R.run_training(cfg, root / "reference", folds=["fold-0"], progress=False, figures=False)
    finally:
        torch.set_num_threads(n)
    return root, cfg, config_file


def train_command(config_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mfdr", "train", "--config", str(config_file), "--out", str(out),
            "--fold", "fold-0", "--threads", "1", "--quiet", "--no-figures", *extra]


def assert_same_run(a: Path, b: Path) -> None:
    """Same final weights, optimizer state, per-epoch log (timings aside) and test metrics."""
    ca, cb = load_checkpoint(a / "fold-0" / "checkpoint.pt"), load_checkpoint(b / "fold-0" / "checkpoint.pt")
    assert ca["epoch"] == cb["epoch"] == EPOCHS
    assert ca["model"].keys() == cb["model"].keys()
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for sa, sb in zip(ca["optimizer"]["state"].values(), cb["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    strip = lambda history: [{k: v for k, v in row.items() if k != "seconds"} for row in history]  # noqa: E731
    assert strip(ca["history"]) == strip(cb["history"])
    ra, rb = (json.loads((x / "fold-0" / "result.json").read_text()) for x in (a, b))
    assert ra["test"] == rb["test"] and ra["best_epoch"] == rb["best_epoch"]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(setup, tmp_path):
    root, _, config_file = setup
    out, marker = tmp_path / "run", tmp_path / "paused"
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(ROOT)]),
           "MFDR_TEST_PAUSE_MARKER": str(marker)}
    proc = subprocess.Popen(train_command(config_file, out), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "fold-0" / "checkpoint.pt"
    # in epoch 2, after one optimizer step of it
    kill_when_paused(proc, marker, ready=checkpoint.exists, reached="reached epoch 2")
    log = proc.stdout.read()
    assert "fold-0 epoch   1/3" in log and "epoch   2/3" not in log, log
    # What the killed process left: the epoch-1 checkpoint, intact; no result; no temp file
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert not (out / "fold-0" / "result.json").exists()
    assert not [p.name for p in (out / "fold-0").iterdir() if ".tmp-" in p.name]

    # --resume goes on from the epoch-1 checkpoint and finishes
    env.pop("MFDR_TEST_PAUSE_MARKER")
    resumed = subprocess.run(train_command(config_file, out, "--resume"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "fold-0: resuming after epoch 1" in resumed.stdout
    assert_same_run(root / "reference", out)
    results = json.loads((out / "results.json").read_text())
    assert results["mean"] == json.loads((root / "reference" / "results.json").read_text())["mean"]


def test_same_seed_same_weights_and_metrics(setup, tmp_path):
    """Two fresh runs with the same seed: bit-identical weights and equal metrics (CPU); another seed
    gives other weights."""
    root, cfg, _ = setup
    R.run_training(cfg, tmp_path / "again", folds=["fold-0"], progress=False, figures=False)
    assert_same_run(root / "reference", tmp_path / "again")
    assert (json.loads((tmp_path / "again" / "results.json").read_text())["mean"]
            == json.loads((root / "reference" / "results.json").read_text())["mean"])

    other = RunConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "seed": 8}})
    R.run_training(other, tmp_path / "other", folds=["fold-0"], progress=False, figures=False, stop_after=1)
    a = load_checkpoint(root / "reference" / "fold-0" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "other" / "fold-0" / "checkpoint.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)


def _start_paused(config_file: Path, out: Path, tmp_path: Path, env: dict, *extra: str) -> subprocess.Popen:
    """Start ``mfdr train`` with the hook; SIGKILL it once it pauses (the second step after its first
    checkpoint); returns the finished process."""
    marker = tmp_path / f"paused-{len(list(tmp_path.glob('paused-*')))}"
    proc = subprocess.Popen(train_command(config_file, out, *extra), cwd=tmp_path,
                            env={**env, "MFDR_TEST_PAUSE_MARKER": str(marker)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    kill_when_paused(proc, marker)
    return proc


def test_sigkill_during_a_resumed_run_then_resume_again(setup, tmp_path):
    """Killed in epoch 2, resumed, killed again in epoch 3 (during the resumed run), resumed again: the same
    weights and metrics as an uninterrupted run, and what the killed resume had written (the epoch-2
    checkpoint, best/, the logs) intact."""
    root, _, config_file = setup
    out = tmp_path / "run"
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(HOOK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), str(ROOT)])}
    _start_paused(config_file, out, tmp_path, env)                      # killed in epoch 2
    assert load_checkpoint(out / "fold-0" / "checkpoint.pt")["epoch"] == 1
    _start_paused(config_file, out, tmp_path, env, "--resume")          # resumed, killed in epoch 3
    ck = load_checkpoint(out / "fold-0" / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["fold"] == "fold-0"
    assert len((out / "fold-0" / "metrics.csv").read_text().splitlines()) == 3  # header + epochs 1, 2
    R.load_model(out / "fold-0" / "best")
    assert not (out / "fold-0" / "result.json").exists()
    assert not [p.name for p in (out / "fold-0").iterdir() if ".tmp-" in p.name or p.name.startswith("best.")]
    resumed = subprocess.run(train_command(config_file, out, "--resume"), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "fold-0: resuming after epoch 2" in resumed.stdout
    assert_same_run(root / "reference", out)
