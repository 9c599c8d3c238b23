"""The paper's Table 3 as one command (``mfdr ablate``): every ablation row trained under one protocol.

    from mfdr.run.ablate import run_ablation
    table = run_ablation("iemocap", "runs/ablate", ablations=["all"])        # or ["MFDR", "GRU", ...]
    table = run_ablation("demo", "runs/ablate-quick", quick=True)           # a smoke test, minutes on a CPU

Each row is a config switch of :data:`mfdr.config.TABLE3` on top of the config's model (which must be
the full MFDR), trained with the same folds, protocol and seed as every other row, into its own run
folder ``DIR/<row>/`` (``mfdr train``'s layout). All rows read the same feature cache. The folder::

    ablation.yaml      the config every row derives from (and the demo corpus' settings, if any)
    corpus/ features/  the synthetic corpus and its feature cache (demo configs only; else the
                       config's data.features is used)
    mfdr/ w-10/ gru/ ...   one run folder per row (config.yaml, folds.json, fold-*/, results.json)
    ablations.md       the table: metrics per row (mean ± std over folds, pooled), the difference from
                       MFDR, the paper's Table 3 beside them (IEMOCAP or CMU-MOSEI only), parameters,
                       training time
    ablations.json     the same, as data
    ablations.png      the metric per row with error bars, the paper's value marked

Resumable: run it again with the same arguments and the finished rows are kept, an interrupted row goes
on from its last checkpoint (``run_training(resume=True)``), and the results equal an uninterrupted
run's. A folder that holds the rows of another config is refused before anything is written.

**Word-alignment variants** (not in the paper) are a separate, optional part of the list: the rows
``align=paper``, ``align=stretch`` and, when ``MFDRConfig`` knows ``align="forced"`` and the feature
cache stores word starts, ``align=forced``. A variant equal to the config's own alignment is the MFDR
row itself and is not trained twice.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import metrics as M
from ..config import ALIGN, TABLE3, RunConfig, config_path, format_diff, load_run_config, read_file
from ..errors import ConfigError, InputError, RunDirError
from .files import atomic_write_text, write_json

# ---------------------------------------------------------------------- the paper's Table 3
# Copied from the paper (Sec. 3.4, Table 3 "Module ablation studies on both datasets"), in %, as printed.
# IEMOCAP: WA / UA "under 10-fold cross-validation" (MFDR's row is its Table 1 10-fold result);
# CMU-MOSEI: Acc2 / F1 on the standard split, Acc2 being "negative (<0), positive (>0)" (MMSA's Non0).
_PAPER_ROWS = (  # row: (WA, UA, Acc2, F1)
    ("w=10", (76.2, 77.3, 83.9, 83.2)),
    ("w=30", (77.3, 78.3, 84.5, 83.8)),
    ("w=50", (76.8, 77.9, 83.7, 83.2)),
    ("full-size", (77.5, 78.4, 84.1, 83.6)),
    ("w/o Context", (76.6, 77.6, 84.3, 83.7)),
    ("GRU", (75.4, 76.1, 82.6, 81.1)),
    ("MGRU", (76.7, 77.2, 83.4, 82.5)),
    ("max-pooling", (74.9, 75.7, 82.5, 81.7)),
    ("avg-pooling", (76.2, 76.6, 82.9, 82.0)),
    ("w/o DFC", (77.3, 78.0, 83.7, 83.3)),
    ("MFDR", (78.4, 79.2, 85.2, 84.1)),
)


@dataclass(frozen=True)
class PaperTable:
    """The paper's Table 3 on one dataset: ``rows[name][metric]`` in %."""

    dataset: str
    protocol: str               # as the paper states it
    our_protocol: str           # mfdr's data.protocol for it (IEMOCAP 10-fold: speaker, leave-one-speaker-out)
    features: str
    metrics: tuple[str, ...]
    rows: dict = field(default_factory=dict)


PAPER_TABLE3 = {
    "iemocap": PaperTable(
        "IEMOCAP", "10-fold cross-validation", "speaker",
        "WavLM + BERT", ("wa", "ua"), {name: {"wa": v[0], "ua": v[1]} for name, v in _PAPER_ROWS}),
    "mosei": PaperTable(
        "CMU-MOSEI", "standard train / valid / test split (16,326 / 1,871 / 4,659)",
        "split", "WavLM + BERT", ("non0_acc2", "non0_f1"),
        {name: {"non0_acc2": v[2], "non0_f1": v[3]} for name, v in _PAPER_ROWS}),
}
PAPER_CHOICES = ("auto", "none", *PAPER_TABLE3)


