"""The channel-sparse kernel as a registered PyTorch op, and its public wrapper (``docs/design.md#registered-ops``).

``gating::channel_sparse_conv2d`` follows :mod:`kernels.library`'s pattern
(see its docstring): the reference and the counters the kernel would report
as the default implementation, the Triton launch on CUDA, a fake
implementation with the same checks, and a FLOP formula read from the masks.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.flop_counter import register_flop_formula

from ._common import PackedWeight, new_output, weight_4d
from ._validation import validate_channel_sparse
from .channel_sparse_reference import (
    CHANNEL_SPARSE_FIELDS,
    DEFAULT_CHANNEL_BLOCK,
    channel_sparse_conv2d_reference,
    channel_sparse_macs,
)
from .library import TRITON_AVAILABLE, OptTensor, Tensor, values_readable

if TRITON_AVAILABLE:
    from .channel_sparse_conv2d import channel_sparse_conv2d as channel_sparse_conv2d_triton

CHANNEL_SPARSE_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor out_mask, Tensor? in_mask, int[2] stride, int[2] padding, int[2] dilation, "
    "Tensor? scale, Tensor? shift, Tensor? residual, bool relu, int block, bool count_work) -> (Tensor, Tensor)"
)


@torch.library.custom_op("gating::channel_sparse_conv2d", mutates_args=(), schema=CHANNEL_SPARSE_SCHEMA)
def channel_sparse_conv2d_op(
    x: Tensor, weight: Tensor, out_mask: Tensor, in_mask: OptTensor,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, block: int, count_work: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Default implementation of ``gating::channel_sparse_conv2d``: the reference and the predicted counters."""
    result = channel_sparse_conv2d_reference(
        x, weight, out_mask, in_mask, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift,
        residual=residual, relu=relu, block=block, return_counters=count_work,
    )  # fmt: skip
    return _with_counters(result, count_work, x)


def _with_counters(result: Tensor | tuple[Tensor, Tensor], count_work: bool, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(out, counters)`` of a channel-sparse call, counters an empty int64 ``[0]`` when nothing was counted."""
    return result if count_work else (result, torch.empty(0, dtype=torch.int64, device=x.device))


@channel_sparse_conv2d_op.register_fake
def _channel_sparse_conv2d_fake(
    x: Tensor, weight: Tensor, out_mask: Tensor, in_mask: OptTensor,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, block: int, count_work: bool,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    geom = validate_channel_sparse(
        x, weight, out_mask, in_mask, block=block, stride=stride, padding=padding, dilation=dilation, scale=scale,
        shift=shift, residual=residual,
    )  # fmt: skip
    counters = torch.empty(len(CHANNEL_SPARSE_FIELDS) if count_work else 0, dtype=torch.int64, device=x.device)
    return new_output(geom, x), counters


@register_flop_formula(torch.ops.gating.channel_sparse_conv2d, get_raw=True)
def _channel_sparse_conv2d_flops(
    x: Tensor, weight: Tensor, out_mask: Tensor, in_mask: OptTensor,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, block: int, count_work: bool,
    *, out_val: tuple[Tensor, Tensor],
) -> int:  # fmt: skip
    """``2 * sum_n kept_out_n * active_in_n * kh*kw*OH*OW`` from the masks; the dense count when unreadable."""
    n, c_out, oh, ow = out_val[0].shape
    c_in, kernel = weight.shape[1], (weight.shape[2], weight.shape[3])
    masks = (out_mask,) if in_mask is None else (out_mask, in_mask)
    if all(values_readable(m) for m in masks):
        return 2 * int(channel_sparse_macs(out_mask, in_mask, c_in, kernel, (oh, ow)))
    return 2 * n * c_out * c_in * kernel[0] * kernel[1] * oh * ow


if TRITON_AVAILABLE:

    @channel_sparse_conv2d_op.register_kernel("cuda")
    def _channel_sparse_conv2d_cuda(
        x: Tensor, weight: Tensor, out_mask: Tensor, in_mask: OptTensor,
        stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
        scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, block: int, count_work: bool,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        result = channel_sparse_conv2d_triton(
            x, weight, out_mask, in_mask, stride=stride, padding=padding, dilation=dilation, scale=scale,
            shift=shift, residual=residual, relu=relu, block=block, return_counters=count_work,
        )  # fmt: skip
        return _with_counters(result, count_work, x)


def channel_sparse_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    out_mask: torch.Tensor,
    in_mask: torch.Tensor | None = None,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    block: int = DEFAULT_CHANNEL_BLOCK,
    groups: int = 1,
    return_counters: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample channel-sparse conv (groups=1): ``relu(out_mask * (conv(x * in_mask)*scale + shift) + residual)``.

    Runs ``gating::channel_sparse_conv2d``: the Triton kernel on CUDA, which
    skips, per sample, the output-channel groups of 8 ``out_mask`` prunes and the
    input-channel groups ``in_mask`` marks inactive (lists built on device, no
    host sync; ``docs/design.md#channel-sparse-kernel``), the reference
    elsewhere. Semantics: :func:`kernels.channel_sparse_conv2d_reference`.

    Args:
        x, weight, stride, padding, dilation, scale, shift, residual, relu, groups: as :func:`conv2d`.
        out_mask: bool ``[N, C_out]``, the output channels kept per sample;
            a pruned one is exactly 0 (``relu(residual)`` with a residual).
        in_mask: bool ``[N, C_in]``, the input channels active per sample
            (inactive ones are read as zeros), or None: all active.
        block: tile width in channels, one of ``(16, 32, 64, 128)``. The
            kernel skips in groups of 8 channels (a group runs when any of
            its channels is on; masks need no alignment) and gathers
            ``block / 8`` active groups per tile.
        return_counters: also return the int64 ``[8]`` work counters
            (``CHANNEL_SPARSE_FIELDS``; on CPU the ones the kernel would report).

    Returns:
        ``out`` (fresh ``[N, C_out, OH, OW]`` in x's dtype, channels_last), or
        ``(out, counters)``. Inference only.

    Raises:
        ``TypeError`` / ``ValueError`` / ``NotImplementedError`` naming the
        argument (:func:`kernels._validation.validate_channel_sparse`).
    """
    weight = weight_4d(weight)
    geom = validate_channel_sparse(
        x, weight, out_mask, in_mask, block=block, stride=stride, padding=padding, dilation=dilation, scale=scale,
        shift=shift, residual=residual, groups=groups,
    )  # fmt: skip
    out, counters = torch.ops.gating.channel_sparse_conv2d(
        x, weight, out_mask, in_mask, list(geom.stride), list(geom.padding), list(geom.dilation), scale, shift,
        residual, bool(relu), block, bool(return_counters),
    )  # fmt: skip
    return (out, counters) if return_counters else out
