"""The compiled extension missing: the package imports, reports why, and falls back with one warning."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from mfdr_kernels import _ext


def test_loaded_here():
    ok, why = _ext.status()
    assert ok, why


def test_missing_extension_falls_back_with_one_warning(monkeypatch):
    import mfdr_kernels
    from mfdr_kernels import sliding_adaptive_window_attention as sawa

    monkeypatch.setattr(_ext, "_state", {"loaded": False, "error": "OSError: simulated", "path": None})
    monkeypatch.setattr(_ext, "_warned", set())
    report = mfdr_kernels.backends()["sliding_adaptive_window_attention"]
    assert "simulated" in report["cpp"] and "pip install -e ." in report["cpp"]
    assert report["torch"] is None
    q, k, v = torch.randn(1, 1, 4, 2), torch.randn(1, 1, 12, 2), torch.randn(1, 1, 12, 2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out1 = sawa(q, k, v, window=2)
        out2 = sawa(q, k, v, window=2)
    msgs = [str(w.message) for w in caught if "falling back" in str(w.message)]
    assert len(msgs) == 1 and "simulated" in msgs[0]
    torch.testing.assert_close(out1, sawa(q, k, v, window=2, backend="reference"))
    assert torch.equal(out1, out2)


def test_import_without_extension_and_without_jit(tmp_path):
    # a fresh interpreter where the prebuilt library is hidden and building is forbidden
    code = (
        "import glob, os, torch\n"
        "import mfdr_kernels._ext as e\n"
        "e._load_prebuilt = lambda: None\n"
        "import mfdr_kernels as mk\n"
        "r = mk.backends()['sliding_adaptive_window_attention']\n"
        "assert 'MFDR_KERNELS_NO_JIT' in r['cpp'], r\n"
        "assert mk.default_backend() == 'torch'\n"
        "print('ok')\n"
    )
    env = {"MFDR_KERNELS_NO_JIT": "1", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


def test_builds_on_first_use(tmp_path):
    # a fresh interpreter where the library of `pip install -e .` is hidden: the extension is built with
    # torch.utils.cpp_extension.load (ninja) into MFDR_KERNELS_BUILD_DIR, then used
    code = (
        "import torch\n"
        "import mfdr_kernels._ext as e\n"
        "e._load_prebuilt = lambda: None\n"
        "import mfdr_kernels as mk\n"
        "r = mk.backends()['sliding_adaptive_window_attention']\n"
        "assert r['cpp'] is None, r\n"
        "assert e.status()[1].startswith('loaded from " + str(tmp_path) + "'), e.status()\n"
        "q, k, v = torch.randn(1, 1, 4, 3), torch.randn(1, 1, 12, 3), torch.randn(1, 1, 12, 3)\n"
        "a = mk.sliding_adaptive_window_attention(q, k, v, window=2, backend='cpp')\n"
        "b = mk.sliding_adaptive_window_attention(q, k, v, window=2, backend='torch')\n"
        "torch.testing.assert_close(a, b)\n"
        "print('ok')\n"
    )
    env = {**os.environ, "MFDR_KERNELS_BUILD_DIR": str(tmp_path), "MFDR_KERNELS_NO_JIT": "0"}
    res = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]


def test_output_cache_reuses_freed_buffers_and_obeys_its_limit():
    from mfdr_kernels import sliding_adaptive_window_attention as sawa

    _ext.load()
    ops = torch.ops.mfdr_C
    # (B, H, T, d) = 1 MiB: large enough to be cached
    q, k, v = torch.randn(1, 1, 50, 256), torch.randn(1, 1, 1024, 256), torch.randn(1, 1, 1024, 256)
    for t in (q, k, v):
        t.requires_grad_()
    previous = ops.set_output_cache_limit(64 * 2**20)
    try:
        dq, dk, dv = torch.autograd.grad(sawa(q, k, v, window=10, backend="cpp").sum(), (q, k, v))
        ptr = dk.data_ptr()
        assert ops.output_cache_held() >= 0
        del dq, dk, dv  # back to the cache, not to the OS
        assert ops.output_cache_held() >= 2 * 2**20
        dq, dk, dv = torch.autograd.grad(sawa(q, k, v, window=10, backend="cpp").sum(), (q, k, v))
        assert ptr in (dk.data_ptr(), dv.data_ptr())
        ref = torch.autograd.grad(sawa(q, k, v, window=10, backend="torch").sum(), (q, k, v))
        for a, b in zip((dq, dk, dv), ref):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
        dk.resize_(2, 1, 1024, 256)  # ordinary storage: resizable
        dk.add_(1.0)
        assert dk.shape == (2, 1, 1024, 256)
        del dq, dk, dv
        ops.set_output_cache_limit(0)  # off: what it holds is freed
        assert ops.output_cache_held() == 0
        out = sawa(q.detach(), k.detach(), v.detach(), window=10, backend="cpp")
        del out
        assert ops.output_cache_held() == 0
    finally:
        ops.set_output_cache_limit(previous)


def test_output_cache_env_flag(monkeypatch):
    from mfdr_kernels import _env

    monkeypatch.setenv("MFDR_KERNELS_OUTPUT_CACHE_MB", "0")
    assert _env.output_cache_bytes() == 0
    monkeypatch.setenv("MFDR_KERNELS_OUTPUT_CACHE_MB", "1.5")
    assert _env.output_cache_bytes() == 3 * 2**19
    monkeypatch.setenv("MFDR_KERNELS_OUTPUT_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="MFDR_KERNELS_OUTPUT_CACHE_MB must be a number"):
        _env.output_cache_bytes()
