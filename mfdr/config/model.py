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

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

ATTENTION = ("sawa", "full")
CONTEXT = ("gcpu", "none", "gru", "mgru")
POOLING = ("dfc", "max", "avg", "linear")
NORMALIZE = ("segment", "joint")
ALIGN = ("paper", "stretch")
TASK = ("classification", "regression")
BACKENDS = ("triton", "cpp", "torch", "reference")

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
class MFDRConfig:
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
        align: ``"paper"`` (window i starts at ``i * hop``) or ``"stretch"`` (each sample's windows are
            spread over its own audio length). ``MFDR.forward(window_starts=...)`` overrides both.
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

    # Fields that do not change the weights: a saved model may be loaded with other values.
    RUNTIME_FIELDS: typing.ClassVar[tuple[str, ...]] = ("backend", "dropout")

    def __post_init__(self) -> None:
        if isinstance(self.dfc_hops, list):
            self.dfc_hops = tuple(self.dfc_hops)
        for f in dataclasses.fields(self):
            _check_type(f.name, getattr(self, f.name), _HINTS[f.name])
        for name in ("audio_dim", "text_dim", "audio_len", "text_len", "d_model", "heads", "window", "hop",
                     "dfc_frame", "dfc_hidden", "num_classes"):
            if getattr(self, name) < 1:
                raise ValueError(f"MFDRConfig.{name} must be >= 1, got {getattr(self, name)}")
        _choice("levels", self.levels, (0, 1, 2))
        _choice("normalize", self.normalize, NORMALIZE)
        _choice("align", self.align, ALIGN)
        _choice("attention", self.attention, ATTENTION)
        _choice("context", self.context, CONTEXT)
        _choice("pooling", self.pooling, POOLING)
        _choice("task", self.task, TASK)
        if self.backend is not None:
            _choice("backend", self.backend, BACKENDS)
        if self.d_model % self.heads:
            raise ValueError(f"MFDRConfig.d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.attention == "sawa" and self.levels > 0 and self.window % 2:
            raise ValueError(f"MFDRConfig.window must be even when levels > 0 (half windows are sliced), "
                             f"got {self.window}")
        last_start = (self.text_len - 1) * self.hop
        if self.attention == "sawa" and self.align == "paper" and last_start >= self.audio_len:
            raise ValueError(
                f"MFDRConfig: with align='paper' word i's window starts at frame i * hop, and the last "
                f"word's ({self.text_len - 1} * {self.hop}) is past audio_len ({self.audio_len}); lower hop, "
                f"raise audio_len or use align='stretch'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MFDRConfig.dropout must lie in [0, 1), got {self.dropout}")
        if not self.dfc_hops or any(h < 1 for h in self.dfc_hops):
            raise ValueError(f"MFDRConfig.dfc_hops must be a non-empty sequence of ints >= 1, "
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
                raise ValueError(
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
    def replace(self, **changes) -> MFDRConfig:
        """A copy with some fields changed (validated)."""
        _check_keys(changes)
        return dataclasses.replace(self, **changes)

    @classmethod
    def ablation(cls, name: str, **changes) -> MFDRConfig:
        """The config of a row of the paper's Table 3 (keys of :data:`TABLE3`), on top of ``changes``."""
        if name not in TABLE3:
            raise ValueError(f"ablation must be one of {tuple(TABLE3)}, got {name!r}")
        return cls(**{**changes, **TABLE3[name]})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dfc_hops"] = list(self.dfc_hops)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> MFDRConfig:
        if not isinstance(d, dict):
            raise TypeError(f"MFDRConfig.from_dict takes a dict, got {type(d).__name__}")
        _check_keys(d)
        return cls(**d)

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
            raise ValueError(f"MFDRConfig.save: path must end in .json, .yaml or .yml, got {str(path)!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MFDRConfig:
        """Read a ``.json`` or ``.yaml``/``.yml`` file written by :meth:`save` (or by hand)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".json", ".yaml", ".yml"):
            raise ValueError(f"MFDRConfig.load: path must end in .json, .yaml or .yml, got {str(path)!r}")
        if not path.is_file():
            raise FileNotFoundError(f"MFDRConfig.load: config file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"MFDRConfig.load: {path} is not UTF-8 text ({e})") from None
        if suffix == ".json":
            try:
                d = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"MFDRConfig.load: {path} is not valid JSON ({e})") from None
        else:
            import yaml

            try:
                d = yaml.safe_load(text) or {}
            except yaml.YAMLError as e:
                raise ValueError(f"MFDRConfig.load: {path} is not valid YAML ({_one_line(e)})") from None
        try:
            return cls.from_dict(d)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{path}: {exc}") from None

    def diff(self, other: MFDRConfig, *, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """``{field: (self's value, other's value)}`` for the fields that differ."""
        return {f.name: (getattr(self, f.name), getattr(other, f.name)) for f in dataclasses.fields(self)
                if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)}


_HINTS = typing.get_type_hints(MFDRConfig)
_FIELDS = tuple(f.name for f in dataclasses.fields(MFDRConfig))


def _one_line(error: Exception) -> str:
    """A YAML (or any) error message on one line: ``problem at line L, column C``."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def _check_keys(d: dict) -> None:
    unknown = sorted(set(d) - set(_FIELDS))
    if unknown:
        raise ValueError(f"MFDRConfig: unknown field(s) {unknown}; the fields are {list(_FIELDS)}")


def _choice(name: str, value, options: tuple) -> None:
    if value not in options:
        raise ValueError(f"MFDRConfig.{name} must be one of {options}, got {value!r}")


def _type_name(hint) -> str:
    if typing.get_origin(hint) is not None:  # tuple[int, ...], not "tuple"
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def _check_type(name: str, value, hint) -> None:
    """int fields take ints (not bools), float fields ints or floats, str fields strings, and so on."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if any(_matches(value, h) for h in typing.get_args(hint)):
            return
    elif _matches(value, hint):
        return
    raise TypeError(f"MFDRConfig.{name} must be {_type_name(hint)}, got {type(value).__name__} {value!r}")


def _matches(value, hint) -> bool:
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typing.get_origin(hint) is tuple:
        (item, *_) = typing.get_args(hint)
        return isinstance(value, tuple) and all(_matches(v, item) for v in value)
    return isinstance(value, hint)
