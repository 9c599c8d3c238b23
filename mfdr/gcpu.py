"""Gated context perception unit (GCPU, paper Sec. 2.2, SPEC §3) and the context units of its ablations.
``GCPU`` is the module rung of the GCPU recurrence op's ladder (``mfdr_kernels/gcpu/op.py``).

``GCPU`` reads two streams per step, the fused word ``z_t`` and its global context ``g_t`` (multi-head
self-attention over z), and updates its state with the decoupled update gate of equations (1)-(6)::

    r_t  = σ(W_hr h_{t-1} + W_zr z_t + W_gr g_t + b_r)                      (1)
    z̃_t  = tanh(W_zz z_t + W_hz (r_t ⊙ h_{t-1}) + b_z)                      (2)
    g̃_t  = tanh(W_gg g_t + W_hg (r_t ⊙ h_{t-1}) + b_g)                      (3)
    h̃_t  = z̃_t + g̃_t                                                        (4)
    u_t  = σ(W_zu z̃_t + W_gu g̃_t + W_hu (r_t ⊙ h_{t-1}) + b_u)             (5)
    h_t  = r_t ⊙ h_{t-1} + u_t ⊙ h̃_t                                        (6)

``MGRU`` (Table 3 "MGRU", Fig. 4a) is the same two-stream cell with the GRU's complementary update
instead: ``u_t = σ(W_zu z_t + W_gu g_t + W_hu h_{t-1} + b_u)`` from the inputs and the previous state,
as in a GRU, and ``h_t = (1 - u_t) ⊙ h_{t-1} + u_t ⊙ h̃_t``. ``GRUContext`` (Table 3 "GRU") is a plain
``nn.GRU`` over z, with no g stream. All three take ``(z, lengths)`` and return ``H (B, L, dim)`` with
padded steps zeroed.

The products of the inputs with their weights for every step are computed before the time loop, in
one matmul per stream; the loop only does the products with the state. GCPU's loop is the fused op
:func:`mfdr_kernels.gated_context_recurrence` (the loop over t and its backpropagation through time inside
one kernel, on the backend ``backend`` picks); MGRU keeps a Python loop (an ablation: a different gate
order, the update gate from h before the reset, so not the same kernel).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import mfdr_kernels
from mfdr_kernels import _checks, _env


def _valid_steps(lengths: torch.Tensor | None, B: int, L: int, device) -> torch.Tensor | None:
    """``(B, L)`` bool, True at steps ``t < lengths[b]``; None when every step is valid.
    ``lengths``: integer ``(B,)`` with values in [0, L] (else an error naming it)."""
    if lengths is None:
        return None
    lengths = _checks.lengths("lengths", lengths, B, 0, L, device)
    return torch.arange(L, device=device)[None, :] < lengths[:, None]


def _zero_padded(z: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``z`` with its padded steps set to 0 before they meet valid ones (the context attention weighs them
    by 0, and 0 * NaN is NaN; a recurrence's backward multiplies through them): no host sync."""
    return z if valid is None else torch.where(valid[..., None], z, z.new_zeros(()))


