"""Training and evaluation of MFDR with the paper's protocols (Sec. 3.1-3.2).

    cfg = RunConfig.load("configs/iemocap.yaml", overrides=["train.epochs=2"])
    summary = run_training(cfg, "runs/iemocap")   # every fold, then results.json / results.md

A run folder::

    config.yaml         the full, resolved RunConfig (model, train, data, features)
    folds.json          each fold's train / validation / test utterance ids (mfdr.protocols)
    fold-0/
      checkpoint.pt     the last finished epoch: weights, optimizer, RNG states, best so far (atomic)
      best/             the best epoch on the validation split: config.json, model.safetensors, meta.json
      metrics.csv       one row per epoch (also metrics.jsonl; tb/ when TensorBoard is installed)
      predictions.csv   the best model's test predictions (and class probabilities)
      result.json       the fold's test metrics; written last: a fold that has it is finished
    results.json        per-fold test metrics, mean ± sample std over folds, and pooled over all folds
    results.md          the same as a Markdown table
    figures/            curves.png, confusion.png

The loop is plain PyTorch: Adam; the learning rate multiplied by ``lr_decay`` (0.1) at every
``lr_decay_every`` (50 %) of the epochs; AMP on CUDA; a checkpoint after every epoch; the best epoch
chosen on the validation split (``train.select``); its weights tested. ``--resume`` continues from the
last checkpoint and ends with the same weights as an uninterrupted run (the shuffling of epoch ``e`` is
seeded by ``seed + e``, and the RNG states are restored).

Under ``torchrun`` it runs DistributedDataParallel (NCCL on CUDA, gloo on the CPU): ``train.batch_size``
is the global batch, split evenly over the processes, so results do not depend on the process count;
rank 0 logs and writes; evaluation is sharded and gathered. Multi-node runs need ``--out`` on a shared
filesystem.
"""

from __future__ import annotations

import csv
import gc
import io
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from mfdr_kernels import _checks

from . import metrics as M
from .checkpoint import (
    CheckpointError,
    atomic_write_text,
    json_safe,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    write_json,
)
from .config import MFDRConfig
from .precision import Precision
from .precision import resolve as resolve_precision
from .protocols import DataSource, Fold, folds_record, make_folds
from .runconfig import DataConfig, FeatureConfig, RunConfig, TrainConfig, format_diff

log = logging.getLogger("mfdr.train")

