"""Feature extraction: the configured encoders over a dataset's records, into a feature cache."""

from __future__ import annotations

from ..errors import InputError


def build_encoders(cfg, device=None):
    """The audio and text encoders of ``cfg.features`` (text truncated to ``cfg.model.text_len``)."""
    from ..features import AudioEncoder, FbankEncoder, TextEncoder

    fc = cfg.features
    if fc.audio == "fbank":
        audio = FbankEncoder(n_mels=fc.n_mels, max_seconds=fc.max_seconds, device=device)
    else:
        audio = AudioEncoder(fc.audio, layers=fc.audio_layers, max_seconds=fc.max_seconds, device=device)
    text = TextEncoder(fc.text, text_len=cfg.model.text_len, layers=fc.text_layers,
                       keep_special=fc.keep_special, device=device)
    return audio, text


def read_records(cfg, on_error: str = "raise"):
    """The utterances of ``cfg.data`` (IEMOCAP release or manifest) as ``Record``s."""
    d = cfg.data
    if d.dataset == "mmsa":
        raise InputError("data.dataset 'mmsa': MMSA pickles already hold features; nothing to extract "
                        "(train with --config configs/mosei.yaml directly)")
    if not d.path:
        what = "IEMOCAP folder" if d.dataset == "iemocap" else "manifest"
        raise InputError(f"data.path is not set: give the {what} with --path (or in the config)")
    from ..data import read_iemocap, read_manifest  # (imports torch: after the checks, which answer at once)

    if d.dataset == "iemocap":
        return read_iemocap(d.path, on_error=on_error)
    labels = d.classes if cfg.model.task == "classification" else None
    return read_manifest(d.path, labels=labels, on_error=on_error)


def extract(cfg, *, device=None, on_error: str = "raise", overwrite: bool = False, progress: bool = True,
            encoders=None):
    """Extract the features of ``cfg.data`` into ``cfg.data.features``; returns the FeatureCache."""
    if not cfg.data.features:
        raise InputError("data.features is not set: where should the feature cache go? (--out DIR)")
    records = read_records(cfg, on_error)
    from ..features import describe_changes, extract_features

    print(f"{len(records)} utterances: {records.summary()}", flush=True)
    audio, text = encoders or build_encoders(cfg, device)
    cache = extract_features(records, cfg.data.features, audio_encoder=audio, text_encoder=text,
                             batch_size=cfg.features.batch_size, dtype=cfg.features.dtype, on_error=on_error,
                             overwrite=overwrite, progress=progress)
    changed = describe_changes(cache.changes)
    if changed:
        print(f"feature cache {cache.path}: {changed}", flush=True)
    return cache
