"""The MFDR model (SPEC §4): shapes of every Table 3 ablation, masking, backends, training, save/load."""

import contextlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import mfdr_kernels
from mfdr import MFDR, MFDRConfig, SAWALayer
from mfdr.config import TABLE3

F64 = torch.float64
# Small: 12 words, 40 frames, window 4 / hop 3 (the last word's window starts at frame 33).
SMALL = dict(audio_dim=10, text_dim=8, audio_len=40, text_len=12, d_model=16, heads=2, window=4, hop=3,
             dfc_hidden=8, dropout=0.0)
# The paper's geometry (T=255, L=50, window 10, hop 5) at a tiny width.
PAPER_GEOMETRY = dict(audio_dim=12, text_dim=12, d_model=16, heads=4, dfc_hidden=8)


def small(**changes) -> MFDRConfig:
    return MFDRConfig(**{**SMALL, **changes})


def inputs(cfg: MFDRConfig, audio_lengths=(40, 23, 9), text_lengths=(12, 7, 3), dtype=F64, T=None):
    B = len(audio_lengths)
    audio = torch.randn(B, T or cfg.audio_len, cfg.audio_dim, dtype=dtype)
    text = torch.randn(B, cfg.text_len, cfg.text_dim, dtype=dtype)
    return audio, text, torch.tensor(audio_lengths), torch.tensor(text_lengths)


ABLATIONS = sorted(TABLE3)
CASES = ABLATIONS + ["stretch", "joint", "levels=1"]  # + the non-paper options
EXTRA = {"stretch": {"align": "stretch"}, "joint": {"normalize": "joint"}, "levels=1": {"levels": 1}}


def case_config(name, **base) -> MFDRConfig:
    return MFDRConfig.ablation(name, **base) if name in TABLE3 else MFDRConfig(**{**base, **EXTRA[name]})


# ---------------------------------------------------------------------- shapes
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_default_config_shapes(task):
    model = MFDR(MFDRConfig(task=task))
    audio = torch.randn(2, 255, 768)
    text = torch.randn(2, 50, 768)
    out = model(audio, text, torch.tensor([255, 120]), torch.tensor([50, 17]))
    assert out.shape == ((2, 4) if task == "classification" else (2,))
    assert model.features(audio, text).shape == (2, 8, 256)  # L = 50 -> 24 -> 8
    assert [m.out_length for m in model.pool] == [24, 8]


@pytest.mark.parametrize("task", ["classification", "regression"])
@pytest.mark.parametrize("name", ABLATIONS)
def test_ablation_shapes_and_gradients(name, task):
    cfg = MFDRConfig.ablation(name, task=task, num_classes=3, **PAPER_GEOMETRY)
    model = MFDR(cfg)
    audio, text = torch.randn(2, 255, 12), torch.randn(2, 50, 12)
    out = model(audio, text, torch.tensor([255, 90]), torch.tensor([50, 11]))
    assert out.shape == ((2, 3) if task == "classification" else (2,))
    n = 50 if cfg.pooling == "linear" else 8
    assert model.features(audio, text).shape == (2, n, 16)
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_ablation_modules():
    kinds = {name: MFDR(MFDRConfig.ablation(name, **PAPER_GEOMETRY)) for name in ABLATIONS}
    assert type(kinds["MFDR"].context).__name__ == "GCPU" and kinds["MFDR"].context.context
    assert not kinds["w/o Context"].context.context
    assert type(kinds["GRU"].context).__name__ == "GRUContext"
    assert type(kinds["MGRU"].context).__name__ == "MGRU"
    assert [type(m).__name__ for m in kinds["MFDR"].pool] == ["DynamicFrameConv"] * 2
    assert kinds["max-pooling"].pool.kind == "max" and kinds["avg-pooling"].pool.kind == "avg"
    assert isinstance(kinds["w/o DFC"].pool, torch.nn.Identity)
    assert kinds["w/o DFC"].head[-1].in_features == 50 * 16
    assert kinds["full-size"].fusion.attention == "full"
    assert (kinds["w=50"].fusion.window, kinds["w=50"].fusion.hop, kinds["w=50"].fusion.levels) == (50, 5, 0)


