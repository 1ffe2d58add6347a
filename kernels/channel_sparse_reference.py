"""The channel-sparse conv in pure PyTorch: its reference, its tiling, its group lists and the work it executes.

``kernels.channel_sparse_conv2d`` (the Triton kernel in
:mod:`kernels.channel_sparse_conv2d`) computes, per sample ``n``, only the
output channels ``out_mask[n]`` keeps, from only the input channels
``in_mask[n]`` marks active (``docs/design.md#channel-sparse-kernel``)::

    y[n, o] = relu(keep[n, o] * (conv(x[n] * in_mask[n], W)[o] * scale[o] + shift[o]) + residual[n, o])

``keep = out_mask``. A pruned output is exactly 0 without a residual (and
``relu(residual)`` with one: the mask applies to the layer's output, before
the residual add, as in a ResNet block whose gated conv feeds the add).

Everything here is pure PyTorch (no Triton), so the registered op's CPU
implementation, the benchmarks' counting and the tests read one rule on any
machine:

* :func:`channel_sparse_conv2d_reference`: the spec above (float32 or wider
  epilogue, one cast back to x's dtype, channels_last output);
* :func:`channel_sparse_tiling`: the kernel's launch tiles;
* :func:`channel_group_lists`: the on-device per-sample lists of active
  channel groups the kernel reads (prefix sums and a scatter; no host sync);
* :func:`channel_sparse_macs`: the algorithmic MACs of the masks;
* :func:`channel_sparse_counters`: the counters the kernel reports for given
  masks (:data:`CHANNEL_SPARSE_FIELDS`).

The block rule: channels are cut into groups of :data:`CHANNEL_GROUP` (8, the
mask granularity of the runtime gate; the last group may be narrower). A group
is active when any of its channels is on, so masks need no alignment; inside
an active group, the channels that are off are masked (inputs read as zeros,
outputs written as pruned). Per sample, the active groups are listed first
(:func:`channel_group_lists`), and a ``block``-wide tile (16 by default, the
narrowest ``tl.dot`` operand) gathers ``block / 8`` consecutive entries of the
list: the K loop runs ``ceil(active input groups / (block/8))`` steps per tap
and each output tile ``block / 8`` active output groups, whatever their
positions. Masks constant within each group of 8 (``channel_group`` a
multiple of 8) therefore execute the algorithmic MACs, up to the rounding of
the active-group counts to whole tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ._common import PackedWeight, next_power_of_2, weight_4d
from ._validation import validate_channel_sparse

__all__ = [
    "CHANNEL_GROUP",
    "CHANNEL_SPARSE_FIELDS",
    "DEFAULT_CHANNEL_BLOCK",
    "GroupLists",
    "ChannelSparseTiling",
    "active_groups",
    "channel_group_lists",
    "channel_sparse_conv2d_reference",
    "channel_sparse_counters",
    "channel_sparse_macs",
    "channel_sparse_tiling",
]

DEFAULT_CHANNEL_BLOCK = 16
"""Channels per tile (``BLOCK_C``): the smallest ``tl.dot`` operand width, two groups of 8."""

CHANNEL_GROUP = 8
"""Channels per listed group: the granularity at which the kernel skips (the runtime gate's default
``channel_group``); 8 bfloat16/float16 channels are one 16-byte load."""

CHANNEL_SPARSE_FIELDS = ("programs", "output_tiles", "zero_tiles", "dot_tiles", "macs", "tile_macs", "block_m", "block")
"""The int64 counters of one channel-sparse call, in this order:

* ``programs``: programs launched, ``N * cdiv(OH*OW, block_m) * cdiv(G_out, block/8)``
  (``G = cdiv(C, 8)`` groups);
* ``output_tiles``: programs that computed a (sample, pixel tile, tile of active output
  groups): ``sum_n cdiv(active_out_n, block/8)`` per pixel tile;
* ``zero_tiles``: the other programs (they only write pruned outputs);
* ``dot_tiles``: ``tl.dot`` steps run, one per (output tile, tile of active input groups,
  filter tap);
* ``macs``: MACs of those steps over the real pixels and the real channels of the active
  groups (``sum_n OH*OW*kh*kw * width(active out groups) * width(active in groups)``);
