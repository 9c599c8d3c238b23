"""Dynamic frame convolution (paper §2.3, SPEC §2): the ``DynamicFrameConv`` module, the module rung of the DFC
op's ladder (``mfdr_kernels/dfc/op.py``).

    M (channels, length)   kernel generation map, learnable, "the same size as H"
    Φ = W(M)               kernel generation block: (N, frame, channels), one private depthwise
                           kernel per frame position (paper eq. 8)
    y = DFC(x; Φ)          mfdr_kernels.dynamic_frame_conv: (B, length, channels) -> (B, N, channels)

Φ does not depend on the input: it is computed once per forward. In eval mode, when no autograd graph
is needed (``torch.no_grad``, ``torch.inference_mode`` or frozen parameters), it is cached until a
parameter changes (tracked by the parameters' ``_version`` counters and storage), the module moves
(``.to``), or ``train()`` is called. Under ``torch.compile`` Φ is traced into the graph instead.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mfdr_kernels import _checks, dynamic_frame_conv
from mfdr_kernels._env import BACKENDS
from mfdr_kernels.dfc.reference import num_frames

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``(B, C, L)`` Conv1d activation (each position normalized)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class DynamicFrameConv(nn.Module):
    """``(B, length, channels) -> (B, N, channels)`` with ``N = (length - frame) // hop + 1`` (eq. 7).

    Args:
        length: rows of the input sequence (L; fixed, since Φ has one kernel per frame position).
        channels: channels of the input (D).
        frame: rows per frame (ω_f). hop: frame hop (h_f). hidden: channels inside W.
        bias: add a learnable ``(channels,)`` bias to the output (not in the paper; default off).
        activation: the activation of W: ``"relu"`` (default), ``"gelu"``, ``"silu"`` or ``"tanh"``.
        backend: kernel backend of the op (None: the fastest that runs).

    Parameters: ``kernel_map`` (M, ``(channels, length)``) and ``kernel_block`` (W):
    Conv1d(k=3) → LayerNorm → act → Conv1d(k=3) → LayerNorm → act → Conv1d(hidden → frame·channels,
    kernel=frame, stride=hop), whose ``(frame·channels, N)`` output is Φ reshaped to ``(N, frame, channels)``.
    """

    def __init__(self, length: int, channels: int, frame: int = 3, hop: int = 2, hidden: int = 64, *,
                 bias: bool = False, activation: str = "relu", backend: str | None = None):
        super().__init__()
        self.length = _checks.positive_int("length", length)
        self.channels = _checks.positive_int("channels", channels)
        self.frame = _checks.positive_int("frame", frame)
        self.hop = _checks.positive_int("hop", hop)
        self.hidden = _checks.positive_int("hidden", hidden)
        self.activation = _checks.choice("activation", activation, tuple(ACTIVATIONS))
        if self.length < self.frame:
            raise ValueError(f"length must be >= frame = {self.frame}, got {self.length}")
        self.out_length = num_frames(self.length, self.frame, self.hop)  # N
        if backend is not None and backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")
        self.backend = backend
        act = ACTIVATIONS[activation]
        self.kernel_map = nn.Parameter(torch.randn(channels, length))  # M: (D, L)
        self.kernel_block = nn.Sequential(  # W: (1, D, L) -> (1, frame*D, N)
            nn.Conv1d(channels, hidden, 3, padding=1), ChannelLayerNorm(hidden), act(),
            nn.Conv1d(hidden, hidden, 3, padding=1), ChannelLayerNorm(hidden), act(),
            nn.Conv1d(hidden, frame * channels, frame, stride=hop),
        )
        self.bias = nn.Parameter(torch.zeros(channels)) if bias else None
        self._phi_cache: tuple | None = None

    def extra_repr(self) -> str:
        return (f"length={self.length}, channels={self.channels}, frame={self.frame}, hop={self.hop}, "
                f"hidden={self.hidden}, out_length={self.out_length}, bias={self.bias is not None}, "
                f"activation={self.activation!r}, backend={self.backend!r}")

    # ------------------------------------------------------------------ Φ and its cache
    def _generate(self) -> torch.Tensor:
        M = self.kernel_map.unsqueeze(0)  # (1, D, L)
        # W runs on one (D, L) map: on the CPU, oneDNN's bf16 convolutions of a batch of 1 cost more than
        # fp32 ones (paper config: 3.3 vs 1.4 ms a training step), so W stays in fp32 there
        cpu = M.device.type == "cpu"
        with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
            phi = self.kernel_block(M)  # (1, frame*D, N)
        return phi[0].t().reshape(self.out_length, self.frame, self.channels)  # (N, frame, D)

    def _cache_key(self) -> tuple:
        params = tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in self.parameters())
        return params, torch.is_inference_mode_enabled()

    def phi(self) -> torch.Tensor:
        """Φ = W(M), ``(N, frame, channels)``. In eval mode the same tensor is returned until a parameter
        changes. A Φ that needs an autograd graph (grad enabled and trainable parameters) is never
        cached, so every backward sees its own graph and the parameters get their gradients."""
        if self.training or torch.compiler.is_compiling():  # compiled: Φ is part of the graph
            return self._generate()
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return self._generate()
        key = self._cache_key()
        if self._phi_cache is None or self._phi_cache[0] != key:
            self._phi_cache = (key, self._generate())
        return self._phi_cache[1]

    def clear_cache(self) -> None:
        self._phi_cache = None

    def train(self, mode: bool = True) -> DynamicFrameConv:
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .double(): the cached Φ would be stale
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _checks.tensor("x", x, 3)
        if tuple(x.shape[1:]) != (self.length, self.channels):
            raise ValueError(f"x must have shape (B, length={self.length}, channels={self.channels}), "
                             f"got {tuple(x.shape)}")
        _checks.like("x", x, self.kernel_map)
        return dynamic_frame_conv(x, self.phi(), frame=self.frame, hop=self.hop, bias=self.bias,
                                  backend=self.backend)  # (B, N, D)
