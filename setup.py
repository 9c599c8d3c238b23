"""Builds the C++ CPU extension ``mfdr_kernels._C`` from ``csrc/`` (ninja; honours MAX_JOBS).

    pip install -e . --no-build-isolation      # setup.py imports torch: use the installed one

``MFDR_SKIP_BUILD=1`` installs the Python packages only; the extension is then built on first use.
"""

import glob
import importlib.util
import os

from setuptools import setup


def _env():
    """mfdr_kernels/_env.py, loaded by path (the package itself is not importable before the build)."""
    spec = importlib.util.spec_from_file_location("_mfdr_env", os.path.join("mfdr_kernels", "_env.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ext_modules, cmdclass = [], {}
if not _env().skip_build():
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules = [
        CppExtension(
            name="mfdr_kernels._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args=_env().cxx_flags(),
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
