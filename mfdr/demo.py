"""``mfdr demo`` (``make demo``): the whole pipeline on a synthetic acted-emotion corpus.

1. ``corpus/``: espeak-ng speaks ``demo.utterances`` sentences with 8 voices (``mfdr.data.synthetic``):
   the label is the prosody's emotion when it is not neutral, else the words' emotion, so neither
   modality alone suffices (``prosodic`` and ``ironic`` utterances need the audio, ``lexical`` ones
   the text).
2. ``features/``: log-mel audio frames and MiniLM token features (``mfdr extract``).
3. ``mfdr/``, ``text_only/``, ``audio_only/``: speaker-independent 4-fold cross-validation of MFDR,
   and of the same network fed zeros for the audio, or for the text (``mfdr train``).
4. ``results.md`` / ``results.json``: WA / UA of the three (mean ± std over folds), and the accuracy
   per kind of utterance; ``figures/``: the SAWA attention of a test utterance with its expanded
   windows, the levels reached, and each run's curves and confusion matrix.

Each step reuses what a previous run with the same settings left (``--fresh`` redoes all).
"""

from __future__ import annotations

import csv
import json
import time
import typing
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from .config import RunConfig, Section, config_path, read_file
from .errors import CacheConfigError, ConfigError, RunDirError

VARIANTS = (  # (name, run folder, modality fed zeros)
    ("MFDR (audio + text)", "mfdr", None),
    ("text only (audio zeroed)", "text_only", "audio"),
    ("audio only (text zeroed)", "audio_only", "text"),
)
# --quick: a smoke test of every step in about a minute (tiny corpus and model, 2 folds, 2 epochs).
QUICK = {"utterances": 32, "speakers": 4, "set": [
    "data.folds=2", "train.epochs=2", "train.batch_size=8", "model.d_model=16", "model.heads=2",
    "model.dfc_hidden=8", "model.audio_len=120", "model.text_len=16"]}


@dataclass
class DemoConfig(Section):
    """The ``demo:`` section of a demo config: the synthetic corpus (size, speakers, seed)."""

    PREFIX: typing.ClassVar[str] = "demo"
    utterances: int = 800
    speakers: int = 8
    seed: int = 0

    def __post_init__(self):
        self.check_types()
        self.at_least(1, "utterances", "speakers")


def load_demo_config(config="demo", overrides=(), quick: bool = False) -> tuple[RunConfig, dict]:
    """``(RunConfig, demo settings)`` from a demo config (a file or the shipped ``demo``): the run
    sections plus a ``demo:`` section (:class:`DemoConfig`), read by the one config reader."""
    path = config_path(config)
    d = read_file(path)
    try:
        if not isinstance(d, dict):
            raise ConfigError(f"a demo config must be a mapping of sections, got {type(d).__name__}")
        demo = DemoConfig.from_dict(d.pop("demo", None) or {})
        overrides = list(overrides)
        if quick:
            demo = demo.replace(**{k: v for k, v in QUICK.items() if k != "set"})
            overrides = QUICK["set"] + overrides
        cfg = RunConfig.from_dict(d, overrides)
    except ConfigError as e:
        raise type(e)(f"{path}: {e}") from None
    return cfg, demo.to_dict()


def _corpus(out: Path, demo: dict, fresh: bool, progress: bool) -> tuple[Path, bool]:
    """Synthesize the corpus unless ``out/corpus`` already holds this one; (manifest, made anew)."""
    import shutil

    from .data import make_synthetic_corpus

    corpus, stamp = out / "corpus", out / "corpus" / "corpus.json"
    manifest = corpus / "manifest.csv"
    demo = {**demo, "word_timings": True}  # a corpus made before the synthesizer recorded them is made again
    if not fresh and manifest.exists() and stamp.exists() and json.loads(stamp.read_text()) == demo:
        return manifest, False
    shutil.rmtree(corpus, ignore_errors=True)
    make_synthetic_corpus(corpus, demo["utterances"], speakers=demo["speakers"], seed=demo["seed"],
                          progress=progress)
    stamp.write_text(json.dumps(demo))
    return manifest, True


