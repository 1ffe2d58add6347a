"""On-device lists of the active pixels of each gate group, across the whole batch (pure PyTorch).

The compacted schedule of :func:`kernels.gated_conv2d` runs the conditional
channels of gate group ``j`` as a GEMM over the rows of its active output
pixels only, gathered from every image of the batch into shared tiles. This
module builds those lists from the decisions with a prefix sum and a scatter:
no host synchronisation, fixed-size outputs (sized by the upper bound, every
pixel active), so the launch that reads them is CUDA-graph capturable. It is
the spec; the gated launcher runs the same lists built by two Triton kernels
(:mod:`kernels.compaction_kernels`), which move about 2 bytes per (pixel,
group) pair instead of 52.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

__all__ = [
    "GROUPS_PER_PROGRAM", "PIXELS_PER_PROGRAM", "ActiveRows", "active_rows", "active_rows_bytes",
    "active_rows_kernel_bytes", "check_decisions_flat",
]  # fmt: skip

PIXELS_PER_PROGRAM = 256
"""Pixels of one program's tile in the compaction kernels (:mod:`kernels.compaction_kernels`)."""

GROUPS_PER_PROGRAM = 16
"""Gate groups of one program's tile in the compaction kernels (fewer when the layer has fewer, a power of two)."""


class ActiveRows(NamedTuple):
    """Compacted active pixels per gate group.

    ``rows`` int32 ``[G, M + 1]``: ``rows[j, :counts[j]]`` are the flattened
    ``(n, oh, ow)`` indices of the pixels where group ``j`` is on, ascending;
    entries past ``counts[j]`` are undefined (column ``M`` collects the
    scatter of the inactive ones). ``counts`` int32 ``[G]``.
    """

    rows: torch.Tensor
    counts: torch.Tensor


def active_rows(decisions_flat: torch.Tensor) -> ActiveRows:
    """Per gate group, the ascending list of pixels whose decision is on.

    Args:
        decisions_flat: bool or uint8 ``[M, G]`` (pixel-major, as a
            channels_last ``[N, G, OH, OW]`` decisions tensor viewed flat), on
            any device.

    Returns:
        :class:`ActiveRows` on the same device. An inclusive prefix sum over
        pixels gives each active pixel its slot; one scatter writes it.
    """
    check_decisions_flat(decisions_flat)
    pixels, groups = decisions_flat.shape
    on = decisions_flat != 0
    slot = torch.cumsum(on, dim=0, dtype=torch.int32)  # [M, G], 1-based slot of each active pixel
    counts = slot[-1] if pixels else torch.zeros(groups, dtype=torch.int32, device=on.device)
    target = torch.where(on, slot - 1, pixels).t().long()  # [G, M]; inactive pixels go to column M
    pixel = torch.arange(pixels, dtype=torch.int32, device=on.device).expand(groups, pixels)
    rows = torch.empty(groups, pixels + 1, dtype=torch.int32, device=on.device)
    rows.scatter_(1, target, pixel)
    return ActiveRows(rows, counts.contiguous())


def check_decisions_flat(decisions_flat: object) -> None:
    """``TypeError`` / ``ValueError`` naming ``decisions_flat`` unless it is a bool or uint8 ``[M, G]`` tensor."""
    if not isinstance(decisions_flat, torch.Tensor):
        raise TypeError(f"decisions_flat must be a torch.Tensor, got {type(decisions_flat).__name__}")
    if decisions_flat.dim() != 2:
        raise ValueError(f"decisions_flat must be [M, G], got shape {tuple(decisions_flat.shape)}")
    if decisions_flat.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"decisions_flat must be bool or uint8, got {decisions_flat.dtype}")


def active_rows_bytes(pixels: int, groups: int) -> int:
    """Bytes :func:`active_rows` reads and writes on ``[pixels, groups]`` uint8 decisions, op by op.

    Each PyTorch op counted as reading its inputs and writing its output once
    (``P = pixels * groups``): ``!= 0`` (P + P), the int32 prefix sum (P + 4P),
    ``slot - 1`` (4P + 4P), ``where`` (5P + 4P), the int64 transposed index
    (4P + 8P), the ``arange`` (4 * pixels) and the scatter (index 8P, source
    4P, written 4P): ``52 P + 4 pixels``. A model of issued traffic, like
    :func:`kernels.kernel_bytes.gated_kernel_bytes`: caches and the ops' own
    temporaries are not modelled. Keep it in step with :func:`active_rows`.
    """
    cells = pixels * groups
    reads = cells + cells + 4 * cells + 5 * cells + 4 * cells + 12 * cells
    writes = cells + 4 * cells + 4 * cells + 4 * cells + 8 * cells + 4 * pixels + 4 * cells
    return reads + writes


def active_rows_kernel_bytes(pixels: int, groups: int, active: int) -> int:
    """Bytes :func:`kernels.compaction_kernels.active_rows_triton` moves on ``[pixels, groups]``, ``active`` on.

    The uint8 decisions read by both launches (``2 P``, ``P = pixels *
    groups``); with ``T = tiles * groups`` int32 cells: the tile counts
    written (``4 T``), the prefix sum (read ``4 T``, written ``4 T``), the
    first slots (read ``8 T``, written ``4 T``) read by the scatter (``4 T``),
    so ``28 T``; the counts copied out of the last row (``8 groups``); one
    int32 row index written per active pair (``4 active``). Caches not
    modelled, as in :func:`kernels.kernel_bytes.gated_kernel_bytes`. Keep it
    in step with :func:`kernels.compaction_kernels.active_rows_triton`.
    """
    tile_cells = -(-pixels // PIXELS_PER_PROGRAM) * groups
    return 2 * pixels * groups + 28 * tile_cells + 8 * groups + 4 * active
