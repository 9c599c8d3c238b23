"""Reader for MMSA feature pickles (CMU-MOSI / CMU-MOSEI, aligned and unaligned; SPEC §6).

An MMSA pickle is ``{"train": split, "valid": split, "test": split}`` where each split is a dict
with (among others) ``id`` (N ids), ``text`` (N, L, 768) BERT features, ``audio`` (N, T, D),
optional ``audio_lengths`` (N,), optional ``text_bert`` (N, 3, L) token ids / mask / segment ids,
and ``regression_labels`` (N,) in [-3, 3]. Aligned pickles have ``T == L``.

Only pickles from a trusted source should be read: unpickling can run code.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass

import numpy as np

from .manifest import DataError, as_path

log = logging.getLogger("mfdr.data")

MMSA_SPLITS = ("train", "valid", "test")


@dataclass
class MMSASplit:
    """One split of an MMSA pickle as numpy arrays.

    ``id (N,)`` str, ``text (N, L, text_dim)`` float32, ``audio (N, T, audio_dim)`` float32 with
    non-finite values (``-inf`` in COVAREP) set to 0, ``text_lengths (N,)`` and
    ``audio_lengths (N,)`` int64 (valid rows, ≥ 1), ``label (N,)`` float32.
    """

    id: np.ndarray
    text: np.ndarray
    audio: np.ndarray
    text_lengths: np.ndarray
    audio_lengths: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.id)


def _valid_rows(x: np.ndarray) -> np.ndarray:
    """(N,) index of the last row with a non-zero entry, plus one (at least 1): padding is zeros."""
    nonzero = np.any(x != 0, axis=-1)                            # (N, T)
    T = x.shape[1]
    last = T - np.argmax(nonzero[:, ::-1], axis=1)               # (N,)
    last[~nonzero.any(axis=1)] = 1
    return last.astype(np.int64)


def _array(split: dict, key: str, where: str, ndim: int, dtype=np.float32) -> np.ndarray:
    """``split[key]`` as a numpy array of ``ndim`` dims and ``dtype``; a DataError naming the key if it
    is missing, ragged, of another rank or not numeric."""
    if key not in split:
        raise DataError(f"{where}: missing key {key!r}; found keys {sorted(split)}")
    try:
        x = np.asarray(split[key])
    except ValueError as e:
        raise DataError(f"{where}: {key!r} is not a rectangular array ({e})") from e
    if x.ndim != ndim:
        raise DataError(f"{where}: {key!r} must have {ndim} dims, got shape {x.shape}")
    try:
        return x.astype(dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{where}: {key!r} must hold numbers, got dtype {x.dtype} ({e})") from e


def _text_lengths(split: dict, text: np.ndarray, where: str) -> np.ndarray:
    if "text_bert" in split:
        tb = np.asarray(split["text_bert"])
        if tb.ndim == 3 and tb.shape[1] == 3 and tb.shape[2] == text.shape[1]:
            return np.maximum(tb[:, 1, :].sum(axis=1), 1).astype(np.int64)
        log.warning("%s: text_bert has shape %s, not (N, 3, %d); text lengths taken from "
                    "non-zero rows", where, tb.shape, text.shape[1])
    return _valid_rows(text)


def _audio_lengths(split: dict, audio: np.ndarray, where: str) -> np.ndarray:
    if split.get("audio_lengths") is None:
        return _valid_rows(audio)
    raw = np.asarray(split["audio_lengths"]).reshape(-1)
    lengths = _array({"audio_lengths": raw}, "audio_lengths", where, 1, np.int64)
    if lengths.shape[0] != audio.shape[0]:
        raise DataError(f"{where}: audio_lengths has {lengths.shape[0]} entries, expected "
                        f"{audio.shape[0]} (audio's first dim)")
    return np.clip(lengths, 1, audio.shape[1])


def _read_split(split: dict, where: str, label_key: str) -> MMSASplit:
    if not isinstance(split, dict):
        raise DataError(f"{where}: expected a dict, got {type(split).__name__}")
    for key in ("id", label_key):
        if key not in split:
            raise DataError(f"{where}: missing key {key!r}; found keys {sorted(split)}")
    ids = split["id"]
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise DataError(f"{where}: 'id' must be a sequence of ids, got {type(ids).__name__}")
    ids = np.asarray([str(i) for i in ids])
    text = _array(split, "text", where, 3)
    audio = _array(split, "audio", where, 3)
    label = _array({label_key: np.asarray(split[label_key]).reshape(-1)}, label_key, where, 1)
    n = len(ids)
    for name, x in (("text", text), ("audio", audio), (label_key, label)):
        if x.shape[0] != n:
            raise DataError(f"{where}: {name!r} has {x.shape[0]} entries, expected {n} (len of 'id')")
    for name, x in (("text", text), ("audio", audio)):
        if x.shape[1] == 0:
            raise DataError(f"{where}: {name!r} has no rows (shape {x.shape}); every utterance needs "
                            "at least one")
    bad = np.flatnonzero(~np.isfinite(label))
    if bad.size:
        raise DataError(f"{where}: {label_key!r} holds NaN/Inf for {bad.size} utterance(s), e.g. id "
                        f"{str(ids[bad[0]])!r}")
    audio = np.nan_to_num(audio, nan=0.0, posinf=0.0, neginf=0.0)
    text = np.nan_to_num(text, nan=0.0, posinf=0.0, neginf=0.0)
    return MMSASplit(id=ids, text=text, audio=audio, text_lengths=_text_lengths(split, text, where),
                     audio_lengths=_audio_lengths(split, audio, where),
                     label=label)


def read_mmsa(path, *, splits=MMSA_SPLITS, label_key: str = "regression_labels") -> dict[str, MMSASplit]:
    """Read an MMSA feature pickle into ``{split name: MMSASplit}``.

    Args:
        path: the ``.pkl`` file (e.g. ``aligned_50.pkl`` / ``unaligned_50.pkl`` of MOSI or MOSEI).
        splits: the splits to read; each must be in the pickle.
        label_key: the label array to use (``regression_labels``; ``classification_labels`` works
            too for pickles that carry it).
    """
    path = as_path("path", path)
    if isinstance(splits, str):
        splits = (splits,)
    if not path.is_file():
        raise DataError(f"MMSA pickle {path} does not exist")
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as e:
        raise DataError(f"MMSA pickle {path} cannot be read: {e}") from e
    if not isinstance(data, dict):
        raise DataError(f"MMSA pickle {path}: expected a dict of splits, got {type(data).__name__}")
    out = {}
    for name in splits:
        if name not in data:
            raise DataError(f"MMSA pickle {path}: missing split {name!r}; found {sorted(data)}")
        out[name] = _read_split(data[name], f"MMSA pickle {path} [{name}]", label_key)
    log.info("read_mmsa(%s): %s", path, ", ".join(f"{k}={len(v)}" for k, v in out.items()))
    return out
