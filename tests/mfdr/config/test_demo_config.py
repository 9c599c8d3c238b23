"""``-c demo`` works for every command (issue 19): the help lists ``demo`` as a config name, but ``mfdr train``
and ``extract`` refused its ``demo:`` section, which only ``mfdr demo`` reads."""

import pytest

from mfdr.config import load_run_config
from mfdr.demo import load_demo_config
from mfdr.errors import ConfigError


def test_the_demo_config_loads_as_a_run_config():
    cfg = load_run_config("demo", ["train.epochs=2"])
    demo_cfg, demo = load_demo_config("demo", ["train.epochs=2"])
    assert cfg.to_dict() == demo_cfg.to_dict() and demo["utterances"] >= 1
    assert cfg.train.epochs == 2 and cfg.model.d_model == demo_cfg.model.d_model


def test_a_demo_config_file_loads_too(tmp_path):
    path = tmp_path / "my_demo.yaml"
    path.write_text("demo:\n  utterances: 40\nmodel:\n  d_model: 16\n  heads: 2\n")
    assert load_run_config(path).model.d_model == 16
    path.write_text("demo:\n  utterances: 40\nmodel:\n  d_modle: 16\n")
    with pytest.raises(ConfigError, match=rf"{path}: .*unknown field\(s\) \['d_modle'\]"):
        load_run_config(path)
