"""Bad input at the readers of mfdr/data/, ``read_iemocap``, ``read_mmsa`` and ``read_manifest`` (files
built per row): every row an input, the exact exception type and a fragment of its message (which names the
argument or the file, and the line); edge input that is valid reads."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from mfdr.data import DataError, read_iemocap, read_manifest, read_mmsa
from tests.bad_input import NAN, config_file, raises, row

# ====================================================================== read_iemocap
UTT = "Ses01F_impro01_F000"


def iemocap(tmp, *, label="neu", utt=UTT, said=UTT, text="Excuse me.", transcript=True, wav=True) -> Path:
    """A one-utterance IEMOCAP tree: Session1's evaluation line for ``utt``, the transcript line of ``said``
    and the wav of ``utt``."""
    session = tmp / "IEMOCAP" / "Session1"
    (session / "dialog" / "EmoEvaluation").mkdir(parents=True)
    (session / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(
        f"% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        f"[6.2901 - 8.2357]\t{utt}\t{label}\t[2.5000, 2.5000, 2.5000]\nC-E1:\tNeutral;\t()\n")
    if transcript:
        (session / "dialog" / "transcriptions").mkdir(parents=True)
        (session / "dialog" / "transcriptions" / "Ses01F_impro01.txt").write_text(
            f"{said} [006.2901-008.2357]: {text}\nM: [BREATHING]\n")
    if wav:
        (session / "sentences" / "wav" / "Ses01F_impro01").mkdir(parents=True)
        (session / "sentences" / "wav" / "Ses01F_impro01" / f"{utt}.wav").write_bytes(b"RIFF")
    return tmp / "IEMOCAP"


def mkdirs(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


IEMOCAP_BAD = [
    row("root-none", lambda tmp: read_iemocap(None),
        TypeError, "root must be a path (str or os.PathLike), got NoneType"),
    row("root-missing", lambda tmp: read_iemocap(tmp / "nowhere"), DataError, "nowhere is not a folder"),
    row("root-is-a-file", lambda tmp: read_iemocap(config_file(tmp, "IEMOCAP.tar", b"x")), DataError,
        "IEMOCAP.tar is not a folder"),
    row("no-session-folders", lambda tmp: read_iemocap(tmp),
        DataError, "no Session1..Session5 folders found"),
    row("on_error-unknown", lambda tmp: read_iemocap(iemocap(tmp), on_error="ignore"), ValueError,
        "on_error must be one of ('raise', 'skip'), got 'ignore'"),
    row("sessions-an-int", lambda tmp: read_iemocap(iemocap(tmp), sessions=1), TypeError,
        "sessions must be a list of session numbers (e.g. [1, 2]), got int 1"),
    row("sessions-names", lambda tmp: read_iemocap(iemocap(tmp), sessions=["Session1"]), ValueError,
        "sessions must be session numbers >= 1 (ints), got 'Session1'"),
    row("sessions-0", lambda tmp: read_iemocap(iemocap(tmp), sessions=[0]), ValueError,
        "sessions must be session numbers >= 1"),
    row("session-folder-missing", lambda tmp: read_iemocap(iemocap(tmp), sessions=[1, 2]), DataError,
        "Session2 does not exist"),
    row("no-evaluation-folder", lambda tmp: read_iemocap(mkdirs(tmp / "R" / "Session1").parent), DataError,
        "EmoEvaluation does not exist"),
    row("no-evaluation-files",
        lambda tmp: read_iemocap(mkdirs(tmp / "R" / "Session1" / "dialog" / "EmoEvaluation").parents[2]),
        DataError, "no evaluation files (*.txt) in"),
    row("no-transcription-file", lambda tmp: read_iemocap(iemocap(tmp, transcript=False)), DataError,
        "Ses01F_impro01.txt does not exist (needed by"),
    row("unknown-label", lambda tmp: read_iemocap(iemocap(tmp, label="joy")), DataError,
        "Ses01F_impro01.txt, line 3: unknown label 'joy' for Ses01F_impro01_F000"),
    row("not-an-utterance-id", lambda tmp: read_iemocap(iemocap(tmp, utt="SesXXF_impro01_F000",
                                                                said="SesXXF_impro01_F000")), DataError,
        "line 3: not an IEMOCAP utterance id: 'SesXXF_impro01_F000'"),
    row("no-transcript-line", lambda tmp: read_iemocap(iemocap(tmp, said="Ses01F_impro01_F001")), DataError,
        "Ses01F_impro01.txt: no transcript line for Ses01F_impro01_F000"),
    row("empty-transcript", lambda tmp: read_iemocap(iemocap(tmp, text="   ")), DataError,
        "Ses01F_impro01.txt: empty transcript for Ses01F_impro01_F000"),
    row("wav-missing", lambda tmp: read_iemocap(iemocap(tmp, wav=False)), DataError,
        "IEMOCAP: wav file "),
]


@pytest.mark.parametrize("call, exc, fragment, env", IEMOCAP_BAD)
def test_read_iemocap_bad_input(call, exc, fragment, env, tmp_path):
    with raises(exc, fragment):
        call(tmp_path)


# ====================================================================== read_mmsa
def split_(n=3, L=4, T=5, **changes):
    rng = np.random.default_rng(0)
    d = {"id": [f"v{i}" for i in range(n)], "text": rng.normal(size=(n, L, 3)),
         "audio": rng.normal(size=(n, T, 2)), "regression_labels": np.zeros(n)}
    d.update(changes)
    return d


def mmsa(tmp, data=None, name="mosi.pkl", **train) -> Path:
    """A pickle with train/valid/test splits; ``train`` changes the train split's keys (None drops one)."""
    if data is None:
        t = {k: v for k, v in split_(**{k: v for k, v in train.items() if v is not None}).items()
             if train.get(k, 0) is not None}
        data = {"train": t, "valid": split_(), "test": split_()}
    path = tmp / name
    path.write_bytes(pickle.dumps(data))
    return path


