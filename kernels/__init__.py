"""Triton kernels of the gating engine, their PyTorch references and the shared channel partitions.

* :func:`conv2d`: dense implicit-GEMM convolution with a fused
  scale/shift/residual/ReLU epilogue.
* :func:`gated_conv2d`: partial-sum channel-gated convolution that skips the
  conditional work of gated-off (pixel tile, gate group) pairs on device.
* :mod:`kernels.reference`: the PyTorch spec of both, on any device and dtype.
* :mod:`kernels.partition`: base layouts and gate groups (shared with ``gating``).

Triton is a Linux-only dependency: where it is missing, ``TRITON_AVAILABLE`` is
False and only the references, partitions and weight packing are exported.
This package never imports ``gating``.
"""

from ._common import PackedWeight, pack_weight
from .partition import (
    base_channels,
    base_mask,
    chunk_bounds,
    chunk_count,
    expand_groups,
    gate_group_count,
    group_index,
    group_sum,
)
from .reference import conv2d_reference, gated_conv2d_reference

try:
    from .conv2d import conv2d
    from .gated_conv2d import GatedConvStats, gated_conv2d
except ModuleNotFoundError as error:
    if error.name != "triton":
        raise
    TRITON_AVAILABLE = False
else:
    TRITON_AVAILABLE = True

__all__ = [
    "TRITON_AVAILABLE",
    "PackedWeight",
    "pack_weight",
    "conv2d_reference",
    "gated_conv2d_reference",
    "base_channels",
    "base_mask",
    "chunk_bounds",
    "chunk_count",
    "expand_groups",
    "gate_group_count",
    "group_index",
    "group_sum",
] + (["conv2d", "gated_conv2d", "GatedConvStats"] if TRITON_AVAILABLE else [])