def paper_table(cfg: RunConfig, paper: str | None = "auto") -> PaperTable | None:
    """The paper's Table 3 numbers that belong to ``cfg``'s data, or None.

    ``paper="auto"``: IEMOCAP's for ``data.dataset: iemocap``, CMU-MOSEI's for an MMSA pickle whose path
    names MOSEI; none otherwise (a manifest, CMU-MOSI, the demo corpus). ``"iemocap"`` / ``"mosei"``
    attach them explicitly (e.g. IEMOCAP given as a manifest); ``"none"`` never.
    """
    if paper is None or paper == "none":
        return None
    if paper not in PAPER_CHOICES:
        raise ConfigError(f"paper must be one of {PAPER_CHOICES}, got {paper!r}")
    task = cfg.model.task
    if paper == "auto":
        if cfg.data.dataset == "iemocap" and task == "classification":
            return PAPER_TABLE3["iemocap"]
        if cfg.data.dataset == "mmsa" and task == "regression" and "mosei" in str(cfg.data.path or "").lower():
            return PAPER_TABLE3["mosei"]
        return None
    want = "classification" if paper == "iemocap" else "regression"
    if task != want:
        raise ConfigError(f"paper={paper!r}: the paper's {PAPER_TABLE3[paper].dataset} numbers are for "
                          f"task={want!r}, but model.task is {task!r}")
    return PAPER_TABLE3[paper]


def headline_metrics(task: str, paper: PaperTable | None = None) -> tuple[str, ...]:
    """The metrics the table shows: the paper's (WA/UA, Acc2/F1) for its task."""
    if paper is not None:
        return paper.metrics
    return PAPER_TABLE3["iemocap" if task == "classification" else "mosei"].metrics


# ---------------------------------------------------------------------- the rows
ALIGN_ROWS = {f"align={a}": {"align": a} for a in ("paper", "stretch", "forced")}
GROUPS = ("table3", "align")


def folder_name(name: str) -> str:
    """A row's run folder: ``w=10`` -> ``w-10``, ``w/o Context`` -> ``wo-context``, ``align=paper`` ->
    ``align-paper``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("w/o", "wo")).strip("-")


@dataclass
class Row:
    """One configuration of the ablation: ``changes`` on top of the config's model."""

    name: str
    group: str                  # "table3" or "align"
    changes: dict
    cfg: RunConfig | None = None
    same_as: str | None = None  # the row whose config this is (not trained twice)

    @property
    def folder(self) -> str:
        return folder_name(self.name)

    def describe(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.changes.items()) or "the full model"


FULL_MODEL = {"attention": "sawa", "context": "gcpu", "pooling": "dfc"}


def check_full_model(cfg: RunConfig) -> None:
    """The rows switch one part of the full MFDR each: the config's model must be it."""
    m = cfg.model
    for key, want in FULL_MODEL.items():
        if getattr(m, key) != want:
            raise ConfigError(f"mfdr ablate compares Table 3's rows with the full MFDR, so the config's model "
                              f"must be it: model.{key} must be {want!r}, got {getattr(m, key)!r} (the rows "
                              "set it themselves)")
    if m.levels < 1:
        raise ConfigError(f"mfdr ablate: model.levels must be >= 1 (the full MFDR's adaptive windows; the "
                          f"w=... rows fix the window), got {m.levels}")


def _word_starts(cache) -> str | None:
    """None if ``cache`` stores word-window starts for some utterances, else why not."""
    if cache is None:
        return "no feature cache, so no word starts (an MMSA pickle has none)"
    if not getattr(cache, "has_window_starts", False):
        return f"the feature cache {cache.path} stores no word-window starts (re-extract it with alignments)"
    if not any(e.get("aligned") for e in cache.entries):
        return f"no utterance of the feature cache {cache.path} has a word alignment"
    return None