__all__ = ["CheckpointError", "DataConfig", "FeatureConfig", "RunConfig", "RunDirError", "TrainConfig",
           "TrainingError", "find_models", "load_model", "predict_dataset", "run_training", "train_fold"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says what is kept on disk."""


class RunDirError(ValueError):
    """The output folder holds something that the requested run would overwrite."""


# ---------------------------------------------------------------------- processes
@dataclass
class Dist:
    """The process group this process belongs to (``world`` 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self, finished: bool = True) -> None:
        """Destroy the group this run created. After a run that ``finished`` on every rank: first a barrier
        (every rank done with its collectives) and a garbage collection (the DDP reducers, which hold the
        group, freed): a rank that tore gloo down while its peer was still in the last broadcast aborted at
        exit ("terminate called without an active exception") in about 1 CI run in 4. After an error no
        barrier: the other ranks may be waiting in another collective."""
        if self.owns_group and torch.distributed.is_initialized():
            if finished and self.active:
                torch.distributed.barrier()
                gc.collect()
            torch.distributed.destroy_process_group()


def parse_device(device, name: str = "device") -> torch.device:
    """``torch.device(device)``, or a ValueError naming ``name`` when it is not a device, or a CUDA
    device that this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name} is {device!r} but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"{name} is {device!r} but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return dev


def setup_distributed(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group (``WORLD_SIZE`` > 1: NCCL on CUDA, gloo on the CPU) or run
    alone. ``device``: ``"cpu"``, ``"cuda"``... (None: CUDA when available; under torchrun each process
    takes ``cuda:LOCAL_RANK``)."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device, "train.device")
    if dev.type == "cuda":
        if world > 1:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(), device=dev,
                owns_group=owns)


def _on_main(dist: Dist, fn, *args):
    """Run ``fn`` on rank 0 and share its result; an error there is raised on every rank."""
    result, error = None, None
    if dist.main:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if dist.active:
        message = None if error is None else f"{type(error).__name__}: {error}"
        result, message = dist.broadcast((result, message))
        if error is None and message is not None:
            raise RuntimeError(f"rank 0 failed: {message}")
    if error is not None:
        raise error
    return result


# ---------------------------------------------------------------------- batches
def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (classification) or L1 (regression, as MMSA's models); mean over the batch."""
    if task == "regression":
        return F.l1_loss(out.float(), y.float())
    return F.cross_entropy(out.float(), y)


def _inputs(batch: dict, device: torch.device, zero: str | None):
    """The model's inputs from a collated batch; ``zero`` blanks one modality (keeping its lengths).

    The lengths are checked here, on the CPU where the collated batch lives, before the copy to the
    device: the model and the kernels then skip their value checks on an accelerator (no host sync)."""
    audio, text = batch["audio"], batch["text"]
    _checks.in_range("audio_lengths", batch["audio_lengths"].cpu(), 1, audio.shape[1])
    _checks.in_range("text_lengths", batch["text_lengths"].cpu(), 1, text.shape[1])
    move = lambda t: t.to(device, non_blocking=True)
    audio, text = move(audio), move(text)
    if zero == "audio":
        audio = torch.zeros_like(audio)
    elif zero == "text":
        text = torch.zeros_like(text)
    return audio, text, move(batch["audio_lengths"]), move(batch["text_lengths"]), move(batch["label"])


def _sync_stats(dist: Dist, stats: torch.Tensor, first_bad: torch.Tensor) -> tuple[float, float, int]:
    """The one host sync of a logging interval: (Σ loss·n, n) summed over the processes, and the first
    step (on any process) whose loss was not finite, or -1."""
    loss_sum, count, bad = stats.tolist() + [int(first_bad)]
    loss_sum, count, worst = dist.all_sum([loss_sum, count, float(bad >= 0)])
    if worst:  # every process takes this branch (all_sum): report the first bad step of any of them
        bad = min(b for b in dist.gather(bad) if b >= 0)
    return loss_sum, count, bad


def _precision(cfg: RunConfig, device: torch.device) -> Precision:
    return resolve_precision(cfg.train.precision, device)


def _loader(cfg: RunConfig, dataset, batch_size: int, sampler=None):
    from torch.utils.data import DataLoader

    from .data import make_collate

    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=make_collate(cfg.model.audio_len, cfg.model.text_len),
                      num_workers=cfg.train.num_workers)


@torch.no_grad()
def predict_dataset(model, dataset, cfg: RunConfig, dist: Dist | None = None, progress: bool = False) -> dict:
    """Run ``model`` over ``dataset``, sharded over the processes and gathered in dataset order.

    Returns ``{"id": [N ids], "label": (N,), "output": (N, C) logits or (N,) scores, "loss": mean}``.
    """
    from tqdm import tqdm

    raw = model.module if hasattr(model, "module") else model
    dist = dist or Dist(device=next(raw.parameters()).device)
    was_training = raw.training
    raw.eval()
    shard = list(range(dist.rank, len(dataset), dist.world))
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    batches = _loader(cfg, torch.utils.data.Subset(dataset, shard), batch_size)
    rows, pos = [], iter(shard)  # (position in dataset, id, label, output, loss) per utterance
    for batch in tqdm(batches, disable=not progress, leave=False, desc="evaluate", unit="batch"):
        audio, text, al, tl, y = _inputs(batch, dist.device, cfg.train.zero)
        with _precision(cfg, dist.device).autocast():
            out = raw(audio, text, al, tl).float()
        loss = (F.cross_entropy(out, y, reduction="none") if cfg.model.task == "classification"
                else F.l1_loss(out, y.float(), reduction="none"))
        for i, u in enumerate(batch["id"]):
            rows.append((next(pos), u, y[i].item(), out[i].cpu().numpy(), loss[i].item()))
    raw.train(was_training)
    rows = sorted((r for part in dist.gather(rows) for r in part), key=lambda r: r[0])
    if not rows:
        raise ValueError("predict_dataset: the dataset is empty")
    label_dtype = torch.int64 if cfg.model.task == "classification" else torch.float32
    return {"id": [r[1] for r in rows], "label": torch.tensor([r[2] for r in rows], dtype=label_dtype),
            "output": torch.from_numpy(np.stack([r[3] for r in rows])),
            "loss": float(np.mean([r[4] for r in rows]))}


