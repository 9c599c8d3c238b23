"""Shared fixtures of the model-level tests."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """torch on one thread for the test: tiny ops are fastest there (and not stalled by other processes on a
    shared machine), and subprocesses started with ``--threads 1`` then do the same arithmetic."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
