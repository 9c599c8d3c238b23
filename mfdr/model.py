"""The MFDR network (paper Fig. 1, SPEC §4): SAWA fusion -> GCPU context -> DFC refinement -> output layer.

    text  (B, L, text_dim)  -> Linear -> q_in ─┐
    audio (B, T, audio_dim) -> Linear -> k, v ─┴─ SAWA -> z = LayerNorm(q_in + SAWA(q, k, v))   (B, L, D)
    z -> GCPU (two streams: z and its multi-head self-attention g) -> H, padded rows zero           (B, L, D)
    H -> DFC (frame 3, hop 2) -> DFC (frame 3, hop 3)                                              (B, 8, D)
      -> flatten -> dropout -> Linear -> logits (B, num_classes), or (B,) for regression

Every row of the paper's Table 3 is a config switch (``MFDRConfig.ablation(name)``): ``window``/``levels``
(fixed windows), ``attention="full"``, ``context`` in {gcpu, none, gru, mgru}, ``pooling`` in
{dfc, max, avg, linear}. The SAWA, GCPU and DFC ops run on the backend ``config.backend`` picks (None:
the C++ kernels on the CPU, Triton on CUDA).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mfdr_kernels import _checks

from .config import MFDRConfig
from .errors import CheckpointError, ConfigError, MissingFileError
from .gcpu import GCPU, MGRU, GRUContext
from .sawa import SAWALayer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def zero_padding(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """``x (B, N, C)`` with its rows ``n >= lengths[b]`` set to 0 (a NaN or Inf there reaches neither the
    output nor the gradients); ``x`` itself when ``lengths`` is None. No host sync: ``torch.where`` on a
    GPU and while tracing; on the CPU (:func:`~mfdr_kernels._checks.cpu_eager`) a copy whose padded rows
    are filled with 0, 3.6x faster than the ``where`` (its mask broadcast along C defeats vectorization).

    Under ``torch.autocast`` an fp32 ``x`` is cast to the autocast dtype first: its only readers are the
    input projections, which autocast would feed that dtype anyway (once per projection: k and v both read
    the audio), and the mask then moves half the bytes."""
    if lengths is None:
        return x
    low = _checks.autocast_dtype(x.device)
    cast = low is not None and x.dtype == torch.float32
    if not _checks.cpu_eager(x):
        x = x.to(low) if cast else x
        valid = torch.arange(x.shape[1], device=x.device)[None, :, None] < lengths[:, None, None]  # (B, N, 1)
        return torch.where(valid, x, x.new_zeros(()))
    x = x.to(low) if cast else x.clone()
    N = x.shape[1]
    for b, n in enumerate(lengths.tolist()):
        n = min(max(n, 0), N)
        if n < N:
            x[b, n:] = 0
    return x


# ---------------------------------------------------------------------- pooling heads
class FramePool(nn.Module):
    """Max or average pooling over frames of ``frame`` rows, one hop per layer: the parameter-free
    baselines of DFC (Table 3 "max-pooling", "avg-pooling"). ``(B, L, C) -> (B, N, C)``."""

    def __init__(self, kind: str, frame: int = 3, hops: tuple[int, ...] = (2, 3)):
        super().__init__()
        self.kind, self.frame, self.hops = _checks.choice("kind", kind, ("max", "avg")), frame, tuple(hops)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, frame={self.frame}, hops={self.hops}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = F.max_pool1d if self.kind == "max" else F.avg_pool1d
        x = x.transpose(1, 2)  # (B, C, L)
        for hop in self.hops:
            x = pool(x, self.frame, hop)
        return x.transpose(1, 2)


def _dfc_layers(config: MFDRConfig) -> nn.Sequential:
    from .dfc import DynamicFrameConv

    lengths = config.pooled_lengths()
    return nn.Sequential(*(
        DynamicFrameConv(n, config.d_model, frame=config.dfc_frame, hop=hop, hidden=config.dfc_hidden,
                         backend=config.backend)
        for n, hop in zip(lengths[:-1], config.dfc_hops, strict=True)))


def _pooling(config: MFDRConfig) -> nn.Module:
    if config.pooling == "dfc":
        return _dfc_layers(config)
    if config.pooling == "linear":
        return nn.Identity()  # "w/o DFC": H goes flat into the output layer
    return FramePool(config.pooling, config.dfc_frame, config.dfc_hops)


def _context_unit(config: MFDRConfig) -> nn.Module:
    if config.context == "gru":
        return GRUContext(config.d_model)
    cls = MGRU if config.context == "mgru" else GCPU
    return cls(config.d_model, config.heads, context=config.context != "none", backend=config.backend)


# ---------------------------------------------------------------------- the model
class MFDR(nn.Module):
    """Multiple-stage fusion and dynamically refined network (SPEC §4).

    ``MFDR(config)`` or ``MFDR(**fields)``; ``forward(audio, text, audio_lengths=None, text_lengths=None,
    window_starts=None)``:

    - ``audio (B, T, audio_dim)``: any number of frames T (padded to the longest, typically
      ``audio_len``); ``audio_lengths (B,)`` valid frames, default T.
    - ``text (B, text_len, text_dim)``: exactly ``text_len`` tokens; ``text_lengths (B,)`` valid tokens,
      default ``text_len``.
    - ``window_starts (B, text_len)``: start frames of the words' windows, the batch's ``window_starts``.
      Required with ``align="forced"`` (rows of -1, utterances without a word alignment, get
      ``"stretch"`` windows); with ``"paper"`` or ``"stretch"``, explicit starts that replace the rule.

    Returns logits ``(B, num_classes)``, or ``(B,)`` scores for ``task="regression"`` (not clamped).
    Padded frames and tokens have no influence on a sample's output.

    Submodules: ``fusion`` (:class:`SAWALayer`), ``context`` (:class:`~mfdr.GCPU`, ``MGRU`` or
    ``GRUContext``), ``pool`` (two ``DynamicFrameConv``, ``FramePool`` or identity), ``head``
    (flatten, dropout, linear).
    """

    def __init__(self, config: MFDRConfig | None = None, **changes):
        super().__init__()
        if config is None:
            config = MFDRConfig(**changes)
        elif not isinstance(config, MFDRConfig):
            raise TypeError(f"config must be an MFDRConfig, got {type(config).__name__}")
        elif changes:
            config = config.replace(**changes)
        self.config = config
        c = config
        self.fusion = SAWALayer(c.audio_dim, c.text_dim, c.d_model, c.heads, window=c.window, hop=c.hop,
                                levels=c.levels, normalize=c.normalize, align=c.align, attention=c.attention,
                                backend=c.backend)
        self.context = _context_unit(c)
        self.pool = _pooling(c)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(c.dropout), nn.Linear(c.flat_dim, c.out_dim))
        self.set_backend(c.backend)

    # -------------------------------------------------------------- backend
    @property
    def backend(self) -> str | None:
        return self.config.backend

    def set_backend(self, backend: str | None) -> MFDR:
        """Kernel backend for the SAWA, GCPU and DFC ops (``"triton"``, ``"cpp"``, ``"torch"``, ``"reference"``
        or None for the fastest that runs). Does not touch the weights."""
        self.config = self.config.replace(backend=backend)
        self.fusion.backend = backend
        if isinstance(self.context, GCPU):  # MGRU too (a GCPU subclass), which keeps its Python loop
            self.context.backend = backend
        for m in self.pool.modules():
            if m is not self.pool and hasattr(m, "backend"):
                m.backend = backend
        return self

    # -------------------------------------------------------------- forward
    def _check_inputs(self, audio, text, audio_lengths, text_lengths):
        c = self.config
        _checks.tensor("audio", audio, 3)
        _checks.tensor("text", text, 3)
        B, T, A = audio.shape
        if A != c.audio_dim or T < 1:
            raise ValueError(f"audio must have shape (B, T >= 1, audio_dim={c.audio_dim}), "
                             f"got {tuple(audio.shape)}")
        if tuple(text.shape[1:]) != (c.text_len, c.text_dim):
            raise ValueError(f"text must have shape (B, text_len={c.text_len}, text_dim={c.text_dim}) "
                             f"(pad or cut the tokens to text_len), got {tuple(text.shape)}")
        if text.shape[0] != B:
            raise ValueError(f"audio and text must have the same batch size, got {B} and {text.shape[0]}")
        param = next(self.parameters())
        _checks.like("audio", audio, param)
        _checks.like("text", text, param)
        if audio_lengths is not None:
            audio_lengths = _checks.int_tensor("audio_lengths", audio_lengths, (B,), audio.device)
            _checks.in_range("audio_lengths", audio_lengths, 1, T)
        if text_lengths is not None:
            text_lengths = _checks.int_tensor("text_lengths", text_lengths, (B,), text.device)
            _checks.in_range("text_lengths", text_lengths, 1, c.text_len)
        # Padded frames and tokens are zeroed before they meet valid ones (the global context's attention
        # and the full attention read every row, masked by weight 0, and 0 * NaN is NaN): whatever the
        # padding holds, NaN or -inf included, a sample's output is that of its valid rows.
        audio, text = zero_padding(audio, audio_lengths), zero_padding(text, text_lengths)
        _checks.finite_if_asked(audio=audio, text=text)
        return audio, text, audio_lengths, text_lengths

    def features(self, audio, text, audio_lengths=None, text_lengths=None, window_starts=None):
        """The refined representation before the output layer: ``(B, N, d_model)`` (``N = text_len`` for
        ``pooling="linear"``)."""
        audio, text, audio_lengths, text_lengths = self._check_inputs(audio, text, audio_lengths, text_lengths)
        z = self.fusion(audio, text, audio_lengths, text_lengths, window_starts)  # (B, L, D)
        H = self.context(z, text_lengths)  # (B, L, D), padded rows 0
        return self.pool(H)  # (B, N, D)

    def forward(self, audio: torch.Tensor, text: torch.Tensor, audio_lengths=None, text_lengths=None,
                window_starts=None) -> torch.Tensor:
        out = self.head(self.features(audio, text, audio_lengths, text_lengths, window_starts))
        return out.squeeze(-1) if self.config.task == "regression" else out

    # -------------------------------------------------------------- analysis
    def level_fractions(self) -> dict[int, float] | None:
        """Share of the last forward's valid SAWA windows at level 0, 1, 2 (None with full attention)."""
        return self.fusion.level_fractions()

    def attention_map(self, audio, text, audio_lengths=None, text_lengths=None, window_starts=None):
        """Dense ``(B, heads, text_len, T)`` fusion attention weights (the paper's Fig. 3)."""
        audio, text, audio_lengths, text_lengths = self._check_inputs(audio, text, audio_lengths, text_lengths)
        return self.fusion.attention_map(audio, text, audio_lengths, text_lengths, window_starts)

    # -------------------------------------------------------------- save / load
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` to the directory ``path``."""
        from ._safetensors import save_file  # deterministic bytes: identical runs, identical files

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.config.save(path / CONFIG_NAME)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME), metadata={"format": "pt", "model": "mfdr"})
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, config: MFDRConfig | None = None, *,
                        map_location: str | torch.device = "cpu", **runtime) -> MFDR:
        """Load a model written by :meth:`save_pretrained`, in eval mode.

        ``config``: the config the caller expects; it must match the saved one (fields that do not
        touch the weights, ``MFDRConfig.RUNTIME_FIELDS``, may differ), else ``ValueError`` lists the
        differences. ``runtime``: new values for those fields, e.g. ``backend="torch"``.
        """
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise MissingFileError(f"{path} must hold {CONFIG_NAME} and {WEIGHTS_NAME} "
                                    f"(written by MFDR.save_pretrained)")
        saved = MFDRConfig.load(path / CONFIG_NAME)
        if config is not None:
            diff = saved.diff(config, ignore=MFDRConfig.RUNTIME_FIELDS)
            if diff:
                lines = ", ".join(f"{k}: saved {a!r}, given {b!r}" for k, (a, b) in diff.items())
                raise ConfigError(f"config does not match the model saved in {path}: {lines}")
            saved = config
        bad = sorted(set(runtime) - set(MFDRConfig.RUNTIME_FIELDS))
        if bad:
            raise TypeError(f"from_pretrained: unexpected argument(s) {bad}; runtime fields are "
                            f"{MFDRConfig.RUNTIME_FIELDS}")
        model = cls(saved.replace(**runtime))
        state = load_file(str(path / WEIGHTS_NAME), device=str(map_location))
        own = model.state_dict()
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        wrong = [f"{k}: saved {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
        if missing or unexpected or wrong:
            raise CheckpointError(f"weights in {path / WEIGHTS_NAME} do not fit the config: missing {missing}, "
                             f"unexpected {unexpected}, wrong shapes {wrong}")
        model.load_state_dict(state)
        return model.to(map_location).eval()

