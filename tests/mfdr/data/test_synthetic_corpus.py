"""The espeak-ng synthetic corpus: the plan's rule, determinism, the manifest layout."""

import hashlib
import shutil
import subprocess
from collections import Counter

import numpy as np
import pytest

from mfdr.data import EMOTIONS, EspeakNotFoundError, make_synthetic_corpus, plan_corpus, read_manifest
from mfdr.data.synthetic import PROSODY, VOICES

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


def test_plan_rule_balance_and_determinism():
    plan = plan_corpus(96, speakers=8, seed=3)
    assert plan == plan_corpus(96, speakers=8, seed=3)
    assert plan != plan_corpus(96, speakers=8, seed=4)
    for u in plan:                                   # the label rule: non-neutral prosody wins
        expected = u["prosody_emotion"] if u["prosody_emotion"] != "neutral" else u["text_emotion"]
        assert u["label"] == expected
        assert u["prosody"]["pitch"] in range(100) and u["prosody"]["amplitude"] in range(201)
    per_speaker = Counter((u["speaker"], u["label"]) for u in plan)
    assert set(per_speaker.values()) == {3} and len(per_speaker) == 8 * 4
    kinds = Counter(u["kind"] for u in plan)
    assert set(kinds) == {"neutral", "lexical", "prosodic", "ironic", "congruent"}
    ironic = [u for u in plan if u["kind"] == "ironic"]
    assert all(u["text_emotion"] not in ("neutral", u["label"]) for u in ironic)
    assert len({u["voice"] for u in plan}) == 8


def test_plan_checks_arguments():
    with pytest.raises(ValueError, match=r"speakers must be in 1\.\.12"):
        plan_corpus(10, speakers=13)
    with pytest.raises(ValueError, match="n_utterances"):
        plan_corpus(0)


def test_missing_espeak_says_how_to_install(tmp_path):
    with pytest.raises(EspeakNotFoundError, match="apt-get install espeak-ng"):
        make_synthetic_corpus(tmp_path, 4, espeak=str(tmp_path / "no-espeak-here"))


@needs_espeak
def test_voices_are_distinct():
    digests = set()
    for v in VOICES:
        out = subprocess.run(["espeak-ng", "-v", v, "--stdout", "the cat sat on the mat"],
                             capture_output=True, check=True).stdout
        digests.add(hashlib.sha256(out).hexdigest())
    assert len(digests) == len(VOICES)              # no voice silently falls back to the default


@needs_espeak
def test_tiny_corpus(tmp_path):
    import soundfile as sf

    path = make_synthetic_corpus(tmp_path / "a", 16, speakers=8, seed=1, progress=False)
    recs = read_manifest(path, labels=EMOTIONS)
    assert path.name == "manifest.csv" and len(recs) == 16
    assert recs.counts == {e: 4 for e in EMOTIONS} and len({r.speaker for r in recs}) == 8
    assert {"kind", "text_emotion", "prosody_emotion", "voice"} <= set(recs[0].extra)
    x, sr = sf.read(recs[0].wav)
    assert sr == 16000 and x.ndim == 1 and 0.5 < len(x) / sr < 8 and np.abs(x).max() > 0.01
    assert not list((tmp_path / "a" / "wavs").glob("*.espeak.wav"))
    again = make_synthetic_corpus(tmp_path / "b", 16, speakers=8, seed=1, progress=False, manifest="m.jsonl")
    for r, r2 in zip(recs, read_manifest(again), strict=True):
        assert r.id == r2.id and r.wav.read_bytes() == r2.wav.read_bytes()


@needs_espeak
def test_prosody_changes_loudness_and_rate(tmp_path):
    import soundfile as sf

    plan = plan_corpus(8, speakers=1)
    base = {**plan[0], "text": "The meeting is on Tuesday at noon."}
    out = {}
    for emo in ("angry", "sad"):
        utt = {**base, "id": emo, "prosody": {**PROSODY[emo]}}
        from mfdr.data.synthetic import _synthesize

        _synthesize(shutil.which("espeak-ng"), utt, tmp_path / f"{emo}.wav", 16000)
        out[emo] = sf.read(tmp_path / f"{emo}.wav")[0]
    rms = {k: float(np.sqrt(np.mean(v ** 2))) for k, v in out.items()}
    assert rms["angry"] > 2 * rms["sad"] and len(out["sad"]) > 1.5 * len(out["angry"])


# ----------------------------------------------------------------------------- word timings

