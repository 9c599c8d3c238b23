"""``mfdr.DynamicFrameConv`` (SPEC §2): Φ = W(M), its eval-mode cache, and the forward through the op."""

import pytest
import torch
from torch import nn

import mfdr
from mfdr.dfc import DynamicFrameConv
from mfdr_kernels import dynamic_frame_conv


def test_exported_from_mfdr():
    assert mfdr.DynamicFrameConv is DynamicFrameConv


@pytest.mark.parametrize("length, frame, hop, N", [(50, 3, 2, 24), (24, 3, 3, 8), (7, 3, 4, 2), (3, 3, 1, 1)])
def test_shapes(length, frame, hop, N):
    m = DynamicFrameConv(length, 6, frame=frame, hop=hop, hidden=4)
    assert m.out_length == N
    assert m.kernel_map.shape == (6, length)  # M: channels x length, "the same size as H"
    assert m.phi().shape == (N, frame, 6)  # Φ: one private depthwise kernel per frame position
    assert m(torch.randn(2, length, 6)).shape == (2, N, 6)


def test_kernel_block_layers():
    m = DynamicFrameConv(50, 8, hidden=5)
    kinds = [type(layer).__name__ for layer in m.kernel_block]
    assert kinds == ["Conv1d", "ChannelLayerNorm", "ReLU", "Conv1d", "ChannelLayerNorm", "ReLU", "Conv1d"]
    last = m.kernel_block[-1]
    assert (last.in_channels, last.out_channels, last.kernel_size, last.stride) == (5, 3 * 8, (3,), (2,))
    assert "length=50, channels=8, frame=3, hop=2, hidden=5, out_length=24" in repr(m)


def test_forward_is_the_op_with_phi():
    m = DynamicFrameConv(11, 4, frame=3, hop=2, hidden=3, bias=True).double()
    nn.init.normal_(m.bias)
    x = torch.randn(3, 11, 4, dtype=torch.float64)
    want = dynamic_frame_conv(x, m.phi(), frame=3, hop=2, bias=m.bias, backend="reference")
    torch.testing.assert_close(m(x), want)


def test_phi_layout():
    """Φ[n, j, c] is output channel j*channels + c of W's last convolution at position n."""
    m = DynamicFrameConv(9, 4, frame=3, hop=2, hidden=3)
    raw = m.kernel_block(m.kernel_map[None])[0]  # (frame*channels, N)
    phi = m.phi()
    assert torch.equal(phi[2, 1, 3], raw[1 * 4 + 3, 2])


def test_gradients_reach_every_parameter():
    m = DynamicFrameConv(10, 4, hidden=3, bias=True)
    m(torch.randn(2, 10, 4)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_phi_stays_fp32_under_cpu_autocast():
    """On the CPU under bf16 autocast the kernel block runs in fp32 (batch-1 convolutions: oneDNN's bf16
    ones are slower): Φ equals the fp32 one exactly; the op still runs in bf16 and gradients reach W."""
    torch.manual_seed(0)
    m = DynamicFrameConv(12, 8, hidden=6)
    want = m.phi()
    x = torch.randn(2, 12, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        phi = m.phi()
        y = m(x)
    assert phi.dtype == torch.float32 and torch.equal(phi, want)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert all(p.grad is not None for p in m.kernel_block.parameters())


def test_train_mode_recomputes_phi():
    m = DynamicFrameConv(10, 4, hidden=3)
    assert m.phi() is not m.phi()


def test_eval_caches_phi_until_a_parameter_changes():
    m = DynamicFrameConv(10, 4, hidden=3)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.eval()
    with torch.no_grad():
        phi = m.phi()
        assert m.phi() is phi  # same object while nothing changes
        m(torch.randn(2, 10, 4))
        assert m.phi() is phi
    m.train()
    m(torch.randn(2, 10, 4)).sum().backward()
    opt.step()  # in-place update: the parameters' _version counters move
    m.eval()
    with torch.no_grad():
        phi2 = m.phi()
        assert phi2 is not phi and not torch.equal(phi2, phi)
        torch.testing.assert_close(phi2, m._generate())
        m.kernel_map.mul_(2)  # any in-place change of a parameter
        phi3 = m.phi()
        assert phi3 is not phi2
        torch.testing.assert_close(phi3, m._generate())
        m.load_state_dict({k: v.clone() for k, v in m.state_dict().items()})  # copy_ into the parameters
        assert m.phi() is not phi3


def test_train_drops_the_cache():
    m = DynamicFrameConv(10, 4, hidden=3).eval()
    with torch.no_grad():
        phi = m.phi()
    m.train()
    assert m._phi_cache is None
    m.eval()
    with torch.no_grad():
        assert m.phi() is not phi


def test_eval_with_grad_enabled_still_trains_the_kernel():
    """A cached Φ has no graph; with grad enabled and trainable parameters it is never used."""
    m = DynamicFrameConv(10, 4, hidden=3).eval()
    with torch.no_grad():
        m.phi()
    m(torch.randn(2, 10, 4)).sum().backward()
    assert m.kernel_map.grad is not None
    m(torch.randn(2, 10, 4)).sum().backward()  # a second backward: a fresh graph


def test_inference_mode_cache_is_separate():
    m = DynamicFrameConv(10, 4, hidden=3).eval()
    with torch.inference_mode():
        phi = m.phi()
    m.requires_grad_(False)
    x = torch.randn(2, 10, 4, requires_grad=True)
    m(x).sum().backward()  # an inference tensor cannot be saved for backward: Φ is regenerated
    assert m.phi() is not phi and x.grad is not None


def test_to_dtype_drops_the_cache():
    m = DynamicFrameConv(10, 4, hidden=3).eval()
    with torch.no_grad():
        m.phi()
        m.double()
        assert m.phi().dtype == torch.float64
        assert m(torch.randn(2, 10, 4, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_backend_attribute(backend):
    m = DynamicFrameConv(10, 4, hidden=3, backend=backend).double()
    x = torch.randn(2, 10, 4, dtype=torch.float64)
    want = dynamic_frame_conv(x, m.phi(), frame=3, hop=2, backend="reference")
    torch.testing.assert_close(m(x), want)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_compile_fullgraph(mode):
    torch._dynamo.reset()
    m = DynamicFrameConv(12, 4, hidden=3).train(mode == "train")
    x = torch.randn(2, 12, 4)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    with torch.set_grad_enabled(mode == "train"):
        torch.testing.assert_close(compiled(x), m(x))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(length=2, channels=4), ValueError, r"length must be >= frame = 3, got 2"),
    (dict(length=10, channels=0), ValueError, r"channels must be >= 1, got 0"),
    (dict(length=10, channels=4, hop=0), ValueError, r"hop must be >= 1"),
    (dict(length=10, channels=4, frame=2.5), TypeError, r"frame must be an int"),
    (dict(length=10, channels=4, hidden=0), ValueError, r"hidden must be >= 1"),
    (dict(length=10, channels=4, activation="swish"), ValueError, r"activation must be one of"),
], ids=["length<frame", "channels", "hop", "frame-float", "hidden", "activation"])
def test_init_validates(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DynamicFrameConv(**kwargs)


def test_forward_validates():
    m = DynamicFrameConv(10, 4, hidden=3)
    with pytest.raises(ValueError, match=r"x must have shape \(B, length=10, channels=4\), got \(2, 11, 4\)"):
        m(torch.randn(2, 11, 4))
    with pytest.raises(ValueError, match="x must be 3-D"):
        m(torch.randn(10, 4))