MMSA_BAD = [
    row("path-none", lambda tmp: read_mmsa(None),
        TypeError, "path must be a path (str or os.PathLike), got NoneType"),
    row("missing", lambda tmp: read_mmsa(tmp / "mosi.pkl"), DataError, "mosi.pkl does not exist"),
    row("a-folder", lambda tmp: read_mmsa(mkdirs(tmp / "mosi.pkl")), DataError, "mosi.pkl does not exist"),
    row("not-a-pickle", lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", b"not a pickle")), DataError,
        "mosi.pkl cannot be read: invalid load key"),
    row("empty-file", lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", b"")), DataError,
        "mosi.pkl cannot be read: Ran out of input"),
    row("truncated",
        lambda tmp: read_mmsa(config_file(tmp, "mosi.pkl", pickle.dumps({"train": split_()})[:40])),
        DataError, "mosi.pkl cannot be read"),
    row("not-a-dict", lambda tmp: read_mmsa(mmsa(tmp, [split_()])),
        DataError, "expected a dict of splits, got list"),
    row("split-missing", lambda tmp: read_mmsa(mmsa(tmp, {"train": split_(), "valid": split_()})), DataError,
        "missing split 'test'; found ['train', 'valid']"),
    row("split-not-a-dict",
        lambda tmp: read_mmsa(mmsa(tmp, {"train": [1], "valid": split_(), "test": split_()})),
        DataError, "mosi.pkl [train]: expected a dict, got list"),
    row("key-missing", lambda tmp: read_mmsa(mmsa(tmp, audio=None)), DataError,
        "[train]: missing key 'audio'; found keys ['id', 'regression_labels', 'text']"),
    row("label-missing", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=None)), DataError,
        "[train]: missing key 'regression_labels'"),
    row("label_key-absent", lambda tmp: read_mmsa(mmsa(tmp), label_key="classification_labels"), DataError,
        "missing key 'classification_labels'"),
    row("audio-2d", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((3, 5)))), DataError,
        "[train]: 'audio' must have 3 dims, got shape (3, 5)"),
    row("audio-ragged",
        lambda tmp: read_mmsa(mmsa(tmp, audio=[np.zeros((5, 2)), np.zeros((4, 2)), np.zeros((5, 2))])),
        DataError, "[train]: 'audio' is not a rectangular array"),
    row("audio-strings", lambda tmp: read_mmsa(mmsa(tmp, audio=np.full((3, 5, 2), "x"))), DataError,
        "[train]: 'audio' must hold numbers, got dtype <U1"),
    row("audio-no-frames", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((3, 0, 2)))), DataError,
        "[train]: 'audio' has no rows (shape (3, 0, 2))"),
    row("text-no-tokens", lambda tmp: read_mmsa(mmsa(tmp, text=np.zeros((3, 0, 3)))), DataError,
        "[train]: 'text' has no rows"),
    row("audio-count-differs", lambda tmp: read_mmsa(mmsa(tmp, audio=np.zeros((2, 5, 2)))), DataError,
        "[train]: 'audio' has 2 entries, expected 3 (len of 'id')"),
    row("label-count-differs", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=np.zeros(4))), DataError,
        "[train]: 'regression_labels' has 4 entries, expected 3"),
    row("label-strings", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=["pos", "neg", "neu"])), DataError,
        "[train]: 'regression_labels' must hold numbers"),
    row("label-nan", lambda tmp: read_mmsa(mmsa(tmp, regression_labels=np.array([0.0, NAN, 1.0]))), DataError,
        "[train]: 'regression_labels' holds NaN/Inf for 1 utterance(s), e.g. id 'v1'"),
    row("audio_lengths-count", lambda tmp: read_mmsa(mmsa(tmp, audio_lengths=[5, 5])), DataError,
        "[train]: audio_lengths has 2 entries, expected 3"),
    row("audio_lengths-strings", lambda tmp: read_mmsa(mmsa(tmp, audio_lengths=["a", "b", "c"])), DataError,
        "[train]: 'audio_lengths' must hold numbers"),
    row("id-not-a-sequence", lambda tmp: read_mmsa(mmsa(tmp, id=7)), DataError,
        "[train]: 'id' must be a sequence of ids, got int"),
]


