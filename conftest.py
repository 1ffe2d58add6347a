"""Test set-up of both suites (``tests/`` and ``benchmarks/``): Triton kernels run on CPU through the interpreter.

``TRITON_INTERPRET`` must be set before ``triton`` is first imported, so it is
set here, at the start of collection, unless a CUDA device is present (then
the same tests run the compiled kernels). This file sits at the repository
root so that it applies whichever suite is collected first, or alone.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