def test_words_from_espeak_events():
    """espeak-ng's events as libespeak-ng gives them: a group spoken as one word ("in the"), an event
    with no text position at a clause end, pause phonemes ending words, the last word running to the end."""
    from mfdr.data.synthetic import words_from_events

    text = "My sister lives in the next town, I sat."
    events = [(2, 1, 0, ""), (1, 1, 0, ""), (7, 1, 0, "m"), (7, 1, 900, "aI"), (1, 4, 2000, ""),
              (7, 4, 2000, "s"), (7, 4, 3900, "_"), (1, 11, 4400, ""), (1, 17, 6000, ""), (7, 17, 6000, "I"),
              (7, 17, 7000, "D"), (1, 24, 8000, ""), (1, 29, 9000, ""), (7, 29, 9000, "t"), (7, 34, 9800, "_:"),
              (1, 0, 10500, ""), (5, 34, 10600, ""), (1, 35, 10600, ""), (1, 37, 11000, ""), (7, 37, 11000, "s")]
    words = words_from_events(text, events, n_samples=12000, sr=1000)
    assert words == [("My", 0.0, 2.0), ("sister", 2.0, 3.9), ("lives", 4.4, 6.0), ("in the", 6.0, 8.0),
                     ("next", 8.0, 9.0), ("town", 9.0, 9.8), ("I", 10.6, 11.0), ("sat", 11.0, 12.0)]


@needs_espeak
@pytest.mark.parametrize("engine", ["library", "per-word"])
def test_synthesizer_word_timings(tmp_path, engine):
    """Each recorded word is where its sound is: the audio inside a word's span is loud, a word spoken
    alone sounds like the word's span, and the library's samples equal the espeak-ng command's."""
    import soundfile as sf

    from mfdr.data.synthetic import _synthesize, find_espeak_library

    if engine == "library" and find_espeak_library() is None:
        pytest.skip("libespeak-ng cannot be loaded here")
    utt = {**plan_corpus(8, speakers=8)[3], "text": "I cried all night, I feel miserable.",
           "prosody": {**PROSODY["sad"]}}
    words = _synthesize(shutil.which("espeak-ng"), utt, tmp_path / "a.wav", 16000, engine)
    x, sr = sf.read(tmp_path / "a.wav")
    assert [w for w, _, _ in words] == ["I", "cried", "all", "night", "I", "feel", "miserable"]
    starts = [s for _, s, _ in words]
    assert starts == sorted(starts) and all(s < e <= len(x) / sr for _, s, e in words)
    rms = lambda a, b: float(np.sqrt(np.mean(x[int(a * sr): int(b * sr)] ** 2)))
    inside = [rms(s, e) for _, s, e in words]
    gaps = [(e, s2) for (_, _, e), (_, s2, _) in zip(words, words[1:]) if s2 - e > 0.03]
    assert gaps, "sad prosody speaks with word gaps; the recorded words must leave them out"
    assert min(inside) > 4 * max(rms(a, b) for a, b in gaps)
    if engine == "library":                          # the same samples as the command line
        p = utt["prosody"]
        cmd = ["espeak-ng", "-v", utt["voice"], "-p", str(p["pitch"]), "-s", str(p["rate"]), "-a",
               str(p["amplitude"]), "-g", str(p["gap"]), "-w", str(tmp_path / "cli.wav"), "--", utt["text"]]
        subprocess.run(cmd, check=True)
        from mfdr.data.synthetic import speak_with_library

        lib, _, _ = speak_with_library(utt["text"], utt["voice"], utt["prosody"])
        cli, _ = sf.read(tmp_path / "cli.wav", dtype="float32")
        np.testing.assert_array_equal(lib, cli)


@needs_espeak
def test_corpus_manifest_carries_the_alignments(tmp_path):
    from mfdr.data.alignment import read_alignment_csv

    path = make_synthetic_corpus(tmp_path, 8, speakers=4, seed=2, progress=False)
    recs = read_manifest(path, labels=EMOTIONS)
    assert recs.aligned == len(recs) == 8
    for r in recs:
        assert r.alignment == tmp_path / "alignments" / f"{r.id}.csv"
        assert r.words == read_alignment_csv(r.alignment)
        spoken = " ".join(w for w, _, _ in r.words).lower()
        assert spoken == " ".join(t.strip(".,!?") for t in r.text.lower().split())
    with pytest.raises(ValueError, match="engine must be one of"):
        make_synthetic_corpus(tmp_path, 2, engine="festival")


@needs_espeak
def test_without_the_library_auto_speaks_word_by_word(tmp_path, monkeypatch, caplog):
    import soundfile as sf

    from mfdr.data import synthetic

    monkeypatch.setattr(synthetic, "_library", [None, "libespeak-ng.so.1: cannot open shared object file"])
    utt = {**plan_corpus(8, speakers=8)[0], "text": "Stop it now!"}
    with pytest.raises(EspeakNotFoundError, match=r"libespeak-ng could not be loaded \(libespeak-ng.so.1: cannot"):
        synthetic._synthesize(shutil.which("espeak-ng"), utt, tmp_path / "a.wav", 16000, "library")
    with caplog.at_level("WARNING", logger="mfdr.data"):
        path = make_synthetic_corpus(tmp_path / "c", 4, speakers=4, progress=False)
    assert "each word is spoken alone for its timing" in caplog.text
    rec = read_manifest(path)[0]
    x, sr = sf.read(rec.wav)
    assert rec.words[0][1] == pytest.approx(0.1, abs=2e-3)        # per-word: 100 ms of silence first
    assert np.abs(x[: int(0.09 * sr)]).max() < 1e-3