def class_names(cfg: RunConfig) -> list[str]:
    """Names of the classes in label order (MMSA binary classification: ``"0"``, ``"1"``)."""
    if cfg.data.dataset == "mmsa":
        return [str(i) for i in range(cfg.model.num_classes)]
    return list(cfg.data.classes)


def prediction_metrics(pred: dict, cfg: RunConfig) -> dict:
    """``mfdr.metrics`` of a ``predict_dataset`` result, plus its ``loss``."""
    if cfg.model.task == "classification":
        m = M.emotion_metrics(pred["label"].numpy(), pred["output"].argmax(-1).numpy(),
                              labels=range(cfg.model.num_classes))
    else:
        m = M.sentiment_metrics(pred["label"].numpy(), pred["output"].numpy())
    return {**m, "loss": pred["loss"]}


def _write_predictions(path: Path, pred: dict, cfg: RunConfig) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    if cfg.model.task == "classification":
        classes = class_names(cfg)
        probs = torch.softmax(pred["output"], -1).tolist()
        w.writerow(["id", "label", "pred"] + [f"p_{c}" for c in classes])
        for i, y, p in zip(pred["id"], pred["label"].tolist(), probs, strict=True):
            w.writerow([i, classes[y], classes[int(np.argmax(p))]] + [f"{x:.6f}" for x in p])
    else:
        w.writerow(["id", "label", "pred"])
        for i, y, p in zip(pred["id"], pred["label"].tolist(), pred["output"].tolist(), strict=True):
            w.writerow([i, f"{y:.6f}", f"{p:.6f}"])
    atomic_write_text(path, buf.getvalue())


def _is_better(select: str, score: float, best: float | None) -> bool:
    """Strictly better (ties keep the earlier epoch); a NaN score wins only when nothing is kept yet."""
    if not np.isfinite(score):
        return best is None
    if best is None or not np.isfinite(best):
        return True
    return score < best if select in M.LOWER_IS_BETTER else score > best


# ---------------------------------------------------------------------- one fold
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


