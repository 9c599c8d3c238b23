"""Vectorized PyTorch GCPU recurrence: forward and explicit backpropagation through time; any device,
any floating dtype; the fallback backend.

The loop over t stays in Python (one small batch of aten ops per step), but it is the fused
algorithm of the ``cpp`` and ``triton`` kernels, not autograd through the loop: the forward saves the
gates of every step into one ``(B, L, G, D)`` buffer, the backward walks the steps in reverse doing
only the products with the state, and the weight gradients are taken after the loop as single
products over all ``B·L`` rows. Arithmetic is in float32 for half-precision inputs (float64 for float64).

Arguments are the checked ones of ``op.py`` (contiguous, one dtype and device, ``lengths`` int64, whose
values act as clamped to [0, L], ``h0`` a tensor or None); the launcher contract, shared by every backend,
is in ``op.py``'s docstring.
"""

from __future__ import annotations

import torch

# Slots of the saved gates (B, L, G, D): r, z̃, u, and g̃ last (absent without context).
R, Z, U, G = 0, 1, 2, 3


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the recurrence is computed and its gates are saved in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _acc(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


def gcpu_fwd(x_r, x_z, x_g, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, b_u, lengths, h0):
    """Returns ``(H (B, L, D) in the input dtype, gates (B, L, G, D) in the accumulation dtype)``."""
    context = x_g is not None
    B, L, D = x_r.shape
    dtype, acc = x_r.dtype, acc_dtype(x_r.dtype)
    x_r, x_z, x_g, W_hr, b_u = (_acc(t, acc) for t in (x_r, x_z, x_g, W_hr, b_u))
    # r⊙h -> W_hz, W_hu (, W_hg) in one product; [z̃ (, g̃)] -> u in one product
    W_rh = torch.cat([W_hz, W_hu] + ([W_hg] if context else [])).to(acc).T  # (D, 2|3 D)
    W_u = (torch.cat([W_zu, W_gu], 1) if context else W_zu).to(acc).T  # (D | 2D, D)
    gates = x_r.new_empty(B, L, 4 if context else 3, D)
    H = x_r.new_empty(B, L, D, dtype=dtype)
    valid = (torch.arange(L, device=x_r.device) < lengths[:, None])[..., None]  # (B, L, 1)
    h = x_r.new_zeros(B, D) if h0 is None else h0.to(acc)
    hr, rh, u_in = x_r.new_empty(B, D), x_r.new_empty(B, D), x_r.new_empty(B, D)
    p = x_r.new_empty(B, W_rh.shape[1])
    cand = x_r.new_empty(B, 2 * D) if context else None  # [z̃, g̃] side by side for the u product
    for t in range(L):
        r, z_c, u = gates[:, t, R], gates[:, t, Z], gates[:, t, U]
        torch.mm(h, W_hr.T, out=hr)
        torch.sigmoid(hr.add_(x_r[:, t]), out=r)  # (1)
        torch.mul(r, h, out=rh)
        torch.mm(rh, W_rh, out=p)  # [W_hz rh, W_hu rh (, W_hg rh)]
        torch.tanh(p[:, :D].add_(x_z[:, t]), out=z_c)  # (2)
        if context:
            g_c = gates[:, t, G]
            torch.tanh(p[:, 2 * D:].add_(x_g[:, t]), out=g_c)  # (3)
            cand[:, :D], cand[:, D:] = z_c, g_c
            torch.addmm(torch.add(p[:, D:2 * D], b_u, out=u_in), cand, W_u, out=hr)
            h_c = z_c + g_c  # (4)
        else:
            torch.addmm(torch.add(p[:, D:2 * D], b_u, out=u_in), z_c, W_u, out=hr)
            h_c = z_c
        torch.sigmoid(hr, out=u)  # (5)
        h_new = torch.addcmul(rh, u, h_c)  # (6)
        h = torch.where(valid[:, t], h_new, h)  # padded steps carry h ...
        H[:, t] = torch.where(valid[:, t], h, 0.0)  # ... and output 0
    gates.masked_fill_(~valid[..., None], 0.0)  # padded steps' gates: 0 whatever their inputs held
    return H, gates


def gcpu_bwd(grad_H, H, gates, W_hr, W_hz, W_hg, W_hu, W_zu, W_gu, lengths, h0):
    """Backpropagation through time; returns ``(dx_r, dx_z, dx_g, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu,
    dW_gu, db_u, dh0)``, each in the dtype of its input (the context ones None without context)."""
    context = W_hg is not None
    B, L, D = H.shape
    acc = gates.dtype
    dtype = H.dtype
    W_hr, W_hz, W_hg = (_acc(t, acc) for t in (W_hr, W_hz, W_hg))
    W_back = torch.cat([W_zu, W_gu, W_hu] if context else [W_zu, W_hu], 1).to(acc)  # d_au -> z̃ (, g̃), rh
    valid = (torch.arange(L, device=H.device) < lengths[:, None])[..., None]  # (B, L, 1)
    h0 = H.new_zeros(B, D, dtype=acc) if h0 is None else h0.to(acc)
    h_prev = torch.cat([h0[:, None], H[:, :-1].to(acc)], 1)  # (B, L, D): h_{t-1} of valid steps
    d_ar, d_az, d_au = (H.new_zeros(B, L, D, dtype=acc) for _ in range(3))
    d_ag = H.new_zeros(B, L, D, dtype=acc) if context else None
    dh = H.new_zeros(B, D, dtype=acc)
    q = H.new_empty(B, W_back.shape[1], dtype=acc)
    for t in reversed(range(L)):
        v = valid[:, t]  # (B, 1); at padded steps dh passes unchanged and every d_a is 0
        r, z_c, u = gates[:, t, R], gates[:, t, Z], gates[:, t, U]
        g_c = gates[:, t, G] if context else None
        dh_t = dh + grad_H[:, t].to(acc)
        h_c = z_c + g_c if context else z_c
        d_au[:, t] = torch.where(v, dh_t * h_c * u * (1 - u), 0.0)  # through (5)-(6)
        d_c = dh_t * u
        torch.mm(d_au[:, t], W_back, out=q)  # [W_zu^T d_au (, W_gu^T d_au), W_hu^T d_au]
        d_az[:, t] = torch.where(v, (d_c + q[:, :D]) * (1 - z_c * z_c), 0.0)  # (2)
        d_rh = dh_t + q[:, -D:] + d_az[:, t] @ W_hz
        if context:
            d_ag[:, t] = torch.where(v, (d_c + q[:, D:2 * D]) * (1 - g_c * g_c), 0.0)  # (3)
            d_rh = d_rh.addmm_(d_ag[:, t], W_hg)
        d_ar[:, t] = torch.where(v, d_rh * h_prev[:, t] * r * (1 - r), 0.0)  # (1)
        dh = torch.where(v, torch.addmm(d_rh * r, d_ar[:, t], W_hr), dh)
    # weight gradients: one product each over all B·L rows (padded rows have d_a = 0)
    rows = lambda x: x.reshape(B * L, D)  # noqa: E731
    rh = rows(gates[:, :, R] * h_prev)
    dW_hr = rows(d_ar).T @ rows(h_prev)
    dW_hz, dW_hu = rows(d_az).T @ rh, rows(d_au).T @ rh
    dW_zu = rows(d_au).T @ rows(gates[:, :, Z])
    dW_hg = rows(d_ag).T @ rh if context else None
    dW_gu = rows(d_au).T @ rows(gates[:, :, G]) if context else None
    db_u = rows(d_au).sum(0)
    cast = lambda x: None if x is None else x.to(dtype)  # noqa: E731
    return tuple(cast(x) for x in (d_ar, d_az, d_ag, dW_hr, dW_hz, dW_hg, dW_hu, dW_zu, dW_gu, db_u, dh))
