"""The compiled extension missing: the package imports, reports why, and falls back with one warning."""

import os
import subprocess
import sys
import warnings

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
