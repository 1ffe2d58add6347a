"""Bytes the conv kernels' launches issue to global memory, predicted in pure PyTorch from their tiles.

:func:`gated_kernel_bytes` applies the tiling and skipping rule of
:func:`kernels.gated_conv2d` (the rule :func:`kernels.gated_kernel_counters`
applies to its MACs) to a set of decisions; :func:`dense_kernel_bytes` counts
the dense kernel (:func:`kernels.conv2d`) at its heuristic tiling
(:func:`kernels.conv_tuning.conv_tiling`), so the two give a gated / dense
ratio. No GPU, no Triton.

What is counted is *issued tile traffic*: every tile a program loads or stores,
at its full shape (the rows and columns it was launched with, padding rows,
padding channels and the image border's halo included), once per load, just
as the counters count a tile's MACs in full. A load or store whose mask is all
off issues nothing (a program that exits, a sub-block past its group's
channels). Stores and loads that the decisions mask per (pixel, gate group)
count only the channels of the pairs they keep (a group's channels of one
pixel are contiguous in channels_last memory): in the compacted schedule's
first launch, the float32 base sums of the active pairs, and the output (and
residual) of the gated-off ones, whose active pairs the conditional launch
stores (with ``gate_block > 1`` the first launch stores every output). A
first-launch tile that runs its conditional loops in place
(``CompactTiling.in_place_percent``) loads their tiles as the tiled
schedule's programs do, stores all its outputs and keeps no base sum; the
launch then also writes the uint8 decisions it leaves to the conditional
launch (``[M, G]``), which the compaction reads instead of the decisions.
Element sizes: activations and weights ``element_size``, decisions 1 byte
(gate statistics 4), base sums 4 (float32), row indices 4 (int32). Not
counted: per-channel vectors (gate and BatchNorm affines, base intervals),
the 4-byte group count every conditional program reads, the work counters.
Caches are not modelled (an A tile read again for the next channel block, or
a halo row read again for the next tap, counts every time), so this is an
upper bound on DRAM traffic, not a measurement.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from . import partition
from .compaction import active_rows_kernel_bytes
from .conv_tuning import conv_tiling
from .gated_tiling import CompactTiling, GatedTiling, block_k_steps, block_ranges, column_steps
from .gated_work import CountedCall, compact_tiles, in_place_tiles, pending_pairs, tiled_active
from .spec import GateSpec

__all__ = ["KernelBytes", "dense_kernel_bytes", "dense_kernel_macs", "gated_kernel_bytes"]


class KernelBytes(NamedTuple):
    """Issued bytes of one gated call, by part (module docstring).

    * ``first``: the first launch (compacted schedule) or the only launch
      (tiled schedule) without its conditional K loops: base K loops' ``A``
      and ``B`` tiles, decisions (or gate statistics) loaded or stored, output
      tiles stored (and residual tiles read; compacted: only the gated-off
      pairs' unless ``gate_block > 1``), float32 base sums of the active
      pairs stored (compacted);
    * ``between``: the PyTorch ops between the launches of the compacted
      schedule: the per-block decisions of ``gate_block > 1`` and the
      compaction (:func:`kernels.compaction.active_rows_kernel_bytes`); 0 for the
      tiled schedule;
    * ``conditional``: the conditional launches (compacted: row indices,
      float32 base sums read, gathered ``A`` and ``B`` tiles per K step,
      output tiles stored, residual tiles read) or the conditional K loops of
      the tiled launch's programs with a decision on (``A`` and ``B`` tiles).
    """

    first: int
    between: int
    conditional: int

    @property
    def total(self) -> int:
        return self.first + self.between + self.conditional


def gated_kernel_bytes(
    decisions: torch.Tensor,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int],
    *,
    base_fraction: float = GateSpec.base_fraction,
    base_layout: str = GateSpec.base_layout,
    gate_group: int = GateSpec.gate_group,
    gate_block: int = GateSpec.gate_block,
    decisions_given: bool = False,
    schedule: str = "auto",
    element_size: int,
    residual: bool = False,
    tiling: GatedTiling | CompactTiling | None = None,
) -> KernelBytes:
    """Bytes :func:`kernels.gated_conv2d` issues on bool ``decisions`` ``[N, G, OH, OW]``, by the kernel's own rule.

    Arguments as :func:`kernels.gated_kernel_counters` (same tiles, same
    skipping, same ``schedule``, ``decisions_given`` and ``tiling`` semantics), plus
    ``element_size`` (bytes of an activation or weight element) and
    ``residual`` (the epilogue reads a residual tile beside every output tile
    it stores). Compacted schedule, per (group, sub-block) column with ``c``
    active pixels: ``c // block_m`` tiles of ``block_m`` rows, the rest in
    64/32/16/8-row tiles (:func:`kernels.gated_work.compact_tiles`).
    Tiled schedule: every program's base loop and output tiles, and the
    conditional loop of each program with a decision on.

    Returns:
        :class:`KernelBytes` (Python ints; ``.total`` sums them); all zero for
        an empty batch.

    Raises:
        ValueError: as :func:`kernels.gated_kernel_counters`.
    """
    call = CountedCall.of(decisions, in_channels, out_channels, kernel, base_fraction, base_layout, gate_group,
                          gate_block, decisions_given, schedule, tiling)  # fmt: skip
    tiling, layer, taps, pixels, flat, block = call.tiling, call.layer, call.taps, call.pixels, call.flat, call.block
    if pixels == 0:
        return KernelBytes(0, 0, 0)
    first = tiling.first
    out_bytes = element_size * (2 if residual else 1)  # per output element: its store, and the residual read

    # First (tiled: only) launch: one program per (tile of block_m pixels, block of groups).
    base_steps, cond_steps = block_k_steps(first, first.block_k, *layer)  # [blocks], channel steps of all sub-blocks
    _, hull_hi, _, _ = block_ranges(first.block_n, first.group_slot, first.groups_per_block, first.sub_blocks,
                                    *layer)  # fmt: skip
    live_sub_blocks = int((hull_hi > 0).sum())  # (block, sub-block) pairs holding a channel, summed over blocks
    rows = -(-pixels // first.block_m)
    step_bytes = (first.block_m + first.block_n) * first.block_k * element_size  # one A tile and one B tile
    decision_bytes = rows * base_steps.numel() * first.block_m * first.groups_per_block * (4 if block > 1 else 1)
    first_bytes = rows * call.base_passes * taps * int(base_steps.sum()) * step_bytes + decision_bytes
    first_bytes += rows * live_sub_blocks * first.block_m * first.block_n * out_bytes
    if not isinstance(tiling, CompactTiling):
        active = tiled_active(flat, first).long().sum(dim=0)  # [blocks] programs that run their conditional loops
        return KernelBytes(first_bytes, 0, int((active * cond_steps).sum()) * taps * step_bytes)

    widths = torch.tensor(partition.group_sizes(out_channels, gate_group))
    n, groups, oh, ow = decisions.shape
    here = in_place_tiles(flat, first, call.in_place_percent)  # tiles that run their conditional loops in place
    first_bytes += int((here.long() * cond_steps[None, :]).sum()) * taps * step_bytes
    if call.in_place_percent:
        first_bytes += pixels * groups  # the uint8 decisions left to the conditional launch
    flat = pending_pairs(flat, first, here)
    counts = flat.sum(dim=0)
    active_pairs = pixels * widths.sum() if block > 1 else (counts * widths).sum()  # deferred: every pair stored
    first_bytes += 4 * int(active_pairs)
    if block == 1:  # the conditional launch stores the active pairs' outputs; the first launch skips them
        first_bytes -= int(active_pairs) * out_bytes
    between = active_rows_kernel_bytes(pixels, groups, int(counts.sum()))
    between += _block_mean_bytes(n, groups, oh, ow, block) if block > 1 else 0

    columns = tiling.columns
    bn, bk = columns.block_n, columns.block_k
    steps = column_steps(columns, bk, tiling.flat_k, taps, layer)  # [G] K steps (taps included) of all sub-blocks
    sub_blocks = -(-widths // bn)  # sub-blocks holding channels, per group
    tiles, rows_run = compact_tiles(counts, columns.block_m)
    per_row = 4 + 4 * bn + bn * out_bytes  # row index, float32 base sums, output (and residual) per row and sub-block
    conditional = (rows_run * sub_blocks).sum() * per_row
    conditional += (rows_run * steps).sum() * bk * element_size  # gathered A tiles
    conditional += (tiles * steps).sum() * bk * bn * element_size  # B tiles
    return KernelBytes(first_bytes, between, int(conditional))


def _block_mean_bytes(n: int, groups: int, oh: int, ow: int, gate_block: int) -> int:
    """Bytes of ``dec.copy_(partition.block_mean(statistic, b) > 0)`` on float32 statistics, op by op.

    ``avg_pool2d`` (ceil mode), two ``repeat_interleave`` (each over the
    previous result cut to the map), ``> 0`` and the copy into the decisions,
    each reading its input and writing its output once. Keep it in step with
    :func:`kernels.partition.block_mean` and the launcher.
    """
    maps = n * groups
    ph, pw = -(-oh // gate_block), -(-ow // gate_block)
    pool = 4 * maps * (oh * ow + ph * pw)
    expand_rows = 4 * maps * (ph * pw + ph * gate_block * pw)
    expand_cols = 4 * maps * (oh * pw + oh * pw * gate_block)
    decide = maps * oh * ow * (4 + 1 + 1 + 1)
    return pool + expand_rows + expand_cols + decide


def _dense_tiles(
    pixels: int, in_channels: int, out_channels: int, kernel: tuple[int, int], tiling: object | None
) -> tuple[object, int, int]:  # fmt: skip
    """``(tiling, programs, K steps per program)`` of the dense kernel; ``ValueError`` for a split-K tiling."""
    taps = kernel[0] * kernel[1]
    if tiling is None:
        tiling = conv_tiling(pixels, in_channels, out_channels, taps=taps)
    if getattr(tiling, "split_k", 1) != 1:
        raise ValueError(f"the dense kernel's work is modelled for split_k=1 only, got {tiling!r}")
    programs = -(-pixels // tiling.block_m) * -(-out_channels // tiling.block_n)
    return tiling, programs, taps * -(-in_channels // tiling.block_k)


def dense_kernel_bytes(
    pixels: int,
    in_channels: int,
    out_channels: int,
    kernel: tuple[int, int],
    *,
    element_size: int,
    residual: bool = False,
    tiling: object | None = None,
) -> int:
    """Bytes the dense kernel issues for ``pixels = N*OH*OW`` output pixels (module docstring's rule).

    ``tiling`` (a :class:`kernels.conv_tuning.ConvTiling`; default: the
    heuristic :func:`kernels.conv_tuning.conv_tiling` without a device, so no
    split-K): ``cdiv(pixels, block_m) * cdiv(C_out, block_n)`` programs, each
    running ``kh*kw*cdiv(C_in, block_k)`` K steps of one ``A``
    (``block_m x block_k``) and one ``B`` (``block_k x block_n``) tile, then
    storing its output tile (and reading a residual tile). Raises
    ``ValueError`` for a split-K tiling (its float32 partial sums and second
    kernel are not modelled).
    """
    tiling, programs, steps = _dense_tiles(pixels, in_channels, out_channels, kernel, tiling)
    bm, bn, bk = tiling.block_m, tiling.block_n, tiling.block_k
    return programs * (steps * (bm + bn) * bk + bm * bn * (2 if residual else 1)) * element_size


def dense_kernel_macs(
    pixels: int, in_channels: int, out_channels: int, kernel: tuple[int, int], *, tiling: object | None = None
) -> int:
    """MACs the dense kernel runs in whole tiles, the unit ``gated_kernel_counters`` counts the gated kernel in.

    ``programs * K steps * block_m * block_n * block_k`` for the tiles of
    :func:`dense_kernel_bytes` (padding rows, columns and channels
    included); at least the algorithmic ``pixels * C_out * kh*kw * C_in``.
    """
    tiling, programs, steps = _dense_tiles(pixels, in_channels, out_channels, kernel, tiling)
    return programs * steps * tiling.block_m * tiling.block_n * tiling.block_k
