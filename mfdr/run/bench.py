"""A quick timing of the model's training step per kernel backend (``mfdr bench``)."""

from __future__ import annotations

import time


def _median_ms(fn, device, steps: int, warmup: int) -> float:
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def bench_backend(mc, backend: str, batch: int, device, steps: int = 5, warmup: int = 2) -> dict:
    """Median milliseconds of a training step (forward, backward, Adam), an inference forward and the
    SAWA op alone (forward + backward) for model config ``mc`` on kernel ``backend``."""
    import torch
    import torch.nn.functional as F

    import mfdr_kernels

    from ..model import MFDR

    g = torch.Generator().manual_seed(0)
    audio = torch.randn(batch, mc.audio_len, mc.audio_dim, generator=g).to(device)
    text = torch.randn(batch, mc.text_len, mc.text_dim, generator=g).to(device)
    y = torch.randint(0, mc.num_classes, (batch,), generator=g).to(device)
    torch.manual_seed(0)
    model = MFDR(mc.replace(backend=backend)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        out = model.train()(audio, text)
        loss = F.cross_entropy(out, y) if mc.task == "classification" else out.square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            model.eval()(audio, text)

    q, k, v = (torch.randn(batch, mc.heads, n, mc.head_dim, device=device, requires_grad=True)
               for n in (mc.text_len, mc.audio_len, mc.audio_len))

    def sawa():
        out = mfdr_kernels.sliding_adaptive_window_attention(q, k, v, window=mc.window, hop=mc.hop,
                                                             levels=mc.levels, backend=backend)
        out.sum().backward()

    return {name: _median_ms(fn, device, steps, warmup) for name, fn in
            (("train_step", step), ("inference", infer), ("sawa", sawa))}