def available_rows(cfg: RunConfig, cache=None) -> tuple[list[Row], dict[str, str]]:
    """Every row this config and data allow, MFDR first (the reference), then Table 3's order, then the
    alignment variants; and ``{row: why not}`` for the alignment variants that cannot run here."""
    names = ["MFDR"] + [n for n in TABLE3 if n != "MFDR"]
    rows = [Row(n, "table3", dict(TABLE3[n])) for n in names]
    skipped = {}
    for name, changes in ALIGN_ROWS.items():
        if changes["align"] not in ALIGN:
            skipped[name] = f"MFDRConfig.align has no {changes['align']!r} (choices {ALIGN})"
            continue
        if changes["align"] == "forced":
            why = _word_starts(cache)
            if why:
                skipped[name] = why
                continue
        rows.append(Row(name, "align", dict(changes)))
    out = []
    for row in rows:
        try:
            row.cfg = dataclasses.replace(cfg, model=cfg.model.replace(**row.changes))
        except ConfigError as e:
            if row.group == "table3":
                raise ConfigError(f"Table 3 row {row.name!r} ({row.describe()}) is not a valid config here: "
                                  f"{e}") from None
            skipped[row.name] = str(e)
            continue
        twin = next((r for r in out if r.cfg.model == row.cfg.model), None)
        row.same_as = twin and twin.name
        out.append(row)
    return out, skipped


def all_row_names() -> list[str]:
    return list(TABLE3) + list(ALIGN_ROWS)


def select_rows(rows: list[Row], requested=("all",), skipped: dict[str, str] | None = None) -> list[Row]:
    """The rows named in ``requested``, in run order, MFDR always included (the reference of every
    difference). Names match case-insensitively, as the row name or its folder (``w/o DFC``, ``wo-dfc``);
    ``all``: every available row; ``table3``: the paper's rows; ``align``: the alignment variants."""
    skipped = skipped or {}
    requested = list(requested) or ["all"]
    by_key = {}
    for name in all_row_names():
        by_key[name.lower()] = by_key[folder_name(name)] = name
    wanted = {"MFDR"}
    for item in requested:
        key = str(item).strip()
        if key.lower() == "all":
            wanted |= {r.name for r in rows}
        elif key.lower() in GROUPS:
            wanted |= {r.name for r in rows if r.group == key.lower()}
        elif key.lower() in by_key:
            name = by_key[key.lower()]
            if name in skipped:
                raise InputError(f"ablation {name!r} cannot run here: {skipped[name]}")
            wanted.add(name)
        else:
            raise InputError(f"ablations: unknown row {key!r}; expected 'all', 'table3', 'align' or row names "
                             f"{all_row_names()} (or their folders {[folder_name(n) for n in all_row_names()]})")
    return [r for r in rows if r.name in wanted]


# ---------------------------------------------------------------------- the folder
MANIFEST = "ablation.yaml"


def check_ablation_dir(out: Path, cfg: RunConfig, demo: dict | None) -> None:
    """Refuse (``RunDirError``) a folder that holds another config's rows, or something else. Reads only."""
    if not out.exists():
        return
    if not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a folder")
    saved = out / MANIFEST
    if not saved.exists():
        if any(out.iterdir()):
            raise RunDirError(f"--out {out} is not empty and holds no mfdr ablation (no {MANIFEST}); choose "
                              "another folder")
        return
    d = read_file(saved)
    if not isinstance(d, dict) or d.get("format") != "mfdr-ablation":
        raise RunDirError(f"{saved} is not an mfdr ablation manifest; choose another --out")
    diff = cfg.diff(d.get("config") or {})
    if (d.get("demo") or None) != (demo or None):
        diff["demo"] = (demo, d.get("demo"))
    if diff:
        raise RunDirError(f"--out {out} holds the ablation rows of another config: "
                          f"{format_diff(diff, 'now', 'saved')}. Run with the config it was made with, choose "
                          "another --out, or delete the folder to start again.")


def _is_demo_config(config) -> bool:
    d = read_file(config_path(config))
    return isinstance(d, dict) and "demo" in d


def uses_demo_corpus(config, quick: bool = False) -> bool:
    """Whether ``mfdr ablate --config config [--quick]`` trains on the synthetic demo corpus."""
    return quick or (not isinstance(config, RunConfig) and config is not None and _is_demo_config(config))


