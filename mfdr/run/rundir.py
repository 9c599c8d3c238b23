"""The run folder's rules: what may be written where, what a resumed run must match, per-epoch logs."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import re
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


def split_hash(train: list, val: list, test: list) -> str:
    """sha256 of a fold's train / validation / test utterance ids (in order): what a checkpoint was trained
    and selected on, and what its fold tests."""
    blob = json.dumps({"train": [str(i) for i in train], "val": [str(i) for i in val],
                       "test": [str(i) for i in test]}, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def check_resumable(ckpt_path: Path, cfg: RunConfig, data_hash: str | None, fold: str | None = None,
                    split: str | None = None) -> dict:
    """Load the checkpoint to resume from; ``CheckpointError`` if it is damaged, was written with another
    config or other features, or belongs to another fold than ``fold`` or to other utterances than the
    fold's ``split`` (:func:`split_hash`)."""
    ck = load_checkpoint(ckpt_path)
    diff = cfg.diff(ck["config"])
    if diff:
        raise CheckpointError(f"checkpoint {ckpt_path} was written with another config: "
                              f"{format_diff(diff, 'now', 'checkpoint')}. Resume with the run's config, "
                              "or start a new run (another --out, or --overwrite).")
    if ck.get("data_hash") != data_hash:
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on features with config hash "
                              f"{ck.get('data_hash')}; the data now has {data_hash}")
    if fold is not None and ck.get("fold") != fold:
        raise CheckpointError(f"checkpoint {ckpt_path} belongs to {ck.get('fold')!r}, not to {fold!r} (was it "
                              f"copied from another fold's folder?): resuming it would train on {fold}'s test "
                              f"utterances. Delete it to restart {fold}, or put back {fold}'s own checkpoint.")
    if split is not None and ck.get("split") is not None and ck["split"] != split:
        raise CheckpointError(f"checkpoint {ckpt_path} was trained on other utterances than {fold or 'its fold'} "
                              f"now has (train/validation/test ids sha256 {ck['split'][:12]}..., now "
                              f"{split[:12]}...): did the feature cache change? Delete the checkpoint to restart "
                              "the fold, or start a new run.")
    return ck


# ---------------------------------------------------------------------- what a run folder may hold
MARKER = ".mfdr-run"          # written first by run_training: this folder is an mfdr run
MARKER_FORMAT, MARKER_VERSION = "mfdr-run", 1
LOCK = ".mfdr-run.lock"       # held by the process writing the run (run_training)
FOLD_DIR = re.compile(r"fold-\d+|standard")
TEMP = re.compile(r"\..+\.tmp-\d+")  # files.atomic_write_bytes' temp files, left by a killed process
# What mfdr writes: {name or pattern: None (a file) or the same kind of dict (a folder's contents)}.
_MODEL_DIR = {"config.json": None, "model.safetensors": None, "meta.json": None}
_FOLD = {"checkpoint.pt": None, "metrics.csv": None, "metrics.jsonl": None, "predictions.csv": None,
         "result.json": None, "best": _MODEL_DIR, "best.tmp": _MODEL_DIR, "best.old": _MODEL_DIR,
         "tb": {re.compile(r"events\.out\.tfevents\..+"): None}}
OWNED = {MARKER: None, LOCK: None, "config.yaml": None, "folds.json": None, "results.json": None,
         "results.md": None, "evaluation.json": None, "evaluation.md": None,
         "figures": {"curves.png": None, "confusion.png": None}, FOLD_DIR: _FOLD}


def _owned_kind(name: str, rules: dict):
    """``rules``' entry for the file or folder ``name``: None (a file of mfdr's), a dict (a folder of
    mfdr's), or False (not written by mfdr)."""
    if TEMP.fullmatch(name):
        return None
    for key, kind in rules.items():
        if (key == name) if isinstance(key, str) else key.fullmatch(name):
            return kind
    return False


def foreign_files(out: Path) -> list[Path]:
    """What under the run folder ``out`` mfdr did not write (files and folders not in ``OWNED``)."""
    found = []

    def walk(folder: Path, rules: dict) -> None:
        for p in sorted(folder.iterdir()):
            kind = _owned_kind(p.name, rules)
            if kind is False or (kind is None) != (not p.is_dir() or p.is_symlink()):
                found.append(p)
            elif kind is not None:
                walk(p, kind)

    walk(out, OWNED)
    return found


def write_marker(out: Path) -> None:
    write_json(out / MARKER, {"format": MARKER_FORMAT, "version": MARKER_VERSION})


def _marker_state(out: Path) -> str:
    """``"marked"`` (a valid marker), ``"legacy"`` (no marker, but config.yaml and folds.json as mfdr
    wrote them before it marked its runs) or ``"none"``."""
    marker = out / MARKER
    if marker.is_file():
        try:
            m = json.loads(marker.read_text())
        except (ValueError, UnicodeDecodeError):
            m = None
        if not isinstance(m, dict) or m.get("format") != MARKER_FORMAT:
            raise RunDirError(f"{marker} is not an mfdr run marker (expected JSON with format "
                              f"{MARKER_FORMAT!r}); choose another --out")
        if m.get("version") != MARKER_VERSION:
            raise RunDirError(f"{marker}: run folder format version {m.get('version')!r}, this mfdr writes "
                              f"{MARKER_VERSION}; choose another --out")
        return "marked"
    if (out / "config.yaml").is_file() and (out / "folds.json").is_file():
        import yaml

        try:
            saved = yaml.safe_load((out / "config.yaml").read_text())
            folds = json.loads((out / "folds.json").read_text())
            RunConfig.from_dict(saved)
        except (ValueError, TypeError, UnicodeDecodeError, yaml.YAMLError):
            return "none"
        written = isinstance(saved, dict) and set(saved) == set(RunConfig().to_dict())  # every section
        if written and isinstance(folds, list) and folds and all(
                isinstance(f, dict) and {"name", "train", "val", "test"} <= set(f) for f in folds):
            return "legacy"
    return "none"


