"""Do forced word windows help? (issue 17 "Measure"): MFDR on the demo's synthetic corpus with the SAWA
windows placed by ``align="paper"`` (word i at frame ``i * hop``), ``"stretch"`` (spread over each
utterance's audio) and ``"forced"`` (where each word starts, from the synthesizer's own timings), and with
full cross-attention, under the same speaker-independent folds, seeds and training schedule.

    .venv/bin/python benchmarks/alignments.py                      # writes runs/alignments/results.{md,json}
    .venv/bin/python benchmarks/alignments.py --seeds 0 1 2 --out runs/alignments

The corpus and its features are the demo's (``mfdr.demo.prepare_data`` with ``configs/demo.yaml``: 800
utterances, 8 speakers, log-mel + MiniLM), made or reused under ``--out``; the corpus carries each word's
exact timing (``alignments/<id>.csv``) and the feature cache each token's window start. The training loop
is a minimal one written here (Adam, the config's epochs / batch / lr schedule, best epoch on validation
UA, as ``mfdr train``), since it passes the batches' ``window_starts`` to the model, which the run loop
does not do yet. Reported: WA / UA mean ± std over folds and seeds, the test accuracy per kind of
utterance, the share of SAWA windows at each level on the test sets, and how far the forced starts lie
from the stretch ones. About 6 minutes on 2 cores per seed (one thread), plus ~40 s to make the data.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VARIANTS = {  # name -> MFDRConfig changes
    "paper": {"align": "paper"},
    "stretch": {"align": "stretch"},
    "forced": {"align": "forced"},
    "full attention": {"attention": "full"},
}


def _batches(dataset, collate, batch_size: int, generator: torch.Generator | None = None):
    order = (torch.randperm(len(dataset), generator=generator).tolist() if generator is not None
             else list(range(len(dataset))))
    for s in range(0, len(order), batch_size):
        yield collate([dataset[i] for i in order[s: s + batch_size]])


def _forward(model, b):
    starts = b["window_starts"] if model.config.align == "forced" else None
    return model(b["audio"], b["text"], b["audio_lengths"], b["text_lengths"], window_starts=starts)


@torch.no_grad()
def evaluate(model, dataset, collate, batch_size: int = 64) -> dict:
    """Predictions, labels and ids over ``dataset``; the SAWA level counts of its valid windows."""
    model.eval()
    preds, labels, ids, levels = [], [], [], np.zeros(3)
    for b in _batches(dataset, collate, batch_size):
        preds.append(_forward(model, b).argmax(-1))
        labels.append(b["label"])
        ids += b["id"]
        level = model.fusion.last_level
        if level is not None:
            valid = torch.arange(level.shape[-1])[None, :] < b["text_lengths"][:, None]      # (B, L)
            lv = level.long()[valid[:, None, :].expand_as(level)]
            levels += torch.bincount(lv, minlength=3).numpy()
    return {"pred": torch.cat(preds).numpy(), "label": torch.cat(labels).numpy(), "id": ids, "levels": levels}


def train_fold(model_cfg, tc, datasets: dict, collate, seed: int, precision) -> tuple:
    """Adam with the config's lr schedule; the epoch with the best validation UA is tested."""
    from mfdr import MFDR
    from mfdr.metrics import emotion_metrics

    torch.manual_seed(seed)
    np.random.seed(seed)
    model = MFDR(model_cfg)
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    best_score, best_state, fallback = -1.0, None, 0
    for epoch in range(tc.epochs):
        for group in opt.param_groups:
            group["lr"] = tc.lr_at(epoch)
        model.train()
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        for b in _batches(datasets["train"], collate, tc.batch_size, g):
            with precision.autocast():
                out = _forward(model, b)
            loss = F.cross_entropy(out.float(), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
            opt.step()
            if epoch == 0 and model.fusion.last_fallback is not None:
                fallback += int(model.fusion.last_fallback.sum())
        val = evaluate(model, datasets["val"], collate)
        score = emotion_metrics(val["label"], val["pred"], labels=range(model_cfg.num_classes))["ua"]
        if score > best_score:
            best_score = score
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return evaluate(model, datasets["test"], collate), fallback


def start_distance(cache, cfg) -> dict:
    """How far the forced starts lie from the stretch and paper ones (frames, valid tokens, all utterances)."""
    from mfdr import MFDR
    from mfdr.data import FeatureDataset, make_collate

    ds, collate = FeatureDataset(cache), make_collate(cfg.audio_len, cfg.text_len)
    layer = MFDR(cfg.replace(align="stretch")).fusion
    d_stretch, d_paper, n = 0.0, 0.0, 0
    for b in _batches(ds, collate, 128):
        aligned = b["window_starts"][:, 0] >= 0
        valid = (torch.arange(cfg.text_len)[None, :] < b["text_lengths"][:, None]) & aligned[:, None]
        stretch = layer.window_starts(len(b["id"]), cfg.text_len, cfg.audio_len, b["audio_lengths"], b["text_lengths"])
        paper = torch.arange(cfg.text_len)[None, :] * cfg.hop
        forced = b["window_starts"].clamp(max=cfg.audio_len)
        d_stretch += float((forced - stretch).abs()[valid].sum())
        d_paper += float((forced - paper).abs()[valid].sum())
        n += int(valid.sum())
    return {"forced_vs_stretch": d_stretch / max(n, 1), "forced_vs_paper": d_paper / max(n, 1), "tokens": n}


def table(results: dict, demo: dict, n_folds: int, seeds: list, distance: dict, unaligned: str | None) -> str:
    kinds = sorted({k for r in results.values() for k in r["by_kind"]})
    lines = [f"### Word alignments: synthetic corpus ({demo['utterances']} utterances, {demo['speakers']} "
             f"speakers), speaker-independent {n_folds}-fold cross-validation, seeds {seeds}", "",
             "WA / UA in %, mean ± std over folds × seeds; accuracy per kind of utterance (all test "
             "predictions); SAWA windows at level 0 / 1 / 2 on the test sets (valid tokens, all heads).", "",
             "| windows | WA | UA | " + " | ".join(kinds) + " | levels 0 / 1 / 2 |",
             "|---|---:|---:|" + "---:|" * len(kinds) + "---:|"]
    for name, r in results.items():
        wa, ua = np.array(r["wa"]) * 100, np.array(r["ua"]) * 100
        lv = r["levels"]
        level = " / ".join(f"{x:.0%}" for x in lv) if lv is not None else "(full attention)"
        lines.append(f"| {name} | {wa.mean():.2f} ± {wa.std():.2f} | {ua.mean():.2f} ± {ua.std():.2f} | "
                     + " | ".join(f"{100 * r['by_kind'][k]:.2f}" for k in kinds) + f" | {level} |")
    lines += ["", f"Forced starts lie {distance['forced_vs_stretch']:.1f} frames (mean, over "
              f"{distance['tokens']} tokens) from the stretch starts and {distance['forced_vs_paper']:.1f} "
              f"from the paper's; {unaligned or 'every utterance has a word alignment'}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/alignments", help="corpus, features and results (reused if present)")
    p.add_argument("--config", default="demo", help="demo config (default: the shipped demo.yaml)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (each over all folds)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--epochs", type=int, default=None, help="override train.epochs")
    p.add_argument("--utterances", type=int, default=None, help="override demo.utterances")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the demo uses 1)")
    p.add_argument("--progress", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from mfdr.data import FeatureDataset, check_forced_alignment, make_collate
    from mfdr.demo import load_demo_config, prepare_data
    from mfdr.metrics import emotion_metrics
    from mfdr.precision import resolve
    from mfdr.protocols import make_folds

    t_start, out = time.time(), Path(args.out)
    cfg, demo = load_demo_config(args.config, [f"train.epochs={args.epochs}"] if args.epochs else [])
    if args.utterances:
        demo["utterances"] = args.utterances
    cache, _, stamps = prepare_data(out, cfg, demo, progress=args.progress)
    unaligned = check_forced_alignment(cache)        # raises for a cache without window starts
    if unaligned:
        print(unaligned, flush=True)
    classes, tc = list(cfg.data.classes), cfg.train
    folds = make_folds(cache.entries, cfg.data, seed=tc.seed, task=cfg.model.task)
    collate = make_collate(cfg.model.audio_len, cfg.model.text_len)
    precision = resolve(tc.precision, torch.device("cpu"))
    kind = {e["id"]: e.get("kind", "?") for e in cache.entries}
    distance = start_distance(cache, cfg.model)
    print(f"forced vs stretch starts: {distance['forced_vs_stretch']:.1f} frames; precision {precision.name}; "
          f"{len(folds)} folds", flush=True)

    results = {}
    for name in args.variants:
        t0 = time.time()
        model_cfg = cfg.model.replace(**VARIANTS[name])
        r = {"wa": [], "ua": [], "levels": np.zeros(3), "hits": defaultdict(int), "totals": defaultdict(int),
             "fallback_rows_epoch1": 0}
        for seed in args.seeds:
            for f, fold in enumerate(folds):
                datasets = {k: FeatureDataset(cache, getattr(fold, k), task=cfg.model.task, classes=classes)
                            for k in ("train", "val", "test")}
                test, fallback = train_fold(model_cfg, tc, datasets, collate, tc.seed + seed * 100 + f, precision)
                m = emotion_metrics(test["label"], test["pred"], labels=range(len(classes)))
                r["wa"].append(m["wa"])
                r["ua"].append(m["ua"])
                r["levels"] += test["levels"]
                r["fallback_rows_epoch1"] += fallback
                for i, y, yhat in zip(test["id"], test["label"], test["pred"], strict=True):
                    r["totals"][kind[i]] += 1
                    r["hits"][kind[i]] += int(y == yhat)
                print(f"{name:>15} seed {seed} {fold.name}: WA {m['wa']:.3f} UA {m['ua']:.3f} "
                      f"({time.time() - t0:.0f} s)", flush=True)
        total = r["levels"].sum()
        results[name] = {"wa": r["wa"], "ua": r["ua"], "levels": (r["levels"] / total).tolist() if total else None,
                         "by_kind": {k: r["hits"][k] / r["totals"][k] for k in sorted(r["totals"])},
                         "fallback_rows_epoch1": r["fallback_rows_epoch1"], "seconds": time.time() - t0}
    text = table(results, demo, len(folds), args.seeds, distance, unaligned)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps(
        {"demo": demo, "config": cfg.to_dict(), "seeds": args.seeds, "precision": precision.name,
         "torch": torch.__version__, "threads": args.threads, "start_distance": distance,
         "seconds": {**stamps, "total": time.time() - t_start}, "results": results}, indent=2, default=float))
    print("\n" + text + f"\n{out / 'results.md'}; total {time.time() - t_start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