def multi_head_attention(mha: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor,
                         valid: torch.Tensor | None = None) -> torch.Tensor:
    """``mha(query, keys, keys, key_padding_mask=~valid)[0]`` of a ``batch_first`` module, with its
    parameters and dropout: ``(B, L, D)``. ``valid (B, S)``: True at the keys to attend to (a row with
    none attends to every key, weight 1/S, rather than giving NaN).

    The attention is ``scaled_dot_product_attention`` (fused kernels on a GPU), except on the CPU, eager
    (:func:`~mfdr_kernels._checks.cpu_eager`: not under the op counter, which counts the GPU's ops) or
    compiled, where it is matrix products with fp32 scores and softmax:
    the CPU's fused attention takes 28 ms for forward + backward of the paper's context attention (B 32,
    4 heads, 50 steps) in bf16, 11 ms in fp32, against 7.9 ms for these products (bf16 values, fp32
    scores: the fused kernel's error; bf16 scores gave 1.38x it on the output at the paper's shape).
    """
    B, L, D = query.shape
    H = mha.num_heads
    d = D // H
    w, b = mha.in_proj_weight, mha.in_proj_bias
    if keys is query:
        q, k, v = F.linear(query, w, b).split(D, dim=-1)
    else:
        q = F.linear(query, w[:D], None if b is None else b[:D])
        k, v = F.linear(keys, w[D:], None if b is None else b[D:]).split(D, dim=-1)
    q, k, v = (x.unflatten(-1, (H, d)).transpose(1, 2) for x in (q, k, v))  # (B, H, ., d)
    p = mha.dropout if mha.training else 0.0
    on_cpu = query.device.type == "cpu" and (torch.compiler.is_compiling() or _checks.cpu_eager(query))
    if not on_cpu:
        mask = None if valid is None else torch.zeros(valid.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~valid, torch.finfo(q.dtype).min)[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    else:
        acc = torch.promote_types(q.dtype, torch.float32)  # fp32 for bf16 / fp16, fp64 stays
        with torch.autocast("cpu", enabled=False):
            scores = torch.matmul(q.to(acc), k.to(acc).transpose(-1, -2)) * d ** -0.5  # (B, H, L, S)
        if valid is not None:
            scores = scores.masked_fill(~valid[:, None, None, :], torch.finfo(scores.dtype).min)
        weights = F.dropout(torch.softmax(scores, dim=-1), p)
        out = torch.matmul(weights.to(v.dtype), v)
    return F.linear(out.transpose(1, 2).reshape(B, L, D), mha.out_proj.weight, mha.out_proj.bias)


def _check_z(module: nn.Module, z) -> None:
    """``z (B, L >= 1, dim)``, floating, on the device (and, outside autocast, of the dtype) of the
    module's parameters."""
    _checks.tensor("z", z, 3)
    if z.shape[-1] != module.dim:
        raise ValueError(f"z must have shape (B, L, {module.dim}), got {tuple(z.shape)}")
    if z.shape[1] == 0:
        raise ValueError(f"z must have at least one step (L >= 1), got shape {tuple(z.shape)}")
    _checks.like("z", z, next(module.parameters()))


def _check_sizes(dim, heads) -> tuple[int, int]:
    dim, heads = _checks.positive_int("dim", dim), _checks.positive_int("heads", heads)
    if dim % heads:
        raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
    return dim, heads


class GCPU(nn.Module):
    """Gated context perception unit: ``forward(z, lengths=None, h0=None) -> H (B, L, dim)``.

    Args:
        dim: width D of z, g and h (the paper's 256). heads: heads of the context attention.
        context: False drops the g stream ("w/o Context"): no multi-head attention, no ``W_gr``
            term in (1), no g̃ (``h̃_t = z̃_t``), no ``W_gu`` term in (5).
        dropout: attention dropout of the multi-head attention.
        backend: kernel backend of the recurrence (``"triton"``, ``"cpp"``, ``"torch"``, ``"reference"``,
            or None for the fastest that runs; see :func:`mfdr_kernels.gated_context_recurrence`).

    Parameters are named after the equations (bias-free ``nn.Linear(dim, dim)`` modules ``W_hr, W_zr,
    W_gr``; ``W_zz, W_hz``; ``W_gg, W_hg``; ``W_zu, W_gu, W_hu``; bias vectors ``b_r, b_z, b_g, b_u``),
    and ``mha`` is the ``nn.MultiheadAttention`` that gives g.
    """

    def __init__(self, dim: int = 256, heads: int = 4, context: bool = True, dropout: float = 0.0,
                 backend: str | None = None):
        super().__init__()
        dim, heads = _check_sizes(dim, heads)
        if backend is not None:
            _checks.choice("backend", backend, _env.BACKENDS)
        self.backend = backend
        if not isinstance(context, bool):
            raise TypeError(f"context must be a bool, got {type(context).__name__} {context!r}")
        dropout = _checks.finite_float("dropout", dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.dim, self.heads, self.context = dim, heads, context
        lin = lambda: nn.Linear(dim, dim, bias=False)
        self.W_hr, self.W_zr = lin(), lin()
        self.W_zz, self.W_hz = lin(), lin()
        self.W_zu, self.W_hu = lin(), lin()
        self.b_r, self.b_z, self.b_u = (nn.Parameter(torch.zeros(dim)) for _ in range(3))
        if self.context:
            self.W_gr, self.W_gg, self.W_hg, self.W_gu = lin(), lin(), lin(), lin()
            self.b_g = nn.Parameter(torch.zeros(dim))
            self.mha = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        else:
            self.mha = None

    def extra_repr(self) -> str:
        backend = "" if self.backend is None else f", backend={self.backend!r}"
        return f"dim={self.dim}, heads={self.heads}, context={self.context}{backend}"

    def global_context(self, z: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """g = MultiheadAttention(z, z, z) with padded keys masked: ``(B, L, dim)``."""
        valid = _valid_steps(lengths, z.shape[0], z.shape[1], z.device)
        return self._global_context(z, valid, _zero_padded(z, valid))

    def _global_context(self, z: torch.Tensor, valid: torch.Tensor | None, keys: torch.Tensor) -> torch.Tensor:
        """``MultiheadAttention(z, keys, keys)``, ``keys`` being ``z`` with its padded steps zero (masked
        keys are weighed by 0, and 0 * NaN is NaN)."""
        return multi_head_attention(self.mha, z, keys, valid)

    def forward(self, z: torch.Tensor, lengths: torch.Tensor | None = None,
                h0: torch.Tensor | None = None) -> torch.Tensor:
        """``z (B, L, dim)``, ``lengths (B,)`` valid steps -> ``H (B, L, dim)``, padded steps zero."""
        _check_z(self, z)
        valid = _valid_steps(lengths, z.shape[0], z.shape[1], z.device)
        z = _zero_padded(z, valid)
        g = self._global_context(z, valid, z) if self.context else None
        return self.recurrence(z, g, lengths, h0)

    # ------------------------------------------------------------------ the recurrence
    def _input_side(self, z: torch.Tensor, g: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Products with the inputs for all steps: ``(B, L, D)`` terms of (1), (2), (3)."""
        D = self.dim
        xz = F.linear(z, torch.cat([self.W_zr.weight, self.W_zz.weight]), torch.cat([self.b_r, self.b_z]))
        r_in, zz_in = xz.split(D, dim=-1)  # W_zr z + b_r, W_zz z + b_z
        if not self.context:
            return r_in, zz_in, None
        xg = F.linear(g, torch.cat([self.W_gr.weight, self.W_gg.weight]))
        gr, gg_in = xg.split(D, dim=-1)
        return r_in + gr, zz_in, gg_in + self.b_g

    def recurrence(self, z: torch.Tensor, g: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                   h0: torch.Tensor | None = None) -> torch.Tensor:
        """Equations (1)-(6) alone, given the context g (ignored when ``context=False``): the input-side
        products for all steps in one matmul per stream, then the fused recurrence op."""
        self._check(z, g, h0)
        x_r, x_z, x_g = self._input_side(z, g)
        W_hg, W_gu = (self.W_hg.weight, self.W_gu.weight) if self.context else (None, None)
        return mfdr_kernels.gated_context_recurrence(
            x_r, x_z, x_g, self.W_hr.weight, self.W_hz.weight, W_hg, self.W_hu.weight, self.W_zu.weight, W_gu,
            self.b_u, lengths=lengths, h0=h0, backend=self.backend)

    def _check(self, z, g, h0) -> tuple[int, int, int]:
        _check_z(self, z)
        if self.context:
            if g is None or not isinstance(g, torch.Tensor) or g.shape != z.shape:
                raise ValueError(f"g must have the shape of z {tuple(z.shape)}, got "
                                 f"{tuple(g.shape) if isinstance(g, torch.Tensor) else g!r}")
            _checks.like("g", g, z, "z")
        B, L, D = z.shape
        if h0 is not None:
            _checks.tensor("h0", h0, range(9))  # any rank: the shape check below names the one expected
            if h0.shape != (B, D):
                raise ValueError(f"h0 must have shape ({B}, {D}), got {tuple(h0.shape)}")
            _checks.like("h0", h0, z, "z")
        return B, L, D


class MGRU(GCPU):
    """Two-stream GRU with the complementary update (Table 3 "MGRU", the paper's Fig. 4a).

    Same inputs, reset gate (1) and candidates (2)-(4) as :class:`GCPU`; the update gate is a GRU's,
    computed from the inputs and the previous state, and the update is complementary::

        u_t = σ(W_zu z_t + W_gu g_t + W_hu h_{t-1} + b_u)
        h_t = (1 - u_t) ⊙ h_{t-1} + u_t ⊙ h̃_t

    ``W_zu``/``W_gu`` therefore read z and g here, not z̃ and g̃. ``context=False`` drops g as in GCPU.
    """

    def _input_side(self, z, g):
        D = self.dim
        xz = F.linear(z, torch.cat([self.W_zr.weight, self.W_zz.weight, self.W_zu.weight]),
                      torch.cat([self.b_r, self.b_z, self.b_u]))
        r_in, zz_in, u_in = xz.split(D, dim=-1)
        if not self.context:
            return r_in, zz_in, None, u_in
        xg = F.linear(g, torch.cat([self.W_gr.weight, self.W_gg.weight, self.W_gu.weight]))
        gr, gg, gu = xg.split(D, dim=-1)
        return r_in + gr, zz_in, gg + self.b_g, u_in + gu

    def recurrence(self, z, g=None, lengths=None, h0=None):
        B, L, D = self._check(z, g, h0)
        valid = _valid_steps(lengths, B, L, z.device)
        r_in, zz_in, gg_in, u_in = (None if x is None else x.unbind(1) for x in self._input_side(z, g))
        W_prev = torch.cat([self.W_hr.weight, self.W_hu.weight])  # h -> r, u
        W_rh = torch.cat([self.W_hz.weight] + ([self.W_hg.weight] if self.context else []))  # r⊙h -> z̃ (, g̃)
        keep = None if valid is None else valid[..., None].unbind(1)
        h = z.new_zeros(B, D) if h0 is None else h0
        out = []
        for t in range(L):
            hr, hu = F.linear(h, W_prev).split(D, dim=-1)
            r = torch.sigmoid(r_in[t] + hr)
            u = torch.sigmoid(u_in[t] + hu)
            hz, *hg = F.linear(r * h, W_rh).split(D, dim=-1)
            cand = torch.tanh(zz_in[t] + hz)
            if self.context:
                cand = cand + torch.tanh(gg_in[t] + hg[0])
            h_new = (1 - u) * h + u * cand
            h = h_new if keep is None else torch.where(keep[t], h_new, h)
            out.append(h)
        H = torch.stack(out, 1)
        return H if valid is None else H.masked_fill(~valid[..., None], 0.0)


class _GRUWeights(nn.Module):
    """The parameters of a one-layer ``nn.GRU(dim, dim)``, with its names and initialization, in a plain
    module: ``torch.compile(fullgraph=True)`` refuses ``nn.GRU`` modules but traces ``torch.gru``."""

    def __init__(self, dim: int):
        super().__init__()
        self.hidden_size = dim
        bound = dim**-0.5
        for name, shape in (("weight_ih_l0", (3 * dim, dim)), ("weight_hh_l0", (3 * dim, dim)),
                            ("bias_ih_l0", (3 * dim,)), ("bias_hh_l0", (3 * dim,))):
            self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, {self.hidden_size}, batch_first=True"

    def forward(self, z: torch.Tensor, hx: torch.Tensor) -> torch.Tensor:  # (B, L, D), (1, B, D) -> (B, L, D)
        weights = [self.weight_ih_l0, self.weight_hh_l0, self.bias_ih_l0, self.bias_hh_l0]
        H, _ = torch.gru(z, hx, weights, True, 1, 0.0, self.training, False, True)
        return H


class GRUContext(nn.Module):
    """A GRU over z alone (Table 3 "GRU"): ``forward(z, lengths=None) -> H (B, L, dim)``, padded steps zero.

    Unidirectional, so a valid step never sees the padding after it. ``gru`` holds the weights of a
    one-layer ``nn.GRU(dim, dim)`` under its parameter names and runs the same op (``torch.gru``).
    """

    def __init__(self, dim: int = 256):
        super().__init__()
        self.dim = _checks.positive_int("dim", dim)
        self.gru = _GRUWeights(self.dim)

    def forward(self, z: torch.Tensor, lengths: torch.Tensor | None = None,
                h0: torch.Tensor | None = None) -> torch.Tensor:
        _check_z(self, z)
        if h0 is not None:
            _checks.tensor("h0", h0, range(9))
            if h0.shape != (z.shape[0], self.dim):
                raise ValueError(f"h0 must have shape ({z.shape[0]}, {self.dim}), got {tuple(h0.shape)}")
            _checks.like("h0", h0, z, "z")
        valid = _valid_steps(lengths, z.shape[0], z.shape[1], z.device)
        z = _zero_padded(z, valid)  # not read by valid steps, but the backward multiplies through them
        H = self.gru(z, z.new_zeros(1, z.shape[0], self.dim) if h0 is None else h0[None].to(z.dtype))
        return H if valid is None else H.masked_fill(~valid[..., None], 0.0)
