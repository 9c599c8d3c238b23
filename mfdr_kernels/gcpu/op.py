"""The public GCPU recurrence op: argument checks, backend choice, ``torch.library`` custom ops and autograd.

The ladder, one name per rung (after Liger; the same scheme in ``sawa/`` and ``dfc/``)::

    kernel      triton_impl._gcpu_fwd_kernel, _gcpu_bwd_kernel (Triton);
                gcpu_fwd_kernel, gcpu_bwd_kernel (csrc/gcpu.cpp)
    launcher    gcpu_fwd, gcpu_bwd in triton_impl, cpp_impl, torch_impl
    C++ op      torch.ops.mfdr_C.gcpu_fwd_cpu, gcpu_bwd_cpu (csrc/gcpu.cpp; what cpp_impl calls)
    custom op   mfdr_kernels::gcpu_fwd_op, gcpu_bwd_op (here: fake kernels, registered autograd)
    functional  gated_context_recurrence (here)
    module      mfdr.gcpu.GCPU (its ``recurrence``)

Shape, dtype and device checks happen once, in Python, before the op (they trace under
``torch.compile``). The one value check (``lengths`` in ``[0, L]``) follows ``MFDR_KERNELS_CHECK_VALUES``
(default: CPU tensors only; never while tracing); whatever the flag, every kernel clamps the lengths it
reads to ``[0, L]``, so unchecked values never read or write out of bounds (and cost no clamp launch).
Under ``torch.autocast`` the floating inputs are cast to the autocast dtype (matmul-like policy); the
kernels accumulate in fp32.

The launchers of every backend (``torch_impl``, ``cpp_impl``, ``triton_impl``) take contiguous inputs of
one dtype and device, ``lengths`` an int64 ``(B,)`` tensor (values clamped to ``[0, L]`` by the kernels)
and ``h0`` a ``(B, D)`` tensor or None (a zero state)::

    gcpu_fwd(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0) -> (H, gates)
        H (B, L, D) in the input dtype; gates (B, L, G, D) in fp32 (fp64 for fp64 inputs), the slots
        [r, z̃, u, g̃] of every step (G = 4; 3 without context, no g̃), finite at padded steps
    gcpu_bwd(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0)
        -> (dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh0), each in its input's
        dtype; dx_g, dW_hg, dW_gu None without context

The forward saves no state but H: h_{t-1} of a valid step t is ``H[:, t-1]`` (or ``h0``), since the valid
steps of a sample are a prefix. The backward walks the steps in reverse (backpropagation through time,
the products with the state only) and takes the weight gradients after its loop, one product each over
all ``B·L`` rows, in which padded rows have zero gradients.
"""

from __future__ import annotations

import torch

from .. import _backends, _checks
from . import reference

CHECKS = _backends.checks(
    cpp=(torch.float32, torch.float64, torch.bfloat16),
    triton_cuda=(torch.float16, torch.bfloat16, torch.float32),
    triton_cpu=(torch.float32, torch.float64),
)

_WEIGHTS = ("W_hr", "W_hz", "W_hg", "W_hu", "W_zu", "W_gu")


def _impl(backend: str):
    return _backends.implementation(__package__, backend)


def _gate_count(context: bool) -> int:
    """Slots of the saved gates: r, z̃, u (, g̃)."""
    return 4 if context else 3


