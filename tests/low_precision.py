"""Shared by the ops' ``test_bf16.py`` files: flash-attention's tolerance rule and the backend recorder.

Imported as ``tests.low_precision`` (``tests/`` is a namespace package under ``--import-mode=importlib``;
see ``tests/bad_input.py``).
"""

import pytest
import torch

# err(cpp) <= factor * err(torch in the same dtype) + atol, for the output and for each gradient
TOL = {
    torch.bfloat16: {"factor": 2.0, "atol": 1e-5},
    torch.float32: {"factor": 2.0, "atol": 1e-6},
}
DTYPES = pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])


def record_backends(monkeypatch, op) -> list[str]:
    """The backends an op folder's ``op._impl`` is asked for from now on (forward, backward, ...), with
    ``MFDR_KERNELS_BACKEND`` unset so the automatic choice is what gets recorded."""
    calls, real = [], op._impl
    monkeypatch.setattr(op, "_impl", lambda name: calls.append(name) or real(name))
    monkeypatch.delenv("MFDR_KERNELS_BACKEND", raising=False)
    return calls
