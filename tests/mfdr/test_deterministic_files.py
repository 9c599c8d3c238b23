"""Identical runs write identical bytes (issue 19): safetensors orders its header's metadata as a Rust hash
map does, differently in each process, so two identical runs gave model.safetensors files (and cache shards)
with other sha256 sums. mfdr writes the metadata in sorted order."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import torch

from mfdr._safetensors import canonical_header

ROOT = Path(__file__).resolve().parents[2]
WRITE = """
import sys, torch
from pathlib import Path
from mfdr import MFDR, MFDRConfig
from mfdr.data import CacheWriter

out = Path(sys.argv[1])
torch.manual_seed(0)
MFDR(MFDRConfig(audio_dim=6, text_dim=5, audio_len=40, text_len=12, d_model=16, heads=2, window=4, hop=3,
                dfc_hidden=8)).save_pretrained(out / "best")
w = CacheWriter(out / "cache", {"audio": {"kind": "x"}, "text": {"kind": "y"}, "dtype": "float32"})
w.write_shard([{"id": "a"}, {"id": "b"}], [torch.ones(3, 6), torch.zeros(2, 6)], [torch.ones(2, 5)] * 2)
"""


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_model_and_shard_give_the_same_bytes_in_every_process(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITE, str(tmp_path / str(i))], cwd=ROOT) for i in range(6)]
    assert all(p.wait(timeout=300) == 0 for p in procs)
    for rel in ("best/model.safetensors", "cache/shard-00000.safetensors"):
        sums = {sha(tmp_path / str(i) / rel) for i in range(6)}
        assert len(sums) == 1, (rel, sums)


def test_canonical_header_sorts_the_metadata_only():
    from safetensors.torch import load, save

    blob = save({"w": torch.arange(4.0), "b": torch.ones(2)}, metadata={"z": "1", "a": "2", "m": "3"})
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    for order in (["z", "a", "m"], ["m", "z", "a"]):  # the orders a hash map may give
        shuffled = dict(header, __metadata__={k: header["__metadata__"][k] for k in order})
        text = json.dumps(shuffled, separators=(",", ":")).encode()
        variant = blob[:8] + text + b" " * (n - len(text)) + blob[8 + n:]
        head, m = canonical_header(variant)
        assert m == n and json.loads(head[8:])["__metadata__"] == {"a": "2", "m": "3", "z": "1"}
        assert list(json.loads(head[8:])["__metadata__"]) == ["a", "m", "z"]
        fixed = head + variant[8 + n:]
        assert torch.equal(load(fixed)["w"], torch.arange(4.0)) and len(fixed) == len(blob)
