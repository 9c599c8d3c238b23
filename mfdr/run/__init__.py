"""Running MFDR on data: training with the paper's protocols, evaluation, prediction, feature extraction.

One job a module:

    distributed.py   the process group (alone, or one of torchrun's processes)
    batches.py       batches to model inputs, the loss, the precision, the DataLoader
    loop.py          one fold's training loop (train_fold)
    evaluate.py      a model on a dataset: predictions, metrics; trained models found and loaded
    rundir.py        the run folder's rules, resumability, per-epoch logs
    results.py       pooled metrics, the summary, figures
    training.py      a whole run: every fold, then the results (run_training)
    checkpoint.py    checkpoints that survive interruption; RNG states
    files.py         atomic writes
    extract.py       the configured encoders over a dataset, into a feature cache
    predict.py       predictions for new utterances (wav + transcript)
    bench.py         a quick timing per kernel backend (mfdr bench)
    ablate.py        the paper's Table 3: every ablation row under one protocol, the table (mfdr ablate)

    from mfdr.config import load_run_config
    from mfdr.run import run_training
    summary = run_training(load_run_config("iemocap", ["train.epochs=2"]), "runs/iemocap")
"""

from __future__ import annotations

from .evaluate import find_models, load_model, predict_dataset
from .loop import train_fold
from .training import run_training

__all__ = ["find_models", "load_model", "predict_dataset", "run_training", "train_fold"]