* ``tile_macs``: ``dot_tiles * block_m * block * block``, what the MMA units ran padding included;
* ``block_m``, ``block``: the tile they were counted in.
"""


@dataclass(frozen=True)
class ChannelSparseTiling:
    """Launch configuration: ``block_m`` output pixels of one sample x ``block`` channels, K steps of ``block``."""

    block_m: int
    block: int
    num_warps: int
    num_stages: int


def channel_sparse_tiling(batch: int, pixels: int, block: int) -> ChannelSparseTiling:
    """Tiles for ``batch`` samples of ``pixels = OH*OW`` output pixels each.

    A tile never straddles two samples (the masks are per sample):
    ``block_m`` is 128 when the whole GEMM has at least 8192 rows and a sample
    at least 128 pixels, else 64, and never more than the next power of two
    of ``pixels`` (at least 16, for ``tl.dot``). Eight warps for 128 x >=128
    tiles, four otherwise.
    """
    block_m = 128 if batch * pixels >= 8192 and pixels >= 128 else 64
    block_m = min(block_m, max(16, next_power_of_2(max(pixels, 1))))
    return ChannelSparseTiling(block_m, block, 8 if block_m * block >= 128 * 128 else 4, 3)


class GroupLists(NamedTuple):
    """Per sample, its channel groups with the active ones first.

    ``order`` int32 ``[N, G]``: ``order[n, :counts[n]]`` the active groups of
    sample ``n`` ascending, then its inactive groups ascending (a permutation
    of ``0..G-1``, so tiles of consecutive entries cover every group once).
    ``counts`` int32 ``[N]``.
    """

    order: torch.Tensor
    counts: torch.Tensor


def active_groups(mask: torch.Tensor, group: int = CHANNEL_GROUP) -> torch.Tensor:
    """Bool ``[N, ceil(C / group)]``: a group is active when any of its channels is (``mask`` bool ``[N, C]``)."""
    n, channels = mask.shape
    groups = -(-channels // group)
    padded = F.pad(mask, (0, groups * group - channels)) if groups * group != channels else mask
    return padded.reshape(n, groups, group).any(dim=2)


def group_widths(channels: int, device: torch.device, group: int = CHANNEL_GROUP) -> torch.Tensor:
    """Int64 ``[ceil(channels / group)]``: the channels in each group (``group``, the last one possibly fewer)."""
    starts = torch.arange(0, channels, group, dtype=torch.int64, device=device)
    return (channels - starts).clamp(max=group)


def channel_group_lists(mask: torch.Tensor, group: int = CHANNEL_GROUP) -> GroupLists:
    """:class:`GroupLists` of ``mask`` (bool ``[N, C]``) on its device, with fixed-size outputs and no host sync.

    Prefix sums over the groups give each active group its slot among the
    active ones and each inactive group its slot after them; one scatter
    writes the permutation.
    """
    active = active_groups(mask, group)
    counts = active.sum(dim=1, dtype=torch.int32)
    slot_on = torch.cumsum(active, dim=1, dtype=torch.int32) - 1
    slot_off = counts[:, None] + torch.cumsum(~active, dim=1, dtype=torch.int32) - 1
    slot = torch.where(active, slot_on, slot_off).long()
    index = torch.arange(active.shape[1], dtype=torch.int32, device=mask.device).expand_as(slot)
    order = torch.empty(active.shape, dtype=torch.int32, device=mask.device)
    order.scatter_(1, slot, index)
    return GroupLists(order, counts)


def channel_sparse_macs(
    out_mask: torch.Tensor, in_mask: torch.Tensor | None, in_channels: int, kernel: tuple[int, int],
    out_hw: tuple[int, int],
) -> torch.Tensor:  # fmt: skip
    """0-d int64: ``sum_n kept_out_n * active_in_n * kh*kw*OH*OW``, the algorithmic MACs of the masks.

    ``out_mask`` bool ``[N, C_out]``; ``in_mask`` bool ``[N, C_in]`` or None
    (every input active). No host synchronisation.
    """
    kept = out_mask.sum(dim=1, dtype=torch.int64)
    active = kept.new_full(kept.shape, in_channels) if in_mask is None else in_mask.sum(dim=1, dtype=torch.int64)
    return (kept * active).sum() * (kernel[0] * kernel[1] * out_hw[0] * out_hw[1])


def channel_sparse_counters(
    out_mask: torch.Tensor, in_mask: torch.Tensor | None, in_channels: int, kernel: tuple[int, int],
    out_hw: tuple[int, int], block: int = DEFAULT_CHANNEL_BLOCK,
) -> torch.Tensor:  # fmt: skip
    """Int64 ``[8]`` on ``out_mask``'s device: the counters the kernel reports for these masks.

    Same arguments as :func:`channel_sparse_macs` plus ``block``; layout
    :data:`CHANNEL_SPARSE_FIELDS`, tiles from :func:`channel_sparse_tiling`.
    No host synchronisation (the masks are only reduced on device).
    """
    batch, out_channels = out_mask.shape
    device = out_mask.device
    pixels = out_hw[0] * out_hw[1]
    taps = kernel[0] * kernel[1]
    tiling = channel_sparse_tiling(batch, pixels, block)
    tiles = -(-pixels // tiling.block_m)
    per_tile = block // CHANNEL_GROUP
    out_on = active_groups(out_mask)
    out_tiles = -(-out_on.sum(dim=1, dtype=torch.int64) // per_tile)
    out_width = (out_on * group_widths(out_channels, device)).sum(dim=1)
    if in_mask is None:
        in_groups = -(-in_channels // CHANNEL_GROUP)
        in_tiles = out_tiles.new_full((batch,), -(-in_groups // per_tile))
        in_width = out_tiles.new_full((batch,), in_channels)
    else:
        in_on = active_groups(in_mask)
        in_tiles = -(-in_on.sum(dim=1, dtype=torch.int64) // per_tile)
        in_width = (in_on * group_widths(in_channels, device)).sum(dim=1)
    counters = torch.zeros(len(CHANNEL_SPARSE_FIELDS), dtype=torch.int64, device=device)
    counters[0] = batch * tiles * -(-out_on.shape[1] // per_tile)
    counters[1] = out_tiles.sum() * tiles
    counters[2] = counters[0] - counters[1]
    counters[3] = (out_tiles * in_tiles).sum() * (tiles * taps)
    counters[4] = (out_width * in_width).sum() * (pixels * taps)
    counters[5] = counters[3] * (tiling.block_m * block * block)
    counters[6] = tiling.block_m
    counters[7] = block
    return counters


def _masked_epilogue(
    y: torch.Tensor, out_mask: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
    residual: torch.Tensor | None, relu: bool,
) -> torch.Tensor:  # fmt: skip
    """``relu(out_mask * (y*scale + shift) + residual)`` in y's dtype (y ``[N, C_out, OH, OW]``)."""
    if scale is not None:
        y = y * scale.to(y.dtype)[None, :, None, None]
    if shift is not None:
        y = y + shift.to(y.dtype)[None, :, None, None]
    y = torch.where(out_mask[:, :, None, None], y, torch.zeros((), dtype=y.dtype, device=y.device))
    if residual is not None:
        y = y + residual.to(y.dtype)
    return torch.relu(y) if relu else y


