"""The inference seam between ``gating`` and ``kernels``: folding a gated layer into the registered ops.

``conv2d`` and ``gated_conv2d`` are the public wrappers of the registered ops
``gating::conv2d`` / ``gating::gated_conv2d`` (``docs/design.md#registered-ops``):
the torch dispatcher runs the Triton kernel on CUDA tensors and the PyTorch
reference elsewhere, so neither this module nor the gates or the model test
devices (``docs/design.md#layers-of-the-code``).

``fold_gated_conv`` turns an eval-mode ``ChannelGatedConv2d`` (and the
BatchNorm that follows it, if any) into the arguments of the gated op
(``docs/design.md#folding-for-inference``):

* gate: ``d = 1[group_sum(a * Yp0 + b) > 0]`` on the bias-free partial sum
  ``Yp0``, with ``a = 1/sigma``, ``b = a * bias - mu/sigma - Δ``
  (``mu``, ``sigma``: running statistics of the gate BatchNorm);
* output: ``(Yp0 + d * Yr) * scale + shift``, with the conv bias and the
  following BatchNorm folded in: ``scale = gamma/sigma_bn``,
  ``shift = beta + (bias - mu_bn) * scale`` (``scale = 1``, ``shift = bias``
  without a BatchNorm).

``GatedConvInference`` is the module form: it holds the folded, packed
parameters (computed once, as buffers) and runs the whole layer in one op
call; it compiles with ``torch.compile(fullgraph=True)`` and exports with
``torch.export`` as one ``gating::gated_conv2d`` node.

Errors (``docs/design.md#exception-policy``): ``TypeError`` for a layer that is
not a ``ChannelGatedConv2d``; ``ValueError`` naming the layer for a BatchNorm
of the wrong size or without running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels import GateSpec, PackedWeight, conv2d, gated_conv2d, pack_weight

from .gates import ChannelGatedConv2d

__all__ = ["FoldedGatedConv", "GatedConvInference", "conv2d", "fold_gated_conv", "gated_conv2d"]


@dataclass
class FoldedGatedConv:
    """Everything the gated kernel needs for one layer, folded at build time.

    ``weight`` is packed once; ``gate_scale``, ``gate_shift``, ``scale``,
    ``shift`` are ``[C_out]`` in float32 (float64 for a float64 layer);
    ``spec`` is the layer's :class:`kernels.GateSpec`; ``stride``,
    ``padding``, ``dilation`` are ``(h, w)`` int pairs.
    """

    weight: PackedWeight
    gate_scale: torch.Tensor
    gate_shift: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    spec: GateSpec
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]

    def kernel_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``gated_conv2d`` after its four tensors: the spec expanded, geometry, scale/shift."""
        return {
            **self.spec.to_dict(),
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
        if not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(
                f"{layer.layer_name}: the BatchNorm to fold must be BatchNorm2d({layer.out_channels}), got {bn}"
            )
        if bn.num_features != layer.out_channels:
            raise ValueError(
                f"{layer.layer_name}: the BatchNorm to fold must be BatchNorm2d({layer.out_channels}), got {bn}"
            )
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"{layer.layer_name}: bn, the BatchNorm to fold, tracks no running statistics")
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
        spec=layer.spec,
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
    )


class GatedConvInference(nn.Module):
    """Inference form of a ``ChannelGatedConv2d`` (+ optional BatchNorm and ReLU) in one gated op call.

    ``forward(x, residual=None)``: ``x`` ``[N, C_in, H, W]`` in the packed
    weight's dtype (channels_last is best on CUDA; other layouts are converted
    once by the kernel), optional ``residual`` ``[N, C_out, OH, OW]`` added
    before the ReLU. Returns ``[N, C_out, OH, OW]`` in ``x``'s dtype and keeps
    the decisions in ``last_decisions`` (bool ``[N, G, OH, OW]``). The folded
    tensors are non-persistent buffers (they follow ``.to()``); ``folded``
    rebuilds the :class:`FoldedGatedConv`. They are a snapshot: rebuild after
    changing the source layer.
    """

    _TENSORS = ("gate_scale", "gate_shift", "scale", "shift")
    _GEOMETRY = ("stride", "padding", "dilation")

    def __init__(self, folded: FoldedGatedConv, relu: bool = False, name: str = "GatedConvInference") -> None:
        super().__init__()
        self.register_buffer("packed_weight", folded.weight.data, persistent=False)
        for field in self._TENSORS:
            self.register_buffer(field, getattr(folded, field), persistent=False)
        self.spec = folded.spec
        self.geometry = {field: getattr(folded, field) for field in self._GEOMETRY}
        # The op's non-tensor arguments, the spec expanded once (the op takes plain values).
        self.config = self.spec.to_dict() | self.geometry
        self.relu = relu
        self.layer_name = name
        self.last_decisions: torch.Tensor | None = None

    @property
    def folded(self) -> FoldedGatedConv:
        """The folded arguments, from the current buffers."""
        tensors = {field: getattr(self, field) for field in self._TENSORS}
        return FoldedGatedConv(weight=PackedWeight(self.packed_weight), spec=self.spec, **tensors, **self.geometry)

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
            PackedWeight(self.packed_weight),
            self.gate_scale,
            self.gate_shift,
            scale=self.scale,
            shift=self.shift,
            residual=residual,
            relu=self.relu,
            **self.config,
        )
        return y
