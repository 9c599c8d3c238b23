"""Extracting again into a feature cache (issue 19): each entry is keyed on what it was made from (the wav's
size, mtime and sha256, the text, the word alignment). A changed wav or text is encoded again, a new label is
written into the entry, rows gone from the manifest leave the cache, and what changed is said. A process
killed with SIGKILL during an extraction or a re-extraction leaves a cache that opens, and the next run ends
with the features of an uninterrupted one.

The inputs are built as a user makes them: a manifest CSV with wavs, then the CSV edited, a wav rewritten or
touched, rows deleted. The text encoder is a stand-in (features from the words), the audio one the real
log-mel encoder."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mfdr.config import DataConfig
from mfdr.data import FeatureCache, read_manifest
from mfdr.data.cache import MANIFEST
from mfdr.features import FbankEncoder, extract_features
from mfdr.protocols import make_folds
from tests.processes import kill_when_paused

sf = pytest.importorskip("soundfile")
ROOT = Path(__file__).resolve().parents[2]
LABELS = ("neutral", "happy", "angry", "sad")

TEXT_ENCODER = '''
import torch


class WordsText:
    """Token features from the words alone (no weights): one row per word."""

    dim = 3
    config = {"kind": "words", "dim": 3}

    def __init__(self):
        self.seen = []

    def __call__(self, texts):
        self.seen += list(texts)
        return [torch.tensor([[len(w), sum(map(ord, w)) % 17, i] for i, w in enumerate(t.split())],
                             dtype=torch.float32) for t in texts]
'''
_ns: dict = {}
exec(TEXT_ENCODER, _ns)  # here and in the killed process (the script below carries the same source)
WordsText = _ns["WordsText"]

SCRIPT = TEXT_ENCODER + '''
import os, sys, time
from pathlib import Path
from mfdr.data import CacheWriter, read_manifest
from mfdr.features import FbankEncoder, extract_features

marker = os.environ.get("PAUSE_MARKER")
if marker:  # stop for the kill before the shard number PAUSE_AT is written (0: the first)
    real, state = CacheWriter.write_shard, {"n": 0}

    def write_shard(self, *args, **kwargs):
        if state["n"] == int(os.environ["PAUSE_AT"]):
            Path(marker).write_text(str(os.getpid()))
            time.sleep(600)
        state["n"] += 1
        return real(self, *args, **kwargs)

    CacheWriter.write_shard = write_shard
extract_features(read_manifest(sys.argv[1]), sys.argv[2], audio_encoder=FbankEncoder(device="cpu"),
                 text_encoder=WordsText(), shard_size=2, batch_size=2, progress=False, workers=1)
'''


def write_wav(path: Path, seed: int, seconds: float = 0.2) -> Path:
    x = 0.1 * np.random.default_rng(seed).standard_normal(int(seconds * 16000)).astype(np.float32)
    sf.write(str(path), x, 16000, subtype="PCM_16")
    return path


def write_manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "manifest.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "wav", "text", "label", "speaker"])
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture
def corpus(tmp_path):
    """8 utterances of 4 speakers: wavs and a manifest CSV."""
    (tmp_path / "wavs").mkdir()
    rows = [{"id": f"u{i}", "wav": str(write_wav(tmp_path / "wavs" / f"u{i}.wav", seed=i, seconds=0.2 + 0.02 * i)),
             "text": f"word{i} and some more", "label": LABELS[i % 4], "speaker": f"spk{i % 4}"} for i in range(8)]
    return tmp_path, rows


def extract(manifest: Path, cache: Path, text=None):
    text = text or WordsText()
    return extract_features(read_manifest(manifest), cache, audio_encoder=FbankEncoder(device="cpu"),
                            text_encoder=text, shard_size=2, batch_size=2, progress=False, workers=1), text


def features(cache: FeatureCache) -> dict:
    return {e["id"]: (cache[i]["audio"], cache[i]["text"], e["label"], e["speaker"])
            for i, e in enumerate(cache.entries)}


def assert_same_features(a: FeatureCache, b: FeatureCache) -> None:
    fa, fb = features(a), features(b)
    assert sorted(fa) == sorted(fb)
    for uid in fa:
        assert torch.equal(fa[uid][0], fb[uid][0]) and torch.equal(fa[uid][1], fb[uid][1]), uid
        assert fa[uid][2:] == fb[uid][2:], uid


def test_unchanged_data_encodes_nothing_and_a_touched_wav_is_compared_by_content(corpus):
    root, rows = corpus
    manifest = write_manifest(root, rows)
    cache, _ = extract(manifest, root / "c")
    assert {e["id"]: e["source"]["sha256"] for e in cache.entries}["u0"] == \
        __import__("hashlib").sha256((root / "wavs" / "u0.wav").read_bytes()).hexdigest()
    before = (root / "c" / MANIFEST).read_bytes()
    again, text = extract(manifest, root / "c")
    assert text.seen == [] and (root / "c" / MANIFEST).read_bytes() == before
    assert again.changes == {"new": [], "reencoded": {}, "updated": [], "removed": [], "sourced": []}
    st = os.stat(root / "wavs" / "u3.wav")
    os.utime(root / "wavs" / "u3.wav", ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched only
    again, text = extract(manifest, root / "c")
    assert text.seen == [] and not again.changes["reencoded"]
    assert again.entries[again.index("u3")]["source"]["mtime_ns"] == st.st_mtime_ns + 5_000_000_000


def test_changed_wav_text_and_label_and_removed_rows(corpus, caplog):
    """The issue's cases: a corrected label, a changed wav, rows removed from the manifest. Afterwards the
    cache equals a fresh extraction of the edited manifest, and a removed speaker is in no fold."""
    root, rows = corpus
    extract(write_manifest(root, rows), root / "c")
    write_wav(root / "wavs" / "u1.wav", seed=101, seconds=0.3)                  # a new recording
    rows[2]["text"] = "a corrected transcript"
    rows[4]["label"] = "sad"                                                    # a corrected label
    kept = [r for r in rows if r["speaker"] != "spk3"]                          # speaker spk3 withdrawn
    manifest = write_manifest(root, kept)
    with caplog.at_level("WARNING", logger="mfdr.features"):
        cache, text = extract(manifest, root / "c")
    assert sorted(text.seen) == sorted([rows[1]["text"], "a corrected transcript"])  # only those encoded again
    assert cache.changes["reencoded"] == {"u1": "wav changed", "u2": "text changed"}
    assert cache.changes["updated"] == ["u4"] and cache.changes["removed"] == ["u3", "u7"]
    for said in ("1 encoded again (text changed: 'u2')", "1 encoded again (wav changed: 'u1')",
                 "1 with new labels or metadata ('u4')", "2 removed, no longer in the data ('u3', 'u7')"):
        assert said in caplog.text, caplog.text
    fresh, _ = extract(manifest, root / "fresh")
    assert_same_features(cache, fresh)
    assert len(cache) == 6 and cache.entries[cache.index("u4")]["label"] == "sad"
    folds = make_folds(cache.entries, DataConfig(protocol="kfold", folds=3))
    assert "spk3" not in {g for f in folds for g in f.test_groups}
    assert sorted(cache.ids[i] for f in folds for i in f.test) == sorted(r["id"] for r in kept)


def test_entries_of_an_older_mfdr_are_fingerprinted_not_encoded_again(corpus):
    """A cache written before entries kept their wav's source: kept, the wavs fingerprinted now (said)."""
    root, rows = corpus
    manifest = write_manifest(root, rows)
    extract(manifest, root / "c")
    lines = (root / "c" / MANIFEST).read_text().splitlines()
    old = [lines[0]] + [json.dumps({k: v for k, v in json.loads(x).items() if k != "source"}) for x in lines[1:]]
    (root / "c" / MANIFEST).write_text("\n".join(old) + "\n")
    cache, text = extract(manifest, root / "c")
    assert text.seen == [] and sorted(cache.changes["sourced"]) == [r["id"] for r in rows]
    assert all(e["source"]["size"] > 0 for e in cache.entries)
    _, text = extract(manifest, root / "c")
    assert text.seen == []


