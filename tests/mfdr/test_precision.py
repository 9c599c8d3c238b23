"""train.precision: auto/fp32/bf16/fp16 resolution, the deprecated amp alias, and bf16 training on the CPU."""

import json

import pytest
import torch

from mfdr import precision as P
from mfdr import run as R
from mfdr.config import TrainConfig
from mfdr.run.checkpoint import load_checkpoint

from .test_train import cache, config  # noqa: F401  (the fixture and the small run config)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("units, expected", [("amx_bf16", "bf16"), ("avx512_bf16", "bf16"), (None, "fp32")])
def test_auto_follows_the_cpu_units(monkeypatch, units, expected):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: units)
    p = P.resolve("auto", "cpu")
    assert p.name == expected and (units or "no bf16") in p.reason
    assert p.dtype == (torch.bfloat16 if expected == "bf16" else None)


@pytest.mark.parametrize("d_model, expected", [(None, "bf16"), (32, "fp32"), (64, "fp32"), (128, "bf16"),
                                               (256, "bf16")])
def test_auto_keeps_small_models_in_fp32_on_the_cpu(monkeypatch, d_model, expected):
    """bf16 units, but a model narrower than CPU_BF16_MIN_D_MODEL: auto is fp32 and says why; CUDA and
    explicit precisions do not look at the size."""
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "amx_bf16")
    p = P.resolve("auto", "cpu", d_model)
    assert p.name == expected
    if expected == "fp32":
        assert f"d_model {d_model} < {P.CPU_BF16_MIN_D_MODEL}" in p.reason and "amx_bf16" in p.reason
    assert P.resolve("bf16", "cpu", 32).name == "bf16"


def test_the_run_resolves_auto_with_the_model_width(monkeypatch):
    from mfdr.config import RunConfig
    from mfdr.run.batches import precision_of

    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "amx_bf16")
    small, wide = (RunConfig.from_dict({"model": {"d_model": d, "heads": 4}, "train": {"precision": "auto"}})
                   for d in (32, 256))
    assert precision_of(small, torch.device("cpu")).name == "fp32"
    assert precision_of(wide, torch.device("cpu")).name == "bf16"


def test_explicit_precisions():
    assert P.resolve("fp32", "cpu").dtype is None
    assert P.resolve("bf16", "cpu").dtype is torch.bfloat16
    fp16 = P.resolve("fp16", "cpu")
    assert fp16.dtype is torch.float16 and fp16.scaler().is_enabled()
    assert not P.resolve("bf16", "cpu").scaler().is_enabled()
    with pytest.raises(ValueError, match=r"precision must be one of .*got 'half'"):
        P.resolve("half", "cpu")


def test_amp_is_a_deprecated_alias():
    with pytest.warns(DeprecationWarning, match="train.amp is deprecated.*precision='auto'"):
        assert TrainConfig(amp=True).precision == "auto"
    with pytest.warns(DeprecationWarning, match="precision='fp32'"):
        assert TrainConfig(amp=False).precision == "fp32"
    with pytest.raises(ValueError, match="train.precision must be one of"):
        TrainConfig(precision="fp8")


def test_bf16_training_on_the_cpu(cache, tmp_path):  # noqa: F811
    """A short bf16 run: finite, decreasing loss; fp32 weights and checkpoint; the precision recorded."""
    cfg = config(cache, train={"epochs": 4, "precision": "bf16", "lr": 3e-3})
    summary = R.run_training(cfg, tmp_path / "run", folds=["fold-0"], progress=False)
    rows = [json.loads(x) for x in (tmp_path / "run" / "fold-0" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in rows]
    assert all(map(lambda x: x == x and abs(x) < float("inf"), losses))
    assert losses[-1] < losses[0], losses
    assert summary["precision"]["precision"] == "bf16"
    state = load_checkpoint(tmp_path / "run" / "fold-0" / "checkpoint.pt")["model"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