def test_frame_pooling_matches_the_dfc_schedule():
    model = MFDR(MFDRConfig(pooling="max", **PAPER_GEOMETRY))
    x = torch.randn(2, 50, 16)
    y = F.max_pool1d(F.max_pool1d(x.transpose(1, 2), 3, 2), 3, 3).transpose(1, 2)
    assert torch.equal(model.pool(x), y) and y.shape == (2, 8, 16)


# ---------------------------------------------------------------------- masking
@pytest.mark.parametrize("name", CASES)
def test_padding_has_no_influence(name):
    """Changing padded frames or tokens leaves each sample's logits unchanged, and a sample alone
    (its audio cut to its length) gives the logits it gets inside the padded batch."""
    model = MFDR(case_config(name, **SMALL)).double().eval()
    audio, text, al, tl = inputs(model.config)
    out = model(audio, text, al, tl)
    audio2, text2 = audio.clone(), text.clone()
    for b in range(3):
        audio2[b, al[b]:] = 100 * torch.randn_like(audio2[b, al[b]:])
        text2[b, tl[b]:] = 100 * torch.randn_like(text2[b, tl[b]:])
    assert torch.equal(model(audio2, text2, al, tl), out)
    for b in range(3):
        alone = model(audio[b:b + 1, :al[b]], text[b:b + 1], al[b:b + 1], tl[b:b + 1])
        torch.testing.assert_close(alone[0], out[b], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", CASES)
def test_non_finite_padding_has_no_influence(name):
    """NaN, -inf or +inf in padded tokens or frames (issue 19: the global context's attention read padded
    text rows) leaves every config's logits, and the gradients of the weights, as they are with zero padding."""
    model = MFDR(case_config(name, **SMALL)).double()
    audio, text, al, tl = inputs(model.config)
    pad_a = torch.arange(audio.shape[1])[None, :, None] >= al[:, None, None]
    pad_t = torch.arange(text.shape[1])[None, :, None] >= tl[:, None, None]
    weights = torch.randn(3, model.config.out_dim, dtype=F64)

    def run(fill_audio, fill_text):
        model.zero_grad()
        out = model(audio.masked_fill(pad_a, fill_audio), text.masked_fill(pad_t, fill_text), al, tl)
        (out * weights).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    out0, grads0 = run(0.0, 0.0)
    assert torch.isfinite(out0).all()
    for fill_audio, fill_text in [(0.0, float("nan")), (0.0, float("-inf")), (0.0, float("inf")),
                                  (float("nan"), 0.0), (float("-inf"), float("nan"))]:
        out, grads = run(fill_audio, fill_text)
        assert torch.equal(out, out0), (fill_audio, fill_text)
        assert grads.keys() == grads0.keys() and all(torch.equal(grads[k], grads0[k]) for k in grads0), \
            (fill_audio, fill_text, [k for k in grads0 if not torch.equal(grads[k], grads0[k])])


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_zero_padding_cpu_path_equals_the_where(autocast):
    """zero_padding's CPU path (a copy with its padded rows filled) and the sync-free where (GPU, tracing,
    the op counter) give the same tensor: padded rows 0 whatever they held, out-of-range lengths clamped,
    the input untouched, under bf16 autocast the autocast dtype; gradients reach valid rows only."""
    from mfdr.model import zero_padding
    from mfdr_kernels.counting import DispatchCounter

    x = torch.randn(4, 6, 5, requires_grad=True)
    with torch.no_grad():
        x[1, 3:] = float("nan")
        x[2, 1:] = float("-inf")
    before = x.detach().clone()
    lengths = torch.tensor([6, 3, 1, 0])
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    with ctx():
        cpu = zero_padding(x, lengths)
        with DispatchCounter():
            where = zero_padding(x, lengths)
    assert cpu.dtype == where.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(cpu, where) and torch.isfinite(cpu).all()
    assert torch.equal(x.detach().nan_to_num(), before.nan_to_num())  # the input is not written
    assert cpu[1, 3:].eq(0).all() and cpu[3].eq(0).all() and torch.equal(cpu[0], x[0].detach().to(cpu.dtype))
    (g,) = torch.autograd.grad(cpu.float().sum(), x)
    valid = (torch.arange(6)[None, :] < lengths[:, None])[..., None]
    assert torch.equal(g, valid.expand_as(g).float())


def test_lengths_default_to_all_valid():
    model = MFDR(small()).double().eval()
    audio, text, _, _ = inputs(model.config)
    full = model(audio, text, torch.tensor([40] * 3), torch.tensor([12] * 3))
    torch.testing.assert_close(model(audio, text), full)


# ---------------------------------------------------------------------- backends
@pytest.mark.parametrize("name", ["MFDR", "w=10", "stretch"])
@pytest.mark.parametrize("other", ["reference", "torch"])
def test_backends_agree(name, other):
    """Same weights on the reference (or torch) backend and on the default: same logits and gradients."""
    model = MFDR(case_config(name, **SMALL)).double()
    audio, text, al, tl = inputs(model.config)

    def run(backend):
        model.set_backend(backend)
        model.zero_grad()
        a, t = audio.clone().requires_grad_(), text.clone().requires_grad_()
        out = model(a, t, al, tl)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out))
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        return out, grads, a.grad, t.grad, model.fusion.last_level

    ref, default = run(other), run(None)
    assert torch.equal(ref[4], default[4])  # same window levels
    torch.testing.assert_close(default[0], ref[0], rtol=1e-10, atol=1e-12)
    for n in ref[1]:
        torch.testing.assert_close(default[1][n], ref[1][n], rtol=1e-9, atol=1e-11, msg=n)
    torch.testing.assert_close(default[2], ref[2], rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(default[3], ref[3], rtol=1e-9, atol=1e-11)


def test_set_backend_reaches_every_op():
    model = MFDR(small(backend="torch"))
    assert model.fusion.backend == "torch" and model.backend == "torch"
    assert all(m.backend == "torch" for m in model.pool)
    model.set_backend(None)
    assert model.config.backend is None and model.fusion.backend is None
    with pytest.raises(ValueError, match="backend must be one of"):
        model.set_backend("cuda")


# ---------------------------------------------------------------------- fusion layer
def test_fusion_is_layernorm_of_residual_sawa():
    model = MFDR(small()).double()
    audio, text, al, tl = inputs(model.config)
    f = model.fusion
    q_in = f.q_proj(text)
    split = lambda x: x.view(3, x.shape[1], 2, 8).transpose(1, 2)
    att = mfdr_kernels.sliding_adaptive_window_attention(
        split(q_in), split(f.k_proj(audio)), split(f.v_proj(audio)), window=4, hop=3, levels=2,
        q_lens=tl, k_lens=al, backend="reference")
    z = f.norm(q_in + att.transpose(1, 2).reshape(3, 12, 16))
    torch.testing.assert_close(f(audio, text, al, tl), z)


@pytest.mark.parametrize("align", ["paper", "stretch"])
def test_window_starts(align):
    model = MFDR(small(align=align)).double().eval()
    audio, text, al, tl = inputs(model.config)
    i = torch.arange(12)[None, :]
    if align == "paper":
        starts = (i * 3).expand(3, 12)
    else:  # s_i = max(0, floor(i (k_len - ω) / max(q_len - 1, 1)))
        starts = torch.div(i * (al[:, None] - 4), (tl[:, None] - 1).clamp_min(1), rounding_mode="floor")
        starts = starts.clamp_min(0)
    got = model.fusion.window_starts(3, 12, 40, al, tl)
    assert got is None if align == "paper" else torch.equal(got, starts)
    torch.testing.assert_close(model(audio, text, al, tl, window_starts=starts), model(audio, text, al, tl))
    # stretch: the last valid word's window ends at the last valid frame
    if align == "stretch":
        assert all(int(starts[b, tl[b] - 1]) == max(0, int(al[b]) - 4) for b in range(3))


def test_explicit_window_starts_change_the_output():
    model = MFDR(small()).double().eval()
    audio, text, al, tl = inputs(model.config)
    zeros = torch.zeros(3, 12, dtype=torch.long)
    assert not torch.allclose(model(audio, text, al, tl, window_starts=zeros), model(audio, text, al, tl))
    with pytest.raises(ValueError, match="non-decreasing"):
        model(audio, text, al, tl, window_starts=torch.arange(12).flip(0).expand(3, 12))


def test_level_fractions():
    model = MFDR(small()).double()
    assert model.level_fractions() is None
    audio, text, al, tl = inputs(model.config)
    model(audio, text, al, tl)
    fr = model.level_fractions()
    assert set(fr) == {0, 1, 2} and abs(sum(fr.values()) - 1) < 1e-12
    level = model.fusion.last_level
    assert level.shape == (3, 2, 12) and level.dtype == torch.int8
    n_valid = 2 * int(tl.sum())
    assert abs(fr[2] - sum(int((level[b, :, :tl[b]] == 2).sum()) for b in range(3)) / n_valid) < 1e-12
    fixed = MFDR(small(levels=0))
    fixed(*inputs(fixed.config, dtype=torch.float32))
    assert fixed.level_fractions() == {0: 1.0, 1: 0.0, 2: 0.0}
    full = MFDR(small(attention="full"))
    full(*inputs(full.config, dtype=torch.float32))
    assert full.level_fractions() is None


@pytest.mark.parametrize("attention", ["sawa", "full"])
def test_attention_map(attention):
    model = MFDR(small(attention=attention)).double()
    audio, text, al, tl = inputs(model.config)
    att = model.attention_map(audio, text, al, tl)
    assert att.shape == (3, 2, 12, 40)
    f = model.fusion
    _, q, k, v = f.project(audio, text)
    torch.testing.assert_close(att @ v, f.attend(q, k, v, al, tl))  # the map aggregates V into the output
    for b in range(3):
        assert att[b, :, tl[b]:].abs().sum() == 0 and att[b, :, :, al[b]:].abs().sum() == 0
    if attention == "sawa":
        level = f.last_level
        for b in range(3):  # each active segment sums to 1 (SPEC §1): rows sum to level + 1
            sums = att[b, :, :tl[b]].sum(-1)
            want = (level[b, :, :tl[b]].double() + 1) * (torch.arange(12)[:tl[b]] * 3 < al[b])
            torch.testing.assert_close(sums, want)
        band = MFDR(small(levels=0)).double()
        a0 = band.attention_map(audio, text)
        for i in range(12):  # fixed window: frames [3i, 3i + 4) only
            outside = torch.ones(40, dtype=torch.bool)
            outside[3 * i:3 * i + 4] = False
            assert a0[:, :, i, outside].abs().sum() == 0


# ---------------------------------------------------------------------- heads
def test_regression_output_is_not_clamped():
    model = MFDR(small(task="regression"))
    with torch.no_grad():
        model.head[-1].bias.fill_(10.0)
        model.head[-1].weight.zero_()
    out = model(*inputs(model.config, dtype=torch.float32))
    assert out.shape == (3,) and torch.all(out == 10.0)


def test_dropout_only_in_training():
    model = MFDR(small(dropout=0.5))
    x = inputs(model.config, dtype=torch.float32)
    model.eval()
    assert torch.equal(model(*x), model(*x))
    model.train()
    assert not torch.equal(model(*x), model(*x))


# ---------------------------------------------------------------------- input checks
def test_input_errors():
    model = MFDR(small())
    audio, text, al, tl = inputs(model.config, dtype=torch.float32)
    with pytest.raises(ValueError, match=r"text must have shape \(B, text_len=12, text_dim=8\)"):
        model(audio, text[:, :10])
    with pytest.raises(ValueError, match=r"audio must have shape \(B, T >= 1, audio_dim=10\)"):
        model(audio[..., :9], text)
    with pytest.raises(ValueError, match="audio must be 3-D"):
        model(audio[0], text)
    with pytest.raises(ValueError, match="same batch size, got 3 and 2"):
        model(audio, text[:2])
    with pytest.raises(ValueError, match=r"audio_lengths must lie in \[1, 40\], got values in \[10, 41\]"):
        model(audio, text, al + 1, tl)
    with pytest.raises(ValueError, match=r"text_lengths must lie in \[1, 12\], got values in \[0, 12\]"):
        model(audio, text, al, tl - torch.tensor([0, 0, 3]))
    with pytest.raises(TypeError, match="text_lengths must have an integer dtype"):
        model(audio, text, al, tl.float())
    with pytest.raises(ValueError, match=r"audio_lengths must have shape \(3,\)"):
        model(audio, text, al[:2], tl)
    with pytest.raises(TypeError, match="config must be an MFDRConfig"):
        MFDR({"d_model": 16})


def test_audio_may_be_shorter_or_longer_than_audio_len():
    model = MFDR(small()).eval()
    for T in (35, 60):
        x = inputs(model.config, audio_lengths=(T, 20, 30), dtype=torch.float32, T=T)
        assert model(*x).shape == (3, 4)


def test_constructor_overrides():
    assert MFDR(**SMALL).config == MFDRConfig(**SMALL)
    assert MFDR(small(), pooling="avg").config.pooling == "avg"


# ---------------------------------------------------------------------- training
def _train(seed: int, steps: int):
    torch.manual_seed(seed)
    cfg = small(d_model=32, heads=4, dfc_hidden=16)
    model = MFDR(cfg)
    audio, text, _, _ = inputs(cfg, audio_lengths=(40,) * 16, text_lengths=(12,) * 16, dtype=torch.float32)
    al, tl = torch.randint(20, 41, (16,)), torch.randint(4, 13, (16,))
    y = torch.arange(16) % 4
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(audio, text, al, tl), y)
        loss.backward()
        opt.step()
        if step % 10 == 9:
            with torch.no_grad():
                if bool((model.eval()(audio, text, al, tl).argmax(-1) == y).all()):
                    return step + 1, model
            model.train()
    return steps, model


