"""The gated kernel's work on given decisions, predicted in pure PyTorch (no GPU, no Triton).

:func:`gated_kernel_counters` applies the tiling and skipping rule of
``kernels.gated_conv2d`` (:mod:`kernels.gated_tiling`) to a set of decisions
and returns the work counters the kernel reports
(``kernels.work.COUNTER_FIELDS``); tests check them against the kernel's own
counters under ``TRITON_INTERPRET=1``. :class:`CountedCall` is the set-up it
shares with :func:`kernels.kernel_bytes.gated_kernel_bytes` (checked
decisions, resolved schedule, tiles); :func:`compact_tiles` and
:func:`tiled_active` are the two schedules' skipping units.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import partition
from .gated_tiling import (
    LAST_BLOCK_M,
    TAIL_BLOCK_M,
    CompactTiling,
    GatedTiling,
    block_k_steps,
    column_steps,
    resolve_schedule,
    tiling_tail,
)
from .gated_override import schedule_tiling
from .spec import GateSpec

__all__ = [
    "CountedCall", "check_decisions", "compact_tiles", "gated_kernel_counters", "in_place_tiles", "pending_pairs",
    "tile_pairs", "tiled_active",
]  # fmt: skip


@dataclass(frozen=True)
class CountedCall:
    """One gated call's checked decisions and the tiles its schedule runs, as the work predictions need them.

    ``flat``: the decisions as bool ``[M, G]`` (pixel-major) on CPU; ``block``:
    the ``gate_block`` the kernel decides over (1 when the decisions are
    given); ``layer``: ``(C_in, C_out, base_fraction, base_layout,
    gate_group)``, the key of the K-step tables of :mod:`kernels.gated_tiling`.
    """

    flat: torch.Tensor
    pixels: int
    taps: int
    block: int
    decisions_given: bool
    layer: tuple[int, int, float, str, int]
    tiling: GatedTiling | CompactTiling

    @property
    def in_place_percent(self) -> int:
        """``tiling.in_place_percent`` of a compacted call deciding per pixel, else 0 (nothing runs in place)."""
        if isinstance(self.tiling, CompactTiling) and self.block == 1:
            return self.tiling.in_place_percent
        return 0

    @property
    def base_passes(self) -> int:
        """Times the first launch runs its base loop per program column.

        Once to compute the decisions (not when they are given), once more per
        sub-block for the output when a program's columns span several
        sub-blocks or the decisions are given.
        """
        first = self.tiling.first
        return (0 if self.decisions_given else 1) + (1 if self.decisions_given or first.sub_blocks > 1 else 0)

    @classmethod
    def of(
        cls, decisions: torch.Tensor, in_channels: int, out_channels: int, kernel: tuple[int, int],
        base_fraction: float, base_layout: str, gate_group: int, gate_block: int, decisions_given: bool,
        schedule: str, tiling: GatedTiling | CompactTiling | None = None,
    ) -> CountedCall:  # fmt: skip
        """Check ``decisions`` (:func:`check_decisions`), resolve ``schedule``, pick its tiles (or check ``tiling``)."""
        groups = check_decisions(decisions, out_channels, gate_group)
        block = 1 if decisions_given else gate_block
        resolved = resolve_schedule(schedule, gate_group, out_channels, block)
        n, _, oh, ow = decisions.shape
        pixels = n * oh * ow
        tiling = schedule_tiling(resolved, pixels, in_channels, out_channels, kernel, gate_group, base_fraction,
                                 base_layout, tiling)  # fmt: skip
        flat = decisions.detach().cpu().permute(0, 2, 3, 1).reshape(pixels, groups)
        layer = (in_channels, out_channels, base_fraction, base_layout, gate_group)
        return cls(flat, pixels, kernel[0] * kernel[1], block, decisions_given, layer, tiling)


def gated_kernel_counters(
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
    tiling: GatedTiling | CompactTiling | None = None,
) -> torch.Tensor:
    """The counters :func:`gated_conv2d` returns with ``count_work=True``, predicted in PyTorch from the decisions.

    Applies the kernel's own tiling and skipping rule for ``schedule`` (one of
    :data:`SCHEDULES`; ``"auto"`` as :func:`resolve_schedule`, with ``gate_block``
    counting only when the kernel computes the decisions) to bool ``decisions`` ``[N, G, OH, OW]``:

    * ``"tiled"`` (:func:`gated_tiling`): one program per (tile of
      ``block_m`` flattened output pixels of the batch, block of
      ``groups_per_block`` gate groups) runs its base loop, and its
      conditional loops when any decision it covers is on.
    * ``"compact"`` (:func:`compact_tiling`): the first launch's programs run
      the base loops of every pixel, and those with at least
      ``in_place_percent`` % of their pairs on (:func:`in_place_tiles`) their
      conditional loops too, as the tiled schedule's; then each (gate group,
      sub-block) column with ``c`` active pixels left (:func:`pending_pairs`)
      runs the tiles of :func:`compact_tiles`: ``c // block_m`` full tiles of
      ``block_m`` rows, one tile of each height ``block_m/2, ..., 32`` whose
      bit is set in the remainder, and 16- and 8-row tiles
      (:data:`TAIL_BLOCK_M`, :data:`LAST_BLOCK_M`) for its last ``< 32``
      (the last one padded), each with the column's K steps and ``block_n``.

    ``decisions_given`` says whether the kernel is handed the decisions (then
    the base loop runs once per sub-block) or computes them (once, plus once
    more per sub-block when there are several). ``tiling``: the launcher's
    ``tiling=`` override to predict for (checked the same way,
    :func:`kernels.gated_override.check_gated_tiling`); None: the layer's own. No GPU and no Triton launch;
    the counters equal the kernel's on-device ones (tests check this under the
    interpreter).

    Returns:
        int64 ``[9]`` on the decisions' device, laid out as
        :data:`kernels.work.COUNTER_FIELDS` (MACs in tile-rounded units; the
        tiling fields are the conditional tiles', the main ones for the compacted
        schedule).

    Raises:
        ValueError: ``decisions`` is not bool ``[N, ceil(out_channels / gate_group), OH, OW]``,
            ``schedule`` is unknown or cannot run ``gate_block``, or ``tiling`` does not fit the layer.
        TypeError: ``tiling`` is not the schedule's tiling class.
    """
    call = CountedCall.of(decisions, in_channels, out_channels, kernel, base_fraction, base_layout, gate_group,
                          gate_block, decisions_given, schedule, tiling)  # fmt: skip
    tiling, layer, taps, pixels, flat = call.tiling, call.layer, call.taps, call.pixels, call.flat
    base_tiling = tiling.first
    counters = torch.tensor([0, 0, 0, 0, *tiling_tail(tiling.counted)], dtype=torch.int64)
    if pixels == 0:
        return counters.to(decisions.device)
    base_steps, cond_steps = block_k_steps(base_tiling, base_tiling.block_k, *layer)
    blocks = base_steps.numel()
    rows = -(-pixels // base_tiling.block_m)
    counters[0] = rows * blocks
    counters[2] = rows * call.base_passes * base_steps.sum() * base_tiling.block_m * base_tiling.block_n * taps
    counters[2] *= base_tiling.block_k
    if isinstance(tiling, CompactTiling):
        here = in_place_tiles(flat, base_tiling, call.in_place_percent)
        counters[1], counters[3] = here.sum(), _program_macs(here, cond_steps, base_tiling, taps)
        flat = pending_pairs(flat, base_tiling, here)
        columns = tiling.columns
        steps = column_steps(columns, columns.block_k, tiling.flat_k, taps, layer)
        tiles, rows_run = compact_tiles(flat.sum(dim=0), columns.block_m)  # [G] per group and sub-block
        widths = torch.tensor(partition.group_sizes(out_channels, gate_group))
        counters[1] += (tiles * (-(-widths // columns.block_n))).sum()  # sub-blocks holding channels
        counters[3] += (rows_run * steps).sum() * columns.block_n * columns.block_k
        return counters.to(decisions.device)
    active = tiled_active(flat, base_tiling)
    counters[1], counters[3] = active.sum(), _program_macs(active, cond_steps, base_tiling, taps)
    return counters.to(decisions.device)


def _program_macs(runs: torch.Tensor, steps: torch.Tensor, tiling: GatedTiling, taps: int) -> int:
    """MACs of the programs ``runs`` (bool ``[rows, blocks]``) each running its block's ``steps`` K steps of
    ``block_m x block_n x block_k`` over ``taps`` filter taps."""
    return int((runs.long() * steps[None, :]).sum()) * tiling.block_m * tiling.block_n * tiling.block_k * taps


def check_decisions(decisions: torch.Tensor, out_channels: int, gate_group: int) -> int:
    """The number of gate groups ``G``; ``ValueError`` unless ``decisions`` is bool ``[N, G, OH, OW]``."""
    groups = partition.gate_group_count(out_channels, gate_group)
    if decisions.dtype != torch.bool or decisions.dim() != 4 or decisions.shape[1] != groups:
        raise ValueError(
            f"decisions must be bool [N, {groups}, OH, OW] for out_channels={out_channels}, "
            f"gate_group={gate_group}; got {decisions.dtype} {tuple(decisions.shape)}"
        )
    return groups


def tile_pairs(flat: torch.Tensor, tiling: GatedTiling) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``[rows, blocks]`` each: the (pixel, group) pairs on, and all the pairs, of each program's tile.

    ``flat`` is the bool decisions ``[M, G]`` (pixel-major) on CPU; program
    ``(p, q)`` covers pixels ``[p*block_m, (p+1)*block_m)`` and gate groups
    ``[q*groups_per_block, (q+1)*groups_per_block)`` (those past ``M`` and
    ``G`` are no pairs).
    """
    pixels, groups = flat.shape
    rows, blocks = -(-pixels // tiling.block_m), -(-groups // tiling.groups_per_block)
    padded = torch.zeros(2, rows * tiling.block_m, blocks * tiling.groups_per_block, dtype=torch.long)
    padded[0, :pixels, :groups] = flat.long()
    padded[1, :pixels, :groups] = 1
    on, pairs = padded.view(2, rows, tiling.block_m, blocks, tiling.groups_per_block).sum(dim=(2, 4))
    return on, pairs


def tiled_active(flat: torch.Tensor, tiling: GatedTiling) -> torch.Tensor:
    """Bool ``[rows, blocks]``: the tiled schedule's programs with a decision on (they run their conditional loops).

    Programs as :func:`tile_pairs`.
    """
    return tile_pairs(flat, tiling)[0] > 0


def in_place_tiles(flat: torch.Tensor, tiling: GatedTiling, percent: int) -> torch.Tensor:
    """Bool ``[rows, blocks]``: the compacted schedule's first-launch programs that run their conditional work
    in place: some pair on and ``100 * on >= percent * pairs`` (:func:`tile_pairs`); none for ``percent`` 0."""
    on, pairs = tile_pairs(flat, tiling)
    return (on > 0) & (100 * on >= percent * pairs) & (percent > 0)


def pending_pairs(flat: torch.Tensor, tiling: GatedTiling, here: torch.Tensor) -> torch.Tensor:
    """Bool ``[M, G]``: the decisions left to the conditional launch, ``flat`` off in the ``here`` tiles."""
    pixels, groups = flat.shape
    covered = here.repeat_interleave(tiling.block_m, dim=0)[:pixels]
    covered = covered.repeat_interleave(tiling.groups_per_block, dim=1)[:, :groups]
    return flat & ~covered


def compact_tiles(counts: torch.Tensor, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Conditional tiles, and the rows they run, of compacted columns with ``counts`` active pixels each.

    ``counts // block_m`` full tiles of ``block_m`` rows; the remainder ``r``
    in binary: one tile of each height ``block_m/2, ..., 32`` whose bit is
    set in ``r``; of the last ``t = r % 32`` rows, one :data:`TAIL_BLOCK_M`-row
    tile per 16 with more than 8 left and one :data:`LAST_BLOCK_M`-row tile
    for the 1 to 8 after them: ``cdiv(t, 16)`` tiles in all. Rows run:
    ``counts`` rounded up to a multiple of 8. int64 tensors shaped like ``counts``.
    """
    counts = counts.long()
    full = counts // block_m
    rest = counts - full * block_m
    tiles = full + sum((rest // height) % 2 for height in _powers_between(32, block_m // 2))
    tail = -(-(rest % 32) // TAIL_BLOCK_M)
    return tiles + tail, -(-counts // LAST_BLOCK_M) * LAST_BLOCK_M


def _powers_between(low: int, high: int) -> list[int]:
    """Powers of two in ``[low, high]``."""
    return [1 << k for k in range(low.bit_length() - 1, high.bit_length()) if low <= 1 << k <= high]
