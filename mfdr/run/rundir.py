"""The run folder's rules: what may be written where, what a resumed run must match, per-epoch logs."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path

from ..config import RunConfig, format_diff
from ..errors import CheckpointError, RunDirError
from ..protocols import DataSource
from .batches import class_names
from .checkpoint import load_checkpoint
from .files import atomic_write_text, json_safe, write_json

LOG_KEYS = ("epoch", "lr", "train_loss", "val_loss", "seconds")


SHOWN = ("loss", "wa", "ua", "mae", "acc7", "has0_acc2")  # printed after each epoch


class _EpochLog:
    """metrics.csv and metrics.jsonl (rewritten whole, atomically, from the history: a resumed run's
    logs match its checkpoint), plus TensorBoard scalars when ``tensorboard`` is installed."""

    def __init__(self, fold_dir: Path, history: list[dict]):
        import importlib.util

        self.csv, self.jsonl, self.rows = fold_dir / "metrics.csv", fold_dir / "metrics.jsonl", list(history)
        self._rewrite()
        self.tb = None
        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(fold_dir / "tb"), purge_step=len(history) + 1)

    def _rewrite(self) -> None:
        keys = list(LOG_KEYS) + sorted({k for r in self.rows for k in r} - set(LOG_KEYS))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(json_safe(self.rows))
        atomic_write_text(self.csv, buf.getvalue())
        atomic_write_text(self.jsonl, "".join(json.dumps(json_safe(r)) + "\n" for r in self.rows))

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._rewrite()
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _save_best(model, fold_dir: Path, meta: dict) -> None:
    """``best/`` = ``save_pretrained`` + meta.json, written aside and swapped in by renames."""
    tmp, best, old = fold_dir / "best.tmp", fold_dir / "best", fold_dir / "best.old"
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    model.save_pretrained(tmp)
    write_json(tmp / "meta.json", meta)
    if best.exists():
        os.replace(best, old)
    os.replace(tmp, best)
    shutil.rmtree(old, ignore_errors=True)


def run_meta(cfg: RunConfig, source: DataSource, extra: dict | None = None) -> dict:
    """What ``mfdr predict`` needs besides the weights: task, classes, the feature extractors."""
    enc = None if source.cache is None else {k: source.cache.config.get(k) for k in ("audio", "text")}
    classes = class_names(cfg) if cfg.model.task == "classification" else None
    return {"task": cfg.model.task, "classes": classes, "zero": cfg.train.zero, "dataset": cfg.data.dataset,
            "features": cfg.features.to_dict(), "encoders": enc, **(extra or {})}


def check_resumable(ckpt_path: Path, cfg: RunConfig, data_hash: str | None) -> dict:
    """Load the checkpoint to resume from; ``CheckpointError`` if it is damaged or was written with
    another config or other features."""
    ck = load_checkpoint(ckpt_path)
    diff = cfg.diff(ck["config"])
    if diff:
        raise CheckpointError(f"checkpoint {ckpt_path} was written with another config: "
                              f"{format_diff(diff, 'now', 'checkpoint')}. Resume with the run's config, "
                              "or start a new run (another --out, or --overwrite).")
    if ck.get("data_hash") != data_hash:
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on features with config hash "
                              f"{ck.get('data_hash')}; the data now has {data_hash}")
    return ck


def _check_run_dir(out: Path, cfg: RunConfig, folds: list[dict], resume: bool, overwrite: bool,
                   run_folds: list[str], data_hash: str | None) -> None:
    """Refuse (``RunDirError``, ``CheckpointError``) to touch a folder that holds another run, or to
    resume from checkpoints that do not fit. Reads only."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    saved = out / "config.yaml"
    if not saved.exists():
        if any(out.iterdir()) and not overwrite:
            raise RunDirError(f"--out {out} is not empty and holds no mfdr run (no config.yaml); choose "
                              "another folder")
        return
    if overwrite:
        return
    if not resume:
        raise RunDirError(f"{out} already holds an mfdr run; pass --resume to continue it, --overwrite to "
                          "start it again, or choose another --out")
    import yaml

    diff = cfg.diff(yaml.safe_load(saved.read_text()) or {})
    if diff:
        raise RunDirError(f"cannot resume {out}: its config.yaml differs from the requested config: "
                          f"{format_diff(diff, 'now', 'saved')}")
    if (out / "folds.json").exists():
        old = {f["name"]: f for f in json.loads((out / "folds.json").read_text())}
        for f in folds:
            o = old.get(f["name"])
            if o is not None and any(o[k] != f[k] for k in ("train", "val", "test")):
                raise RunDirError(f"cannot resume {out}: {f['name']} would get other utterances than its "
                                  "folds.json lists (did the data change?)")
    for name in run_folds:
        if (out / name / "checkpoint.pt").exists() and not (out / name / "result.json").exists():
            check_resumable(out / name / "checkpoint.pt", cfg, data_hash)


def _fold_dirs(out: Path) -> list[Path]:
    """The fold folders of a run: ``fold-*``, or ``standard`` for the ``split`` protocol."""
    return sorted(p for p in [*out.glob("fold-*"), out / "standard"] if p.is_dir())


def _clear_run_dir(out: Path) -> None:
    """Remove what a previous run wrote (and only that)."""
    for p in _fold_dirs(out):
        shutil.rmtree(p)
    for name in ("results.json", "results.md", "folds.json", "config.yaml"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "figures", ignore_errors=True)
