"""torch ``Dataset``s over a feature cache or an MMSA split, and the padding collate.

A batch from ``collate`` (``B`` utterances)::

    audio          (B, audio_len, audio_dim) float32, zero-padded / truncated
    text           (B, text_len, text_dim)   float32, zero-padded / truncated
    audio_lengths  (B,) int64   valid frames, ≤ audio_len
    text_lengths   (B,) int64   valid tokens, ≤ text_len
    window_starts  (B, text_len) int64: start frame of each token's word window (forced word alignment,
                   SPEC §6), padded with the last valid start; -1 on every token of an utterance
                   without an alignment (``MFDRConfig.align="forced"`` gives those ``"stretch"`` windows)
    label          (B,) int64 (classification) or float32 (regression)
    id             list of B str
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import FeatureCache
from .manifest import EMOTIONS, DataError
from .mmsa import MMSASplit

TASKS = ("classification", "regression")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


class FeatureDataset(Dataset):
    """Utterances of a ``FeatureCache`` (lazy reads), optionally a subset.

    Args:
        cache: a ``FeatureCache`` (or its folder).
        indices: positions in the cache to use (default all), e.g. one cross-validation fold.
        task: ``"classification"`` maps string labels to their position in ``classes``;
            ``"regression"`` returns ``float(label)``. A missing label (``None``, unlabelled data
            to predict) gives -1, or NaN for regression.
        classes: the class names in label order (default ``EMOTIONS``).
        stats: ``feature_stats(...)`` of the training data: features are then standardised,
            ``(x - mean) / std`` per dimension (useful for log-mel features).
    Items: ``{"id", "audio" (T, audio_dim), "text" (L, text_dim), "window_starts" (L,) int64 or None,
    "label", "speaker", "session"}``.
    """

    def __init__(self, cache, indices: Sequence[int] | None = None, *, task: str = "classification",
                 classes: Sequence[str] = EMOTIONS, stats: dict | None = None):
        _check_task(task)
        self.cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
        self.indices = list(range(len(self.cache))) if indices is None else [int(i) for i in indices]
        self.task, self.classes, self.stats = task, tuple(classes), stats
        self.labels = [self._label(self.cache.entries[i]) for i in self.indices]

    def _label(self, entry: dict):
        label = entry["label"]
        if label is None:
            return float("nan") if self.task == "regression" else -1
        if self.task == "regression":
            try:
                return float(label)
            except (TypeError, ValueError):
                raise DataError(f"feature cache {self.cache.path}: utterance {entry['id']!r} has label "
                                f"{label!r}, expected a number for task='regression'") from None
        if isinstance(label, (int, np.integer)) and not isinstance(label, bool) \
                and 0 <= label < len(self.classes):
            return int(label)
        if label not in self.classes:
            raise DataError(f"feature cache {self.cache.path}: utterance {entry['id']!r} has label "
                            f"{label!r}, expected one of {list(self.classes)}")
        return self.classes.index(label)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        item = self.cache[self.indices[i]]
        audio, text = item["audio"], item["text"]
        if self.stats is not None:
            audio = (audio - self.stats["audio_mean"]) / self.stats["audio_std"]
            text = (text - self.stats["text_mean"]) / self.stats["text_std"]
        return {"id": item["id"], "audio": audio, "text": text, "window_starts": item.get("window_starts"),
                "label": self.labels[i], "speaker": item.get("speaker"), "session": item.get("session")}

    @property
    def unaligned_ids(self) -> list[str]:
        """Ids of this dataset's utterances without word-window starts (``align="forced"`` gives them
        ``"stretch"`` windows)."""
        missing = set(self.cache.unaligned_ids)
        return [self.cache.entries[i]["id"] for i in self.indices if self.cache.entries[i]["id"] in missing]


def feature_stats(cache, indices: Sequence[int] | None = None, eps: float = 1e-5) -> dict:
    """Per-dimension mean and std over all valid frames / tokens of ``cache`` (or a subset).

    Returns ``{"audio_mean", "audio_std" (audio_dim,), "text_mean", "text_std" (text_dim,)}``
    float32 tensors (std floored at ``eps``), for ``FeatureDataset(stats=...)``. Compute them on the
    training fold only.
    """
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    indices = range(len(cache)) if indices is None else indices
    sums: dict = {}
    for i in indices:
        item = cache[i]
        for key in ("audio", "text"):
            x = item[key].double()
            n, s, s2 = sums.get(key, (0, 0.0, 0.0))
            sums[key] = (n + len(x), s + x.sum(0), s2 + (x * x).sum(0))
    if not sums:
        raise ValueError("feature_stats: no utterances selected")
    out = {}
    for key, (n, s, s2) in sums.items():
        mean = s / max(n, 1)
        var = (s2 / max(n, 1) - mean * mean).clamp(min=0)
        out[f"{key}_mean"], out[f"{key}_std"] = mean.float(), var.sqrt().clamp(min=eps).float()
    return out


class MMSADataset(Dataset):
    """Utterances of one ``MMSASplit`` (from ``read_mmsa``), each cut to its valid length.

    Items: ``{"id", "audio" (audio_lengths[i], audio_dim), "text" (text_lengths[i], text_dim),
    "label"}``; the label is the float regression score, or ``task="classification"`` with
    ``threshold``: 1 if ``label >= threshold`` else 0 (MMSA's "Has0" binarisation at 0).
    """

    def __init__(self, split: MMSASplit, *, task: str = "regression", threshold: float = 0.0):
        _check_task(task)
        self.split, self.task, self.threshold = split, task, threshold

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict:
        s = self.split
        label = float(s.label[i])
        if self.task == "classification":
            label = int(label >= self.threshold)
        return {"id": str(s.id[i]), "audio": torch.from_numpy(s.audio[i, : s.audio_lengths[i]]),
                "text": torch.from_numpy(s.text[i, : s.text_lengths[i]]), "label": label}


def _pad(seqs: list, length: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``seqs[i] (n_i, D)`` → ``(B, length, D)`` zero-padded/truncated and lengths ``(B,)`` int64."""
    seqs = [torch.as_tensor(x, dtype=torch.float32) for x in seqs]
    dims = {x.shape[-1] for x in seqs if x.ndim == 2}
    if len(dims) != 1 or any(x.ndim != 2 for x in seqs):
        raise ValueError(f"collate: expected 2-D (length, dim) features with one dim, got shapes "
                         f"{[tuple(x.shape) for x in seqs]}")
    lengths = torch.tensor([len(x) for x in seqs], dtype=torch.int64)
    length = int(lengths.max()) if length is None else length
    lengths = lengths.clamp(max=length)
    out = torch.zeros(len(seqs), length, dims.pop())
    for i, x in enumerate(seqs):
        out[i, : lengths[i]] = x[: lengths[i]]
    return out, lengths


def _pad_starts(batch: list[dict], lengths: torch.Tensor, length: int) -> torch.Tensor:
    """``(B, length)`` int64 window starts: each item's ``window_starts`` cut to its token count and padded
    with its last start (so they never decrease); -1 rows for items without them."""
    out = torch.full((len(batch), length), -1, dtype=torch.int64)
    for i, b in enumerate(batch):
        s = b.get("window_starts")
        n = int(lengths[i])
        if s is None or n == 0:
            continue
        s = torch.as_tensor(s, dtype=torch.int64)
        if s.ndim != 1 or len(s) < n:
            raise ValueError(f"collate: item {b.get('id')!r} has window_starts of shape {tuple(s.shape)}, "
                             f"expected ({n},) or longer: one start per token")
        out[i, :n] = s[:n]
        out[i, n:] = s[n - 1]
    return out


def collate(batch: list[dict], audio_len: int | None = 255, text_len: int | None = 50) -> dict:
    """Stack dataset items into a padded batch (see the module docstring for shapes).

    ``audio_len`` / ``text_len``: pad or truncate to these lengths (``None``: the batch's longest).
    Labels that are all ints give int64, otherwise float32.
    """
    if not batch:
        raise ValueError("collate: empty batch")
    audio, audio_lengths = _pad([b["audio"] for b in batch], audio_len)
    text, text_lengths = _pad([b["text"] for b in batch], text_len)
    labels = [b["label"] for b in batch]
    is_int = all(isinstance(y, (int, np.integer)) and not isinstance(y, bool) for y in labels)
    label = torch.tensor(labels, dtype=torch.int64 if is_int else torch.float32)
    starts = _pad_starts(batch, text_lengths, text.shape[1])
    return {"audio": audio, "text": text, "audio_lengths": audio_lengths, "text_lengths": text_lengths,
            "window_starts": starts, "label": label, "id": [str(b["id"]) for b in batch]}


def make_collate(audio_len: int | None = 255, text_len: int | None = 50):
    """``collate`` with fixed lengths, picklable for ``DataLoader(num_workers > 0)``."""
    return functools.partial(collate, audio_len=audio_len, text_len=text_len)
