"""read_mmsa on pickles in MMSA's layout (aligned and unaligned), MMSADataset and its batches."""

import pickle

import numpy as np
import pytest
import torch

from mfdr.data import DataError, MMSADataset, collate, read_mmsa

SIZES = {"train": 5, "valid": 3, "test": 4}
L, TEXT_DIM, AUDIO_DIM = 7, 12, 5


def _split(rng, n: int, T: int, aligned: bool, name: str) -> dict:
    text_lengths = rng.integers(2, L + 1, n)
    text = np.zeros((n, L, TEXT_DIM), np.float32)
    mask = np.zeros((n, L), np.float32)
    for i, m in enumerate(text_lengths):
        text[i, :m] = rng.standard_normal((m, TEXT_DIM))
        mask[i, :m] = 1
    ids = np.stack([rng.integers(100, 1000, (n, L)), mask, np.zeros((n, L))], 1).astype(np.float32)
    audio = rng.standard_normal((n, T, AUDIO_DIM)).astype(np.float32)
    audio[0, 1, 2] = -np.inf                                   # COVAREP's -inf
    split = {"raw_text": [f"text {i}" for i in range(n)], "id": [f"{name}vid$_${i}" for i in range(n)],
             "text": text, "text_bert": ids, "audio": audio,
             "vision": np.zeros((n, T, 3), np.float32),
             "regression_labels": rng.uniform(-3, 3, n).astype(np.float32),
             "classification_labels": rng.integers(0, 2, n)}
    if aligned:
        audio[:, :, :] *= mask[:, :, None]                      # aligned: audio padded like the text
        audio[0, 1, 2] = -np.inf
    else:
        lengths = rng.integers(1, T + 1, n)
        for i, t in enumerate(lengths):
            audio[i, t:] = 0
        split["audio_lengths"] = lengths.tolist()
        split["vision_lengths"] = lengths.tolist()
    return split, text_lengths


def _pickle(tmp_path, aligned: bool):
    rng = np.random.default_rng(0)
    T = L if aligned else 11
    data, lengths = {}, {}
    for name, n in SIZES.items():
        data[name], lengths[name] = _split(rng, n, T, aligned, name)
    path = tmp_path / ("aligned_50.pkl" if aligned else "unaligned_50.pkl")
    with open(path, "wb") as f:
        pickle.dump(data, f)
    return path, data, lengths


@pytest.mark.parametrize("aligned", [True, False], ids=["aligned", "unaligned"])
def test_read_mmsa(tmp_path, aligned):
    path, data, text_lengths = _pickle(tmp_path, aligned)
    out = read_mmsa(path)
    assert list(out) == ["train", "valid", "test"]
    for name, n in SIZES.items():
        s, raw = out[name], data[name]
        assert len(s) == n and s.id.tolist() == raw["id"]
        assert s.text.shape == (n, L, TEXT_DIM) and s.text.dtype == np.float32
        assert s.audio.shape == (n, L if aligned else 11, AUDIO_DIM)
        assert np.isfinite(s.audio).all() and s.audio[0, 1, 2] == 0
        np.testing.assert_array_equal(s.text_lengths, text_lengths[name])
        expected_audio = text_lengths[name] if aligned else raw["audio_lengths"]
        np.testing.assert_array_equal(s.audio_lengths, expected_audio)
        np.testing.assert_allclose(s.label, raw["regression_labels"])
        assert s.audio_lengths.dtype == np.int64 and s.label.dtype == np.float32


def test_text_lengths_without_text_bert(tmp_path):
    path, data, text_lengths = _pickle(tmp_path, aligned=False)
    for split in data.values():
        del split["text_bert"]
    with open(path, "wb") as f:
        pickle.dump(data, f)
    np.testing.assert_array_equal(read_mmsa(path)["train"].text_lengths, text_lengths["train"])


def test_dataset_and_collate(tmp_path):
    path, _, text_lengths = _pickle(tmp_path, aligned=False)
    split = read_mmsa(path, splits=["train"])["train"]
    ds = MMSADataset(split)
    item = ds[1]
    assert item["text"].shape == (text_lengths["train"][1], TEXT_DIM)
    assert item["audio"].shape == (split.audio_lengths[1], AUDIO_DIM)
    batch = collate([ds[i] for i in range(len(ds))], audio_len=8, text_len=6)
    assert batch["audio"].shape == (5, 8, AUDIO_DIM) and batch["text"].shape == (5, 6, TEXT_DIM)
    assert batch["label"].dtype == torch.float32
    assert torch.equal(batch["audio_lengths"], torch.from_numpy(np.minimum(split.audio_lengths, 8)))
    cls = MMSADataset(split, task="classification")
    assert [cls[i]["label"] for i in range(5)] == [int(y >= 0) for y in split.label]


def test_errors_name_the_file_split_and_key(tmp_path):
    path, data, _ = _pickle(tmp_path, aligned=True)
    with pytest.raises(DataError, match=r"aligned_50\.pkl: missing split 'dev'"):
        read_mmsa(path, splits=["dev"])
    del data["valid"]["regression_labels"]
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(DataError, match=r"aligned_50\.pkl \[valid\]: missing key 'regression_labels'"):
        read_mmsa(path)
    data["valid"]["regression_labels"] = np.zeros(2)
    with open(path, "wb") as f:
        pickle.dump(data, f)
    with pytest.raises(DataError, match=r"\[valid\]: 'regression_labels' has 2 entries, expected 3"):
        read_mmsa(path)
    path.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot be read"):
        read_mmsa(path)
    with pytest.raises(DataError, match="does not exist"):
        read_mmsa(tmp_path / "missing.pkl")
