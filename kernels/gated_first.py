"""First launch of the gated conv: base sums, decisions, and the conditional work of the tiles that run it here.

``_gated_conv2d_kernel`` is the tiled schedule's only launch and the compacted
schedule's first one (``docs/design.md#kernels``); the compacted schedule's
second kernel is :mod:`kernels.gated_conditional`, the tile pieces both share
are in :mod:`kernels.gated_blocks`, and the launch code is
:mod:`kernels.gated_conv2d`.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .conv_tiles import accumulate_taps, k_steps, pixel_coords, store_epilogue
from .gated_blocks import column_ranges, conditional_sum


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
            ch, ch_ok, lo, hi, r1_hi, r2_lo, y_base, steps = _column_base_sum(
                pid_n, sub, x_ptr, w_ptr, base_lo_ptr, base_hi_ptr, img, oh, ow, m_ok,
                H, W, C_in, C_out, gate_group, uniform_lo, uniform_hi, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                KH, KW, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP, BASE_PATH,
                RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION,
            )  # fmt: skip
            base_steps += steps
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
        # One sub-block whose decisions pass 1 made: its columns, ranges and base sum are those of pass 1.
        if HAS_DECISIONS or SUB_BLOCKS > 1:
            ch, ch_ok, lo, hi, r1_hi, r2_lo, y_base, steps = _column_base_sum(
                pid_n, sub, x_ptr, w_ptr, base_lo_ptr, base_hi_ptr, img, oh, ow, m_ok,
                H, W, C_in, C_out, gate_group, uniform_lo, uniform_hi, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
                KH, KW, BLOCK_M, BLOCK_N, BLOCK_K, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP, BASE_PATH,
                RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION,
            )  # fmt: skip
            base_steps += steps
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
                KH, KW, BLOCK_K, False, COND_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, False,
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
def _column_base_sum(
    pid_n, sub, x_ptr, w_ptr, base_lo_ptr, base_hi_ptr, img, oh, ow, m_ok,
    H, W, C_in, C_out, gate_group, uniform_lo, uniform_hi, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    GROUP_SLOT: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, SLOT_IS_GROUP: tl.constexpr, BASE_PATH: tl.constexpr,
    RANGE_ALIGN: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Sub-block ``sub`` of channel block ``pid_n``: ``(ch, ch_ok, lo, hi, r1_hi, r2_lo, y_base, steps)``.

    Its columns and K ranges (:func:`kernels.gated_blocks.column_ranges`), its float32
    ``[BLOCK_M, BLOCK_N]`` base sum over the base hull, and the K steps that loop ran per tap.
    """
    ch, ch_ok, lo, hi, hull_lo, hull_hi, r1_hi, r2_lo = column_ranges(
        pid_n, sub, gate_group, C_in, C_out, base_lo_ptr, base_hi_ptr, uniform_lo, uniform_hi,
        BLOCK_N, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP, BASE_PATH,
    )  # fmt: skip
    y_base = accumulate_taps(
        tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32), x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok,
        hull_lo, hull_hi, lo, hi, H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
        KH, KW, BLOCK_K, BASE_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, False,
    )  # fmt: skip
    return ch, ch_ok, lo, hi, r1_hi, r2_lo, y_base, k_steps(hull_lo, hull_hi, BLOCK_K)


@triton.jit
def _expand_groups(
    d, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, GROUP_SLOT: tl.constexpr
):  # fmt: skip
    """``[BLOCK_M, GROUPS_PER_BLOCK]`` per-group values repeated over each group's ``GROUP_SLOT`` columns."""
    return tl.reshape(tl.broadcast_to(d[:, :, None], (BLOCK_M, GROUPS_PER_BLOCK, GROUP_SLOT)), (BLOCK_M, BLOCK_N))
