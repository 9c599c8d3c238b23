"""Figures (matplotlib, Agg backend, PNG): training curves, confusion matrices, the SAWA attention map
of an utterance with its expanded windows (the idea of the paper's Fig. 3), and the levels reached.

    plot_curves({"fold-0": rows, ...}, "curves.png")          # rows: metrics.jsonl of each fold
    plot_confusion(confusion, classes, "confusion.png")
    att, level = sawa_map(model, audio, text, audio_len, text_len)   # (H, L, T), (H, L)
    plot_attention(att, level, "attention.png", window=10, hop=5, tokens=[...])
    plot_levels(levels, "levels.png")                         # levels: (..., H, L) of valid words

Each function writes one PNG, creates its folder, and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    _plt().close(fig)
    return path


CURVE_METRICS = ("val_wa", "val_ua", "val_mae", "val_acc7", "val_has0_acc2")


def plot_curves(histories: dict[str, list[dict]], path, *, title: str = "Training",
                metrics: tuple[str, ...] = CURVE_METRICS) -> Path:
    """Loss (train solid, validation dashed) and the validation metrics per epoch, one colour per fold.

    ``histories``: ``{name: [{"epoch", "train_loss", "val_loss", "val_wa", ...}, ...]}`` (the rows of
    ``metrics.jsonl``). Metrics absent from the rows are skipped.
    """
    plt = _plt()
    shown = [m for m in metrics if any(m in r for rows in histories.values() for r in rows)]
    fig, axes = plt.subplots(1, 1 + len(shown), figsize=(4.2 * (1 + len(shown)), 3.6), squeeze=False,
                             layout="constrained")
    axes = axes[0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, rows) in enumerate(histories.items()):
        c = colors[i % len(colors)]
        ep = [r["epoch"] for r in rows]
        axes[0].plot(ep, [r.get("train_loss", np.nan) for r in rows], color=c, label=f"{name} train")
        if any("val_loss" in r for r in rows):
            axes[0].plot(ep, [r.get("val_loss", np.nan) for r in rows], color=c, ls="--", label=f"{name} val")
        for ax, m in zip(axes[1:], shown, strict=True):
            ax.plot(ep, [np.nan if r.get(m) is None else r[m] for r in rows], color=c, label=name)
    axes[0].set(title="loss", xlabel="epoch")
    for ax, m in zip(axes[1:], shown, strict=True):
        ax.set(title=m.replace("val_", "validation "), xlabel="epoch")
    if len(histories) <= 6:
        axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_confusion(confusion, classes: list[str] | None, path, *, title: str = "Confusion matrix",
                   normalize: bool = True) -> Path:
    """Rows: truth; columns: prediction. Colours are row-normalised (recall); cells show counts."""
    plt = _plt()
    C = np.asarray(confusion, dtype=np.float64)
    classes = classes or [str(i) for i in range(len(C))]
    rows = C.sum(axis=1, keepdims=True)
    shown = np.divide(C, rows, out=np.zeros_like(C), where=rows > 0) if normalize else C
    fig, ax = plt.subplots(figsize=(1.1 * len(C) + 2, 1.1 * len(C) + 1.2))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    for i in range(len(C)):
        for j in range(len(C)):
            dark = shown[i, j] > 0.6 * shown.max()
            ax.text(j, i, f"{int(C[i, j])}\n{shown[i, j]:.0%}" if normalize else f"{int(C[i, j])}",
                    ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set(xticks=range(len(C)), yticks=range(len(C)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class" if normalize else "count")
    return _save(fig, path)


def window_spans(start: int, level: int, window: int, k_len: int) -> list[tuple[int, int]]:
    """Frame ranges ``[a, b)`` a query with window start ``start`` attends at ``level`` (SPEC §1):
    the base window, then the half-windows of level 1 and 2 on each side, clipped to ``[0, k_len)``."""
    half = window // 2
    spans = [(start, start + window)]
    if level >= 1:
        spans += [(start - half, start), (start + window, start + window + half)]
    if level >= 2:
        spans += [(start - window, start - half), (start + window + half, start + 2 * window)]
    return [(max(a, 0), min(b, k_len)) for a, b in spans if min(b, k_len) > max(a, 0)]


def sawa_map(model, audio, text, audio_len: int | None = None, text_len: int | None = None, window_starts=None):
    """The fusion attention of one utterance: ``att (H, L, T)`` (dense, the paper's ``diag_att``) and
    ``level (H, L)`` (None with full attention), for ``audio (T, audio_dim)``, ``text (L, text_dim)``
    already padded to the model's ``text_len``; ``window_starts (L,)``: the word starts of a model with
    ``align="forced"``.

    Uses ``model.attention_map`` (``mfdr_kernels.sawa_attention_map``, the reference) and one forward
    for the levels.
    """
    import torch

    a, t = audio[None], text[None]
    al = None if audio_len is None else torch.tensor([audio_len])
    tl = None if text_len is None else torch.tensor([text_len])
    ws = None if window_starts is None else torch.as_tensor(window_starts)[None]
    with torch.no_grad():
        model.eval()(a, t, al, tl, ws)
        level = model.fusion.last_level
        starts = model.fusion.window_starts(1, t.shape[1], a.shape[1], al, tl, forced=ws) if ws is not None else None
        att = model.attention_map(a, t, al, tl, starts)
    return att[0].float().numpy(), None if level is None else level[0].numpy()


def window_starts(model, T: int, audio_len: int | None, text_len: int | None, forced=None) -> np.ndarray:
    """``(L,)`` window start frames the model uses for one utterance (``align`` of its config; ``forced``:
    the utterance's word starts ``(L,)`` for ``align="forced"``)."""
    import torch

    c = model.config
    al = None if audio_len is None else torch.tensor([audio_len])
    tl = None if text_len is None else torch.tensor([text_len])
    starts = model.fusion.window_starts(1, c.text_len, T, al, tl,
                                        forced=None if forced is None else torch.as_tensor(forced)[None])
    return (np.arange(c.text_len) * c.hop) if starts is None else starts[0].numpy()


def plot_attention(att, level, path, *, window: int, starts, audio_len: int | None = None,
                   text_len: int | None = None, tokens: list[str] | None = None,
                   title: str = "SAWA attention", frame_ms: float | None = 20.0) -> Path:
    """One panel per head: the dense attention weights of each word (row) over the audio frames
    (columns), with each word's base window outlined (white) and the half-windows its adaptive
    expansion added drawn at level 1 (orange) and level 2 (red).

    ``att (H, L, T)``; ``level (H, L)`` or None; ``starts (L,)`` window start frames.
    """
    plt = _plt()
    from matplotlib.patches import Rectangle

    att = np.asarray(att)
    H, L, T = att.shape
    L_valid, T_valid = text_len or L, audio_len or T
    starts = np.asarray(starts)
    fig, axes = plt.subplots(1, H, figsize=(min(4.5 * H, 18), 0.22 * L_valid + 2.2), squeeze=False,
                             layout="constrained")
    for h, ax in enumerate(axes[0]):
        ax.imshow(att[h, :L_valid, :T_valid], aspect="auto", cmap="magma", interpolation="nearest")
        for i in range(L_valid):
            lv = 0 if level is None else int(level[h, i])
            for k, (a, b) in enumerate(window_spans(int(starts[i]), lv, window, T_valid)):
                color = "white" if k == 0 else ("orange" if k <= 2 else "red")
                ax.add_patch(Rectangle((a - 0.5, i - 0.5), b - a, 1, fill=False, lw=0.8, ec=color))
        counts = "" if level is None else " (words at level 0/1/2: {})".format(
            "/".join(str(int((level[h, :L_valid] == v).sum())) for v in range(3)))
        ax.set(title=f"head {h}{counts}", xlabel="audio frame" + (f" ({frame_ms:g} ms)" if frame_ms else ""))
        if tokens is not None and h == 0:
            ax.set_yticks(range(min(L_valid, len(tokens))), tokens[:L_valid], fontsize=7)
        elif h == 0:
            ax.set_ylabel("word (query)")
    fig.suptitle(f"{title}  —  white: base window; orange: level-1 half-windows; red: level 2", fontsize=9)
    return _save(fig, path)


def plot_levels(levels, path, *, title: str = "SAWA expansion levels") -> Path:
    """Histogram of the levels (0, 1, 2) reached by the valid words' windows, one bar group per head.

    ``levels``: an ``(N, H)`` array (one row per valid word, across utterances) or a flat array.
    """
    plt = _plt()
    lv = np.asarray(levels)
    lv = lv.reshape(-1, 1) if lv.ndim == 1 else lv
    heads = lv.shape[1]
    fig, ax = plt.subplots(figsize=(5, 3.4))
    width = 0.8 / heads
    for h in range(heads):
        share = np.bincount(lv[:, h].astype(np.int64), minlength=3)[:3] / max(len(lv), 1)
        ax.bar(np.arange(3) + (h - (heads - 1) / 2) * width, share, width, label=f"head {h}")
    ax.set(xticks=range(3), xticklabels=["0: window", "1: +half-windows", "2: 3x window"],
           ylabel="share of words", title=f"{title} ({len(lv)} words)")
    if heads > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)
