"""Builds the C++ CPU extension ``mfdr_kernels._C`` from ``csrc/`` (ninja; honours MAX_JOBS).

    pip install -e .                           # as the design card says
    pip install -e . --no-build-isolation      # the Makefile's way: builds the extension now

With build isolation (pip's default) the build runs in a fresh environment without torch, so the
extension cannot be compiled then: the Python packages are installed, and the extension is built on
first use (``mfdr_kernels._ext``, with the installed torch) — setup says so once. ``MFDR_SKIP_BUILD=1``
does the same on purpose. The C++ sources ship in the sdist and inside the package
(``mfdr_kernels/csrc/``), so the first-use build finds them in an installed wheel too.
"""

import glob
import importlib.util
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py


def _env():
    """mfdr_kernels/_env.py, loaded by path (the package itself is not importable before the build)."""
    spec = importlib.util.spec_from_file_location("_mfdr_env", os.path.join("mfdr_kernels", "_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithSources(build_py):
    """Also copies ``csrc/`` into the built package (``mfdr_kernels/csrc``) for the first-use build."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "mfdr_kernels", "csrc")
        os.makedirs(target, exist_ok=True)
        for path in glob.glob("csrc/*.cpp") + glob.glob("csrc/*.h"):
            shutil.copy(path, target)


def _torch_importable() -> bool:
    return importlib.util.find_spec("torch") is not None


ext_modules, cmdclass = [], {"build_py": BuildPyWithSources}
if _env().skip_build():
    print("mfdr: MFDR_SKIP_BUILD=1: the C++ extension will be built on first use", file=sys.stderr)
elif not _torch_importable():
    print("mfdr: torch is not importable in this build environment (pip's build isolation): installing the "
          "Python packages; the C++ extension will be built on first use with your torch "
          "(or now: pip install -e . --no-build-isolation)", file=sys.stderr)
else:
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules = [
        CppExtension(
            name="mfdr_kernels._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args=_env().cxx_flags(),
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass["build_ext"] = BuildExtension.with_options(use_ninja=True)

setup(ext_modules=ext_modules, cmdclass=cmdclass)
