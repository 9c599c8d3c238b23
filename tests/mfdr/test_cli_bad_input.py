"""Bad input at the command line (mfdr/cli.py): ``python -m mfdr ...`` in a subprocess exits with status 2
and prints one error line."""

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

# (name, argv with {d} for a scratch folder, message fragment). Every row exits
# with status 2 and prints exactly one "PROG: error: ..." line, no traceback, and writes nothing
# (no --out folder appears). They run in subprocesses, started together by the fixture below.
CLI_BAD = [
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["bogus"], "argument COMMAND: invalid choice: 'bogus'"),
    ("train-config-missing", ["train", "--config", "{d}/none.yaml"], "none.yaml does not exist"),
    ("train-config-not-yaml", ["train", "--config", "{d}/bad.yaml"],
     "bad.yaml is not valid YAML: expected ',' or ']', but got '<stream end>' at line 2, column 1"),
    ("train-config-not-utf8", ["train", "--config", "{d}/binary.yaml"], "binary.yaml is not UTF-8 text"),
    ("train-config-a-list", ["train", "--config", "{d}/list.yaml"],
     "list.yaml: a run config must be a mapping of sections, got list"),
    ("train-config-unknown-key", ["train", "--config", "{d}/unknown.yaml"],
     "unknown key(s) ['train.bogus']"),
    ("train-set-without-section", ["train", "--set", "epochs=2"],
     "override 'epochs=2' must look like section.key=value"),
    ("train-set-not-yaml", ["train", "--set", "train.epochs=["],
     "override 'train.epochs=[': the value is not valid YAML"),
    ("train-set-bad-value", ["train", "--set", "train.epochs=0"], "train.epochs must be >= 1, got 0"),
    ("train-set-unknown-section", ["train", "--set", "optim.lr=1"], "unknown config section(s) ['optim']"),
    ("train-set-lr-nan", ["train", "--set", "train.lr=.nan"], "train.lr must be a finite number, got nan"),
    ("train-set-grad-clip-inf", ["train", "--set", "train.grad_clip=1e999"],
     "train.grad_clip must be a finite number, got inf"),
    ("train-resume-nothing", ["train", "--resume"], "--resume: there is nothing to resume in"),
    ("train-set-device-unknown", ["train", "--set", "train.device=banana", "--features", "{d}/empty"],
     "train.device must be a torch device such as 'cpu', 'cuda' or 'cuda:1', got 'banana'"),
    ("train-epochs-not-an-int", ["train", "--epochs", "two"], "argument --epochs: must be an int, got 'two'"),
    ("train-threads-0", ["train", "--threads", "0"], "argument --threads: must be >= 1, got 0"),
    ("train-device-unknown", ["train", "--device", "banana"],
     "argument --device: must be a torch device such as cpu, cuda or cuda:1, got 'banana'"),
    ("train-protocol-unknown", ["train", "--protocol", "loso"],
     "argument --protocol: invalid choice: 'loso'"),
    ("train-folds-1", ["train", "--folds", "1"], "argument --folds: must be >= 2, got 1"),
    ("train-stop-after-epoch-0", ["train", "--stop-after-epoch", "0"],
     "argument --stop-after-epoch: must be >= 1, got 0"),
    ("train-no-feature-cache", ["train", "--features", "{d}/empty"], "no feature cache at"),
    ("extract-no-path", ["extract"], "data.path is not set"),
    ("extract-manifest-missing", ["extract", "--path", "{d}/none.csv"], "none.csv does not exist"),
    ("extract-manifest-columns", ["extract", "--path", "{d}/m.csv"],
     "m.csv: missing columns ['text', 'label', 'speaker']"),
    ("extract-iemocap-empty", ["extract", "--dataset", "iemocap", "--path", "{d}/empty"],
     "no Session1..Session5 folders found"),
    ("extract-mmsa", ["extract", "--set", "data.dataset=mmsa"], "MMSA pickles already hold features"),
    ("extract-demo-config", ["extract", "-c", "demo"], "data.path is not set: give the manifest with --path"),
    ("train-demo-config", ["train", "-c", "demo", "--features", "{d}/empty"], "no feature cache at"),
    ("extract-batch-size-0", ["extract", "--batch-size", "0"], "argument --batch-size: must be >= 1"),
    ("evaluate-missing", ["evaluate", "{d}/none"], "none does not exist"),
    ("evaluate-model-without-features", ["evaluate", "{d}/empty"],
     "evaluating one model needs --features"),
    ("evaluate-not-a-model", ["evaluate", "{d}/empty", "--features", "{d}/empty"],
     "must hold config.json and model.safetensors"),
    ("predict-no-text", ["predict", "{d}/empty", "--wav", "a.wav"],
     "give one --text per --wav (got 1 --wav and 0 --text)"),
    ("predict-no-model", ["predict", "{d}/empty", "--wav", "a.wav", "--text", "hi"],
     "no trained model at"),
    ("bench-batch-0", ["bench", "--batch", "0"], "argument --batch: must be >= 1, got 0"),
    ("bench-warmup-negative", ["bench", "--warmup", "-1"], "argument --warmup: must be >= 0, got -1"),
    ("demo-utterances-0", ["demo", "--utterances", "0"], "argument --utterances: must be >= 1, got 0"),
]
OUT_FLAG = {"train": "--out", "extract": "--out", "demo": "--out"}


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Start every CLI row (three at a time); ``{name: (future, its --out folder or None)}``."""
    d = tmp_path_factory.mktemp("cli")
    (d / "bad.yaml").write_text("model: [1, 2\n")
    (d / "binary.yaml").write_bytes(b"\xff\xfe\x00 model")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "unknown.yaml").write_text("train:\n  bogus: 1\n")
    (d / "m.csv").write_text("id,wav\nu1,a.wav\n")
    (d / "empty").mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MFDR_")}
    pool = ThreadPoolExecutor(max_workers=3)
    runs = {}
    for name, argv, _ in CLI_BAD:
        argv = [a.format(d=d) for a in argv]
        out = None
        if argv and argv[0] in OUT_FLAG:
            out = d / f"out-{name}"
            argv += [OUT_FLAG[argv[0]], str(out)]
        runs[name] = (pool.submit(subprocess.run, [sys.executable, "-m", "mfdr", *argv], cwd=d, env=env,
                                  capture_output=True, text=True, timeout=300), out)
    yield runs
    pool.shutdown(wait=True)


COMMANDS = ("extract", "train", "evaluate", "predict", "demo", "bench")


@pytest.mark.parametrize("name, argv, fragment", [pytest.param(*r, id=r[0]) for r in CLI_BAD])
def test_cli_bad_input(name, argv, fragment, cli_runs):
    prog = f"mfdr {argv[0]}" if argv and argv[0] in COMMANDS else "mfdr"  # who reports the error
    future, out = cli_runs[name]
    result = future.result()
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, result.stderr
    assert fragment in errors[0], errors[0]
    assert out is None or not out.exists()
