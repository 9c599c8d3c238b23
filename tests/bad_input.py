"""Helpers of the bad-input tables, one ``test_bad_input.py`` (or ``test_<module>_bad_input.py``) per package
of public entry points: each row an input, the exact exception type and a fragment of its message (which
names the argument, the file or the option).

The tests import this module as ``tests.bad_input``: under ``--import-mode=importlib`` (pyproject.toml),
pytest imports ``tests/`` as a namespace package (and ``python -m pytest`` from the repository root has it
on ``sys.path`` too); test files cannot import each other by plain name.
"""

import os
import re

import pytest
import torch

# triton runs here on CPU tensors, under the interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without CUDA)
TRITON_ON_CPU = os.environ.get("TRITON_INTERPRET") == "1"
BACKENDS = ["cpp", "torch", pytest.param("triton", marks=pytest.mark.skipif(
    not TRITON_ON_CPU, reason="the rows use CPU tensors: triton needs TRITON_INTERPRET=1 for them"))]
F64 = torch.float64
NAN, INF = float("nan"), float("inf")


def row(name, call, exc, fragment, env=None):
    """A table row: ``call`` raises ``exc`` with ``fragment`` in its message (with ``env`` set)."""
    return pytest.param(call, exc, fragment, env or {}, id=name)


def raises(exc, fragment):
    return pytest.raises(exc, match=re.escape(fragment))


def nan_at(x, *index, value=NAN):
    x = x.clone()
    x[index] = value
    return x


def leaf(shape, expand=None, dtype=F64):
    """A leaf tensor that takes gradients, and the input built from it (``expand(base)``)."""
    base = torch.randn(*shape, dtype=dtype, requires_grad=True)
    return base, (base if expand is None else expand(base))


def config_file(tmp, name, text):
    path = tmp / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return path
