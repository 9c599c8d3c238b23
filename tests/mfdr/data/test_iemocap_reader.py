"""read_iemocap on a small tree in the real release's format (see conftest.make_iemocap)."""

import logging

import pytest

from mfdr.data import DataError, read_iemocap
from mfdr.data.iemocap import parse_evaluation, parse_transcription, speaker_of


def test_reads_exactly_the_expected_records(iemocap_root, iemocap_expected):
    recs = read_iemocap(iemocap_root)
    got = [(r.id, r.label, r.speaker, r.session, r.text) for r in recs]
    assert got == iemocap_expected
    for r in recs:
        dialog = r.id.rsplit("_", 1)[0]
        assert r.wav == iemocap_root / f"Session{r.session}" / "sentences" / "wav" / dialog / f"{r.id}.wav"


def test_reports_counts(iemocap_root, caplog):
    with caplog.at_level(logging.INFO, logger="mfdr.data"):
        recs = read_iemocap(iemocap_root)
    assert recs.counts == {"neutral": 2, "happy": 2, "angry": 1, "sad": 2}
    assert recs.dropped == {"fru": 1, "xxx": 1, "sur": 1, "dis": 1, "fea": 1, "oth": 1}
    assert recs.skipped == []
    assert "7 utterances" in caplog.text and "neutral=2" in caplog.text


def test_session_selection(iemocap_root):
    assert {r.session for r in read_iemocap(iemocap_root, sessions=[2])} == {2}


def test_missing_session_folder_is_named(iemocap_root):
    with pytest.raises(DataError, match="Session3"):
        read_iemocap(iemocap_root, sessions=[1, 2, 3])


def test_root_without_sessions(tmp_path):
    with pytest.raises(DataError, match="no Session1..Session5"):
        read_iemocap(tmp_path)
    with pytest.raises(DataError, match="is not a folder"):
        read_iemocap(tmp_path / "nope")


def test_parsers_ignore_non_utterance_lines(iemocap_root):
    ev = iemocap_root / "Session1" / "dialog" / "EmoEvaluation" / "Ses01F_impro01.txt"
    assert [(u, c) for _, u, c in parse_evaluation(ev)] == [
        ("Ses01F_impro01_F000", "neu"), ("Ses01F_impro01_M000", "fru"), ("Ses01F_impro01_F001", "exc"),
        ("Ses01F_impro01_M001", "ang"), ("Ses01F_impro01_F002", "xxx")]
    tr = parse_transcription(iemocap_root / "Session1" / "dialog" / "transcriptions" / "Ses01F_impro01.txt")
    assert tr["Ses01F_impro01_F000"] == "Excuse me."
    assert "M" not in tr and len(tr) == 6          # 5 utterances + the MXX line, not "M: [BREATHING]"
    assert speaker_of("Ses01M_script01_1_F000") == ("Ses01F", 1)
    with pytest.raises(ValueError, match="not an IEMOCAP utterance id"):
        speaker_of("hello")


def test_missing_wav_raises_or_skips(iemocap_root, iemocap_expected):
    wav = iemocap_root / "Session2" / "sentences" / "wav" / "Ses02M_impro03" / "Ses02M_impro03_M000.wav"
    wav.unlink()
    with pytest.raises(DataError, match="Ses02M_impro03_M000.wav"):
        read_iemocap(iemocap_root)
    with pytest.warns(UserWarning, match="Ses02M_impro03_M000.wav"):
        recs = read_iemocap(iemocap_root, on_error="skip")
    assert [r.id for r in recs] == [e[0] for e in iemocap_expected if e[0] != "Ses02M_impro03_M000"]
    assert len(recs.skipped) == 1
    assert len(read_iemocap(iemocap_root, check_wavs=False)) == len(iemocap_expected)


def _edit(path, old, new):
    path.write_text(path.read_text().replace(old, new))


def test_empty_transcript_names_the_file(iemocap_root, iemocap_expected):
    tr = iemocap_root / "Session1" / "dialog" / "transcriptions" / "Ses01M_script01_1.txt"
    _edit(tr, "I miss him so much.", "")
    with pytest.raises(DataError, match=r"script01_1\.txt: empty transcript for Ses01M_script01_1_F000"):
        read_iemocap(iemocap_root)
    with pytest.warns(UserWarning, match="empty transcript"):
        assert len(read_iemocap(iemocap_root, on_error="skip")) == len(iemocap_expected) - 1


def test_unknown_label_names_the_file(iemocap_root):
    ev = iemocap_root / "Session2" / "dialog" / "EmoEvaluation" / "Ses02M_impro03.txt"
    _edit(ev, "\tneu\t", "\tbored\t")
    with pytest.raises(DataError, match=r"Ses02M_impro03\.txt, line \d+: unknown label 'bored'"):
        read_iemocap(iemocap_root)


def test_missing_transcript_line_and_file(iemocap_root):
    trans = iemocap_root / "Session1" / "dialog" / "transcriptions"
    _edit(trans / "Ses01F_impro01.txt", "Ses01F_impro01_F000 [", "Ses01F_impro01_X999 [")
    with pytest.raises(DataError, match="no transcript line for Ses01F_impro01_F000"):
        read_iemocap(iemocap_root)
    (trans / "Ses01F_impro01.txt").unlink()
    with pytest.raises(DataError, match=r"transcription file .*Ses01F_impro01\.txt does not exist"):
        read_iemocap(iemocap_root)


def test_missing_evaluation_folder(iemocap_root):
    import shutil

    shutil.rmtree(iemocap_root / "Session2" / "dialog" / "EmoEvaluation")
    with pytest.raises(DataError, match=r"Session2.dialog.EmoEvaluation does not exist"):
        read_iemocap(iemocap_root)


def test_bad_on_error(iemocap_root):
    with pytest.raises(ValueError, match="on_error must be one of"):
        read_iemocap(iemocap_root, on_error="ignore")
