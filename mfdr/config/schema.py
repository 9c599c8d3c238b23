"""The one config mechanism: typed dataclass sections, one YAML reader, one ``section.key=value`` parser.

Every config of the package (``MFDRConfig`` for the model, the ``train``/``data``/``features`` sections
of a run, the demo's ``demo`` section) is a dataclass deriving from :class:`Section`, and follows the same
rules:

- **Types** are checked against the annotations, strictly (an int field refuses ``True`` and ``"5"``; a
  float field takes ints; a tuple field takes a list), by :func:`check_value`. Errors are
  :class:`~mfdr.errors.ConfigError` (a ``ValueError``; a ``TypeError`` too for a wrong type) naming the key.
- **Values from text** (config files and ``--set`` overrides) are parsed by one YAML reader that reads
  numbers as YAML 1.2 does: ``5e-4`` and ``1e-1`` are floats (PyYAML's YAML 1.1 reads them as strings).
  So ``--set train.lr=5e-4`` and ``--set model.dropout=1e-1`` behave the same.
- **Unknown keys** are errors listing the known ones; ``to_dict``/``from_dict`` round-trip.

No config library is used: the model's config must import on bare GPU machines (a lent device has no
pydantic or OmegaConf, and nothing can be installed there), and the rules above fit in this file.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path

from ..errors import ConfigError, ConfigTypeError, MissingFileError


# ---------------------------------------------------------------------- YAML, read as YAML 1.2 reads numbers
def _loader():
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader with YAML 1.2's float syntax (``1e-3``, ``5E+2``: floats, not strings)."""

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+][0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


def one_line(error: Exception) -> str:
    """A YAML (or any) error message on one line: ``problem at line L, column C``."""
    mark, problem = getattr(error, "problem_mark", None), getattr(error, "problem", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(error).split())


def parse_yaml(text: str, where: str):
    """``text`` as YAML (YAML 1.2 numbers); a ConfigError naming ``where`` when it is not valid YAML."""
    import yaml

    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise ConfigError(f"{where} is not valid YAML: {one_line(e)}") from None


def read_file(path: str | Path):
    """A config file (``.yaml``/``.yml``/``.json``; JSON is YAML) parsed (empty file: ``{}``); the caller's
    ``from_dict`` says what it must hold."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text ({e})") from None
    d = parse_yaml(text, f"config file {path}")
    return {} if d is None else d


def apply_overrides(d: dict, overrides) -> dict:
    """``d`` with ``section.key=value`` overrides applied (values parsed as YAML); ``d`` is not changed."""
    import copy

    d = copy.deepcopy(d)
    for item in overrides:
        key, sep, value = str(item).partition("=")
        parts = key.strip().split(".")
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.epochs=2)")
        if d.get(parts[0]) is None:
            d[parts[0]] = {}
        section = d[parts[0]]
        if not isinstance(section, dict):
            raise ConfigError(f"override {item!r}: config section {parts[0]!r} is not a mapping")
        section[parts[1]] = parse_yaml(value, f"override {item!r}: the value")
    return d


# ---------------------------------------------------------------------- types
def type_name(hint) -> str:
    if typing.get_origin(hint) is not None:  # tuple[int, ...], not "tuple"
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_value(where: str, value, hint):
    """``value`` if it has the type ``hint`` (a list becomes a tuple for a tuple field, an int a float
    for a float field), else a ConfigTypeError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for h in typing.get_args(hint):
            try:
                return check_value(where, value, h)
            except ConfigTypeError:
                pass
    elif hint is type(None):
        if value is None:
            return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)):
            (item, *_) = typing.get_args(hint)
            try:
                return tuple(check_value(where, v, item) for v in value)
            except ConfigTypeError:
                pass
    raise ConfigTypeError(f"{where} must be {type_name(hint)}, got {type(value).__name__} {value!r}")


class Section:
    """Base of every config dataclass: ``PREFIX`` names its keys in errors (``train.lr``, ``MFDRConfig.x``)."""

    PREFIX: typing.ClassVar[str] = ""

    def _key(self, name: str) -> str:
        return f"{self.PREFIX}.{name}"

    def check_types(self) -> None:
        """Check (and normalize: list -> tuple, int -> float) every field against its annotation."""
        hints = _hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, check_value(self._key(f.name), getattr(self, f.name), hints[f.name]))

    def choice(self, name: str, options: tuple) -> None:
        value = getattr(self, name)
        if value not in options:
            raise ConfigError(f"{self._key(name)} must be one of {options}, got {value!r}")

    def at_least(self, minimum: int, *names: str) -> None:
        for name in names:
            if getattr(self, name) < minimum:
                raise ConfigError(f"{self._key(name)} must be >= {minimum}, got {getattr(self, name)}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def check_keys(cls, d: dict) -> None:
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ConfigError(cls.unknown_message(unknown))

    @classmethod
    def unknown_message(cls, unknown: list[str]) -> str:
        return (f"unknown key(s) {[f'{cls.PREFIX}.{k}' for k in unknown]}; section {cls.PREFIX!r} has "
                f"{list(cls.field_names())}")

    @classmethod
    def from_dict(cls, d):
        if not isinstance(d, dict):
            raise ConfigTypeError(f"config section {cls.PREFIX!r} must be a mapping, got {type(d).__name__}")
        cls.check_keys(d)
        return cls(**d)

    def to_dict(self) -> dict:
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with some fields changed (validated)."""
        self.check_keys(changes)
        return dataclasses.replace(self, **changes)

    def diff(self, other, *, ignore: tuple[str, ...] = ()) -> dict[str, tuple]:
        """``{field: (self's value, other's value)}`` for the fields that differ."""
        return {n: (getattr(self, n), getattr(other, n)) for n in self.field_names()
                if n not in ignore and getattr(self, n) != getattr(other, n)}


_HINTS: dict[type, dict] = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]
