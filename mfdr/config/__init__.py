"""Configs: the model's (:class:`MFDRConfig`, SPEC §4) and a run's (:class:`RunConfig`: ``model``, ``train``,
``data``, ``features`` sections), on one mechanism (:mod:`.schema`: typed dataclass sections, one YAML
reader, one ``section.key=value`` override parser).

    cfg = load_run_config("iemocap", overrides=["train.epochs=2"])   # a shipped config, or a file path
    cfg.model            # MFDRConfig
    MFDRConfig.ablation("MGRU")

The shipped configs (``iemocap``, ``mosei``, ``demo``) are package data in ``mfdr/configs/``, so
``--config iemocap`` works from any folder and after ``pip install``.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ConfigError, MissingFileError
from .model import ALIGN, ATTENTION, CONTEXT, POOLING, TABLE3, TASK, MFDRConfig
from .run import (
    CLASSIFICATION_METRICS,
    EMOTIONS,
    REGRESSION_METRICS,
    RESUME_FREE_FIELDS,
    DataConfig,
    FeatureConfig,
    RunConfig,
    TrainConfig,
    format_diff,
)
from .schema import Section, apply_overrides, read_file

SHIPPED = ("demo", "iemocap", "mosei")


def shipped_config(name: str) -> Path:
    """The path of a shipped config (``demo``, ``iemocap``, ``mosei``)."""
    return Path(str(resources.files("mfdr") / "configs" / f"{name}.yaml"))


def config_path(config: str | Path) -> Path:
    """``config`` as a path: an existing file, else the shipped config of that name."""
    path = Path(config)
    if path.is_file():
        return path
    if str(config) in SHIPPED:
        return shipped_config(str(config))
    if path.suffix or len(path.parts) > 1:  # meant as a file
        raise MissingFileError(f"config file {path} does not exist")
    raise MissingFileError(f"config {config!r} is neither a file nor a shipped config {SHIPPED}")


def load_run_config(config: str | Path | None = None, overrides=()) -> RunConfig:
    """A :class:`RunConfig` from a file or shipped name (None: all defaults), with ``--set`` overrides. A
    demo config's ``demo:`` section (the corpus ``mfdr demo`` synthesizes) is left out: its run sections
    serve ``mfdr train``, ``extract``... as any config's."""
    if config is None:
        return RunConfig.from_dict({}, overrides)
    path = config_path(config)
    d = read_file(path)
    if not (isinstance(d, dict) and "demo" in d):
        return RunConfig.load(path, overrides)
    try:
        return RunConfig.from_dict({k: v for k, v in d.items() if k != "demo"}, overrides)
    except ConfigError as e:
        raise type(e)(f"{path}: {e}") from None


__all__ = ["ALIGN", "ATTENTION", "CLASSIFICATION_METRICS", "CONTEXT", "EMOTIONS", "POOLING", "REGRESSION_METRICS",
           "RESUME_FREE_FIELDS", "SHIPPED", "TABLE3", "TASK", "DataConfig", "FeatureConfig", "MFDRConfig",
           "RunConfig", "Section", "TrainConfig", "apply_overrides", "config_path", "format_diff",
           "load_run_config", "read_file", "shipped_config"]
