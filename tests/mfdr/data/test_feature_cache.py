"""The feature cache on its own (random tensors): round trip, resume, torn writes, config refusal."""

import json
import pickle

import pytest
import torch

from mfdr.data import CacheConfigError, CacheWriter, FeatureCache, config_hash
from mfdr.data.cache import MANIFEST

CONFIG = {"audio": {"kind": "fbank", "dim": 6, "source": "/here"}, "text": {"kind": "t", "dim": 4},
          "dtype": "x"}


def _shard(start: int, n: int):
    entries = [{"id": f"u{i}", "label": "happy", "speaker": f"s{i % 2}", "session": 1}
               for i in range(start, start + n)]
    audio = [torch.randn(3 + i, 6) for i in range(start, start + n)]
    text = [torch.randn(1 + i % 3, 4) for i in range(start, start + n)]
    return entries, audio, text


def test_round_trip_lazy_reads(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    shards = [_shard(0, 3), _shard(3, 2)]
    for s in shards:
        w.write_shard(*s)
    cache = FeatureCache(tmp_path, expect_config=CONFIG)
    assert len(cache) == 5 and cache.ids == [f"u{i}" for i in range(5)]
    assert (cache.audio_dim, cache.text_dim) == (6, 4)
    audio = [a for s in shards for a in s[1]]
    text = [t for s in shards for t in s[2]]
    for i in range(5):
        item = cache[i]
        assert torch.equal(item["audio"], audio[i]) and torch.equal(item["text"], text[i])
        assert item["audio_len"] == len(audio[i]) and item["speaker"] == f"s{i % 2}"
    assert cache.index("u3") == 3
    with pytest.raises(KeyError, match="'nope' is not in the feature cache"):
        cache.index("nope")
    clone = pickle.loads(pickle.dumps(cache))                # as DataLoader workers get it
    assert torch.equal(clone[4]["audio"], audio[4])


def test_float16_storage_reads_float32(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    entries, audio, text = _shard(0, 2)
    w.write_shard(entries, audio, text, dtype=torch.float16)
    item = FeatureCache(tmp_path)[1]
    assert item["audio"].dtype == torch.float32
    torch.testing.assert_close(item["audio"], audio[1].half().float())


def test_resume_skips_done_and_drops_torn_line(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    w.write_shard(*_shard(0, 2))
    with open(tmp_path / MANIFEST, "a") as f:                # a write cut short by a crash
        f.write('{"id": "u2", "lab')
    (tmp_path / "shard-00001.safetensors.tmp").write_bytes(b"partial")
    assert len(FeatureCache(tmp_path)) == 2                  # readers ignore the torn line
    w2 = CacheWriter(tmp_path, CONFIG)
    assert w2.done == {"u0", "u1"} and w2.next_shard == 1
    w2.write_shard(*_shard(2, 2))
    cache = FeatureCache(tmp_path)
    assert cache.ids == ["u0", "u1", "u2", "u3"]
    assert all(json.loads(line) for line in (tmp_path / MANIFEST).read_text().splitlines())


def test_refuses_another_config(tmp_path):
    CacheWriter(tmp_path, CONFIG).write_shard(*_shard(0, 1))
    other = {**CONFIG, "audio": {**CONFIG["audio"], "dim": 8}}
    with pytest.raises(CacheConfigError, match=r"audio\.dim: cache has 6, requested 8"):
        FeatureCache(tmp_path, expect_config=other)
    with pytest.raises(CacheConfigError, match="another config"):
        CacheWriter(tmp_path, other)
    moved = {**CONFIG, "audio": {**CONFIG["audio"], "source": "/elsewhere"}}   # same weights, new path
    assert config_hash(moved) == config_hash(CONFIG)
    FeatureCache(tmp_path, expect_config=moved)
    w = CacheWriter(tmp_path, other, overwrite=True)
    assert w.done == set() and not list(tmp_path.glob("shard-*"))


def test_corrupt_or_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no feature cache"):
        FeatureCache(tmp_path)
    (tmp_path / MANIFEST).write_text('{"hello": 1}\n')
    with pytest.raises(CacheConfigError, match="not an mfdr feature cache"):
        FeatureCache(tmp_path)
    (tmp_path / MANIFEST).unlink()
    CacheWriter(tmp_path, CONFIG).write_shard(*_shard(0, 1))
    (tmp_path / "shard-00000.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="shard shard-00000.safetensors is missing"):
        FeatureCache(tmp_path)[0]
    with pytest.raises(ValueError, match="expected the same non-zero count"):
        CacheWriter(tmp_path, CONFIG).write_shard([], [], [])


# ----------------------------------------------------------------------------- window starts

def test_window_starts_round_trip(tmp_path):
    from mfdr.data import check_forced_alignment

    entries, audio, text = _shard(0, 3)                      # text lengths 1, 2, 3
    starts = [torch.tensor([4]), None, torch.tensor([0, 0, 9])]
    w = CacheWriter(tmp_path, CONFIG)
    assert w.version == 2
    w.write_shard(entries, audio, text, window_starts=starts)
    cache = FeatureCache(tmp_path)
    assert cache.has_window_starts and cache.unaligned_ids == ["u1"]
    assert cache[0]["window_starts"].tolist() == [4] and cache[0]["window_starts"].dtype == torch.int64
    assert cache[1]["window_starts"] is None and cache[2]["window_starts"].tolist() == [0, 0, 9]
    torch.testing.assert_close(cache[2]["text"], text[2])
    assert check_forced_alignment(cache) == ("1 of 3 utterances have no word alignment: align='forced' gives "
                                             "them align='stretch' windows")
    assert check_forced_alignment(cache, ids=["u0", "u2"]) is None
    with pytest.raises(ValueError, match=r"window_starts of 'u2' has shape \(2,\), expected \(3,\)"):
        w.write_shard(entries, audio, text, window_starts=[None, None, torch.tensor([1, 2])])
    with pytest.raises(ValueError, match="got 2 window_starts for 3 text tensors"):
        w.write_shard(entries, audio, text, window_starts=[None, None])


def _make_v1(path):
    """A cache as mfdr wrote it before word alignments (format version 1: no window_starts, no "aligned")."""
    w = CacheWriter(path, CONFIG)
    w.version = 1
    w.write_shard(*_shard(0, 2))
    lines = (path / MANIFEST).read_text().splitlines()
    header = {**json.loads(lines[0]), "version": 1}
    rows = [{k: v for k, v in json.loads(line).items() if k != "aligned"} for line in lines[1:]]
    (path / MANIFEST).write_text("".join(json.dumps(r) + "\n" for r in [header] + rows))


def test_version_1_cache_reads_and_says_what_to_reextract(tmp_path, caplog):
    from safetensors import safe_open

    from mfdr.data import FeatureDataset, check_forced_alignment, collate

    _make_v1(tmp_path)
    with safe_open(str(tmp_path / "shard-00000.safetensors"), framework="pt") as f:
        assert "window_starts" not in f.keys()
    cache = FeatureCache(tmp_path, expect_config=CONFIG)
    assert cache.version == 1 and not cache.has_window_starts and cache.unaligned_ids == ["u0", "u1"]
    assert cache[1]["window_starts"] is None and cache[1]["audio"].shape == (4, 6)
    batch = collate([{**FeatureDataset(cache)[i], "label": 0} for i in range(2)], audio_len=8, text_len=4)
    assert batch["window_starts"].tolist() == [[-1] * 4] * 2          # paper / stretch do not read them
    with pytest.raises(CacheConfigError, match=r"has no word-window starts \(format version 1.*Re-extract it .*"
                                               r"overwrite.*align='paper' and 'stretch' work with this cache"):
        check_forced_alignment(cache)
    with caplog.at_level("WARNING", logger="mfdr.data"):
        w = CacheWriter(tmp_path, CONFIG)                              # resuming keeps version 1 shards
    assert w.version == 1 and "re-extract it (overwrite=True) to use align='forced'" in caplog.text
    w.write_shard(*_shard(2, 1), window_starts=[torch.tensor([3, 3, 4])])
    cache = FeatureCache(tmp_path)
    assert len(cache) == 3 and cache.version == 1 and cache[2]["window_starts"] is None
    assert CacheWriter(tmp_path, CONFIG, overwrite=True).version == 2


def test_unknown_version_is_refused(tmp_path):
    CacheWriter(tmp_path, CONFIG).write_shard(*_shard(0, 1))
    lines = (tmp_path / MANIFEST).read_text().splitlines()
    (tmp_path / MANIFEST).write_text("\n".join([json.dumps({**json.loads(lines[0]), "version": 3})] + lines[1:])
                                     + "\n")
    with pytest.raises(CacheConfigError, match=r"cache format version 3, expected one of \(1, 2\)"):
        FeatureCache(tmp_path)


# ----------------------------------------------------------------------------- a hand-edited or damaged cache
# (issue 19) Opening the cache checks the manifest against the shards; each case edits the files as a user
# (or a crash) would, and the error names the file and the line.

def _cache3(path):
    CacheWriter(path, CONFIG).write_shard(*_shard(0, 3))          # u0, u1, u2 (audio 3, 4, 5 frames)
    return path


def _edit_lines(path, edit):
    lines = (path / MANIFEST).read_text().splitlines()
    (path / MANIFEST).write_text("\n".join(edit(lines)) + "\n")


def _set(line: str, **changes) -> str:
    return json.dumps({**json.loads(line), **changes})


@pytest.mark.parametrize("edit, match", [
    (lambda ls: ls[:2] + [_set(ls[2], row=0)] + ls[3:],
     r"manifest.jsonl, line 3: entry 'u1' points at shard-00000.safetensors row 0, which belongs to 'u0' "
     r"\(line 2\)"),
    (lambda ls: ls[:2] + [_set(ls[2], row=2)] + ls[3:3],
     r"line 3: entry 'u1' points at shard-00000.safetensors row 2, which holds utterance 'u2'"),
    (lambda ls: ls + [ls[2]], r"line 5: id 'u1' is also on line 3 \(a duplicated line or id\)"),
    (lambda ls: ls[:3] + [_set(ls[3], id="u0")], r"line 4: id 'u0' is also on line 2"),
    (lambda ls: ls[:3] + [_set(ls[3], row=9999)],
     r"line 4: entry 'u2' has row 9999, but shard-00000.safetensors holds 3 utterances \(rows 0..2\)"),
    (lambda ls: ls[:3] + [_set(ls[3], row=-1)], r"line 4: entry 'u2' has row -1, expected an int >= 0"),
    (lambda ls: ls[:2] + [_set(ls[2], audio_len=7)] + ls[3:],
     r"line 3: entry 'u1' has audio_len 7, but shard-00000.safetensors row 1 holds 4 audio rows"),
    (lambda ls: ls[:2] + [_set(ls[2], shard="../x.safetensors")] + ls[3:],
     r"line 3: entry 'u1' has shard '../x.safetensors', expected a name like shard-00000.safetensors"),
], ids=["row-of-another", "row-of-another-named-by-the-shard", "duplicated-line", "duplicated-id",
        "row-out-of-range", "negative-row", "length", "shard-name"])
def test_edited_manifest_is_refused_naming_the_line(tmp_path, edit, match):
    from mfdr.errors import DataError

    _edit_lines(_cache3(tmp_path), edit)
    with pytest.raises(DataError, match=match + r".*re-extract it"):
        FeatureCache(tmp_path)
    with pytest.raises(DataError, match=match):   # extracting into it is refused too (it would build on it)
        CacheWriter(tmp_path, CONFIG)


def test_rows_of_a_shard_without_ids_are_still_checked(tmp_path):
    """Shards written before they named their rows: two entries on one row, or a row whose length is not
    the entry's, are still refused."""
    from safetensors.torch import load_file, save_file

    from mfdr.errors import DataError

    _cache3(tmp_path)
    shard = tmp_path / "shard-00000.safetensors"
    save_file(load_file(str(shard)), str(shard), metadata={"config_hash": config_hash(CONFIG)})  # no "ids"
    assert len(FeatureCache(tmp_path)) == 3
    _edit_lines(tmp_path, lambda ls: ls[:2] + [_set(ls[2], row=2)] + ls[3:])
    with pytest.raises(DataError, match=r"line 3: entry 'u1' has audio_len 4, but shard-00000.safetensors row 2 "
                                        r"holds 5 audio rows"):
        FeatureCache(tmp_path)


def test_bad_json_is_reported_at_its_line(tmp_path):
    _edit_lines(_cache3(tmp_path), lambda ls: ls[:3] + ['{"id": "u2", "row": 2,,}'])
    with pytest.raises(CacheConfigError, match=r"manifest.jsonl is corrupt: line 4 is not valid JSON \(Expecting "
                                               r"property name enclosed in double quotes at column 23\)"):
        FeatureCache(tmp_path)
    _edit_lines(tmp_path, lambda ls: ls[:3] + ["[1, 2]"])
    with pytest.raises(CacheConfigError, match="line 4 holds a JSON list, expected an object"):
        FeatureCache(tmp_path)


def test_truncated_or_corrupt_shard_is_named(tmp_path):
    from mfdr.errors import DataError

    shard = _cache3(tmp_path) / "shard-00000.safetensors"
    raw = shard.read_bytes()
    shard.write_bytes(raw[: len(raw) - 40])
    with pytest.raises(DataError, match=rf"feature cache shard {shard} cannot be read \(SafetensorError: .*\): "
                                        r"it is truncated or corrupt"):
        FeatureCache(tmp_path)
    shard.write_bytes(b"\x00" * 7)
    with pytest.raises(DataError, match=rf"shard {shard} cannot be read"):
        FeatureCache(tmp_path)


def test_flipped_offsets_are_named(tmp_path):
    """Offsets out of order (two entries swapped in audio_offsets): named at open, not as a kernel error."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from mfdr.errors import DataError

    shard = _cache3(tmp_path) / "shard-00000.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(shard))
    tensors["audio_offsets"] = tensors["audio_offsets"][[0, 2, 1, 3]]
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(DataError, match=rf"feature cache shard {shard}: audio_offsets decrease after row 1; they "
                                        r"must start at 0, never decrease and end at the 12 stored audio rows"):
        FeatureCache(tmp_path)
    tensors["audio_offsets"] = torch.tensor([0, 3, 7, 11])     # ends short of the 12 stored rows
    save_file(tensors, str(shard), metadata=metadata)
    with pytest.raises(DataError, match=r"audio_offsets run 0..11; they must start at 0"):
        FeatureCache(tmp_path)


def test_missing_shard_is_named_and_the_writer_drops_its_entries(tmp_path, caplog):
    w = CacheWriter(tmp_path, CONFIG)
    w.write_shard(*_shard(0, 2))
    w.write_shard(*_shard(2, 2))
    (tmp_path / "shard-00000.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard shard-00000.safetensors is missing \(named on line 2"):
        FeatureCache(tmp_path)
    with caplog.at_level("WARNING", logger="mfdr.data"):
        w = CacheWriter(tmp_path, CONFIG)                       # extracting again: make them anew
    assert "shard(s) ['shard-00000.safetensors'] are missing; their 2 utterances are dropped" in caplog.text
    assert w.done == {"u2", "u3"} and FeatureCache(tmp_path).ids == ["u2", "u3"]


def test_rewrite_keeps_rows_and_deletes_unused_shards(tmp_path):
    w = CacheWriter(tmp_path, CONFIG)
    w.write_shard(*_shard(0, 2))
    w.write_shard(*_shard(2, 2))
    keep = [{**w.entries["u3"], "label": "sad"}]
    assert w.rewrite(keep) == ["shard-00000.safetensors"]
    assert not (tmp_path / "shard-00000.safetensors").exists()
    cache = FeatureCache(tmp_path)
    assert cache.ids == ["u3"] and cache[0]["label"] == "sad" and cache[0]["audio"].shape == (6, 6)
    with pytest.raises(ValueError, match="entry 'u1' is not in the cache"):
        w.rewrite([{**keep[0], "id": "u1"}])
