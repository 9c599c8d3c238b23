"""Predictions for new utterances (wav + transcript) with one or more trained models."""

from __future__ import annotations

import logging
from pathlib import Path

from ..errors import InputError
from .extract import build_encoders

log = logging.getLogger("mfdr.run")


def _check_encoders(meta: dict, audio, text) -> None:
    from ..data.cache import config_diff

    trained = meta.get("encoders")
    if not trained:
        return
    diff = config_diff(trained, {"audio": audio.config, "text": text.config})
    if diff:
        raise InputError("the feature extractors differ from those the model was trained with: "
                        + "; ".join(diff))


def check_inputs(wavs: list, texts: list) -> None:
    """``InputError`` unless every wav exists and every transcript has a word (one per wav)."""
    if len(wavs) != len(texts) or not wavs:
        raise InputError(f"give one --text per --wav (got {len(wavs)} --wav and {len(texts)} --text)")
    for w, t in zip(wavs, texts, strict=True):
        if not Path(w).is_file():
            raise InputError(f"--wav {w} does not exist")
        if not str(t).strip():
            raise InputError(f"--text for --wav {w} is empty: the model needs the transcript (as mfdr extract "
                             "refuses an empty one)")


def predict(model_path, wavs: list[str], texts: list[str], *, alignments: list | None = None,
            device=None) -> list[dict]:
    """Class probabilities (or scores) for ``wavs[i]`` with transcript ``texts[i]``; a run folder
    averages the probabilities of its folds' best models. ``alignments[i]``: a word alignment file of
    ``wavs[i]`` (a Praat TextGrid with a ``words`` tier, or a ``word,start,end`` CSV) for a model trained
    with ``align="forced"`` (without one, its windows are spread over the audio, as ``stretch``)."""
    import torch

    from ..config import FeatureConfig, RunConfig
    from ..data import collate
    from ..features import read_wav
    from .evaluate import find_models, load_model

    path = Path(model_path)
    paths = [path] if path.is_file() else find_models(path)
    check_inputs(wavs, texts)  # before the models load (seconds): a typo answers at once
    models = [load_model(p, device=device or "cpu") for p in paths]
    meta = models[0][1]
    if not meta:
        raise InputError(f"{paths[0]} has no meta.json (the task, classes and feature extractors that mfdr "
                         "train writes beside the weights): restore it, or predict with the fold's checkpoint.pt")
    if meta.get("dataset") == "mmsa" or not meta.get("features"):
        raise InputError(f"{paths[0]} was trained on precomputed features (MMSA pickle); predicting from a "
                        "wav needs a model trained on features extracted by `mfdr extract`")
    cfg = RunConfig(model=models[0][0].config, features=FeatureConfig.from_dict(meta["features"]))
    audio_enc, text_enc = build_encoders(cfg, device)
    _check_encoders(meta, audio_enc, text_enc)
    max_s = getattr(audio_enc, "max_seconds", None)
    audio = audio_enc([read_wav(w, audio_enc.sample_rate, max_s) for w in wavs])
    rate, n = getattr(audio_enc, "frame_rate", None), cfg.model.audio_len
    for w, a in zip(wavs, audio, strict=True):
        if len(a) > n:  # collate keeps the first audio_len frames, as it did in training
            span = (lambda k: f"{k / rate:.1f} s") if rate else (lambda k: f"{k} frames")
            log.warning("--wav %s is %s long: the model reads only its first %s (model.audio_len = %d frames)",
                        w, span(len(a)), span(n), n)
    text = text_enc(list(texts))
    starts = [None] * len(wavs)
    if alignments is not None:
        from ..data.alignment import audio_duration, read_alignment

        if len(alignments) != len(wavs):
            raise InputError(f"give one alignment per wav (got {len(alignments)} for {len(wavs)} wavs)")
        words = [None if f is None else read_alignment(f, audio_duration(w)) for f, w in zip(alignments, wavs,
                                                                                               strict=True)]
        starts = text_enc.window_starts(list(texts), words, audio_enc.frame_rate)
    batch = collate([{"id": str(i), "audio": a, "text": t, "label": 0, "window_starts": s} for i, (a, t, s) in
                     enumerate(zip(audio, text, starts, strict=True))], cfg.model.audio_len, cfg.model.text_len)
    a, t = batch["audio"], batch["text"]
    if meta.get("zero") == "audio":
        a = torch.zeros_like(a)
    elif meta.get("zero") == "text":
        t = torch.zeros_like(t)
    outs = []
    with torch.no_grad():
        for model, _ in models:
            dev = next(model.parameters()).device
            forced = model.config.align == "forced" and model.config.attention == "sawa"
            ws = batch["window_starts"].to(dev) if forced else None
            out = model(a.to(dev), t.to(dev), batch["audio_lengths"].to(dev), batch["text_lengths"].to(dev), ws)
            out = out.float().cpu()
            outs.append(out.softmax(-1) if meta["task"] == "classification" else out)
    mean = torch.stack(outs).mean(0)
    results = []
    for i, (w, x) in enumerate(zip(wavs, texts, strict=True)):
        r = {"wav": str(w), "text": x, "models": len(models)}
        if meta["task"] == "classification":
            probs = {c: float(p) for c, p in zip(meta["classes"], mean[i].tolist(), strict=True)}
            r.update(prediction=max(probs, key=probs.get), probabilities=probs)
        else:
            r.update(score=float(mean[i]))
        results.append(r)
    return results
