"""``MFDRConfig``: every hyper-parameter of the MFDR model (SPEC §4), with the paper's defaults.

A dataclass that validates itself on construction (each error names the field, the expected and the
received value) and round-trips through JSON or YAML::

    cfg = MFDRConfig(num_classes=4)
    cfg.save("mfdr.yaml");  MFDRConfig.load("mfdr.yaml") == cfg
    MFDRConfig.from_dict({"d_model": 128})            # unknown keys and wrong types raise
    MFDRConfig.ablation("MGRU")                        # a row of the paper's Table 3

Paper defaults (Sec. 3.2): WavLM / BERT features of 768 dims, ``T = 255`` frames and ``L = 50`` words,
window 10 and hop 5, GCPU width 256, two DFC layers with frame 3, hops 2 and 3 and 64 hidden channels.
"""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from mfdr_kernels._env import BACKENDS
from mfdr_kernels.sawa.op import NORMALIZE

from ..errors import ConfigError, ConfigTypeError, MissingFileError
from .schema import Section, read_file

ATTENTION = ("sawa", "full")
CONTEXT = ("gcpu", "none", "gru", "mgru")
POOLING = ("dfc", "max", "avg", "linear")
ALIGN = ("paper", "stretch", "forced")
TASK = ("classification", "regression")

# The paper's Table 3, one config switch per row ("MFDR" is the full model).
TABLE3: dict[str, dict] = {
    "w=10": {"window": 10, "levels": 0},
    "w=30": {"window": 30, "levels": 0},
    "w=50": {"window": 50, "levels": 0},
    "full-size": {"attention": "full"},
    "w/o Context": {"context": "none"},
    "GRU": {"context": "gru"},
    "MGRU": {"context": "mgru"},
    "max-pooling": {"pooling": "max"},
    "avg-pooling": {"pooling": "avg"},
    "w/o DFC": {"pooling": "linear"},
    "MFDR": {},
}


