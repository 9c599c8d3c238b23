"""mfdr.train and its parts (run config, protocols, checkpoints): configs, folds, exact resume, NaN stop,
corrupt checkpoints, and bad input that must fail clearly without overwriting anything."""

import hashlib
import io
import json
import pickle
from pathlib import Path

import pytest
import torch
import yaml

from mfdr import errors
from mfdr import run as R
from mfdr.config import DataConfig, RunConfig, TrainConfig
from mfdr.errors import CheckpointError
from mfdr.protocols import make_folds
from mfdr.run import loop
from mfdr.run.checkpoint import load_checkpoint, save_checkpoint

CONFIGS = Path(__file__).resolve().parents[2] / "mfdr" / "configs"
EMOTIONS = ("neutral", "happy", "angry", "sad")
SPLITS = ("train", "train", "valid", "test")
# Small model: 12 words, 40 frames, window 4 / hop 3; no dropout (runs compare weights).
MODEL = dict(audio_dim=6, text_dim=5, audio_len=40, text_len=12, d_model=16, heads=2, window=4, hop=3,
             dfc_hidden=8, dropout=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/mfdr/conftest.py


def make_cache(path: Path, n: int = 32, speakers: int = 4, seed: int = 0, nan_at: int | None = None) -> Path:
    """A feature cache of random utterances whose features carry their label (learnable), written with
    the real CacheWriter. Speakers spk0..; sessions 1..speakers/2 (two speakers each); splits."""
    from mfdr.data import CacheWriter

    g = torch.Generator().manual_seed(seed)
    w = CacheWriter(path, {"audio": {"kind": "random", "dim": 6}, "text": {"kind": "random", "dim": 5},
                           "dtype": "float32"})
    entries, audio, text = [], [], []
    for i in range(n):
        k = (i // speakers) % 4
        a, t = torch.randn(20 + i % 21, 6, generator=g), torch.randn(4 + i % 9, 5, generator=g)
        a[:, k] += 1.5
        t[:, k] += 1.0
        if i == nan_at:
            a[0, 0] = float("nan")
        entries.append({"id": f"u{i:03d}", "label": EMOTIONS[k], "speaker": f"spk{i % speakers}",
                        "session": 1 + (i % speakers) // 2, "split": SPLITS[i % 4],
                        "wav": f"u{i:03d}.wav", "text": "words"})
        audio.append(a)
        text.append(t)
    w.write_shard(entries, audio, text)
    return path


def config(cache: Path, **sections) -> RunConfig:
    d = {"model": dict(MODEL), "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3, "seed": 0, "precision": "fp32"},
         "data": {"dataset": "manifest", "features": str(cache), "protocol": "kfold", "folds": 2,
                  "val_fraction": 0.2}}
    for k, v in sections.items():
        d[k].update(v)
    return RunConfig.from_dict(d)


@pytest.fixture
def cache(tmp_path) -> Path:
    return make_cache(tmp_path / "cache")


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under ``folder``: to check that nothing changed."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", ["iemocap", "mosei", "demo"])
def test_shipped_configs_load(name):
    from mfdr.demo import load_demo_config

    path = CONFIGS / f"{name}.yaml"
    cfg = load_demo_config(path)[0] if name == "demo" else RunConfig.load(path)
    assert cfg.to_dict() == RunConfig.from_dict(cfg.to_dict()).to_dict()


def test_paper_hyperparameters():
    """Sec. 3.2: Adam, IEMOCAP lr 5e-4 / batch 32 / 40 epochs, MOSEI 1e-3 / 64 / 20, lr / 10 at 50 %."""
    iemocap, mosei = RunConfig.load(CONFIGS / "iemocap.yaml"), RunConfig.load(CONFIGS / "mosei.yaml")
    assert (iemocap.train.lr, iemocap.train.batch_size, iemocap.train.epochs) == (5e-4, 32, 40)
    assert (mosei.train.lr, mosei.train.batch_size, mosei.train.epochs) == (1e-3, 64, 20)
    assert iemocap.train.milestones() == [20] and mosei.train.milestones() == [10]
    assert iemocap.train.lr_at(19) == 5e-4 and iemocap.train.lr_at(20) == pytest.approx(5e-5)
    m = iemocap.model
    assert (m.audio_len, m.text_len, m.d_model, m.window, m.hop, m.dfc_hops, m.dfc_hidden) == \
           (255, 50, 256, 10, 5, (2, 3), 64)
    assert iemocap.data.protocol == "speaker" and mosei.data.protocol == "split"


def test_lr_schedule_every_fraction():
    tc = TrainConfig(epochs=10, lr=1.0, lr_decay=0.1, lr_decay_every=0.25)
    assert tc.milestones() == [2, 5, 8]  # round(2.5) = 2 (half to even), 5, round(7.5) = 8
    assert [tc.lr_at(e) for e in (0, 2, 5, 9)] == pytest.approx([1.0, 0.1, 0.01, 0.001])


@pytest.mark.parametrize("bad, match", [
    ({"train": {"epochs": 2, "lr_rate": 0.1}}, r"unknown key\(s\) \['train.lr_rate'\]"),
    ({"train": {"epochs": "two"}}, "train.epochs must be int, got str 'two'"),
    ({"train": {"amp": "yes"}}, "train.amp must be bool"),
    ({"data": {"classes": "happy"}}, r"data.classes must be tuple\[str, ...\]"),
    ({"model": {"d_modle": 32}}, r"model: unknown field\(s\) \['d_modle'\]"),
    ({"model": {"d_model": 32.5}}, "model.d_model must be int"),
    ({"optim": {"lr": 1}}, r"unknown config section\(s\) \['optim'\]"),
    ({"data": {"protocol": "loso"}}, "data.protocol must be one of"),
    ({"train": {"select": "mae"}}, "train.select must be one of"),
    ({"model": {"num_classes": 3}}, r"model.num_classes \(3\) must equal the number of data.classes"),
])
def test_bad_config_raises_naming_the_key(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        RunConfig.from_dict(bad)


def test_yaml_file_errors_name_the_file(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  epochs: 2\n  bogus: 1\n")
    with pytest.raises(ValueError, match=rf"{p}: unknown key\(s\) \['train.bogus'\]"):
        RunConfig.load(p)
    p.write_text("train: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        RunConfig.load(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        RunConfig.load(tmp_path / "nope.yaml")


def test_overrides_and_yaml_exponents(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("train:\n  lr: 5e-4\n")  # PyYAML reads 5e-4 (no dot) as a string; accepted as a float
    cfg = RunConfig.load(p, ["train.epochs=3", "model.dfc_hops=[2, 2]", "data.classes=[a, b, c, d]"])
    assert cfg.train.lr == 5e-4 and cfg.train.epochs == 3 and cfg.model.dfc_hops == (2, 2)
    assert cfg.data.classes == ("a", "b", "c", "d")
    with pytest.raises(ValueError, match="section.key=value"):
        RunConfig.load(p, ["epochs=3"])


# ---------------------------------------------------------------------- protocols
def iemocap_like_entries():
    """5 sessions x 2 speakers x 6 utterances, labels cycling."""
    return [{"id": f"Ses0{s}{g}_{i}", "speaker": f"Ses0{s}{g}", "session": s, "label": EMOTIONS[i % 4],
             "split": None} for s in range(1, 6) for g in "FM" for i in range(6)]


def _check_partition(folds, n):
    tested = []
    for f in folds:
        train, val, test = set(f.train), set(f.val), set(f.test)
        assert not train & val and not train & test and not val & test
        tested += f.test
    assert sorted(tested) == list(range(n))  # every utterance is tested exactly once


def test_protocol_speaker_10_fold():
    entries = iemocap_like_entries()
    folds = make_folds(entries, DataConfig(protocol="speaker"))
    assert len(folds) == 10
    _check_partition(folds, len(entries))
    for f in folds:
        (test_spk,) = {entries[i]["speaker"] for i in f.test}
        session = entries[f.test[0]]["session"]
        partner = f"Ses0{session}{'M' if test_spk[-1] == 'F' else 'F'}"
        assert {entries[i]["speaker"] for i in f.val} == {partner}
        assert session not in {entries[i]["session"] for i in f.train}  # no speaker of that session trains
        assert f.test_groups == [test_spk]


def test_protocol_session_5_fold():
    entries = iemocap_like_entries()
    folds = make_folds(entries, DataConfig(protocol="session", val_fraction=0.25))
    assert len(folds) == 5
    _check_partition(folds, len(entries))
    for f in folds:
        (session,) = {entries[i]["session"] for i in f.test}
        assert session not in {entries[i]["session"] for i in f.train + f.val}
        val, rest = [entries[i]["label"] for i in f.val], [entries[i]["label"] for i in f.train + f.val]
        assert all(val.count(e) == round(0.25 * rest.count(e)) for e in EMOTIONS)  # stratified by label


def test_protocol_kfold_by_speaker_and_split():
    entries = [{"id": str(i), "speaker": f"s{i % 8}", "label": EMOTIONS[i % 4],
                "split": ("train", "dev", "test")[i % 3]} for i in range(64)]
    folds = make_folds(entries, DataConfig(protocol="kfold", folds=4))
    assert len(folds) == 4
    _check_partition(folds, 64)
    for f in folds:
        test_spk = {entries[i]["speaker"] for i in f.test}
        assert len(test_spk) == 2 and not test_spk & {entries[i]["speaker"] for i in f.train + f.val}
    (split,) = make_folds(entries, DataConfig(protocol="split"))
    assert {entries[i]["split"] for i in split.val} == {"dev"} and len(split.test) == 21
    with pytest.raises(ValueError, match="needs at least 9 speakers"):
        make_folds(entries, DataConfig(protocol="kfold", folds=9))


# ---------------------------------------------------------------------- checkpoints
def test_checkpoint_roundtrip_and_corruption(tmp_path):
    path = tmp_path / "c.pt"
    payload = {"model": {"w": torch.arange(6.0)}, "epoch": 3, "rng": (3, (1, 2), None), "name": "x"}
    save_checkpoint(path, payload)
    back = load_checkpoint(path)
    assert back["epoch"] == 3 and torch.equal(back["model"]["w"], payload["model"]["w"])
    raw = path.read_bytes()

    path.write_bytes(raw[: len(raw) - 7])  # truncated
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} is corrupt or truncated"):
        load_checkpoint(path)
    flipped = bytearray(raw)
    flipped[-20] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    torch.save(payload, path)  # a plain torch.save file
    with pytest.raises(CheckpointError, match="is not an mfdr checkpoint"):
        load_checkpoint(path)


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_refuses_code_even_with_a_valid_hash(tmp_path):
    """weights_only=True: a payload that would call a function is refused, naming the file."""
    from mfdr.run.checkpoint import MAGIC

    data = pickle.dumps({"x": Evil()})
    buf = io.BytesIO()
    torch.save({"x": 1}, buf)  # a zip container, then swap in the malicious pickle
    import zipfile

    zin = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, data if item.filename.endswith("data.pkl") else zin.read(item.filename))
    blob = out.getvalue()
    path = tmp_path / "evil.pt"
    path.write_bytes(MAGIC + hashlib.sha256(blob).hexdigest().encode() + b"\n" + blob)
    with pytest.raises(CheckpointError, match=rf"checkpoint {path} cannot be read"):
        load_checkpoint(path)


# ---------------------------------------------------------------------- training runs
def test_run_writes_everything(cache, tmp_path):
    out = tmp_path / "run"
    summary = R.run_training(config(cache), out, progress=False)
    for rel in ("config.yaml", "folds.json", "results.json", "results.md", "figures/curves.png",
                "figures/confusion.png", "fold-0/checkpoint.pt", "fold-0/best/model.safetensors",
                "fold-0/best/config.json", "fold-0/best/meta.json", "fold-0/metrics.csv",
                "fold-0/metrics.jsonl",
                "fold-0/predictions.csv", "fold-0/result.json", "fold-1/result.json"):
        assert (out / rel).is_file(), rel
    results = json.loads((out / "results.json").read_text())
    assert [f["fold"] for f in results["folds"]] == ["fold-0", "fold-1"]
    assert 0.0 <= results["mean"]["wa"] <= 1.0 and results["pooled"]["confusion"]
    assert sum(map(sum, results["pooled"]["confusion"])) == 32
    rows = (out / "fold-0" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,lr,train_loss,val_loss,seconds") and len(rows) == 3
    assert summary["mean"] == results["mean"]
    meta = json.loads((out / "fold-0" / "best" / "meta.json").read_text())
    assert meta["classes"] == list(EMOTIONS) and meta["epoch"] in (1, 2)
    model, meta2 = R.load_model(out / "fold-0" / "best")
    assert model.config.d_model == 16 and meta2 == meta


def weights(path: Path) -> dict:
    return load_checkpoint(path)["model"]


def test_resume_matches_uninterrupted_run(cache, tmp_path):
    """Stopped after epoch 1 and resumed: the same weights, optimizer state and logs as one run."""
    cfg = config(cache, train={"epochs": 3}, model={"dropout": 0.2})  # dropout: the RNG must resume too
    R.run_training(cfg, tmp_path / "a", folds=["fold-0"], progress=False, figures=False)
    assert R.run_training(cfg, tmp_path / "b", folds=["fold-0"], stop_after=1, progress=False) is None
    ck = load_checkpoint(tmp_path / "b" / "fold-0" / "checkpoint.pt")
    assert ck["epoch"] == 1 and not (tmp_path / "b" / "fold-0" / "result.json").exists()
    R.run_training(cfg, tmp_path / "b", folds=["fold-0"], resume=True, progress=False, figures=False)
    a, b = load_checkpoint(tmp_path / "a" / "fold-0" / "checkpoint.pt"), load_checkpoint(
        tmp_path / "b" / "fold-0" / "checkpoint.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for s_a, s_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(s_a[k], s_b[k]) for k in s_a)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in a["history"]]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in b["history"]]
    ra, rb = (json.loads((tmp_path / x / "fold-0" / "result.json").read_text()) for x in "ab")
    assert ra["test"] == rb["test"] and ra["best_epoch"] == rb["best_epoch"]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = config(cache, train={"epochs": 3})
    R.run_training(cfg, out, folds=["fold-0"], stop_after=1, progress=False)
    good = snapshot(out / "fold-0")
    real = loop.loss_fn
    monkeypatch.setattr(loop, "loss_fn", lambda task, out, y: real(task, out, y) * float("nan"))
    expected = r"fold-0, epoch 2, step 1: the loss is not finite.*checkpoint.pt \(after epoch 1\) is kept"
    with pytest.raises(errors.TrainingError, match=expected):
        R.run_training(cfg, out, folds=["fold-0"], resume=True, progress=False)
    assert snapshot(out / "fold-0") == good
    assert load_checkpoint(out / "fold-0" / "checkpoint.pt")["epoch"] == 1


def test_nan_features_stop_before_any_checkpoint(tmp_path):
    cache = make_cache(tmp_path / "cache", nan_at=5)
    with pytest.raises(errors.TrainingError, match="not finite.*no checkpoint had been written yet.*NaN/Inf"):
        R.run_training(config(cache, data={"val_fraction": 0.0}), tmp_path / "run", folds=["fold-0"],
                       progress=False)


# -------------------------------------------------- bad input: clear errors, nothing written
def test_existing_run_is_not_overwritten(cache, tmp_path):
    out = tmp_path / "run"
    R.run_training(config(cache), out, folds=["fold-0"], stop_after=1, progress=False)
    before = snapshot(out)
    with pytest.raises(errors.RunDirError, match="already holds an mfdr run; pass --resume"):
        R.run_training(config(cache), out, progress=False)
    with pytest.raises(errors.RunDirError, match=r"cannot resume .*train.lr: now 0.01, saved 0.001"):
        R.run_training(config(cache, train={"lr": 0.01}), out, resume=True, progress=False)
    assert snapshot(out) == before


def test_checkpoint_from_another_config_is_refused(cache, tmp_path):
    out = tmp_path / "run"
    R.run_training(config(cache), out, folds=["fold-0"], stop_after=1, progress=False)
    # Someone edits config.yaml; the checkpoint still says otherwise.
    saved = yaml.safe_load((out / "config.yaml").read_text())
    saved["model"]["d_model"] = 32
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    before = snapshot(out)
    with pytest.raises(CheckpointError, match=r"checkpoint .*checkpoint.pt was written with another config: "
                                              r"model.d_model: now 32, checkpoint 16"):
        R.run_training(config(cache, model={"d_model": 32}), out, resume=True, progress=False)
    assert snapshot(out) == before
    with pytest.raises(CheckpointError, match="another config: d_model: saved 16, given 32"):
        R.load_model(out / "fold-0" / "checkpoint.pt", config(cache, model={"d_model": 32}).model)
    with pytest.raises(CheckpointError, match="does not match the model saved"):
        R.load_model(out / "fold-0" / "best", config(cache, model={"heads": 4}).model)


def test_missing_or_mismatched_features(cache, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no feature cache at .*Run `mfdr extract"):
        R.run_training(config(tmp_path / "nowhere"), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="model.audio_dim is 7 but the features are 6-dimensional"):
        R.run_training(config(cache, model={"audio_dim": 7}), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"unknown fold\(s\) \['fold-7'\]"):
        R.run_training(config(cache), tmp_path / "run", folds=["fold-7"], progress=False)
    assert not (tmp_path / "run").exists()  # nothing written


def test_mmsa_regression_standard_split(tmp_path):
    """CMU-MOSEI / MOSI through an MMSA pickle: regression on the standard splits, MMSA's metrics."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)

    def split(n, start):
        y = np.round(rng.uniform(-3, 3, n) * 3) / 3
        audio = rng.normal(size=(n, 40, 6)).astype(np.float32) + y[:, None, None].astype(np.float32)
        audio[:, 36:] = 0  # padding
        audio[0, 3, 0] = -np.inf  # COVAREP's -inf becomes 0
        text = rng.normal(size=(n, 12, 5)).astype(np.float32)
        return {"id": [f"v{start + i}" for i in range(n)], "text": text, "audio": audio,
                "audio_lengths": [36] * n, "regression_labels": y.astype(np.float32)}

    path = tmp_path / "aligned.pkl"
    path.write_bytes(pickle.dumps({"train": split(16, 0), "valid": split(8, 100), "test": split(8, 200)}))
    cfg = RunConfig.from_dict({"model": {**MODEL, "task": "regression"},
                               "train": {"epochs": 2, "batch_size": 8, "lr": 1e-3},
                               "data": {"dataset": "mmsa", "path": str(path), "protocol": "split"}})
    assert cfg.select == "mae"
    summary = R.run_training(cfg, tmp_path / "run", progress=False)
    (fold,) = summary["folds"]
    assert fold["fold"] == "standard" and (fold["n_train"], fold["n_val"], fold["n_test"]) == (16, 8, 8)
    assert set(summary["metrics"]) == {"acc7", "acc5", "has0_acc2", "has0_f1", "non0_acc2", "non0_f1", "mae",
                                       "corr"}
    rows = (tmp_path / "run" / "standard" / "predictions.csv").read_text().splitlines()
    assert rows[0] == "id,label,pred" and len(rows) == 9 and rows[1].startswith("v200,")
    assert summary["pooled"]["mae"] == pytest.approx(fold["test"]["mae"])
    assert R.find_models(tmp_path / "run") == [tmp_path / "run" / "standard" / "best"]


# -------------------------------------------------- the training loop on an accelerator: few host syncs
@pytest.mark.parametrize("log_every", [1, 3, 50])
def test_one_host_sync_per_logging_interval(cache, tmp_path, monkeypatch, log_every):
    calls, real = [], loop._sync_stats
    monkeypatch.setattr(loop, "_sync_stats", lambda *a: calls.append(1) or real(*a))
    cfg = config(cache, train={"epochs": 2, "log_every": log_every})
    R.run_training(cfg, tmp_path / "run", folds=["fold-0"], progress=False)
    steps = -(-round(32 / 2 * 0.8) // 8)  # 2 folds of 32 utterances, 20 % validation, batch 8
    per_epoch = -(-steps // log_every)  # every log_every steps and at the end of the epoch
    assert len(calls) == 2 * per_epoch


def test_nan_loss_reports_its_step_between_syncs(cache, tmp_path, monkeypatch):
    """With one sync per 50 steps, the error still names the first step whose loss was not finite."""
    real, seen = loop.loss_fn, []

    def loss(task, out, y):
        seen.append(1)
        return real(task, out, y) * (float("nan") if len(seen) >= 2 else 1.0)

    monkeypatch.setattr(loop, "loss_fn", loss)
    with pytest.raises(errors.TrainingError, match=r"epoch 1, step 2: the loss is not finite"):
        R.run_training(config(cache, train={"log_every": 50}), tmp_path / "run", folds=["fold-0"],
                       progress=False)


def test_train_compile_option(cache, tmp_path, monkeypatch):
    """``train.compile``: the fold trains through torch.compile(fullgraph=True) to the eager result.
    The ``aot_eager`` backend traces forward and backward as inductor would, without its minutes of C++
    code generation on 2 cores (the inductor build of the model is tested in test_accelerator.py)."""
    calls, real = [], torch.compile

    def compile(model, **kw):
        calls.append(kw)
        return real(model, fullgraph=kw["fullgraph"], backend="aot_eager")

    monkeypatch.setattr(torch, "compile", compile)
    torch._dynamo.reset()
    R.run_training(config(cache, train={"epochs": 1}), tmp_path / "a", folds=["fold-0"], progress=False)
    R.run_training(config(cache, train={"epochs": 1, "compile": True}), tmp_path / "b", folds=["fold-0"],
                   progress=False)
    assert calls == [{"fullgraph": True, "mode": "default"}]
    ha, hb = ([json.loads(line) for line in (tmp_path / x / "fold-0" / "metrics.jsonl").read_text().splitlines()]
              for x in "ab")
    assert ha[0]["train_loss"] == pytest.approx(hb[0]["train_loss"], rel=1e-5)
    ra, rb = (json.loads((tmp_path / x / "fold-0" / "result.json").read_text()) for x in "ab")
    assert ra["test"]["wa"] == rb["test"]["wa"]


def test_compile_mode_choice():
    assert TrainConfig(compile_mode="auto").compile_mode_for("cuda:0") == "reduce-overhead"
    assert TrainConfig(compile_mode="auto").compile_mode_for("cpu") == "default"
    assert TrainConfig(compile_mode="max-autotune").compile_mode_for("cpu") == "max-autotune"
    with pytest.raises(ValueError, match="compile_mode"):
        TrainConfig(compile_mode="fast")
    with pytest.raises(ValueError, match="log_every must be >= 1"):
        TrainConfig(log_every=0)


# -------------------------------------------------- align="forced": the batch's word starts reach the model
def test_forced_alignment_training_passes_the_batch_starts(tmp_path, monkeypatch):
    from mfdr.data import CacheWriter
    from mfdr.model import MFDR

    path = make_cache(tmp_path / "cache", n=16)
    # a second cache with word starts for all but one utterance (that row falls back to stretch windows)
    from mfdr.data import FeatureCache

    old = FeatureCache(path)
    w = CacheWriter(tmp_path / "aligned", {"audio": {"kind": "random", "dim": 6},
                                            "text": {"kind": "random", "dim": 5}, "dtype": "float32"})
    items = [old[i] for i in range(len(old))]
    starts = [None if i == 0 else torch.arange(len(x["text"])) * 2 for i, x in enumerate(items)]
    w.write_shard([{k: v for k, v in x.items() if k not in ("audio", "text", "window_starts")} for x in items],
                  [x["audio"] for x in items], [x["text"] for x in items], window_starts=starts)
    seen, real = [], MFDR.forward

    def forward(self, audio, text, audio_lengths=None, text_lengths=None, window_starts=None):
        seen.append(window_starts)
        return real(self, audio, text, audio_lengths, text_lengths, window_starts)

    monkeypatch.setattr(MFDR, "forward", forward)
    cfg = config(tmp_path / "aligned", model={"align": "forced"}, train={"epochs": 1},
                 data={"val_fraction": 0.0})
    R.run_training(cfg, tmp_path / "run", folds=["fold-0"], progress=False)
    assert seen and all(s is not None and s.shape[1] == MODEL["text_len"] for s in seen)
    assert any(bool((s[:, 0] < 0).any()) for s in seen)  # the unaligned utterance: a -1 row



def test_forced_alignment_needs_word_starts():
    from types import SimpleNamespace

    from mfdr.config import MFDRConfig
    from mfdr.run.training import check_alignments

    cfg = SimpleNamespace(model=MFDRConfig(align="forced", audio_len=300), data=SimpleNamespace(dataset="mmsa"))
    with pytest.raises(errors.ConfigError, match="align='forced' needs word alignments; data.dataset 'mmsa'"):
        check_alignments(cfg, SimpleNamespace(cache=None))
    assert check_alignments(SimpleNamespace(model=MFDRConfig()), None) is None  # paper windows: nothing to check
