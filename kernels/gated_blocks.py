"""Tile pieces both gated Triton kernels share (``docs/design.md#kernels``).

:func:`block_channels` maps a program's columns to output channels (whole
gate groups), :func:`path_ranges` gives the input-channel ranges of its base
and conditional K loops (:func:`column_ranges`: both at once), and :func:`conditional_sum` runs the conditional K
loops. Used by ``_gated_conv2d_kernel`` (:mod:`kernels.gated_first`) and
``_gated_conditional_kernel`` (:mod:`kernels.gated_conditional`).
"""

from __future__ import annotations

import triton
import triton.language as tl

from .conv_tiles import PATH_DENSE, accumulate_flat_k, accumulate_taps

__all__ = ["block_channels", "column_ranges", "conditional_sum", "path_ranges"]


@triton.jit
def block_channels(pid_n, sub, gate_group, C_out, BLOCK_N: tl.constexpr, GROUP_SLOT: tl.constexpr,
                    GROUPS_PER_BLOCK: tl.constexpr, SLOT_IS_GROUP: tl.constexpr):  # fmt: skip
    """Output channels of the columns of sub-block ``sub`` of channel block ``pid_n``, and their validity.

    Column ``col`` is offset ``col % GROUP_SLOT + sub*BLOCK_N`` inside gate
    group ``pid_n*GROUPS_PER_BLOCK + col // GROUP_SLOT``; offsets past the
    group's size (padding of a non-power-of-two group) and channels past C_out
    are invalid. ``SLOT_IS_GROUP`` (the launcher's promise that
    ``gate_group == GROUP_SLOT`` and ``GROUPS_PER_BLOCK*GROUP_SLOT == BLOCK_N``)
    gives the same channels as one contiguous run, which the compiler can
    load as 16-byte vectors.
    """
    col = tl.arange(0, BLOCK_N)
    if SLOT_IS_GROUP:
        ch = pid_n * BLOCK_N + col
        return ch, ch < C_out
    within = col % GROUP_SLOT + sub * BLOCK_N
    ch = (pid_n * GROUPS_PER_BLOCK + col // GROUP_SLOT) * gate_group + within
    return ch, (within < gate_group) & (ch < C_out)


@triton.jit
def path_ranges(base_lo_ptr, base_hi_ptr, ch, ch_ok, C_in, uniform_lo, uniform_hi, BASE_PATH: tl.constexpr):
    """Input-channel ranges the two K loops of a column block cover.

    Each output channel's base channels are ``[lo, hi)``. Base loop: the hull
    ``[min lo, max hi)``. Conditional loops: ``[0, r1_hi)`` and ``[r2_lo, C_in)``,
    i.e. everything but the channels that are base for every column
    ``[max lo, min hi)`` (all of ``[0, C_in)`` when that is empty). Weight
    masks make the loops exact when a block spans several base chunks. With
    ``BASE_PATH`` dense, every output channel's interval is ``[uniform_lo,
    uniform_hi)`` (scalar arguments, so the compiler sees their alignment and
    vectorises the loads) and no interval is read. A block without a valid
    channel gets empty ranges.
    """
    if BASE_PATH == PATH_DENSE:
        any_valid = tl.max(ch_ok.to(tl.int32)) > 0
        hull_lo = tl.where(any_valid, uniform_lo, C_in)
        hull_hi = tl.where(any_valid, uniform_hi, 0)
        r1_hi = tl.where(any_valid, uniform_lo, 0)
        r2_lo = tl.where(any_valid, uniform_hi, C_in)
        return ch, ch, hull_lo, hull_hi, r1_hi, r2_lo
    lo = tl.load(base_lo_ptr + ch, mask=ch_ok, other=0)
    hi = tl.load(base_hi_ptr + ch, mask=ch_ok, other=0)
    hull_lo = tl.min(tl.where(ch_ok, lo, C_in))
    hull_hi = tl.max(tl.where(ch_ok, hi, 0))
    common_lo = tl.max(tl.where(ch_ok, lo, 0))
    common_hi = tl.min(tl.where(ch_ok, hi, C_in))
    split = common_hi > common_lo
    r1_hi = tl.where(split, common_lo, C_in)
    r2_lo = tl.where(split, common_hi, C_in)
    return lo, hi, hull_lo, hull_hi, r1_hi, r2_lo


@triton.jit
def column_ranges(
    pid_n, sub, gate_group, C_in, C_out, base_lo_ptr, base_hi_ptr, uniform_lo, uniform_hi,
    BLOCK_N: tl.constexpr, GROUP_SLOT: tl.constexpr, GROUPS_PER_BLOCK: tl.constexpr, SLOT_IS_GROUP: tl.constexpr,
    BASE_PATH: tl.constexpr,
):  # fmt: skip
    """``(ch, ch_ok, lo, hi, hull_lo, hull_hi, r1_hi, r2_lo)`` of sub-block ``sub`` of channel block ``pid_n``:
    :func:`block_channels`, then :func:`path_ranges` over those channels."""
    ch, ch_ok = block_channels(pid_n, sub, gate_group, C_out, BLOCK_N, GROUP_SLOT, GROUPS_PER_BLOCK, SLOT_IS_GROUP)
    lo, hi, hull_lo, hull_hi, r1_hi, r2_lo = path_ranges(
        base_lo_ptr, base_hi_ptr, ch, ch_ok, C_in, uniform_lo, uniform_hi, BASE_PATH
    )
    return ch, ch_ok, lo, hi, hull_lo, hull_hi, r1_hi, r2_lo


@triton.jit
def conditional_sum(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, lo, hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, FLAT_K: tl.constexpr, COND_PATH: tl.constexpr,
    RANGE_ALIGN: tl.constexpr, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr,
):  # fmt: skip
    """``acc + Yr``: ``Yr`` ``[BLOCK_M, BLOCK_N]`` float32 over the conditional channels ``[0, r1_hi)`` and
    ``[r2_lo, C_in)``, accumulated into ``acc`` (zeros for ``Yr`` alone, a base sum for ``Yp + Yr``).

    Every tap: per tap (two :func:`accumulate_taps` loops) or, with ``FLAT_K``, over the
    flattened (tap, channel) K of :func:`accumulate_flat_k`. With ``TRANSPOSED``, ``acc`` is
    ``[BLOCK_N, BLOCK_M]`` and the pixels are the MMA's N (:func:`kernels.conv_tiles.tile_dot`).
    """
    if FLAT_K:
        return accumulate_flat_k(
            acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, lo, hi,
            H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW, KH, KW, BLOCK_K, COND_PATH,
            UPCAST_DOT, DOT_PRECISION, TRANSPOSED,
        )  # fmt: skip
    acc = accumulate_taps(
        acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, 0, r1_hi, lo, hi,
        H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
        KH, KW, BLOCK_K, COND_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, TRANSPOSED,
    )  # fmt: skip
    return accumulate_taps(
        acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r2_lo, C_in, lo, hi,
        H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
        KH, KW, BLOCK_K, COND_PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, TRANSPOSED,
    )  # fmt: skip
