"""Bad input at ``MFDRConfig`` (mfdr/config/): fields, ``from_dict``, ``replace``, ``ablation`` and ``load``
(files built per row): every row an input, the exact exception type and a fragment of its message (which
names the field or the file)."""

import pytest

from mfdr import MFDRConfig
from tests.bad_input import NAN, config_file, raises, row

CONFIG_BAD = [
    row("int-field-0", lambda tmp: MFDRConfig(audio_dim=0),
        ValueError, "MFDRConfig.audio_dim must be >= 1, got 0"),
    row("int-field-bool", lambda tmp: MFDRConfig(d_model=True),
        TypeError, "MFDRConfig.d_model must be int, got bool"),
    row("int-field-str", lambda tmp: MFDRConfig(text_len="50"), TypeError,
        "MFDRConfig.text_len must be int, got str '50'"),
    row("unknown-field", lambda tmp: MFDRConfig(d_modle=8),
        TypeError, "unexpected keyword argument 'd_modle'"),
    row("dfc_hops-empty", lambda tmp: MFDRConfig(dfc_hops=()),
        ValueError, "MFDRConfig.dfc_hops must be a non-empty"),
    row("dfc_hops-0", lambda tmp: MFDRConfig(dfc_hops=(2, 0)),
        ValueError, "dfc_hops must be a non-empty sequence of ints >= 1"),
    row("dfc_hops-int", lambda tmp: MFDRConfig(dfc_hops=2),
        TypeError, "MFDRConfig.dfc_hops must be tuple[int, ...], got int"),
    row("dfc_hops-floats", lambda tmp: MFDRConfig(dfc_hops=(2.0, 3)), TypeError,
        "MFDRConfig.dfc_hops must be tuple[int, ...], got tuple (2.0, 3)"),
    row("dropout-nan", lambda tmp: MFDRConfig(dropout=NAN),
        ValueError, "MFDRConfig.dropout must lie in [0, 1), got nan"),
    row("dropout-str", lambda tmp: MFDRConfig(dropout="0.1"),
        TypeError, "MFDRConfig.dropout must be float, got str"),
    row("levels-3", lambda tmp: MFDRConfig(levels=3),
        ValueError, "MFDRConfig.levels must be one of (0, 1, 2), got 3"),
    row("window-odd", lambda tmp: MFDRConfig(window=5),
        ValueError, "MFDRConfig.window must be even when levels > 0"),
    row("heads-not-dividing", lambda tmp: MFDRConfig(heads=3), ValueError,
        "MFDRConfig.d_model (256) must be divisible by heads (3)"),
    row("last-window-past-audio", lambda tmp: MFDRConfig(hop=6),
        ValueError, "the last word's (49 * 6) is past audio_len"),
    row("text-too-short-to-pool", lambda tmp: MFDRConfig(text_len=4, align="stretch"), ValueError,
        "MFDRConfig: pooling layer 1 gets a sequence of 1 < dfc_frame (3)"),
    row("choice-unknown", lambda tmp: MFDRConfig(context="lstm"), ValueError,
        "MFDRConfig.context must be one of ('gcpu', 'none', 'gru', 'mgru'), got 'lstm'"),
    row("backend-unknown", lambda tmp: MFDRConfig(backend="gpu"),
        ValueError, "MFDRConfig.backend must be one of"),
    row("from_dict-list", lambda tmp: MFDRConfig.from_dict([1]),
        TypeError, "MFDRConfig.from_dict takes a dict, got list"),
    row("from_dict-unknown", lambda tmp: MFDRConfig.from_dict({"d_modle": 8}), ValueError,
        "MFDRConfig: unknown field(s) ['d_modle']"),
    row("replace-unknown", lambda tmp: MFDRConfig().replace(foo=1),
        ValueError, "MFDRConfig: unknown field(s) ['foo']"),
    row("ablation-unknown", lambda tmp: MFDRConfig.ablation("w=20"), ValueError, "ablation must be one of"),
    row("load-missing", lambda tmp: MFDRConfig.load(tmp / "none.json"), FileNotFoundError,
        "MFDRConfig.load: config file"),
    row("load-suffix", lambda tmp: MFDRConfig.load(config_file(tmp, "c.txt", "{}")), ValueError,
        "MFDRConfig.load: path must end in .json, .yaml or .yml"),
    row("load-bad-json", lambda tmp: MFDRConfig.load(config_file(tmp, "c.json", "{d_model: 4")), ValueError,
        "c.json is not valid JSON"),
    row("load-bad-yaml", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yaml", "d_model: [4\n")), ValueError,
        "c.yaml is not valid YAML"),
    row("load-binary", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yml", b"\xff\xfe\x00")), ValueError,
        "c.yml is not UTF-8 text"),
    row("load-list", lambda tmp: MFDRConfig.load(config_file(tmp, "c.yaml", "- 1\n")), TypeError,
        "c.yaml: MFDRConfig.from_dict takes a dict, got list"),
    row("load-bad-value", lambda tmp: MFDRConfig.load(config_file(tmp, "c.json", '{"heads": 0}')), ValueError,
        "c.json: MFDRConfig.heads must be >= 1, got 0"),
]


@pytest.mark.parametrize("call, exc, fragment, env", CONFIG_BAD)
def test_config_bad_input(call, exc, fragment, env, tmp_path):
    with raises(exc, fragment):
        call(tmp_path)

