"""A model on a dataset: predictions, metrics, the predictions file; trained models found and loaded."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import metrics as M
from ..config import MFDRConfig, RunConfig, format_diff
from ..errors import CheckpointError, InputError, MissingFileError
from ..progress import bar as progress_bar
from .batches import class_names, make_loader, model_inputs, precision_of
from .checkpoint import load_checkpoint
from .distributed import Dist
from .files import atomic_write_text
from .rundir import _fold_dirs

log = logging.getLogger("mfdr.run")


@torch.no_grad()
def predict_dataset(model, dataset, cfg: RunConfig, dist: Dist | None = None, progress: bool = False) -> dict:
    """Run ``model`` over ``dataset``, sharded over the processes and gathered in dataset order.

    Returns ``{"id": [N ids], "label": (N,), "output": (N, C) logits or (N,) scores, "loss": mean}``.
    """
    raw = model.module if hasattr(model, "module") else model
    dist = dist or Dist(device=next(raw.parameters()).device)
    was_training = raw.training
    raw.eval()
    shard = list(range(dist.rank, len(dataset), dist.world))
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    batches = make_loader(cfg, torch.utils.data.Subset(dataset, shard), batch_size)
    rows, pos = [], iter(shard)  # (position in dataset, id, label, output, loss) per utterance
    for batch in progress_bar(batches, enabled=progress, leave=False, desc="evaluate", unit="batch"):
        audio, text, al, tl, starts, y = model_inputs(batch, dist.device, cfg.train.zero,
                                                      cfg.model.align == "forced")
        with precision_of(cfg, dist.device).autocast():
            out = raw(audio, text, al, tl, starts).float()
        loss = (F.cross_entropy(out, y, reduction="none") if cfg.model.task == "classification"
                else F.l1_loss(out, y.float(), reduction="none"))
        for i, u in enumerate(batch["id"]):
            rows.append((next(pos), u, y[i].item(), out[i].cpu().numpy(), loss[i].item()))
    raw.train(was_training)
    rows = sorted((r for part in dist.gather(rows) for r in part), key=lambda r: r[0])
    if not rows:
        raise InputError("predict_dataset: the dataset is empty")
    label_dtype = torch.int64 if cfg.model.task == "classification" else torch.float32
    return {"id": [r[1] for r in rows], "label": torch.tensor([r[2] for r in rows], dtype=label_dtype),
            "output": torch.from_numpy(np.stack([r[3] for r in rows])),
            "loss": float(np.mean([r[4] for r in rows]))}




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
        raise MissingFileError(f"no trained model at {path}: expected a run folder (fold-*/best/), a fold "
                                "folder, a model folder (config.json, model.safetensors) or a checkpoint.pt")
    return found


def load_model(path, config: MFDRConfig | None = None, *, device="cpu"):
    """``(model, meta)`` from a model folder (``best/``) or a ``checkpoint.pt``, in eval mode.

    ``config``: the model config the caller expects; a model saved with another one raises
    ``CheckpointError`` listing the differences. ``meta``: task, classes, feature extractors ({} if
    unknown).
    """
    from ..model import MFDR

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
    from safetensors import SafetensorError

    try:
        model = MFDR.from_pretrained(path, config, map_location=device)
    except SafetensorError as e:
        raise CheckpointError(f"model weights {path / 'model.safetensors'} cannot be read ({e}): the file is "
                              "truncated or corrupt; restore it, or use the fold's checkpoint.pt") from None
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    meta_path = path / "meta.json"
    return model, (json.loads(meta_path.read_text()) if meta_path.exists() else {})


def evaluate_run(run: Path, cfg: RunConfig, *, device=None, progress: bool = False) -> dict:
    """Re-test every fold's best model of the run folder ``run`` (config ``cfg``) on its test split."""
    from ..protocols import DataSource, make_folds

    source = DataSource(cfg)
    results, unfinished = [], []
    for fold in make_folds(source.entries, cfg.data, cfg.train.seed, cfg.model.task):
        best = Path(run) / fold.name / "best"
        if not best.is_dir():
            print(f"{fold.name}: no best/ model, skipped")
            continue
        model, meta = load_model(best, cfg.model, device=device or "cpu")
        if not (Path(run) / fold.name / "result.json").is_file():  # training stopped before the fold's end
            unfinished.append(fold.name)
            log.warning("%s is not finished (no result.json; its best/ is from epoch %s of %d): scoring the model "
                        "it has so far. Finish it with `mfdr train --out %s --resume`.", fold.name,
                        meta.get("epoch", "?"), cfg.train.epochs, run)
        pred = predict_dataset(model, source.dataset(fold.test), cfg, progress=progress)
        results.append({"fold": fold.name, "test_groups": fold.test_groups, "n_test": len(fold.test),
                        "best_epoch": meta.get("epoch"), "test": prediction_metrics(pred, cfg)})
    if not results:
        raise InputError(f"{run}: no fold has a trained model (fold-*/best/)")
    summary = M.summarize_folds(results, task=cfg.model.task, protocol=cfg.data.protocol, select=cfg.select)
    if unfinished:
        summary["unfinished"] = unfinished
    return summary


def evaluate_model(path: Path, features, base: RunConfig | None = None, *, split: str = "all", device=None,
                   progress: bool = False) -> dict:
    """One model (a ``best/`` folder or a checkpoint) on the utterances of the feature cache ``features``
    (``split``: ``all`` or a split name); ``base``: a config the model must match (None: any)."""
    import dataclasses

    from ..protocols import DataSource

    if not features:
        raise InputError("evaluating one model needs --features (the feature cache to test on)")
    model, meta = load_model(path, base.model if base is not None else None, device=device or "cpu")
    base = base or RunConfig()
    classes = tuple(meta.get("classes") or base.data.classes)
    cfg = RunConfig(model=model.config, features=base.features,
                    train=dataclasses.replace(base.train, zero=meta.get("zero"), device=device),
                    data=dataclasses.replace(base.data, dataset="manifest", features=str(features),
                                             classes=classes))
    source = DataSource(cfg)
    index = [i for i, e in enumerate(source.entries) if split == "all" or e.get("split") == split]
    if not index:
        raise InputError(f"no utterance of {features} has split {split!r}")
    pred = predict_dataset(model, source.dataset(index), cfg, progress=progress)
    result = {"fold": str(path), "test_groups": [split], "n_test": len(index),
              "best_epoch": meta.get("epoch"), "test": prediction_metrics(pred, cfg)}
    return M.summarize_folds([result], task=cfg.model.task, protocol=f"{features} ({split})")
