"""The feature cache on its own (random tensors): round trip, resume, torn writes, config refusal."""

import json
import pickle

import pytest
import torch

from mfdr.data import CacheConfigError, CacheWriter, FeatureCache, config_hash
from mfdr.data.cache import MANIFEST

CONFIG = {"audio": {"kind": "fbank", "dim": 6, "source": "/here"}, "text": {"kind": "t", "dim": 4},
          "dtype": "x"}


def _shard(start: int, n: int):
    entries = [{"id": f"u{i}", "label": "happy", "speaker": f"s{i % 2}", "session": 1}
               for i in range(start, start + n)]
    audio = [torch.randn(3 + i, 6) for i in range(start, start + n)]
    text = [torch.randn(1 + i % 3, 4) for i in range(start, start + n)]
    return entries, audio, text


def test_round_trip_lazy_reads(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    shards = [_shard(0, 3), _shard(3, 2)]
    for s in shards:
        w.write_shard(*s)
    cache = FeatureCache(tmp_path, expect_config=CONFIG)
    assert len(cache) == 5 and cache.ids == [f"u{i}" for i in range(5)]
    assert (cache.audio_dim, cache.text_dim) == (6, 4)
    audio = [a for s in shards for a in s[1]]
    text = [t for s in shards for t in s[2]]
    for i in range(5):
        item = cache[i]
        assert torch.equal(item["audio"], audio[i]) and torch.equal(item["text"], text[i])
        assert item["audio_len"] == len(audio[i]) and item["speaker"] == f"s{i % 2}"
    assert cache.index("u3") == 3
    with pytest.raises(KeyError, match="'nope' is not in the feature cache"):
        cache.index("nope")
    clone = pickle.loads(pickle.dumps(cache))                # as DataLoader workers get it
    assert torch.equal(clone[4]["audio"], audio[4])


def test_float16_storage_reads_float32(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    entries, audio, text = _shard(0, 2)
    w.write_shard(entries, audio, text, dtype=torch.float16)
    item = FeatureCache(tmp_path)[1]
    assert item["audio"].dtype == torch.float32
    torch.testing.assert_close(item["audio"], audio[1].half().float())


def test_resume_skips_done_and_drops_torn_line(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    w.write_shard(*_shard(0, 2))
    with open(tmp_path / MANIFEST, "a") as f:                # a write cut short by a crash
        f.write('{"id": "u2", "lab')
    (tmp_path / "shard-00001.safetensors.tmp").write_bytes(b"partial")
    assert len(FeatureCache(tmp_path)) == 2                  # readers ignore the torn line
    w2 = CacheWriter(tmp_path, CONFIG)
    assert w2.done == {"u0", "u1"} and w2.next_shard == 1
    w2.write_shard(*_shard(2, 2))
    cache = FeatureCache(tmp_path)
    assert cache.ids == ["u0", "u1", "u2", "u3"]
    assert all(json.loads(line) for line in (tmp_path / MANIFEST).read_text().splitlines())


def test_refuses_another_config(tmp_path):
    CacheWriter(tmp_path, CONFIG).write_shard(*_shard(0, 1))
    other = {**CONFIG, "audio": {**CONFIG["audio"], "dim": 8}}
    with pytest.raises(CacheConfigError, match=r"audio\.dim: cache has 6, requested 8"):
        FeatureCache(tmp_path, expect_config=other)
    with pytest.raises(CacheConfigError, match="another config"):
        CacheWriter(tmp_path, other)
    moved = {**CONFIG, "audio": {**CONFIG["audio"], "source": "/elsewhere"}}   # same weights, new path
    assert config_hash(moved) == config_hash(CONFIG)
    FeatureCache(tmp_path, expect_config=moved)
    w = CacheWriter(tmp_path, other, overwrite=True)
    assert w.done == set() and not list(tmp_path.glob("shard-*"))


def test_corrupt_or_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature cache"):
        FeatureCache(tmp_path)
    (tmp_path / MANIFEST).write_text('{"hello": 1}\n')
    with pytest.raises(CacheConfigError, match="not an mfdr feature cache"):
        FeatureCache(tmp_path)
    (tmp_path / MANIFEST).unlink()
    CacheWriter(tmp_path, CONFIG).write_shard(*_shard(0, 1))
    (tmp_path / "shard-00000.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard shard-00000.safetensors is missing"):
        FeatureCache(tmp_path)[0]
    with pytest.raises(ValueError, match="expected the same non-zero count"):
        CacheWriter(tmp_path, CONFIG).write_shard([], [], [])
