"""What the training loop and the evaluation share: batches to model inputs, the loss, the precision,
the DataLoader, the class names."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mfdr_kernels import _checks

from ..config import RunConfig
from ..precision import Precision
from ..precision import resolve as resolve_precision


def loss_fn(task: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (classification) or L1 (regression, as MMSA's models); mean over the batch."""
    if task == "regression":
        return F.l1_loss(out.float(), y.float())
    return F.cross_entropy(out.float(), y)


def model_inputs(batch: dict, device: torch.device, zero: str | None, forced: bool = False):
    """``(audio, text, audio_lengths, text_lengths, window_starts, label)`` from a collated batch, on
    ``device``; ``zero`` blanks one modality (keeping its lengths); ``window_starts`` is the batch's
    word starts for ``align="forced"`` (rows of -1: no alignment, stretch windows), else None.

    The lengths are checked here, on the CPU where the collated batch lives, before the copy to the
    device: the model and the kernels then skip their value checks on an accelerator (no host sync)."""
    audio, text = batch["audio"], batch["text"]
    _checks.in_range("audio_lengths", batch["audio_lengths"].cpu(), 1, audio.shape[1])
    _checks.in_range("text_lengths", batch["text_lengths"].cpu(), 1, text.shape[1])
    move = lambda t: t.to(device, non_blocking=True)
    audio, text = move(audio), move(text)
    if zero == "audio":
        audio = torch.zeros_like(audio)
    elif zero == "text":
        text = torch.zeros_like(text)
    starts = move(batch["window_starts"]) if forced else None
    return (audio, text, move(batch["audio_lengths"]), move(batch["text_lengths"]), starts,
            move(batch["label"]))


def precision_of(cfg: RunConfig, device: torch.device) -> Precision:
    return resolve_precision(cfg.train.precision, device, cfg.model.d_model)


def make_loader(cfg: RunConfig, dataset, batch_size: int, sampler=None):
    from torch.utils.data import DataLoader

    from ..data import make_collate

    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=make_collate(cfg.model.audio_len, cfg.model.text_len),
                      num_workers=cfg.train.num_workers)


def class_names(cfg: RunConfig) -> list[str]:
    """Names of the classes in label order (MMSA binary classification: ``"0"``, ``"1"``)."""
    if cfg.data.dataset == "mmsa":
        return [str(i) for i in range(cfg.model.num_classes)]
    return list(cfg.data.classes)
