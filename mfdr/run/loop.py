"""One fold's training loop: Adam, the paper's step schedule, a checkpoint after every epoch, the best
epoch chosen on the validation split (``train.select``) and tested.

The step never waits for the device: the batch's lengths are checked on the CPU before the copy, the
running loss stays on the device, and one host sync per ``train.log_every`` steps reads it (and the
first step whose loss was not finite, which stops the run). ``--resume`` ends with the same weights as
an uninterrupted run: the shuffling of epoch ``e`` is seeded by ``seed + e`` and the RNG states are
restored. Under ``torchrun`` the model is wrapped in DistributedDataParallel (``mfdr.run.distributed``).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics as M
from ..config import RunConfig
from ..errors import ConfigError, TrainingError
from ..progress import bar as progress_bar
from ..protocols import DataSource, Fold
from .batches import loss_fn, make_loader, model_inputs, precision_of
from .checkpoint import rng_state, save_checkpoint, seed_everything, set_rng_state
from .distributed import Dist, _on_main
from .evaluate import _write_predictions, predict_dataset, prediction_metrics
from .files import write_json
from .rundir import SHOWN, _EpochLog, _save_best, check_resumable, run_meta, split_hash


def _sync_stats(dist: Dist, stats: torch.Tensor, first_bad: torch.Tensor) -> tuple[float, float, int]:
    """The one host sync of a logging interval: (Σ loss·n, n) summed over the processes, and the first
    step (on any process) whose loss was not finite, or -1."""
    loss_sum, count, bad = stats.tolist() + [int(first_bad)]
    loss_sum, count, worst = dist.all_sum([loss_sum, count, float(bad >= 0)])
    if worst:  # every process takes this branch (all_sum): report the first bad step of any of them
        bad = min(b for b in dist.gather(bad) if b >= 0)
    return loss_sum, count, bad






def _non_finite_features(dataset, source: DataSource, limit: int = 3) -> str:
    """For the error of a non-finite loss: the utterances of ``dataset`` whose features hold NaN or Inf,
    named with where they are stored ("" when none does). Reads the whole dataset: only on that error."""
    bad = []
    for i in range(len(dataset)):
        item = dataset[i]
        if any(isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all())
               for x in (item.get("audio"), item.get("text"))):
            bad.append(str(item.get("id")))
    if not bad:
        return ""
    where = ""
    if source.cache is not None:
        entries = [source.cache.entries[source.cache.index(b)] for b in bad[:limit]]
        where = f" (feature cache {source.cache.path}: " + ", ".join(
            f"{e['shard']} row {e['row']}" for e in entries) + ")"
    names = ", ".join(repr(b) for b in bad[:limit]) + (f" and {len(bad) - limit} more" if len(bad) > limit else "")
    return (f": the features of {len(bad)} training utterance(s) hold NaN/Inf: {names}{where}; re-extract them "
            "or remove them from the data")


def _is_better(select: str, score: float, best: float | None) -> bool:
    """Strictly better (ties keep the earlier epoch); a NaN score wins only when nothing is kept yet."""
    if not np.isfinite(score):
        return best is None
    if best is None or not np.isfinite(best):
        return True
    return score < best if select in M.LOWER_IS_BETTER else score > best


def make_optimizer(params, tc, device) -> torch.optim.Optimizer:
    """The paper's Adam. Its fused implementation (one kernel for every parameter, on CUDA and the CPU)
    where this torch has it: the per-parameter loop dispatches ~490 ops per step at the paper's size."""
    try:
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay,
                                fused=torch.device(device).type in ("cuda", "cpu"))
    except (RuntimeError, TypeError):  # a torch or device without the fused kernel
        return torch.optim.Adam(params, lr=tc.lr, weight_decay=tc.weight_decay)


def train_fold(cfg: RunConfig, source: DataSource, fold: Fold, fold_dir: Path, *, fold_index: int = 0,
               dist: Dist | None = None, resume: bool = False, stop_after: int | None = None,
               progress: bool = True) -> dict | None:
    """Train one fold, keep the best epoch on validation, test it.

    Returns the fold's result (also written to ``result.json``), or None when stopped by
    ``stop_after`` (after that epoch; resume later).
    """
    from torch.utils.data import DistributedSampler

    from ..model import MFDR

    dist = dist or Dist()
    tc, task, select = cfg.train, cfg.model.task, cfg.select
    if tc.batch_size % dist.world:
        raise ConfigError(f"train.batch_size ({tc.batch_size}) is the global batch: it must be divisible by "
                         f"the number of processes ({dist.world})")
    seed = tc.seed + fold_index
    seed_everything(seed)
    model = MFDR(cfg.model).to(dist.device)
    opt = make_optimizer(model.parameters(), tc, dist.device)
    precision = precision_of(cfg, dist.device)
    fp16 = precision.name == "fp16"
    scaler = precision.scaler()
    ckpt_path = fold_dir / "checkpoint.pt"
    start, history = 0, []
    best = {"epoch": None, "score": None, "metrics": None, "state": None}
    ids = [str(e["id"]) for e in source.entries]
    split = split_hash(*([ids[i] for i in part] for part in (fold.train, fold.val, fold.test)))
    if resume and dist.broadcast(ckpt_path.exists()):
        ck = _on_main(dist, check_resumable, ckpt_path, cfg, source.hash, fold.name, split)
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
    loader = make_loader(cfg, train_ds, tc.batch_size // dist.world, sampler)
    logger = _EpochLog(fold_dir, history) if dist.main else None
    meta = run_meta(cfg, source, {"fold": fold.name, "test_groups": fold.test_groups})

    for epoch in range(start, tc.epochs):
        t0, lr = time.time(), tc.lr_at(epoch)
        for group in opt.param_groups:
            group["lr"] = lr
        sampler.set_epoch(epoch)
        net.train()
        loss_sum, count = 0.0, 0
        bar = progress_bar(loader, enabled=progress and dist.main, leave=False, unit="batch",
                   desc=f"{fold.name} epoch {epoch + 1}/{tc.epochs}")
        # The loss stays on the device: one host sync per train.log_every steps (and at the end of
        # the epoch) reads the running sum and the first step whose loss was not finite.
        stats = torch.zeros(2, dtype=torch.float64, device=dist.device)  # Σ loss·n, n
        first_bad = torch.full((), -1, dtype=torch.int64, device=dist.device)  # first non-finite step
        for step, batch in enumerate(bar):
            audio, text, audio_lengths, text_lengths, starts, y = model_inputs(
                batch, dist.device, tc.zero, cfg.model.align == "forced")
            with precision.autocast():
                out = net(audio, text, audio_lengths, text_lengths, starts)
            loss = loss_fn(task, out, y)
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
                                        "train.grad_clip, or check the features for NaN/Inf"
                                        + _non_finite_features(train_ds, source) + ".")
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
                "format": 2, "fold": fold.name, "split": split, "epoch": epoch + 1, "config": cfg.to_dict(),
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
