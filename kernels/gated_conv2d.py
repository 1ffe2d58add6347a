"""Partial-sum channel-gated convolution in Triton (``docs/design.md#partial-sum-gate``, ``docs/design.md#kernels``).

This module holds the first (for the tiled schedule, the only) kernel and the
launch code; the compacted schedule's second kernel is in
:mod:`kernels.gated_conditional`, the tile pieces both share in
:mod:`kernels.gated_blocks`. Two schedules (:data:`kernels.gated_tiling.SCHEDULES`). Compacted (the
default for gate groups of 16 channels or more): a first launch computes,
per (pixel tile, block of whole gate groups), the base partial sum, the
decisions and the epilogue of the base sum where the gate is off (a tile
mostly on runs its conditional loops too, in place); the active pixels left
of each gate group are listed across the batch on device
(:mod:`kernels.compaction`); a second launch runs each group's conditional
channels as an implicit GEMM over tiles of its listed pixels (rows of
different images share a tile) and stores their outputs; when its tiles are
taller than 16 rows it runs only full tiles, and launches of the same kernel
run each group's remainder in 64-, 32- and 16-row tiles. Tiled: one launch whose (pixel tile, channel block)
programs compute the base sum and decisions and run the conditional sum only
if some decision of the tile is on. Grids are sized by the upper bound and
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
import triton.language as tl

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
from .conv_tiles import (
    PATH_BASE,
    PATH_CONDITIONAL,
    PATH_DENSE,
    accumulate_taps,
    k_steps,
    pixel_coords,
    store_epilogue,
)
from .gated_blocks import block_channels, conditional_sum, path_ranges
from .gated_conditional import TILES_ALL, TILES_FULL, TILES_LEVEL, TILES_TAIL, _gated_conditional_kernel
from .gated_override import schedule_tiling
from .gated_tiling import TAIL_BLOCK_M, CompactTiling, GatedTiling, resolve_schedule, tiling_tail
from .spec import GateSpec


@triton.jit
def _gated_conv2d_kernel(
    x_ptr, w_ptr, y_ptr, yp_ptr, dec_ptr, stat_ptr, pending_ptr, gate_scale_ptr, gate_shift_ptr, base_lo_ptr,
    base_hi_ptr, scale_ptr, shift_ptr, res_ptr, stats_ptr,
    M, H, W, C_in, C_out, OH, OW, G, gate_group, uniform_lo, uniform_hi,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, sdn, sdg, sdh, sdw, srn, src, srh, srw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SLOT: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, SUB_BLOCKS: tl.constexpr, SLOT_IS_GROUP: tl.constexpr,
    RANGE_ALIGN: tl.constexpr, BASE_PATH: tl.constexpr, COND_PATH: tl.constexpr,
    HAS_DECISIONS: tl.constexpr, DEFER_DECISIONS: tl.constexpr, COUNT_STATS: tl.constexpr, COMPACT: tl.constexpr,
    IN_PLACE_PERCENT: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (tile of BLOCK_M output pixels, block of GROUPS_PER_BLOCK whole gate groups).

    The block's columns are ``SUB_BLOCKS`` sub-blocks of ``BLOCK_N`` (see
    :func:`gated_tiling`). Pass 1 (skipped when decisions are given): base
    K loop per sub-block, ``z = Yp*gate_scale + gate_shift``, sum per (pixel,
    group), decision ``> 0`` stored. Pass 2 per sub-block: the base sum (kept
    from pass 1 when there is one sub-block, recomputed otherwise); then, if
    the tile runs its conditional work here, the epilogue of the base sum for
    the gated-off (pixel, group) pairs, the conditional K loops accumulated
    into the base sum, and the epilogue of ``Yp + Yr`` for the active pairs.
    The tiled schedule (one launch) runs it here whenever some decision of the
    tile is on.

    With ``COMPACT`` this is the first launch of the compacted schedule. A
    tile runs its conditional work here only when ``IN_PLACE_PERCENT > 0`` and at
    least ``IN_PLACE_PERCENT`` % of its (pixel, group) pairs are on (integer
    rule ``100 * on >= IN_PLACE_PERCENT * pairs``), and then stores 0 for its
    pairs in ``pending_ptr`` (uint8 ``[M, G]``, the decisions left to the
    conditional launch; the decisions elsewhere). Any other tile stores the
    epilogue of the base sum for its gated-off pairs and, for the active
    ones, the float32 base sum into ``yp_ptr`` (``[M, C_out]``), which
    ``_gated_conditional_kernel`` completes and stores (no output element is
    written twice). With ``DEFER_DECISIONS`` (decisions over blocks of
    pixels; ``IN_PLACE_PERCENT`` must be 0) pass 1 stores the float32 statistic
    ``sum(z)`` per (pixel, group) into ``stat_ptr`` (laid out like the
    decisions) instead of a decision, and pass 2 treats every pair as active
    (its base sum kept) and stores the epilogue of every pixel's base sum,
    since only the launcher decides per block which of them the conditional
    launch overwrites.

    Counters (``COUNT_STATS``): tiles, tiles that ran their conditional
    work here, and base / conditional MACs as ``BLOCK_M*BLOCK_N*KH*KW*BLOCK_K``
    per K step run.
    """
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(G, GROUPS_PER_BLOCK)
    pid_m = pid // n_blocks
    pid_n = pid - pid_m * n_blocks
    img, oh, ow, m_ok = pixel_coords(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), M, OH, OW)
    groups = pid_n * GROUPS_PER_BLOCK + tl.arange(0, GROUPS_PER_BLOCK)
    d_offs = (img.to(tl.int64) * sdn + oh * sdh + ow * sdw)[:, None] + groups[None, :] * sdg
    d_mask = m_ok[:, None] & (groups < G)[None, :]
    base_steps = 0
    if HAS_DECISIONS:
        d = tl.load(dec_ptr + d_offs, mask=d_mask, other=0) != 0
    else:
        z_sum = tl.zeros([BLOCK_M, GROUPS_PER_BLOCK], dtype=tl.float32)
        for sub in tl.static_range(SUB_BLOCKS):
            ch, ch_ok = block_channels(
                pid_n, sub, gate_group, C_out, BLOCK_N, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP
            )
            lo, hi, hull_lo, hull_hi, r1_hi, r2_lo = path_ranges(
                base_lo_ptr, base_hi_ptr, ch, ch_ok, C_in, uniform_lo, uniform_hi, BASE_PATH
            )
            y_base = accumulate_taps(
                tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok,
                hull_lo, hull_hi, lo, hi, H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                KH, KW, BLOCK_K, BASE_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION,
            )  # fmt: skip
            base_steps += k_steps(hull_lo, hull_hi, BLOCK_K)
            g_scale = tl.load(gate_scale_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)
            g_shift = tl.load(gate_shift_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)
            z = tl.where(ch_ok[None, :], y_base * g_scale[None, :] + g_shift[None, :], 0.0)
            z_sum += tl.sum(tl.reshape(z, (BLOCK_M, GROUPS_PER_BLOCK, GROUP_SLOT)), axis=2)
        if DEFER_DECISIONS:
            tl.store(stat_ptr + d_offs, z_sum, mask=d_mask)
            d = d_mask
        else:
            d = (z_sum > 0.0) & d_mask
            tl.store(dec_ptr + d_offs, d.to(tl.uint8), mask=d_mask)
    d_int = d.to(tl.int32)
    n_on = tl.sum(tl.sum(d_int, axis=1), axis=0)
    if not COMPACT:
        runs_here = n_on > 0
    elif IN_PLACE_PERCENT > 0:
        # In place: a tile with at least IN_PLACE_PERCENT % of its (pixel, group) pairs on runs its conditional
        # work here; the rest of the active pairs are left to the conditional launch (``pending``).
        n_pairs = tl.sum(tl.sum(d_mask.to(tl.int32), axis=1), axis=0)
        runs_here = (n_on > 0) & (n_on * 100 >= IN_PLACE_PERCENT * n_pairs)
        pix_g = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)[:, None] * G + groups[None, :]
        tl.store(pending_ptr + pix_g, tl.where(runs_here, 0, d_int).to(tl.uint8), mask=d_mask)
    else:
        runs_here = False  # compiled out: nothing in place
    on = _expand_groups(d_int, BLOCK_M, BLOCK_N, GROUPS_PER_BLOCK, GROUP_SLOT) != 0
    cond_steps = 0
    for sub in tl.static_range(SUB_BLOCKS):
        ch, ch_ok = block_channels(
            pid_n, sub, gate_group, C_out, BLOCK_N, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP
        )
        lo, hi, hull_lo, hull_hi, r1_hi, r2_lo = path_ranges(
            base_lo_ptr, base_hi_ptr, ch, ch_ok, C_in, uniform_lo, uniform_hi, BASE_PATH
        )
        if HAS_DECISIONS or SUB_BLOCKS > 1:
            y_base = accumulate_taps(
                tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok,
                hull_lo, hull_hi, lo, hi, H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                KH, KW, BLOCK_K, BASE_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION,
            )  # fmt: skip
            base_steps += k_steps(hull_lo, hull_hi, BLOCK_K)
        cond_steps += k_steps(0, r1_hi, BLOCK_K) + k_steps(r2_lo, C_in, BLOCK_K)
        y = y_base
        out_mask = m_ok[:, None] & ch_ok[None, :]
        if runs_here:  # the gated-off pairs' outputs first, then Yp + Yr in the same registers for the others
            store_epilogue(
                y_base, out_mask & (on == 0), y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
                syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
            )  # fmt: skip
            y = conditional_sum(
                y_base, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, lo, hi,
                H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                KH, KW, BLOCK_K, False, COND_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION,
            )  # fmt: skip
            # The tile's mask again from the stored decisions, so it is not held in registers through the K
            # loop; the barrier makes what other threads of this program stored in pass 1 visible.
            tl.debug_barrier()
            d_again = tl.load(dec_ptr + d_offs, mask=d_mask, other=0).to(tl.int32)
            out_mask = out_mask & (_expand_groups(d_again, BLOCK_M, BLOCK_N, GROUPS_PER_BLOCK, GROUP_SLOT) != 0)
        elif COMPACT:
            pix = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
            yp_offs = pix.to(tl.int64)[:, None] * C_out + ch[None, :]
            tl.store(yp_ptr + yp_offs, y_base, mask=out_mask & on)
            if not DEFER_DECISIONS:  # the conditional launch stores the active pairs' outputs
                out_mask = out_mask & (on == 0)
        store_epilogue(
            y, out_mask, y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
            syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
        )  # fmt: skip
    if COUNT_STATS:
        step_macs = BLOCK_M * BLOCK_N * KH * KW * BLOCK_K
        tl.atomic_add(stats_ptr, 1)
        tl.atomic_add(stats_ptr + 2, base_steps.to(tl.int64) * step_macs)
        if runs_here:
            tl.atomic_add(stats_ptr + 1, 1)
            tl.atomic_add(stats_ptr + 3, cond_steps.to(tl.int64) * step_macs)