def resolve_config(config, overrides=(), quick: bool = False) -> tuple[RunConfig, dict | None]:
    """``(RunConfig, demo corpus settings or None)``. A config with a ``demo:`` section (the shipped
    ``demo``) trains on the synthetic corpus, made under the ablation folder; ``quick`` means the demo's
    ``--quick`` (tiny corpus and model, 2 folds, 2 epochs)."""
    if isinstance(config, RunConfig):
        if quick or overrides:
            raise InputError("run_ablation: quick and overrides apply to a config name or file, not to a "
                             "RunConfig (change the RunConfig itself)")
        return config, None
    if config is None:
        if not quick:
            raise InputError("mfdr ablate needs --config (a file, or a shipped config: iemocap, mosei, demo)")
        config = "demo"
    if quick and not _is_demo_config(config):
        raise InputError(f"--quick runs on the synthetic demo corpus: give --config demo (or a config with a "
                         f"demo: section), got --config {config}")
    if uses_demo_corpus(config, quick):
        from ..demo import load_demo_config

        return load_demo_config(config, overrides, quick)
    return load_run_config(config, overrides), None


# ---------------------------------------------------------------------- the table
def _row_stats(summary: dict, metrics) -> dict:
    folds = {r["fold"]: {k: r["test"].get(k) for k in metrics} for r in summary["folds"]}
    pooled = summary.get("pooled") or {}
    return {"folds": folds, "mean": {k: summary["mean"].get(k) for k in metrics},
            "std": {k: summary["std"].get(k) for k in metrics},
            "pooled": {k: pooled.get(k) for k in metrics}}


def _delta(row: dict, ref: dict, metric: str) -> dict:
    """Row minus reference: the mean over folds of the per-fold (paired) difference, its sample std over
    folds, and whether the difference is within that spread (noise; None with one fold)."""
    common = [f for f in ref["folds"] if f in row["folds"]]
    diffs = np.array([np.nan if row["folds"][f][metric] is None or ref["folds"][f][metric] is None
                      else row["folds"][f][metric] - ref["folds"][f][metric] for f in common], dtype=np.float64)
    if not len(diffs):
        return {"mean": None, "std": None, "noise": None}
    mean = float(np.mean(diffs))
    if len(diffs) < 2 or not np.isfinite(mean):
        return {"mean": mean, "std": None, "noise": None}
    std = float(np.std(diffs, ddof=1))
    return {"mean": mean, "std": std, "noise": bool(abs(mean) <= std)}


def ablation_table(results: list[dict], *, task: str, protocol: str, paper: PaperTable | None = None,
                   skipped: dict[str, str] | None = None, info: dict | None = None) -> dict:
    """The ablation table (what ``ablations.json`` holds) from each row's run results.

    ``results``: one dict per row, ``{"name", "group", "changes", "summary"}`` (``summary``: the row's
    ``results.json``) and optionally ``"params"``, ``"train_seconds"``, ``"folder"``, ``"same_as"``.
    Metric values are fractions (as ``mfdr.metrics``); the paper's are in % as printed.
    """
    metrics = headline_metrics(task, paper)
    by_name = {r["name"]: r for r in results}
    if "MFDR" not in by_name:
        raise ValueError(f"ablation_table: the MFDR row is missing (rows {list(by_name)}); every "
                         "difference is taken from it")
    ref = _row_stats(by_name["MFDR"]["summary"], metrics)
    order = [n for n in TABLE3 if n in by_name] + [n for n in by_name if n not in TABLE3]
    rows = []
    for name in order:
        r = by_name[name]
        stats = _row_stats(r["summary"], metrics)
        row = {"name": name, "group": r.get("group", "table3" if name in TABLE3 else "align"),
               "changes": r.get("changes", {}), "folder": r.get("folder", folder_name(name)),
               "same_as": r.get("same_as"), "params": r.get("params"), "train_seconds": r.get("train_seconds"),
               **stats, "delta": {k: _delta(stats, ref, k) for k in metrics},
               "all_mean": r["summary"]["mean"], "all_std": r["summary"]["std"], "paper": None, "paper_delta": None}
        if paper is not None and name in paper.rows:
            row["paper"] = dict(paper.rows[name])
            row["paper_delta"] = {k: round(paper.rows[name][k] - paper.rows["MFDR"][k], 1) for k in metrics}
        rows.append(row)
    n_folds = len(ref["folds"])
    return {"format": "mfdr-ablation-results", "task": task, "protocol": protocol, "folds": n_folds,
            "metrics": list(metrics), "rows": rows, "skipped": dict(skipped or {}),
            "paper": None if paper is None else {**dataclasses.asdict(paper), "source": "Table 3 (Sec. 3.4)"},
            **(info or {})}