def test_training_overfits_a_batch_and_is_reproducible():
    steps, model = _train(0, 300)
    assert steps < 300, "did not reach 100% training accuracy in 300 steps"
    again_steps, again = _train(0, steps)
    assert again_steps == steps
    for (n, p), q in zip(model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q), n


# ---------------------------------------------------------------------- save / load
@pytest.mark.parametrize("name", ["MFDR", "MGRU", "max-pooling"])
def test_save_and_load_round_trip(tmp_path, name):
    model = MFDR(case_config(name, **SMALL)).eval()
    x = inputs(model.config, dtype=torch.float32)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
    loaded = MFDR.from_pretrained(tmp_path / "m")
    assert not loaded.training and loaded.config == model.config
    assert torch.equal(loaded(*x), model(*x))
    same = MFDR.from_pretrained(tmp_path / "m", model.config.replace(backend="torch", dropout=0.3))
    torch.testing.assert_close(same(*x), model(*x))
    assert MFDR.from_pretrained(tmp_path / "m", backend="torch").backend == "torch"


def test_load_refuses_a_mismatched_config(tmp_path):
    MFDR(small()).save_pretrained(tmp_path)
    match = r"does not match .*d_model: saved 16, given 32.*pooling: saved 'dfc', given 'avg'"
    with pytest.raises(ValueError, match=match):
        MFDR.from_pretrained(tmp_path, small(d_model=32, pooling="avg"))
    with pytest.raises(TypeError, match=r"unexpected argument\(s\) \['heads'\]"):
        MFDR.from_pretrained(tmp_path, heads=4)
    with pytest.raises(FileNotFoundError, match="must hold config.json and model.safetensors"):
        MFDR.from_pretrained(tmp_path / "nothing")
    # weights that do not fit the saved config
    small(d_model=32).save(tmp_path / "config.json")
    with pytest.raises(ValueError, match="do not fit the config"):
        MFDR.from_pretrained(tmp_path)


