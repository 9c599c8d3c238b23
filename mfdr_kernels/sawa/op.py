"""The public SAWA op: argument checks, backend choice, ``torch.library`` custom ops and autograd.

The ladder, one name per rung (after Liger; the same scheme in ``dfc/`` and ``gcpu/``)::

    kernel      triton_impl._sawa_fwd_kernel, _sawa_bwd_q_kernel, _sawa_bwd_kv_kernel (Triton);
                sawa_fwd_kernel, sawa_bwd_kernel (csrc/sawa.cpp)
    launcher    sawa_fwd, sawa_bwd in triton_impl, cpp_impl, torch_impl
    C++ op      torch.ops.mfdr_C.sawa_fwd_cpu, sawa_bwd_cpu (csrc/sawa.cpp; what cpp_impl calls)
    custom op   mfdr_kernels::sawa_fwd_op, sawa_bwd_op (here: fake kernels, registered autograd)

A backend whose backward reads more than the inputs and the levels returns it from its ``sawa_fwd`` launcher
as a third value, which the custom op saves and hands to ``sawa_bwd`` as ``saved`` (:func:`_saved`): the
``cpp`` backend's per-slot softmax weights. The other launchers return ``(out, level)`` and ignore ``saved``.
    functional  sliding_adaptive_window_attention (here)
    module      mfdr.sawa.SAWALayer

Shape, dtype and device checks happen once, in Python, before the op (they trace under
``torch.compile``). Value checks (lengths, window starts, forced levels) read the data, so they follow
``MFDR_KERNELS_CHECK_VALUES`` (default: CPU tensors only; never while tracing); whatever the flag, the
lengths and starts the custom ops receive are sanitized by clamps that read no value
(:func:`_sanitized`), so no kernel reads or writes out of bounds and no step syncs with the host.
Under ``torch.autocast`` the floating inputs are cast to the autocast dtype (matmul-like policy).
"""

from __future__ import annotations

import math

import torch

from .. import _backends, _checks
from . import reference

NORMALIZE = ("segment", "joint")


CHECKS = _backends.checks(
    cpp=(torch.float32, torch.float64, torch.bfloat16),
    triton_cuda=(torch.float16, torch.bfloat16, torch.float32),
    triton_cpu=(torch.float32, torch.float64),
)


def _impl(backend: str):
    return _backends.implementation(__package__, backend)


def _check_values(q_lens, k_lens, starts, force_level, L, T, levels):
    """Data-dependent checks (they read the values): run only where ``_checks.values_checked`` says so
    (``MFDR_KERNELS_CHECK_VALUES``; by default on CPU tensors, where they cost no device sync)."""
    if not _checks.values_checked(starts):
        return
    _checks.in_range("q_lens", q_lens, 0, L)
    _checks.in_range("k_lens", k_lens, 0, T)
    valid = torch.arange(L, device=starts.device)[None, :] < q_lens[:, None]
    if bool((starts.lt(0) & valid).any()):
        raise ValueError(f"window_starts must be >= 0 for valid queries, got minimum {int(starts[valid].min())}")
    if L > 1 and bool(((starts[:, 1:] < starts[:, :-1]) & valid[:, 1:]).any()):
        raise ValueError("window_starts must be non-decreasing over the valid queries (i < q_len) of each sample")
    if force_level is not None:
        _checks.in_range("force_level", force_level, 0, levels)


def _sanitized(q_lens, k_lens, starts, force_level, L, T, levels):
    """What the kernels receive, computed without reading a value (no host sync; traces under
    ``torch.compile``): lengths clamped to ``[0, L]`` / ``[0, T]``; starts clamped to ``[0, T]``, padded
    queries' entries set to ``T``, and made non-decreasing by a running maximum (the identity on valid
    input); forced levels clamped to ``[0, levels]`` as int8. Unchecked values can therefore give a
    wrong answer on an accelerator, never an out-of-bounds read or write."""
    q_lens, k_lens = q_lens.clamp(0, L), k_lens.clamp(0, T)
    valid = torch.arange(L, device=starts.device)[None, :] < q_lens[:, None]
    starts = torch.where(valid, starts.clamp(0, T), T)
    if L > 1:
        starts = starts.cummax(1).values
    if force_level is not None:
        force_level = force_level.clamp(0, levels).to(torch.int8)
    return q_lens, k_lens, starts.contiguous(), force_level


