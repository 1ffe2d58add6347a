"""Dense implicit-GEMM convolution in Triton, and the tile pieces the gated kernel reuses.

Implicit GEMM on channels_last activations: ``M = N*OH*OW`` output pixels,
``N = C_out`` output channels, ``K = kh*kw*C_in``. The ``A`` tile
``[BLOCK_M, BLOCK_K]`` is gathered from x for one filter tap and a run of
input channels (contiguous in channels_last); the ``B`` tile
``[BLOCK_K, BLOCK_N]`` is read from the packed weight ``[kh, kw, C_in, C_out]``
(see :class:`kernels.PackedWeight`). ``tl.dot`` runs on float16/bfloat16
tensor cores (float32 with exact IEEE products) and accumulates in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._common import (
    PackedWeight,
    channels_last,
    contiguous_vector,
    device_guard,
    dot_options,
    gemm_tile_mk,
    new_output,
    next_power_of_2,
    optional_pointer,
    packed_data,
    require_kernel_support,
    tensor_strides,
    weight_4d,
)
from ._validation import ConvGeometry, validate_conv

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
def accumulate_taps(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, c_lo, c_hi, base_lo, base_hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, PATH: tl.constexpr, RANGE_ALIGN: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
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
    vectorised and pipelined (the caller must guarantee it).
    """
    if RANGE_ALIGN > 1:
        c_hi = tl.multiple_of(c_hi, RANGE_ALIGN)
    offs_k = tl.arange(0, BLOCK_K)
    img_off = img.to(tl.int64) * sxn
    w_cols = ch[None, :]
    c_steps = k_steps(c_lo, c_hi, BLOCK_K)
    for step in range(0, KH * KW * c_steps):
        tap = step // c_steps
        r = tap // KW
        ih = oh * SH - PH + r * DH
        iw = ow * SW - PW + (tap - r * KW) * DW
        pix_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        c0 = c_lo + (step - tap * c_steps) * BLOCK_K
        if RANGE_ALIGN > 1:
            c0 = tl.multiple_of(c0, RANGE_ALIGN)
        cs = c0 + offs_k
        c_ok = cs < c_hi
        a_ptrs = x_ptr + (img_off + ih * sxh + iw * sxw)[:, None] + cs[None, :] * sxc
        a = tl.load(a_ptrs, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
        w_mask = c_ok[:, None] & ch_ok[None, :]
        if PATH == PATH_BASE:
            w_mask = w_mask & (cs[:, None] >= base_lo[None, :]) & (cs[:, None] < base_hi[None, :])
        if PATH == PATH_CONDITIONAL:
            w_mask = w_mask & ((cs[:, None] < base_lo[None, :]) | (cs[:, None] >= base_hi[None, :]))
        b = tl.load(w_ptr + (tap * C_in + cs)[:, None] * C_out + w_cols, mask=w_mask, other=0.0)
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def accumulate_flat_k(
    acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, r1_hi, r2_lo, base_lo, base_hi,
    H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK_K: tl.constexpr, PATH: tl.constexpr, UPCAST_DOT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
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
        if UPCAST_DOT:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
    return acc


@triton.jit
def store_epilogue(
    y, y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, m_ok, ch, ch_ok,
    syn, syc, syh, syw, srn, src, srh, srw,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
):  # fmt: skip
    """Store ``relu(y*scale[ch] + shift[ch] + residual)`` (float32 math) in y_ptr's dtype."""
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_SHIFT:
        y = y + tl.load(shift_ptr + ch, mask=ch_ok, other=0.0).to(tl.float32)[None, :]
    img_off = img.to(tl.int64)
    mask = m_ok[:, None] & ch_ok[None, :]
    if HAS_RESIDUAL:
        r_offs = (img_off * srn + oh * srh + ow * srw)[:, None] + ch[None, :] * src
        y = y + tl.load(res_ptr + r_offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    y_offs = (img_off * syn + oh * syh + ow * syw)[:, None] + ch[None, :] * syc
    tl.store(y_ptr + y_offs, y.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _conv2d_kernel(
    x_ptr, w_ptr, y_ptr, scale_ptr, shift_ptr, res_ptr,
    M, H, W, C_in, C_out, OH, OW,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """One program per (tile of BLOCK_M output pixels, block of BLOCK_N output channels).

    Programs of the same pixel tile are adjacent (channel block fastest) so
    the x tile they share stays in L2. Full K loop, then the fused epilogue.
    """
    pid = tl.program_id(0)
    n_blocks = tl.cdiv(C_out, BLOCK_N)
    pid_m = pid // n_blocks
    pid_n = pid - pid_m * n_blocks
    img, oh, ow, m_ok = pixel_coords(pid_m * BLOCK_M + tl.arange(0, BLOCK_M), M, OH, OW)
    ch = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ch_ok = ch < C_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    acc = accumulate_taps(
        acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, 0, C_in, ch, ch,
        H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
        KH, KW, BLOCK_K, PATH_DENSE, 1, UPCAST_DOT, DOT_PRECISION,
    )  # fmt: skip
    store_epilogue(
        acc, y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, m_ok, ch, ch_ok,
        syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
    )  # fmt: skip


@dataclass(frozen=True)
class ConvTiling:
    """Fixed launch configuration of :func:`conv2d`, picked from the GEMM shape."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def conv_tiling(pixels: int, in_channels: int, out_channels: int) -> ConvTiling:
    """Tiles for an ``M=pixels``, ``N=out_channels`` implicit GEMM over ``in_channels`` per tap.

    ``BLOCK_M``/``BLOCK_K`` from :func:`gemm_tile_mk` over C_in; ``BLOCK_N``
    the next power of two of C_out in [16, 128]. Eight warps for 128x128
    tiles, four otherwise.
    """
    block_m, block_k = gemm_tile_mk(pixels, in_channels)
    block_n = min(128, max(16, next_power_of_2(out_channels)))
    return ConvTiling(block_m, block_n, block_k, 8 if block_m * block_n >= 128 * 128 else 4, 3)


def conv2d(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    groups: int = 1,
) -> torch.Tensor:
    """Triton launch of the dense 2-D conv (groups=1) with a fused ``relu(acc*scale + shift + residual)`` epilogue.

    This is the CUDA implementation of the registered op ``gating::conv2d``
    (``kernels.library``); call :func:`kernels.conv2d` to let the dispatcher
    choose. Called directly, it runs on CUDA tensors, or on CPU tensors under
    ``TRITON_INTERPRET=1``; it launches under ``x``'s CUDA device.

    Args:
        x: ``[N, C_in, H, W]`` float16, bfloat16 or float32, on CUDA (or CPU
            under ``TRITON_INTERPRET=1``). Converted once to channels_last if
            it is not already (NCHW-contiguous or any other strides).
        weight: ``[C_out, C_in, kh, kw]`` in x's dtype, or a
            :class:`PackedWeight` from :func:`pack_weight` (a plain tensor is
            packed on every call).
        stride, padding, dilation: ints or ``(h, w)`` pairs; any kernel size.
        scale, shift: optional float ``[C_out]`` per-output-channel affine
            (folded BatchNorm), applied in float32; None means 1 / 0.
        residual: optional ``[N, C_out, OH, OW]`` in x's dtype, any strides,
            added after scale/shift.
        relu: apply ReLU last.
        groups: must be 1; anything else raises ``NotImplementedError``.

    Returns:
        A fresh ``[N, C_out, OH, OW]`` in x's dtype, channels_last memory
        format; float32 accumulation. An empty batch returns an empty tensor
        without a launch. Inference only (no autograd); transposed and grouped
        convolutions are not supported.

    Raises: as :func:`kernels._validation.validate_conv`, plus
    ``NotImplementedError`` from :func:`require_kernel_support`.
    Tiling: see :func:`conv_tiling` and ``_conv2d_kernel``.
    """
    weight = weight_4d(weight)
    geom = validate_conv(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
        groups=groups,
    )
    require_kernel_support(x)
    y = new_output(geom, x)
    if geom.pixels == 0:
        return y
    x = channels_last(x)
    w = packed_data(weight)
    scale, shift = contiguous_vector(scale), contiguous_vector(shift)
    tiling = conv_tiling(geom.pixels, geom.in_channels, geom.out_channels)
    grid = (triton.cdiv(geom.pixels, tiling.block_m) * triton.cdiv(geom.out_channels, tiling.block_n),)
    with device_guard(x):
        _launch_conv2d(grid, tiling, geom, x, w, y, scale, shift, residual, relu)
    return y


def _launch_conv2d(
    grid: tuple[int], tiling: ConvTiling, geom: ConvGeometry, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor,
    scale: torch.Tensor | None, shift: torch.Tensor | None, residual: torch.Tensor | None, relu: bool,
) -> None:  # fmt: skip
    """One ``_conv2d_kernel`` launch on checked, laid-out arguments (``w`` packed ``[kh, kw, C_in, C_out]``)."""
    _conv2d_kernel[grid](
        x, w, y, optional_pointer(scale, y), optional_pointer(shift, y), optional_pointer(residual, y),
        geom.pixels, geom.height, geom.width, geom.in_channels, geom.out_channels, geom.out_height, geom.out_width,
        *x.stride(), *y.stride(), *tensor_strides(residual),
        *geom.stride, *geom.padding, *geom.dilation,
        KH=geom.kernel[0], KW=geom.kernel[1],
        BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k,
        HAS_SCALE=scale is not None, HAS_SHIFT=shift is not None, HAS_RESIDUAL=residual is not None, RELU=relu,
        num_warps=tiling.num_warps, num_stages=tiling.num_stages, **dot_options(x.dtype),
    )  # fmt: skip
