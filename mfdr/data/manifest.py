"""Utterance records and the generic manifest (CSV or JSONL) for users' own recordings (SPEC §6).

A manifest lists one utterance per row with the columns ``id, wav, text, label, speaker``, and
optionally ``session``, ``split`` and ``alignment``; any other column is kept in ``Record.extra``.
Relative ``wav`` and ``alignment`` paths are resolved against the manifest's folder.

    id,wav,text,label,speaker,alignment
    u0001,wavs/u0001.wav,I can't believe you did that.,angry,spk1,aligned/u0001.TextGrid

``alignment`` names the utterance's word alignment: a Praat TextGrid with a ``words`` tier (as the
Montreal Forced Aligner writes) or a ``word,start,end`` CSV (``mfdr.data.alignment``); the words land in
``Record.words``. An empty cell means no alignment.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config.run import EMOTIONS  # noqa: F401  (the IEMOCAP four, defined once; re-exported)
from ..errors import DataError

log = logging.getLogger("mfdr.data")


"""The four emotion classes, in the order of their integer labels."""

REQUIRED_COLUMNS = ("id", "wav", "text", "label", "speaker")
OPTIONAL_COLUMNS = ("session", "split", "alignment")
ON_ERROR = ("raise", "skip")


@dataclass
class Record:
    """One utterance: where its audio is, what was said, and who said it with which label.

    ``label`` is a class name (``"happy"``) or, for regression corpora, a number.
    ``session`` is an int for IEMOCAP (1–5) or whatever the manifest gives (``None`` if absent).
    ``words`` is the word alignment, ``((word, start_s, end_s), ...)`` in time order, or ``None`` when
    there is none (SPEC §6); ``alignment`` the file it was read from.
    """

    id: str
    wav: Path
    text: str
    label: Any
    speaker: str
    session: Any = None
    split: str | None = None
    extra: dict = field(default_factory=dict)
    words: tuple | None = None
    alignment: Path | None = None

    def to_dict(self) -> dict:
        """A JSON-friendly dict (``wav`` as a string; ``extra`` columns flattened in)."""
        d = {"id": self.id, "wav": str(self.wav), "text": self.text, "label": self.label,
             "speaker": self.speaker}
        if self.session is not None:
            d["session"] = self.session
        if self.split is not None:
            d["split"] = self.split
        if self.alignment is not None:
            d["alignment"] = str(self.alignment)
        d.update(self.extra)
        return d


class Records(list):
    """A list of ``Record`` that also carries what the reader found.

    Attributes: ``counts`` (label -> number kept), ``skipped`` (list of ``(where, why)`` pairs
    for entries dropped because of ``on_error="skip"``), ``dropped`` (label -> number of
    utterances whose label is not used, e.g. IEMOCAP's ``fru``).
    """

    def __init__(self, items=(), *, skipped=None, dropped=None):
        super().__init__(items)
        self.skipped: list[tuple[str, str]] = list(skipped or [])
        self.dropped: Counter = Counter(dropped or {})

    @property
    def counts(self) -> Counter:
        return Counter(str(r.label) for r in self)

    @property
    def aligned(self) -> int:
        """Number of records with a word alignment (``words`` not None)."""
        return sum(r.words is not None for r in self)

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items()))
        text = f"{len(self)} utterances ({counts})"
        if self.dropped:
            text += f"; dropped by label: {sum(self.dropped.values())}"
        if self.skipped:
            text += f"; skipped as bad: {len(self.skipped)}"
        if self.aligned:
            text += f"; word alignments: {self.aligned} of {len(self)}"
        return text


def check_on_error(on_error: str) -> None:
    if not isinstance(on_error, str) or on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def as_path(name: str, value) -> Path:
    """``value`` (str or os.PathLike) as a Path; anything else is a TypeError naming ``name``."""
    if isinstance(value, (str, os.PathLike)):
        return Path(value)
    raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")


def bad_entry(message: str, on_error: str, skipped: list | None = None, where: str = "",
              error: type[Exception] = DataError) -> None:
    """Raise ``error(message)``, or, with ``on_error="skip"``, warn and note it in ``skipped``."""
    if on_error == "raise":
        raise error(message + " (on_error='skip' skips such entries with a warning)")
    warnings.warn(message + " (skipped)", stacklevel=3)
    log.warning("%s (skipped)", message)
    if skipped is not None:
        skipped.append((where, message))


def _rows(path: Path):
    """Yield ``(line_number, row dict)`` from a CSV or JSONL manifest; text that is not UTF-8 is a
    ``DataError`` naming the file."""
    try:
        yield from _raw_rows(path)
    except UnicodeDecodeError as e:
        raise DataError(f"manifest {path}: not UTF-8 text ({e})") from e


def _raw_rows(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: the byte-order mark Excel writes at the start is not part of the first column's name
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"manifest {path}: missing columns {missing}; expected at least "
                                f"{list(REQUIRED_COLUMNS)}, found {reader.fieldnames}")
            for row in reader:
                yield reader.line_num, row
    elif suffix in (".jsonl", ".json"):
        with open(path, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"manifest {path}, line {n}: not valid JSON ({e})") from e
                if not isinstance(row, dict):
                    raise DataError(f"manifest {path}, line {n}: expected a JSON object, got "
                                    f"{type(row).__name__}")
                yield n, row
    else:
        raise DataError(f"manifest {path}: expected a .csv or .jsonl file, got suffix {suffix!r}")


def _record_from_row(row: dict, where: str, base: Path, labels, check_wavs: bool) -> Record:
    """Validate one manifest row; raise ``DataError`` naming ``where`` if it is bad."""
    if None in row:  # a CSV row with more fields than the header has columns (csv.DictReader's restkey)
        raise DataError(f"{where}: {len(row) - 1 + len(row[None])} fields, but the header has {len(row) - 1} "
                        f"columns (extra: {row[None]!r}); quote a text that holds a comma")
    missing = [c for c in REQUIRED_COLUMNS if row.get(c) in (None, "") and c != "text"]
    if missing:
        raise DataError(f"{where}: empty or missing {missing}")
    text = row.get("text")
    if text is None or not str(text).strip():
        raise DataError(f"{where}: empty transcript for id {row['id']!r}")
    for column in ("id", "wav", "speaker"):
        if not isinstance(row[column], (str, int)) or isinstance(row[column], bool):
            raise DataError(f"{where}: {column} must be a string, got {type(row[column]).__name__} "
                            f"{row[column]!r}")
    label = row["label"]
    if labels is not None and label not in labels:
        raise DataError(f"{where}: unknown label {label!r} for id {row['id']!r}; expected one of "
                        f"{list(labels)}")
    wav = Path(str(row["wav"])).expanduser()
    wav = wav if wav.is_absolute() else base / wav
    alignment = row.get("alignment")
    if alignment not in (None, ""):
        alignment = Path(str(alignment)).expanduser()
        alignment = alignment if alignment.is_absolute() else base / alignment
    else:
        alignment = None
    if check_wavs and not wav.is_file():
        raise DataError(f"{where}: wav file {wav} does not exist (id {row['id']!r})")
    extra = {k: v for k, v in row.items() if k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    session = row.get("session")
    return Record(id=str(row["id"]), wav=wav, text=str(text).strip(), label=label,
                  speaker=str(row["speaker"]), session=None if session == "" else session,
                  split=row.get("split") or None, extra=extra, alignment=alignment)


def read_words(rec: Record, where: str, on_error: str, skipped: list | None = None) -> None:
    """Set ``rec.words`` from ``rec.alignment`` (checked against the wav's duration when it is readable).
    A bad file raises ``AlignmentError`` naming it, or, with ``on_error="skip"``, warns and leaves None."""
    from .alignment import AlignmentError, audio_duration, read_alignment

    if rec.alignment is None:
        return
    try:
        rec.words = read_alignment(rec.alignment, audio_duration(rec.wav) if rec.wav.is_file() else None)
    except AlignmentError as e:
        bad_entry(f"{where}: {e}", on_error, skipped, where, error=AlignmentError)
        rec.words = None


def read_manifest(path, *, labels=None, check_wavs: bool = True, on_error: str = "raise") -> Records:
    """Read a CSV or JSONL manifest with columns ``id, wav, text, label, speaker`` (+ optional
    ``session``, ``split``, anything else goes to ``Record.extra``).

    Args:
        path: the ``.csv`` or ``.jsonl`` file; relative wav paths are taken from its folder.
        labels: if given, the allowed labels (e.g. ``EMOTIONS``); any other label is an error.
        check_wavs: check that every wav file exists.
        on_error: ``"raise"`` (default) stops at the first bad row with an error naming the file
            and line; ``"skip"`` warns, drops the row and lists it in ``Records.skipped``. A bad
            alignment file (unparsable, times outside the audio or decreasing) raises
            ``AlignmentError`` naming it, or under ``"skip"`` warns and keeps the row with ``words=None``.
    Returns:
        ``Records`` (a list of ``Record``) in file order; ``Record.words`` from the ``alignment`` column.
    """
    check_on_error(on_error)
    path = as_path("path", path)
    if isinstance(labels, str) or (labels is not None and not hasattr(labels, "__contains__")):
        raise TypeError(f"labels must be a collection of label names (e.g. a tuple), got "
                        f"{type(labels).__name__} {labels!r}")
    if not path.is_file():
        raise DataError(f"manifest {path} does not exist")
    records, skipped, seen = [], [], {}
    for line, row in _rows(path):
        where = f"manifest {path}, line {line}"
        try:
            rec = _record_from_row(row, where, path.parent, labels, check_wavs)
        except DataError as e:
            bad_entry(str(e), on_error, skipped, where)
            continue
        if rec.id in seen:
            raise DataError(f"{where}: duplicate id {rec.id!r} (first on line {seen[rec.id]})")
        seen[rec.id] = line
        read_words(rec, where, on_error, skipped)
        records.append(rec)
    out = Records(records, skipped=skipped)
    log.info("read_manifest(%s): %s", path, out.summary())
    return out


def _relative(p: Path, folder: Path) -> Path:
    """``p`` relative to ``folder`` when it lies inside it, else unchanged."""
    if p.is_absolute():
        try:
            return p.resolve().relative_to(folder.resolve())
        except ValueError:
            pass
    return p


def write_manifest(records, path) -> Path:
    """Write records (``Record`` or dicts) as CSV or JSONL, chosen by ``path``'s suffix.

    Wav and alignment paths inside the manifest's folder are written relative to it, so the folder can move.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in records:
        d = r.to_dict() if isinstance(r, Record) else dict(r)
        wav = _relative(Path(d["wav"]), path.parent)
        d["wav"] = wav.as_posix()
        if d.get("alignment"):
            d["alignment"] = _relative(Path(d["alignment"]), path.parent).as_posix()
        rows.append(d)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        columns = list(REQUIRED_COLUMNS)
        for d in rows:
            columns += [k for k in d if k not in columns]
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
    elif suffix in (".jsonl", ".json"):
        with open(path, "w", encoding="utf-8") as f:
            for d in rows:
                f.write(json.dumps(d, ensure_ascii=False) + "\n")
    else:
        raise ValueError(f"write_manifest: path must end in .csv or .jsonl, got {path}")
    return path
