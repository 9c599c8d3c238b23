"""The training loop's errors name their cause (issue 19): a NaN in the features stops training with the
utterance, its shard and row named, instead of only "lower train.lr"."""

import pytest

from mfdr import run as R
from mfdr.errors import TrainingError
from tests.mfdr.test_train import config, make_cache

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def test_nan_features_are_named(tmp_path):
    cache = make_cache(tmp_path / "cache", nan_at=5)   # a NaN in utterance u005's audio, as a broken extractor
    with pytest.raises(TrainingError, match=r"fold-0, epoch 1, step \d+: the loss is not finite.*check the features "
                                            r"for NaN/Inf: the features of 1 training utterance\(s\) hold NaN/Inf: "
                                            rf"'u005' \(feature cache {cache}: shard-00000.safetensors row 5\); "
                                            r"re-extract them"):
        R.run_training(config(cache, data={"val_fraction": 0.0}), tmp_path / "run", folds=["fold-0"],
                       progress=False)
