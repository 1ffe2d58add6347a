"""Triton kernels of the gating engine as registered PyTorch ops, their PyTorch references and the channel partitions.

* :func:`conv2d`: dense implicit-GEMM convolution with a fused
  scale/shift/residual/ReLU epilogue (op ``gating::conv2d``); its launch
  configurations (:class:`ConvTiling`, the :data:`CANDIDATES`, the heuristic
  :func:`conv_tiling`, the override check :func:`check_tiling`, the timed
  choice per shape :func:`select_tiling`) are in :mod:`kernels.conv_tuning`,
  the tile pieces every conv kernel shares in :mod:`kernels.conv_tiles`.
* :func:`gated_conv2d`: partial-sum channel-gated convolution that skips the
  conditional work of gated-off (pixel, gate group) pairs on device, compacting
  each group's active pixels across the batch (op ``gating::gated_conv2d``);
  :class:`GatedConvStats` reads its work counters.
* :func:`channel_sparse_conv2d`: per-sample channel-sparse convolution that
  runs only the output-channel groups a runtime gate keeps over only the
  active input-channel groups (op ``gating::channel_sparse_conv2d``;
  ``docs/design.md#channel-sparse-kernel``); :func:`channel_sparse_counters`
  predicts its work counters from the masks (:data:`CHANNEL_SPARSE_FIELDS`),
  :func:`channel_sparse_macs` gives their algorithmic MACs and
  :func:`channel_group_lists` the on-device lists of active 8-channel
  groups it reads
  (:mod:`kernels.channel_sparse_reference`, pure PyTorch; the Triton kernel
  is :mod:`kernels.channel_sparse_conv2d`).
* :mod:`kernels.library` (and :mod:`kernels.channel_sparse_op`): the op registrations (reference on CPU, Triton on
  CUDA, fake implementations, FLOP formulas; ``docs/design.md#registered-ops``).
* :mod:`kernels.reference`: the PyTorch spec of the dense and gated
  convolutions, on any device and dtype (the channel-sparse one's is
  :func:`channel_sparse_conv2d_reference`).
* :class:`GateSpec`: the gate settings (``base_fraction``, ``base_layout``,
  ``gate_group``, ``gate_block``), defined and validated once (:mod:`kernels.spec`);
* :mod:`kernels.partition`: base layouts, gate groups and gate blocks
  (:func:`block_mean`; shared with ``gating``);
  :mod:`kernels.work`: the gated MAC rule (shared with ``gating.accounting``);
  :mod:`kernels.gated_tiling`: the gated kernel's tiles and schedules;
  :mod:`kernels.gated_override`: the tiles a call runs (:func:`schedule_tiling`)
  and the check of a ``tiling=`` override (:func:`check_gated_tiling`);
  :mod:`kernels.gated_work`: :func:`gated_kernel_counters`, the work it will
  execute on given decisions (pure PyTorch, any machine); :mod:`kernels.kernel_bytes`: the bytes the gated
  and dense kernels issue and the dense kernel's tile-rounded MACs
  (:func:`gated_kernel_bytes`, :func:`dense_kernel_bytes`,
  :func:`dense_kernel_macs`); :mod:`kernels.compaction`: the on-device lists
  of each gate group's active pixels (:func:`active_rows`). The gated Triton
  kernels live in :mod:`kernels.gated_first` (first launch), :mod:`kernels.gated_conv2d` (launch code),
  :mod:`kernels.gated_conditional` (the compacted conditional tiles) and
  :mod:`kernels.gated_blocks` (the tile pieces both share).
* :func:`conv_output_size`, :func:`conv_input_span`, :func:`as_pair`: the one
  conv-size rule and the one ``(h, w)`` normaliser.

Triton is a Linux-only dependency: where it is missing, ``TRITON_AVAILABLE`` is
False, the ops run their references on every device and the Triton launch
functions (``conv2d_triton``, ``gated_conv2d_triton``,
``channel_sparse_conv2d_triton``) are not exported.
This package never imports ``gating``.
"""