def _features(cfg, fresh: bool, progress: bool):
    """Extract (or reuse) the corpus' features; a new corpus or other settings rebuild the cache."""
    from .run.extract import build_encoders, extract

    encoders = build_encoders(cfg)
    try:
        cache = extract(cfg, overwrite=fresh, progress=progress, encoders=encoders)
    except CacheConfigError:
        print("the feature cache was made with other settings: rebuilding it", flush=True)
        return extract(cfg, overwrite=True, progress=progress, encoders=encoders), encoders
    if cfg.model.align == "forced" and not cache.has_window_starts:
        print("the feature cache has no word starts (made before mfdr read word alignments): rebuilding it",
              flush=True)
        cache = extract(cfg, overwrite=True, progress=progress, encoders=encoders)
    return cache, encoders


def prepare_data(out, cfg: RunConfig, demo: dict, *, fresh: bool = False, progress: bool = True):
    """The synthetic corpus and its features under ``out`` (``corpus/``, ``features/``), made or reused
    (also by ``mfdr ablate``); points ``cfg.data.path`` and ``cfg.data.features`` at them.

    Returns ``(feature cache, text encoder, {"corpus": seconds, "features": seconds})``.
    """
    out, stamps = Path(out), {}
    t0 = time.time()
    manifest, new_corpus = _corpus(out, demo, fresh, progress)
    stamps["corpus"] = time.time() - t0
    cfg.data.path, cfg.data.features = str(manifest), str(out / "features")

    t0 = time.time()
    cache, (_, text_encoder) = _features(cfg, fresh or new_corpus, progress)
    stamps["features"] = time.time() - t0
    print(f"corpus {stamps['corpus']:.0f} s, features {stamps['features']:.0f} s: {len(cache)} utterances, "
          f"audio {cache.audio_dim}-d log-mel, text {cache.text_dim}-d MiniLM", flush=True)
    return cache, text_encoder, stamps


def _train(cfg, run_dir: Path, title: str, fresh: bool, progress: bool) -> dict:
    from .run import run_training

    try:
        return run_training(cfg, run_dir, resume=not fresh, overwrite=fresh, progress=progress, title=title)
    except RunDirError:  # a run with other settings: the demo owns this folder, start it again
        print(f"{run_dir} holds a run with other settings: starting it again", flush=True)
        return run_training(cfg, run_dir, overwrite=True, progress=progress, title=title)


def accuracy_by_kind(run_dir: Path, entries: list[dict]) -> dict[str, float]:
    """Test accuracy per utterance kind (neutral, lexical, prosodic, ironic, congruent), all folds."""
    kind = {e["id"]: e.get("kind", "?") for e in entries}
    hits, totals = defaultdict(int), defaultdict(int)
    for pred in sorted(run_dir.glob("fold-*/predictions.csv")):
        with open(pred, newline="") as f:
            for row in csv.DictReader(f):
                k = kind.get(row["id"], "?")
                totals[k] += 1
                hits[k] += row["label"] == row["pred"]
    return {k: hits[k] / totals[k] for k in sorted(totals)}


def _figures(out: Path, cfg, cache, text_encoder) -> list[Path]:
    """The SAWA attention map of one test utterance of fold 0, and the levels over that fold's test set."""
    import numpy as np
    import torch

    from . import plots
    from .data import collate
    from .run import load_model

    run = out / "mfdr"
    model, _ = load_model(run / "fold-0" / "best")
    folds = json.loads((run / "folds.json").read_text())
    test = [cache.index(i) for i in folds[0]["test"]]
    items = [cache[i] for i in test]
    # An utterance whose label needs both modalities (prosodic or ironic) shows the fusion at work.
    pick = next((it for it in items if it.get("kind") in ("ironic", "prosodic")), items[0])
    words = cache.entries[cache.index(pick["id"])]["text"]  # the item's "text" is the token features
    batch = collate([{**pick, "label": 0}], cfg.model.audio_len, cfg.model.text_len)
    al, tl = int(batch["audio_lengths"][0]), int(batch["text_lengths"][0])
    forced = cfg.model.align == "forced"
    ws = batch["window_starts"][0] if forced else None
    att, level = plots.sawa_map(model, batch["audio"][0], batch["text"][0], al, tl, ws)
    tokens = text_encoder.tokenizer.convert_ids_to_tokens(text_encoder.tokenizer(words)["input_ids"])
    starts = plots.window_starts(model, batch["audio"].shape[1], al, tl, ws)
    title = f"{pick['id']} ({pick.get('kind')}, {pick['label']}): \"{words}\""
    paths = [plots.plot_attention(att, level, out / "figures" / "attention.png", window=cfg.model.window,
                                  starts=starts, audio_len=al, text_len=tl, tokens=tokens, title=title)]
    levels = []
    with torch.no_grad():
        for s in range(0, len(items), 32):
            b = collate([{**it, "label": 0} for it in items[s: s + 32]], cfg.model.audio_len,
                        cfg.model.text_len)
            model(b["audio"], b["text"], b["audio_lengths"], b["text_lengths"],
                  b["window_starts"] if forced else None)
            lv = model.fusion.last_level.permute(0, 2, 1)  # (B, L, H)
            valid = torch.arange(lv.shape[1])[None, :] < b["text_lengths"][:, None]
            levels.append(lv[valid].numpy())
    paths.append(plots.plot_levels(np.concatenate(levels), out / "figures" / "levels.png",
                                   title="SAWA levels, fold-0 test words"))
    return paths