# ---------------------------------------------------------------------- SIGKILL during (re-)extraction
def run_killed(script: Path, manifest: Path, cache: Path, tmp_path: Path, pause_at: int) -> None:
    """Start the extraction, wait until it is about to write shard number ``pause_at``, SIGKILL it."""
    marker = tmp_path / f"paused-{pause_at}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PAUSE_MARKER": str(marker), "PAUSE_AT": str(pause_at)}
    proc = subprocess.Popen([sys.executable, str(script), str(manifest), str(cache)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_when_paused(proc, marker, what="extraction", reached="reached the pause", timeout=120)


def test_sigkill_during_extraction_and_reextraction(corpus, tmp_path):
    root, rows = corpus
    script = tmp_path / "extract.py"
    script.write_text(SCRIPT)
    manifest = write_manifest(root, rows)

    run_killed(script, manifest, root / "c", tmp_path, pause_at=2)        # after 2 of 4 shards
    assert len(FeatureCache(root / "c")) == 4                             # what was written is whole
    subprocess.run([sys.executable, str(script), str(manifest), str(root / "c")], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    reference, _ = extract(manifest, root / "reference")                  # uninterrupted
    assert_same_features(FeatureCache(root / "c"), reference)

    # edit the data, then kill the re-extraction before its first new shard: the stale entries are already
    # gone (never served), the rest is intact; the next run finishes the job
    write_wav(root / "wavs" / "u5.wav", seed=55, seconds=0.25)
    rows[6]["text"] = "now with other words"
    rows[0]["label"] = "angry"
    manifest = write_manifest(root, rows[:7])
    run_killed(script, manifest, root / "c", tmp_path, pause_at=0)
    cache = FeatureCache(root / "c")
    assert sorted(cache.ids) == ["u0", "u1", "u2", "u3", "u4"] and cache[cache.index("u0")]["label"] == "angry"
    subprocess.run([sys.executable, str(script), str(manifest), str(root / "c")], check=True, timeout=300,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    fresh, _ = extract(manifest, root / "fresh")
    assert_same_features(FeatureCache(root / "c"), fresh)
    assert sorted(p.name for p in (root / "c").iterdir() if "tmp" in p.name) == []


def test_a_wav_shorter_than_one_analysis_window_is_refused(corpus):
    """A 10 ms wav gave one frame of padding, silently: refused naming it, or skipped (on_error="skip")."""
    from mfdr.errors import AudioReadError

    root, rows = corpus
    write_wav(root / "wavs" / "u2.wav", seed=2, seconds=0.01)
    manifest = write_manifest(root, rows)
    with pytest.raises(AudioReadError, match=r"wav file .*u2.wav \('u2'\) is 10 ms long, shorter than one analysis "
                                             r"window \(25 ms\)"):
        extract(manifest, root / "c")
    with pytest.warns(UserWarning, match="u2.wav"):
        cache = extract_features(read_manifest(manifest), root / "c", audio_encoder=FbankEncoder(device="cpu"),
                                 text_encoder=WordsText(), on_error="skip", progress=False, workers=1)
    assert "u2" not in cache.ids and len(cache) == 7 and len(cache.skipped) == 1