from ._common import PackedWeight, pack_weight
from ._validation import as_pair, conv_input_span, conv_output_size
from .library import TRITON_AVAILABLE, conv2d, conv2d_op, gated_conv2d, gated_conv2d_op
from .channel_sparse_op import channel_sparse_conv2d, channel_sparse_conv2d_op
from .channel_sparse_reference import (
    CHANNEL_GROUP,
    CHANNEL_SPARSE_FIELDS,
    DEFAULT_CHANNEL_BLOCK,
    GroupLists,
    channel_group_lists,
    channel_sparse_conv2d_reference,
    channel_sparse_counters,
    channel_sparse_macs,
    channel_sparse_tiling,
)
from .partition import (
    base_channels,
    base_mask,
    base_sizes,
    block_mean,
    chunk_bounds,
    chunk_count,
    expand_groups,
    gate_group_count,
    group_index,
    group_sum,
)
from .compaction import ActiveRows, active_rows, active_rows_bytes, active_rows_kernel_bytes
from .gated_tiling import (
    IN_PLACE_PERCENT,
    LAST_BLOCK_M,
    MAX_COMPACT_ROWS,
    SCHEDULES,
    TAIL_BLOCK_M,
    CompactTiling,
    GatedTiling,
    compact_tiling,
    gated_tiling,
    resolve_schedule,
)
from .gated_override import check_gated_tiling, schedule_tiling
from .gated_work import compact_tiles, gated_kernel_counters
from .conv_tuning import CANDIDATES, ConvTiling, candidates, check_tiling, clear_choices, conv_tiling, select_tiling
from .kernel_bytes import KernelBytes, dense_kernel_bytes, dense_kernel_macs, gated_kernel_bytes
from .reference import conv2d_reference, gated_conv2d_reference
from .spec import GateSpec
from .work import COUNTER_FIELDS, GatedConvStats, gated_mac_terms

__all__ = [
    "TRITON_AVAILABLE",
    "PackedWeight",
    "pack_weight",
    "as_pair",
    "conv_input_span",
    "conv_output_size",
    "conv2d",
    "conv2d_op",
    "ConvTiling",
    "CANDIDATES",
    "candidates",
    "check_tiling",
    "clear_choices",
    "conv_tiling",
    "select_tiling",
    "gated_conv2d",
    "gated_conv2d_op",
    "channel_sparse_conv2d",
    "channel_sparse_conv2d_op",
    "channel_sparse_conv2d_reference",
    "channel_sparse_counters",
    "channel_sparse_macs",
    "channel_sparse_tiling",
    "channel_group_lists",
    "GroupLists",
    "CHANNEL_GROUP",
    "CHANNEL_SPARSE_FIELDS",
    "DEFAULT_CHANNEL_BLOCK",
    "GateSpec",
    "GatedConvStats",
    "COUNTER_FIELDS",
    "gated_mac_terms",
    "GatedTiling",
    "gated_tiling",
    "gated_kernel_counters",
    "SCHEDULES",
    "CompactTiling",
    "compact_tiling",
    "compact_tiles",
    "TAIL_BLOCK_M",
    "LAST_BLOCK_M",
    "IN_PLACE_PERCENT",
    "MAX_COMPACT_ROWS",
    "KernelBytes",
    "gated_kernel_bytes",
    "dense_kernel_bytes",
    "dense_kernel_macs",
    "resolve_schedule",
    "schedule_tiling",
    "check_gated_tiling",
    "ActiveRows",
    "active_rows",
    "active_rows_bytes",
    "active_rows_kernel_bytes",
    "conv2d_reference",
    "gated_conv2d_reference",
    "base_channels",
    "base_mask",
    "base_sizes",
    "block_mean",
    "chunk_bounds",
    "chunk_count",
    "expand_groups",
    "gate_group_count",
    "group_index",
    "group_sum",
]

if TRITON_AVAILABLE:
    from .channel_sparse_op import channel_sparse_conv2d_triton
    from .library import conv2d_triton, gated_conv2d_triton

    __all__ += ["conv2d_triton", "gated_conv2d_triton", "channel_sparse_conv2d_triton"]