def results_table(rows: list[tuple[str, dict, dict]], demo: dict, n_folds: int) -> str:
    """Markdown: WA / UA per variant (mean ± std over folds), and the accuracy per utterance kind."""
    from .metrics import fmt

    kinds = sorted({k for _, _, by_kind in rows for k in by_kind})
    lines = [f"## Demo: synthetic corpus ({demo['utterances']} utterances, {demo['speakers']} speakers), "
             f"speaker-independent {n_folds}-fold cross-validation", "",
             "WA / UA in %, mean ± std over folds; then the accuracy on each kind of utterance (all "
             "folds).", "",
             "| input | WA | UA | " + " | ".join(kinds) + " |", "|---|---:|---:|" + "---:|" * len(kinds)]
    for name, summary, by_kind in rows:
        m, s = summary["mean"], summary["std"]
        lines.append(f"| {name} | {fmt('wa', m['wa'], s['wa'])} | {fmt('ua', m['ua'], s['ua'])} | "
                     + " | ".join(fmt("wa", by_kind.get(k)) for k in kinds) + " |")
    lines += ["", "Kinds: *lexical* (emotional words, neutral voice), *prosodic* (neutral words, emotional "
              "voice), *ironic* (words and voice disagree; the voice decides), *congruent* (both agree), "
              "*neutral*. Text alone cannot see prosodic or ironic utterances; audio alone cannot see "
              "lexical ones."]
    return "\n".join(lines) + "\n"


def run_demo(out="runs/demo", *, config="demo", utterances: int | None = None, quick: bool = False,
             overrides=(), fresh: bool = False, progress: bool = True) -> dict:
    """Run the demo into ``out``; returns ``{variant: results summary}`` and prints the table."""
    from .run.files import write_json

    t_start, out = time.time(), Path(out)
    cfg, demo = load_demo_config(config, overrides, quick)
    if utterances is not None:
        demo["utterances"] = utterances
    cache, text_encoder, stamps = prepare_data(out, cfg, demo, fresh=fresh, progress=progress)

    import dataclasses

    rows, summaries = [], {}
    for name, folder, zero in VARIANTS:
        t0 = time.time()
        variant = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, zero=zero))
        summary = _train(variant, out / folder, f"demo: {name}", fresh, progress)
        stamps[folder] = time.time() - t0
        summaries[name] = summary
        rows.append((name, summary, accuracy_by_kind(out / folder, cache.entries)))

    t0 = time.time()
    figures = _figures(out, cfg, cache, text_encoder)
    stamps["figures"] = time.time() - t0
    table = results_table(rows, demo, len(summaries[VARIANTS[0][0]]["folds"]))
    (out / "results.md").write_text(table)
    write_json(out / "results.json", {"demo": demo, "config": cfg.to_dict(), "seconds": stamps,
                                      "variants": {n: {"summary": s, "accuracy_by_kind": k}
                                                   for n, s, k in rows}})
    print("\n" + table)
    figures += sorted(out.glob("*/figures/*.png"))
    print("figures:\n" + "\n".join(f"  {p}" for p in figures))
    print(f"results: {out / 'results.md'}, {out / 'results.json'}; total {time.time() - t_start:.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in stamps.items())})", flush=True)
    return summaries
