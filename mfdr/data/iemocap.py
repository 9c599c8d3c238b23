"""Reader for the raw IEMOCAP release (SPEC §6).

Layout read (per session ``n``)::

    Session{n}/dialog/EmoEvaluation/<dialog>.txt     one summary line per utterance:
        [6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]
        (followed by per-evaluator ``C-E1:``/``A-E1:`` lines, which are ignored)
    Session{n}/dialog/transcriptions/<dialog>.txt    ``Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.``
        (plus lines such as ``M: [BREATHING]`` or ids absent from the evaluation, which are ignored)
    Session{n}/sentences/wav/<dialog>/<utterance id>.wav
    Session{n}/sentences/ForcedAlignment/<dialog>/<utterance id>.wdseg   Sphinx word segmentation
        (``mfdr.data.alignment.read_wdseg``) -> ``Record.words``; a few files are missing (words None)

Labels: ``neu``→neutral, ``hap``/``exc``→happy, ``ang``→angry, ``sad``→sad; the other IEMOCAP
codes (``fru sur fea dis oth xxx``) are dropped and counted. The speaker is the session plus the
gender letter of the id's last part (``Ses01F_impro01_M000`` → ``Ses01M``). The full release gives
5,531 utterances (1,708 neutral / 1,636 happy / 1,103 angry / 1,084 sad).
"""

from __future__ import annotations

import logging
import operator
import re
from collections import Counter
from pathlib import Path

from .alignment import AlignmentError, audio_duration, read_wdseg
from .manifest import DataError, Record, Records, as_path, bad_entry, check_on_error

log = logging.getLogger("mfdr.data")

IEMOCAP_LABELS = {"neu": "neutral", "hap": "happy", "exc": "happy", "ang": "angry", "sad": "sad"}
IEMOCAP_DROPPED = ("fru", "sur", "fea", "dis", "oth", "xxx")

_EVAL_LINE = re.compile(r"^\[\s*[\d.]+\s*-\s*[\d.]+\s*\]\s+(Ses\S+)\s+(\S+)\s+\[")
_TRANSCRIPT_LINE = re.compile(r"^(Ses\S+?)\s*\[[^\]]*\]:\s?(.*?)\s*$")
_UTT_ID = re.compile(r"^Ses(\d\d)[MF]_\S+_([MF])\d+$")


def _read_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read().splitlines()


def parse_evaluation(path: Path) -> list[tuple[int, str, str]]:
    """``(line number, utterance id, label code)`` for each summary line of an EmoEvaluation file."""
    out = []
    for n, line in enumerate(_read_lines(path), 1):
        m = _EVAL_LINE.match(line.strip())
        if m:
            out.append((n, m.group(1), m.group(2)))
    return out


def parse_transcription(path: Path) -> dict[str, str]:
    """Utterance id → text for each ``<id> [start-end]: text`` line; other lines are skipped."""
    out = {}
    for line in _read_lines(path):
        m = _TRANSCRIPT_LINE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def speaker_of(utt_id: str) -> tuple[str, int]:
    """``("Ses01M", 1)`` for ``"Ses01F_impro01_M000"``: session + gender of the last id part."""
    m = _UTT_ID.match(utt_id)
    if not m:
        raise DataError(f"not an IEMOCAP utterance id: {utt_id!r}")
    return f"Ses{m.group(1)}{m.group(2)}", int(m.group(1))


def _session_dirs(root: Path, sessions) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"IEMOCAP root {root} is not a folder")
    if sessions is None:
        dirs = sorted(p for p in root.glob("Session[0-9]*") if p.is_dir())
        if not dirs:
            raise DataError(f"IEMOCAP root {root}: no Session1..Session5 folders found")
        return dirs
    if isinstance(sessions, (str, bytes)) or not hasattr(sessions, "__iter__"):
        raise TypeError(f"sessions must be a list of session numbers (e.g. [1, 2]), got "
                        f"{type(sessions).__name__} {sessions!r}")
    numbers = []
    for s in sessions:
        try:
            n = None if isinstance(s, bool) else operator.index(s)
        except TypeError:
            n = None
        if n is None or n < 1:
            raise ValueError(f"sessions must be session numbers >= 1 (ints), got {s!r} in {sessions!r}")
        numbers.append(n)
    dirs = [root / f"Session{n}" for n in numbers]
    for d in dirs:
        if not d.is_dir():
            raise DataError(f"IEMOCAP session folder {d} does not exist")
    return dirs


def _evaluation_files(session_dir: Path) -> list[Path]:
    eval_dir = session_dir / "dialog" / "EmoEvaluation"
    if not eval_dir.is_dir():
        raise DataError(f"IEMOCAP: evaluation folder {eval_dir} does not exist")
    # Skip macOS resource forks (``._Ses01F_impro01.txt``) shipped in some copies.
    files = sorted(p for p in eval_dir.glob("*.txt") if not p.name.startswith("."))
    if not files:
        raise DataError(f"IEMOCAP: no evaluation files (*.txt) in {eval_dir}")
    return files


