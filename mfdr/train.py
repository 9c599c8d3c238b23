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

import contextlib
import csv
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
from .protocols import DataSource, Fold, folds_record, make_folds
from .runconfig import DataConfig, FeatureConfig, RunConfig, TrainConfig, format_diff

log = logging.getLogger("mfdr.train")

__all__ = ["CheckpointError", "DataConfig", "FeatureConfig", "RunConfig", "RunDirError", "TrainConfig",
           "TrainingError", "find_models", "load_model", "predict_dataset", "run_training", "train_fold"]


class TrainingError(RuntimeError):
    """Training cannot go on (a non-finite loss); the message says what is kept on disk."""


class RunDirError(ValueError):
    """The output folder holds something that the requested run would overwrite."""


@dataclass
class Dist:
    """The process group this process is part of (world 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
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
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
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

    def close(self) -> None:
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def setup_distributed(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group (``WORLD_SIZE`` > 1) or run alone; pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if device is None:
        dev = torch.device(f"cuda:{local_rank}" if world > 1 else "cuda") if cuda else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and world > 1:
            dev = torch.device(f"cuda:{local_rank}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(),
                local_rank=local_rank, device=dev, owns_group=owns)


def _on_main(dist: Dist, fn, *args):
    """Run ``fn`` on rank 0 and share its result; an error on rank 0 is raised on every rank."""
    result, error = None, None
    if dist.main:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if dist.active:
        result, message = dist.broadcast((result, None if error is None else f"{type(error).__name__}: {error}"))
        if error is None and message is not None:
            raise RuntimeError(f"rank 0 failed: {message}")
    if error is not None:
        raise error
    return result


# ============================================================================ one step, one pass
def _loss(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (classification) or L1 (regression, as MMSA's models), mean over the batch."""
    if task == "regression":
        return F.l1_loss(out.float(), y.float())
    return F.cross_entropy(out.float(), y)


def _inputs(batch: dict, device: torch.device, zero: str | None):
    audio, text = batch["audio"].to(device, non_blocking=True), batch["text"].to(device, non_blocking=True)
    if zero == "audio":
        audio = torch.zeros_like(audio)
    elif zero == "text":
        text = torch.zeros_like(text)
    return (audio, text, batch["audio_lengths"].to(device), batch["text_lengths"].to(device),
            batch["label"].to(device))


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext()


def _loader(cfg: RunConfig, dataset, batch_size: int, sampler=None):
    from torch.utils.data import DataLoader

    from .data import make_collate

    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=make_collate(cfg.model.audio_len, cfg.model.text_len),
                      num_workers=cfg.train.num_workers, pin_memory=False)


@torch.no_grad()
def predict_dataset(model, dataset, cfg: RunConfig, dist: Dist | None = None, progress: bool = False) -> dict:
    """Run ``model`` over ``dataset`` (sharded over the processes, gathered in dataset order).

    Returns ``{"id": [...], "label": (N,), "output": (N, C) logits or (N,) scores, "loss": mean}``.
    """
    from tqdm import tqdm

    dist = dist or Dist(device=next(model.parameters()).device)
    raw = model.module if hasattr(model, "module") else model
    was_training = raw.training
    raw.eval()
    shard = list(range(dist.rank, len(dataset), dist.world))
    subset = torch.utils.data.Subset(dataset, shard)
    bs = cfg.train.eval_batch_size or cfg.train.batch_size
    ids, labels, outs, losses = [], [], [], []
    for batch in tqdm(_loader(cfg, subset, bs), disable=not progress, leave=False, desc="evaluate", unit="batch"):
        audio, text, al, tl, y = _inputs(batch, dist.device, cfg.train.zero)
        with _autocast(dist.device, cfg.train.amp):
            out = raw(audio, text, al, tl).float()
        losses.append(F.cross_entropy(out, y, reduction="none") if cfg.model.task == "classification"
                      else F.l1_loss(out, y.float(), reduction="none"))
        ids += batch["id"]
        labels.append(y.cpu())
        outs.append(out.cpu())
    raw.train(was_training)
    mine = (shard, ids, torch.cat(labels) if labels else torch.zeros(0),
            torch.cat(outs) if outs else torch.zeros(0), torch.cat(losses).cpu() if losses else torch.zeros(0))
    order, all_ids, all_y, all_out, all_loss = [], [], [], [], []
    for part in dist.gather(mine):
        order += part[0]
        all_ids += part[1]
        all_y.append(part[2])
        all_out.append(part[3])
        all_loss.append(part[4])
    perm = np.argsort(order, kind="stable")
    y, out, loss = torch.cat(all_y)[perm], torch.cat(all_out)[perm], torch.cat(all_loss)[perm]
    return {"id": [all_ids[i] for i in perm], "label": y, "output": out,
            "loss": float(loss.mean()) if len(loss) else float("nan")}


