"""The lists of :mod:`kernels.compaction` built by two small Triton kernels (what the gated launcher runs).

:func:`kernels.compaction.active_rows` is the PyTorch spec: per gate group,
the ascending list of the pixels whose decision is on. It takes six
PyTorch ops and about 52 bytes of traffic per (pixel, group) pair. Here the
same lists take two launches over the uint8 decisions ``[M, G]``, each in
tiles of :data:`PIXELS_PER_PROGRAM` pixels x up to :data:`GROUPS_PER_PROGRAM`
groups:

1. ``_count_kernel``: each tile's count of pixels on, per group
   (int32 ``[tiles, G]``);
2. a PyTorch exclusive prefix sum over the tiles (a ``[tiles, G]`` array,
   ``M / 256`` times smaller than the decisions) gives each tile's first
   slot per group, and its last row the counts;
3. ``_scatter_kernel``: each tile's prefix sum along its pixels
   (``tl.cumsum``) places its active pixels after the tile's first slot.

So the order is ascending, as the spec's; no host synchronisation; grids depend
only on ``M`` and ``G`` (CUDA-graph capturable).
:func:`kernels.compaction.active_rows_kernel_bytes` counts its traffic.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import next_power_of_2
from .compaction import GROUPS_PER_PROGRAM, PIXELS_PER_PROGRAM, ActiveRows, check_decisions_flat

__all__ = ["active_rows_triton"]

@triton.jit
def _tile(dec_ptr, M, G, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """Program ``(pixel tile, group tile)``: its pixels, groups, and decisions on (int32 ``[BLOCK_M, BLOCK_G]``)."""
    pix = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    grp = tl.program_id(1) * BLOCK_G + tl.arange(0, BLOCK_G)
    ok = (pix < M)[:, None] & (grp < G)[None, :]
    on = tl.load(dec_ptr + pix.to(tl.int64)[:, None] * G + grp[None, :], mask=ok, other=0) != 0
    return pix, grp, on.to(tl.int32)


@triton.jit
def _count_kernel(dec_ptr, tile_counts_ptr, M, G, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr):
    """``tile_counts[p, g]``: pixels of tile ``p`` where group ``g`` is on."""
    _, grp, on = _tile(dec_ptr, M, G, BLOCK_M, BLOCK_G)
    tl.store(tile_counts_ptr + tl.program_id(0) * G + grp, tl.sum(on, axis=0), mask=grp < G)


@triton.jit
def _scatter_kernel(
    dec_ptr, first_slot_ptr, rows_ptr, M, G, rows_stride, BLOCK_M: tl.constexpr, BLOCK_G: tl.constexpr
):  # fmt: skip
    """``rows[g, first_slot[p, g] + k] = pixel`` for the ``k``-th pixel of tile ``p`` where group ``g`` is on."""
    pix, grp, on = _tile(dec_ptr, M, G, BLOCK_M, BLOCK_G)
    first = tl.load(first_slot_ptr + tl.program_id(0) * G + grp, mask=grp < G, other=0)
    slot = first[None, :] + tl.cumsum(on, axis=0) - 1
    target = rows_ptr + grp.to(tl.int64)[None, :] * rows_stride + slot
    tl.store(target, tl.broadcast_to(pix[:, None], (BLOCK_M, BLOCK_G)), mask=on != 0)


def _grid(pixels: int, groups: int) -> tuple[int, int, int]:
    """``(pixel tiles, group tiles, BLOCK_G)`` of both launches."""
    block_g = min(GROUPS_PER_PROGRAM, next_power_of_2(groups))
    return triton.cdiv(pixels, PIXELS_PER_PROGRAM), triton.cdiv(groups, block_g), block_g


def active_rows_triton(decisions_flat: torch.Tensor) -> ActiveRows:
    """:func:`kernels.compaction.active_rows` (same arguments, results and errors) by two Triton launches.

    ``decisions_flat`` must be uint8 or bool ``[M, G]``, contiguous, on a CUDA
    device (or on CPU under ``TRITON_INTERPRET=1``). ``rows`` entries past
    ``counts[j]`` are undefined.
    """
    check_decisions_flat(decisions_flat)
    pixels, groups = decisions_flat.shape
    device = decisions_flat.device
    rows = torch.empty(groups, pixels + 1, dtype=torch.int32, device=device)
    if pixels == 0 or groups == 0:
        return ActiveRows(rows, torch.zeros(groups, dtype=torch.int32, device=device))
    flat = decisions_flat.contiguous().view(torch.uint8)
    tiles, group_tiles, block_g = _grid(pixels, groups)
    tile_counts = torch.empty(tiles, groups, dtype=torch.int32, device=device)
    _count_kernel[(tiles, group_tiles)](flat, tile_counts, pixels, groups, BLOCK_M=PIXELS_PER_PROGRAM,
                                        BLOCK_G=block_g)  # fmt: skip
    ends = torch.cumsum(tile_counts, dim=0, dtype=torch.int32)
    first_slot = ends - tile_counts
    _scatter_kernel[(tiles, group_tiles)](flat, first_slot, rows, pixels, groups, rows.stride(0),
                                          BLOCK_M=PIXELS_PER_PROGRAM, BLOCK_G=block_g)  # fmt: skip
    return ActiveRows(rows, ends[-1].contiguous())