def _layout(backend: str, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The layout a backend's kernels read: ``cpp`` takes any ``(B, H, N, d)`` view whose last dim is
    contiguous (the heads of a ``(B, N, H*d)`` projection, ``x.view(B, N, H, d).transpose(1, 2)``, with no
    copy; its gradients come back in the same layout), the others contiguous tensors."""
    if backend == "cpp":
        return tuple(t if t.stride(-1) == 1 or t.shape[-1] <= 1 else t.contiguous() for t in tensors)
    return tuple(t.contiguous() for t in tensors)


def _saved(q: torch.Tensor, window: int, backend: str, make=None) -> torch.Tensor:
    """The forward's third output, what the backend's backward reads besides the inputs and the levels
    (``make``: ``q.new_empty`` by default): for ``cpp`` the weights per slot of each query's span
    ``[s - ω, s + 2ω)``, ``(B, H, L, 3ω)`` in the kernels' accumulation dtype (0.75 MiB at the paper's shape;
    recomputing them in the backward made forward+backward 1.16-1.26x slower); for the others an empty tensor."""
    if backend != "cpp":
        return q.new_empty(0)
    B, H, L, _ = q.shape
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    return (make or q.new_empty)(B, H, L, 3 * window, dtype=acc)


@torch.library.custom_op("mfdr_kernels::sawa_fwd_op", mutates_args=())
def sawa_fwd_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens: torch.Tensor, k_lens: torch.Tensor,
    starts: torch.Tensor, force_level: torch.Tensor | None, window: int, levels: int, joint: bool,
    scale: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    B, H, L, _ = q.shape
    _checks.finite_if_asked(q=q, k=k, v=v)
    if q.numel() == 0 or k.numel() == 0:
        return (q.new_zeros(B, H, L, v.shape[-1]), torch.zeros(B, H, L, dtype=torch.int8, device=q.device),
                _saved(q, window, backend, q.new_zeros))
    res = _impl(backend).sawa_fwd(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale)
    return res if len(res) == 3 else (*res, _saved(q, window, backend))


@sawa_fwd_op.register_fake
def _(q, k, v, q_lens, k_lens, starts, force_level, window, levels, joint, scale, backend):
    B, H, L, _ = q.shape
    return q.new_empty(B, H, L, v.shape[-1]), q.new_empty(B, H, L, dtype=torch.int8), _saved(q, window, backend)


@torch.library.custom_op("mfdr_kernels::sawa_bwd_op", mutates_args=())
def sawa_bwd_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_lens: torch.Tensor,
    k_lens: torch.Tensor, starts: torch.Tensor, level: torch.Tensor, saved: torch.Tensor, window: int, joint: bool,
    scale: float, backend: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if q.numel() == 0 or k.numel() == 0:
        return torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
    return _impl(backend).sawa_bwd(
        *_layout(backend, grad_out), q, k, v, q_lens, k_lens, starts, level.contiguous(), window, joint, scale,
        saved=saved,
    )


@sawa_bwd_op.register_fake
def _(grad_out, q, k, v, q_lens, k_lens, starts, level, saved, window, joint, scale, backend):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, q_lens, k_lens, starts, _force, window, _levels, joint, scale, backend = inputs
    ctx.mark_non_differentiable(output[1], output[2])
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the levels: _backward ignores it
    ctx.save_for_backward(q, k, v, q_lens, k_lens, starts, output[1], output[2])
    ctx.args = (window, joint, scale, backend)


def _backward(ctx, grad_out, _grad_level, _grad_saved):
    if grad_out is None:  # gradients are not materialized: none reached out
        return (None,) * 12
    q, k, v, q_lens, k_lens, starts, level, saved = ctx.saved_tensors
    window, joint, scale, backend = ctx.args
    dq, dk, dv = sawa_bwd_op(*_layout(backend, grad_out), q, k, v, q_lens, k_lens, starts, level, saved, window,
                             joint, scale, backend)
    return dq, dk, dv, None, None, None, None, None, None, None, None, None


# Every call, eager or traced, goes through the custom op: a plain torch.autograd.Function beside it, which
# skips the dispatcher, made the MFDR training step no faster (README, "Backends").
sawa_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _prepare(q, k, v, window, hop, levels, normalize, scale, q_lens, k_lens, window_starts, force_level):
    """Checks shapes, dtypes, devices and options; returns the normalized arguments."""
    _checks.tensor("q", q, 4)
    _checks.tensor("k", k, 4)
    if v is not None:
        _checks.tensor("v", v, 4)
    _checks.same_dtype_device(q=q, k=k, v=v)
    B, H, L, d = q.shape
    T = k.shape[2]
    if tuple(k.shape[:2]) != (B, H):
        raise ValueError(f"k must have batch and heads {(B, H)} like q, got shape {tuple(k.shape)}")
    if k.shape[3] != d:
        raise ValueError(f"k must have head dim {d} like q, got shape {tuple(k.shape)}")
    if v is not None and tuple(v.shape[:3]) != (B, H, T):
        raise ValueError(f"v must have shape (B, H, T, dv) = {(B, H, T)} + (dv,), got {tuple(v.shape)}")
    if d == 0 or (v is not None and v.shape[3] == 0):
        raise ValueError(f"head dims must be >= 1, got q {tuple(q.shape)}, v {None if v is None else tuple(v.shape)}")
    window = _checks.positive_int("window", window)
    levels = _checks.positive_int("levels", levels, minimum=0)
    if levels > 2:
        raise ValueError(f"levels must be 0, 1 or 2, got {levels}")
    if levels > 0 and window % 2:
        raise ValueError(f"window must be even when levels > 0 (half windows are sliced), got {window}")
    hop = max(1, window // 2) if hop is None else _checks.positive_int("hop", hop)
    # Bound window and hop by the keys without changing any result, so that no huge value reaches a
    # kernel (buffers of 3ω per row, int32 offsets in Triton, i * hop overflowing int64). Starts are
    # clipped to T, so a hop > T only ever gives starts i * hop >= T. With ω >= 2T + 2, half >= T + 1
    # exceeds every |S0| <= T (no expansion is ever decided), S0 = [s, k_len), S1 = [0, s) and S2 is
    # empty, the same for every such ω (forced levels included).
    window = min(window, 2 * T + 2)
    hop = min(hop, T + 1)
    joint = _checks.choice("normalize", normalize, NORMALIZE) == "joint"
    scale = 1.0 / math.sqrt(d) if scale is None else _checks.finite_float("scale", scale)
    dev = q.device
    q_lens = torch.full((B,), L, dtype=torch.int64, device=dev) if q_lens is None else _checks.int_tensor(
        "q_lens", q_lens, (B,), dev)
    k_lens = torch.full((B,), T, dtype=torch.int64, device=dev) if k_lens is None else _checks.int_tensor(
        "k_lens", k_lens, (B,), dev)
    if window_starts is None:
        starts = (torch.arange(L, device=dev, dtype=torch.int64) * hop).expand(B, L).contiguous()
    else:
        starts = _checks.int_tensor("window_starts", window_starts, (B, L), dev)
    if force_level is not None:
        force_level = _checks.int_tensor("force_level", force_level, (B, H, L), dev)
    _check_values(q_lens, k_lens, starts, force_level, L, T, levels)
    q_lens, k_lens, starts, force_level = _sanitized(q_lens, k_lens, starts, force_level, L, T, levels)
    return window, levels, joint, scale, q_lens, k_lens, starts, force_level


def sliding_adaptive_window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int = 10, hop: int | None = None,
    levels: int = 2, normalize: str = "segment", scale: float | None = None, q_lens=None, k_lens=None,
    window_starts=None, backend: str | None = None, return_level: bool = False, force_level=None,
):
    """Sliding adaptive window attention (SPEC §1; the paper's SAWA with Algorithm 1).

    Query ``i`` (a word) attends to the audio frames of its window ``[s_i, s_i + window)``, with
    ``s_i = i * hop`` or ``window_starts[b, i]``; when enough of the window's weights are above
    their mean, the window widens by the neighbour half-windows (level 1), and again (level 2), up
    to three times its width.

    Args:
        q: ``(B, H, L, d)`` queries (text tokens); k: ``(B, H, T, d)``; v: ``(B, H, T, dv)`` (audio frames).
        window: ω ≥ 1 (even when ``levels > 0``). hop: default ``max(1, ω // 2)``.
        levels: 0 (fixed window), 1 or 2 expansion levels.
        normalize: ``"segment"`` (paper: one softmax per segment) or ``"joint"`` (one per row).
        scale: default ``1 / sqrt(d)``. q_lens, k_lens: ``(B,)`` valid counts (default: all).
        window_starts: ``(B, L)`` start frames, non-decreasing over the valid queries.
        backend: ``"triton"``, ``"cpp"``, ``"torch"``, ``"reference"`` or None (fastest that runs;
            ``MFDR_KERNELS_BACKEND`` overrides None).
        return_level: also return the ``(B, H, L)`` int8 levels.
        force_level: ``(B, H, L)`` levels to take instead of deciding (tests and analysis).

    Returns:
        ``out (B, H, L, dv)``, or ``(out, level)``. Padded queries and empty windows give 0.
    """
    q, k, v = _checks.autocast_inputs(q, k, v)
    window, levels, joint, scale, q_lens, k_lens, starts, force_level = _prepare(
        q, k, v, window, hop, levels, normalize, scale, q_lens, k_lens, window_starts, force_level)
    name = _backends.choose("sliding_adaptive_window_attention", backend, CHECKS, (q, k, v))
    if name == "reference":
        _checks.finite_if_asked(q=q, k=k, v=v)
        out, level = reference.sawa_reference(q, k, v, window=window, levels=levels, joint=joint, scale=scale,
                                              q_lens=q_lens, k_lens=k_lens, starts=starts, force_level=force_level)
    else:
        out, level, _ = sawa_fwd_op(*_layout(name, q, k, v), q_lens, k_lens, starts, force_level, window, levels,
                                    joint, scale, name)
    return (out, level) if return_level else out


def sawa_attention_map(
    q: torch.Tensor, k: torch.Tensor, *, window: int = 10, hop: int | None = None, levels: int = 2,
    normalize: str = "segment", scale: float | None = None, q_lens=None, k_lens=None, window_starts=None,
    return_level: bool = False, force_level=None,
):
    """Dense ``(B, H, L, T)`` SAWA weights: the paper's ``diag_att`` (reference loop; for plots and tests)."""
    window, levels, joint, scale, q_lens, k_lens, starts, force_level = _prepare(
        q, k, None, window, hop, levels, normalize, scale, q_lens, k_lens, window_starts, force_level)
    _checks.finite_if_asked(q=q, k=k)
    att, level = reference.sawa_attention_map_reference(
        q, k, window=window, levels=levels, joint=joint, scale=scale, q_lens=q_lens, k_lens=k_lens,
        starts=starts, force_level=force_level)
    return (att, level) if return_level else att
