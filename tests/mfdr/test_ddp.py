"""DistributedDataParallel: ``torchrun`` with two gloo processes on the CPU trains one epoch to the same
weights as one process on the same global batches (``train.batch_size`` is the global batch)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mfdr.config import RunConfig
from mfdr.run import run_training
from mfdr.run.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
EMOTIONS = ("neutral", "happy", "angry", "sad")
GLOO = torch.distributed.is_available() and torch.distributed.is_gloo_available()
pytestmark = pytest.mark.skipif(not GLOO, reason="torch.distributed with gloo is not available")


def make_cache(path: Path, n: int = 48) -> Path:
    """Random utterances (their features carry the label); splits train/train/valid/test by index."""
    from mfdr.data import CacheWriter

    g = torch.Generator().manual_seed(0)
    w = CacheWriter(path, {"audio": {"kind": "random", "dim": 6}, "text": {"kind": "random", "dim": 5},
                           "dtype": "float32"})
    entries, audio, text = [], [], []
    for i in range(n):
        k = (i // 4) % 4
        a, t = torch.randn(20 + i % 21, 6, generator=g), torch.randn(4 + i % 9, 5, generator=g)
        a[:, k] += 1.5
        t[:, k] += 1.0
        entries.append({"id": f"u{i:03d}", "label": EMOTIONS[k], "speaker": f"spk{i % 4}",
                        "split": ("train", "train", "valid", "test")[i % 4], "wav": "x.wav", "text": "w"})
        audio.append(a)
        text.append(t)
    w.write_shard(entries, audio, text)
    return path


def test_two_gloo_processes_match_one_process(tmp_path):
    cache = make_cache(tmp_path / "cache")  # 24 train (3 global batches of 8), 12 valid, 12 test
    cfg_path = tmp_path / "ddp.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "model": {"audio_dim": 6, "text_dim": 5, "audio_len": 40, "text_len": 12, "d_model": 16, "heads": 2,
                  "window": 4, "hop": 3, "dfc_hidden": 8, "dropout": 0.0},
        "train": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "seed": 3, "device": "cpu",
                  "precision": "fp32"},
        "data": {"dataset": "manifest", "features": str(cache), "protocol": "split"}}))

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_training(RunConfig.load(cfg_path), tmp_path / "one", progress=False, figures=False)
    finally:
        torch.set_num_threads(n)

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mfdr",
           "train", "--config", str(cfg_path), "--out", str(tmp_path / "two"), "--quiet", "--no-figures"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "x 2 processes" in r.stdout and r.stdout.count("standard epoch   1/1") == 1  # rank 0 logs alone

    one, two = (load_checkpoint(tmp_path / d / "standard" / "checkpoint.pt") for d in ("one", "two"))
    a, b = one["model"], two["model"]
    # The key biases shift every score of a softmax row equally: their true gradient is 0, and Adam turns
    # the rounding noise left in it (~1e-10, summed in another order by DDP) into steps of up to lr.
    # They are compared loosely (at most lr per step); every other weight tightly.
    D = 16
    loose = {"fusion.k_proj.bias": slice(None), "context.mha.in_proj_bias": slice(D, 2 * D)}
    for k in a:
        x, y = a[k].clone(), b[k].clone()
        if k in loose:
            assert (x[loose[k]] - y[loose[k]]).abs().max() <= 3 * 1e-3, k
            x[loose[k]] = y[loose[k]] = 0
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-6, msg=k)
    h1, h2 = one["history"][0], two["history"][0]
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    assert h2["val_loss"] == pytest.approx(h1["val_loss"], rel=1e-4) and h2["val_wa"] == h1["val_wa"]
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert r2["folds"][0]["n_test"] == r1["folds"][0]["n_test"] == 12  # sharded evaluation, gathered whole
    assert r2["mean"]["wa"] == pytest.approx(r1["mean"]["wa"])
