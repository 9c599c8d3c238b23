"""Run configs refuse non-finite numbers (issue 19): ``train.lr=.nan`` passed every range check and failed
inside Adam after the run folder was written. Each case as a user writes it: a ``--set`` override, or a
config file edited by hand."""

import pytest

from mfdr.config import RunConfig, load_run_config
from mfdr.errors import ConfigError


@pytest.mark.parametrize("override, message", [
    ("train.lr=.nan", "train.lr must be a finite number, got nan"),
    ("train.lr=1e999", "train.lr must be a finite number, got inf"),
    ("train.lr_decay=.NaN", "train.lr_decay must be a finite number, got nan"),
    ("train.weight_decay=-.inf", "train.weight_decay must be a finite number, got -inf"),
    ("train.grad_clip=.inf", "train.grad_clip must be a finite number, got inf"),
    ("data.val_fraction=.nan", "data.val_fraction must be a finite number, got nan"),
    ("features.max_seconds=.inf", "features.max_seconds must be a finite number, got inf"),
])
def test_non_finite_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [override])


def test_non_finite_number_in_a_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("train:\n  epochs: 2\n  lr: .nan\n")
    with pytest.raises(ConfigError, match=rf"{path}: train.lr must be a finite number, got nan"):
        RunConfig.load(path)
    path.write_text("train:\n  epochs: 2\n  lr: 1.0e-3\n  grad_clip: 5\n")
    cfg = RunConfig.load(path)
    assert cfg.train.lr == 1e-3 and cfg.train.grad_clip == 5.0