def _read_dialog(eval_file: Path, session_dir: Path, state: dict) -> list[Record]:
    """Records of one dialog; bad entries raise or are skipped per ``state["on_error"]``."""
    on_error, skipped, dropped = state["on_error"], state["skipped"], state["dropped"]
    dialog = eval_file.stem
    trans_file = session_dir / "dialog" / "transcriptions" / f"{dialog}.txt"
    if not trans_file.is_file():
        bad_entry(f"IEMOCAP: transcription file {trans_file} does not exist (needed by {eval_file})",
                  on_error, skipped, str(trans_file))
        return []
    texts = parse_transcription(trans_file)
    records = []
    for line, utt, code in parse_evaluation(eval_file):
        where = f"{eval_file}, line {line}"
        if code in IEMOCAP_DROPPED:
            dropped[code] += 1
            continue
        if code not in IEMOCAP_LABELS:
            bad_entry(f"{where}: unknown label {code!r} for {utt}; expected one of "
                      f"{sorted(IEMOCAP_LABELS) + list(IEMOCAP_DROPPED)}", on_error, skipped, where)
            continue
        try:
            speaker, session = speaker_of(utt)
        except ValueError as e:
            bad_entry(f"{where}: {e}", on_error, skipped, where)
            continue
        text = texts.get(utt)
        if text is None:
            bad_entry(f"{trans_file}: no transcript line for {utt}", on_error, skipped, where)
            continue
        if not text.strip():
            bad_entry(f"{trans_file}: empty transcript for {utt}", on_error, skipped, where)
            continue
        wav = session_dir / "sentences" / "wav" / dialog / f"{utt}.wav"
        if state["check_wavs"] and not wav.is_file():
            bad_entry(f"IEMOCAP: wav file {wav} does not exist ({where})", on_error, skipped, where)
            continue
        rec = Record(id=utt, wav=wav, text=text.strip(), label=IEMOCAP_LABELS[code], speaker=speaker,
                     session=session)
        if state["alignments"]:
            _read_words(rec, session_dir / "sentences" / "ForcedAlignment" / dialog / f"{utt}.wdseg", state)
        records.append(rec)
    return records


def _read_words(rec: Record, wdseg: Path, state: dict) -> None:
    """``rec.words`` from its ``.wdseg`` file; a missing file (the release lacks a few) leaves None."""
    if not wdseg.is_file():
        state["no_alignment"].append(rec.id)
        return
    rec.alignment = wdseg
    try:
        rec.words = read_wdseg(wdseg, audio_duration(rec.wav) if rec.wav.is_file() else None)
    except AlignmentError as e:
        bad_entry(str(e), state["on_error"], state["skipped"], str(wdseg), error=AlignmentError)


def read_iemocap(root, *, sessions=None, check_wavs: bool = True, alignments: bool = True,
                 on_error: str = "raise") -> Records:
    """Read the raw IEMOCAP release into 4-class emotion records.

    Args:
        root: the folder holding ``Session1`` … ``Session5``.
        sessions: session numbers to read (default: every ``Session*`` folder present); a listed
            session whose folder is missing is an error naming the folder.
        check_wavs: check that each kept utterance's wav file exists.
        alignments: read each utterance's word segmentation
            (``sentences/ForcedAlignment/<dialog>/<utt>.wdseg``) into ``Record.words``; a missing file
            gives ``words=None`` (counted in the log).
        on_error: ``"raise"`` stops at the first bad entry (unknown label, missing transcript or
            wav, empty text, a malformed ``.wdseg``) with an error naming the file; ``"skip"`` warns
            and drops it (a malformed ``.wdseg`` only loses the utterance's words).
    Returns:
        ``Records`` of ``Record(id, wav, text, label, speaker, session)`` in session/dialog/file
        order, with ``.counts`` (per label), ``.dropped`` (per dropped IEMOCAP code) and
        ``.skipped``. The counts are also logged on the ``mfdr.data`` logger.
    """
    check_on_error(on_error)
    root = as_path("root", root)
    state = {"on_error": on_error, "skipped": [], "dropped": Counter(), "check_wavs": check_wavs,
             "alignments": alignments, "no_alignment": []}
    records, seen = [], {}
    for session_dir in _session_dirs(root, sessions):
        for eval_file in _evaluation_files(session_dir):
            for rec in _read_dialog(eval_file, session_dir, state):
                if rec.id in seen:
                    raise DataError(f"IEMOCAP: utterance {rec.id} appears in both {seen[rec.id]} "
                                    f"and {eval_file}")
                seen[rec.id] = eval_file
                records.append(rec)
    out = Records(records, skipped=state["skipped"], dropped=state["dropped"])
    log.info("read_iemocap(%s): %s", root, out.summary())
    if state["no_alignment"]:
        log.info("read_iemocap: %d utterances have no .wdseg word segmentation (words=None), e.g. %s",
                 len(state["no_alignment"]), state["no_alignment"][0])
    return out
