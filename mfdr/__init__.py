"""mfdr: the MFDR network for speech + text emotion recognition (Zhao et al., "MFDR: Multiple-stage Fusion
and Dynamically Refined Network for Multimodal Emotion Recognition") on the ``mfdr_kernels`` operators.

    from mfdr import MFDR, MFDRConfig
    model = MFDR(MFDRConfig(num_classes=4))
    logits = model(audio, text, audio_lengths, text_lengths)

Names are imported on first use (module ``__getattr__``), so ``import mfdr`` stays light: it does not
import torch, transformers or the data readers until they are asked for.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> submodule that defines it
_LAZY = {
    "MFDR": "model",
    "SAWALayer": "sawa",
    "MFDRConfig": "config",
    "TABLE3": "config",
    "GCPU": "gcpu",
    "MGRU": "gcpu",
    "GRUContext": "gcpu",
    "DynamicFrameConv": "dfc",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mfdr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
