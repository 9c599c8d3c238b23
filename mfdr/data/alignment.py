"""Word alignments: readers for the formats they come in, and the map from text tokens to frames (SPEC §6).

An alignment is a tuple of ``(word, start_s, end_s)`` in seconds, in time order (``Record.words``).

- ``read_wdseg``: IEMOCAP's Sphinx word segmentation (``<utt>.wdseg``)::

         SFrm  EFrm    SegAScr Word
            0    12     -89934 <s>
           13    41    -204120 EXCUSE
           42    59    -121777 ME(2)
           60    71     -51025 </s>
     Total score:      -466856

  10 ms frames, the end frame inclusive: ``start = SFrm / 100``, ``end = (EFrm + 1) / 100``. Words are
  lower-cased and a pronunciation-variant suffix ``(2)`` is stripped; ``<s>``, ``</s>``, ``<sil>`` and
  noise tokens (``++BREATHING++``, ``[LAUGHTER]``) are dropped.
- ``read_textgrid``: a Praat TextGrid (long or short text format, UTF-8 or UTF-16, parsed by ``praatio``'s
  ``textgrid_io``)
  with a ``words`` tier, as the Montreal Forced Aligner writes it; empty intervals are silence.
- ``read_alignment_csv``: ``word,start,end`` rows (a header line is optional).

Each reader checks what it reads (``check_words``): finite times, ``start <= end``, starts that do not
decrease and, given the audio's duration, no word outside the audio. A bad file is an
``AlignmentError`` naming it.

``token_starts`` maps each token of a text to the start frame of the word it belongs to, through the
character offsets and word ids of a fast tokenizer (SPEC §6 "Token windows").
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .manifest import DataError

Words = tuple[tuple[str, float, float], ...]

WDSEG_FRAMES_PER_S = 100  # Sphinx frames: 10 ms
# Words may end a little past the audio (an aligner's last frame, rounding): up to this much is clipped.
END_TOLERANCE_S = 0.05
_SPHINX_MARKERS = {"<s>", "</s>", "<sil>", "<sp>", "sil", "sp"}
_NOISE = re.compile(r"^(\+\+.*\+\+|\[.*\]|<.*>)$")
_VARIANT = re.compile(r"\(\d+\)$")
_TEXTGRID_SILENCE = {"", "<eps>", "sil", "sp", "<sil>"}


class AlignmentError(DataError):
    """An alignment file is unreadable or inconsistent; the message names the file."""


# ----------------------------------------------------------------------------- checks

def check_words(words, where: str, duration: float | None = None) -> Words:
    """``words`` as a tuple of ``(str, float, float)``, checked; ``AlignmentError`` naming ``where`` if bad.

    Checks: finite times >= 0, ``start <= end``, starts non-decreasing; with the audio's ``duration`` in
    seconds, no word starts at or past the end, nor ends more than ``END_TOLERANCE_S`` past it (ends within
    the tolerance are clipped to the duration).
    """
    out, prev = [], -math.inf
    for n, item in enumerate(words):
        try:
            word, start, end = item
            start, end = float(start), float(end)
        except (TypeError, ValueError) as e:
            raise AlignmentError(f"{where}: word {n + 1} is not (word, start, end): {item!r} ({e})") from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0:
            raise AlignmentError(f"{where}: word {n + 1} {word!r} has times ({start}, {end}); expected finite "
                                 "times >= 0")
        if end < start:
            raise AlignmentError(f"{where}: word {n + 1} {word!r} ends ({end:.3f} s) before it starts "
                                 f"({start:.3f} s)")
        if start < prev:
            raise AlignmentError(f"{where}: word {n + 1} {word!r} starts at {start:.3f} s, before the previous "
                                 f"word ({prev:.3f} s); expected words in time order")
        if duration is not None:
            if start >= duration or end > duration + END_TOLERANCE_S:
                raise AlignmentError(f"{where}: word {n + 1} {word!r} ({start:.3f}-{end:.3f} s) lies outside "
                                     f"the audio ({duration:.3f} s long)")
            end = min(end, duration)
        prev = start
        out.append((str(word), start, end))
    return tuple(out)


def audio_duration(wav) -> float | None:
    """The duration in seconds of an audio file from its header (``soundfile.info``), None if unknown."""
    try:
        import soundfile as sf

        return float(sf.info(str(wav)).duration)
    except Exception:  # missing soundfile, unreadable header: the audio reader reports it later
        return None


# ----------------------------------------------------------------------------- readers

def _read_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise AlignmentError(f"alignment file {path} cannot be read: {e}") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        encoding = "utf-16"
    else:
        encoding = "utf-8-sig"
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise AlignmentError(f"alignment file {path}: not {encoding} text ({e})") from None


def clean_wdseg_word(token: str) -> str | None:
    """``"ME(2)"`` -> ``"me"``; Sphinx markers and noise tokens -> None."""
    if token.lower() in _SPHINX_MARKERS or _NOISE.match(token):
        return None
    return _VARIANT.sub("", token).lower() or None


def read_wdseg(path, duration: float | None = None) -> Words:
    """Words of an IEMOCAP / Sphinx ``.wdseg`` file (see the module docstring for the format)."""
    path = Path(path)
    lines = _read_text(path).splitlines()
    header = next((n for n, line in enumerate(lines) if line.split()), None)
    if header is None or lines[header].split()[:2] != ["SFrm", "EFrm"]:
        raise AlignmentError(f"wdseg file {path}: expected the header 'SFrm EFrm SegAScr Word' on the first "
                             f"line, got {lines[header].strip() if header is not None else '(empty file)'!r}")
    words, total = [], False
    for n, line in enumerate(lines[header + 1:], header + 2):
        fields = line.split()
        if not fields:
            continue
        if fields[0].lower() == "total":
            total = True
            break
        if len(fields) != 4:
            raise AlignmentError(f"wdseg file {path}, line {n}: expected 'SFrm EFrm SegAScr Word', got "
                                 f"{line.strip()!r}")
        try:
            sfrm, efrm, _score = int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            raise AlignmentError(f"wdseg file {path}, line {n}: frames and score must be integers, got "
                                 f"{line.strip()!r}") from None
        if efrm < sfrm:
            raise AlignmentError(f"wdseg file {path}, line {n}: end frame {efrm} before start frame {sfrm}")
        word = clean_wdseg_word(fields[3])
        if word is not None:
            words.append((word, sfrm / WDSEG_FRAMES_PER_S, (efrm + 1) / WDSEG_FRAMES_PER_S))
    if not total:
        raise AlignmentError(f"wdseg file {path}: no final 'Total score' line (a truncated file?)")
    return check_words(words, f"wdseg file {path}", duration)


def _words_tier(tiers: list[dict], path: Path, tier: str | None) -> dict:
    names = [t["name"] for t in tiers]
    if tier is not None:
        pick = [t for t in tiers if t["name"] == tier]
        if not pick:
            raise AlignmentError(f"TextGrid {path}: no tier {tier!r}; its tiers are {names}")
    else:
        # MFA names the tiers "words" and "phones", or "<speaker> - words" in a multi-speaker file
        pick = ([t for t in tiers if t["name"].lower() == "words"]
                or [t for t in tiers if t["name"].lower().endswith(" - words")])
        if len(pick) != 1:
            raise AlignmentError(f"TextGrid {path}: expected one 'words' tier (as the Montreal Forced Aligner "
                                 f"writes), found tiers {names}; pass tier= to choose one")
    return pick[0]


def _declared_sizes(text: str) -> list[int]:
    """The interval counts the interval tiers declare, in order (long: ``intervals: size = N``; short: the
    line after the tier's ``xmax``), so that a truncated file is caught (praatio stops quietly)."""
    if re.search(r"item ?\[", text):
        return [int(n) for n in re.findall(r"intervals: ?size ?= ?(\d+)", text)]
    lines = [line.strip() for line in text.splitlines()]
    return [int(lines[i + 4]) for i, line in enumerate(lines)
            if line == '"IntervalTier"' and i + 4 < len(lines) and lines[i + 4].isdigit()]


def read_textgrid(path, duration: float | None = None, *, tier: str | None = None) -> Words:
    """Words of a Praat TextGrid's ``words`` tier (long or short text format, UTF-8 or UTF-16); empty
    intervals are silence. ``tier`` names another tier. Intervals are kept in file order, so a file whose
    intervals go back in time is an error (praatio's ``openTextgrid`` would sort them)."""
    try:
        from praatio.utilities import textgrid_io
        from praatio.utilities.constants import INTERVAL_TIER
        from praatio.utilities.errors import PraatioException
    except ImportError as e:
        raise ImportError("reading TextGrid alignments needs praatio: pip install praatio  "
                          "(or pip install 'mfdr[audio]')") from e

    path = Path(path)
    text = _read_text(path)
    if "TextGrid" not in text[:300]:
        raise AlignmentError(f"TextGrid {path}: not a Praat TextGrid (no 'Object class = \"TextGrid\"' header)")
    try:
        tiers = textgrid_io.parseTextgridStr(text, includeEmptyIntervals=True)["tiers"]
        found = _words_tier(tiers, path, tier)
        if found["class"] != INTERVAL_TIER:
            raise AlignmentError(f"TextGrid {path}: tier {found['name']!r} is a point tier; expected an "
                                 "interval tier")
        declared = _declared_sizes(text)
        k = [t["name"] for t in tiers if t["class"] == INTERVAL_TIER].index(found["name"])
        if k < len(declared) and declared[k] != len(found["entries"]):
            raise AlignmentError(f"TextGrid {path}: tier {found['name']!r} declares {declared[k]} intervals "
                                 f"but holds {len(found['entries'])} (a truncated file?)")
        words = [(str(label).strip(), float(start), float(end)) for start, end, label in found["entries"]
                 if str(label).strip().lower() not in _TEXTGRID_SILENCE]
    except AlignmentError:
        raise
    except (PraatioException, ValueError, IndexError, KeyError, AttributeError, TypeError) as e:
        raise AlignmentError(f"TextGrid {path} cannot be parsed: {type(e).__name__}: {e}") from None
    return check_words(words, f"TextGrid {path}", duration)


def read_alignment_csv(path, duration: float | None = None) -> Words:
    """Words of a ``word,start,end`` CSV (seconds; a header line ``word,start,end`` is optional)."""
    path = Path(path)
    rows = list(csv.reader(_read_text(path).splitlines()))
    words = []
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if n == 1 and [c.strip().lower() for c in row] == ["word", "start", "end"]:
            continue
        if len(row) != 3:
            raise AlignmentError(f"alignment CSV {path}, line {n}: expected 3 columns word,start,end, got {row}")
        try:
            words.append((row[0].strip(), float(row[1]), float(row[2])))
        except ValueError:
            raise AlignmentError(f"alignment CSV {path}, line {n}: start and end must be numbers (seconds), "
                                 f"got {row}") from None
    return check_words(words, f"alignment CSV {path}", duration)


def write_alignment_csv(words, path) -> Path:
    """Write ``words`` as a ``word,start,end`` CSV with a header (times rounded to 0.1 ms)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["word", "start", "end"])
        w.writerows([(word, f"{start:.4f}", f"{end:.4f}") for word, start, end in words])
    return path


def read_alignment(path, duration: float | None = None) -> Words:
    """Read a TextGrid (``.TextGrid``), a CSV (``.csv``) or a Sphinx ``.wdseg`` file, by its suffix."""
    path = Path(path)
    if not path.is_file():
        raise AlignmentError(f"alignment file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".textgrid":
        return read_textgrid(path, duration)
    if suffix == ".csv":
        return read_alignment_csv(path, duration)
    if suffix == ".wdseg":
        return read_wdseg(path, duration)
    raise AlignmentError(f"alignment file {path}: expected a .TextGrid, .csv or .wdseg file, got suffix {suffix!r}")


# ----------------------------------------------------------------------------- tokens -> frames

def _letters(items: Sequence[tuple[str, int]]) -> tuple[str, list[int]]:
    """Lower-cased letters and digits of ``(text, owner)`` pieces, and each letter's owner."""
    chars, owners = [], []
    for text, owner in items:
        for c in text.lower():
            if c.isalnum():
                chars.append(c)
                owners.append(owner)
    return "".join(chars), owners


def char_words(text: str, words: Sequence[str]) -> list[int]:
    """For each character of ``text``, the index of the aligned word it belongs to, or -1.

    Letters and digits of the text and of the words are matched as two sequences (``difflib``), so
    punctuation, contractions (``can't``), hyphens and small spelling differences do not matter.
    """
    a, a_pos = _letters([(c, i) for i, c in enumerate(text)])
    b, b_word = _letters([(w, k) for k, w in enumerate(words)])
    out = [-1] * len(text)
    for i, j, n in difflib.SequenceMatcher(None, a, b, autojunk=False).get_matching_blocks():
        for d in range(n):
            out[a_pos[i + d]] = b_word[j + d]
    return out


def frame_of(seconds: float, frame_rate: float) -> int:
    """``floor(seconds * frame_rate)``, robust to rounding (0.58 s at 50/s is frame 29, not 28)."""
    return int(math.floor(seconds * frame_rate + 1e-6))


def token_starts(text: str, words: Words, word_ids: Sequence[int | None],
                 offsets: Sequence[tuple[int, int]], frame_rate: float) -> list[int] | None:
    """Start frame of each token's word (SPEC §6), or None when no token matches an aligned word.

    Args:
        text: the transcript the tokens come from.
        words: its alignment, ``(word, start_s, end_s)`` in time order.
        word_ids: per token, the fast tokenizer's word index (None for special and padding tokens).
        offsets: per token, its ``(start, end)`` characters in ``text``.
        frame_rate: frames per second of the audio features.
    Each tokenizer word takes the aligned word most of its characters match; tokens of words that match
    none (punctuation, words the aligner skipped), special tokens and padding take the start of the
    nearest preceding word (the first word's for a leading ``[CLS]``), so the starts never decrease.
    """
    if len(word_ids) != len(offsets):
        raise ValueError(f"token_starts: {len(word_ids)} word ids but {len(offsets)} offsets")
    owner = char_words(text, [w for w, _, _ in words])
    votes: dict[int, Counter] = {}
    for wid, (a, b) in zip(word_ids, offsets, strict=True):
        if wid is not None:
            votes.setdefault(wid, Counter()).update(k for k in owner[a:b] if k >= 0)
    word_of = {wid: c.most_common(1)[0][0] for wid, c in votes.items() if c}
    frames = [frame_of(s, frame_rate) for _, s, _ in words]
    raw = [frames[word_of[wid]] if wid in word_of else None for wid in word_ids]
    known = [s for s in raw if s is not None]
    if not known:
        return None
    out, last = [], known[0]
    for s in raw:
        last = last if s is None else max(last, s)
        out.append(last)
    return out
