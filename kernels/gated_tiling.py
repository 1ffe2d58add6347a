"""The gated kernel's tiling and skipping rule, and the work it implies, in pure PyTorch.

:func:`gated_tiling` picks the launch tiles of ``kernels.gated_conv2d``'s
Triton kernel; :func:`gated_kernel_counters` applies the kernel's skipping
rule to a set of decisions and returns the work counters the kernel reports
(``kernels.work.COUNTER_FIELDS``), without a GPU. Both live here, beside each
other and away from Triton, so the launcher, the accounting and the
benchmarks' counting read one rule, on any machine. Tests check the
prediction against the kernel's own counters under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from . import partition
from ._common import base_intervals, gemm_tile_mk, next_power_of_2
from .spec import GateSpec

__all__ = ["MAX_BLOCK_N", "GatedTiling", "gated_kernel_counters", "gated_tiling", "tiling_tail"]

MAX_BLOCK_N = 128
"""Widest column block of one program; wider gate groups are split into sub-blocks."""


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
def _block_k_steps(
    tiling: GatedTiling, in_channels: int, out_channels: int, base_fraction: float, base_layout: str, gate_group: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel block (program column): K steps of one base loop and of both conditional loops.

    The same ranges as ``_block_channels`` / ``_path_ranges`` in the kernel,
    summed over the block's sub-blocks: int64 ``[blocks]`` each, on CPU.
    Cached per configuration (callers only read them), so counting a layer
    batch after batch does not rebuild them.
    """
    base = base_intervals(out_channels, in_channels, base_fraction, base_layout, torch.device("cpu"))
    groups = partition.gate_group_count(out_channels, gate_group)
    blocks = -(-groups // tiling.groups_per_block)
    col = torch.arange(tiling.block_n)
    sub = torch.arange(tiling.sub_blocks)
    block = torch.arange(blocks)
    within = (col % tiling.group_slot)[None, :] + sub[:, None] * tiling.block_n  # [S, BN]
    ch = (block[:, None, None] * tiling.groups_per_block + (col // tiling.group_slot)[None, None, :]) * gate_group
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

    def steps(c_lo: torch.Tensor | int, c_hi: torch.Tensor | int) -> torch.Tensor:
        span = torch.as_tensor(c_hi - c_lo).clamp(min=0)
        return (span + tiling.block_k - 1) // tiling.block_k

    return steps(hull_lo, hull_hi).sum(dim=1), (steps(0, r1_hi) + steps(r2_lo, in_channels)).sum(dim=1)


def gated_kernel_counters(
    decisions: torch.Tensor,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int],
    *,
    base_fraction: float = GateSpec.base_fraction,
    base_layout: str = GateSpec.base_layout,
    gate_group: int = GateSpec.gate_group,
    decisions_given: bool = False,
) -> torch.Tensor:
    """The counters :func:`gated_conv2d` returns with ``count_work=True``, predicted in PyTorch from the decisions.

    Applies the kernel's own tiling (:func:`gated_tiling`) and skipping rule,
    one program per (tile of ``block_m`` flattened output pixels of the
    batch, block of ``groups_per_block`` gate groups), that runs its
    conditional K loops when any decision it covers is on, to bool
    ``decisions`` ``[N, G, OH, OW]``. ``decisions_given`` says whether the
    kernel is handed the decisions (then the base loop runs once per
    sub-block) or computes them (once, plus once more per sub-block when
    there are several). No GPU and no Triton launch; the counters equal the
    kernel's on-device ones (tests check this under the interpreter).

    Returns:
        int64 ``[9]`` on the decisions' device, laid out as
        :data:`kernels.work.COUNTER_FIELDS` (MACs in tile-rounded units).

    Raises:
        ValueError: ``decisions`` is not bool ``[N, ceil(out_channels / gate_group), OH, OW]``.
    """
    groups = partition.gate_group_count(out_channels, gate_group)
    if decisions.dtype != torch.bool or decisions.dim() != 4 or decisions.shape[1] != groups:
        raise ValueError(
            f"decisions must be bool [N, {groups}, OH, OW] for out_channels={out_channels}, "
            f"gate_group={gate_group}; got {decisions.dtype} {tuple(decisions.shape)}"
        )
    n, _, oh, ow = decisions.shape
    pixels = n * oh * ow
    tiling = gated_tiling(pixels, in_channels, out_channels, gate_group, base_fraction)
    counters = torch.tensor([0, 0, 0, 0, *tiling_tail(tiling)], dtype=torch.int64)
    if pixels == 0:
        return counters.to(decisions.device)
    base_steps, cond_steps = _block_k_steps(tiling, in_channels, out_channels, base_fraction, base_layout, gate_group)
    blocks = base_steps.numel()
    rows = -(-pixels // tiling.block_m)
    flat = torch.zeros(rows * tiling.block_m, blocks * tiling.groups_per_block, dtype=torch.bool)
    flat[:pixels, :groups] = decisions.detach().cpu().permute(0, 2, 3, 1).reshape(pixels, groups)
    active = flat.view(rows, tiling.block_m, blocks, tiling.groups_per_block).any(dim=3).any(dim=1)  # [rows, B]
    base_passes = (0 if decisions_given else 1) + (1 if decisions_given or tiling.sub_blocks > 1 else 0)
    step_macs = tiling.block_m * tiling.block_n * kernel[0] * kernel[1] * tiling.block_k
    counters[0] = rows * blocks
    counters[1] = active.sum()
    counters[2] = rows * base_passes * base_steps.sum() * step_macs
    counters[3] = (active.long() * cond_steps[None, :]).sum() * step_macs
    return counters.to(decisions.device)


def tiling_tail(tiling: GatedTiling) -> tuple[int, int, int, int, int]:
    """The tiling fields of the counters: ``(block_m, block_n, block_k, groups_per_block, sub_blocks)``."""
    return (tiling.block_m, tiling.block_n, tiling.block_k, tiling.groups_per_block, tiling.sub_blocks)
