"""Dense implicit-GEMM convolution in Triton (its tile pieces, shared with the gated kernels: :mod:`kernels.conv_tiles`).

Implicit GEMM on channels_last activations: ``M = N*OH*OW`` output pixels,
``N = C_out`` output channels, ``K = kh*kw*C_in``. The ``A`` tile
``[BLOCK_M, BLOCK_K]`` is gathered from x for one filter tap and a run of
input channels (contiguous in channels_last); the ``B`` tile
``[BLOCK_K, BLOCK_N]`` is read from the packed weight ``[kh, kw, C_in, C_out]``
(see :class:`kernels.PackedWeight`). ``tl.dot`` runs on float16/bfloat16
tensor cores (float32 with exact IEEE products) and accumulates in float32.
Launch configurations (tiles, warps, stages, grouped program order, split-K)
and their selection: :mod:`kernels.conv_tuning`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import (
    PackedWeight,
    channels_last,
    contiguous_vector,
    device_guard,
    dot_options,
    new_output,
    optional_pointer,
    packed_data,
    require_kernel_support,
    tensor_strides,
    weight_4d,
)
from ._validation import ConvGeometry, validate_conv
from .conv_tiles import PATH_DENSE, accumulate_tap_steps, grouped_tile, k_steps, pixel_coords, store_epilogue
from .conv_tuning import ConvTiling, check_tiling, select_tiling


@triton.jit
def _conv2d_kernel(
    x_ptr, w_ptr, y_ptr, part_ptr, scale_ptr, shift_ptr, res_ptr,
    M, H, W, C_in, C_out, OH, OW,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw, srn, src, srh, srw,
    SH, SW, PH, PW, DH, DW,
    KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_K: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
    UPCAST_DOT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Program ``(tile, split)``: BLOCK_M output pixels x BLOCK_N output channels, one range of K steps.

    Tiles in grouped order (:func:`grouped_tile`). With ``SPLIT_K == 1`` the
    full K loop, then the fused epilogue into ``y``. Otherwise split
    ``program_id(1)`` runs K steps ``[s*T // SPLIT_K, (s+1)*T // SPLIT_K)``
    (``T = KH*KW*ceil(C_in/BLOCK_K)``) and stores its float32 partial sums into
    ``part_ptr`` (``[SPLIT_K, M, C_out]`` contiguous) for
    ``_split_k_epilogue_kernel``.
    """
    pid_m, pid_n = grouped_tile(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(C_out, BLOCK_N), GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    img, oh, ow, m_ok = pixel_coords(offs_m, M, OH, OW)
    ch = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    ch_ok = ch < C_out
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    steps = KH * KW * k_steps(0, C_in, BLOCK_K)
    if SPLIT_K == 1:
        acc = accumulate_tap_steps(
            acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, 0, C_in, ch, ch, 0, steps,
            H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
            KH, KW, BLOCK_K, PATH_DENSE, 1, UPCAST_DOT, DOT_PRECISION, False,
        )  # fmt: skip
        store_epilogue(
            acc, m_ok[:, None] & ch_ok[None, :], y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
            syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
        )  # fmt: skip
    else:
        split = tl.program_id(1)
        acc = accumulate_tap_steps(
            acc, x_ptr, w_ptr, img, oh, ow, m_ok, ch, ch_ok, 0, C_in, ch, ch,
            split * steps // SPLIT_K, (split + 1) * steps // SPLIT_K,
            H, W, C_in, C_out, sxn, sxc, sxh, sxw, SH, SW, PH, PW, DH, DW,
            KH, KW, BLOCK_K, PATH_DENSE, 1, UPCAST_DOT, DOT_PRECISION, False,
        )  # fmt: skip
        rows = (split * M + offs_m).to(tl.int64)
        tl.store(part_ptr + rows[:, None] * C_out + ch[None, :], acc, mask=m_ok[:, None] & ch_ok[None, :])


@triton.jit
def _split_k_epilogue_kernel(
    part_ptr, y_ptr, scale_ptr, shift_ptr, res_ptr, M, C_out, OH, OW,
    syn, syc, syh, syw, srn, src, srh, srw,
    SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_SHIFT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, RELU: tl.constexpr,
):  # fmt: skip
    """Program ``(pixel tile, channel block)``: sum the ``SPLIT_K`` float32 partials in split order, fused epilogue."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ch = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    img, oh, ow, m_ok = pixel_coords(offs_m, M, OH, OW)
    ch_ok = ch < C_out
    mask = m_ok[:, None] & ch_ok[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for split in tl.static_range(SPLIT_K):
        rows = (split * M + offs_m).to(tl.int64)
        acc += tl.load(part_ptr + rows[:, None] * C_out + ch[None, :], mask=mask, other=0.0)
    store_epilogue(
        acc, m_ok[:, None] & ch_ok[None, :], y_ptr, scale_ptr, shift_ptr, res_ptr, img, oh, ow, ch, ch_ok,
        syn, syc, syh, syw, srn, src, srh, srw, HAS_SCALE, HAS_SHIFT, HAS_RESIDUAL, RELU,
    )  # fmt: skip


EPILOGUE_BLOCK_M, EPILOGUE_BLOCK_N = 64, 64  # tiles of ``_split_k_epilogue_kernel`` (elementwise)


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
    tiling: ConvTiling | None = None,
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
        tiling: a :class:`kernels.conv_tuning.ConvTiling` to launch with
            (checked against the shape by
            :func:`kernels.conv_tuning.check_tiling`); None selects one by
            :func:`kernels.conv_tuning.select_tiling` (timed once per shape
            key on CUDA, the heuristic elsewhere).

    Returns:
        A fresh ``[N, C_out, OH, OW]`` in x's dtype, channels_last memory
        format; float32 accumulation (with ``split_k > 1``, float32 partial
        sums in a ``[split_k, N*OH*OW, C_out]`` workspace, added in split
        order: deterministic). An empty batch returns an empty tensor without
        a launch. Inference only (no autograd); transposed and grouped
        convolutions are not supported.

    Raises: as :func:`kernels._validation.validate_conv`, plus
    ``NotImplementedError`` from :func:`require_kernel_support` and
    ``TypeError``/``ValueError`` naming ``tiling`` from
    :func:`kernels.conv_tuning.check_tiling`.
    """
    weight = weight_4d(weight)
    geom = validate_conv(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
        groups=groups,
    )
    if tiling is not None:
        check_tiling(tiling, geom)
    require_kernel_support(x)
    y = new_output(geom, x)
    if geom.pixels == 0:
        return y
    x = channels_last(x)
    w = packed_data(weight)
    scale, shift = contiguous_vector(scale), contiguous_vector(shift)

    def launch(chosen: ConvTiling) -> None:
        _launch_conv2d(chosen, geom, x, w, y, scale, shift, residual, relu)

    with device_guard(x):
        launch(tiling or select_tiling(geom, x.dtype, x.device, launch))
    return y


def _launch_conv2d(
    tiling: ConvTiling, geom: ConvGeometry, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor,
    scale: torch.Tensor | None, shift: torch.Tensor | None, residual: torch.Tensor | None, relu: bool,
) -> None:  # fmt: skip
    """``_conv2d_kernel`` (and with split-K ``_split_k_epilogue_kernel``) on checked, laid-out arguments.

    ``w`` is packed ``[kh, kw, C_in, C_out]``; with ``tiling.split_k > 1`` a
    float32 ``[split_k, M, C_out]`` workspace is allocated on x's device.
    """
    m, c_out = geom.pixels, geom.out_channels
    split = tiling.split_k
    part = torch.empty((split, m, c_out), dtype=torch.float32, device=x.device) if split > 1 else y
    epilogue = {"HAS_SCALE": scale is not None, "HAS_SHIFT": shift is not None, "HAS_RESIDUAL": residual is not None,
                "RELU": relu}  # fmt: skip
    pointers = (optional_pointer(scale, y), optional_pointer(shift, y), optional_pointer(residual, y))
    grid = (triton.cdiv(m, tiling.block_m) * triton.cdiv(c_out, tiling.block_n), split)
    _conv2d_kernel[grid](
        x, w, y, part, *pointers,
        m, geom.height, geom.width, geom.in_channels, c_out, geom.out_height, geom.out_width,
        *x.stride(), *y.stride(), *tensor_strides(residual),
        *geom.stride, *geom.padding, *geom.dilation,
        KH=geom.kernel[0], KW=geom.kernel[1],
        BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k, GROUP_M=tiling.group_m,
        SPLIT_K=split, **epilogue,
        num_warps=tiling.num_warps, num_stages=tiling.num_stages, **dot_options(x.dtype),
    )  # fmt: skip
    if split > 1:
        grid = (triton.cdiv(m, EPILOGUE_BLOCK_M), triton.cdiv(c_out, EPILOGUE_BLOCK_N))
        _split_k_epilogue_kernel[grid](
            part, y, *pointers, m, c_out, geom.out_height, geom.out_width,
            *y.stride(), *tensor_strides(residual),
            SPLIT_K=split, BLOCK_M=EPILOGUE_BLOCK_M, BLOCK_N=EPILOGUE_BLOCK_N, **epilogue, num_warps=4,
        )  # fmt: skip
