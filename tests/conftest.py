"""Test-wide set-up. TRITON_INTERPRET must be set before anything imports triton, so the Triton
kernels run on the CPU here (tiny shapes: the interpreter costs ~6 ms per program instance)."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
