"""Count what a GPU would pay for a piece of code, on any device: dispatched ops (≈ kernel launches)
and host synchronizations (device-to-host reads that stall the stream and forbid CUDA-graph capture).

    from mfdr_kernels.counting import DispatchCounter

    with DispatchCounter() as c:
        loss = model(audio, text, audio_lengths, text_lengths).sum()
        loss.backward()
    print(c.ops, c.syncs)          # 1234 0
    c.top(10)                       # the most frequent ops

The counter is a ``TorchDispatchMode``: it sees every aten op that reaches the dispatcher below
autograd, forward and backward alike. The custom ops of this package (``mfdr_kernels::*``) are counted
through: the ops their Python bodies dispatch count, not the wrapper (the launches a GPU would see: a
``torch`` backend's many, a C++ or Triton kernel's one). Other custom ops count as one op each; a C++
kernel's internal calls do not count. Host syncs are the ops whose result or output shape depends on tensor
values.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# Ops that read device data on the host (or whose output shape depends on it).
SYNC_OPS = frozenset({
    "aten._local_scalar_dense",  # .item(), int(t), float(t), bool(t)
    "aten.is_nonzero",
    "aten.item",
    "aten.equal",
    "aten.nonzero",
    "aten.nonzero_static",  # not a sync, but listed so a caller sees it; removed below
    "aten.masked_select",
    "aten.masked_scatter",
    "aten._unique2",
    "aten.unique_dim",
    "aten.unique_consecutive",
    "aten.bincount",
    "aten.histc",
    "aten.allclose",
    "aten.repeat_interleave",  # with tensor repeats and no output_size
    "aten._assert_async",
}) - {"aten.nonzero_static"}


def _is_sync(name: str, args) -> bool:
    if name in SYNC_OPS:
        return True
    if name in ("aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"):
        # boolean-mask indexing: the mask's True count sets the result's shape (a nonzero inside)
        indices = args[1] if len(args) > 1 else ()
        return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
    return False


def _body(func):
    """The Python body of a ``mfdr_kernels::`` custom op (what ``torch.library.custom_op`` wrapped), or None."""
    if getattr(func, "namespace", None) != "mfdr_kernels":
        return None
    try:
        from torch._library.custom_ops import _maybe_get_opdef
    except ImportError:  # pragma: no cover - a torch without it: the op counts as one
        return None
    return getattr(_maybe_get_opdef(func), "_init_fn", None)


class DispatchCounter(TorchDispatchMode):
    """Counts dispatched aten ops (``ops``, ``by_op``) and host syncs (``syncs``, ``sync_ops``)."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter[str] = Counter()
        self.sync_ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        body = _body(func)
        if body is not None:  # count what the op's body dispatches, with this mode active again
            with self:
                return body(*args, **(kwargs or {}))
        name = func.overloadpacket.__qualname__ if hasattr(func, "overloadpacket") else str(func)
        name = name if "." in name else f"aten.{name}"
        name = f"{func.namespace}.{func._opname}" if hasattr(func, "_opname") else name
        self.by_op[name] += 1
        if _is_sync(name, args):
            self.sync_ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def ops(self) -> int:
        return sum(self.by_op.values())

    @property
    def syncs(self) -> int:
        return sum(self.sync_ops.values())

    def top(self, n: int = 10) -> list[tuple[str, int]]:
        return self.by_op.most_common(n)

    def summary(self) -> dict:
        return {"ops": self.ops, "syncs": self.syncs, "sync_ops": dict(self.sync_ops), "top": self.top(10)}