# ---------------------------------------------------------------------- package
def test_lazy_package_import():
    code = ("import sys, mfdr; assert 'torch' not in sys.modules and 'transformers' not in sys.modules; "
            "from mfdr import MFDR, MFDRConfig, GCPU, DynamicFrameConv, SAWALayer; "
            "assert 'transformers' not in sys.modules and 'mfdr.data' not in sys.modules; print('ok')")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
    import mfdr

    assert mfdr.SAWALayer is SAWALayer
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        mfdr.Nope  # noqa: B018


def test_set_backend_reaches_the_gcpu_and_weights_load_with_any_backend():
    """config.backend chooses the GCPU recurrence's backend with SAWA's and DFC's; a model saved with one
    backend loads and runs the same with another (the backend is no part of the weights)."""
    cfg = MFDRConfig(num_classes=4, audio_dim=12, text_dim=10, audio_len=48, text_len=9, d_model=16, heads=2,
                     dfc_hidden=8, dropout=0.0)
    torch.manual_seed(0)
    model = MFDR(cfg.replace(backend="cpp")).eval()
    assert model.context.backend == "cpp"
    other = MFDR(cfg.replace(backend="torch")).eval()
    assert other.context.backend == "torch"
    other.load_state_dict(model.state_dict())
    audio, text = torch.randn(2, 48, 12), torch.randn(2, 9, 10)
    lengths = (torch.tensor([48, 30]), torch.tensor([9, 5]))
    with torch.no_grad():
        torch.testing.assert_close(other(audio, text, *lengths), model(audio, text, *lengths), atol=1e-5, rtol=1e-5)
    assert model.set_backend("reference").context.backend == "reference"
    assert MFDR(cfg.replace(context="mgru", backend="torch")).context.backend == "torch"