def _listing(paths: list[Path], out: Path, limit: int = 5) -> str:
    names = [str(p.relative_to(out)) + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def require_run_to_resume(out: Path) -> None:
    """``--resume``: ``RunDirError`` unless ``out`` holds an mfdr run (a missing or empty folder has nothing
    to resume)."""
    out = Path(out)
    if not out.is_dir() or not any(out.iterdir()):
        why = "it does not exist" if not out.exists() else "it is empty" if out.is_dir() else "not a folder"
        raise RunDirError(f"--resume: there is nothing to resume in {out} ({why}); start the run without "
                          "--resume")
    if _marker_state(out) == "none" or not (out / "config.yaml").is_file():
        raise RunDirError(f"--resume: {out} holds no mfdr run (no {MARKER} and config.yaml); it holds "
                          f"{_listing(sorted(out.iterdir()), out)}")


def _check_run_dir(out: Path, cfg: RunConfig, folds: list[dict], resume: bool, overwrite: bool,
                   run_folds: list[str], data_hash: str | None) -> None:
    """Refuse (``RunDirError``, ``CheckpointError``) to touch a folder that holds another run or files
    mfdr did not write, or to resume from checkpoints that do not fit. Reads only."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    contents = sorted(p for p in out.iterdir() if p.name != LOCK)
    if not contents:
        return
    state = _marker_state(out)
    if state == "marked" and [p.name for p in contents] == [MARKER]:  # a run stopped right after it began
        return
    if state == "none":
        raise RunDirError(f"--out {out} is not empty and is not an mfdr run folder (no {MARKER}): it holds "
                          f"{_listing(contents, out)}. Choose another folder"
                          + (" (--overwrite only replaces a run mfdr made)" if overwrite else ""))
    if overwrite:
        foreign = foreign_files(out)
        if foreign:
            raise RunDirError(f"--overwrite: {out} holds an mfdr run, and also files mfdr did not write: "
                              f"{_listing(foreign, out)}. Move them away (or delete them) first, or choose "
                              "another --out; nothing was deleted.")
        return
    saved = out / "config.yaml"
    if not saved.exists():
        raise RunDirError(f"{out} holds an unfinished mfdr run without config.yaml ({_listing(contents, out)}); "
                          "pass --overwrite to start it again, or choose another --out")
    if not resume:
        raise RunDirError(f"{out} already holds an mfdr run; pass --resume to continue it, --overwrite to "
                          "start it again, or choose another --out")
    import yaml

    diff = cfg.diff(yaml.safe_load(saved.read_text()) or {})
    if diff:
        raise RunDirError(f"cannot resume {out}: its config.yaml differs from the requested config: "
                          f"{format_diff(diff, 'now', 'saved')}")
    record = {f["name"]: f for f in folds}
    if (out / "folds.json").exists():
        old = {f["name"]: f for f in json.loads((out / "folds.json").read_text())}
        for f in folds:
            o = old.get(f["name"])
            if o is not None and any(o[k] != f[k] for k in ("train", "val", "test")):
                raise RunDirError(f"cannot resume {out}: {f['name']} would get other utterances than its "
                                  "folds.json lists (did the data change?)")
    for name in run_folds:
        if (out / name / "checkpoint.pt").exists() and not (out / name / "result.json").exists():
            f = record[name]
            check_resumable(out / name / "checkpoint.pt", cfg, data_hash, name,
                            split_hash(f["train"], f["val"], f["test"]))


def _fold_dirs(out: Path) -> list[Path]:
    """The fold folders of a run: ``fold-*``, or ``standard`` for the ``split`` protocol."""
    return sorted(p for p in [*out.glob("fold-*"), out / "standard"] if p.is_dir())


def _clear_run_dir(out: Path) -> None:
    """Remove what a previous run wrote, and only that: ``RunDirError`` (nothing removed) if the folder is
    not an mfdr run or holds anything else. The lock file stays (its holder is this process)."""
    if _marker_state(out) == "none":
        raise RunDirError(f"{out} is not an mfdr run folder (no {MARKER}); nothing was deleted")
    foreign = foreign_files(out)
    if foreign:
        raise RunDirError(f"{out} holds files mfdr did not write: {_listing(foreign, out)}; nothing was deleted")

    def clear(folder: Path, rules: dict) -> None:
        for p in sorted(folder.iterdir()):
            kind = _owned_kind(p.name, rules)
            if kind is None:
                if p.name != LOCK or folder != out:
                    p.unlink()
            else:
                clear(p, kind)
                p.rmdir()

    clear(out, OWNED)


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold ``out/.mfdr-run.lock`` (``fcntl.flock``) while writing the run: a second process writing the
    same folder gets ``RunDirError`` naming the holder (its pid and host)."""
    import socket

    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    path = out / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = path.read_text().strip() or "another process"
            raise RunDirError(f"{out} is being written by another mfdr process ({holder}); wait for it to end, "
                              "or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock
