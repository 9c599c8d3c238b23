"""Evaluation metrics (SPEC §5), in plain numpy: no scikit-learn needed at run time.

    emotion_metrics(y_true, y_pred)    -> {"wa", "ua", "macro_f1", "weighted_f1", "confusion", "labels"}
    sentiment_metrics(y_true, y_pred)  -> {"acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2",
                                           "non0_f1", "mae", "corr"}

Arguments in scikit-learn's order (truth first). The definitions follow scikit-learn
(``accuracy_score``, ``balanced_accuracy_score``, ``f1_score``, ``confusion_matrix``) and MMSA's
``MetricsTop`` for CMU-MOSI / MOSEI; the tests check both.

- **WA** (weighted accuracy): accuracy over utterances.
- **UA** (unweighted accuracy): mean per-class recall over the classes present in the truth
  (scikit-learn's ``balanced_accuracy_score``).
- **F1**: per class ``2 P R / (P + R)`` (0 where undefined, as scikit-learn's ``zero_division=0``),
  averaged plainly (macro) or by support (weighted), over ``labels`` (default: every label present
  in the truth or the predictions).
- **Acc7 / Acc5**: truth and prediction clipped to [-3, 3] / [-2, 2], rounded half to even
  (``np.round``, as MMSA), equal.
- **Has0 Acc2 / F1**: binarised ``>= 0`` over all samples (negative vs non-negative).
  **Non0 Acc2 / F1**: only samples with truth != 0, binarised ``> 0``. F1 weighted by support.
- **MAE** and Pearson **Corr** on the raw (unclipped) scores. Corr is NaN when either side is
  constant; any metric over an empty set is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _as_1d(name: str, x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim == 2 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per sample), got shape {x.shape}")
    return x


def _pair(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    t, p = _as_1d("y_true", y_true), _as_1d("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred must have the same length, got {len(t)} and {len(p)}")
    return t, p


def confusion_matrix(y_true, y_pred, labels: Sequence | None = None) -> tuple[np.ndarray, list]:
    """``(C, labels)``: ``C[i, j]`` = samples of true ``labels[i]`` predicted ``labels[j]``.

    ``labels`` default: the sorted union of the labels in ``y_true`` and ``y_pred``. Samples whose
    truth or prediction is not in ``labels`` are not counted (as scikit-learn).
    """
    t, p = _pair(y_true, y_pred)
    labels = sorted(set(t.tolist()) | set(p.tolist())) if labels is None else list(labels)
    index = {v: i for i, v in enumerate(labels)}
    C = np.zeros((len(labels), len(labels)), dtype=np.int64)
    for a, b in zip(t.tolist(), p.tolist(), strict=True):
        if a in index and b in index:
            C[index[a], index[b]] += 1
    return C, labels


def _f1_from_confusion(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class F1 (0 where precision + recall is 0 or undefined) and support."""
    tp = np.diag(C).astype(np.float64)
    pred, support = C.sum(axis=0).astype(np.float64), C.sum(axis=1).astype(np.float64)
    denom = pred + support  # F1 = 2 tp / (2 tp + fp + fn) = 2 tp / (pred + support)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return f1, support


def _weighted_f1(C: np.ndarray) -> float:
    f1, support = _f1_from_confusion(C)
    return float((f1 * support).sum() / support.sum()) if support.sum() > 0 else 0.0


def emotion_metrics(y_true, y_pred, labels: Sequence | None = None) -> dict:
    """Classification metrics for IEMOCAP-style emotion recognition.

    Args:
        y_true, y_pred: class indices (or any hashable labels), one per utterance.
        labels: the classes, in confusion-matrix order (e.g. ``range(4)``); default: the sorted
            union of the labels found.
    Returns:
        ``{"wa", "ua", "macro_f1", "weighted_f1"}`` as floats in [0, 1], ``"confusion"`` (a list of
        rows: truth, then prediction) and ``"labels"``.
    """
    t, p = _pair(y_true, y_pred)
    if len(t) == 0:
        raise ValueError("emotion_metrics: no samples")
    C, labels = confusion_matrix(t, p, labels)
    support = C.sum(axis=1)
    recall = np.diag(C)[support > 0] / support[support > 0]
    f1, _ = _f1_from_confusion(C)
    return {
        "wa": float(np.mean(t == p)),
        "ua": float(recall.mean()) if recall.size else float("nan"),
        "macro_f1": float(f1.mean()),
        "weighted_f1": _weighted_f1(C),
        "confusion": C.tolist(),
        "labels": [x.item() if hasattr(x, "item") else x for x in labels],
    }


def _binary(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Accuracy and weighted F1 of two boolean arrays (NaN, NaN when empty)."""
    if truth.size == 0:
        return float("nan"), float("nan")
    C, _ = confusion_matrix(truth, pred, labels=[False, True])
    return float(np.mean(truth == pred)), _weighted_f1(C)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.size < 2:
        return float("nan")
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else float("nan")


def sentiment_metrics(y_true, y_pred) -> dict:
    """MMSA's regression metrics for CMU-MOSI / CMU-MOSEI sentiment scores in [-3, 3].

    Returns ``{"acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "mae", "corr"}``,
    floats (accuracies and F1 in [0, 1]; not rounded, unlike MMSA's 4-digit report).
    """
    t, p = _pair(y_true, y_pred)
    t, p = t.astype(np.float64), p.astype(np.float64)
    if len(t) == 0:
        raise ValueError("sentiment_metrics: no samples")
    if not (np.isfinite(t).all() and np.isfinite(p).all()):
        raise ValueError("sentiment_metrics: y_true and y_pred must be finite")

    def acc(bound: float) -> float:
        return float(np.mean(np.round(np.clip(p, -bound, bound)) == np.round(np.clip(t, -bound, bound))))

    has0_acc2, has0_f1 = _binary(t >= 0, p >= 0)
    nz = t != 0
    non0_acc2, non0_f1 = _binary(t[nz] > 0, p[nz] > 0)
    return {"acc7": acc(3.0), "acc5": acc(2.0), "has0_acc2": has0_acc2, "has0_f1": has0_f1,
            "non0_acc2": non0_acc2, "non0_f1": non0_f1, "mae": float(np.mean(np.abs(p - t))),
            "corr": _pearson(p, t)}


# Which way is better, for choosing the best epoch.
LOWER_IS_BETTER = frozenset({"mae", "loss"})


def task_metrics(task: str, y_true, y_pred, num_classes: int | None = None) -> dict:
    """``emotion_metrics`` (labels ``0..num_classes-1``) for classification, ``sentiment_metrics``
    for regression."""
    if task == "classification":
        return emotion_metrics(y_true, y_pred, labels=None if num_classes is None else range(num_classes))
    if task == "regression":
        return sentiment_metrics(y_true, y_pred)
    raise ValueError(f"task must be 'classification' or 'regression', got {task!r}")


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The float entries of a metrics dict (drops ``confusion`` and ``labels``)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.floating))
            and not isinstance(v, bool)}


# ---------------------------------------------------------------------- cross-validation tables
PERCENT = frozenset({"wa", "ua", "macro_f1", "weighted_f1", "acc7", "acc5", "has0_acc2", "has0_f1",
                     "non0_acc2", "non0_f1"})
NAMES = {"wa": "WA", "ua": "UA", "macro_f1": "macro F1", "weighted_f1": "weighted F1", "acc7": "Acc7",
         "acc5": "Acc5", "has0_acc2": "Has0 Acc2", "has0_f1": "Has0 F1", "non0_acc2": "Non0 Acc2",
         "non0_f1": "Non0 F1", "mae": "MAE", "corr": "Corr"}


def summarize_folds(results: list[dict], *, task: str, protocol: str = "", select: str = "",
                    pooled: dict | None = None) -> dict:
    """Mean and sample standard deviation (ddof=1; 0 for one fold) over folds of each test metric.

    ``results``: one dict per fold with ``"test"`` metrics (and ``fold``, ``test_groups``, ``n_test``,
    ``best_epoch``). ``pooled``: the metrics of all folds' test predictions together, if known.
    """
    if not results:
        raise ValueError("summarize_folds: no fold results")
    keys = [k for k in NAMES if k in results[0]["test"]]
    mean, std = {}, {}
    for k in keys:
        vals = np.array([np.nan if r["test"][k] is None else r["test"][k] for r in results], dtype=np.float64)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
    return {"task": task, "protocol": protocol, "select": select, "metrics": keys, "folds": results,
            "mean": mean, "std": std, "pooled": pooled}


def fmt(key: str, value, std=None) -> str:
    """Accuracies and F1 in % with 2 decimals, MAE and Corr with 4; ``–`` for NaN/None."""
    if value is None or not np.isfinite(value):
        return "–"
    scale, digits = (100.0, 2) if key in PERCENT else (1.0, 4)
    text = f"{value * scale:.{digits}f}"
    return text if std is None or not np.isfinite(std) else f"{text} ± {std * scale:.{digits}f}"


def results_markdown(summary: dict, title: str = "Results") -> str:
    """A Markdown table: one row per fold, mean ± std, and the pooled predictions."""
    keys = summary["metrics"]
    unit = " Accuracies and F1 in %." if any(k in PERCENT for k in keys) else ""
    lines = [f"## {title}", "",
             f"Protocol `{summary['protocol']}`; best epoch by validation `{summary['select']}`; "
             f"mean ± sample std over folds; pooled: all test predictions together.{unit}", "",
             "| fold | test | n | best epoch | " + " | ".join(NAMES[k] for k in keys) + " |",
             "|---|---|---:|---:|" + "---:|" * len(keys)]
    for r in summary["folds"]:
        groups = ", ".join(map(str, r.get("test_groups", [])))
        lines.append(f"| {r['fold']} | {groups} | {r['n_test']} | {r['best_epoch']} | "
                     + " | ".join(fmt(k, r["test"][k]) for k in keys) + " |")
    n = sum(r["n_test"] for r in summary["folds"])
    lines.append("| **mean ± std** | | | | "
                 + " | ".join(fmt(k, summary["mean"][k], summary["std"][k]) for k in keys) + " |")
    if summary.get("pooled"):
        pooled = " | ".join(fmt(k, summary["pooled"].get(k)) for k in keys)
        lines.append(f"| pooled | | {n} | | {pooled} |")
    return "\n".join(lines) + "\n"
