"""Fixtures of ``tests/`` (the interpreter and thread set-up of both suites is the root ``conftest.py``)."""

import pytest
import torch


@pytest.fixture
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP spin contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
