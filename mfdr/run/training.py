"""A whole run: every fold of ``cfg.data.protocol``, then the results (``run_training``).

A run folder::

    .mfdr-run           marks the folder as an mfdr run (written first): --overwrite replaces only a marked
                        folder, and only the files mfdr wrote there (anything else in it is refused)
    .mfdr-run.lock      held by the process writing the run: a second one is refused, naming it
    config.yaml         the full, resolved RunConfig (model, train, data, features)
    folds.json          each fold's train / validation / test utterance ids (mfdr.protocols)
    fold-0/
      checkpoint.pt     the last finished epoch: weights, optimizer, RNG states, best so far (atomic)
      best/             the best epoch on the validation split: config.json, model.safetensors, meta.json
      metrics.csv       one row per epoch (also metrics.jsonl; tb/ when TensorBoard is installed)
      predictions.csv   the best model's test predictions (and class probabilities)
      result.json       the fold's test metrics; written last: a fold that has it is finished
    results.json        per-fold test metrics, mean ± sample std over folds, and pooled over all folds (every
                        finished fold of the run, also those of earlier calls with other --fold)
    results.md          the same as a Markdown table
    figures/            curves.png, confusion.png
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .. import metrics as M
from ..config import RunConfig
from ..errors import ConfigError
from ..protocols import DataSource, folds_record, make_folds
from .batches import precision_of
from .distributed import _on_main, setup_distributed
from .files import atomic_write_text, write_json
from .loop import train_fold
from .results import pooled_metrics, summarize, write_run_figures
from .rundir import LOCK, MARKER, _check_run_dir, _clear_run_dir, run_lock, write_marker


def check_alignments(cfg: RunConfig, source: DataSource) -> str | None:
    """For ``align="forced"``: the features must hold word starts (an error saying what to re-extract
    otherwise; MMSA pickles have none); returns the one line to report on unaligned utterances."""
    if cfg.model.align != "forced" or cfg.model.attention != "sawa":
        return None
    if source.cache is None:
        raise ConfigError(f"model.align='forced' needs word alignments; data.dataset {cfg.data.dataset!r} has "
                          "none (use align 'paper' or 'stretch')")
    from ..data.cache import check_forced_alignment

    return check_forced_alignment(source.cache)


def run_training(cfg: RunConfig, out_dir, *, resume: bool = False, overwrite: bool = False,
                 folds: list[str] | None = None, stop_after: int | None = None, progress: bool = True,
                 figures: bool = True, title: str | None = None) -> dict | None:
    """Train and test the folds of ``cfg.data.protocol``; write the run folder (module docstring).

    Args:
        resume: continue the run in ``out_dir``: finished folds are kept, the others go on from their
            last checkpoint. The config must match the saved one (``RESUME_FREE_FIELDS`` aside).
        overwrite: delete a previous run in ``out_dir`` first.
        folds: names of the folds to run (``fold-0``, ...); default all.
        stop_after: stop once this epoch of the fold in progress is done (resume later).
    Returns:
        the summary written to ``results.json``, or None when stopped by ``stop_after``.
    Every check (config, data, folder) runs before anything is written.
    """
    out = Path(out_dir)
    dist = setup_distributed(cfg.train.device)
    finished = False
    lock = contextlib.ExitStack()
    try:
        source = DataSource(cfg)
        alignment_note = check_alignments(cfg, source)
        all_folds = make_folds(source.entries, cfg.data, cfg.train.seed, cfg.model.task)
        names = [f.name for f in all_folds]
        unknown = sorted(set(folds or ()) - set(names))
        if unknown:
            raise ConfigError(f"unknown fold(s) {unknown}; protocol {cfg.data.protocol!r} has {names}")
        record = folds_record(all_folds, source.entries)
        run_folds = [f.name for f in all_folds if not folds or f.name in folds]
        _on_main(dist, _check_run_dir, out, cfg, record, resume, overwrite, run_folds, source.hash)
        _on_main(dist, _prepare_run_dir, out, cfg, record, resume, overwrite, run_folds, source.hash, lock)
        if dist.main:
            if alignment_note:
                print(f"{out}: {alignment_note}", flush=True)
            procs = f" x {dist.world} processes" if dist.active else ""
            prec = precision_of(cfg, dist.device)
            print(f"{out}: protocol {cfg.data.protocol}, {len(all_folds)} folds; validation: "
                  f"{all_folds[0].val_rule}; device {dist.device}{procs}; precision {prec.name} "
                  f"({prec.reason})", flush=True)
        dist.barrier()

        results = []
        for index, fold in enumerate(all_folds):
            if fold.name not in run_folds:
                continue
            fold_dir = out / fold.name
            if resume and (fold_dir / "result.json").exists():
                results.append(json.loads((fold_dir / "result.json").read_text()))
                continue
            if dist.main:
                fold_dir.mkdir(parents=True, exist_ok=True)
            dist.barrier()
            r = train_fold(cfg, source, fold, fold_dir, fold_index=index, dist=dist, resume=resume,
                           stop_after=stop_after, progress=progress)
            if r is None:
                finished = True
                return None
            results.append(r)

        summary = None
        if dist.main:
            results = _finished_folds(out, all_folds, results)
            summary = summarize(results, cfg, pooled_metrics(out, results, cfg))
            summary["precision"] = precision_of(cfg, dist.device).to_dict()
            write_json(out / "results.json", summary)
            table = M.results_markdown(summary, title or f"MFDR: {out.name}")
            atomic_write_text(out / "results.md", table)
            print(table, flush=True)
            if figures:
                write_run_figures(out, cfg, summary)
        summary = dist.broadcast(summary)
        finished = True
        return summary
    finally:
        lock.close()
        dist.close(finished)


def _prepare_run_dir(out: Path, cfg: RunConfig, record: list[dict], resume: bool, overwrite: bool,
                     run_folds: list[str], data_hash: str | None, lock: contextlib.ExitStack) -> None:
    """Create (or clear, for ``overwrite``) the run folder, under its lock (held in ``lock`` until the run
    ends); the checks again under the lock (another process may have written meanwhile); then the marker,
    config.yaml and folds.json of a new run."""
    out.mkdir(parents=True, exist_ok=True)
    lock.enter_context(run_lock(out))
    _check_run_dir(out, cfg, record, resume, overwrite, run_folds, data_hash)
    if overwrite and any(p.name != LOCK for p in out.iterdir()):
        _clear_run_dir(out)
    if not (out / MARKER).exists():  # a new run, or one made before mfdr marked its runs
        write_marker(out)
    if not (out / "config.yaml").exists():  # a resumed run keeps its files as they are
        cfg.save(out / "config.yaml")
        write_json(out / "folds.json", record)


def _finished_folds(out: Path, all_folds: list, results: list[dict]) -> list[dict]:
    """The results of every finished fold of the run in ``out`` (``result.json``), in fold order: those of
    this call, and those that earlier calls (other ``--fold``) finished. Says which are not finished."""
    done = {r["fold"]: r for r in results}
    for fold in all_folds:
        path = out / fold.name / "result.json"
        if fold.name not in done and path.exists():
            done[fold.name] = json.loads(path.read_text())
    missing = [f.name for f in all_folds if f.name not in done]
    if missing:
        print(f"results over {len(done)} of {len(all_folds)} folds; not finished yet: {', '.join(missing)} "
              "(run them with --fold NAME --resume)", flush=True)
    return [done[f.name] for f in all_folds if f.name in done]
