"""On-disk feature cache: safetensors shards plus a JSONL manifest.

Layout of a cache folder::

    manifest.jsonl               line 1: {"format": "mfdr-feature-cache", "version": 1,
                                          "config": {...}, "config_hash": "..."}
                                 then one line per utterance: {"id", "label", "speaker", "session",
                                 "split", "wav", "text", "audio_len", "text_len", "shard", "row",
                                 "config_hash"}
    shard-00000.safetensors      "audio" (ΣT, audio_dim), "audio_offsets" (n+1,) int64,
                                 "text" (ΣL, text_dim),   "text_offsets" (n+1,) int64

Utterance ``row`` of a shard is ``audio[audio_offsets[row]:audio_offsets[row+1]]`` (and likewise
for text). A shard is written to a temporary file and renamed, and only then are its manifest lines
appended: an interrupted run loses at most the shard in progress, and the next run resumes after the
last complete one. Reads are lazy: shards are memory-mapped and only the rows asked for are copied.

The config hash covers every config entry except those named ``source`` (where weights were loaded
from: the same weights at another path give the same features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CacheConfigError, DataError, MissingFileError

log = logging.getLogger("mfdr.data")

FORMAT = "mfdr-feature-cache"
VERSION = 1
MANIFEST = "manifest.jsonl"
UNHASHED_KEYS = ("source",)


def _hashable(config):
    if isinstance(config, dict):
        return {k: _hashable(v) for k, v in config.items() if k not in UNHASHED_KEYS}
    if isinstance(config, (list, tuple)):
        return [_hashable(v) for v in config]
    return config


def config_hash(config: dict) -> str:
    """A short sha256 of the canonical JSON of ``config`` (without ``source`` entries)."""
    blob = json.dumps(_hashable(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_diff(found: dict, expected: dict) -> list[str]:
    """Human-readable differences ``key: cache has X, requested Y`` (``source`` keys ignored)."""
    a, b = _flatten(_hashable(found)), _flatten(_hashable(expected))
    return [f"{k}: cache has {a.get(k, '<absent>')!r}, requested {b.get(k, '<absent>')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _read_manifest(path: Path) -> tuple[dict, list[dict], int]:
    """(header, entries, byte size of the complete lines). A torn last line is ignored."""
    with open(path, "rb") as f:
        raw = f.read()
    lines, good_bytes = [], 0
    for chunk in raw.splitlines(keepends=True):
        if not chunk.endswith(b"\n"):
            log.warning("%s: ignoring an incomplete last line (interrupted write)", path)
            break
        try:
            lines.append(json.loads(chunk))
        except json.JSONDecodeError as e:
            raise CacheConfigError(f"feature cache manifest {path} is corrupt: {e}") from e
        good_bytes += len(chunk)
    if not lines or lines[0].get("format") != FORMAT:
        raise CacheConfigError(f"{path} is not an mfdr feature cache manifest (no {FORMAT!r} header)")
    header, entries = lines[0], lines[1:]
    if header.get("version") != VERSION:
        raise CacheConfigError(f"{path}: cache format version {header.get('version')}, expected {VERSION}")
    for e in entries:
        if e.get("config_hash") != header["config_hash"]:
            raise CacheConfigError(f"{path}: entry {e.get('id')!r} has config hash "
                                   f"{e.get('config_hash')}, the header {header['config_hash']}")
    return header, entries, good_bytes


def check_config(header: dict, expected: dict | None, where: Path) -> None:
    """Raise ``CacheConfigError`` if the cache's config differs from ``expected``."""
    if expected is None or config_hash(expected) == header["config_hash"]:
        return
    diff = "; ".join(config_diff(header["config"], expected)) or "(hash differs)"
    raise CacheConfigError(f"feature cache {where} was made with another config "
                           f"(hash {header['config_hash']}, requested {config_hash(expected)}): {diff}. "
                           "Use another cache folder, or overwrite=True to rebuild it.")


