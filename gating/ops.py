"""The one dispatch seam between ``gating`` and ``kernels`` (DESIGN §3, §4).

CUDA tensors go to the Triton kernels (``kernels.conv2d``,
``kernels.gated_conv2d``); every other tensor goes to the PyTorch references
with the same signatures (``kernels.reference``). Nothing else in ``gating``
tests devices.

``fold_gated_conv`` turns an eval-mode ``ChannelGatedConv2d`` (and the
BatchNorm that follows it, if any) into the arguments of the gated kernel:

* gate: ``d = 1[group_sum(a * Yp0 + b) > 0]`` on the bias-free partial sum
  ``Yp0``, with ``a = 1/sigma``, ``b = a * bias - mu/sigma - Δ``
  (``mu``, ``sigma``: running statistics of the gate BatchNorm);
* output: ``(Yp0 + d * Yr) * scale + shift``, with the conv bias and the
  following BatchNorm folded in: ``scale = gamma/sigma_bn``,
  ``shift = beta + (bias - mu_bn) * scale`` (``scale = 1``, ``shift = bias``
  without a BatchNorm).

``GatedConvInference`` is the module form: it holds the folded, packed
parameters (computed once) and runs the whole layer in one kernel call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

import kernels
from kernels import PackedWeight, pack_weight

from .gates import ChannelGatedConv2d


def use_triton(x: torch.Tensor) -> bool:
    """True when ``x`` should run through the Triton kernels (a CUDA tensor and Triton present)."""
    return x.is_cuda and kernels.TRITON_AVAILABLE


def conv2d(x: torch.Tensor, weight: torch.Tensor | PackedWeight, **kwargs: Any) -> torch.Tensor:
    """Dense conv with fused epilogue: ``kernels.conv2d`` on CUDA, its reference elsewhere."""
    op = kernels.conv2d if use_triton(x) else kernels.conv2d_reference
    return op(x, weight, **kwargs)


def gated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    gate_scale: torch.Tensor,
    gate_shift: torch.Tensor,
    **kwargs: Any,
) -> tuple:
    """Partial-sum gated conv: ``kernels.gated_conv2d`` on CUDA, its reference elsewhere.

    Returns ``(y, decisions)`` (or ``(y, decisions, stats)`` with
    ``return_stats=True``; the reference's stats are ``None``).
    """
    op = kernels.gated_conv2d if use_triton(x) else kernels.gated_conv2d_reference
    return op(x, weight, gate_scale, gate_shift, **kwargs)


@dataclass
class FoldedGatedConv:
    """Everything the gated kernel needs for one layer, folded at build time.

    ``weight`` is packed once; ``gate_scale``, ``gate_shift``, ``scale``,
    ``shift`` are ``[C_out]`` in float32 (float64 for a float64 layer).
    """

    weight: PackedWeight
    gate_scale: torch.Tensor
    gate_shift: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    base_fraction: float
    base_layout: str
    gate_group: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def kernel_kwargs(self) -> dict[str, Any]:
        return {
            "base_fraction": self.base_fraction,
            "base_layout": self.base_layout,
            "gate_group": self.gate_group,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "scale": self.scale,
            "shift": self.shift,
        }


@torch.no_grad()
def fold_gated_conv(
    layer: ChannelGatedConv2d, bn: nn.BatchNorm2d | None = None, dtype: torch.dtype | None = None
) -> FoldedGatedConv:
    """Fold ``layer``'s gate, bias and the following ``bn`` (eval statistics) into kernel arguments.

    ``dtype`` is the dtype the weight is packed in, which must be the dtype of
    the activations it will run on (default: the layer's weight dtype).
    Everything stays on the layer's device.
    """
    if not isinstance(layer, ChannelGatedConv2d):
        raise TypeError(f"fold_gated_conv needs a ChannelGatedConv2d, got {type(layer).__name__}")
    if bn is not None:
        if not isinstance(bn, nn.BatchNorm2d) or bn.num_features != layer.out_channels:
            raise ValueError(
                f"{layer.layer_name}: the BatchNorm to fold must be BatchNorm2d({layer.out_channels}), got {bn}"
            )
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{layer.layer_name}: the BatchNorm to fold tracks no running statistics")
    gate_scale, gate_shift = layer.folded_gate()
    wide = gate_scale.dtype
    bias = torch.zeros_like(gate_scale) if layer.bias is None else layer.bias.to(wide)
    gate_shift = gate_shift + gate_scale * bias
    if bn is None:
        scale, shift = torch.ones_like(gate_scale), bias
    else:
        scale = torch.rsqrt(bn.running_var.to(wide) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(wide)
        shift = (bias - bn.running_mean.to(wide)) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(wide)
    return FoldedGatedConv(
        weight=pack_weight(layer.weight.detach().to(dtype or layer.weight.dtype)),
        gate_scale=gate_scale.contiguous(),
        gate_shift=gate_shift.contiguous(),
        scale=scale.contiguous(),
        shift=shift.contiguous(),
        base_fraction=layer.base_fraction,
        base_layout=layer.base_layout,
        gate_group=layer.gate_group,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
    )


class GatedConvInference(nn.Module):
    """Inference form of a ``ChannelGatedConv2d`` (+ optional BatchNorm and ReLU) in one kernel call.

    ``forward(x, residual=None)``: ``x`` ``[N, C_in, H, W]`` (channels_last is
    best on CUDA; other layouts are converted once by the kernel), optional
    ``residual`` ``[N, C_out, OH, OW]`` added before the ReLU. Returns
    ``[N, C_out, OH, OW]`` in ``x``'s dtype and keeps the decisions in
    ``last_decisions`` (bool ``[N, G, OH, OW]``). The folded parameters are a
    snapshot: rebuild after changing the source layer.
    """

    def __init__(self, folded: FoldedGatedConv, relu: bool = False, name: str = "GatedConvInference") -> None:
        super().__init__()
        self.folded = folded
        self.relu = relu
        self.layer_name = name
        self.last_decisions: torch.Tensor | None = None

    @classmethod
    def from_gated(
        cls,
        layer: ChannelGatedConv2d,
        bn: nn.BatchNorm2d | None = None,
        relu: bool = False,
        dtype: torch.dtype | None = None,
    ) -> "GatedConvInference":
        """Build from a gated conv (its eval statistics), folding ``bn`` if given; ``dtype`` as in ``fold_gated_conv``."""
        return cls(fold_gated_conv(layer, bn, dtype), relu=relu, name=layer.layer_name)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        y, self.last_decisions = gated_conv2d(
            x,
            self.folded.weight,
            self.folded.gate_scale,
            self.folded.gate_shift,
            residual=residual,
            relu=self.relu,
            **self.folded.kernel_kwargs(),
        )
        return y
