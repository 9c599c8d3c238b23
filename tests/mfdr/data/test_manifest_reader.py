"""The generic manifest (CSV / JSONL): round trip, path resolution, and bad rows."""

import json

import pytest

from mfdr.data import EMOTIONS, DataError, Record, read_manifest, write_manifest


def _records(root, write_wav):
    return [Record(id=f"u{i}", wav=write_wav(root / "wavs" / f"u{i}.wav", seed=i), text=f"Sentence {i}.",
                   label=EMOTIONS[i % 4], speaker=f"s{i % 2}", session=i % 2 + 1, split="train",
                   extra={"kind": "lexical"}) for i in range(4)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_round_trip(tmp_path, suffix, make_wav):
    recs = _records(tmp_path, make_wav)
    path = write_manifest(recs, tmp_path / f"manifest{suffix}")
    assert "wavs/u0.wav" in path.read_text()                          # written relative
    got = read_manifest(path, labels=EMOTIONS)
    assert [r.id for r in got] == ["u0", "u1", "u2", "u3"]
    assert [r.wav for r in got] == [r.wav for r in recs]
    assert [r.label for r in got] == list(EMOTIONS) and got[1].speaker == "s1"
    assert str(got[1].session) == "2" and got[1].split == "train" and got[1].extra == {"kind": "lexical"}
    assert got.counts == {e: 1 for e in EMOTIONS}


def test_minimal_csv_and_absolute_paths(tmp_path, make_wav):
    wav = make_wav(tmp_path / "a.wav")
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.csv"
    path.write_text(f"id,wav,text,label,speaker\nx,{wav},Hello there.,0.5,alice\n")
    (r,) = read_manifest(path)
    assert r.wav == wav and r.label == "0.5" and r.session is None and r.split is None


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bad_rows_raise_with_file_and_line(tmp_path, make_wav):
    wav = make_wav(tmp_path / "a.wav")
    good = {"id": "a", "wav": "a.wav", "text": "Hi.", "label": "sad", "speaker": "s"}
    cases = [
        ({**good, "label": "bored"}, "line 2: unknown label 'bored'"),
        ({**good, "text": "  "}, "line 2: empty transcript for id 'a'"),
        ({**good, "wav": "missing.wav"}, r"line 2: wav file .*missing\.wav does not exist"),
        ({k: v for k, v in good.items() if k != "speaker"}, r"line 2: empty or missing \['speaker'\]"),
        (good, "line 2: duplicate id 'a'"),
    ]
    for bad, message in cases:
        path = _jsonl(tmp_path / "m.jsonl", [good, bad])
        with pytest.raises(DataError, match=r"m\.jsonl, " + message):
            read_manifest(path, labels=EMOTIONS)
    assert wav.exists()


def test_skip_bad_rows_with_a_warning(tmp_path, make_wav):
    make_wav(tmp_path / "a.wav")
    rows = [{"id": "a", "wav": "a.wav", "text": "Hi.", "label": "sad", "speaker": "s"},
            {"id": "b", "wav": "b.wav", "text": "Yo.", "label": "sad", "speaker": "s"}]
    path = _jsonl(tmp_path / "m.jsonl", rows)
    with pytest.warns(UserWarning, match=r"b\.wav does not exist"):
        got = read_manifest(path, on_error="skip")
    assert [r.id for r in got] == ["a"] and len(got.skipped) == 1
    assert len(read_manifest(path, check_wavs=False)) == 2


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "none.csv")
    (tmp_path / "m.csv").write_text("id,wav,text\nx,y,z\n")
    with pytest.raises(DataError, match=r"missing columns \['label', 'speaker'\]"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.jsonl").write_text('{"id": 1\n')
    with pytest.raises(DataError, match="line 1: not valid JSON"):
        read_manifest(tmp_path / "m.jsonl")
    (tmp_path / "m.txt").write_text("")
    with pytest.raises(DataError, match="expected a .csv or .jsonl"):
        read_manifest(tmp_path / "m.txt")


# ---------------------------------------------------------------------- files as spreadsheets write them (issue 19)
def test_csv_with_a_byte_order_mark(tmp_path, make_wav):
    """Excel's "CSV UTF-8" starts with a BOM: read as the plain file (the first column is still "id")."""
    make_wav(tmp_path / "a.wav")
    path = tmp_path / "m.csv"
    path.write_bytes("id,wav,text,label,speaker\nx,a.wav,Héllo there.,happy,alice\n".encode("utf-8-sig"))
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    (r,) = read_manifest(path, labels=EMOTIONS)
    assert (r.id, r.text, r.extra) == ("x", "Héllo there.", {})
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_bytes((json.dumps({"id": "y", "wav": "a.wav", "text": "Hi.", "label": "sad", "speaker": "b"})
                       + "\n").encode("utf-8-sig"))
    assert read_manifest(jsonl, labels=EMOTIONS)[0].id == "y"


def test_csv_row_with_more_fields_than_columns(tmp_path, make_wav):
    """An unquoted comma in a text gives a row one field too many: refused naming the line (it was stored
    under the key "null"), or skipped with on_error="skip"."""
    make_wav(tmp_path / "a.wav")
    path = tmp_path / "m.csv"
    path.write_text("id,wav,text,label,speaker\nx,a.wav,Fine.,happy,alice\ny,a.wav,Well, no.,sad,bob\n")
    with pytest.raises(DataError, match=rf"manifest {path}, line 3: 6 fields, but the header has 5 columns "
                                        r"\(extra: \['bob'\]\); quote a text that holds a comma"):
        read_manifest(path, labels=EMOTIONS)
    with pytest.warns(UserWarning, match="line 3: 6 fields"):
        got = read_manifest(path, labels=EMOTIONS, on_error="skip")
    assert [r.id for r in got] == ["x"] and len(got.skipped) == 1