class CacheWriter:
    """Appends shards to a cache folder; on an existing cache, checks the config and resumes.

    ``done`` is the set of ids already cached; ``write_shard`` adds one shard.
    """

    def __init__(self, path, config: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self.path / MANIFEST
        self.config, self.hash = config, config_hash(config)
        if overwrite:
            self._clear()
        if self.manifest.exists():
            header, entries, good_bytes = _read_manifest(self.manifest)
            check_config(header, config, self.path)
            with open(self.manifest, "r+b") as f:                # drop a torn last line
                f.truncate(good_bytes)
        else:
            header, entries = {"format": FORMAT, "version": VERSION, "config": config,
                               "config_hash": self.hash}, []
            self._append([header])
        self.done = {e["id"] for e in entries}
        shards = [int(e["shard"].split("-")[1].split(".")[0]) for e in entries]
        self.next_shard = max(shards, default=-1) + 1

    def _clear(self) -> None:
        for p in list(self.path.glob("shard-*.safetensors*")) + [self.manifest]:
            if p.exists():
                p.unlink()

    def _append(self, rows: list[dict]) -> None:
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def write_shard(self, entries: list[dict], audio: list[torch.Tensor], text: list[torch.Tensor],
                    dtype: torch.dtype = torch.float32) -> str:
        """Write one shard: ``audio[i] (T_i, audio_dim)``, ``text[i] (L_i, text_dim)`` for
        ``entries[i]`` (dicts with at least ``id``). Returns the shard's file name."""
        if not (len(entries) == len(audio) == len(text)) or not entries:
            raise ValueError(f"write_shard: got {len(entries)} entries, {len(audio)} audio and "
                             f"{len(text)} text tensors; expected the same non-zero count")
        name = f"shard-{self.next_shard:05d}.safetensors"
        tensors = {}
        for key, seq in (("audio", audio), ("text", text)):
            lengths = torch.tensor([0] + [len(x) for x in seq], dtype=torch.int64)
            tensors[key] = torch.cat([x.detach().to("cpu", dtype) for x in seq]).contiguous()
            tensors[f"{key}_offsets"] = torch.cumsum(lengths, 0)
        tmp = self.path / (name + ".tmp")
        save_file(tensors, str(tmp), metadata={"config_hash": self.hash})
        os.replace(tmp, self.path / name)
        rows = [{**e, "audio_len": len(a), "text_len": len(t), "shard": name, "row": i,
                 "config_hash": self.hash}
                for i, (e, a, t) in enumerate(zip(entries, audio, text, strict=True))]
        self._append(rows)
        self.done.update(e["id"] for e in entries)
        self.next_shard += 1
        return name


class FeatureCache:
    """Read access to a feature cache folder; ``cache[i]`` is a dict

    ``{"id", "audio" (T, audio_dim) float32, "text" (L, text_dim) float32, "label", "speaker",
    "session", ...}`` (the manifest entry plus the two tensors), read lazily from the shards.

    Args:
        path: the cache folder.
        expect_config: if given, refuse (``CacheConfigError``) a cache made with another config.
    """

    def __init__(self, path, expect_config: dict | None = None):
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise MissingFileError(f"no feature cache at {self.path} ({MANIFEST} missing)")
        header, self.entries, _ = _read_manifest(manifest)
        check_config(header, expect_config, self.path)
        self.config, self.config_hash = header["config"], header["config_hash"]
        self._index = {e["id"]: i for i, e in enumerate(self.entries)}
        self._handles, self._offsets = {}, {}
        self.skipped: list = []           # set by extract_features: (where, why) of skipped inputs

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.path)!r}, n={len(self)}, config_hash={self.config_hash!r})"

    def __getstate__(self):                   # DataLoader workers reopen the shards themselves
        state = self.__dict__.copy()
        state["_handles"], state["_offsets"] = {}, {}
        return state

    @property
    def ids(self) -> list[str]:
        return [e["id"] for e in self.entries]

    def index(self, utt_id: str) -> int:
        """Position of utterance ``utt_id``; ``KeyError`` naming it if absent."""
        if utt_id not in self._index:
            raise KeyError(f"utterance {utt_id!r} is not in the feature cache {self.path}")
        return self._index[utt_id]

    def _shard(self, name: str):
        if name not in self._handles:
            path = self.path / name
            if not path.is_file():
                raise MissingFileError(f"feature cache {self.path}: shard {name} is missing")
            handle = safe_open(str(path), framework="pt")
            self._handles[name] = handle
            self._offsets[name] = {k: handle.get_tensor(f"{k}_offsets") for k in ("audio", "text")}
        return self._handles[name], self._offsets[name]

    def _rows(self, entry: dict, key: str) -> torch.Tensor:
        handle, offsets = self._shard(entry["shard"])
        start, stop = offsets[key][entry["row"]].item(), offsets[key][entry["row"] + 1].item()
        return handle.get_slice(key)[start:stop].float()

    def __getitem__(self, i: int) -> dict:
        entry = self.entries[i]
        return {**entry, "audio": self._rows(entry, "audio"), "text": self._rows(entry, "text")}

    def _dim(self, key: str) -> int:
        if not self.entries:
            raise DataError(f"feature cache {self.path} is empty")
        handle, _ = self._shard(self.entries[0]["shard"])
        return handle.get_slice(key).get_shape()[1]

    @property
    def audio_dim(self) -> int:
        return self._dim("audio")

    @property
    def text_dim(self) -> int:
        return self._dim("text")