def prediction_metrics(pred: dict, cfg: RunConfig) -> dict:
    """``mfdr.metrics`` of a ``predict_dataset`` result, plus its ``loss``."""
    if cfg.model.task == "classification":
        m = M.emotion_metrics(pred["label"].numpy(), pred["output"].argmax(-1).numpy(),
                              labels=range(cfg.model.num_classes))
    else:
        m = M.sentiment_metrics(pred["label"].numpy(), pred["output"].numpy())
    return {**m, "loss": pred["loss"]}


def _is_better(select: str, score: float, best: float | None) -> bool:
    """Strictly better (ties keep the earlier epoch); a NaN score only wins when nothing is kept yet."""
    if not np.isfinite(score):
        return best is None
    if best is None or not np.isfinite(best):
        return True
    return score < best if select in M.LOWER_IS_BETTER else score > best


# ============================================================================ one fold
LOG_KEYS = ("epoch", "lr", "train_loss", "val_loss", "seconds")


class _EpochLog:
    """metrics.csv + metrics.jsonl (+ TensorBoard when installed), rewritten from the history on resume."""

    def __init__(self, fold_dir: Path, history: list[dict]):
        self.csv, self.jsonl = fold_dir / "metrics.csv", fold_dir / "metrics.jsonl"
        self.rows = list(history)
        self._rewrite()
        self.tb = None
        import importlib.util

        if importlib.util.find_spec("tensorboard") is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(fold_dir / "tb"), purge_step=len(history) + 1)

    def _rewrite(self) -> None:
        keys = list(LOG_KEYS) + sorted({k for r in self.rows for k in r} - set(LOG_KEYS))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(json_safe(self.rows))
        atomic_write_text(self.csv, buf.getvalue())
        atomic_write_text(self.jsonl, "".join(json.dumps(json_safe(r)) + "\n" for r in self.rows))

    def add(self, row: dict) -> None:
        self.rows.append(row)
        self._rewrite()
        if self.tb is not None:
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _save_best(model, fold_dir: Path, meta: dict) -> None:
    """``best/`` = save_pretrained + meta.json, swapped in by renames (never half-written)."""
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
    """What ``predict`` needs besides the weights: classes, task, the feature extractors."""
    enc = None if source.cache is None else {k: source.cache.config.get(k) for k in ("audio", "text")}
    return {"task": cfg.model.task, "classes": list(cfg.data.classes) if cfg.model.task == "classification"
            else None, "zero": cfg.train.zero, "features": cfg.features.to_dict(), "encoders": enc,
            "dataset": cfg.data.dataset, **(extra or {})}


