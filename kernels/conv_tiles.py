"""The tile pieces every conv kernel shares, as Triton device functions.

Pixel coordinates of flattened output rows (:func:`pixel_coords`), K-step
counts (:func:`k_steps`), the tile MMA (:func:`tile_dot`), the implicit-GEMM
K loops over filter taps and input channels (:func:`accumulate_taps`, :func:`accumulate_tap_steps`, over
the flattened conditional K :func:`accumulate_flat_k`), the fused
scale/shift/residual/ReLU store (:func:`store_epilogue`) and the grouped
program order (:func:`grouped_tile`). Used by the dense kernel
(:mod:`kernels.conv2d`), the gated kernels (:mod:`kernels.gated_blocks`,
:mod:`kernels.gated_conv2d`, :mod:`kernels.gated_conditional`) and the
channel-sparse kernel (:mod:`kernels.channel_sparse_conv2d`).
"""

from __future__ import annotations

import triton
import triton.language as tl

# ``accumulate_taps`` weight masks: every channel, only the base channels of
# each output channel, or only its conditional channels.
PATH_DENSE = tl.constexpr(0)
PATH_BASE = tl.constexpr(1)
PATH_CONDITIONAL = tl.constexpr(2)


@triton.jit
def pixel_coords(offs_m, M, OH, OW):
    """Image index, output row and column of flattened output pixels ``offs_m``, and ``offs_m < M``."""
    img = offs_m // (OH * OW)
    rem = offs_m - img * (OH * OW)
    oh = rem // OW
    ow = rem - oh * OW
    return img, oh, ow, offs_m < M


@triton.jit
def k_steps(c_lo, c_hi, BLOCK_K: tl.constexpr):
    """Iterations of a ``range(c_lo, c_hi, BLOCK_K)`` channel loop (0 when empty)."""
    return tl.cdiv(tl.maximum(c_hi - c_lo, 0), BLOCK_K)


@triton.jit
def tile_dot(a, b, acc, UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr):
    """``acc + a @ b`` for an ``A`` tile ``[BLOCK_M, BLOCK_K]`` and a ``B`` tile ``[BLOCK_K, BLOCK_N]``.

    ``acc`` is float32 ``[BLOCK_M, BLOCK_N]``, or with ``TRANSPOSED``
    ``[BLOCK_N, BLOCK_M]``, computed as ``b^T @ a^T``: the pixels are then the
    MMA's N, which the tensor cores run 8 wide (``mma.sync`` m16n8k16) where
    their M needs 16 rows, so an 8-pixel tile executes 8 rows, not 16.
    ``UPCAST_DOT`` multiplies in float32 (the interpreter's ``tl.dot`` is wrong
    on bfloat16).
    """
    if UPCAST_DOT:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if TRANSPOSED:
        acc = tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=DOT_PRECISION)
    else:
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def accumulate_taps(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, c_lo, c_hi, base_lo, base_hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, PATH: tl.constexpr, RANGE_ALIGN: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr,
):  # fmt: skip
    """``acc += x[pixels, taps, c_lo:c_hi] @ w[taps, c_lo:c_hi, ch]`` over every filter tap.

    ``acc`` is ``[BLOCK_M, BLOCK_N]`` float32 for the pixels ``(img, oh, ow)``
    (valid where ``m_ok``) and the output channels ``ch`` (valid where
    ``ch_ok``; any gather of channels). One flat K loop of
    ``kh*kw*k_steps(c_lo, c_hi)`` dots (so the compiler can pipeline it) walks
    the taps and, per tap, ``[c_lo, c_hi)`` in ``BLOCK_K`` steps. Out-of-image
    taps and channels past ``c_hi`` load zeros. With ``PATH`` base /
    conditional, weight entries ``(c, o)`` are kept only where ``c`` is inside /
    outside ``[base_lo[o], base_hi[o])``. ``RANGE_ALIGN > 1`` promises that
    ``c_lo`` and ``c_hi`` are multiples of it, so channel loads can be
    vectorised and pipelined (the caller must guarantee it). With
    ``TRANSPOSED``, ``acc`` is ``[BLOCK_N, BLOCK_M]`` (:func:`tile_dot`).
    All the steps of :func:`accumulate_tap_steps`.
    """
    if RANGE_ALIGN > 1:
        c_hi = tl.multiple_of(c_hi, RANGE_ALIGN)
    steps = KH * KW * k_steps(c_lo, c_hi, BLOCK_K)
    return accumulate_tap_steps(
        acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, c_lo, c_hi, base_lo, base_hi, 0, steps,
        H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
        KH, KW, BLOCK_K, PATH, RANGE_ALIGN, UPCAST_DOT, DOT_PRECISION, TRANSPOSED,
    )  # fmt: skip


