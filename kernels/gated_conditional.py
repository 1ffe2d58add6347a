"""Second launch of the compacted gated schedule: conditional tiles over compacted active pixels.

``_gated_conditional_kernel`` completes what the first launch
(``_gated_conv2d_kernel`` with ``COMPACT``, :mod:`kernels.gated_first`) left:
for each gate group, the conditional channels of the pixels that
:func:`kernels.compaction.active_rows` listed for it
(``docs/design.md#kernels``). Launched by :func:`kernels.gated_conv2d.gated_conv2d`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .conv_tiles import k_steps, pixel_coords, store_epilogue
from .gated_blocks import column_ranges, conditional_sum

# Which tiles of a compacted column a launch runs (``TILES``): its full tiles of
# BLOCK_M rows, one level of the remainder (``count % MAIN_BLOCK_M`` rows in
# binary: a full tile of BLOCK_M rows, 32 <= BLOCK_M < MAIN_BLOCK_M, where that
# bit is set), or of its last ``count % 32`` rows the 16-row tail tiles (each
# with more than 8 of them) and the 8-row last tile (the rest: 1 to 8 rows),
# which runs transposed.
TILES_FULL = tl.constexpr(1)
TILES_TAIL = tl.constexpr(2)
TILES_LEVEL = tl.constexpr(3)
TILES_LAST = tl.constexpr(4)


@triton.jit
def _gated_conditional_kernel(
    x_ptr, w_ptr, y_ptr, yp_ptr, rows_ptr, counts_ptr, base_lo_ptr, base_hi_ptr,
    scale_ptr, shift_ptr, res_ptr, stats_ptr,
    M, H, W, C_in, C_out, OH, OW, gate_group, uniform_lo, uniform_hi, tiles_per_column, rows_stride,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SLOT: tl.constexpr, SUB_BLOCKS: tl.constexpr, SLOT_IS_GROUP: tl.constexpr, RANGE_ALIGN: tl.constexpr,
    FLAT_K: tl.constexpr, TILES: tl.constexpr, MAIN_BLOCK_M: tl.constexpr, TILE_MAJOR: tl.constexpr,
    BASE_PATH: tl.constexpr, COND_PATH: tl.constexpr, COUNT_STATS: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Second launch of the compacted schedule: one program per (gate group, sub-block, tile of active pixels).

    The grid is sized by the upper bound (``tiles_per_column`` tiles per
    column). With ``TILE_MAJOR`` program ``pid`` runs tile ``pid // columns``
    of column ``pid % columns``, so tile ``t`` of every group is in flight at
    about the same time: each group's list is ascending, so where the
    groups' densities are alike those tiles gather rows of about the same
    pixels, and the input rows one group reads can still be in L2 for the
    next. Otherwise (column-major) a column's tiles are numbered together.
    Which tiles of a column with ``count`` listed pixels (``counts_ptr``)
    run depends on ``TILES``. ``TILES_FULL``: tile ``t``
    covers slots ``[t*BLOCK_M, (t+1)*BLOCK_M)`` and runs when it ends by
    ``count`` (its rows need no mask). The remainder ``r = count % MAIN_BLOCK_M``
    after ``base = count - r`` is cut in binary: ``TILES_LEVEL`` (one program
    per column, ``32 <= BLOCK_M < MAIN_BLOCK_M``) covers the full tile
    ``[base + (r // (2*BLOCK_M)) * 2*BLOCK_M, ... + BLOCK_M)`` when bit
    ``BLOCK_M`` of ``r`` is set. The last ``t = r % 32`` rows, from ``s0 =
    base + (r // 32) * 32``: ``TILES_TAIL`` (BLOCK_M 16, two programs per
    column) tile ``j`` covers slots from ``s0 + 16*j`` and runs when more
    than 8 rows are left from there; ``TILES_LAST`` (BLOCK_M 8, one program
    per column) covers the 1 to 8 rows after the tail tiles that ran, with
    the MMA transposed so that its pixels are the N dimension (8 wide on the
    tensor cores, :func:`kernels.conv_tiles.tile_dot`). So the launches
    together run each slot once, pad at most 7 rows per column and load its
    weight columns at most ``count // MAIN_BLOCK_M + log2(MAIN_BLOCK_M) - 3``
    times. A program that does not run, or whose sub-block lies past the
    group's last channel, does nothing. Otherwise it gathers its
    ``BLOCK_M`` pixels from the group's list (``rows_ptr``, which may mix
    images), runs the conditional K loops as an implicit GEMM over those rows
    (3x3 halo read from the channels_last input; per tap, or with ``FLAT_K``
    over the flattened (tap, channel) K of :func:`accumulate_flat_k`), adds the float32 base sum
    the first launch left in ``yp_ptr`` and stores the fused epilogue over the
    first launch's output. Counters: conditional tiles and MACs.
    """
    pid = tl.program_id(0)
    if TILE_MAJOR:  # tile t of every column runs at about the same time
        columns = tl.cdiv(C_out, gate_group) * SUB_BLOCKS
        tile = pid // columns
        column = pid - tile * columns
    else:
        column = pid // tiles_per_column
        tile = pid - column * tiles_per_column
    group = column // SUB_BLOCKS
    sub = column - group * SUB_BLOCKS
    count = tl.load(counts_ptr + group)
    group_width = tl.minimum(gate_group, C_out - group * gate_group)
    base = (count // MAIN_BLOCK_M) * MAIN_BLOCK_M
    tail_start = base + ((count - base) // 32) * 32
    if TILES == TILES_TAIL:
        start = tail_start + tile * BLOCK_M
        runs = count - start > 8
    elif TILES == TILES_LAST:
        left = count - tail_start
        start = tail_start + 16 * ((left > 8).to(tl.int32) + (left > 24).to(tl.int32))
        runs = start < count
    elif TILES == TILES_LEVEL:
        start = base + ((count - base) // (2 * BLOCK_M)) * (2 * BLOCK_M)
        runs = ((count - base) // BLOCK_M) % 2 == 1
    else:
        start = tile * BLOCK_M
        runs = start + BLOCK_M <= count
    if runs & (sub * BLOCK_N < group_width):
        slot = start + tl.arange(0, BLOCK_M)
        if (TILES == TILES_FULL) or (TILES == TILES_LEVEL):
            m_ok = tl.full([BLOCK_M], 1, tl.int1)
        else:
            m_ok = slot < count
        pix = tl.load(rows_ptr + group.to(tl.int64) * rows_stride + slot, mask=m_ok, other=0)
        img, oh, ow, _ = pixel_coords(pix, M, OH, OW)
        ch, ch_ok, lo, hi, _, _, r1_hi, r2_lo = column_ranges(
            group, sub, gate_group, C_in, C_out, base_lo_ptr, base_hi_ptr, uniform_lo, uniform_hi,
            BLOCK_N, GROUP_SLOT, 1, SLOT_IS_GROUP, BASE_PATH,
        )  # fmt: skip
        yp_offs = pix.to(tl.int64)[:, None] * C_out + ch[None, :]
        y = tl.load(yp_ptr + yp_offs, mask=m_ok[:, None] & ch_ok[None, :], other=0.0)
        if TILES == TILES_LAST:
            y = tl.trans(y)  # [BLOCK_N, BLOCK_M]: the pixels are the MMA's N
        y = conditional_sum(
            y, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, lo, hi,
            H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
            KH, KW, BLOCK_K, FLAT_K, COND_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, TILES == TILES_LAST,
        )  # fmt: skip
        if TILES == TILES_LAST:
            y = tl.trans(y)
        if FLAT_K:
            cond_steps = tl.cdiv(KH * KW * (r1_hi + C_in - r2_lo), BLOCK_K)
        else:
            cond_steps = KH * KW * (k_steps(0, r1_hi, BLOCK_K) + k_steps(r2_lo, C_in, BLOCK_K))
        store_epilogue(
            y, m_ok[:, None] & ch_ok[None, :], y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
            syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
        )  # fmt: skip
        if COUNT_STATS:
            tl.atomic_add(stats_ptr + 1, 1)
            tl.atomic_add(stats_ptr + 3, cond_steps.to(tl.int64) * (BLOCK_M * BLOCK_N * BLOCK_K))
