"""What a GPU run needs of the model (SPEC §7), rehearsed on the CPU for every Table-3 configuration:
no host sync in forward + backward, mixed precision under ``torch.autocast``, ``torch.compile(fullgraph=True)``
of forward and backward equal to eager, and a training loop that syncs once per logging interval."""

from __future__ import annotations

import pytest
import torch

from mfdr import MFDR, MFDRConfig
from mfdr.config import TABLE3
from mfdr_kernels.counting import DispatchCounter

BASE = MFDRConfig(num_classes=4, audio_dim=12, text_dim=10, audio_len=48, text_len=9, d_model=16, heads=2,
                  dfc_hidden=8, dropout=0.0)
ROWS = list(TABLE3)


def _model(name: str, seed: int = 0) -> MFDR:
    torch.manual_seed(seed)
    return MFDR(MFDRConfig.ablation(name, **BASE.to_dict()))


def _batch(B: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    audio = torch.randn(B, BASE.audio_len, BASE.audio_dim, generator=g)
    text = torch.randn(B, BASE.text_len, BASE.text_dim, generator=g)
    audio_lengths = torch.tensor([BASE.audio_len, 30, 17][:B])  # padded frames
    text_lengths = torch.tensor([BASE.text_len, 6, 3][:B])  # padded tokens
    return audio, text, audio_lengths, text_lengths


def _grads(model: MFDR) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# ----------------------------------------------------------------------------------- host syncs
def test_counter_sees_host_syncs():
    x = torch.arange(6.0)
    with DispatchCounter() as c:
        x.sum().item()
        bool(x.gt(2).any())
        x[x > 2]
        torch.nonzero(x)
    assert c.sync_ops["aten._local_scalar_dense"] == 2
    assert c.sync_ops["aten.index"] == 1 and c.sync_ops["aten.nonzero"] == 1


@pytest.mark.parametrize("name", ROWS)
def test_no_host_sync_in_forward_backward(name, monkeypatch):
    monkeypatch.setenv("MFDR_KERNELS_CHECK_VALUES", "0")  # what an accelerator gets by default
    model = _model(name)
    batch = _batch()
    model(*batch).sum().backward()  # warm-up: lazy initializations may read values once
    with DispatchCounter() as c:
        model(*batch).sum().backward()
    assert c.syncs == 0, f"{name}: host syncs {dict(c.sync_ops)}"
    assert c.ops > 0


def test_checks_still_run_on_cpu_by_default():
    model = _model("MFDR")
    audio, text, al, tl = _batch()
    with pytest.raises(ValueError, match=r"text_lengths must lie in \[1, 9\]"):
        model(audio, text, al, tl + 20)


def test_unchecked_bad_lengths_are_clamped_not_out_of_bounds(monkeypatch):
    """With the checks off, lengths past the tensors act as 'all valid' (clamped), never as a bad read."""
    monkeypatch.setenv("MFDR_KERNELS_CHECK_VALUES", "0")
    model = _model("MFDR").eval()
    audio, text, al, tl = _batch()
    with torch.no_grad():
        bad = model(audio, text, al + 1000, tl + 1000)
        full = model(audio, text, torch.full_like(al, BASE.audio_len), torch.full_like(tl, BASE.text_len))
    torch.testing.assert_close(bad, full)


# ----------------------------------------------------------------------------------- autocast
def _autocast_errors(model: MFDR, batch, ref, ref_grads) -> tuple[float, float]:
    """Relative errors of the bf16-autocast logits and gradients against fp32."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    grads = _grads(model)
    assert grads.keys() == ref_grads.keys()
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())  # weights stay fp32
    flat = lambda gs: torch.cat([gs[n].flatten() for n in sorted(ref_grads)])
    return (float((out.float() - ref).norm() / ref.norm()),
            float((flat(grads) - flat(ref_grads)).norm() / flat(ref_grads).norm()))


@pytest.mark.parametrize("name", ROWS)
def test_autocast_bf16_forward_backward(name):
    """Every row trains under bf16 autocast: bf16 logits, fp32 finite gradients, errors against fp32 of
    bf16 size. The kernels' own bf16 accuracy (2x PyTorch's error, given the same SAWA levels) is tested
    per op; here SAWA's decisions may flip on rows within bf16 rounding of a threshold (a few of ~50),
    which moves the logits by several percent, so the bound only rules out garbage (errors ~1)."""
    model = _model(name)
    batch = _batch()
    ref = model(*batch)
    ref.sum().backward()
    err, gerr = _autocast_errors(model, batch, ref, _grads(model))
    assert err < 0.25 and gerr < 0.5, f"{name}: relative error of the logits {err:.3g}, gradients {gerr:.3g}"


def test_autocast_mixed_input_dtypes_meet_in_the_ops():
    """The DFC kernel Φ (a conv chain ending in fp32 LayerNorm statistics) and x (bf16) reach the op
    with different dtypes under autocast; the op casts both to the autocast dtype."""
    from mfdr_kernels import dynamic_frame_conv, sliding_adaptive_window_attention

    x, phi = torch.randn(2, 9, 4, dtype=torch.bfloat16), torch.randn(4, 3, 4)
    q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 20, 8, dtype=torch.bfloat16), torch.randn(1, 1, 20, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = dynamic_frame_conv(x, phi)
        o = sliding_adaptive_window_attention(q, k, v, window=4)
    assert y.dtype == o.dtype == torch.bfloat16
    torch.testing.assert_close(y, dynamic_frame_conv(x, phi.bfloat16()))
    torch.testing.assert_close(o, sliding_adaptive_window_attention(q.bfloat16(), k, v.bfloat16(), window=4))
    with pytest.raises(TypeError, match="kernel must have the dtype of x"):  # outside autocast: an error
        dynamic_frame_conv(x, phi)


# ----------------------------------------------------------------------------------- torch.compile
@pytest.mark.parametrize("name", ROWS)
def test_compile_fullgraph_traces_forward_and_backward(name):
    """``aot_eager`` traces the whole forward and backward (fullgraph: any graph break fails) and runs
    the traced graphs with the eager kernels, so the results must match eager to fp32 rounding."""
    torch._dynamo.reset()
    model = _model(name)
    batch = _batch()
    ref = model(*batch)
    ref.sum().backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(*batch)
    out.sum().backward()
    torch.testing.assert_close(out, ref)
    grads = _grads(model)
    assert grads.keys() == ref_grads.keys()
    for n, g in ref_grads.items():
        torch.testing.assert_close(grads[n], g, msg=lambda m: f"{name}: {n}: {m}")


@pytest.mark.slow
def test_compile_inductor_default_config():
    """The real compiler (inductor, generated C++ on the CPU) for the paper's model, fp32 tolerance."""
    torch._dynamo.reset()
    model = _model("MFDR")
    batch = _batch()
    ref = model(*batch)
    ref.sum().backward()
    ref_grads = _grads(model)
    model.zero_grad(set_to_none=True)
    out = torch.compile(model, fullgraph=True)(*batch)
    out.sum().backward()
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for n, g in _grads(model).items():
        torch.testing.assert_close(g, ref_grads[n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{n}: {m}")
