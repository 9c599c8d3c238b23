"""Builds the C++ CPU extension ``mfdr_kernels._C`` from ``csrc/`` (ninja; honours MAX_JOBS).

    pip install -e . --no-build-isolation      # setup.py imports torch: use the installed one

``MFDR_SKIP_BUILD=1`` installs the Python packages only; the extension is then built on first use.
"""

import glob
import os

from setuptools import setup

ext_modules, cmdclass = [], {}
if os.environ.get("MFDR_SKIP_BUILD", "0") != "1":
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    ext_modules = [
        CppExtension(
            name="mfdr_kernels._C",
            sources=sorted(glob.glob("csrc/*.cpp")),
            extra_compile_args=["-O3", "-fopenmp", "-std=c++17"],
            extra_link_args=["-fopenmp"],
        )
    ]
    cmdclass = {"build_ext": BuildExtension.with_options(use_ninja=True)}

setup(ext_modules=ext_modules, cmdclass=cmdclass)
