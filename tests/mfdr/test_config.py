"""MFDRConfig: paper defaults, validation (clear errors), JSON/YAML round-trip, Table 3 ablations."""

import dataclasses
import json

import pytest

from mfdr.config import TABLE3, MFDRConfig


def test_paper_defaults():
    c = MFDRConfig()
    assert (c.audio_dim, c.text_dim, c.audio_len, c.text_len) == (768, 768, 255, 50)
    assert (c.d_model, c.window, c.hop, c.levels) == (256, 10, 5, 2)
    assert (c.dfc_frame, c.dfc_hops, c.dfc_hidden) == (3, (2, 3), 64)
    assert (c.normalize, c.align, c.attention) == ("segment", "paper", "sawa")
    assert (c.context, c.pooling) == ("gcpu", "dfc")
    assert c.pooled_lengths() == [50, 24, 8]  # paper eq. 7: L=50 -> 24 -> 8
    assert c.flat_dim == 8 * 256 and c.out_dim == 4 and c.head_dim == 64
    assert c.backend is None


def test_derived_sizes():
    assert MFDRConfig(pooling="linear").flat_dim == 50 * 256
    assert MFDRConfig(task="regression").out_dim == 1
    assert MFDRConfig(text_len=12, audio_len=40, hop=3, window=4).pooled_lengths() == [12, 5, 1]


@pytest.mark.parametrize("suffix", [".json", ".yaml", ".yml"])
def test_round_trip(tmp_path, suffix):
    c = MFDRConfig(d_model=64, heads=2, window=30, levels=0, context="mgru", pooling="avg", dfc_hops=(2, 2),
                   dropout=0.3, task="regression", backend="torch", normalize="joint", align="stretch")
    path = c.save(tmp_path / f"cfg{suffix}")
    assert MFDRConfig.load(path) == c
    assert MFDRConfig.from_dict(c.to_dict()) == c
    assert MFDRConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_from_dict_takes_lists_for_hops():
    assert MFDRConfig.from_dict({"dfc_hops": [2, 3]}).dfc_hops == (2, 3)


def test_unknown_key():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['dmodel'\]"):
        MFDRConfig.from_dict({"dmodel": 3})
    with pytest.raises(ValueError, match="unknown field"):
        MFDRConfig().replace(windw=3)


@pytest.mark.parametrize("field,value", [
    ("d_model", "256"), ("d_model", 256.0), ("d_model", True), ("dropout", "0.1"), ("dfc_hops", (2, "3")),
    ("dfc_hops", 3), ("context", None), ("backend", 1), ("task", 1),
])
def test_wrong_type(field, value):
    with pytest.raises(TypeError, match=rf"MFDRConfig\.{field} must be"):
        MFDRConfig.from_dict({field: value})


def test_float_field_takes_int():
    assert MFDRConfig(dropout=0).dropout == 0


@pytest.mark.parametrize("changes,match", [
    ({"d_model": 0}, r"d_model must be >= 1, got 0"),
    ({"heads": 3}, r"d_model \(256\) must be divisible by heads \(3\)"),
    ({"window": 9}, r"window must be even when levels > 0"),
    ({"levels": 3}, r"levels must be one of \(0, 1, 2\), got 3"),
    ({"normalize": "row"}, r"normalize must be one of"),
    ({"align": "words"}, r"align must be one of \('paper', 'stretch', 'forced'\)"),
    ({"attention": "global"}, r"attention must be one of"),
    ({"context": "lstm"}, r"context must be one of \('gcpu', 'none', 'gru', 'mgru'\)"),
    ({"pooling": "sum"}, r"pooling must be one of \('dfc', 'max', 'avg', 'linear'\)"),
    ({"task": "ranking"}, r"task must be one of"),
    ({"backend": "cuda"}, r"backend must be one of"),
    ({"dropout": 1.0}, r"dropout must lie in \[0, 1\)"),
    ({"dfc_hops": ()}, r"dfc_hops must be a non-empty"),
    ({"dfc_hops": (2, 0)}, r"dfc_hops must be a non-empty"),
    ({"text_len": 4}, r"pooling layer 1 gets a sequence of 1 < dfc_frame \(3\)"),
    ({"hop": 6}, r"last word's \(49 \* 6\) is past audio_len \(255\)"),
])
def test_invalid(changes, match):
    with pytest.raises(ValueError, match=match):
        MFDRConfig(**changes)


def test_valid_corner_cases():
    MFDRConfig(window=9, levels=0)  # odd windows are fine without expansion
    MFDRConfig(hop=6, align="stretch")  # stretch spreads the windows, no layout check
    MFDRConfig(hop=6, attention="full")
    MFDRConfig(text_len=4, pooling="linear")  # no pooling chain to check


def test_load_errors(tmp_path):
    (tmp_path / "c.txt").write_text("{}")
    with pytest.raises(ValueError, match="must end in .json, .yaml or .yml"):
        MFDRConfig.load(tmp_path / "c.txt")
    with pytest.raises(ValueError, match="must end in"):
        MFDRConfig().save(tmp_path / "c.toml")
    (tmp_path / "c.yaml").write_text("d_model: 64\nwindoww: 3\n")
    with pytest.raises(ValueError, match=r"c\.yaml: MFDRConfig: unknown field\(s\) \['windoww'\]"):
        MFDRConfig.load(tmp_path / "c.yaml")
    (tmp_path / "c.json").write_text('{"heads": "4"}')
    with pytest.raises(TypeError, match=r"c\.json: MFDRConfig\.heads must be int"):
        MFDRConfig.load(tmp_path / "c.json")
    with pytest.raises(TypeError, match="takes a dict"):
        MFDRConfig.from_dict([("d_model", 3)])


def test_table3_ablations():
    assert set(TABLE3) == {"w=10", "w=30", "w=50", "full-size", "w/o Context", "GRU", "MGRU", "max-pooling",
                           "avg-pooling", "w/o DFC", "MFDR"}
    assert MFDRConfig.ablation("MFDR") == MFDRConfig()
    w30 = MFDRConfig.ablation("w=30")
    assert (w30.window, w30.hop, w30.levels) == (30, 5, 0)  # hop stays 5: window i still belongs to word i
    assert MFDRConfig.ablation("w/o DFC", d_model=64).d_model == 64
    for name, changes in TABLE3.items():
        c = MFDRConfig.ablation(name)
        assert all(getattr(c, k) == v for k, v in changes.items())
    with pytest.raises(ValueError, match="ablation must be one of"):
        MFDRConfig.ablation("w=20")


def test_diff_and_replace():
    a = MFDRConfig()
    b = a.replace(d_model=128, backend="torch")
    assert a.diff(b) == {"d_model": (256, 128), "backend": (None, "torch")}
    assert a.diff(b, ignore=MFDRConfig.RUNTIME_FIELDS) == {"d_model": (256, 128)}
    assert dataclasses.asdict(a) == {**a.to_dict(), "dfc_hops": (2, 3)}