@pytest.mark.parametrize("call, exc, fragment, env", MMSA_BAD)
def test_read_mmsa_bad_input(call, exc, fragment, env, tmp_path):
    with raises(exc, fragment):
        call(tmp_path)


def test_read_mmsa_edge_input(tmp_path):
    """-inf (COVAREP) and NaN features become 0; one split by name; an empty split is empty."""
    audio = np.ones((3, 5, 2))
    audio[0, 0, 0], audio[1, 1, 1] = -np.inf, np.nan
    data = read_mmsa(mmsa(tmp_path, {"train": split_(audio=audio), "valid": split_(n=0), "test": split_()}),
                     splits="train")
    assert list(data) == ["train"] and np.isfinite(data["train"].audio).all()
    assert len(read_mmsa(tmp_path / "mosi.pkl", splits=["valid"])["valid"]) == 0


# ====================================================================== read_manifest
HEADER = "id,wav,text,label,speaker\n"


def manifest(tmp, text, name="m.csv", wav=True) -> Path:
    if wav:
        (tmp / "a.wav").write_bytes(b"RIFF")
    return config_file(tmp, name, text)


MANIFEST_BAD = [
    row("path-none", lambda tmp: read_manifest(None),
        TypeError, "path must be a path (str or os.PathLike), got NoneType"),
    row("missing", lambda tmp: read_manifest(tmp / "m.csv"), DataError, "m.csv does not exist"),
    row("suffix", lambda tmp: read_manifest(manifest(tmp, HEADER, "m.tsv")), DataError,
        "m.tsv: expected a .csv or .jsonl file, got suffix '.tsv'"),
    row("on_error-unknown", lambda tmp: read_manifest(manifest(tmp, HEADER), on_error="warn"), ValueError,
        "on_error must be one of ('raise', 'skip'), got 'warn'"),
    row("labels-a-string", lambda tmp: read_manifest(manifest(tmp, HEADER), labels="happy"), TypeError,
        "labels must be a collection of label names (e.g. a tuple), got str 'happy'"),
    row("empty-csv", lambda tmp: read_manifest(manifest(tmp, "")), DataError,
        "m.csv: missing columns ['id', 'wav', 'text', 'label', 'speaker']"),
    row("columns-missing", lambda tmp: read_manifest(manifest(tmp, "id,wav\nu1,a.wav\n")), DataError,
        "m.csv: missing columns ['text', 'label', 'speaker']"),
    row("row-short", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hello\n")), DataError,
        "m.csv, line 2: empty or missing ['label', 'speaker']"),
    row("text-empty", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,  ,happy,s1\n")), DataError,
        "m.csv, line 2: empty transcript for id 'u1'"),
    row("label-unknown", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hi,joy,s1\n"),
                                                   labels=("happy", "sad")), DataError,
        "m.csv, line 2: unknown label 'joy' for id 'u1'; expected one of ['happy', 'sad']"),
    row("wav-missing", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,b.wav,hi,happy,s1\n")), DataError,
        "m.csv, line 2: wav file "),
    row("id-duplicate", lambda tmp: read_manifest(manifest(tmp, HEADER + "u1,a.wav,hi,happy,s1\n"
                                                                         "u1,a.wav,ho,sad,s1\n")), DataError,
        "m.csv, line 3: duplicate id 'u1' (first on line 2)"),
    row("csv-not-utf8",
        lambda tmp: read_manifest(manifest(tmp, HEADER.encode() + b"u1,a.wav,\xff\xfe,happy,s1\n")),
        DataError, "m.csv: not UTF-8 text"),
    row("jsonl-not-json", lambda tmp: read_manifest(manifest(tmp, '{"id": "u1",\n', "m.jsonl")), DataError,
        "m.jsonl, line 1: not valid JSON"),
    row("jsonl-not-an-object", lambda tmp: read_manifest(manifest(tmp, "[1, 2]\n", "m.jsonl")), DataError,
        "m.jsonl, line 1: expected a JSON object, got list"),
    row("jsonl-wav-a-list", lambda tmp: read_manifest(manifest(tmp, json.dumps(
        {"id": "u1", "wav": ["a.wav"], "text": "hi", "label": "happy", "speaker": "s1"}) + "\n", "m.jsonl")),
        DataError, "m.jsonl, line 1: wav must be a string, got list ['a.wav']"),
    row("jsonl-id-an-object", lambda tmp: read_manifest(manifest(tmp, json.dumps(
        {"id": {"n": 1}, "wav": "a.wav", "text": "hi", "label": "happy", "speaker": "s1"}) + "\n",
        "m.jsonl")),
        DataError, "m.jsonl, line 1: id must be a string, got dict"),
    row("jsonl-not-utf8", lambda tmp: read_manifest(manifest(tmp, b'{"id": "\xff"}\n', "m.jsonl")), DataError,
        "m.jsonl: not UTF-8 text"),
]


@pytest.mark.parametrize("call, exc, fragment, env", MANIFEST_BAD)
def test_read_manifest_bad_input(call, exc, fragment, env, tmp_path):
    with raises(exc, fragment):
        call(tmp_path)


def test_read_manifest_skips_bad_rows_when_asked(tmp_path):
    path = manifest(tmp_path, HEADER + "u1,a.wav,hi,happy,s1\nu2,b.wav,ho,sad,s1\nu3,a.wav,,sad,s2\n")
    with pytest.warns(UserWarning) as warned:
        records = read_manifest(path, on_error="skip")
    assert [r.id for r in records] == ["u1"] and len(records.skipped) == 2
    assert ["wav file" in str(w.message) for w in warned] == [True, False]

