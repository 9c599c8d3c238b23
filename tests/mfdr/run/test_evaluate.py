"""``mfdr evaluate`` on a run whose training stopped before the end (issue 19): the folds it scores with the
best model so far are said (a warning, and ``unfinished`` in the summary)."""

import logging

import pytest

from mfdr import run as R
from mfdr.run.evaluate import evaluate_run
from tests.mfdr.test_train import config, make_cache

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def test_an_unfinished_run_is_scored_with_a_warning(tmp_path, caplog):
    cfg = config(make_cache(tmp_path / "cache"), train={"epochs": 3})
    out = tmp_path / "run"
    R.run_training(cfg, out, folds=["fold-0"], stop_after=1, progress=False)
    with caplog.at_level(logging.WARNING, logger="mfdr.run"):
        summary = evaluate_run(out, cfg)
    assert "fold-0 is not finished (no result.json; its best/ is from epoch 1 of 3)" in caplog.text
    assert summary["unfinished"] == ["fold-0"] and [f["fold"] for f in summary["folds"]] == ["fold-0"]

    R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False, figures=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mfdr.run"):
        summary = evaluate_run(out, cfg)
    assert "not finished" not in caplog.text and "unfinished" not in summary
