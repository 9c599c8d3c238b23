"""The errors mfdr raises on purpose. Each derives from :class:`MFDRError` (the ``mfdr`` command catches
that base alone: anything else is a bug and shows its traceback) and from the builtin a caller would
expect (``ValueError`` for bad values, ``TypeError`` for wrong types, ``FileNotFoundError`` for a missing
file, ``RuntimeError`` for a run that cannot go on)."""

from __future__ import annotations


class MFDRError(Exception):
    """Base of every error mfdr raises on purpose: bad input, a missing file, a run that cannot go on."""


class ConfigError(MFDRError, ValueError):
    """A config value, key or file is wrong; the message names the key (``train.lr``) or the file."""


class ConfigTypeError(ConfigError, TypeError):
    """A config value has the wrong type."""


class MissingFileError(MFDRError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DataError(MFDRError, ValueError):
    """A data file (manifest, transcript, label file, alignment, feature cache) is missing or malformed."""


class AudioReadError(DataError):
    """A wav file cannot be read, or holds no (finite) samples."""


class CacheConfigError(DataError):
    """A feature cache was made with other extractors or settings than those asked for."""


class CheckpointError(MFDRError, ValueError):
    """A checkpoint is not one, is truncated or corrupt, or belongs to another run or fold."""


class RunDirError(MFDRError, ValueError):
    """The output folder holds something that the requested run would overwrite."""


class TrainingError(MFDRError, RuntimeError):
    """Training cannot go on (a non-finite loss); the message says what is kept on disk."""


class InputError(MFDRError, ValueError):
    """A command's arguments do not fit together (e.g. evaluating one model without a feature cache)."""


class DependencyError(MFDRError, RuntimeError):
    """An external program or package the command needs is missing (e.g. espeak-ng)."""


__all__ = ["AudioReadError", "CacheConfigError", "CheckpointError", "ConfigError", "ConfigTypeError", "DataError",
           "EncoderLoadError",
           "DependencyError", "InputError", "MFDRError", "MissingFileError", "RunDirError", "TrainingError"]


class EncoderLoadError(MFDRError, OSError):
    """A feature encoder (a transformers model folder or hub id) cannot be loaded."""
