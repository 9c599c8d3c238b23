"""Checkpoints that survive interruption.

:func:`save_checkpoint` writes ``torch.save(payload)`` behind a one-line header with its sha256, to a
temporary file that is fsync'ed and renamed over the target: a crash leaves the old file or the new one,
never a torn one. :func:`load_checkpoint` checks the header and the hash (a truncated or corrupt file
raises ``CheckpointError`` naming it) and unpickles with ``weights_only=True``, so a checkpoint can hold
only tensors and plain data: it cannot run code. ``rng_state`` / ``set_rng_state``: Python, numpy and
torch RNG states as plain data, for an exact resume.
"""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

from ..errors import CheckpointError, MissingFileError
from .files import atomic_write_bytes

MAGIC = b"MFDR-CHECKPOINT 1\n"


def save_checkpoint(path, payload: dict) -> Path:
    """``torch.save(payload)`` behind a header holding its sha256; written atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(payload, buf)
    data = buf.getvalue()
    atomic_write_bytes(Path(path), MAGIC + hashlib.sha256(data).hexdigest().encode() + b"\n" + data)
    return Path(path)


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; ``CheckpointError`` naming the file if it
    is not one, is truncated or corrupt (sha256 mismatch), or holds anything but tensors and plain data
    (``torch.load(weights_only=True)``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} does not exist")
    raw = path.read_bytes()
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not an mfdr checkpoint (it does not start with {MAGIC[:-1]!r})")
    head = len(MAGIC) + 65
    digest, data = raw[len(MAGIC): head - 1].decode("ascii", "replace"), raw[head:]
    if hashlib.sha256(data).hexdigest() != digest:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({len(raw)} bytes; its sha256 "
                              "does not match the header). Delete it to restart that fold, or restore a "
                              "copy.")
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"checkpoint {path} cannot be read: {type(e).__name__}: {e}") from e


def rng_state() -> dict:
    """Python, numpy, torch (and CUDA) RNG states as plain data and tensors (``weights_only``-safe)."""
    import numpy as np
    import torch

    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [keys.tolist(), int(pos), int(has_gauss), float(gauss)],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    import numpy as np
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
