"""The one Triton tuning pattern (``mfdr_kernels._triton``): which config each kernel of SAWA, DFC and GCPU runs
under the interpreter, with ``MFDR_TRITON_AUTOTUNE=0`` and with autotuning (one tuner per case and size bucket).

The launches are recorded by a stand-in kernel (and a stand-in ``triton.autotune``): this checks the choice,
not the kernels, which the op suites run."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

from mfdr_kernels import _triton  # noqa: E402
from mfdr_kernels.dfc import triton_impl as dfc  # noqa: E402
from mfdr_kernels.gcpu import triton_impl as gcpu  # noqa: E402
from mfdr_kernels.sawa import triton_impl as sawa  # noqa: E402

TUNINGS = [*sawa.TUNINGS, *dfc.TUNINGS, *gcpu.TUNINGS]
DOT_KERNELS = [*sawa.TUNINGS, *gcpu.TUNINGS]  # tl.dot takes >= 16 rows and columns


class Recorder:
    """Stands for a jitted kernel: ``kernel[grid](*args, **kwargs)`` records the keyword arguments."""

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.calls.append(kwargs)


def recording(tuning: _triton.Tuning) -> tuple[_triton.Tuning, Recorder]:
    kernel = Recorder()
    copy = _triton.Tuning.__new__(_triton.Tuning)
    copy.__dict__.update(tuning.__dict__, kernel=kernel, tuners={})
    return copy, kernel


def blocks(config: triton.Config, tuning: _triton.Tuning) -> dict:
    return {name: config.kwargs[name] for name in tuning.blocks}


@pytest.mark.parametrize("tuning", TUNINGS, ids=lambda t: t.name)
def test_spill_free_configs_are_candidates_and_the_interpreter_has_its_own(tuning):
    candidates = [c.all_kwargs() for c in tuning.configs]
    for case, configs in tuning.spill_free.items():
        assert configs, case
        assert all(c.all_kwargs() in candidates for c in configs), case
    assert set(tuning.interpret.kwargs) == set(tuning.blocks)


@pytest.mark.parametrize("tuning", DOT_KERNELS, ids=lambda t: t.name)
def test_dot_kernels_take_blocks_of_at_least_16(tuning):
    for c in [*tuning.configs, tuning.interpret]:
        assert all(v >= 16 for v in blocks(c, tuning).values()), c


@pytest.mark.parametrize("tuning", TUNINGS, ids=lambda t: t.name)
def test_launch_takes_the_interpreter_config_then_the_first_spill_free_one(tuning, monkeypatch):
    t, kernel = recording(tuning)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    t.launch(None, 100, (), {"X": 1})
    assert kernel.calls[-1] == {"X": 1, **tuning.interpret.kwargs}
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("MFDR_TRITON_AUTOTUNE", "0")
    for case, configs in tuning.spill_free.items():
        t.launch(None, 100, (), {"X": 1}, case)
        assert kernel.calls[-1] == {"X": 1, **configs[0].all_kwargs()}, case
    assert not t.tuners


@pytest.mark.parametrize("tuning", TUNINGS, ids=lambda t: t.name)
def test_autotune_over_the_case_configs_one_tuner_per_size_bucket(tuning, monkeypatch):
    made = []

    def autotune(configs, key, reset_to_zero=None):
        made.append((configs, key, reset_to_zero))
        return lambda kernel: kernel

    monkeypatch.setattr(_triton.triton, "autotune", autotune)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("MFDR_TRITON_AUTOTUNE", "1")
    t, kernel = recording(tuning)
    for case, configs in tuning.spill_free.items():
        before = len(made)
        for rows in (100, 128, 129):  # two size buckets: <= 128 and <= 256
            t.launch(None, rows, (), {"X": 1}, case)
            if len(configs) == 1:  # nothing to tune: that config
                assert kernel.calls[-1] == {"X": 1, **configs[0].all_kwargs()}, case
            else:  # the tuner picks the blocks
                assert kernel.calls[-1] == {"X": 1}, case
        assert len(made) == before + (0 if len(configs) == 1 else 2), case
        if len(configs) > 1:
            assert made[-1] == (configs, tuning.key, tuning.reset)


def test_allow_filters_the_configs_of_a_call(monkeypatch):
    t, kernel = recording(sawa._bwd_kv)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("MFDR_TRITON_AUTOTUNE", "0")
    t.launch(None, 100, (), {}, (False, False), allow=lambda c: c.kwargs["BLOCK_D"] <= 64)
    assert kernel.calls[-1]["BLOCK_D"] == 64
    t.launch(None, 100, (), {}, (False, False), allow=lambda c: False)  # none left: the case's first
    assert kernel.calls[-1] == sawa._bwd_kv.spill_free[(False, False)][0].all_kwargs()


def test_config_specs_and_their_errors():
    c = _triton.config("16x32x8x3", ("BLOCK_Q", "BLOCK_N"))
    assert (c.kwargs, c.num_warps, c.num_stages) == ({"BLOCK_Q": 16, "BLOCK_N": 32}, 8, 3)
    assert _triton.config("16x32x8", ("BLOCK_Q", "BLOCK_N")).num_stages == 1
    with pytest.raises(ValueError, match=r"config '16x32' must give \('BLOCK_Q', 'BLOCK_N'\), then num_warps"):
        _triton.config("16x32", ("BLOCK_Q", "BLOCK_N"))
    with pytest.raises(ValueError, match="spill-free configs of case None must be candidates"):
        _triton.Tuning("x", Recorder(), ("BLOCK_N",), "16x4 32x4", "64x4", ["N"], "16x4")