def train_fold(cfg: RunConfig, source: DataSource, fold: Fold, fold_dir: Path, *, fold_index: int = 0,
               dist: Dist | None = None, resume: bool = False, stop_after: int | None = None,
               progress: bool = True) -> dict | None:
    """Train one fold, choose the best epoch on validation, test it; returns the fold's result dict
    (also written to ``result.json``), or None when stopped early by ``stop_after`` (epochs done)."""
    from tqdm import tqdm

    from .model import MFDR

    dist = dist or Dist()
    tc, task = cfg.train, cfg.model.task
    if tc.batch_size % dist.world:
        raise ValueError(f"train.batch_size ({tc.batch_size}) must be divisible by the number of processes "
                         f"({dist.world}): it is the global batch")
    seed = tc.seed + fold_index
    seed_everything(seed)
    model = MFDR(cfg.model).to(dist.device)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    amp_fp16 = tc.amp and dist.device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=amp_fp16)
    ckpt_path = fold_dir / "checkpoint.pt"
    start, best, history = 0, {"epoch": None, "score": None, "metrics": None, "state": None}, []

    if resume and dist.broadcast(ckpt_path.exists()):
        ck = _on_main(dist, load_checkpoint, ckpt_path)
        diff = cfg.diff(ck["config"])
        if diff:
            raise CheckpointError(f"checkpoint {ckpt_path} was written with another config: "
                                  f"{format_diff(diff, 'now', 'checkpoint')}. Resume with the run's config, or "
                                  "start a new run (another --out, or --overwrite).")
        if ck.get("data_hash") != source.hash:
            raise CheckpointError(f"checkpoint {ckpt_path} was trained on features with config hash "
                                  f"{ck.get('data_hash')}, the data now has {source.hash}")
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if ck.get("scaler") and amp_fp16:
            scaler.load_state_dict(ck["scaler"])
        start, best, history = ck["epoch"], ck["best"], ck["history"]
        set_rng_state(ck["rng"])
        if dist.main:
            log.info("%s: resuming after epoch %d (best epoch %s)", fold.name, start, best["epoch"])

    train_ds, val_ds, test_ds = (source.dataset(ix) for ix in (fold.train, fold.val, fold.test))
    ddp = model
    if dist.active:
        ddp = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
    from torch.utils.data import DistributedSampler

    # The same sampler alone or in DDP: epoch e's order is a permutation seeded by seed + e, so a
    # resumed run and a run on 2 processes see the same global batches as one uninterrupted process.
    sampler = DistributedSampler(train_ds, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
    loader = _loader(cfg, train_ds, tc.batch_size // dist.world, sampler)
    logger = _EpochLog(fold_dir, history) if dist.main else None
    meta = run_meta(cfg, source, {"fold": fold.name, "test_groups": fold.test_groups})
    select = cfg.select

    for epoch in range(start, tc.epochs):
        t0, lr = time.time(), tc.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        ddp.train()
        loss_sum, count = 0.0, 0
        bar = tqdm(loader, disable=not (progress and dist.main), leave=False, unit="batch",
                   desc=f"{fold.name} epoch {epoch + 1}/{tc.epochs}")
        for step, batch in enumerate(bar):
            audio, text, al, tl, y = _inputs(batch, dist.device, tc.zero)
            with _autocast(dist.device, tc.amp):
                out = ddp(audio, text, al, tl)
            loss = _loss(task, out, y)
            finite = dist.all_sum([float(torch.isfinite(loss.detach()).item())])[0] == dist.world
            if not finite:
                kept = (f"the last good checkpoint {ckpt_path} (after epoch {epoch}) is kept"
                        if epoch > 0 else "no checkpoint was written yet")
                raise TrainingError(
                    f"{fold.name}, epoch {epoch + 1}, step {step + 1}: the loss is {loss.item()} "
                    f"(not finite). Training stopped; {kept}. Lower train.lr, set train.grad_clip, "
                    "or check the features for NaN/Inf.")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if tc.grad_clip is not None:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.item() * len(y)
            count += len(y)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        loss_sum, count = dist.all_sum([loss_sum, float(count)])

        row = {"epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / max(count, 1)}
        if len(val_ds):
            val = prediction_metrics(predict_dataset(model, val_ds, cfg, dist), cfg)
            row.update({f"val_{k}": v for k, v in M.scalar_metrics(val).items()})
            score = val[select]
        else:  # no validation: the last epoch is the best
            val, score = None, float(epoch)
        improved = _is_better(select, score, best["score"]) if val is not None else True
        if improved:
            best = {"epoch": epoch + 1, "score": score, "metrics": M.scalar_metrics(val) if val else None,
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
                "scaler": scaler.state_dict() if amp_fp16 else None, "rng": rng_state(), "best": best,
                "history": history})
            shown = " ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_") and k[4:] in
                             ("loss", "wa", "ua", "mae", "acc7", "has0_acc2"))
            print(f"{fold.name} epoch {epoch + 1:>3}/{tc.epochs}  lr {lr:.2e}  train_loss {row['train_loss']:.4f}  "
                  f"{shown}  {row['seconds']:.1f}s{'  *' if improved and val is not None else ''}", flush=True)
        dist.barrier()
        if stop_after is not None and epoch + 1 >= stop_after and epoch + 1 < tc.epochs:
            if logger:
                logger.close()
            return None
    if logger:
        logger.close()

    # Test the best epoch's weights.
    model.load_state_dict(best["state"])
    pred = predict_dataset(model, test_ds, cfg, dist)
    test = prediction_metrics(pred, cfg)
    result = {"fold": fold.name, "test_groups": fold.test_groups, "validation": fold.val_rule,
              "n_train": len(fold.train), "n_val": len(fold.val), "n_test": len(fold.test),
              "best_epoch": best["epoch"], "select": select, "val": best["metrics"], "test": test}
    if dist.main:
        _write_predictions(fold_dir / "predictions.csv", pred, cfg)
        write_json(fold_dir / "result.json", result)
    dist.barrier()
    return result


