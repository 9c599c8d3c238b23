"""Predictions for new utterances (wav + transcript) with one or more trained models."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .extract import build_encoders


def _check_encoders(meta: dict, audio, text) -> None:
    from ..data.cache import config_diff

    trained = meta.get("encoders")
    if not trained:
        return
    diff = config_diff(trained, {"audio": audio.config, "text": text.config})
    if diff:
        raise InputError("the feature extractors differ from those the model was trained with: "
                        + "; ".join(diff))


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
    models = [load_model(p, device=device or "cpu") for p in paths]
    meta = models[0][1]
    if meta.get("dataset") == "mmsa" or not meta.get("features"):
        raise InputError(f"{paths[0]} was trained on precomputed features (MMSA pickle); predicting from a "
                        "wav needs a model trained on features extracted by `mfdr extract`")
    cfg = RunConfig(model=models[0][0].config, features=FeatureConfig.from_dict(meta["features"]))
    audio_enc, text_enc = build_encoders(cfg, device)
    _check_encoders(meta, audio_enc, text_enc)
    max_s = getattr(audio_enc, "max_seconds", None)
    audio = audio_enc([read_wav(w, audio_enc.sample_rate, max_s) for w in wavs])
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
