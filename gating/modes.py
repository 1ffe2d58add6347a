"""``train_mode``: run a block with a module in train or eval mode, restoring its mode afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["train_mode"]


@contextmanager
def train_mode(module: nn.Module, mode: bool) -> Iterator[nn.Module]:
    """Set ``module.train(mode)`` for the block; on exit (errors included) put back the mode it had."""
    was_training = module.training
    module.train(mode)
    try:
        yield module
    finally:
        module.train(was_training)
