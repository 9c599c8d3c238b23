"""The process group of a run: alone, or one of ``torchrun``'s processes (DDP; NCCL on CUDA, gloo on the CPU)."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError


@dataclass
class Dist:
    """The process group this process belongs to (``world`` 1 without torchrun)."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order (``[obj]`` alone)."""
        if not self.active:
            return [obj]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def all_sum(self, values: list[float]) -> list[float]:
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def close(self, finished: bool = True) -> None:
        """Destroy the group this run created. After a run that ``finished`` on every rank: first a barrier
        (every rank done with its collectives) and a garbage collection (the DDP reducers, which hold the
        group, freed): a rank that tore gloo down while its peer was still in the last broadcast aborted at
        exit ("terminate called without an active exception") in about 1 CI run in 4. After an error no
        barrier: the other ranks may be waiting in another collective."""
        if self.owns_group and torch.distributed.is_initialized():
            if finished and self.active:
                torch.distributed.barrier()
                gc.collect()
            torch.distributed.destroy_process_group()


def parse_device(device, name: str = "device") -> torch.device:
    """``torch.device(device)``, or a ValueError naming ``name`` when it is not a device, or a CUDA
    device that this machine does not have."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{name} must be a torch device such as 'cpu', 'cuda' or 'cuda:1', "
                         f"got {device!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} is {device!r} but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{name} is {device!r} but this machine has {torch.cuda.device_count()} "
                             "CUDA device(s)")
    return dev


def setup_distributed(device: str | None = None) -> Dist:
    """Join the ``torchrun`` process group (``WORLD_SIZE`` > 1: NCCL on CUDA, gloo on the CPU) or run
    alone. ``device``: ``"cpu"``, ``"cuda"``... (None: CUDA when available; under torchrun each process
    takes ``cuda:LOCAL_RANK``)."""
    world, local_rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device, "train.device")
    if dev.type == "cuda":
        if world > 1:
            dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if world == 1:
        return Dist(device=dev)
    owns = not torch.distributed.is_initialized()
    if owns:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(rank=torch.distributed.get_rank(), world=torch.distributed.get_world_size(), device=dev,
                owns_group=owns)


def _on_main(dist: Dist, fn, *args):
    """Run ``fn`` on rank 0 and share its result; an error there is raised on every rank."""
    result, error = None, None
    if dist.main:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
            error = e
    if dist.active:
        message = None if error is None else f"{type(error).__name__}: {error}"
        result, message = dist.broadcast((result, message))
        if error is None and message is not None:
            raise RuntimeError(f"rank 0 failed: {message}")
    if error is not None:
        raise error
    return result
