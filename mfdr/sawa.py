"""The SAWA layer: the module rung of the SAWA op's ladder (``mfdr_kernels/sawa/op.py``), the MFDR model's
acoustic-word fusion (paper Fig. 1, SPEC §4). ``mfdr.model`` and ``mfdr`` re-export it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import mfdr_kernels
from mfdr_kernels import _checks


class SAWALayer(nn.Module):
    """Acoustic-word fusion: ``z = LayerNorm(q_in + Attention(q, k, v))`` with q from text, k, v from audio.

    ``attention="sawa"`` calls :func:`mfdr_kernels.sliding_adaptive_window_attention` (word i attends
    to its window of frames, widened where the weights say so); ``"full"`` is global cross-attention
    over all valid frames (Table 3 "full-size"). Window starts: ``align="paper"`` (``i * hop``),
    ``"stretch"`` (spread over each sample's audio), ``"forced"`` (the ``window_starts`` passed to
    ``forward``: where each token's word starts, from a word alignment; a row whose first start is
    negative, an utterance without an alignment, gets ``"stretch"`` windows), or, for ``"paper"`` and
    ``"stretch"``, explicit ``window_starts`` in ``forward`` that replace the rule.

    After each forward, ``last_level`` holds the ``(B, H, L)`` levels of the SAWA windows,
    ``last_fallback`` (``align="forced"``) the ``(B,)`` rows that fell back to ``"stretch"`` (a tensor: sum
    it when the loop syncs anyway), and :meth:`level_fractions` the share of valid windows at each level;
    :meth:`attention_map` gives the dense banded weights (the paper's Fig. 3).
    """

    def __init__(self, audio_dim: int, text_dim: int, d_model: int = 256, heads: int = 4, *, window: int = 10,
                 hop: int = 5, levels: int = 2, normalize: str = "segment", align: str = "paper",
                 attention: str = "sawa", backend: str | None = None):
        super().__init__()
        d_model, heads = _checks.positive_int("d_model", d_model), _checks.positive_int("heads", heads)
        if d_model % heads:
            raise ValueError(f"SAWALayer: d_model ({d_model}) must be divisible by heads ({heads})")
        _checks.choice("attention", attention, ("sawa", "full"))
        _checks.choice("align", align, ("paper", "stretch", "forced"))
        self.d_model, self.heads = d_model, heads
        self.window, self.hop, self.levels, self.normalize = window, hop, levels, normalize
        self.align, self.attention, self.backend = align, attention, backend
        self.q_proj = nn.Linear(text_dim, d_model)
        # no key bias: q·b_k is the same for every frame of a row, so every softmax cancels it (zero gradient)
        self.k_proj = nn.Linear(audio_dim, d_model, bias=False)
        self.v_proj = nn.Linear(audio_dim, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.last_level: torch.Tensor | None = None  # (B, H, L) int8 of the last forward (SAWA only)
        self._last_valid: torch.Tensor | None = None  # (B, L) valid queries of the last forward
        self.last_fallback: torch.Tensor | None = None  # (B,) bool: rows given stretch windows (align="forced")

    def extra_repr(self) -> str:
        return (f"heads={self.heads}, attention={self.attention!r}, window={self.window}, hop={self.hop}, "
                f"levels={self.levels}, normalize={self.normalize!r}, align={self.align!r}, "
                f"backend={self.backend!r}")

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, H, N, d)
        B, N, _ = x.shape
        return x.view(B, N, self.heads, self.d_model // self.heads).transpose(1, 2)

    def project(self, audio: torch.Tensor, text: torch.Tensor):
        """``q_in (B, L, D)`` and the heads ``q (B, H, L, d)``, ``k, v (B, H, T, d)``."""
        q_in = self.q_proj(text)
        return q_in, self._split(q_in), self._split(self.k_proj(audio)), self._split(self.v_proj(audio))

    def window_starts(self, B: int, L: int, T: int, audio_lengths=None, text_lengths=None, device=None,
                      forced=None):
        """``(B, L)`` start frames of the words' windows for ``config.align``; None for ``"paper"``
        (the op's own ``i * hop``).

        ``"stretch"``: ``s_i = max(0, floor(i (k_len - ω) / max(q_len - 1, 1)))``.
        ``"forced"``: ``forced (B, L)`` (the batch's ``window_starts``), its rows whose first start is
        negative (no alignment) replaced by the stretch starts; no host sync.
        """
        if self.align == "paper":
            return None
        k_len = torch.full((B,), T, device=device) if audio_lengths is None else audio_lengths
        q_len = torch.full((B,), L, device=device) if text_lengths is None else text_lengths
        num = torch.arange(L, device=k_len.device)[None, :] * (k_len - self.window)[:, None]
        stretch = torch.div(num, (q_len - 1).clamp_min(1)[:, None], rounding_mode="floor").clamp_min(0)
        if self.align == "stretch":
            return stretch
        if forced is None:
            raise ValueError("align='forced' needs window_starts (B, L): the batch's 'window_starts' (start frame "
                             "of each token's word; a row of -1 for an utterance without a word alignment)")
        forced = _checks.int_tensor("window_starts", forced, (B, L), stretch.device)
        unaligned = forced[:, :1] < 0  # (B, 1)
        self.last_fallback = unaligned[:, 0].detach()
        return torch.where(unaligned, stretch, forced)

    def _key_mask(self, T: int, audio_lengths) -> torch.Tensor | None:  # (B, 1, 1, T) True = valid frame
        return None if audio_lengths is None else self._valid(T, audio_lengths)[:, None, None, :]

    def attend(self, q, k, v, audio_lengths=None, text_lengths=None, window_starts=None) -> torch.Tensor:
        """The attention alone: ``(B, H, L, d)``; padded queries give 0."""
        B, _, L, _ = q.shape
        T = k.shape[2]
        self._last_valid = None if text_lengths is None else self._valid(L, text_lengths)
        if self.attention == "full":
            self.last_level = None
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=self._key_mask(T, audio_lengths))
            if text_lengths is not None:
                out = out.masked_fill(~self._last_valid[:, None, :, None], 0.0)
            return out
        if window_starts is None or self.align == "forced":
            window_starts = self.window_starts(B, L, T, audio_lengths, text_lengths, q.device, window_starts)
        out, level = mfdr_kernels.sliding_adaptive_window_attention(
            q, k, v, window=self.window, hop=self.hop, levels=self.levels, normalize=self.normalize,
            q_lens=text_lengths, k_lens=audio_lengths, window_starts=window_starts, backend=self.backend,
            return_level=True)
        self.last_level = level.detach()
        return out

    @staticmethod
    def _valid(L: int, lengths: torch.Tensor) -> torch.Tensor:
        return torch.arange(L, device=lengths.device)[None, :] < lengths[:, None]  # (B, L)

    def forward(self, audio: torch.Tensor, text: torch.Tensor, audio_lengths=None, text_lengths=None,
                window_starts=None) -> torch.Tensor:
        """``audio (B, T, audio_dim)``, ``text (B, L, text_dim)`` -> ``z (B, L, d_model)``."""
        q_in, q, k, v = self.project(audio, text)
        out = self.attend(q, k, v, audio_lengths, text_lengths, window_starts)  # (B, H, L, d)
        B, _, L, _ = out.shape
        return self.norm(q_in + out.transpose(1, 2).reshape(B, L, self.d_model))

    def level_fractions(self) -> dict[int, float] | None:
        """Share of the last forward's valid windows (all heads) at level 0, 1 and 2; None before one,
        or with full attention."""
        if self.last_level is None:
            return None
        level = self.last_level.long()  # (B, H, L)
        if self._last_valid is not None:
            level = level[self._last_valid[:, None, :].expand_as(level)]
        counts = torch.bincount(level.flatten(), minlength=3).double()
        return {i: float(c) for i, c in enumerate(counts / counts.sum().clamp_min(1))}

    @torch.no_grad()
    def attention_map(self, audio, text, audio_lengths=None, text_lengths=None, window_starts=None):
        """Dense ``(B, H, L, T)`` attention weights; SAWA: the paper's banded ``diag_att`` (reference op)."""
        _, q, k, _ = self.project(audio, text)
        B, _, L, _ = q.shape
        T = k.shape[2]
        if self.attention == "full":
            x = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5  # (B, H, L, T)
            mask = self._key_mask(T, audio_lengths)
            att = torch.softmax(x if mask is None else x.masked_fill(~mask, float("-inf")), dim=-1)
            if text_lengths is not None:
                att = att.masked_fill(~self._valid(L, text_lengths)[:, None, :, None], 0.0)
            return att
        if window_starts is None or self.align == "forced":
            window_starts = self.window_starts(B, L, T, audio_lengths, text_lengths, q.device, window_starts)
        return mfdr_kernels.sawa_attention_map(
            q, k, window=self.window, hop=self.hop, levels=self.levels, normalize=self.normalize,
            q_lens=text_lengths, k_lens=audio_lengths, window_starts=window_starts)