@dataclass
class MFDRConfig(Section):
    """Hyper-parameters of :class:`mfdr.MFDR`.

    Attributes:
        audio_dim, text_dim: feature sizes of the audio frames and text tokens (768: WavLM, BERT).
        audio_len: frames per utterance the features are padded to (T = 255). The model accepts any
            number of frames; this fixes the window layout check below.
        text_len: tokens per utterance (L = 50). Text inputs must have exactly this length (the DFC
            kernel generation map has the size of H).
        d_model: width of the fusion and of the GCPU (256). heads: attention heads (SAWA and the
            GCPU's multi-head attention); must divide ``d_model``.
        window, hop: SAWA window ω and hop h in frames (10, 5). levels: adaptive expansion levels
            (0: a fixed window, as in the paper's ω ablations; 2: the paper's SAWA).
        normalize: ``"segment"`` (paper: one softmax per segment) or ``"joint"`` (SPEC §1).
        align: ``"paper"`` (window i starts at ``i * hop``), ``"stretch"`` (each sample's windows are
            spread over its own audio length) or ``"forced"`` (each token's window starts where its word
            starts in the audio, from a word alignment: ``MFDR.forward(window_starts=...)`` is then required,
            the batch's ``window_starts``; rows of -1, utterances without an alignment, get ``"stretch"``
            windows). For ``"paper"`` and ``"stretch"``, explicit ``window_starts`` override the rule.
        attention: ``"sawa"`` or ``"full"`` (global cross-attention; Table 3 "full-size").
        context: ``"gcpu"``, ``"none"`` (GCPU without the g stream, "w/o Context"), ``"gru"`` (a GRU on
            z) or ``"mgru"`` (the complementary-update MGRU of the paper's Fig. 4a).
        pooling: ``"dfc"``, ``"max"``, ``"avg"`` (same frame/hop schedule as the DFC) or ``"linear"``
            (flatten H straight into the output layer: "w/o DFC").
        dfc_frame, dfc_hops, dfc_hidden: DFC frame width, one hop per layer, hidden channels (3, (2, 3), 64).
        dropout: before the output layer.
        task: ``"classification"`` (logits ``(B, num_classes)``) or ``"regression"`` (``(B,)``, not
            clamped, as MMSA); ``num_classes`` is ignored for regression.
        backend: kernel backend for the SAWA, GCPU and DFC ops (``"triton"``, ``"cpp"``, ``"torch"``,
            ``"reference"``) or None for the fastest that runs (``MFDR_KERNELS_BACKEND`` overrides
            None). A runtime choice: it does not change the weights.
    """

    audio_dim: int = 768
    text_dim: int = 768
    audio_len: int = 255
    text_len: int = 50
    d_model: int = 256
    heads: int = 4
    window: int = 10
    hop: int = 5
    levels: int = 2
    normalize: str = "segment"
    align: str = "paper"
    attention: str = "sawa"
    context: str = "gcpu"
    pooling: str = "dfc"
    dfc_frame: int = 3
    dfc_hops: tuple[int, ...] = field(default=(2, 3))
    dfc_hidden: int = 64
    dropout: float = 0.1
    task: str = "classification"
    num_classes: int = 4
    backend: str | None = None

    PREFIX: typing.ClassVar[str] = "MFDRConfig"
    # Fields that do not change the weights: a saved model may be loaded with other values.
    RUNTIME_FIELDS: typing.ClassVar[tuple[str, ...]] = ("backend", "dropout")

    def __post_init__(self) -> None:
        self.check_types()
        self.at_least(1, "audio_dim", "text_dim", "audio_len", "text_len", "d_model", "heads", "window", "hop",
                      "dfc_frame", "dfc_hidden", "num_classes")
        self.choice("levels", (0, 1, 2))
        self.choice("normalize", NORMALIZE)
        self.choice("align", ALIGN)
        self.choice("attention", ATTENTION)
        self.choice("context", CONTEXT)
        self.choice("pooling", POOLING)
        self.choice("task", TASK)
        if self.backend is not None:
            self.choice("backend", BACKENDS)
        if self.d_model % self.heads:
            raise ConfigError(f"MFDRConfig.d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.attention == "sawa" and self.levels > 0 and self.window % 2:
            raise ConfigError(f"MFDRConfig.window must be even when levels > 0 (half windows are sliced), "
                              f"got {self.window}")
        last_start = (self.text_len - 1) * self.hop
        if self.attention == "sawa" and self.align == "paper" and last_start >= self.audio_len:
            raise ConfigError(
                f"MFDRConfig: with align='paper' word i's window starts at frame i * hop, and the last "
                f"word's ({self.text_len - 1} * {self.hop}) is past audio_len ({self.audio_len}); lower hop, "
                f"raise audio_len or use align='stretch'")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"MFDRConfig.dropout must lie in [0, 1), got {self.dropout}")
        if not self.dfc_hops or any(h < 1 for h in self.dfc_hops):
            raise ConfigError(f"MFDRConfig.dfc_hops must be a non-empty sequence of ints >= 1, "
                             f"got {self.dfc_hops}")
        if self.pooling != "linear":
            self.pooled_lengths()  # raises when the sequence gets shorter than a frame

    # ------------------------------------------------------------------ derived sizes
    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def out_dim(self) -> int:
        """Size of the output layer: ``num_classes``, or 1 for regression."""
        return 1 if self.task == "regression" else self.num_classes

    def pooled_lengths(self) -> list[int]:
        """Sequence lengths through the pooling layers: ``[L, N1, N2, ...]`` (paper eq. 7; 50 → 24 → 8)."""
        lengths = [self.text_len]
        for i, hop in enumerate(self.dfc_hops):
            n = lengths[-1]
            if n < self.dfc_frame:
                raise ConfigError(
                    f"MFDRConfig: pooling layer {i} gets a sequence of {n} < dfc_frame ({self.dfc_frame}) "
                    f"(lengths so far {lengths}); raise text_len or lower dfc_hops / dfc_frame")
            lengths.append((n - self.dfc_frame) // hop + 1)
        return lengths

    @property
    def flat_dim(self) -> int:
        """Input size of the output layer: ``N_last * d_model`` (``text_len * d_model`` without pooling)."""
        n = self.text_len if self.pooling == "linear" else self.pooled_lengths()[-1]
        return n * self.d_model

    # ------------------------------------------------------------------ round-trip
    @classmethod
    def unknown_message(cls, unknown: list[str]) -> str:
        return f"MFDRConfig: unknown field(s) {unknown}; the fields are {list(cls.field_names())}"

    @classmethod
    def ablation(cls, name: str, **changes) -> MFDRConfig:
        """The config of a row of the paper's Table 3 (keys of :data:`TABLE3`), on top of ``changes``."""
        if name not in TABLE3:
            raise ConfigError(f"ablation must be one of {tuple(TABLE3)}, got {name!r}")
        return cls(**{**changes, **TABLE3[name]})

    @classmethod
    def from_dict(cls, d: dict) -> MFDRConfig:
        if not isinstance(d, dict):
            raise ConfigTypeError(f"MFDRConfig.from_dict takes a dict, got {type(d).__name__}")
        return super().from_dict(d)

    def save(self, path: str | Path) -> Path:
        """Write ``.json`` or ``.yaml``/``.yml`` (by the suffix)."""
        path = Path(path)
        d = self.to_dict()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            text = yaml.safe_dump(d, sort_keys=False)
        elif path.suffix.lower() == ".json":
            text = json.dumps(d, indent=2) + "\n"
        else:
            raise ConfigError(f"MFDRConfig.save: path must end in .json, .yaml or .yml, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MFDRConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` file written by :meth:`save` (or by hand)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ConfigError(f"MFDRConfig.load: path must end in .json, .yaml or .yml, got {str(path)!r}")
        if not path.is_file():
            raise MissingFileError(f"MFDRConfig.load: config file {path} does not exist")
        if suffix == ".json":
            try:
                d = json.loads(path.read_text(encoding="utf-8"))
            except UnicodeDecodeError as e:
                raise ConfigError(f"MFDRConfig.load: {path} is not UTF-8 text ({e})") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"MFDRConfig.load: {path} is not valid JSON ({e})") from None
        else:
            d = read_file(path)
        try:
            return cls.from_dict(d)
        except ConfigError as exc:
            raise type(exc)(f"{path}: {exc}") from None
