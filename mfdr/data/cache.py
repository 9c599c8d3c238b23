"""On-disk feature cache: safetensors shards plus a JSONL manifest.

Layout of a cache folder::

    manifest.jsonl               line 1: {"format": "mfdr-feature-cache", "version": 2,
                                          "config": {...}, "config_hash": "..."}
                                 then one line per utterance: {"id", "label", "speaker", "session",
                                 "split", "wav", "text", "words", "aligned", "audio_len", "text_len",
                                 "shard", "row", "config_hash"}
    shard-00000.safetensors      "audio" (ΣT, audio_dim), "audio_offsets" (n+1,) int64,
                                 "text" (ΣL, text_dim),   "text_offsets" (n+1,) int64,
                                 "window_starts" (ΣL,) int64 (rows at text_offsets)

Utterance ``row`` of a shard is ``audio[audio_offsets[row]:audio_offsets[row+1]]`` (and likewise
for text). A shard's metadata ``ids`` (JSON) names the utterance of each row (shards written before it
have none). Entries written by ``extract_features`` also carry ``source``: the wav's size, mtime and
sha256, so that a re-extraction sees what changed. ``window_starts`` holds, for each token, the start
frame of its word's window (forced word alignment, SPEC §6 "Token windows"), or -1 on every token of an
utterance without an alignment (``"aligned": false`` in its manifest line).

Opening a cache (``FeatureCache``, ``CacheWriter``) checks the manifest against the shards: ids unique,
each ``(shard, row)`` given to one entry, rows in range, lengths equal to the stored ones, the row's id
(where the shard names it) equal to the entry's, offsets that start at 0, never decrease and end at the
stored rows; a shard that is truncated or corrupt is named. An error names the file and the line.

Version 1 caches (mfdr before word alignments) have no ``window_starts``: they read as before (the
items' ``window_starts`` is None), work for ``align="paper"`` and ``"stretch"``, and a writer resuming
one keeps writing version 1 shards; ``check_forced_alignment`` says to re-extract them for ``"forced"``.

A shard is written to a temporary file and renamed, and only then are its manifest lines appended: an
interrupted run loses at most the shard in progress, and the next run resumes after the last complete one.
Reads are lazy: shards are memory-mapped and only the rows asked for are copied.

The config hash covers every config entry except those named ``source`` (where weights were loaded
from: the same weights at another path give the same features).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open

from .._safetensors import save_file  # deterministic bytes
from ..errors import CacheConfigError, DataError, MissingFileError

log = logging.getLogger("mfdr.data")

FORMAT = "mfdr-feature-cache"
VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    """(header, entries, byte size of the complete lines). A torn last line is ignored. Entry ``k`` is on
    line ``k + 2`` of the file (line 1: the header); an error names the file and the line."""
    with open(path, "rb") as f:
        raw = f.read()
    lines, good_bytes = [], 0
    for number, chunk in enumerate(raw.splitlines(keepends=True), 1):
        if not chunk.endswith(b"\n"):
            log.warning("%s: ignoring an incomplete last line (interrupted write)", path)
            break
        try:
            line = json.loads(chunk)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            why = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
            raise CacheConfigError(f"feature cache manifest {path} is corrupt: line {number} is not valid JSON "
                                   f"({why}). Re-extract the cache (--overwrite).") from e
        if not isinstance(line, dict):
            raise CacheConfigError(f"feature cache manifest {path} is corrupt: line {number} holds a JSON "
                                   f"{type(line).__name__}, expected an object")
        lines.append(line)
        good_bytes += len(chunk)
    if not lines or lines[0].get("format") != FORMAT:
        raise CacheConfigError(f"{path} is not an mfdr feature cache manifest (no {FORMAT!r} header)")
    header, entries = lines[0], lines[1:]
    if header.get("version") not in READABLE_VERSIONS:
        raise CacheConfigError(f"{path}: cache format version {header.get('version')}, expected one of "
                               f"{READABLE_VERSIONS}")
    for number, e in enumerate(entries, 2):
        if e.get("config_hash") != header["config_hash"]:
            raise CacheConfigError(f"{path}, line {number}: entry {e.get('id')!r} has config hash "
                                   f"{e.get('config_hash')}, the header {header['config_hash']}")
    return header, entries, good_bytes


SHARD_NAME = re.compile(r"shard-(\d{5})\.safetensors")


def _damaged(where: str, problem: str) -> DataError:
    return DataError(f"feature cache {where}: {problem}. The manifest was edited or the cache is damaged: "
                     "re-extract it (`mfdr extract ... --overwrite`, or extract_features(..., overwrite=True)).")


def open_shard(path: Path) -> tuple:
    """``(handle, {"audio": offsets, "text": offsets}, ids or None)`` of the shard file ``path``, its
    offsets checked (start at 0, never decrease, end at the stored rows; as many utterances for audio and
    text). ``DataError`` naming the file if it is truncated, corrupt or inconsistent."""
    try:
        handle = safe_open(str(path), framework="pt")
        keys, metadata = set(handle.keys()), handle.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError (and OSError)
        raise DataError(f"feature cache shard {path} cannot be read ({type(e).__name__}: {e}): it is truncated "
                        "or corrupt. Re-extract the cache (`mfdr extract ... --overwrite`).") from None
    missing = sorted({"audio", "audio_offsets", "text", "text_offsets"} - keys)
    if missing:
        raise _damaged(f"shard {path}", f"it has no {missing}")
    offsets = {}
    for key in ("audio", "text"):
        at = handle.get_tensor(f"{key}_offsets")
        rows = handle.get_slice(key).get_shape()[0]
        if at.dim() != 1 or at.dtype != torch.int64 or len(at) < 2:
            raise _damaged(f"shard {path}", f"{key}_offsets must be 1-D int64 with at least 2 entries, got "
                           f"{at.dtype} of shape {tuple(at.shape)}")
        steps = at[1:] - at[:-1]
        if at[0].item() != 0 or at[-1].item() != rows or bool((steps < 0).any()):
            bad = int(torch.nonzero(steps < 0)[0, 0]) if bool((steps < 0).any()) else None
            where = f"decrease after row {bad}" if bad is not None else f"run {at[0].item()}..{at[-1].item()}"
            raise _damaged(f"shard {path}", f"{key}_offsets {where}; they must start at 0, never decrease and "
                           f"end at the {rows} stored {key} rows")
        offsets[key] = at
    if len(offsets["audio"]) != len(offsets["text"]):
        raise _damaged(f"shard {path}", f"audio_offsets has {len(offsets['audio']) - 1} utterances, "
                       f"text_offsets {len(offsets['text']) - 1}")
    if "window_starts" in keys and handle.get_slice("window_starts").get_shape()[0] != offsets["text"][-1]:
        raise _damaged(f"shard {path}", "window_starts has not one entry per stored text row")
    ids = None
    if "ids" in metadata:
        try:
            ids = json.loads(metadata["ids"])
        except json.JSONDecodeError:
            ids = None
        if not isinstance(ids, list) or len(ids) != len(offsets["text"]) - 1:
            raise _damaged(f"shard {path}", "its metadata 'ids' is not a list of one id per row")
    return handle, offsets, ids


def check_entries(folder: Path, entries: list[dict], missing: set | None = None) -> dict:
    """Check the manifest ``entries`` against the shards of the cache ``folder`` (ids unique, each
    ``(shard, row)`` given once, rows in range, ``audio_len`` / ``text_len`` equal to the stored lengths,
    the row's id where the shard names it); ``DataError`` naming the manifest's file and line. Returns the
    opened shards ``{name: open_shard(...)}``. A missing shard file raises ``MissingFileError``, or, given a
    set ``missing``, is added to it and its entries are not checked."""
    manifest, shards, seen, rows = folder / MANIFEST, {}, {}, {}
    for number, e in enumerate(entries, 2):
        where = f"{manifest}, line {number}"
        uid, name, row = e.get("id"), e.get("shard"), e.get("row")
        if not isinstance(uid, str) or not uid:
            raise _damaged(where, f"the entry has no id (got {uid!r})")
        if uid in seen:
            raise _damaged(where, f"id {uid!r} is also on line {seen[uid]} (a duplicated line or id)")
        seen[uid] = number
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise _damaged(where, f"entry {uid!r} has shard {name!r}, expected a name like shard-00000.safetensors")
        if not isinstance(row, int) or isinstance(row, bool) or row < 0:
            raise _damaged(where, f"entry {uid!r} has row {row!r}, expected an int >= 0")
        if missing is not None and name in missing:
            continue
        if name not in shards:
            if not (folder / name).is_file() and missing is not None:
                missing.add(name)
                continue
            if not (folder / name).is_file():
                raise MissingFileError(f"feature cache {folder}: shard {name} is missing (named on line {number} "
                                       f"of {manifest}); re-extract the cache")
            shards[name] = open_shard(folder / name)
        _, offsets, ids = shards[name]
        n = len(offsets["audio"]) - 1
        if row >= n:
            raise _damaged(where, f"entry {uid!r} has row {row}, but {name} holds {n} utterances (rows 0..{n - 1})")
        if (name, row) in rows:
            other, line = rows[(name, row)]
            raise _damaged(where, f"entry {uid!r} points at {name} row {row}, which belongs to {other!r} (line "
                           f"{line})")
        rows[(name, row)] = (uid, number)
        if ids is not None and ids[row] != uid:
            raise _damaged(where, f"entry {uid!r} points at {name} row {row}, which holds utterance {ids[row]!r}")
        for key in ("audio", "text"):
            stored = int(offsets[key][row + 1] - offsets[key][row])
            if e.get(f"{key}_len") != stored:
                raise _damaged(where, f"entry {uid!r} has {key}_len {e.get(f'{key}_len')!r}, but {name} row {row} "
                               f"holds {stored} {key} rows")
    return shards


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

    ``done`` is the set of ids already cached; ``write_shard`` adds one shard. ``version`` is the
    format written: 2 for a new cache, the existing cache's otherwise (1: no window starts).
    """

    def __init__(self, path, config: dict, *, overwrite: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.manifest = self.path / MANIFEST
        self.config, self.hash = config, config_hash(config)
        if overwrite:
            self._clear()
        lost: set = set()  # shards the manifest names that are missing
        if self.manifest.exists():
            header, entries, good_bytes = _read_manifest(self.manifest)
            check_config(header, config, self.path)
            check_entries(self.path, entries, missing=lost)
            with open(self.manifest, "r+b") as f:                # drop a torn last line
                f.truncate(good_bytes)
            if header["version"] < 2:
                log.warning("feature cache %s has format version %d (no word-window starts): new shards are "
                            "written without them too; re-extract it (overwrite=True) to use align='forced'",
                            self.path, header["version"])
        else:
            header, entries = {"format": FORMAT, "version": VERSION, "config": config,
                               "config_hash": self.hash}, []
            self._append([header])
        if lost:  # their features are gone: drop their entries, a re-extraction makes them again
            log.warning("feature cache %s: shard(s) %s are missing; their %d utterances are dropped from %s "
                        "(extracting again makes them anew)", self.path, sorted(lost),
                        sum(e["shard"] in lost for e in entries), MANIFEST)
        self.version, self.header = header["version"], header
        self.done = {e["id"] for e in entries}
        self.entries = {e["id"]: e for e in entries}
        shards = [int(SHARD_NAME.fullmatch(e["shard"]).group(1)) for e in entries]
        self.next_shard = max(shards, default=-1) + 1
        if lost:
            self.rewrite([e for e in entries if e["shard"] not in lost])

    def _clear(self) -> None:
        for p in list(self.path.glob("shard-*.safetensors*")) + [self.manifest]:
            if p.exists():
                p.unlink()

    def rewrite(self, entries: list[dict]) -> list[str]:
        """Replace the manifest's entries by ``entries`` (some of the current ones, possibly with other
        metadata; their ``shard`` / ``row`` unchanged), atomically: a temp file, fsync'ed and renamed. Shards
        no entry points at any more are deleted; returns their names. For a re-extraction: what is gone
        from the records is dropped, and what changed is dropped before its new rows are appended."""
        current = {(e["shard"], e["row"]): e["id"] for e in self.entries.values()}
        for e in entries:
            if current.get((e.get("shard"), e.get("row"))) != e.get("id"):
                raise ValueError(f"rewrite: entry {e.get('id')!r} is not in the cache at shard {e.get('shard')!r} "
                                 f"row {e.get('row')!r}")
        tmp = self.manifest.with_name(self.manifest.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [self.header, *entries]))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest)
        used = {e["shard"] for e in entries}
        removed = sorted({e["shard"] for e in self.entries.values()} - used)
        for name in removed:
            (self.path / name).unlink(missing_ok=True)
        self.entries = {e["id"]: e for e in entries}
        self.done = set(self.entries)
        return removed

    def _append(self, rows: list[dict]) -> None:
        with open(self.manifest, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
            f.flush()
            os.fsync(f.fileno())

    def write_shard(self, entries: list[dict], audio: list[torch.Tensor], text: list[torch.Tensor],
                    dtype: torch.dtype = torch.float32, window_starts: list | None = None) -> str:
        """Write one shard: ``audio[i] (T_i, audio_dim)``, ``text[i] (L_i, text_dim)`` for
        ``entries[i]`` (dicts with at least ``id``), and ``window_starts[i] (L_i,)`` int (or None: no
        alignment; ``window_starts=None``: none has one). Returns the shard's file name."""
        if not (len(entries) == len(audio) == len(text)) or not entries:
            raise ValueError(f"write_shard: got {len(entries)} entries, {len(audio)} audio and "
                             f"{len(text)} text tensors; expected the same non-zero count")
        starts = [None] * len(text) if window_starts is None else list(window_starts)
        if len(starts) != len(text):
            raise ValueError(f"write_shard: got {len(starts)} window_starts for {len(text)} text tensors")
        for e, t, st in zip(entries, text, starts, strict=True):
            if st is not None and tuple(torch.as_tensor(st).shape) != (len(t),):
                raise ValueError(f"write_shard: window_starts of {e['id']!r} has shape "
                                 f"{tuple(torch.as_tensor(st).shape)}, expected ({len(t)},): one per token")
        name = f"shard-{self.next_shard:05d}.safetensors"
        tensors = {}
        for key, seq in (("audio", audio), ("text", text)):
            lengths = torch.tensor([0] + [len(x) for x in seq], dtype=torch.int64)
            tensors[key] = torch.cat([x.detach().to("cpu", dtype) for x in seq]).contiguous()
            tensors[f"{key}_offsets"] = torch.cumsum(lengths, 0)
        if self.version >= 2:
            tensors["window_starts"] = torch.cat([
                torch.full((len(t),), -1, dtype=torch.int64) if st is None
                else torch.as_tensor(st, dtype=torch.int64).cpu() for t, st in zip(text, starts, strict=True)])
        tmp = self.path / (name + ".tmp")
        ids = json.dumps([str(e["id"]) for e in entries], ensure_ascii=False)
        save_file(tensors, str(tmp), metadata={"config_hash": self.hash, "ids": ids})
        os.replace(tmp, self.path / name)
        rows = [{**e, "aligned": st is not None and self.version >= 2, "audio_len": len(a), "text_len": len(t),
                 "shard": name, "row": i, "config_hash": self.hash}
                for i, (e, a, t, st) in enumerate(zip(entries, audio, text, starts, strict=True))]
        self._append(rows)
        self.done.update(e["id"] for e in entries)
        self.entries.update((r["id"], r) for r in rows)
        self.next_shard += 1
        return name


def check_forced_alignment(cache: FeatureCache, ids=None) -> str | None:
    """For a run with ``align="forced"``: raise ``CacheConfigError`` if ``cache`` stores no window starts
    (a version 1 cache, made before mfdr read word alignments), saying what to re-extract; else a line
    on the utterances (of ``ids``, default all) without an alignment, whose windows fall back to
    ``align="stretch"``, or None when all have one. Report it once per run."""
    if not cache.has_window_starts:
        raise CacheConfigError(
            f"feature cache {cache.path} has no word-window starts (format version {cache.version}, written "
            f"before mfdr read word alignments): align='forced' needs them. Re-extract it from records with "
            f"word alignments (IEMOCAP's .wdseg files, a manifest's alignment column, the synthetic corpus): "
            f"`mfdr extract ... --overwrite`, or extract_features(..., overwrite=True). "
            f"align='paper' and 'stretch' work with this cache as it is.")
    missing = set(cache.unaligned_ids)
    ids = cache.ids if ids is None else list(ids)
    n = sum(i in missing for i in ids)
    if not n:
        return None
    return (f"{n} of {len(ids)} utterances have no word alignment: align='forced' gives them "
            f"align='stretch' windows")


class FeatureCache:
    """Read access to a feature cache folder; ``cache[i]`` is a dict

    ``{"id", "audio" (T, audio_dim) float32, "text" (L, text_dim) float32, "window_starts" (L,) int64
    or None, "label", "speaker", "session", ...}`` (the manifest entry plus the tensors), read lazily
    from the shards. ``window_starts`` is None for an utterance without a word alignment, and for every
    utterance of a version 1 cache (``has_window_starts`` False).

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
        shards = check_entries(self.path, self.entries)
        self.config, self.config_hash = header["config"], header["config_hash"]
        self.version: int = header["version"]
        self._index = {e["id"]: i for i, e in enumerate(self.entries)}
        self._handles = {name: handle for name, (handle, _, _) in shards.items()}
        self._offsets = {name: offsets for name, (_, offsets, _) in shards.items()}
        self.skipped: list = []           # set by extract_features: (where, why) of skipped inputs
        self.changes: dict = {}           # set by extract_features: what a re-extraction changed

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
            self._handles[name], self._offsets[name], _ = open_shard(path)  # (checked when the cache opened)
        return self._handles[name], self._offsets[name]

    def _rows(self, entry: dict, key: str, offsets_key: str | None = None) -> torch.Tensor:
        handle, offsets = self._shard(entry["shard"])
        at = offsets[offsets_key or key]
        start, stop = at[entry["row"]].item(), at[entry["row"] + 1].item()
        rows = handle.get_slice(key)[start:stop]
        return rows if rows.dtype == torch.int64 else rows.float()

    @property
    def has_window_starts(self) -> bool:
        """Whether the cache stores word-window starts (format version >= 2)."""
        return self.version >= 2

    @property
    def unaligned_ids(self) -> list[str]:
        """Ids of the utterances with no word-window starts (all of them in a version 1 cache)."""
        return [e["id"] for e in self.entries if not e.get("aligned", False)]

    def __getitem__(self, i: int) -> dict:
        entry = self.entries[i]
        starts = (self._rows(entry, "window_starts", "text") if self.has_window_starts and entry.get("aligned")
                  else None)
        return {**entry, "audio": self._rows(entry, "audio"), "text": self._rows(entry, "text"),
                "window_starts": starts}

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