@torch.library.custom_op("mfdr_kernels::gcpu_fwd_op", mutates_args=())
def gcpu_fwd_op(
    x_r: torch.Tensor, x_z: torch.Tensor, x_g: torch.Tensor | None, W_hr: torch.Tensor, W_hz: torch.Tensor,
    W_hg: torch.Tensor | None, W_hu: torch.Tensor, W_zu: torch.Tensor, W_gu: torch.Tensor | None,
    b_u: torch.Tensor, lengths: torch.Tensor, h0: torch.Tensor | None, backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    _checks.finite_if_asked(x_r=x_r, x_z=x_z, x_g=x_g, W_hr=W_hr, W_hz=W_hz, W_hg=W_hg, W_hu=W_hu, W_zu=W_zu,
                            W_gu=W_gu, b_u=b_u, h0=h0)
    if x_r.numel() == 0:
        return _empty_forward(x_r, x_g is not None)
    return _impl(backend).gcpu_fwd(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0)


def _empty_forward(x_r, context):
    B, L, D = x_r.shape
    acc = torch.float64 if x_r.dtype == torch.float64 else torch.float32
    return x_r.new_zeros(B, L, D), x_r.new_zeros(B, L, _gate_count(context), D, dtype=acc)


@gcpu_fwd_op.register_fake
def _(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0, backend):
    return _empty_forward(x_r, x_g is not None)


@torch.library.custom_op("mfdr_kernels::gcpu_bwd_op", mutates_args=())
def gcpu_bwd_op(
    grad_H: torch.Tensor, H: torch.Tensor, gates: torch.Tensor, W_hr: torch.Tensor, W_hz: torch.Tensor,
    W_hg: torch.Tensor | None, W_hu: torch.Tensor, W_zu: torch.Tensor, W_gu: torch.Tensor | None,
    lengths: torch.Tensor, h0: torch.Tensor | None, backend: str,
) -> list[torch.Tensor]:
    """The gradients as a list: ``[dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0]`` and, with context,
    ``dx_g, dW_hg, dW_gu`` after them (a custom op cannot return None)."""
    if H.numel() == 0:
        grads = _empty_backward(H, W_hr, W_hg is not None)
    else:
        dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh0 = _impl(backend).gcpu_bwd(
            grad_H.contiguous(), H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0)
        grads = [dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0]
        if W_hg is not None:
            grads += [dx_g, dW_hg, dW_gu]
    return grads


def _empty_backward(H, W_hr, context):
    B, L, D = H.shape
    dx, dW = H.new_zeros(B, L, D), W_hr.new_zeros(D, D)
    grads = [dx, dx.clone(), dW, dW.clone(), dW.clone(), dW.clone(), W_hr.new_zeros(D), H.new_zeros(B, D)]
    return grads + ([dx.clone(), dW.clone(), dW.clone()] if context else [])


@gcpu_bwd_op.register_fake
def _(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0, backend):
    return _empty_backward(H, W_hr, W_hg is not None)


def _setup_context(ctx, inputs, output):
    _x_r, _x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, _b_u, lengths, h0, backend = inputs
    H, gates = output
    ctx.mark_non_differentiable(gates)
    ctx.set_materialize_grads(False)  # no zero-filled gradient for the gates (B, L, G, D): _backward ignores it
    ctx.save_for_backward(H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0)
    ctx.backend = backend


def _backward(ctx, grad_H, _grad_gates):
    if grad_H is None:  # gradients are not materialized: none reached H
        return (None,) * 13
    H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0 = ctx.saved_tensors
    grads = gcpu_bwd_op(grad_H.contiguous(), H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0, ctx.backend)
    dx_r, dx_z, dW_hr, dW_hz, dW_hu, dW_zu, db_u, dh0 = grads[:8]
    dx_g, dW_hg, dW_gu = grads[8:] if W_hg is not None else (None, None, None)
    return dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, None, None if h0 is None else dh0, None


# Every call, eager or traced, goes through the custom op: a plain torch.autograd.Function beside it, which
# skips the dispatcher, made the MFDR training step no faster (README, "Backends").
gcpu_fwd_op.register_autograd(_backward, setup_context=_setup_context)


def _check(x_r, x_z, x_g, weights: dict, b_u, lengths, h0):
    """Checks shapes, dtypes, devices and the context arguments; returns ``lengths`` as an int64 tensor
    (its values checked where ``MFDR_KERNELS_CHECK_VALUES`` says so; the kernels clamp them regardless)."""
    _checks.tensor("x_r", x_r, 3)
    B, L, D = x_r.shape
    context = x_g is not None
    for name in ("W_hg", "W_gu"):
        if (weights[name] is None) == context:
            given = "given" if context else "None"
            raise ValueError(f"{name} must be {'a (D, D) tensor' if context else 'None'} when x_g is {given} "
                             f"(context={context}: x_g, W_hg and W_gu are all given or all None), "
                             f"got {'None' if weights[name] is None else type(weights[name]).__name__}")
    for name, x in (("x_z", x_z), ("x_g", x_g)):
        if x is not None:
            _checks.tensor(name, x, 3)
            if x.shape != x_r.shape:
                raise ValueError(f"{name} must have the shape of x_r (B, L, D) = {(B, L, D)}, got {tuple(x.shape)}")
    for name, W in weights.items():
        if W is not None:
            _checks.tensor(name, W, 2)
            if W.shape != (D, D):
                raise ValueError(f"{name} must have shape (D, D) = {(D, D)} for x_r of shape {(B, L, D)}, "
                                 f"got {tuple(W.shape)}")
    _checks.tensor("b_u", b_u, 1)
    if b_u.shape != (D,):
        raise ValueError(f"b_u must have shape (D,) = {(D,)}, got {tuple(b_u.shape)}")
    if h0 is not None:
        _checks.tensor("h0", h0, range(9))  # any rank: the shape check below names the one expected
        if h0.shape != (B, D):
            raise ValueError(f"h0 must have shape (B, D) = {(B, D)}, got {tuple(h0.shape)}")
    _checks.same_dtype_device(x_r=x_r, x_z=x_z, x_g=x_g, **weights, b_u=b_u, h0=h0)
    dev = x_r.device
    if lengths is None:
        lengths = torch.full((B,), L, dtype=torch.int64, device=dev)
    else:
        lengths = _checks.lengths("lengths", lengths, B, 0, L, dev)
    return lengths


def gated_context_recurrence(
    x_r: torch.Tensor, x_z: torch.Tensor, x_g: torch.Tensor | None, W_hr: torch.Tensor, W_hz: torch.Tensor,
    W_hg: torch.Tensor | None, W_hu: torch.Tensor, W_zu: torch.Tensor, W_gu: torch.Tensor | None,
    b_u: torch.Tensor, *, lengths=None, h0: torch.Tensor | None = None, backend: str | None = None,
) -> torch.Tensor:
    """The GCPU recurrence (SPEC §3; the paper's eqs. 1-6), fused: the loop over the steps inside the op.

    Given the input-side terms of all steps (``x_r = W_zr z + W_gr g + b_r``, ``x_z = W_zz z + b_z``,
    ``x_g = W_gg g + b_g``: one batched matmul before the op), per step t, with ``h = h_{t-1}``::

        r  = σ(x_r[t] + W_hr h);  rh = r ⊙ h                 (1)
        z̃  = tanh(x_z[t] + W_hz rh)                          (2)
        g̃  = tanh(x_g[t] + W_hg rh)                          (3)
        u  = σ(W_zu z̃ + W_gu g̃ + W_hu rh + b_u)              (5)
        h_t = rh + u ⊙ (z̃ + g̃)                              (4), (6)

    Steps ``t >= lengths[b]`` carry ``h`` and output 0. The backward is backpropagation through time
    inside the op; the weight gradients are single products over all ``B·L`` rows after its loop.

    Args:
        x_r, x_z, x_g: ``(B, L, D)`` input-side terms. ``x_g``, ``W_hg`` and ``W_gu`` are all None
            without context ("w/o Context": no g̃, ``h̃ = z̃``, no ``W_gu`` term).
        W_hr, W_hz, W_hg, W_hu, W_zu, W_gu: ``(D, D)`` weights in the ``nn.Linear`` convention (``W x``
            is ``x @ W.T``). b_u: ``(D,)``.
        lengths: ``(B,)`` valid steps per sample, in ``[0, L]`` (default: all ``L``).
        h0: ``(B, D)`` initial state (default 0).
        backend: ``"triton"``, ``"cpp"``, ``"torch"``, ``"reference"`` or None (fastest that runs;
            ``MFDR_KERNELS_BACKEND`` overrides None).

    Returns:
        ``H (B, L, D)``, the states, zero at padded steps. Gradients flow to every floating input.
    """
    x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, h0 = _checks.autocast_inputs(
        x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, h0)
    weights = dict(zip(_WEIGHTS, (W_hr, W_hz, W_hg, W_hu, W_zu, W_gu), strict=True))
    lengths = _check(x_r, x_z, x_g, weights, b_u, lengths, h0)
    name = _backends.choose("gated_context_recurrence", backend, CHECKS, (x_r, x_z))
    if name == "reference":
        _checks.finite_if_asked(x_r=x_r, x_z=x_z, x_g=x_g, **weights, b_u=b_u, h0=h0)
        return reference.gcpu_reference(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0)
    inputs = [None if t is None else t.contiguous() for t in (x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu,
                                                              b_u)]
    h0 = None if h0 is None else h0.contiguous()
    H, _gates = gcpu_fwd_op(*inputs, lengths, h0, name)
    return H
