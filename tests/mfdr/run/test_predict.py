"""``mfdr predict`` on bad or tricky input (issue 19): an empty transcript, a missing wav (both answered
before any model loads), a model folder without its meta.json, truncated weights, and a wav longer than the
model reads (said, not cut silently). The model folder is built as ``mfdr train`` writes ``best/``."""

import json
import logging

import numpy as np
import pytest
import torch

from mfdr import MFDR, MFDRConfig
from mfdr.config import FeatureConfig
from mfdr.errors import CheckpointError, InputError
from mfdr.run import evaluate
from mfdr.run.predict import predict

sf = pytest.importorskip("soundfile")
transformers = pytest.importorskip("transformers")
CLASSES = ["neutral", "happy", "angry", "sad"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """best/ of a small model on log-mel (80-d) + a tiny random BERT (32-d, saved to a folder): config.json,
    model.safetensors, meta.json."""
    root = tmp_path_factory.mktemp("predict")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "am", "so", "happy", "sad"]
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root / "bert")
    transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                   intermediate_size=32, vocab_size=len(vocab),
                                                   max_position_embeddings=32)).save_pretrained(root / "bert")
    torch.manual_seed(0)
    cfg = MFDRConfig(audio_dim=80, text_dim=32, audio_len=40, text_len=12, d_model=16, heads=2, window=4, hop=3,
                     dfc_hidden=8)
    best = MFDR(cfg).save_pretrained(root / "best")
    meta = {"task": "classification", "classes": CLASSES, "zero": None, "dataset": "manifest",
            "features": FeatureConfig(text=str(root / "bert")).to_dict(), "encoders": None}
    (best / "meta.json").write_text(json.dumps(meta))
    return best


def wav(path, seconds):
    sf.write(str(path), (0.1 * np.random.default_rng(0).standard_normal(int(seconds * 16000))).astype(np.float32),
             16000, subtype="PCM_16")
    return str(path)


def test_inputs_are_checked_before_any_model_loads(model_dir, tmp_path, monkeypatch):
    def no_loading(*a, **k):
        raise AssertionError("a model was loaded before the inputs were checked")

    monkeypatch.setattr(evaluate, "load_model", no_loading)
    w = wav(tmp_path / "a.wav", 0.3)
    with pytest.raises(InputError, match=r"--text for --wav .*a.wav is empty"):
        predict(model_dir, [w], [" "])
    with pytest.raises(InputError, match=r"--wav .*nope.wav does not exist"):
        predict(model_dir, [str(tmp_path / "nope.wav")], ["i am happy"])


def test_missing_meta_json_is_named(model_dir, tmp_path):
    import shutil

    bare = tmp_path / "best"
    shutil.copytree(model_dir, bare)
    (bare / "meta.json").unlink()
    with pytest.raises(InputError, match=r"best has no meta.json .*restore it"):
        predict(bare, [wav(tmp_path / "a.wav", 0.3)], ["i am happy"])


def test_truncated_weights_are_named(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "best"
    shutil.copytree(model_dir, broken)
    raw = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match=r"model weights .*model.safetensors cannot be read .*truncated or "
                                              r"corrupt"):
        predict(broken, [wav(tmp_path / "a.wav", 0.3)], ["i am happy"])


def test_a_wav_longer_than_the_model_reads_is_said(model_dir, tmp_path, caplog):
    short, long = wav(tmp_path / "short.wav", 0.5), wav(tmp_path / "long.wav", 3.0)   # 40 frames = 0.8 s
    with caplog.at_level(logging.WARNING, logger="mfdr.run"):
        (a, b) = predict(model_dir, [short, long], ["i am happy", "so sad"], device="cpu")
    assert f"--wav {long} is 3.0 s long: the model reads only its first 0.8 s (model.audio_len = 40 frames)" \
        in caplog.text and short not in caplog.text
    assert sum(a["probabilities"].values()) == pytest.approx(1.0) and b["models"] == 1