def _write_predictions(path: Path, pred: dict, cfg: RunConfig) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    if cfg.model.task == "classification":
        classes = list(cfg.data.classes) if cfg.data.dataset != "mmsa" else [str(i) for i in
                                                                          range(cfg.model.num_classes)]
        probs = torch.softmax(pred["output"], -1)
        w.writerow(["id", "label", "pred"] + [f"p_{c}" for c in classes])
        for i, y, p in zip(pred["id"], pred["label"].tolist(), probs.tolist(), strict=True):
            w.writerow([i, classes[y], classes[int(np.argmax(p))]] + [f"{x:.6f}" for x in p])
    else:
        w.writerow(["id", "label", "pred"])
        for i, y, p in zip(pred["id"], pred["label"].tolist(), pred["output"].tolist(), strict=True):
            w.writerow([i, f"{y:.6f}", f"{p:.6f}"])
    atomic_write_text(path, buf.getvalue())


# ============================================================================ results
def summarize(results: list[dict], cfg: RunConfig, pooled: dict | None = None) -> dict:
    """Per-fold test metrics, their mean and sample std over folds, and (optionally) the metrics of all
    test predictions pooled."""
    keys = [k for k in M.scalar_metrics(results[0]["test"]) if k != "loss"]
    mean, std = {}, {}
    for k in keys:
        vals = np.array([r["test"][k] for r in results], dtype=np.float64)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"task": cfg.model.task, "protocol": cfg.data.protocol, "select": cfg.select, "metrics": keys,
            "folds": results, "mean": mean, "std": std, "pooled": pooled}


PERCENT = {"wa", "ua", "macro_f1", "weighted_f1", "acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2", "non0_f1"}
LABELS = {"wa": "WA", "ua": "UA", "macro_f1": "macro F1", "weighted_f1": "weighted F1", "acc7": "Acc7",
          "acc5": "Acc5", "has0_acc2": "Has0 Acc2", "has0_f1": "Has0 F1", "non0_acc2": "Non0 Acc2",
          "non0_f1": "Non0 F1", "mae": "MAE", "corr": "Corr"}


def fmt(key: str, value, std=None) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    scale, digits = (100.0, 2) if key in PERCENT else (1.0, 4)
    text = f"{value * scale:.{digits}f}"
    return text if std is None else f"{text} ± {std * scale:.{digits}f}"


