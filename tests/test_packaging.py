"""Installs as users install it: a wheel built with pip's build isolation (no torch in the build
environment) holds the Python packages, the shipped configs and the C++ sources, and an installed copy
finds them from any folder; the sdist holds csrc/."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = out.glob("mfdr-*.whl")
    return whl


def test_wheel_with_build_isolation_holds_configs_and_sources(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for name in ("demo", "iemocap", "mosei"):
        assert f"mfdr/configs/{name}.yaml" in names
    sources = {Path(n).name for n in names if n.startswith("mfdr_kernels/csrc/")}
    assert {p.name for p in (ROOT / "csrc").glob("*.cpp")} <= sources
    assert not any(n.endswith(".so") for n in names)  # no torch at build time: built on first use


def test_installed_wheel_finds_its_files_from_any_folder(wheel, tmp_path):
    """A venv that sees the test environment's packages (torch) but not this checkout, with the wheel
    installed: the shipped configs and the C++ sources come from site-packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch etc., not mfdr
    zipfile.ZipFile(wheel).extractall(site)  # what pip install does for a pure wheel
    code = ("import mfdr, mfdr_kernels._ext as e; from mfdr.config import load_run_config; "
            "c = load_run_config('iemocap'); assert c.train.epochs == 40, c.train; "
            f"assert mfdr.__file__.startswith({site!r}), mfdr.__file__; "
            f"assert str(e._CSRC).startswith({site!r}) and e._sources(), e._CSRC; print('ok')")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-3000:]


def test_sdist_holds_csrc(tmp_path):
    r = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (sdist,) = tmp_path.glob("mfdr-*.tar.gz")
    names = {Path(n).name for n in tarfile.open(sdist).getnames() if "/csrc/" in n}
    assert {p.name for p in (ROOT / "csrc").glob("*.cpp")} <= names
