"""Dense convolutions at inference: a BatchNorm folded into the weights, run through ``gating::conv2d``.

:func:`fold_conv_batchnorm` is the exact eval-mode folding of
``bn(conv(x))`` into one convolution: with ``scale = gamma / sqrt(running_var
+ eps)``, ``W' = W * scale`` (per output channel) and ``b' = beta + (b -
running_mean) * scale``, computed in float64 whatever the layer's dtype and
rounded once to the dtype asked for.

:class:`DenseConvInference` runs a folded convolution (groups = 1, zero
padding) through the registered op ``gating::conv2d`` with its epilogue
``relu(conv(x, W') + b' + residual)``; :func:`folded_conv2d` is the plain
``nn.Conv2d`` form for a convolution the op cannot take (grouped or
depthwise, another padding mode), whose ReLU and residual add stay PyTorch
ops.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from kernels import PackedWeight, conv2d, pack_weight

__all__ = ["DenseConvInference", "fold_conv_batchnorm", "folded_conv2d"]


@torch.no_grad()
def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` in float64 of ``bn(conv(x))`` (eval statistics) as one convolution.

    ``weight`` is ``[C_out, C_in / groups, kh, kw]``, ``bias`` ``[C_out]``
    (``None`` when there is neither a conv bias nor a BatchNorm); callers
    round them once to the dtype they run in. ``bn`` must track running
    statistics (the caller checks :func:`~gating.engine.fuse.foldable_batchnorm`).
    """
    weight = conv.weight.detach().double()
    bias = None if conv.bias is None else conv.bias.detach().double()
    if bn is not None:
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.detach().double()
        shift = -bn.running_mean.double() * scale if bias is None else (bias - bn.running_mean.double()) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.detach().double()
        weight, bias = weight * scale[:, None, None, None], shift
    return weight, bias


def folded_conv2d(conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype) -> nn.Conv2d:
    """A copy of ``conv`` with ``bn`` folded into its weight and bias (:func:`fold_conv_batchnorm`), in ``dtype``.

    Keeps every setting of ``conv`` (groups, padding mode, ...); the weight is
    channels_last. Runs as ``F.conv2d``.
    """
    folded = copy.deepcopy(conv).to(dtype)
    weight, bias = fold_conv_batchnorm(conv, bn)
    weight = weight.to(dtype).contiguous(memory_format=torch.channels_last)
    folded.weight = nn.Parameter(weight, requires_grad=False)
    folded.bias = None if bias is None else nn.Parameter(bias.to(dtype), requires_grad=False)
    return folded


class DenseConvInference(nn.Module):
    """A dense convolution (+ folded BatchNorm, residual add, ReLU) as one ``gating::conv2d`` call.

    ``forward(x, residual=None)``: ``x`` ``[N, C_in, H, W]`` in the packed
    weight's dtype (channels_last is what the CUDA kernel reads without a
    copy); ``residual`` optional ``[N, C_out, OH, OW]`` in x's dtype. Returns
    ``relu(conv(x, W') + shift + residual)`` (ReLU only if ``relu``),
    ``[N, C_out, OH, OW]`` channels_last in x's dtype; ``shift`` (float32,
    or float64 for a float64 build) is applied in float32 or wider.
    ``packed_weight`` (``[kh, kw, C_in, C_out]``, :func:`kernels.pack_weight`)
    and ``shift`` are non-persistent buffers.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype, *, relu: bool, name: str
    ) -> None:
        super().__init__()
        weight, bias = fold_conv_batchnorm(conv, bn)
        shift = None if bias is None else bias.to(torch.promote_types(dtype, torch.float32))
        self.register_buffer("packed_weight", pack_weight(weight.to(dtype)).data, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.geometry = {"stride": tuple(conv.stride), "padding": tuple(conv.padding), "dilation": tuple(conv.dilation)}
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.relu = relu
        self.layer_name = name

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv2d(
            x, PackedWeight(self.packed_weight), shift=self.shift, residual=residual, relu=self.relu, **self.geometry
        )

    def extra_repr(self) -> str:
        return f"{self.layer_name!r}, {self.in_channels}, {self.out_channels}, relu={self.relu}, {self.geometry}"
