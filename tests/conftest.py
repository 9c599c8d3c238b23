"""Test-wide set-up. Without a CUDA device, the Triton kernels run on the CPU under the interpreter:
TRITON_INTERPRET must be set before anything imports triton (``import torch`` does not). Tiny shapes:
the interpreter costs ~6 ms per program instance. With CUDA, the kernels are tested on the device."""

import os
import sys

import torch

assert "triton" not in sys.modules, "triton was imported before tests/conftest.py could set TRITON_INTERPRET"
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
