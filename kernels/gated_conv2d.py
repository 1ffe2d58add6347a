"""Partial-sum channel-gated convolution in Triton (``docs/design.md#partial-sum-gate``, ``docs/design.md#kernels``).

This module holds the launch code; the first (for the tiled schedule, the
only) kernel is in :mod:`kernels.gated_first`, the compacted schedule's
second kernel in :mod:`kernels.gated_conditional`, the tile pieces both share
in :mod:`kernels.gated_blocks`. Two schedules (:data:`kernels.gated_tiling.SCHEDULES`). Compacted (the
default for gate groups of 16 channels or more): a first launch computes,
per (pixel tile, block of whole gate groups), the base partial sum, the
decisions and the epilogue of the base sum where the gate is off (a tile
mostly on runs its conditional loops too, in place); the active pixels left
of each gate group are listed across the batch on device
(:mod:`kernels.compaction`); a second launch runs each group's conditional
channels as an implicit GEMM over tiles of its listed pixels (rows of
different images share a tile) and stores their outputs; it runs only full
tiles, and launches of the same kernel run each group's remainder in 64-,
32-, 16- and 8-row tiles (the last transposed: its pixels are the MMA's N).
Tiled: one launch whose (pixel tile, channel block) programs compute the
base sum and decisions and run the conditional sum only if some decision of
the tile is on. Grids are sized by the upper bound and
programs skip on the on-device decisions, so there is no host
synchronisation and the call is CUDA-graph capturable (after one warm-up call
per configuration, which compiles the kernels and caches the base intervals
and the counters template). :func:`gated_conv2d` here is the CUDA
implementation of the registered op ``gating::gated_conv2d``
(``docs/design.md#registered-ops``); :func:`kernels.gated_conv2d` is the
public entry point.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton

from . import partition
from ._common import (
    BaseIntervals,
    PackedWeight,
    base_intervals,
    channels_last,
    contiguous_vector,
    device_guard,
    dot_options,
    new_decisions,
    new_output,
    optional_pointer,
    packed_data,
    require_kernel_support,
    tensor_strides,
    weight_4d,
)
from ._validation import ConvGeometry, validate_gated
from .compaction_kernels import active_rows_triton
from .conv_tiles import PATH_BASE, PATH_CONDITIONAL, PATH_DENSE
from .gated_conditional import TILES_FULL, TILES_LAST, TILES_LEVEL, TILES_TAIL, _gated_conditional_kernel
from .gated_first import _gated_conv2d_kernel
from .gated_override import schedule_tiling
from .gated_tiling import LAST_BLOCK_M, TAIL_BLOCK_M, CompactTiling, GatedTiling, resolve_schedule, tiling_tail
from .spec import GateSpec


# (TILES, programs per column) of the remainder launches below 32 rows; the taller ones are TILES_LEVEL, one each.
_REMAINDER_LAUNCHES = {TAIL_BLOCK_M: (TILES_TAIL, 2), LAST_BLOCK_M: (TILES_LAST, 1)}


@functools.lru_cache(maxsize=256)
def _counters_template(tiling: tuple[int, int, int, int, int], device: torch.device) -> torch.Tensor:
    """int64 ``[9]``: zero work counters, then ``tiling`` (see :mod:`kernels.work`), cached per device.

    Each call clones it on device, so after a warm-up call there is no
    host-to-device copy (CUDA-graph capturable).
    """
    return torch.tensor([0, 0, 0, 0, *tiling], dtype=torch.int64).to(device)


def gated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    gate_scale: torch.Tensor,
    gate_shift: torch.Tensor,
    *,
    base_fraction: float = GateSpec.base_fraction,
    base_layout: str = GateSpec.base_layout,
    gate_group: int = GateSpec.gate_group,
    gate_block: int = GateSpec.gate_block,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    groups: int = 1,
    decisions: torch.Tensor | None = None,
    count_work: bool = False,
    schedule: str = "auto",
    tiling: GatedTiling | CompactTiling | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton launch of the partial-sum channel-gated conv (groups=1) that skips gated-off conditional work on device.

    Semantics: exactly :func:`kernels.reference.gated_conv2d_reference`
    (base mask from :func:`partition.base_mask`, ``z = Yp*gate_scale +
    gate_shift``, decision ``block_mean(group_sum(z), gate_block) > 0`` per (pixel, gate group),
    ``out = relu((Yp + d*Yr)*scale + shift + residual)``), float32 accumulation.
    Runs on CUDA tensors (launched under x's device), or on CPU tensors under
    ``TRITON_INTERPRET=1``.

    Args:
        x: ``[N, C_in, H, W]`` float16/bfloat16/float32; converted once to
            channels_last if needed.
        weight: ``[C_out, C_in, kh, kw]`` in x's dtype, or a :class:`PackedWeight`
            (or its ``unpack()`` view: no packing copy).
        gate_scale, gate_shift: float ``[C_out]``, the gate folded to an
            affine of the base partial sum.
        base_fraction, base_layout: the base partition (``"first"`` or ``"grouped"``).
        gate_group: output channels per decision (any int >= 1; see
            :func:`gated_tiling` for how finely each size skips).
        gate_block: side of the square pixel block sharing one decision per
            group (:func:`partition.block_mean`); above 1 the first launch
            stores each pixel's group statistic, the launcher averages it per
            block and decides (a few small PyTorch ops on device, no host
            sync), and the compacted launch skips the gated-off blocks' pixels.
            Needs the compacted schedule.
        stride, padding, dilation, scale, shift, residual, relu, groups: as
            :func:`kernels.conv2d.conv2d`.
        decisions: optional bool ``[N, G, OH, OW]`` used instead of computing
            them (the gate statistic is then skipped).
        count_work: count the work executed into the counters (atomics).
        schedule: ``"auto"`` (default: :func:`kernels.gated_tiling.resolve_schedule`,
            compact for gate groups of 16 channels or more), ``"compact"`` or
            ``"tiled"`` (:data:`kernels.gated_tiling.SCHEDULES`). Compact: a first launch
            computes the base sums and decisions of every pixel and stores
            the epilogue of the base sum where the gate is off; the active pixels of each gate group
            are listed across the batch on device (:func:`kernels.compaction.active_rows`, by
            :func:`kernels.compaction_kernels.active_rows_triton`);
            a second launch runs each group's conditional channels over tiles
            of its listed pixels only and stores their outputs. Tiled: one
            launch whose (pixel tile, channel block) programs run their
            conditional loops when any decision they cover is on.
        tiling: launch tiles to use instead of the layer's own
            (:func:`kernels.gated_override.schedule_tiling`): a
            :class:`kernels.gated_tiling.CompactTiling` for the compact
            schedule, a :class:`kernels.gated_tiling.GatedTiling` for the
            tiled one, e.g. ``dataclasses.replace(kernels.compact_tiling(...),
            block_m=64)``. Checked against the layer
            (:func:`kernels.gated_override.check_gated_tiling`): ``TypeError`` /
            ``ValueError`` naming ``tiling`` and the reason when it does not
            fit. It changes speed and the counted work, not the result;
            :func:`kernels.gated_kernel_counters` takes the same argument.

    Returns:
        Fresh ``(out, decisions, counters)``: out ``[N, C_out, OH, OW]`` in x's
        dtype, channels_last; decisions bool ``[N, G, OH, OW]``,
        ``G = ceil(C_out / gate_group)``, channels_last (a copy of the given
        ones, if any); counters int64 ``[9]`` laid out as
        :data:`kernels.work.COUNTER_FIELDS` with ``count_work`` (the tiling
        fields are the conditional tiles'), else an empty int64 ``[0]``.
        Work: the base K loop covers only each channel block's base input
        channels; conditional K loops run only for active decisions, in the
        schedule's unit (:func:`kernels.gated_kernel_counters` predicts it). No
        host sync (CUDA-graph capturable after a warm-up call); an empty batch
        returns empty results without a launch. Inference only.
    """
    weight = weight_4d(weight)
    geom = validate_gated(
        x, weight, gate_scale, gate_shift,
        base_fraction=base_fraction, base_layout=base_layout, gate_group=gate_group, gate_block=gate_block,
        decisions=decisions, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift,
        residual=residual, groups=groups,
    )  # fmt: skip
    block = gate_block if decisions is None else 1  # given decisions are used as they are
    schedule = resolve_schedule(schedule, gate_group, geom.out_channels, block)
    require_kernel_support(x)
    tiling = schedule_tiling(
        schedule, geom.pixels, geom.in_channels, geom.out_channels, geom.kernel, gate_group, base_fraction, base_layout,
        tiling,
    )
    y = new_output(geom, x)
    out_decisions = new_decisions(geom, gate_group, x)
    if decisions is not None:
        out_decisions.copy_(decisions)
    counters = _counters_template(tiling_tail(tiling.counted), x.device).clone() if count_work else _no_counters(x)
    if geom.pixels == 0:
        return y, out_decisions, counters
    launch = _GatedLaunch(
        geom, tiling, gate_group, channels_last(x), packed_data(weight), y, out_decisions.view(torch.uint8),
        contiguous_vector(gate_scale), contiguous_vector(gate_shift),
        base_intervals(geom.out_channels, geom.in_channels, base_fraction, base_layout, x.device),
        contiguous_vector(scale), contiguous_vector(shift), residual, relu, decisions is not None, block,
        counters if count_work else None,
    )  # fmt: skip
    with device_guard(x):
        launch.run()
    return y, out_decisions, counters


