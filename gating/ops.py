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

``fold_runtime_conv`` turns an eval-mode ``RuntimeGatedConv2d`` (its conv bias
and the BatchNorm it holds) into the arguments of the channel-sparse op
``gating::channel_sparse_conv2d`` (``docs/design.md#channel-sparse-kernel``):
``scale``/``shift`` as above, the weight packed once. ``RuntimeConvInference``
is its module form: per input it computes the runtime importance and asks
the layer's own :meth:`RuntimeGatedConv2d.masks` for the kept channels (so
the top-k rule and the current keep ratio are the layer's), then runs the op,
which skips the pruned output groups and the inactive input groups; it
compiles with ``torch.compile(fullgraph=True)`` (the op one node).

Errors (``docs/design.md#exception-policy``): ``TypeError`` for a layer of the
wrong type (``fold_gated_conv`` needs a ``ChannelGatedConv2d``,
``fold_runtime_conv`` a ``RuntimeGatedConv2d``); ``ValueError`` naming the
layer for a BatchNorm of the wrong size or without running statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kernels import (
    DEFAULT_CHANNEL_BLOCK,
    GateSpec,
    PackedWeight,
    channel_sparse_conv2d,
    conv2d,
    gated_conv2d,
    pack_weight,
)

from .gates import ChannelGatedConv2d, RuntimeGatedConv2d, check_conv_input

__all__ = [
    "FoldedGatedConv",
    "FoldedRuntimeConv",
    "GatedConvInference",
    "RuntimeConvInference",
    "batchnorm_affine",
    "channel_sparse_conv2d",
    "conv_bias",
    "conv2d",
    "fold_gated_conv",
    "fold_runtime_conv",
    "gated_conv2d",
]


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
    bias = conv_bias(layer.bias, layer.out_channels, gate_scale)
    gate_shift = gate_shift + gate_scale * bias
    scale, shift = batchnorm_affine(bias, bn)
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


def conv_bias(bias: torch.Tensor | None, channels: int, like: torch.Tensor) -> torch.Tensor:
    """The conv bias in ``like``'s dtype and device, zeros ``[channels]`` when there is none."""
    return like.new_zeros(channels) if bias is None else bias.detach().to(like.dtype)


def batchnorm_affine(bias: torch.Tensor, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` ``[C_out]`` in bias's dtype of ``bn(y + bias)`` as ``y*scale + shift`` (eval statistics).

    ``scale = gamma / sqrt(running_var + eps)``, ``shift = beta + (bias -
    running_mean) * scale``; ``(1, bias)`` without a BatchNorm. The caller
    has checked that ``bn`` tracks running statistics.
    """
    if bn is None:
        return torch.ones_like(bias), bias
    wide = bias.dtype
    scale = torch.rsqrt(bn.running_var.to(wide) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to(wide)
    shift = (bias - bn.running_mean.to(wide)) * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().to(wide)
    return scale, shift


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


# ------------------------------------------------------------ runtime gate
@dataclass
class FoldedRuntimeConv:
    """What the channel-sparse op needs for one ``RuntimeGatedConv2d``, folded at build time.

    ``weight`` is packed once; ``scale``, ``shift`` are ``[C_out]`` in float32
    (float64 for a float64 layer): the conv bias and the layer's BatchNorm
    (eval statistics) as one affine; ``stride``, ``padding``, ``dilation``
    are ``(h, w)`` int pairs.
    """

    weight: PackedWeight
    scale: torch.Tensor
    shift: torch.Tensor
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


@torch.no_grad()
def fold_runtime_conv(layer: RuntimeGatedConv2d, dtype: torch.dtype | None = None) -> FoldedRuntimeConv:
    """Fold ``layer``'s conv bias and BatchNorm (``layer.bn``, eval statistics) into scale/shift; pack the weight.

    ``dtype`` is the dtype the weight is packed in, the dtype of the
    activations it will run on (default: the layer's weight dtype).
    Everything stays on the layer's device. ``TypeError`` for another layer
    type, ``ValueError`` naming the layer for a BatchNorm without running
    statistics.
    """
    if not isinstance(layer, RuntimeGatedConv2d):
        raise TypeError(f"fold_runtime_conv needs a RuntimeGatedConv2d, got {type(layer).__name__}")
    bn = layer.bn
    if bn is not None and (bn.running_mean is None or bn.running_var is None):
        raise ValueError(f"{layer.layer_name}: bn, the BatchNorm to fold, tracks no running statistics")
    wide = torch.promote_types(layer.weight.dtype, torch.float32)
    bias = conv_bias(layer.bias, layer.out_channels, layer.weight.new_empty(0, dtype=wide))
    scale, shift = batchnorm_affine(bias, bn)
    conv = layer.conv
    return FoldedRuntimeConv(
        weight=pack_weight(layer.weight.detach().to(dtype or layer.weight.dtype)),
        scale=scale.contiguous(),
        shift=shift.contiguous(),
        stride=tuple(conv.stride),
        padding=tuple(conv.padding),
        dilation=tuple(conv.dilation),
    )


class RuntimeConvInference(nn.Module):
    """Inference form of an eval-mode ``RuntimeGatedConv2d`` (+ optional residual and ReLU) in one op call.

    ``forward(x, residual=None, in_mask=None)``:

    * ``x`` ``[N, C_in, H, W]`` in the packed weight's dtype (channels_last
      is best on CUDA);
    * ``residual`` optional ``[N, C_out, OH, OW]``, added after the masked
      layer output, then the ReLU if ``relu``: ``relu(layer(x) + residual)``;
    * ``in_mask`` optional bool ``[N, C_in]``, the input channels that may be
      non-zero (the previous layer's ``last_masks``). When None it is
      computed from ``x`` as the layer records ``last_active_inputs`` (one
      extra read of ``x``); either way the op skips the inactive input groups.

    The kept channels are the layer's own: the runtime importance
    ``predictor(GAP(x))`` goes through ``gate.masks`` (top-k or trade-off
    pruner, the keep ratio the layer has *now*, so ``set_keep_ratio`` on the
    layer applies here; ``force_open`` keeps every channel). Returns ``[N,
    C_out, OH, OW]`` in x's dtype, channels_last, equal to ``layer(x)`` in
    eval mode within the dtype's rounding; keeps ``last_masks``,
    ``last_active_inputs`` and, with ``count_work``, the op's int64 ``[8]``
    ``last_counters``. ``packed_weight``, ``scale`` and ``shift`` are a
    snapshot of the layer's conv and BatchNorm (non-persistent buffers;
    rebuild after changing them).
    """

    def __init__(
        self,
        gate: RuntimeGatedConv2d,
        folded: FoldedRuntimeConv,
        *,
        relu: bool = False,
        block: int = DEFAULT_CHANNEL_BLOCK,
        count_work: bool = False,
    ) -> None:
        super().__init__()
        self.gate = gate
        self.register_buffer("packed_weight", folded.weight.data, persistent=False)
        self.register_buffer("scale", folded.scale, persistent=False)
        self.register_buffer("shift", folded.shift, persistent=False)
        self.geometry = {"stride": folded.stride, "padding": folded.padding, "dilation": folded.dilation}
        self.relu, self.block, self.count_work = relu, block, count_work
        self.layer_name = gate.layer_name
        self.last_masks: torch.Tensor | None = None
        self.last_active_inputs: torch.Tensor | None = None
        self.last_counters: torch.Tensor | None = None

    @classmethod
    def from_runtime(
        cls,
        layer: RuntimeGatedConv2d,
        *,
        relu: bool = False,
        dtype: torch.dtype | None = None,
        block: int = DEFAULT_CHANNEL_BLOCK,
        count_work: bool = False,
    ) -> "RuntimeConvInference":
        """Build from an eval-mode runtime gate (``dtype`` as in :func:`fold_runtime_conv`)."""
        return cls(layer, fold_runtime_conv(layer, dtype), relu=relu, block=block, count_work=count_work)

    def output_masks(self, x: torch.Tensor) -> torch.Tensor:
        """Bool ``[N, C_out]``: the channels the layer keeps for ``x`` (its own mask rule and keep ratio)."""
        gate = self.gate
        if gate.force_open:
            return torch.ones(x.shape[0], gate.out_channels, dtype=torch.bool, device=x.device)
        gate.check_batch(x)
        return gate.masks(gate.runtime_importance(x))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None, in_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        check_conv_input(self.layer_name, x, self.gate.in_channels, self.packed_weight.dtype)
        masks = self.output_masks(x)
        if in_mask is None:
            in_mask = x.abs().amax(dim=(2, 3)) > 0
        result = channel_sparse_conv2d(
            x, PackedWeight(self.packed_weight), masks, in_mask, scale=self.scale, shift=self.shift,
            residual=residual, relu=self.relu, block=self.block, return_counters=self.count_work, **self.geometry,
        )  # fmt: skip
        y, self.last_counters = result if self.count_work else (result, None)
        self.last_masks, self.last_active_inputs = masks, in_mask
        return y