def _pct(x, digits: int = 2, sign: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "–"
    return f"{x * 100:+.{digits}f}" if sign else f"{x * 100:.{digits}f}"


def _value(key: str, x) -> str:
    if key in M.PERCENT:
        return _pct(x)
    return "–" if x is None or not np.isfinite(x) else f"{x:.4f}"


def _delta_cell(key: str, d: dict) -> str:
    if d["mean"] is None:
        return "–"
    scale, digits = (100.0, 2) if key in M.PERCENT else (1.0, 4)
    text = f"{round(d['mean'] * scale, digits) + 0.0:+.{digits}f}"  # + 0.0: no "-0.00"
    if d["std"] is not None:
        text += f" ± {d['std'] * scale:.{digits}f}"
    return f"*{text}*" if d["noise"] else text


def _params(n) -> str:
    return "–" if n is None else f"{n:,}"


def _seconds(s) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 60 else f"{s:.0f} s" if s < 600 else f"{s / 60:.1f} min"


def ablation_markdown(table: dict, title: str = "Ablations") -> str:
    """``ablations.md``: the paper's rows (and its numbers, when they belong to the data), then the
    word-alignment variants, then the notes (protocol, noise, what is not shown)."""
    metrics, paper = table["metrics"], table.get("paper")
    names = [M.NAMES[k] for k in metrics]
    head = ["row", "change"]
    for n in names:
        head += [n, f"Δ {n}"]
    head += [f"pooled {n}" for n in names]
    if paper:
        head += [f"paper {n} (Δ)" for n in names]
    head += ["parameters", "training time"]

    def line(row: dict) -> str:
        change = "the full model" if row["name"] == "MFDR" else (
            ", ".join(f"{k}={v}" for k, v in row["changes"].items()) or "–")
        if row.get("same_as"):
            change += f" (= {row['same_as']}: same config, not trained twice)"
        cells = [row["name"], change]
        for k in metrics:
            cells += [f"{_value(k, row['mean'][k])} ± {_value(k, row['std'][k])}",
                      "(reference)" if row["name"] == "MFDR" else _delta_cell(k, row["delta"][k])]
        cells += [_value(k, row["pooled"][k]) for k in metrics]
        if paper:
            cells += ["–" if row["paper"] is None else
                      f"{row['paper'][k]:.1f}" + ("" if row["name"] == "MFDR" else f" ({row['paper_delta'][k]:+.1f})")
                      for k in metrics]
        cells += [_params(row["params"]), _seconds(row["train_seconds"])]
        return "| " + " | ".join(cells) + " |"

    def block(rows: list[dict]) -> list[str]:
        align = "|---|---|" + "---:|" * (len(head) - 2)
        return ["| " + " | ".join(head) + " |", align] + [line(r) for r in rows]

    unit = "in %" if any(k in M.PERCENT for k in metrics) else ""
    protocol = table["protocol"]
    lines = [f"## {title}", "",
             f"Protocol `{protocol}`, {table['folds']} fold{'s' if table['folds'] != 1 else ''}; every row trained on "
             "the same folds with the same seed. "
             f"{', '.join(names)} {unit}: mean ± sample std over folds. Δ: the row minus MFDR, the mean ± std "
             "over folds of the per-fold difference (paired: same folds, same seed). Pooled: all folds' test "
             "predictions together. Training time: the epochs' seconds summed over folds.", ""]
    main = [r for r in table["rows"] if r["group"] == "table3"]
    lines += block(main)
    variants = [r for r in table["rows"] if r["group"] != "table3"]
    if variants:
        lines += ["", "**Word-alignment variants** (not in the paper; `model.align`, MFDR otherwise):", ""]
        lines += block(variants)
    notes = []
    if table["folds"] > 1:
        notes.append("**Noise.** A difference smaller than the fold-to-fold spread is noise: a Δ in *italics* "
                     "lies within its own ± (the std over folds of the per-fold difference) and says nothing "
                     "about the row. Few folds make even larger differences uncertain.")
    else:
        notes.append("**Noise.** One test split: no fold-to-fold spread is measured, so no difference here can "
                     "be told from noise; compare several seeds before reading anything into it.")
    if paper:
        ours = f"data.protocol `{protocol}`"
        same = protocol == paper["our_protocol"]
        notes.append(f"**The paper's numbers** (its Table 3, {paper['dataset']}, in %): {paper['protocol']}, "
                     f"{paper['features']} features (mfdr's protocol for it: `{paper['our_protocol']}`). "
                     f"This run: {ours}"
                     + ("." if same else f", not the paper's (`{paper['our_protocol']}`): compare the "
                                         "differences, not the absolute values.")
                     + " The paper reports no spread; its Δ is the row minus its MFDR row.")
    else:
        notes.append("**The paper's numbers** (Table 3: IEMOCAP WA/UA under 10-fold cross-validation, CMU-MOSEI "
                     "Acc2/F1 on the standard split) belong to those datasets only and are not shown for this "
                     "data.")
    if table.get("skipped"):
        notes.append("Not run: " + "; ".join(f"`{k}`: {v}" for k, v in table["skipped"].items()) + ".")
    lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def plot_ablations(table: dict, path, title: str = "Ablations") -> Path:
    """``ablations.png``: one panel per metric, one line per row (the paper's order, then the alignment
    variants below a rule): mean ± std over folds, MFDR's mean dashed, the paper's value (in %) marked."""
    from ..plots import _plt, _save

    plt = _plt()
    metrics, rows, paper = table["metrics"], table["rows"], table.get("paper")
    y = np.arange(len(rows))[::-1]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 0.36 * len(rows) + 1.6),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, k in zip(axes[0], metrics, strict=True):
        scale = 100.0 if k in M.PERCENT else 1.0
        mean = np.array([np.nan if r["mean"][k] is None else r["mean"][k] * scale for r in rows])
        std = np.array([np.nan if r["std"][k] is None else r["std"][k] * scale for r in rows])
        ax.errorbar(mean, y, xerr=std, fmt="o", color="C0", capsize=3, label="this run: mean ± std over folds")
        ref = next(r for r in rows if r["name"] == "MFDR")["mean"][k]
        if ref is not None:
            ax.axvline(ref * scale, color="C0", ls="--", lw=0.8, label="MFDR, this run")
        if paper:
            py = [yy for yy, r in zip(y, rows, strict=True) if r["paper"]]
            px = [r["paper"][k] for r in rows if r["paper"]]
            ax.plot(px, py, "D", mfc="none", color="C3", label=f"paper ({paper['dataset']}, Table 3)")
        n_main = sum(r["group"] == "table3" for r in rows)
        if n_main < len(rows):
            ax.axhline(y[n_main - 1] - 0.5, color="0.6", lw=0.8)
        ax.set(xlabel=M.NAMES[k] + (" (%)" if k in M.PERCENT else ""), title=M.NAMES[k])
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(y, [r["name"] for r in rows])
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=8, frameon=False)
    fig.suptitle(f"{title} (protocol {table['protocol']}, {table['folds']} folds)", fontsize=10)
    return _save(fig, path)