def _no_counters(x: torch.Tensor) -> torch.Tensor:
    """The empty int64 ``[0]`` counters of a call that counts nothing (no kernel launched for them)."""
    return torch.empty(0, dtype=torch.int64, device=x.device)


def _slot_is_group(tiling: GatedTiling, gate_group: int) -> bool:
    """Whether every gate group exactly fills its column slot (the kernels' ``SLOT_IS_GROUP`` promise)."""
    return gate_group == tiling.group_slot and tiling.sub_blocks == 1


@dataclass(frozen=True)
class _GatedLaunch:
    """Checked, laid-out arguments of one gated call's launches (``w`` packed ``[kh, kw, C_in, C_out]``)."""

    geom: ConvGeometry
    tiling: GatedTiling | CompactTiling  # the schedule's tiles (``tiling.first``: the first launch's)
    gate_group: int
    x: torch.Tensor
    w: torch.Tensor
    y: torch.Tensor
    dec_bytes: torch.Tensor  # uint8 view of the output decisions, read when given, written otherwise
    gate_scale: torch.Tensor
    gate_shift: torch.Tensor
    base: BaseIntervals
    scale: torch.Tensor | None
    shift: torch.Tensor | None
    residual: torch.Tensor | None
    relu: bool
    decisions_given: bool
    gate_block: int  # > 1: the first launch stores statistics and the launcher decides per block
    counters: torch.Tensor | None  # counted into when not None

    def run(self) -> None:
        geom, tiling, y = self.geom, self.tiling.first, self.y
        num_gate_groups = partition.gate_group_count(geom.out_channels, self.gate_group)
        base_sums = statistic = pending = None
        in_place = 0  # IN_PLACE_PERCENT: decided over pixel blocks only after the first launch, nothing in place
        if isinstance(self.tiling, CompactTiling):
            base_sums = torch.empty(geom.pixels, geom.out_channels, dtype=torch.float32, device=y.device)
            if self.gate_block == 1 and self.tiling.in_place_percent:
                in_place = self.tiling.in_place_percent
                pending = torch.empty(geom.pixels, num_gate_groups, dtype=torch.uint8, device=y.device)
        if self.gate_block > 1:
            statistic = torch.empty_strided(
                self.dec_bytes.shape, self.dec_bytes.stride(), dtype=torch.float32, device=y.device
            )
        grid = (triton.cdiv(geom.pixels, tiling.block_m) * triton.cdiv(num_gate_groups, tiling.groups_per_block),)
        _gated_conv2d_kernel[grid](
            self.x, self.w, y, optional_pointer(base_sums, y), self.dec_bytes, optional_pointer(statistic, y),
            optional_pointer(pending, y), self.gate_scale, self.gate_shift,
            self.base.lo, self.base.hi, *self._epilogue_pointers(),
            geom.pixels, geom.height, geom.width, geom.in_channels, geom.out_channels,
            geom.out_height, geom.out_width, num_gate_groups, self.gate_group,
            self.base.uniform_lo, self.base.uniform_hi,
            *self.x.stride(), *y.stride(), *self.dec_bytes.stride(), *tensor_strides(self.residual),
            *geom.stride, *geom.padding, *geom.dilation,
            KH=geom.kernel[0], KW=geom.kernel[1],
            BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k,
            GROUP_SLOT=tiling.group_slot, GROUPS_PER_BLOCK=tiling.groups_per_block, SUB_BLOCKS=tiling.sub_blocks,
            SLOT_IS_GROUP=_slot_is_group(tiling, self.gate_group), RANGE_ALIGN=self.base.alignment, **self._paths(),
            HAS_DECISIONS=self.decisions_given, DEFER_DECISIONS=statistic is not None,
            COUNT_STATS=self.counters is not None, COMPACT=base_sums is not None, IN_PLACE_PERCENT=in_place,
            **self._epilogue_flags(), num_warps=tiling.num_warps, num_stages=tiling.num_stages,
            **dot_options(self.x.dtype),
        )  # fmt: skip
        if statistic is not None:
            self.dec_bytes.copy_(partition.block_mean(statistic, self.gate_block) > 0)
        if base_sums is not None:
            if pending is None:  # nothing ran in place: every active pair is left (a view, no copy)
                pending = self.dec_bytes.permute(0, 2, 3, 1).reshape(geom.pixels, num_gate_groups)
            self._run_conditional(base_sums, num_gate_groups, pending)

    def _run_conditional(self, base_sums: torch.Tensor, num_gate_groups: int, flat: torch.Tensor) -> None:
        """List each group's pixels still to run (``flat``: uint8 ``[M, G]``) on device, then launch the
        conditional tiles over them.

        One launch runs each group's full ``block_m`` tiles, one launch per
        remainder height (:attr:`CompactTiling.remainder_heights`) the rest of
        its pixels: one program per column for the heights of 32 rows and
        more and for the 8-row last tile, two for the 16-row tail; every grid
        is sized by the upper bound, so none reads the counts on the host.
        """
        geom, tiling = self.geom, self.tiling
        rows, counts = active_rows_triton(flat)
        full_tiles = geom.pixels // tiling.block_m  # a column holds at most this many full tiles
        if full_tiles:
            self._launch_conditional(base_sums, rows, counts, num_gate_groups, tiling.block_m, full_tiles,
                                     TILES_FULL, tiling.num_warps)  # fmt: skip
        for height in tiling.remainder_heights:
            tiles, per_column = _REMAINDER_LAUNCHES.get(height, (TILES_LEVEL, 1))
            if tiles != TILES_LEVEL or height <= geom.pixels:  # no remainder bit above the layer's pixels
                self._launch_conditional(base_sums, rows, counts, num_gate_groups, height, per_column, tiles,
                                         tiling.warps_of(height))  # fmt: skip

    def _launch_conditional(
        self, base_sums: torch.Tensor, rows: torch.Tensor, counts: torch.Tensor, num_gate_groups: int,
        block_m: int, tiles_per_column: int, tiles: int, num_warps: int,
    ) -> None:  # fmt: skip
        """One ``_gated_conditional_kernel`` launch: ``tiles_per_column`` programs per (group, sub-block) column."""
        geom, tiling, y = self.geom, self.tiling, self.y
        grid = (num_gate_groups * tiling.sub_blocks * tiles_per_column,)
        _gated_conditional_kernel[grid](
            self.x, self.w, y, base_sums, rows, counts, self.base.lo, self.base.hi, *self._epilogue_pointers(),
            geom.pixels, geom.height, geom.width, geom.in_channels, geom.out_channels,
            geom.out_height, geom.out_width, self.gate_group, self.base.uniform_lo, self.base.uniform_hi,
            tiles_per_column, rows.stride(0),
            *self.x.stride(), *y.stride(), *tensor_strides(self.residual),
            *geom.stride, *geom.padding, *geom.dilation,
            KH=geom.kernel[0], KW=geom.kernel[1],
            BLOCK_M=block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k,
            GROUP_SLOT=tiling.block_n, SUB_BLOCKS=tiling.sub_blocks,
            SLOT_IS_GROUP=_slot_is_group(tiling.columns, self.gate_group), RANGE_ALIGN=self.base.alignment,
            FLAT_K=tiling.flat_k, TILES=tiles, MAIN_BLOCK_M=tiling.block_m, TILE_MAJOR=tiling.tile_major,
            **self._paths(),
            COUNT_STATS=self.counters is not None,
            **self._epilogue_flags(), num_warps=num_warps, num_stages=tiling.num_stages,
            **dot_options(self.x.dtype),
        )  # fmt: skip

    def _paths(self) -> dict[str, int]:
        """K-loop weight masks: none when every output channel has the same base interval, else per (input, output)."""
        if self.base.uniform:
            return {"BASE_PATH": PATH_DENSE, "COND_PATH": PATH_DENSE}
        return {"BASE_PATH": PATH_BASE, "COND_PATH": PATH_CONDITIONAL}

    def _epilogue_pointers(self) -> tuple[torch.Tensor, ...]:
        y = self.y
        return (optional_pointer(self.scale, y), optional_pointer(self.shift, y), optional_pointer(self.residual, y),
                optional_pointer(self.counters, y))  # fmt: skip

    def _epilogue_flags(self) -> dict[str, bool]:
        return {"HAS_SCALE": self.scale is not None, "HAS_SHIFT": self.shift is not None,
                "HAS_RESIDUAL": self.residual is not None, "RELU": self.relu}  # fmt: skip
