"""The public DFC op: argument checks, backend choice, ``torch.library`` custom ops and autograd.

The ladder, one name per rung (after Liger; the same scheme in ``sawa/`` and ``gcpu/``)::

    kernel      triton_impl._dfc_fwd_kernel, _dfc_bwd_dx_kernel, _dfc_bwd_dk_kernel (Triton);
                dfc_fwd_kernel, dfc_bwd_dx_kernel, dfc_bwd_dk_kernel (csrc/dfc.cpp)
    launcher    dfc_fwd, dfc_bwd in triton_impl, cpp_impl, torch_impl
    C++ op      torch.ops.mfdr_C.dfc_fwd_cpu, dfc_bwd_cpu (csrc/dfc.cpp; what cpp_impl calls)
    custom op   mfdr_kernels::dfc_fwd_op, dfc_bwd_op (here: fake kernels, registered autograd)
    functional  dynamic_frame_conv (here)
    module      mfdr.dfc.DynamicFrameConv

Every check is on shapes, dtypes and devices, so all of them happen once, in Python, before the op
(they trace under ``torch.compile``); the backends receive contiguous, consistent tensors. Under
``torch.autocast`` the floating inputs are first cast to the autocast dtype (matmul-like policy).
"""

from __future__ import annotations

import torch

from .. import _backends, _checks
from . import reference
from .reference import num_frames

CHECKS = _backends.checks(
    cpp=(torch.float32, torch.float64, torch.bfloat16),
    triton_cuda=(torch.float16, torch.bfloat16, torch.float32, torch.float64),
    triton_cpu=(torch.float32, torch.float64),
)


def _impl(backend: str):
    return _backends.implementation(__package__, backend)


@torch.library.custom_op("mfdr_kernels::dfc_fwd_op", mutates_args=())
def dfc_fwd_op(
    x: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor | None, frame: int, hop: int, backend: str
) -> torch.Tensor:
    _checks.finite_if_asked(x=x, kernel=kernel, bias=bias)  # data-dependent: inside the opaque op
    return _impl(backend).dfc_fwd(x, kernel, bias, frame, hop)


@dfc_fwd_op.register_fake
def _(x, kernel, bias, frame, hop, backend):
    B, L, C = x.shape
    return x.new_empty(B, num_frames(L, frame, hop), C)


@torch.library.custom_op("mfdr_kernels::dfc_bwd_op", mutates_args=())
def dfc_bwd_op(
    grad_y: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, frame: int, hop: int, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _impl(backend).dfc_bwd(grad_y.contiguous(), x, kernel, frame, hop)


@dfc_bwd_op.register_fake
def _(grad_y, x, kernel, frame, hop, backend):
    return torch.empty_like(x), torch.empty_like(kernel), x.new_empty(grad_y.shape[1], x.shape[2])


def _setup_context(ctx, inputs, output):
    x, kernel, bias, frame, hop, backend = inputs
    ctx.save_for_backward(x, kernel)
    ctx.args = (frame, hop, backend, 0 if bias is None else bias.dim())


def _backward(ctx, grad_y):
    x, kernel = ctx.saved_tensors
    frame, hop, backend, bias_dim = ctx.args
    dx, dk, dbias = dfc_bwd_op(grad_y.contiguous(), x, kernel, frame, hop, backend)  # dbias (N, C)
    dbias = None if bias_dim == 0 else dbias.sum(0) if bias_dim == 1 else dbias
    return dx, dk, dbias, None, None, None


# Every call, eager or traced, goes through the custom op: a plain torch.autograd.Function beside it, which
# skips the dispatcher, made the MFDR training step no faster (README, "Backends").
dfc_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x, kernel, bias, frame, hop):
    """Checks shapes, dtypes, devices and options; returns ``(frame, hop)`` as ints."""
    _checks.tensor("x", x, 3)
    _checks.tensor("kernel", kernel, (3, 4))
    if bias is not None:
        _checks.tensor("bias", bias, (1, 2))
    _checks.same_dtype_device(x=x, kernel=kernel, bias=bias)
    frame = _checks.positive_int("frame", frame)
    hop = _checks.positive_int("hop", hop)
    B, L, C = x.shape
    if L < frame:
        raise ValueError(f"x must have at least frame = {frame} rows (dim 1 of (B, L, C)), "
                         f"got shape {tuple(x.shape)}")
    N = num_frames(L, frame, hop)
    if kernel.shape[-1] != C:
        raise ValueError(f"kernel must have C = {C} channels (last dim) like x, "
                         f"got shape {tuple(kernel.shape)}")
    want = (N, frame, C) if kernel.dim() == 3 else (B, N, frame, C)
    if tuple(kernel.shape) != want:
        form = "(N, frame, C)" if kernel.dim() == 3 else "(B, N, frame, C)"
        raise ValueError(
            f"kernel must have shape {form} = {want} for x of shape {tuple(x.shape)}, frame={frame}, "
            f"hop={hop} (N = (L - frame) // hop + 1 = {N}), got {tuple(kernel.shape)}")
    if bias is not None and tuple(bias.shape) not in ((C,), (N, C)):
        raise ValueError(f"bias must have shape (C,) = {(C,)} or (N, C) = {(N, C)}, got {tuple(bias.shape)}")
    # any hop past L - frame gives one frame: cap it so no huge integer reaches a kernel (same N = 1)
    return frame, min(hop, L - frame + 1)


def dynamic_frame_conv(
    x: torch.Tensor, kernel: torch.Tensor, *, frame: int = 3, hop: int = 2, bias: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Dynamic frame convolution (SPEC §2; the paper's DFC, eq. 7-8).

    ``x`` is cut into ``N = (L - frame) // hop + 1`` frames of ``frame`` rows; each frame is reduced
    to one row by its private depthwise kernel (the "model-knowable pooling")::

        y[b, n, c] = Σ_{j < frame} kernel[n, j, c] * x[b, n*hop + j, c]  (+ bias)

    The fused backends never build the unfolded ``(B, N, frame, C)`` tensor.

    Args:
        x: ``(B, L, C)`` with ``L >= frame``.
        kernel: ``(N, frame, C)`` shared by the batch (its gradient is summed over the batch), or
            ``(B, N, frame, C)`` per sample.
        frame: rows per frame (the paper's ω_f) ≥ 1. hop: frame hop (h_f) ≥ 1.
        bias: None, ``(C,)`` or ``(N, C)``.
        backend: ``"triton"``, ``"cpp"``, ``"torch"``, ``"reference"`` or None (fastest that runs;
            ``MFDR_KERNELS_BACKEND`` overrides None).

    Returns:
        ``y (B, N, C)``. Gradients flow to ``x``, ``kernel`` and ``bias``.
    """
    x, kernel, bias = _checks.autocast_inputs(x, kernel, bias)
    frame, hop = _check(x, kernel, bias, frame, hop)
    name = _backends.choose("dynamic_frame_conv", backend, CHECKS, (x, kernel))
    if name == "reference":
        _checks.finite_if_asked(x=x, kernel=kernel, bias=bias)
        return reference.dfc_reference(x, kernel, bias, frame=frame, hop=hop)
    bias = None if bias is None else bias.contiguous()
    return dfc_fwd_op(x.contiguous(), kernel.contiguous(), bias, frame, hop, name)
