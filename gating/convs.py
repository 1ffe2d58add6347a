"""Kinds of convolution the model wrapper and the pruner treat specially, defined once."""

from __future__ import annotations

from torch import nn

__all__ = ["is_depthwise"]


def is_depthwise(module: nn.Module, multiplier: bool = False) -> bool:
    """Whether ``module`` is a depthwise ``nn.Conv2d``: one group per input channel (``groups = C_in > 1``).

    Strictly (the default) also ``C_out = C_in``, one filter per channel, so
    input and output channels are the same channels (what static pruning
    needs); with ``multiplier`` also ``C_out = k * C_in`` (a depthwise conv
    with channel multiplier ``k``).
    """
    if not isinstance(module, nn.Conv2d) or module.groups <= 1 or module.groups != module.in_channels:
        return False
    return module.out_channels % module.in_channels == 0 if multiplier else module.out_channels == module.in_channels