@triton.jit
def _expand_groups(
    d, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, GROUP_SLOT: tl.constexpr
):  # fmt: skip
    """``[BLOCK_M, GROUPS_PER_BLOCK]`` per-group values repeated over each group's ``GROUP_SLOT`` columns."""
    return tl.reshape(tl.broadcast_to(d[:, :, None], (BLOCK_M, GROUPS_PER_BLOCK, GROUP_SLOT)), (BLOCK_M, BLOCK_N))


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
            flat = self.dec_bytes.permute(0, 2, 3, 1).reshape(geom.pixels, num_gate_groups)
            self._run_conditional(base_sums, num_gate_groups, flat if pending is None else pending)

    def _run_conditional(self, base_sums: torch.Tensor, num_gate_groups: int, flat: torch.Tensor) -> None:
        """List each group's pixels still to run (``flat``: uint8 ``[M, G]``) on device, then launch the
        conditional tiles over them.

        With a tail (``tiling.tail``), one launch runs each group's full
        ``block_m`` tiles and one launch per remainder height
        (:attr:`CompactTiling.remainder_heights`) the rest of its pixels: one
        program per column for the heights of 32 rows and more, two for the
        16-row tail; every grid is sized by the upper bound, so none reads
        the counts on the host.
        """
        geom, tiling = self.geom, self.tiling
        rows, counts = active_rows_triton(flat)
        if not tiling.tail:
            self._launch_conditional(base_sums, rows, counts, num_gate_groups, tiling.block_m,
                                     triton.cdiv(geom.pixels, tiling.block_m), TILES_ALL, tiling.num_warps)  # fmt: skip
            return
        full_tiles = geom.pixels // tiling.block_m  # a column holds at most this many full tiles
        if full_tiles:
            self._launch_conditional(base_sums, rows, counts, num_gate_groups, tiling.block_m, full_tiles,
                                     TILES_FULL, tiling.num_warps)  # fmt: skip
        for height in tiling.remainder_heights:
            tiles, per_column = (TILES_TAIL, 2) if height == TAIL_BLOCK_M else (TILES_LEVEL, 1)
            if tiles == TILES_TAIL or height <= geom.pixels:  # no remainder bit above the layer's pixels
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
            FLAT_K=tiling.flat_k, TILES=tiles, MAIN_BLOCK_M=tiling.block_m, **self._paths(),
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