def channel_sparse_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    out_mask: torch.Tensor,
    in_mask: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    block: int = DEFAULT_CHANNEL_BLOCK,
    groups: int = 1,
    return_counters: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Reference of :func:`kernels.channel_sparse_conv2d` (module docstring), densely computed and masked.

    x ``[N, C_in, H, W]`` and weight ``[C_out, C_in, kh, kw]`` (or a
    PackedWeight) of one floating dtype; ``out_mask`` bool ``[N, C_out]``;
    ``in_mask`` bool ``[N, C_in]`` or None (every input channel active; an
    inactive one is read as zeros whatever x holds); scale/shift ``[C_out]``;
    residual ``[N, C_out, OH, OW]``. ``block`` changes nothing here but the
    counters. Returns ``[N, C_out, OH, OW]`` in x's dtype, channels_last, and
    with ``return_counters`` also :func:`channel_sparse_counters` (what the
    kernel would report). Raises like the kernel
    (:func:`kernels._validation.validate_channel_sparse`).
    """
    weight = weight_4d(weight)
    geom = validate_channel_sparse(
        x, weight, out_mask, in_mask, block=block, stride=stride, padding=padding, dilation=dilation, scale=scale,
        shift=shift, residual=residual, groups=groups,
    )  # fmt: skip
    if in_mask is not None:
        x = torch.where(in_mask[:, :, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))
    acc = torch.promote_types(x.dtype, torch.float32)
    y = F.conv2d(x, weight, None, geom.stride, geom.padding, geom.dilation).to(acc)
    y = _masked_epilogue(y, out_mask, scale, shift, residual, relu)
    out = torch.empty(y.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last).copy_(y)
    if not return_counters:
        return out
    out_hw = (geom.out_height, geom.out_width)
    return out, channel_sparse_counters(out_mask, in_mask, geom.in_channels, geom.kernel, out_hw, block)
