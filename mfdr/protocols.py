"""The data of a run and the paper's evaluation protocols: which utterances train, validate and test.

``DataSource(cfg)`` opens a feature cache (or an MMSA pickle) and checks it against the model config;
``make_folds(entries, cfg.data)`` splits it. Protocols (``data.protocol``); validation never overlaps
the test split:

- ``session``: leave-one-session-out (IEMOCAP 5-fold). Test: one session. Validation: a stratified
  ``val_fraction`` of the other sessions' utterances, so the held-out session stays unseen.
- ``speaker``: leave-one-speaker-out (IEMOCAP 10-fold). Test: one speaker. Validation: the other
  speaker(s) of the same session. Training: the other sessions. Model selection is thus speaker-
  independent too, and no speaker of the test session is trained on.
- ``kfold``: ``data.folds`` folds by speaker (speakers dealt to folds, largest first, to the fold with
  the fewest utterances). Test: one fold's speakers. Validation: a stratified ``val_fraction`` of the rest.
- ``split``: the ``train`` / ``valid`` (``val``, ``dev``) / ``test`` splits given by the data (MMSA
  pickles: CMU-MOSI / MOSEI standard splits; or a manifest ``split`` column).
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

import torch

from .config import DataConfig, RunConfig
from .errors import ConfigError, DataError, MissingFileError


@dataclass
class Fold:
    """One train / validation / test partition: positions in the data source."""

    name: str
    train: list[int]
    val: list[int]
    test: list[int]
    test_groups: list[str] = field(default_factory=list)
    val_rule: str = ""


class DataSource:
    """The utterances of a run: a feature cache (``entries`` from its manifest) or an MMSA pickle
    (its three splits concatenated); ``dataset(indices)`` builds a torch ``Dataset`` of a subset."""

    def __init__(self, cfg: RunConfig):
        from .data import FeatureCache

        self.cfg, self.cache, self.mmsa = cfg, None, None
        task = cfg.model.task
        if cfg.data.dataset == "mmsa":
            from .data import read_mmsa

            if not cfg.data.path:
                raise ConfigError("data.dataset is 'mmsa': set data.path to the MMSA feature pickle")
            self.mmsa = read_mmsa(cfg.data.path)
            self.entries = [{"id": str(i), "split": name, "label": float(y), "speaker": None}
                            for name, s in self.mmsa.items() for i, y in zip(s.id, s.label, strict=True)]
            self.audio_dim = next(iter(self.mmsa.values())).audio.shape[-1]
            self.text_dim = next(iter(self.mmsa.values())).text.shape[-1]
            self.hash = None
        else:
            if not cfg.data.features:
                raise ConfigError("set data.features to the feature cache folder (written by `mfdr extract`)")
            try:
                self.cache = FeatureCache(cfg.data.features)
            except FileNotFoundError as e:
                raise MissingFileError(f"{e}. Run `mfdr extract --config ...` first, or point "
                                        "data.features (--features) at an existing cache.") from None
            if len(self.cache) == 0:
                raise DataError(f"feature cache {cfg.data.features} holds no utterances")
            self.entries = self.cache.entries
            self.audio_dim, self.text_dim = self.cache.audio_dim, self.cache.text_dim
            self.hash = self.cache.config_hash
            if task == "classification":
                bad = sorted({str(e["label"]) for e in self.entries} - set(cfg.data.classes))
                if bad:
                    raise DataError(f"feature cache {cfg.data.features} has labels {bad} that are not in "
                                     f"data.classes {list(cfg.data.classes)}")
        for name, have in (("audio_dim", self.audio_dim), ("text_dim", self.text_dim)):
            want = getattr(cfg.model, name)
            if have != want:
                raise ConfigError(f"model.{name} is {want} but the features are {have}-dimensional; "
                                 f"set model.{name}: {have}")

    def labels(self) -> list:
        return [e["label"] for e in self.entries]

    def dataset(self, indices: list[int]):
        from torch.utils.data import Subset

        from .data import FeatureDataset, MMSADataset

        task = self.cfg.model.task
        if self.cache is not None:
            return FeatureDataset(self.cache, indices, task=task, classes=self.cfg.data.classes)
        parts = [MMSADataset(s, task=task) for s in self.mmsa.values()]
        return Subset(torch.utils.data.ConcatDataset(parts), indices)


def _stratified_split(indices: list[int], labels: list, fraction: float, seed: int) -> tuple[list, list]:
    """(rest, held out): ``fraction`` of each label's indices held out (at least 1 of a label with 2+)."""
    if fraction <= 0:
        return list(indices), []
    rng = random.Random(seed)
    by_label = defaultdict(list)
    for i in indices:
        by_label[str(labels[i])].append(i)
    held = []
    for key in sorted(by_label):
        group = sorted(by_label[key])
        rng.shuffle(group)
        n = round(fraction * len(group))
        held += group[: max(n, 1 if len(group) > 1 else 0)]
    held_set = set(held)
    return [i for i in indices if i not in held_set], sorted(held)