# ---------------------------------------------------------------------- forced word alignments
def forced_starts(al, tl, L=12, seed=0):
    """Non-decreasing word starts inside each sample's audio, padded with the last valid start."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for a, t in zip(al.tolist(), tl.tolist()):
        s = torch.sort(torch.randint(0, max(a - 2, 1), (t,), generator=g)).values
        rows.append(torch.cat([s, s[-1:].expand(L - t)]))
    return torch.stack(rows)


def test_forced_windows_follow_the_given_starts():
    """align='forced' runs SAWA at the batch's starts (what an explicit override gives a 'paper' model with
    the same weights); a row of -1 gets the 'stretch' starts; no starts is an error that says what to pass."""
    torch.manual_seed(0)
    forced = MFDR(small(align="forced")).double().eval()
    paper = MFDR(small()).double().eval()
    stretch = MFDR(small(align="stretch")).double().eval()
    paper.load_state_dict(forced.state_dict())
    stretch.load_state_dict(forced.state_dict())
    audio, text, al, tl = inputs(forced.config)
    starts = forced_starts(al, tl)
    out = forced(audio, text, al, tl, window_starts=starts)
    torch.testing.assert_close(out, paper(audio, text, al, tl, window_starts=starts), rtol=0, atol=0)
    assert not torch.allclose(out, stretch(audio, text, al, tl))
    assert forced.fusion.last_fallback.tolist() == [False, False, False]
    starts[1] = -1                                       # utterance 1 has no alignment
    mixed = forced(audio, text, al, tl, window_starts=starts)
    assert forced.fusion.last_fallback.tolist() == [False, True, False]
    torch.testing.assert_close(mixed[1], stretch(audio, text, al, tl)[1], rtol=0, atol=0)
    torch.testing.assert_close(mixed[[0, 2]], out[[0, 2]], rtol=0, atol=0)
    got = forced.fusion.window_starts(3, 12, 40, al, tl, forced=starts)
    assert torch.equal(got[1], stretch.fusion.window_starts(3, 12, 40, al, tl)[1]) and torch.equal(got[0], starts[0])
    with pytest.raises(ValueError, match=r"align='forced' needs window_starts \(B, L\): the batch's"):
        forced(audio, text, al, tl)
    with pytest.raises(ValueError, match=r"window_starts must have shape \(3, 12\), got \(3, 11\)"):
        forced(audio, text, al, tl, window_starts=starts[:, :11])
    att = forced.attention_map(audio, text, al, tl, window_starts=starts)
    torch.testing.assert_close(att[1], stretch.attention_map(audio, text, al, tl)[1], rtol=0, atol=0)


def test_forced_starts_past_the_audio_give_empty_windows():
    """Words that start at or past a sample's last frame (an alignment longer than the kept audio) get no
    frames: their attention is 0, so z = LayerNorm(q_in) there."""
    model = MFDR(small(align="forced")).double().eval()
    audio, text, al, tl = inputs(model.config)
    starts = forced_starts(al, tl)
    starts[0, 8:] = 40                                   # = audio_len: past every frame of sample 0
    starts[2, 1:] = 9                                    # = its audio length (9 frames)
    f = model.fusion
    z = f(audio, text, al, tl, starts)
    q_in = f.q_proj(text)
    torch.testing.assert_close(z[0, 8:], f.norm(q_in[0, 8:]))
    torch.testing.assert_close(z[2, 1:3], f.norm(q_in[2, 1:3]))
    assert not torch.allclose(z[0, :8], f.norm(q_in[0, :8]))
    assert (f.last_level[0, :, 8:] == 0).all()


def test_padding_has_no_influence_with_forced_starts():
    """Padded frames, tokens and the starts of padded tokens change nothing; a sample alone (its audio cut
    to its length) gives the logits it gets in the padded batch."""
    model = MFDR(small(align="forced")).double().eval()
    audio, text, al, tl = inputs(model.config)
    starts = forced_starts(al, tl)
    starts[2] = -1                                       # one row falls back to stretch
    out = model(audio, text, al, tl, window_starts=starts)
    audio2, text2, starts2 = audio.clone(), text.clone(), starts.clone()
    for b in range(3):
        audio2[b, al[b]:] = 100 * torch.randn_like(audio2[b, al[b]:])
        text2[b, tl[b]:] = 100 * torch.randn_like(text2[b, tl[b]:])
        if b < 2:
            starts2[b, tl[b]:] = 39
    assert torch.equal(model(audio2, text2, al, tl, window_starts=starts2), out)
    for b in range(3):
        alone = model(audio[b:b + 1, :al[b]], text[b:b + 1], al[b:b + 1], tl[b:b + 1], window_starts=starts[b:b + 1])
        torch.testing.assert_close(alone[0], out[b], rtol=1e-10, atol=1e-10)


def test_forced_has_no_host_sync_and_compiles(monkeypatch):
    from mfdr_kernels.counting import DispatchCounter

    monkeypatch.setenv("MFDR_KERNELS_CHECK_VALUES", "0")
    torch.manual_seed(0)
    model = MFDR(small(align="forced"))
    audio, text, al, tl = inputs(model.config, dtype=torch.float32)
    starts = forced_starts(al, tl)
    starts[1] = -1
    model(audio, text, al, tl, window_starts=starts).sum().backward()
    with DispatchCounter() as c:
        model(audio, text, al, tl, window_starts=starts).sum().backward()
    assert c.syncs == 0, dict(c.sync_ops)
    torch._dynamo.reset()
    ref = model(audio, text, al, tl, window_starts=starts)
    out = torch.compile(model, fullgraph=True, backend="aot_eager")(audio, text, al, tl, window_starts=starts)
    torch.testing.assert_close(out, ref)


def test_trained_on_forced_alignments_saves_loads_and_predicts(tmp_path):
    """End to end through the data and model APIs: a feature cache with word starts (one utterance without),
    its dataset and collate, a few training steps on the batches' window_starts, save, load, predict."""
    from mfdr.data import CacheWriter, FeatureDataset, check_forced_alignment, make_collate

    cfg = small(align="forced", num_classes=4)
    g = torch.Generator().manual_seed(0)
    w = CacheWriter(tmp_path / "cache", {"test": "forced"})
    n = 8
    entries = [{"id": f"u{i}", "label": ["neutral", "happy", "angry", "sad"][i % 4], "speaker": "s"} for i in range(n)]
    T = [40, 33, 25, 18, 40, 29, 21, 12]
    L = [12, 9, 7, 5, 12, 10, 6, 4]
    audio = [torch.randn(t, cfg.audio_dim, generator=g) for t in T]
    text = [torch.randn(l, cfg.text_dim, generator=g) for l in L]
    starts = [torch.sort(torch.randint(0, t - 2, (l,), generator=g)).values for t, l in zip(T, L)]
    starts[5] = None
    w.write_shard(entries, audio, text, window_starts=starts)
    ds = FeatureDataset(tmp_path / "cache")
    assert check_forced_alignment(ds.cache) == ("1 of 8 utterances have no word alignment: align='forced' "
                                                "gives them align='stretch' windows")
    collate = make_collate(cfg.audio_len, cfg.text_len)
    torch.manual_seed(0)
    model = MFDR(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = [collate([ds[i] for i in range(s, s + 4)]) for s in (0, 4)]
    assert batches[1]["window_starts"][1].tolist() == [-1] * 12
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        for b in batches:
            out = model(b["audio"], b["text"], b["audio_lengths"], b["text_lengths"], window_starts=b["window_starts"])
            loss = F.cross_entropy(out, b["label"])
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert model.fusion.last_fallback.tolist() == [False, True, False, False]
    assert any(not torch.equal(p, q) for p, q in zip(before, model.parameters()))
    model.eval().save_pretrained(tmp_path / "m")
    loaded = MFDR.from_pretrained(tmp_path / "m")
    assert loaded.config.align == "forced" and loaded.config == model.config
    for b in batches:
        args = (b["audio"], b["text"], b["audio_lengths"], b["text_lengths"])
        pred = loaded(*args, window_starts=b["window_starts"])
        assert torch.equal(pred, model(*args, window_starts=b["window_starts"]))
        assert not torch.allclose(pred, loaded(*args, window_starts=torch.zeros_like(b["window_starts"])))