# ---------------------------------------------------------------------- running it
def _train_seconds(run_dir: Path, summary: dict) -> float | None:
    total, seen = 0.0, False
    for r in summary["folds"]:
        path = run_dir / r["fold"] / "metrics.jsonl"
        if path.exists():
            for text in path.read_text().splitlines():
                if text.strip():
                    total += float(json.loads(text).get("seconds") or 0.0)
                    seen = True
    return total if seen else None


def _params_of(model_cfg) -> int:
    from ..model import MFDR

    return sum(p.numel() for p in MFDR(model_cfg).parameters())


def run_ablation(config="demo", out="runs/ablate", *, ablations=("all",), overrides=(), quick: bool = False,
                 paper: str | None = "auto", stop_after: int | None = None, progress: bool = True,
                 figures: bool = True) -> dict | None:
    """Train the rows of the paper's Table 3 (module docstring) into ``out``; write the table and figure.

    Args:
        config: a config file or shipped name (``demo``-like configs, with a ``demo:`` section, train on
            the synthetic corpus made under ``out``), or a ``RunConfig`` whose features are extracted.
        ablations: row names, ``all``, ``table3`` or ``align`` (:func:`select_rows`); MFDR always runs.
        overrides: ``section.key=value`` changes to the config, for every row.
        quick: the demo's smoke-test settings (tiny corpus and model, 2 folds, 2 epochs).
        paper: whose Table 3 numbers to show beside the rows (:func:`paper_table`).
        stop_after: stop once this epoch of the fold in progress is done (run again to resume).
    Returns:
        the table written to ``ablations.json``, or None when stopped by ``stop_after``.
    """
    t_start, out = time.time(), Path(out)
    cfg, demo = resolve_config(config, overrides, quick)
    check_full_model(cfg)
    pt = paper_table(cfg, paper)
    select_rows([], ablations)  # the names, before anything is written (availability is checked below)
    check_ablation_dir(out, cfg, demo)
    source = None
    if demo is None:
        from ..protocols import DataSource

        source = DataSource(cfg)  # the features exist and fit the model (raises before writing)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MANIFEST).exists():
        import yaml

        atomic_write_text(out / MANIFEST, yaml.safe_dump(
            {"format": "mfdr-ablation", "config": cfg.to_dict(), "demo": demo}, sort_keys=False))
    stamps = {}
    if demo is not None:
        from ..demo import prepare_data

        cache, _, stamps = prepare_data(out, cfg, demo, progress=progress)
    else:
        cache = source.cache
    rows, skipped = available_rows(cfg, cache)
    chosen = select_rows(rows, ablations, skipped)
    # Rows that an earlier call finished are kept in the table.
    chosen_names = {r.name for r in chosen}
    chosen += [r for r in rows if r.name not in chosen_names and (out / r.folder / "results.json").exists()]
    order = {r.name: i for i, r in enumerate(rows)}
    chosen.sort(key=lambda r: order[r.name])

    from .training import run_training

    done: dict[str, dict] = {}
    for i, row in enumerate(chosen):
        label = f"ablation {i + 1}/{len(chosen)}: {row.name} ({row.describe()})"
        if row.same_as in done:
            print(f"{label}: the same config as {row.same_as}; its results are reused", flush=True)
            done[row.name] = {**done[row.same_as], "name": row.name, "group": row.group, "changes": row.changes,
                              "same_as": row.same_as}
            continue
        run_dir = out / row.folder
        t0 = time.time()
        if (run_dir / "results.json").exists():
            print(f"{label}: finished earlier, kept ({run_dir})", flush=True)
            summary = json.loads((run_dir / "results.json").read_text())
        else:
            print(f"{label} -> {run_dir}", flush=True)
            summary = run_training(row.cfg, run_dir, resume=(run_dir / "config.yaml").exists(),
                                   stop_after=stop_after, progress=progress, figures=figures,
                                   title=f"ablation {row.name}")
            if summary is None:
                print(f"stopped during {row.name} (stop_after={stop_after}); run again to resume", flush=True)
                return None
        stamps[row.name] = time.time() - t0
        done[row.name] = {"name": row.name, "group": row.group, "changes": row.changes, "folder": row.folder,
                          "summary": summary, "params": _params_of(row.cfg.model),
                          "train_seconds": _train_seconds(run_dir, summary)}

    info = {"config": cfg.to_dict(), "demo": demo, "seed": cfg.train.seed,
            "seconds": {k: round(v, 1) for k, v in stamps.items()}, "wall_seconds": round(time.time() - t_start, 1)}
    table = ablation_table([done[r.name] for r in chosen], task=cfg.model.task, protocol=cfg.data.protocol,
                           paper=pt, skipped=skipped, info=info)
    title = f"Ablations: {out.name}" + (" (synthetic demo corpus)" if demo else "")
    write_json(out / "ablations.json", table)
    text = ablation_markdown(table, title)
    atomic_write_text(out / "ablations.md", text)
    if figures:
        import importlib.util

        if importlib.util.find_spec("matplotlib") is not None:
            plot_ablations(table, out / "ablations.png", title)
    print("\n" + text, flush=True)
    print(f"written: {out / 'ablations.md'}, {out / 'ablations.json'}" + (", ablations.png" if figures else "")
          + f"; {time.time() - t_start:.0f} s", flush=True)
    return table


__all__ = ["ALIGN_ROWS", "PAPER_TABLE3", "PaperTable", "Row", "ablation_markdown", "ablation_table",
           "available_rows", "check_ablation_dir", "check_full_model", "folder_name", "headline_metrics",
           "paper_table", "plot_ablations", "resolve_config", "run_ablation", "select_rows", "uses_demo_corpus"]