def _deal_speakers(entries: list[dict], k: int) -> list[list[str]]:
    """Speakers into ``k`` groups of similar utterance counts (largest first, to the smallest group)."""
    counts = defaultdict(int)
    for e in entries:
        counts[str(e["speaker"])] += 1
    if len(counts) < k:
        raise DataError(f"data.protocol 'kfold' with {k} folds needs at least {k} speakers; the data has "
                         f"{len(counts)}: {sorted(counts)}")
    groups, sizes = [[] for _ in range(k)], [0] * k
    for spk in sorted(counts, key=lambda s: (-counts[s], s)):
        g = min(range(k), key=lambda j: (sizes[j], j))
        groups[g].append(spk)
        sizes[g] += counts[spk]
    return [sorted(g) for g in groups]


def _split_protocol(entries: list[dict]) -> list[Fold]:
    names = {"train": "train", "valid": "val", "val": "val", "dev": "val", "test": "test"}
    parts = {"train": [], "val": [], "test": []}
    for i, e in enumerate(entries):
        split = names.get(str(e.get("split") or "").lower())
        if split is None:
            raise DataError(f"protocol 'split': utterance {e['id']!r} has split {e.get('split')!r}; "
                             "expected train, valid (val, dev) or test")
        parts[split].append(i)
    if not parts["train"] or not parts["test"]:
        counts = {k: len(v) for k, v in parts.items()}
        raise DataError(f"protocol 'split' needs train and test utterances; found {counts}")
    return [Fold("standard", parts["train"], parts["val"], parts["test"], ["test"], "the 'valid' split")]


def _groups(entries: list[dict], data: DataConfig) -> tuple[str, list[list[str]]]:
    """The entry key that defines the held-out groups, and the groups (one per fold)."""
    if data.protocol == "kfold":
        return "speaker", _deal_speakers(entries, data.folds)
    key = "session" if data.protocol == "session" else "speaker"
    missing = [e["id"] for e in entries if e.get(key) in (None, "")]
    if missing:
        raise DataError(f"protocol {data.protocol!r} needs a {key} for every utterance; {len(missing)} "
                         f"have none (e.g. {missing[:3]})")
    values = sorted({str(e[key]) for e in entries}, key=lambda g: (len(g), g))
    if len(values) < 2:
        raise DataError(f"protocol {data.protocol!r} needs at least 2 {key}s to hold out; the data has "
                         f"{values}")
    return key, [[v] for v in values]


def make_folds(entries: list[dict], data: DataConfig, seed: int = 0,
               task: str = "classification") -> list[Fold]:
    """The folds of ``data.protocol`` over ``entries`` (dicts with ``id``, ``speaker``, ``session``,
    ``split``, ``label``). Validation subsets are drawn with ``seed + fold`` and stratified by label
    (classification)."""
    if data.protocol == "split":
        return _split_protocol(entries)
    labels = [e["label"] if task == "classification" else 0 for e in entries]
    fraction_rule = f"a stratified {data.val_fraction:g} of the training utterances"
    key, groups = _groups(entries, data)
    folds = []
    for f, group in enumerate(groups):
        held = set(group)
        test = [i for i, e in enumerate(entries) if str(e[key]) in held]
        rest = [i for i, e in enumerate(entries) if str(e[key]) not in held]
        sessions = {str(entries[i].get("session")) for i in test}
        partners = [i for i in rest if str(entries[i].get("session")) in sessions]
        if data.protocol == "speaker" and "None" not in sessions and partners:
            val, rule = partners, "the other speaker(s) of the test speaker's session"
            train = [i for i in rest if str(entries[i].get("session")) not in sessions]
        else:
            train, val = _stratified_split(rest, labels, data.val_fraction, seed + f)
            rule = fraction_rule if val else "none (the last epoch is kept)"
        folds.append(Fold(f"fold-{f}", train, val, test, sorted(group), rule))
    return folds


def folds_record(folds: list[Fold], entries: list[dict]) -> list[dict]:
    """What ``folds.json`` holds: each fold's rule and utterance ids."""
    ids = [str(e["id"]) for e in entries]
    return [{"name": f.name, "test_groups": f.test_groups, "validation": f.val_rule,
             "n_train": len(f.train), "n_val": len(f.val), "n_test": len(f.test),
             "train": [ids[i] for i in f.train], "val": [ids[i] for i in f.val],
             "test": [ids[i] for i in f.test]} for f in folds]
