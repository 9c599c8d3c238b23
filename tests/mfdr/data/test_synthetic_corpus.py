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
