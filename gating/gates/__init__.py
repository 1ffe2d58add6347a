"""Gated convolutions: the training semantics in plain PyTorch (``docs/design.md#gate-semantics``).

* ``partial_sum``: :class:`ChannelGatedConv2d`, the partial-sum channel gate.
* ``runtime``: :class:`RuntimeGatedConv2d`, the runtime channel-importance
  gate with per-input top-k output channels.
"""

from .partial_sum import (
    ChannelGatedConv2d,
    check_conv_input,
    total_variation,
    unsupported_reason,
)
from .runtime import PRUNERS, RuntimeGatedConv2d, unified_importance

__all__ = [
    "PRUNERS",
    "ChannelGatedConv2d",
    "RuntimeGatedConv2d",
    "check_conv_input",
    "total_variation",
    "unified_importance",
    "unsupported_reason",
]
