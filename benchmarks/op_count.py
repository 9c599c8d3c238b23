"""Dispatched ops (≈ GPU kernel launches) and host syncs of one MFDR training step, per Table-3 config.

    python benchmarks/op_count.py                 # paper config, batch 32, padded lengths; markdown table
    python benchmarks/op_count.py --quick         # tiny model (CI smoke)
    python benchmarks/op_count.py --out results/op_count.json

Counted on the CPU with :class:`mfdr_kernels.counting.DispatchCounter` (a ``TorchDispatchMode``): every
aten op that reaches the dispatcher in forward + backward + the optimizer step (the training loop's Adam;
custom ops count once), and the host syncs (``_local_scalar_dense``, ``nonzero``, boolean-mask
indexing, …) in forward + backward.
Value checks follow ``MFDR_KERNELS_CHECK_VALUES`` (``0`` here: what a GPU run does; ``--check-values``
counts the CPU default instead). A GPU pays about one launch per dispatched op (~5 µs each).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mfdr import MFDR, MFDRConfig  # noqa: E402
from mfdr.config import TABLE3, TrainConfig  # noqa: E402
from mfdr.run.loop import make_optimizer  # noqa: E402
from mfdr_kernels.counting import DispatchCounter  # noqa: E402


def inputs(cfg: MFDRConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(batch, cfg.audio_len, cfg.audio_dim, generator=g)
    text = torch.randn(batch, cfg.text_len, cfg.text_dim, generator=g)
    audio_lengths = torch.randint(cfg.audio_len // 2, cfg.audio_len + 1, (batch,), generator=g)
    text_lengths = torch.randint(max(1, cfg.text_len // 4), cfg.text_len + 1, (batch,), generator=g)
    label = torch.randint(0, cfg.num_classes, (batch,), generator=g)
    return audio, text, audio_lengths, text_lengths, label


def count_step(cfg: MFDRConfig, batch: int) -> dict:
    """Ops of forward, backward and the optimizer step; syncs of forward + backward."""
    torch.manual_seed(0)
    model = MFDR(cfg)
    opt = make_optimizer(model.parameters(), TrainConfig(lr=1e-3), "cpu")  # the training loop's Adam
    audio, text, al, tl, y = inputs(cfg, batch)

    def forward():
        return torch.nn.functional.cross_entropy(model(audio, text, al, tl), y)

    forward().backward()  # warm-up (lazy inits, extension load, optimizer state)
    opt.step()
    opt.zero_grad(set_to_none=True)
    with DispatchCounter() as fwd:
        loss = forward()
    with DispatchCounter() as bwd:
        loss.backward()
    with DispatchCounter() as step:
        opt.step()
    opt.zero_grad(set_to_none=True)
    return {"forward": fwd.ops, "backward": bwd.ops, "optimizer": step.ops,
            "total": fwd.ops + bwd.ops + step.ops, "syncs": fwd.syncs + bwd.syncs,
            "sync_ops": dict(fwd.sync_ops + bwd.sync_ops)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model and batch (CI smoke)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--configs", nargs="*", default=list(TABLE3), help="Table-3 rows (default: all)")
    p.add_argument("--check-values", action="store_true",
                   help="count with MFDR_KERNELS_CHECK_VALUES=auto (CPU default) instead of 0")
    p.add_argument("--out", type=Path, default=None, help="write the rows as JSON")
    args = p.parse_args(argv)
    os.environ["MFDR_KERNELS_CHECK_VALUES"] = "auto" if args.check_values else "0"
    base = MFDRConfig(num_classes=4)
    batch = args.batch
    if args.quick:
        base = base.replace(audio_dim=16, text_dim=16, audio_len=64, text_len=12, d_model=16, heads=2,
                            dfc_hidden=8)
        batch = min(batch, 4)
    rows = {}
    print("| config | forward | backward | optimizer | total ops | host syncs (fwd+bwd) |\n|---|---|---|---|---|---|")
    for name in args.configs:
        cfg = MFDRConfig.ablation(name, **base.to_dict())
        r = count_step(cfg, batch)
        rows[name] = r
        print(f"| {name} | {r['forward']} | {r['backward']} | {r['optimizer']} | {r['total']} | {r['syncs']} |",
              flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "batch": batch, "quick": args.quick,
                "check_values": os.environ["MFDR_KERNELS_CHECK_VALUES"]}
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
