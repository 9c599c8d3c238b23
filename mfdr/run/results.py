"""A run's results: pooled test metrics, the summary, figures."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..config import RunConfig
from .batches import class_names

log = logging.getLogger("mfdr.run")


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


def write_run_figures(out: Path, cfg: RunConfig, summary: dict) -> list[Path]:
    """``figures/curves.png`` (every fold) and ``figures/confusion.png`` (pooled test predictions)."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        log.warning("matplotlib is not installed: no figures (pip install matplotlib)")
        return []
    from .. import plots

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
