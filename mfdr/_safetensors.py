"""safetensors files whose bytes depend only on their content.

``safetensors`` writes the ``__metadata__`` entries of the header in the order of a Rust hash map, which
changes from one process to the next: two identical runs gave ``model.safetensors`` files with other bytes
(and other sha256), a false alarm for anyone checking reproducibility that way. :func:`save_file` writes the
header with the metadata in sorted order; the tensors and their offsets are those safetensors wrote.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def canonical_header(blob: bytes) -> tuple[bytes, int]:
    """``(header, n)``: the first ``8 + n`` bytes of the safetensors bytes ``blob`` (length and JSON
    header) rewritten with the metadata entries in sorted order, of the same length."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(bytes(blob[8:8 + n]))
    if isinstance(header.get("__metadata__"), dict):
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > n:  # not the compact JSON safetensors writes: keep its header as it is
        return bytes(blob[:8 + n]), n
    return bytes(blob[:8]) + text + b" " * (n - len(text)), n


def save_file(tensors: dict, path, metadata: dict | None = None) -> Path:
    """``safetensors.torch.save_file`` with deterministic bytes (:func:`canonical_header`); fsync'ed."""
    from safetensors.torch import save

    path, blob = Path(path), save(tensors, metadata=metadata)
    head, n = canonical_header(blob)
    with open(path, "wb") as f:
        f.write(head)
        f.write(memoryview(blob)[8 + n:])  # the tensors, not copied
        f.flush()
        os.fsync(f.fileno())
    return path
