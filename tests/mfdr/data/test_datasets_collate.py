"""FeatureDataset over a cache, and the padding collate's batch contract."""

import pytest
import torch
from torch.utils.data import DataLoader

from mfdr.data import EMOTIONS, CacheWriter, DataError, FeatureDataset, collate, feature_stats, make_collate

AUDIO_DIM, TEXT_DIM = 6, 4


def _cache(tmp_path, labels):
    w = CacheWriter(tmp_path, {"test": True})
    n = len(labels)
    entries = [{"id": f"u{i}", "label": y, "speaker": f"s{i % 2}", "session": i % 2 + 1}
               for i, y in enumerate(labels)]
    w.write_shard(entries, [torch.randn(5 + 3 * i, AUDIO_DIM) for i in range(n)],
                  [torch.randn(2 + i, TEXT_DIM) for i in range(n)])
    return tmp_path


def test_classification_items_and_batches(tmp_path):
    path = _cache(tmp_path, ["sad", "neutral", "angry", "happy", "sad"])
    ds = FeatureDataset(path)
    assert ds.labels == [3, 0, 2, 1, 3]
    item = ds[2]
    assert item["audio"].shape == (11, AUDIO_DIM) and item["text"].shape == (4, TEXT_DIM)
    assert item["label"] == EMOTIONS.index("angry") and item["speaker"] == "s0" and item["session"] == 1
    sub = FeatureDataset(ds.cache, indices=[4, 1])
    assert len(sub) == 2 and sub[0]["id"] == "u4"
    loader = DataLoader(ds, batch_size=3, collate_fn=make_collate(audio_len=9, text_len=5), num_workers=2)
    batches = list(loader)
    b = batches[0]
    assert b["audio"].shape == (3, 9, AUDIO_DIM) and b["text"].shape == (3, 5, TEXT_DIM)
    assert b["audio_lengths"].tolist() == [5, 8, 9] and b["text_lengths"].tolist() == [2, 3, 4]
    assert b["audio_lengths"].dtype == b["text_lengths"].dtype == b["label"].dtype == torch.int64
    assert b["label"].tolist() == [3, 0, 2] and b["id"] == ["u0", "u1", "u2"]
    torch.testing.assert_close(b["audio"][1, :8], ds[1]["audio"])
    assert b["audio"][0, 5:].abs().sum() == 0 and b["text"][0, 2:].abs().sum() == 0
    torch.testing.assert_close(b["audio"][2], ds[2]["audio"][:9])             # truncated


def test_regression_and_label_errors(tmp_path):
    ds = FeatureDataset(_cache(tmp_path / "r", [0.5, -1.25]), task="regression")
    batch = collate([ds[0], ds[1]], audio_len=None, text_len=None)
    assert batch["label"].dtype == torch.float32 and batch["label"].tolist() == [0.5, -1.25]
    assert batch["audio"].shape == (2, 8, AUDIO_DIM) and batch["text"].shape == (2, 3, TEXT_DIM)
    with pytest.raises(DataError, match=r"'u0' has label 'bored', expected one of \['neutral'"):
        FeatureDataset(_cache(tmp_path / "c", ["bored"]))
    with pytest.raises(DataError, match="expected a number for task='regression'"):
        FeatureDataset(_cache(tmp_path / "d", ["sad"]), task="regression")
    with pytest.raises(ValueError, match="task must be one of"):
        FeatureDataset(tmp_path / "d", task="ranking")


def test_collate_checks():
    with pytest.raises(ValueError, match="empty batch"):
        collate([])
    bad = [{"id": 0, "audio": torch.zeros(3, 2), "text": torch.zeros(2, 4), "label": 1},
           {"id": 1, "audio": torch.zeros(3, 5), "text": torch.zeros(2, 4), "label": 1}]
    with pytest.raises(ValueError, match=r"with one dim, got shapes \[\(3, 2\), \(3, 5\)\]"):
        collate(bad)


def test_feature_stats_standardise(tmp_path):
    cache = FeatureDataset(_cache(tmp_path, ["sad", "happy", "sad"])).cache
    stats = feature_stats(cache, indices=[0, 2])
    assert stats["audio_mean"].shape == (AUDIO_DIM,) and stats["text_std"].shape == (TEXT_DIM,)
    frames = torch.cat([cache[0]["audio"], cache[2]["audio"]])
    torch.testing.assert_close(stats["audio_mean"], frames.mean(0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats["audio_std"], frames.std(0, unbiased=False), atol=1e-5, rtol=1e-5)
    ds = FeatureDataset(cache, indices=[0, 2], stats=stats)
    z = torch.cat([ds[0]["audio"], ds[1]["audio"]])
    torch.testing.assert_close(z.mean(0), torch.zeros(AUDIO_DIM), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="no utterances"):
        feature_stats(cache, indices=[])


def test_unlabelled_entries(tmp_path):
    path = _cache(tmp_path, [None, "sad"])
    ds = FeatureDataset(path)
    assert ds.labels == [-1, 3]
    assert collate([ds[0], ds[1]])["label"].tolist() == [-1, 3]


def test_window_starts_in_items_and_batches(tmp_path):
    w = CacheWriter(tmp_path, {"test": True})
    entries = [{"id": f"u{i}", "label": "sad", "speaker": "s", "session": 1} for i in range(3)]
    text = [torch.randn(n, TEXT_DIM) for n in (3, 6, 2)]
    starts = [torch.tensor([0, 0, 7]), torch.tensor([2, 2, 5, 9, 9, 14]), None]
    w.write_shard(entries, [torch.randn(12, AUDIO_DIM)] * 3, text, window_starts=starts)
    ds = FeatureDataset(tmp_path)
    assert ds[0]["window_starts"].tolist() == [0, 0, 7] and ds[2]["window_starts"] is None
    assert ds.unaligned_ids == ["u2"] and FeatureDataset(ds.cache, indices=[0, 1]).unaligned_ids == []
    b = collate([ds[0], ds[1], ds[2]], audio_len=12, text_len=5)
    assert b["window_starts"].dtype == torch.int64 and b["window_starts"].shape == (3, 5)
    assert b["window_starts"].tolist() == [[0, 0, 7, 7, 7],          # padded with the last start
                                           [2, 2, 5, 9, 9],          # truncated with the text
                                           [-1, -1, -1, -1, -1]]     # no alignment
    assert b["text_lengths"].tolist() == [3, 5, 2]
    longest = collate([ds[0], ds[2]], audio_len=None, text_len=None)
    assert longest["window_starts"].tolist() == [[0, 0, 7], [-1, -1, -1]]
    with pytest.raises(ValueError, match=r"item 'u0' has window_starts of shape \(2,\), expected \(3,\)"):
        collate([{**ds[0], "window_starts": torch.tensor([0, 1])}])