def results_markdown(summary: dict, title: str = "Results") -> str:
    keys = summary["metrics"]
    unit = " (accuracies and F1 in %)" if any(k in PERCENT for k in keys) else ""
    lines = [f"# {title}", "", f"Protocol `{summary['protocol']}`; best epoch chosen on validation "
             f"`{summary['select']}`; mean ± sample std over folds{unit}.", "",
             "| fold | test | n test | best epoch | " + " | ".join(LABELS[k] for k in keys) + " |",
             "|---|---|---|---|" + "---|" * len(keys)]
    for r in summary["folds"]:
        lines.append(f"| {r['fold']} | {', '.join(map(str, r['test_groups']))} | {r['n_test']} | "
                     f"{r['best_epoch']} | " + " | ".join(fmt(k, r["test"][k]) for k in keys) + " |")
    lines.append("| **mean ± std** | | | | " + " | ".join(fmt(k, summary["mean"][k], summary["std"][k])
                                                        for k in keys) + " |")
    if summary.get("pooled"):
        lines.append("| pooled | all | {} | | ".format(sum(r["n_test"] for r in summary["folds"]))
                     + " | ".join(fmt(k, summary["pooled"].get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def pooled_predictions(run_dir: Path, folds: list[str]) -> tuple[list, list]:
    """Truth and prediction (class names or scores) of every fold's ``predictions.csv``, concatenated."""
    truth, pred = [], []
    for name in folds:
        with open(run_dir / name / "predictions.csv", newline="") as f:
            for row in csv.DictReader(f):
                truth.append(row["label"])
                pred.append(row["pred"])
    return truth, pred


def _pooled_metrics(run_dir: Path, results: list[dict], cfg: RunConfig) -> dict | None:
    truth, pred = pooled_predictions(run_dir, [r["fold"] for r in results])
    if cfg.model.task == "classification":
        classes = list(cfg.data.classes) if cfg.data.dataset != "mmsa" else [str(i) for i in
                                                                          range(cfg.model.num_classes)]
        index = {c: i for i, c in enumerate(classes)}
        return M.emotion_metrics([index[t] for t in truth], [index[p] for p in pred], labels=range(len(classes)))
    return M.sentiment_metrics(np.array(truth, dtype=float), np.array(pred, dtype=float))


# ============================================================================ a whole run
def _check_run_dir(out: Path, cfg: RunConfig, folds: list[dict], resume: bool, overwrite: bool) -> None:
    """Refuse (``RunDirError``) to touch a folder that holds another run; read-only."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    saved = out / "config.yaml"
    if not saved.exists():
        if any(out.iterdir()) and not overwrite:
            raise RunDirError(f"--out {out} is not empty and holds no mfdr run (config.yaml); choose another "
                              "folder")
        return
    if overwrite:
        return
    if not resume:
        raise RunDirError(f"{out} already holds an mfdr run; pass --resume to continue it, --overwrite to start "
                          "it again, or choose another --out")
    import yaml

    diff = cfg.diff(yaml.safe_load(saved.read_text()) or {})
    if diff:
        raise RunDirError(f"cannot resume {out}: its config.yaml differs from the requested config: "
                          f"{format_diff(diff, 'now', 'saved')}")
    fj = out / "folds.json"
    if fj.exists():
        old = {f["name"]: f for f in json.loads(fj.read_text())}
        for f in folds:
            o = old.get(f["name"])
            if o is not None and (o["train"], o["val"], o["test"]) != (f["train"], f["val"], f["test"]):
                raise RunDirError(f"cannot resume {out}: {f['name']} would get other utterances than in its "
                                  "folds.json (did the data change?)")


def _clear_run_dir(out: Path) -> None:
    for p in out.glob("fold-*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    for name in ("results.json", "results.md", "folds.json", "config.yaml"):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / "figures", ignore_errors=True)


def run_training(cfg: RunConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
                 folds: list[str] | None = None, stop_after: int | None = None, progress: bool = True,
                 figures: bool = True) -> dict | None:
    """Train and test every fold of ``cfg.data.protocol``; write the run folder (module docstring).

    Args:
        resume: continue the run in ``out_dir`` (finished folds are kept; the others restart from
            their last checkpoint). The config must match the saved one (runtime fields aside).
        overwrite: delete a previous run in ``out_dir`` first.
        folds: names of the folds to run (``fold-0`` ...); default all.
        stop_after: stop after this many epochs of the first unfinished fold (resume later).
    Returns:
        the summary written to ``results.json``, or None when stopped by ``stop_after``.
    Every check (config, data, folder) runs before anything is written.
    """
    out = Path(out_dir)
    dist = setup_distributed(cfg.train.device)
    try:
        source = DataSource(cfg)
        all_folds = make_folds(source.entries, cfg.data, cfg.train.seed, cfg.model.task)
        record = folds_record(all_folds, source.entries)
        chosen = all_folds
        if folds:
            names = [f.name for f in all_folds]
            bad = [f for f in folds if f not in names]
            if bad:
                raise ValueError(f"unknown fold(s) {bad}; this protocol has {names}")
            chosen = [f for f in all_folds if f.name in folds]
        _on_main(dist, _check_run_dir, out, cfg, record, resume, overwrite)
        if dist.main:
            if overwrite and out.exists():
                _clear_run_dir(out)
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / "config.yaml")
            write_json(out / "folds.json", record)
            print(f"{cfg.data.protocol}: {len(all_folds)} folds; validation: {all_folds[0].val_rule}; "
                  f"device {dist.device}" + (f" x {dist.world} processes" if dist.active else ""), flush=True)
        dist.barrier()

        results = []
        for fold in chosen:
            fold_dir = out / fold.name
            done = fold_dir / "result.json"
            if resume and done.exists():
                results.append(json.loads(done.read_text()))
                continue
            if dist.main:
                fold_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            index = [f.name for f in all_folds].index(fold.name)
            r = train_fold(cfg, source, fold, fold_dir, fold_index=index, dist=dist, resume=resume,
                           stop_after=stop_after, progress=progress)
            if r is None:
                return None
            results.append(r)

        summary = summarize(results, cfg, _pooled_metrics(out, results, cfg) if dist.main else None)
        if dist.main:
            write_json(out / "results.json", summary)
            atomic_write_text(out / "results.md", results_markdown(summary, f"MFDR: {out.name}"))
            print(results_markdown(summary, f"MFDR: {out.name}"), flush=True)
            if figures:
                write_run_figures(out, cfg, results)
        dist.barrier()
        return summary
    finally:
        dist.close()


def write_run_figures(out: Path, cfg: RunConfig, results: list[dict]) -> list[Path]:
    """Training curves of every fold and the pooled test confusion matrix (matplotlib, PNG)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    from . import plots

    fig_dir = out / "figures"
    histories = {}
    for r in results:
        path = out / r["fold"] / "metrics.jsonl"
        if path.exists():
            histories[r["fold"]] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    paths = [plots.plot_curves(histories, fig_dir / "curves.png", title=f"{out.name}: training curves")]
    if cfg.model.task == "classification":
        pooled = summarize(results, cfg, _pooled_metrics(out, results, cfg))["pooled"]
        classes = list(cfg.data.classes) if cfg.data.dataset != "mmsa" else None
        paths.append(plots.plot_confusion(pooled["confusion"], classes, fig_dir / "confusion.png",
                                          title=f"{out.name}: test confusion (all folds)"))
    return paths


# ============================================================================ loading a trained model
def find_models(path) -> list[Path]:
    """The ``best/`` folders under ``path``: a run folder (every fold), a fold folder, or a ``best/``
    folder itself (a folder with config.json + model.safetensors)."""
    path = Path(path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        return [path]
    if (path / "best").is_dir():
        return [path / "best"]
    found = sorted(p / "best" for p in path.glob("fold-*") if (p / "best").is_dir())
    if not found:
        raise FileNotFoundError(f"no trained model at {path}: expected a run folder (fold-*/best/), a fold "
                                "folder, or a folder with config.json and model.safetensors")
    return found


def load_model(path, config: MFDRConfig | None = None, *, device="cpu", checkpoint_ok: bool = True):
    """``(model, meta)`` from a ``best/`` folder or a ``checkpoint.pt`` (``meta`` may be {}).

    ``config``: the model config the caller expects; a model saved with another one raises
    ``CheckpointError`` listing the differences.
    """
    from .model import MFDR

    path = Path(path)
    if path.is_file():
        if not checkpoint_ok:
            raise ValueError(f"{path}: expected a model folder")
        ck = load_checkpoint(path)
        saved = MFDRConfig.from_dict(ck["config"]["model"])
        if config is not None:
            diff = saved.diff(config, ignore=MFDRConfig.RUNTIME_FIELDS)
            if diff:
                raise CheckpointError(f"checkpoint {path} holds a model with another config: "
                                      + "; ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in diff.items()))
        model = MFDR(saved)
        model.load_state_dict(ck["model"])
        cfg = ck["config"]
        meta = {"task": saved.task, "classes": cfg["data"]["classes"], "zero": cfg["train"]["zero"],
                "features": cfg["features"], "encoders": None, "dataset": cfg["data"]["dataset"]}
        return model.to(device).eval(), meta
    try:
        model = MFDR.from_pretrained(path, config, map_location=device)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    meta_path = path / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    return model, meta