@triton.jit
def accumulate_tap_steps(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, c_lo, c_hi, base_lo, base_hi, step_lo, step_hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, PATH: tl.constexpr, RANGE_ALIGN: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr,
):  # fmt: skip
    """Steps ``[step_lo, step_hi)`` of :func:`accumulate_taps`'s flat K loop (same arguments and semantics).

    Step ``t`` is tap ``t // k_steps(c_lo, c_hi)`` (row-major over
    ``KH x KW``) and channels ``c_lo + (t % k_steps)*BLOCK_K`` onwards; a
    split-K program runs one contiguous range of them. Everything that does
    not depend on the step is computed once before the loop: the per-pixel
    top-left input row/column, the ``[BLOCK_M, BLOCK_K]`` input and
    ``[BLOCK_K, BLOCK_N]`` weight pointer tiles of tap 0 / channel 0, and the
    pixel bounds of a 1-wide kernel dimension. Per step only scalars change:
    the tap and channel offset (carried from step to step, no division), the
    input offset ``r*DH*sxh + s*DW*sxw + c0*sxc``, the weight offset
    ``(tap*C_in + c0)*C_out`` and the bound terms ``H - r*DH``, ``W - s*DW``.
    """
    offs_k = tl.arange(0, BLOCK_K)
    c_steps = tl.maximum(k_steps(c_lo, c_hi, BLOCK_K), 1)
    ih0 = oh * SH - PH
    iw0 = ow * SW - PW
    x_tile = x_ptr + (img.to(tl.int64) * sxn + ih0 * sxh + iw0 * sxw)[:, None] + (offs_k * sxc)[None, :]
    w_tile = w_ptr + offs_k[:, None] * C_out + ch[None, :]
    row_ok = m_ok
    if KH == 1:
        row_ok = row_ok & (ih0 >= 0) & (ih0 < H)
    if KW == 1:
        row_ok = row_ok & (iw0 >= 0) & (iw0 < W)
    tap = step_lo // c_steps
    c0 = c_lo + (step_lo - tap * c_steps) * BLOCK_K
    for _ in range(step_lo, step_hi):
        if RANGE_ALIGN > 1:
            c0 = tl.multiple_of(c0, RANGE_ALIGN)
        r = tap // KW
        dh = r * DH
        dw = (tap - r * KW) * DW
        pix_ok = row_ok
        if KH > 1:
            pix_ok = pix_ok & (ih0 >= -dh) & (ih0 < H - dh)
        if KW > 1:
            pix_ok = pix_ok & (iw0 >= -dw) & (iw0 < W - dw)
        k_ok = offs_k < c_hi - c0
        a = tl.load(x_tile + (dh * sxh + dw * sxw + c0 * sxc), mask=pix_ok[:, None] & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & ch_ok[None, :]
        if PATH == PATH_BASE:
            cs = c0 + offs_k
            w_mask = w_mask & (cs[:, None] >= base_lo[None, :]) & (cs[:, None] < base_hi[None, :])
        if PATH == PATH_CONDITIONAL:
            cs = c0 + offs_k
            w_mask = w_mask & ((cs[:, None] < base_lo[None, :]) | (cs[:, None] >= base_hi[None, :]))
        b = tl.load(w_tile + (tap * C_in + c0) * C_out, mask=w_mask, other=0.0)
        acc = tile_dot(a, b, acc, UPCAST_DOT, DOT_PRECISION, TRANSPOSED)
        c0 += BLOCK_K
        next_tap = c0 >= c_hi
        tap = tl.where(next_tap, tap + 1, tap)
        c0 = tl.where(next_tap, c_lo, c0)
    return acc


@triton.jit
def accumulate_flat_k(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, base_lo, base_hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, PATH: tl.constexpr, UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, TRANSPOSED: tl.constexpr,
):  # fmt: skip
    """``acc += x[pixels, K] @ w[K, ch]`` over the flattened conditional K of every tap.

    K enumerates (tap, channel) pairs, tap-major, over the channels
    ``[0, r1_hi)`` and ``[r2_lo, C_in)`` (``n = r1_hi + C_in - r2_lo`` per
    tap), in ``cdiv(KH*KW*n, BLOCK_K)`` steps: a K step may straddle two taps,
    so few conditional channels per tap (12 of 16, 24 of 32) do not pad every
    tap to ``BLOCK_K``. Each ``A`` element has its own tap offset (gathered
    loads); with ``PATH`` conditional, weight entries are kept only where the
    channel is conditional for the output channel (outside ``[base_lo,
    base_hi)``; ``PATH_DENSE`` when the ranges are already exactly that).
    With ``TRANSPOSED``, ``acc`` is ``[BLOCK_N, BLOCK_M]`` (:func:`tile_dot`).
    """
    offs_k = tl.arange(0, BLOCK_K)
    img_off = img.to(tl.int64) * sxn
    per_tap = r1_hi + (C_in - r2_lo)
    total = KH * KW * per_tap
    for k0 in range(0, total, BLOCK_K):
        k = k0 + offs_k
        k_ok = k < total
        tap = k // tl.maximum(per_tap, 1)
        virtual = k - tap * per_tap
        cs = tl.where(virtual < r1_hi, virtual, virtual - r1_hi + r2_lo)
        r = tap // KW
        ih = oh[:, None] * SH - PH + (r * DH)[None, :]
        iw = ow[:, None] * SW - PW + ((tap - r * KW) * DW)[None, :]
        a_ok = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a = tl.load(x_ptr + img_off[:, None] + ih * sxh + iw * sxw + cs[None, :] * sxc, mask=a_ok, other=0.0)
        w_mask = k_ok[:, None] & ch_ok[None, :]
        if PATH == PATH_CONDITIONAL:
            w_mask = w_mask & ((cs[:, None] < base_lo[None, :]) | (cs[:, None] >= base_hi[None, :]))
        b = tl.load(w_ptr + (tap * C_in + cs)[:, None] * C_out + ch[None, :], mask=w_mask, other=0.0)
        acc = tile_dot(a, b, acc, UPCAST_DOT, DOT_PRECISION, TRANSPOSED)
    return acc


@triton.jit
def store_epilogue(
    y, mask, y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
    syn, syc, syh, syw, srn, src, srh, srw,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
):  # fmt: skip
    """Store ``relu(y*scale[ch] + shift[ch] + residual)`` (float32 math) in y_ptr's dtype where ``mask`` is set.

    ``mask`` is ``[BLOCK_M, BLOCK_N]`` (usually ``m_ok[:, None] & ch_ok[None, :]``); residual and output
    elements outside it are not read or written.
    """
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        y = y + tl.load(shift_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    img_off = img.to(tl.int64)
    if HAS_RESIDUAL:
        r_offs = (img_off * srn + oh * srh + ow * srw)[:, None] + ch[None, :] * src
        y = y + tl.load(res_ptr + r_offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    y_offs = (img_off * syn + oh * syh + ow * syw)[:, None] + ch[None, :] * syc
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def grouped_tile(pid, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """``(pid_m, pid_n)`` of program ``pid`` in grouped order over ``tiles_m x tiles_n`` output tiles.

    Programs walk ``GROUP_M`` pixel tiles (fewer in the last group) column by
    column: consecutive programs share a weight block, and a group's
    ``GROUP_M`` activation tiles are reused across every channel block while
    they are in L2. ``GROUP_M=1`` is channel-block-fastest order.
    """
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    rows = tl.minimum(tiles_m - first_m, GROUP_M)
    in_group = pid - (pid // per_group) * per_group
    return first_m + in_group % rows, in_group // rows
