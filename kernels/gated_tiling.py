"""The gated kernel's tiles and schedules, in pure PyTorch.

:func:`resolve_schedule` picks the schedule of a layer, :func:`gated_tiling`
and :func:`compact_tiling` the launch tiles of ``kernels.gated_conv2d``'s
Triton kernels, and :func:`block_ranges` / :func:`block_k_steps` /
:func:`column_steps` the K loops each program runs. They live away from
Triton so that the launcher and the work predictions
(:mod:`kernels.gated_work`: counters; :mod:`kernels.kernel_bytes`: issued
bytes) read one rule, on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch

from . import partition
from ._common import base_intervals, gemm_tile_mk, next_power_of_2

__all__ = [
    "MAX_COMPACT_ROWS",
    "MAX_BLOCK_N",
    "SCHEDULES",
    "TAIL_BLOCK_M",
    "LAST_BLOCK_M",
    "IN_PLACE_PERCENT",
    "CompactTiling",
    "GatedTiling",
    "block_k_steps",
    "block_ranges",
    "column_steps",
    "compact_tiling",
    "resolve_schedule",
    "gated_tiling",
    "tiling_tail",
]

MAX_BLOCK_N = 128
"""Widest column block of one program; wider gate groups are split into sub-blocks."""

SCHEDULES = ("auto", "compact", "tiled")
"""How :func:`gated_conv2d` skips conditional work: ``"compact"`` (two launches; the
conditional channels of each gate group run over its active pixels compacted
across the batch), ``"tiled"`` (one launch; a (pixel tile, channel block)
program runs its conditional loops when any decision it covers is on) or
``"auto"`` (:func:`resolve_schedule`)."""


@dataclass(frozen=True)
class GatedTiling:
    """Fixed launch configuration of :func:`gated_conv2d`, picked from the shape and gate_group.

    A program covers ``block_m`` pixels and ``groups_per_block`` whole gate
    groups laid out in ``sub_blocks`` column sub-blocks of ``block_n``; each
    group occupies ``group_slot`` columns (the next power of two of its size;
    the padding columns are masked).
    """

    block_m: int
    block_n: int
    block_k: int
    group_slot: int
    groups_per_block: int
    sub_blocks: int
    num_warps: int
    num_stages: int

    @property
    def first(self) -> GatedTiling:
        """The tiles of the launch that computes the base sums: this one launch."""
        return self

    @property
    def counted(self) -> GatedTiling:
        """The tiles the conditional work is counted in (the counters' tiling fields)."""
        return self


def gated_tiling(
    pixels: int, in_channels: int, out_channels: int, gate_group: int, base_fraction: float
) -> GatedTiling:
    """Tiles for :func:`gated_conv2d`; the skipping granularity is one program.

    With ``s = next_power_of_2(min(gate_group, C_out))``:

    * ``s <= 16`` (gate_group 1..16): ``block_n = 16`` holding ``16 // s``
      groups (gate_group 1: 16 per-channel decisions, the tile runs its
      conditional loop if any (pixel, channel) of it is on);
    * ``16 < s <= 128``: one group per program, ``block_n = s``; for gate
      groups 16, 32, 64 work is exactly proportional to active (pixel tile,
      gate group) pairs;
    * ``s > 128``: one group per program in ``ceil(size / 128)`` sub-blocks of
      128 columns; the base sum is computed twice (decision pass and output
      pass) to keep the tile in registers.

    ``block_m`` and ``block_k`` from :func:`gemm_tile_mk` over
    ``partition.base_channels(C_in, base_fraction)`` (the channels of one base
    K loop).
    """
    slot = next_power_of_2(min(gate_group, out_channels))
    if slot <= 16:
        block_n, groups_per_block, sub_blocks = 16, 16 // slot, 1
    elif slot <= MAX_BLOCK_N:
        block_n, groups_per_block, sub_blocks = slot, 1, 1
    else:
        slot = block_n = MAX_BLOCK_N
        groups_per_block, sub_blocks = 1, -(-min(gate_group, out_channels) // MAX_BLOCK_N)
    block_m, block_k = gemm_tile_mk(pixels, partition.base_channels(in_channels, base_fraction))
    return GatedTiling(block_m, block_n, block_k, slot, groups_per_block, sub_blocks, 4, 3)


@functools.lru_cache(maxsize=256)
def block_ranges(
    block_n: int, group_slot: int, groups_per_block: int, sub_blocks: int,
    in_channels: int, out_channels: int, base_fraction: float, base_layout: str, gate_group: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per (channel block, sub-block) of a program's columns: ``(hull_lo, hull_hi, r1_hi, r2_lo)``.

    The same ranges as ``_block_channels`` / ``_path_ranges`` in the kernel:
    the base loop covers ``[hull_lo, hull_hi)``, the conditional loops
    ``[0, r1_hi)`` and ``[r2_lo, C_in)``. int64 ``[blocks, sub_blocks]`` each,
    on CPU; cached per configuration (callers only read them), so counting a
    layer batch after batch does not rebuild them.
    """
    base = base_intervals(out_channels, in_channels, base_fraction, base_layout, torch.device("cpu"))
    groups = partition.gate_group_count(out_channels, gate_group)
    blocks = -(-groups // groups_per_block)
    col = torch.arange(block_n)
    sub = torch.arange(sub_blocks)
    block = torch.arange(blocks)
    within = (col % group_slot)[None, :] + sub[:, None] * block_n  # [S, BN]
    ch = (block[:, None, None] * groups_per_block + (col // group_slot)[None, None, :]) * gate_group
    ch = ch + within[None]  # [B, S, BN]
    ok = (within[None] < gate_group) & (ch < out_channels)
    safe = ch.clamp(max=out_channels - 1)
    lo, hi = base.lo.long()[safe], base.hi.long()[safe]
    hull_lo = torch.where(ok, lo, in_channels).amin(dim=2)
    hull_hi = torch.where(ok, hi, 0).amax(dim=2)
    common_lo = torch.where(ok, lo, 0).amax(dim=2)
    common_hi = torch.where(ok, hi, in_channels).amin(dim=2)
    split = common_hi > common_lo
    r1_hi = torch.where(split, common_lo, in_channels)
    r2_lo = torch.where(split, common_hi, in_channels)
    return hull_lo, hull_hi, r1_hi, r2_lo


def _steps(c_lo: torch.Tensor | int, c_hi: torch.Tensor | int, block_k: int) -> torch.Tensor:
    """``k_steps`` of the kernel: iterations of a ``range(c_lo, c_hi, block_k)`` channel loop."""
    span = torch.as_tensor(c_hi - c_lo).clamp(min=0)
    return (span + block_k - 1) // block_k


def block_k_steps(
    tiling: GatedTiling, block_k: int, in_channels: int, out_channels: int, base_fraction: float,
    base_layout: str, gate_group: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Per channel block (program column): K steps of one base loop and of both conditional loops.

    Summed over the block's sub-blocks, at ``block_k``: int64 ``[blocks]`` each.
    """
    hull_lo, hull_hi, r1_hi, r2_lo = block_ranges(
        tiling.block_n, tiling.group_slot, tiling.groups_per_block, tiling.sub_blocks,
        in_channels, out_channels, base_fraction, base_layout, gate_group,
    )  # fmt: skip
    base = _steps(hull_lo, hull_hi, block_k).sum(dim=1)
    conditional = (_steps(0, r1_hi, block_k) + _steps(r2_lo, in_channels, block_k)).sum(dim=1)
    return base, conditional


MAX_COMPACT_ROWS = 128
"""Rows of the compacted schedule's main conditional tiles (fewer when the layer has fewer output pixels).

Each group's remainder runs in 64-, 32-, 16- and 8-row tiles (:func:`kernels.compact_tiles`), so the height
changes no MAC; a taller main tile loads a group's weight columns once per more rows. Counted on recorded
decisions and blob masks (``benchmarks/results/tiling_sweep_counts_cpu.json``, ``python -m
benchmarks.tiling_sweep``), 128 issues the fewest bytes of 16/32/64/128 in all 26 (network, batch) cases."""


IN_PLACE_PERCENT = 80
"""Default ``CompactTiling.in_place_percent``: the share (%) of a first-launch tile's (pixel, group) pairs that
must be on for the tile to run its conditional work in place (0: never).

80: an in-place tile then runs at most 1.25x its active pairs' conditional MACs (the lowest round share
under the 1.3x bound of ``docs/design.md#kernels``), while a layer whose gates are all on reads its input
once per tile of up to 128 channels instead of once per gate group. Counted on ResNet-18/50 blob masks at
``gate_group`` 32, batch 8 and 64 (``benchmarks/results/tiling_sweep_counts_cpu.json``; roofline estimate over
the dense kernel's, worst machine balance), 0 -> 80: density 1.0 1.62-2.30 -> 1.00-1.01, 0.5 0.95-1.32 ->
0.93-1.25, unchanged within 0.002 at 0.25 and below and on recorded decisions."""


TAIL_BLOCK_M = 16
"""Rows of a tail tile of the compacted schedule: the smallest tensor-core MMA M (``mma.sync`` m16)."""


LAST_BLOCK_M = 8
"""Rows of the last tile of a compacted column, run transposed: the pixels are the MMA's N, which the tensor
cores run 8 wide (``mma.sync`` m16n8k16), so a group pads at most 7 rows instead of 15."""


@dataclass(frozen=True)
class CompactTiling:
    """Launch configuration of the compacted schedule of :func:`gated_conv2d`.

    ``base`` tiles the first launch (base sums and decisions, every pixel:
    dense, so a program holds as many whole gate groups as fit in
    ``MAX_BLOCK_N`` columns). The conditional launch runs one column of
    ``block_n`` channels of one gate group (``sub_blocks`` columns per group
    wider than ``MAX_BLOCK_N``; columns past the group's size are masked)
    over tiles of ``block_m`` compacted active
    pixels of that group, ``block_k`` input channels per K step: it runs a
    group's full tiles, and the remainder launches (:attr:`remainder_heights`)
    the rest of its pixels (``r < block_m``) in binary: one full tile of each
    height ``block_m/2, ..., 32`` whose bit is set in ``r``; of the last
    ``r % 32`` rows, a :data:`TAIL_BLOCK_M`-row tile per 16 rows with more
    than 8 left, then one transposed :data:`LAST_BLOCK_M`-row tile for the
    1 to 8 rows after them (:func:`kernels.compact_tiles`), with the same
    columns and K walk (warps: :meth:`warps_of`). ``in_place_percent``
    (0-100): a first-launch tile with at least that share of its (pixel,
    group) pairs on runs its conditional work in place, over its full
    ``base.block_m x base.block_n`` tile, and leaves nothing to the
    conditional launch; 0 never does (:data:`IN_PLACE_PERCENT`).
    ``tile_major``: the conditional launch numbers its programs tile by tile
    (tile ``t`` of every group, then tile ``t + 1``), so groups whose lists
    cover the same pixels read their input rows at about the same time (L2
    reuse, which the issued-bytes count does not see); False numbers them
    group by group. Either order runs the same tiles.
    Decisions over blocks of pixels (``gate_block > 1``) are made after the
    first launch, which then runs nothing in place.
    """

    base: GatedTiling
    block_m: int
    block_n: int
    block_k: int
    sub_blocks: int
    flat_k: bool
    num_warps: int
    num_stages: int
    tail_num_warps: int
    in_place_percent: int = 0
    tile_major: bool = True

    @property
    def remainder_heights(self) -> tuple[int, ...]:
        """Tile heights of the remainder launches, tallest first: ``block_m/2, ..., 32``, then
        :data:`TAIL_BLOCK_M` and :data:`LAST_BLOCK_M`.

        A column runs one tile of a height ``h >= 32`` when bit ``h`` of its
        remainder is set, up to two tiles of 16 and one of 8.
        """
        heights, height = [], self.block_m // 2
        while height > TAIL_BLOCK_M:
            heights.append(height)
            height //= 2
        return (*heights, TAIL_BLOCK_M, LAST_BLOCK_M)

    def warps_of(self, height: int) -> int:
        """Warps of the conditional launch of tiles ``height`` rows tall.

        ``num_warps`` for ``block_m``; ``tail_num_warps`` for 16; 4 (one
        warpgroup, which a Hopper warpgroup MMA needs) from 64 rows; twice
        ``tail_num_warps``, at most 4, for 32; for the transposed 8-row tile
        one warp per 16 columns, at most 4, and no more than leave each thread
        two elements of its ``8 x block_k`` input tile (compiled for sm_90, 32
        columns at ``block_k`` 64 took 168 registers and spilled on one warp,
        95 on two; 16 columns on two warps, or 64 columns at ``block_k`` 16 on
        four, loaded their inputs as scalar 16-bit loads).
        """
        if height == self.block_m:
            return self.num_warps
        if height == TAIL_BLOCK_M:
            return self.tail_num_warps
        if height == LAST_BLOCK_M:
            return min(4, max(1, self.block_n // 16), max(1, LAST_BLOCK_M * self.block_k // 64))
        return 4 if height >= 64 else min(4, 2 * self.tail_num_warps)

    @property
    def columns(self) -> GatedTiling:
        """The conditional launch's columns as a one-group-per-program :class:`GatedTiling`."""
        return GatedTiling(self.block_m, self.block_n, self.block_k, self.block_n, 1, self.sub_blocks,
                           self.num_warps, self.num_stages)  # fmt: skip

    @property
    def first(self) -> GatedTiling:
        """The tiles of the launch that computes the base sums."""
        return self.base

    @property
    def counted(self) -> GatedTiling:
        """The tiles the conditional work is counted in (the counters' tiling fields): the columns."""
        return self.columns


@functools.lru_cache(maxsize=512)
def compact_tiling(
    pixels: int, in_channels: int, out_channels: int, kernel: tuple[int, int], gate_group: int, base_fraction: float,
    base_layout: str,
) -> CompactTiling:  # fmt: skip
    """Tiles of the compacted schedule.

    First launch: :func:`gated_tiling`'s, with the columns widened to
    ``min(128, next_power_of_2(C_out))`` (whole groups) for the ``"first"``
    layout, whose base channels are the same for every output channel (the
    ``"grouped"`` layout keeps the narrow blocks, whose base hull stays short),
    on 8 warps from 64 x 128 tiles (4 below): with the in-place conditional
    loops, 4 warps compiled for sm_90 at the 255-register cap.
    Conditional launch: ``block_n`` = the group's column slot, at least 16
    (``tl.dot``'s minimum: a group of fewer than 16 channels runs padded,
    masked columns) and at most 128 (sub-blocks beyond); ``block_m`` =
    :data:`MAX_COMPACT_ROWS`, or ``pixels`` rounded down to a power of two
    (at least 16) when fewer, the remainder of each group in 64/32/16/8-row
    tiles (:attr:`CompactTiling.remainder_heights`; the 16-row ones on 1
    warp for ``block_n <= 32``, 2 for 64, 4 for 128: m16 MMAs; the 8-row
    ones on one warp per 16 columns, at most 4: :meth:`CompactTiling.warps_of`);
    ``block_k`` in {64, 32, 16}
    and the K walk (per tap, or ``flat_k``: over the flattened (tap, channel)
    K, which pads once per column instead of once per tap) with the least K
    padding over the layer's conditional ranges (per tap, then the largest
    ``block_k``, on ties: its loads stay contiguous). Cached per shape, so a
    call after the first does no tiling work.
    """
    layer = (in_channels, out_channels, base_fraction, base_layout, gate_group)
    base = gated_tiling(pixels, in_channels, out_channels, gate_group, base_fraction)
    if base_layout == "first" and base.sub_blocks == 1:
        width = max(base.block_n, min(MAX_BLOCK_N, next_power_of_2(out_channels)))
        base = dataclasses.replace(base, block_n=width, groups_per_block=width // base.group_slot,
                                   num_warps=8 if base.block_m * width >= 64 * 128 else 4)  # fmt: skip
    base = dataclasses.replace(base, block_k=_least_padded_block_k(base, layer, "base"))
    slot = next_power_of_2(min(gate_group, out_channels))
    block_n, sub_blocks = (max(16, slot), 1) if slot <= MAX_BLOCK_N else (MAX_BLOCK_N, base.sub_blocks)
    block_m = min(MAX_COMPACT_ROWS, max(16, _floor_power_of_2(pixels)))
    columns = GatedTiling(block_m, block_n, 16, block_n, 1, sub_blocks, 4, 3)
    taps = kernel[0] * kernel[1]

    def padded(flat_k: bool, block_k: int) -> int:
        steps = column_steps(columns, block_k, flat_k, taps, layer)
        return int(steps.sum()) * block_k

    flat_k, block_k = min(
        ((flat, k) for flat in (False, True) for k in (64, 32, 16)), key=lambda c: (padded(*c), c[0], -c[1])
    )
    num_warps = 8 if block_m * block_n >= 128 * 128 else 4
    tail_num_warps = max(1, block_n // 32)
    return CompactTiling(base, block_m, block_n, block_k, sub_blocks, flat_k, num_warps, 3, tail_num_warps,
                         IN_PLACE_PERCENT)  # fmt: skip


def column_steps(
    columns: GatedTiling, block_k: int, flat_k: bool, taps: int, layer: tuple[int, int, float, str, int]
) -> torch.Tensor:
    """K steps (taps included) of one conditional tile of each gate group, summed over its sub-blocks: int64 ``[G]``."""
    in_channels = layer[0]
    _, _, r1_hi, r2_lo = block_ranges(columns.block_n, columns.group_slot, 1, columns.sub_blocks, *layer)
    if flat_k:
        return _steps(0, taps * (r1_hi + in_channels - r2_lo), block_k).sum(dim=1)
    return taps * (_steps(0, r1_hi, block_k) + _steps(r2_lo, in_channels, block_k)).sum(dim=1)


def _least_padded_block_k(tiling: GatedTiling, layer: tuple[int, int, float, str, int], path: str) -> int:
    """``block_k`` in {64, 32, 16} with the fewest padded channels over ``path``'s loops of every column.

    The largest wins ties.
    """

    def padded(block_k: int) -> int:
        base, conditional = block_k_steps(tiling, block_k, *layer)
        return int((base if path == "base" else conditional).sum()) * block_k

    return min((64, 32, 16), key=lambda k: (padded(k), -k))


def _floor_power_of_2(n: int) -> int:
    return 1 << (max(n, 1).bit_length() - 1)


def resolve_schedule(schedule: str, gate_group: int, out_channels: int, gate_block: int = 1) -> str:
    """``"compact"`` or ``"tiled"``: ``schedule`` itself, or what ``"auto"`` picks for the layer.

    ``"auto"`` compacts when a gate group fills at least 16 columns (the
    narrowest tensor-core tile), i.e. ``next_power_of_2(min(gate_group,
    C_out)) >= 16``; narrower groups would pad every compacted column to 16
    channels, which the tiled schedule's 16-column programs do not. Decisions
    over blocks of pixels (``gate_block > 1``, computed by the kernel) need
    every base sum of a block before any conditional work, which only the
    compacted schedule's two launches give: ``"auto"`` then compacts at any
    group width. Raises ``TypeError`` / ``ValueError`` naming ``schedule``
    unless it is one of :data:`SCHEDULES`, and ``ValueError`` for ``"tiled"``
    with ``gate_block > 1``.
    """
    if not isinstance(schedule, str):
        raise TypeError(f"schedule must be a str, one of {SCHEDULES}; got {type(schedule).__name__}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    partition.check_gate_block(gate_block)
    if schedule == "tiled" and gate_block > 1:
        raise ValueError(
            f"schedule='tiled' cannot decide over blocks of pixels (gate_block={gate_block}): a block's decision "
            "needs all its base sums before any conditional work; use 'compact' or 'auto'"
        )
    if schedule != "auto":
        return schedule
    if gate_block > 1:
        return "compact"
    return "compact" if next_power_of_2(min(gate_group, out_channels)) >= 16 else "tiled"


def tiling_tail(tiling: GatedTiling) -> tuple[int, int, int, int, int]:
    """The tiling fields of the counters: ``(block_m, block_n, block_k, groups_per_block, sub_blocks)``."""
    return (tiling.block_m, tiling.block_n, tiling.block_k, tiling.groups_per_block, tiling.sub_blocks)
