"""Test set-up: Triton kernels run on CPU through the interpreter in CI.

``TRITON_INTERPRET`` must be set before ``triton`` is first imported, so it is
set here, at collection time, unless a CUDA device is present (then the same
tests run the compiled kernels).
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def single_thread():
    """Tiny tensors: one intra-op thread is faster and immune to OpenMP spin contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
