"""pytest-benchmark suite: the MFDR training step and inference, per kernel backend.

    pytest benchmarks/test_bench_model.py --benchmark-only
    MFDR_BENCH_QUICK=1 pytest benchmarks/test_bench_model.py --benchmark-disable   # CI smoke

The paper configuration (``MFDRConfig()``: T=255, L=50, 768-dim inputs, d_model 256, levels 2),
float32, batch 32, random features and lengths (``bench_model.make_batch``). ``train``: one step of
forward, cross-entropy, backward and Adam (``bench_model.setup``); ``infer``: ``model.eval()`` forward
under ``torch.no_grad``. Backends: ``default`` (``backend=None``: cpp on the CPU, triton on CUDA),
``torch`` and ``reference`` (the readable loops; one round: its SAWA backward takes seconds). Same
weights and batch for every backend.
"""

from __future__ import annotations

import bench_model as bm
import pytest
import torch

import mfdr_kernels
from mfdr import MFDR, MFDRConfig
from mfdr_kernels import _env

QUICK = _env.bench_quick()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CONFIG = (MFDRConfig(audio_dim=24, text_dim=24, audio_len=55, text_len=10, d_model=16, heads=2, dfc_hidden=8)
          if QUICK else MFDRConfig())
BATCH = 2 if QUICK else 32

CASES = [pytest.param(device, backend, mode, id=f"{device}-{backend}-{mode}")
         for device in DEVICES for backend in ("default", "torch", "reference") for mode in ("train", "infer")
         if not (device == "cuda" and backend == "reference")]


def inference(backend, batch, device):
    torch.manual_seed(0)
    model = MFDR(CONFIG.replace(backend=None if backend == "default" else backend)).to(device).eval()
    audio, text, al, tl, _ = bm.make_batch(CONFIG, batch, device, torch.float32)

    def run():
        with torch.no_grad():
            return model(audio, text, al, tl)

    return run


@pytest.mark.parametrize(("device", "backend", "mode"), CASES)
def test_model(bench, device, backend, mode):
    batch = BATCH
    dev = torch.device(device)
    if mode == "train":
        run = bm.setup(CONFIG, None if backend == "default" else backend, batch, dev, torch.float32)
        fn = run["fns"]["step"]
    else:
        fn = inference(backend, batch, dev)
    resolved = mfdr_kernels.default_backend(dev) if backend == "default" else backend
    bench(fn, group=f"model {device} {mode}", slow=backend == "reference", device=device, op="model",
          provider=backend, backend=resolved, mode=mode, batch=batch, dtype="float32",
          dims=dict(B=batch, T=CONFIG.audio_len, L=CONFIG.text_len, audio_dim=CONFIG.audio_dim,
                    text_dim=CONFIG.text_dim, d_model=CONFIG.d_model, levels=CONFIG.levels))