def train_fold(cfg: RunConfig, source: DataSource, fold: Fold, fold_dir: Path, *, fold_index: int = 0,
               dist: Dist | None = None, resume: bool = False, stop_after: int | None = None,
               progress: bool = True) -> dict | None:
    """Train one fold, keep the best epoch on validation, test it.

    Returns the fold's result (also written to ``result.json``), or None when stopped by
    ``stop_after`` (after that epoch; resume later).
    """
    from torch.utils.data import DistributedSampler
    from tqdm import tqdm

    from .model import MFDR

    dist = dist or Dist()
    tc, task, select = cfg.train, cfg.model.task, cfg.select
    if tc.batch_size % dist.world:
        raise ValueError(f"train.batch_size ({tc.batch_size}) is the global batch: it must be divisible by "
                         f"the number of processes ({dist.world})")
    seed = tc.seed + fold_index
    seed_everything(seed)
    model = MFDR(cfg.model).to(dist.device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    precision = _precision(cfg, dist.device)
    fp16 = precision.name == "fp16"
    scaler = precision.scaler()
    ckpt_path = fold_dir / "checkpoint.pt"
    start, history = 0, []
    best = {"epoch": None, "score": None, "metrics": None, "state": None}
    if resume and dist.broadcast(ckpt_path.exists()):
        ck = _on_main(dist, check_resumable, ckpt_path, cfg, source.hash)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if fp16 and ck.get("scaler"):
            scaler.load_state_dict(ck["scaler"])
        start, best, history = ck["epoch"], ck["best"], ck["history"]
        set_rng_state(ck["rng"])
        if dist.main:
            print(f"{fold.name}: resuming after epoch {start} (best so far: epoch {best['epoch']})",
                  flush=True)

    train_ds, val_ds, test_ds = (source.dataset(ix) for ix in (fold.train, fold.val, fold.test))
    net = model
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    if tc.compile:
        net = torch.compile(net, fullgraph=True, mode=tc.compile_mode_for(dist.device))
    # The same sampler alone or under DDP: epoch e's order is a permutation seeded by seed + e, so a
    # resumed run, and a run on 2 processes, see the same global batches as one uninterrupted process.
    sampler = DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
    loader = _loader(cfg, train_ds, tc.batch_size // dist.world, sampler)
    logger = _EpochLog(fold_dir, history) if dist.main else None
    meta = run_meta(cfg, source, {"fold": fold.name, "test_groups": fold.test_groups})

    for epoch in range(start, tc.epochs):
        t0, lr = time.time(), tc.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        net.train()
        loss_sum, count = 0.0, 0
        bar = tqdm(loader, disable=not (progress and dist.main), leave=False, unit="batch",
                   desc=f"{fold.name} epoch {epoch + 1}/{tc.epochs}")
        # The loss stays on the device: one host sync per train.log_every steps (and at the end of
        # the epoch) reads the running sum and the first step whose loss was not finite.
        stats = torch.zeros(2, dtype=torch.float64, device=dist.device)  # Σ loss·n, n
        first_bad = torch.full((), -1, dtype=torch.int64, device=dist.device)  # first non-finite step
        for step, batch in enumerate(bar):
            audio, text, audio_lengths, text_lengths, y = _inputs(batch, dist.device, tc.zero)
            with precision.autocast():
                out = net(audio, text, audio_lengths, text_lengths)
            loss = _loss(task, out, y)
            bad = ~torch.isfinite(loss.detach())
            first_bad = torch.where(bad & (first_bad < 0), step, first_bad)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(opt)
            scaler.update()
            stats += torch.stack([loss.detach().double() * len(y), stats.new_tensor(len(y))])
            if (step + 1) % tc.log_every == 0 or step + 1 == len(loader):
                loss_sum, count, bad_step = _sync_stats(dist, stats, first_bad)
                if bad_step >= 0:
                    kept = (f"the last good checkpoint {ckpt_path} (after epoch {epoch}) is kept" if epoch > 0
                            else "no checkpoint had been written yet")
                    raise TrainingError(f"{fold.name}, epoch {epoch + 1}, step {bad_step + 1}: the loss is not "
                                        f"finite. Training stopped; {kept}. Lower train.lr, set "
                                        "train.grad_clip, or check the features for NaN/Inf.")
                bar.set_postfix(loss=f"{loss_sum / max(count, 1):.4f}")
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(count, 1)}

        # Validation; the best epoch's weights are kept in memory, in the checkpoint and in best/.
        val, score = None, float(epoch)  # without validation the last epoch is the best
        if len(val_ds):
            val = prediction_metrics(predict_dataset(model, val_ds, cfg, dist), cfg)
            row.update({f"val_{k}": v for k, v in M.scalar_metrics(val).items()})
            score = val[select]
        improved = val is None or _is_better(select, score, best["score"])
        if improved:
            best = {"epoch": epoch + 1, "score": score, "metrics": val and M.scalar_metrics(val),
                    "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
            if dist.main:
                _save_best(model, fold_dir, {**meta, "epoch": epoch + 1, "val": best["metrics"]})
        row["seconds"] = round(time.time() - t0, 3)
        history.append(row)
        if dist.main:
            logger.add(row)
            save_checkpoint(ckpt_path, {
                "format": 1, "fold": fold.name, "epoch": epoch + 1, "config": cfg.to_dict(),
                "data_hash": source.hash, "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict() if fp16 else None, "rng": rng_state(), "best": best,
                "history": history})
            shown = "  ".join(f"val_{k} {row['val_' + k]:.4f}" for k in SHOWN if f"val_{k}" in row)
            print(f"{fold.name} epoch {epoch + 1:>3}/{tc.epochs}  lr {lr:.1e}  train_loss "
                  f"{row['train_loss']:.4f}  {shown}  {row['seconds']:.1f}s{'  *' if improved else ''}",
                  flush=True)
        dist.barrier()
        if stop_after is not None and stop_after <= epoch + 1 < tc.epochs:
            if logger:
                logger.close()
            return None
    if logger:
        logger.close()

    model.load_state_dict(best["state"])
    pred = predict_dataset(model, test_ds, cfg, dist)
    result = {"fold": fold.name, "test_groups": fold.test_groups, "validation": fold.val_rule,
              "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
              "best_epoch": best["epoch"], "select": select, "val": best["metrics"],
              "test": prediction_metrics(pred, cfg)}
    if dist.main:
        _write_predictions(fold_dir / "predictions.csv", pred, cfg)
        write_json(fold_dir / "result.json", result)
    dist.barrier()
    return result


# ---------------------------------------------------------------------- results
def pooled_metrics(run_dir: Path, results: list[dict], cfg: RunConfig) -> dict:
    """The metrics of every fold's test predictions (``predictions.csv``) taken together."""
    truth, pred = [], []
    for r in results:
        with open(Path(run_dir) / r["fold"] / "predictions.csv", newline="") as f:
            for row in csv.DictReader(f):
                truth.append(row["label"])
                pred.append(row["pred"])
    if cfg.model.task == "regression":
        return M.sentiment_metrics(np.array(truth, dtype=float), np.array(pred, dtype=float))
    index = {c: i for i, c in enumerate(class_names(cfg))}
    return M.emotion_metrics([index[t] for t in truth], [index[p] for p in pred], labels=range(len(index)))


def summarize(results: list[dict], cfg: RunConfig, pooled: dict | None = None) -> dict:
    return M.summarize_folds(results, task=cfg.model.task, protocol=cfg.data.protocol, select=cfg.select,
                             pooled=pooled)


# ---------------------------------------------------------------------- a whole run
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


def run_training(cfg: RunConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
                 folds: list[str] | None = None, stop_after: int | None = None, progress: bool = True,
                 figures: bool = True, title: str | None = None) -> dict | None:
    """Train and test the folds of ``cfg.data.protocol``; write the run folder (module docstring).

    Args:
        resume: continue the run in ``out_dir``: finished folds are kept, the others go on from their
            last checkpoint. The config must match the saved one (``RUNTIME_FIELDS`` aside).
        overwrite: delete a previous run in ``out_dir`` first.
        folds: names of the folds to run (``fold-0``, ...); default all.
        stop_after: stop once this epoch of the fold in progress is done (resume later).
    Returns:
        the summary written to ``results.json``, or None when stopped by ``stop_after``.
    Every check (config, data, folder) runs before anything is written.
    """
    out = Path(out_dir)
    dist = setup_distributed(cfg.train.device)
    finished = False
    try:
        source = DataSource(cfg)
        all_folds = make_folds(source.entries, cfg.data, cfg.train.seed, cfg.model.task)
        names = [f.name for f in all_folds]
        unknown = sorted(set(folds or ()) - set(names))
        if unknown:
            raise ValueError(f"unknown fold(s) {unknown}; protocol {cfg.data.protocol!r} has {names}")
        record = folds_record(all_folds, source.entries)
        run_folds = [f.name for f in all_folds if not folds or f.name in folds]
        _on_main(dist, _check_run_dir, out, cfg, record, resume, overwrite, run_folds, source.hash)
        if dist.main:
            if overwrite and out.exists():
                _clear_run_dir(out)
            out.mkdir(parents=True, exist_ok=True)
            if not (out / "config.yaml").exists():  # a resumed run keeps its files as they are
                cfg.save(out / "config.yaml")
                write_json(out / "folds.json", record)
            procs = f" x {dist.world} processes" if dist.active else ""
            prec = _precision(cfg, dist.device)
            print(f"{out}: protocol {cfg.data.protocol}, {len(all_folds)} folds; validation: "
                  f"{all_folds[0].val_rule}; device {dist.device}{procs}; precision {prec.name} "
                  f"({prec.reason})", flush=True)
        dist.barrier()

        results = []
        for index, fold in enumerate(all_folds):
            if fold.name not in run_folds:
                continue
            fold_dir = out / fold.name
            if resume and (fold_dir / "result.json").exists():
                results.append(json.loads((fold_dir / "result.json").read_text()))
                continue
            if dist.main:
                fold_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            r = train_fold(cfg, source, fold, fold_dir, fold_index=index, dist=dist, resume=resume,
                           stop_after=stop_after, progress=progress)
            if r is None:
                finished = True
                return None
            results.append(r)

        summary = None
        if dist.main:
            summary = summarize(results, cfg, pooled_metrics(out, results, cfg))
            summary["precision"] = _precision(cfg, dist.device).to_dict()
            write_json(out / "results.json", summary)
            table = M.results_markdown(summary, title or f"MFDR: {out.name}")
            atomic_write_text(out / "results.md", table)
            print(table, flush=True)
            if figures:
                write_run_figures(out, cfg, summary)
        summary = dist.broadcast(summary)
        finished = True
        return summary
    finally:
        dist.close(finished)


def write_run_figures(out: Path, cfg: RunConfig, summary: dict) -> list[Path]:
    """``figures/curves.png`` (every fold) and ``figures/confusion.png`` (pooled test predictions)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    from . import plots

    histories = {}
    for r in summary["folds"]:
        path = out / r["fold"] / "metrics.jsonl"
        if path.exists():
            histories[r["fold"]] = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    paths = [plots.plot_curves(histories, out / "figures" / "curves.png", title=f"{out.name}: training")]
    if cfg.model.task == "classification" and summary.get("pooled"):
        paths.append(plots.plot_confusion(summary["pooled"]["confusion"], class_names(cfg),
                                          out / "figures" / "confusion.png",
                                          title=f"{out.name}: test, all folds"))
    return paths


# ---------------------------------------------------------------------- trained models
def find_models(path) -> list[Path]:
    """The model folders under ``path``: every fold's ``best`` of a run folder, a fold folder's
    ``best``, or ``path`` itself when it holds config.json and model.safetensors."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return [path]
    if (path / "best").is_dir():
        return [path / "best"]
    found = [p / "best" for p in _fold_dirs(path) if (p / "best").is_dir()]
    if not found:
        raise FileNotFoundError(f"no trained model at {path}: expected a run folder (fold-*/best/), a fold "
                                "folder, a model folder (config.json, model.safetensors) or a checkpoint.pt")
    return found


def load_model(path, config: MFDRConfig | None = None, *, device="cpu"):
    """``(model, meta)`` from a model folder (``best/``) or a ``checkpoint.pt``, in eval mode.

    ``config``: the model config the caller expects; a model saved with another one raises
    ``CheckpointError`` listing the differences. ``meta``: task, classes, feature extractors ({} if
    unknown).
    """
    from .model import MFDR

    path = Path(path)
    if path.is_file():
        ck = load_checkpoint(path)
        saved = MFDRConfig.from_dict(ck["config"]["model"])
        if config is not None:
            diff = saved.diff(config, ignore=MFDRConfig.RUNTIME_FIELDS)
            if diff:
                raise CheckpointError(f"checkpoint {path} holds a model with another config: "
                                      f"{format_diff(diff, 'saved', 'given')}")
        model = MFDR(saved if config is None else config)
        model.load_state_dict(ck["model"])
        run = RunConfig.from_dict(ck["config"])
        meta = {"task": saved.task, "classes": class_names(run), "zero": run.train.zero,
                "dataset": run.data.dataset, "features": run.features.to_dict(), "encoders": None}
        return model.to(device).eval(), meta
    try:
        model = MFDR.from_pretrained(path, config, map_location=device)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    meta_path = path / "meta.json"
    return model, (json.loads(meta_path.read_text()) if meta_path.exists() else {})
