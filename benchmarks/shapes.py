"""Per-layer convolution shapes of torchvision ResNet-18 and ResNet-50 at 224x224.

The shapes are not typed in by hand: :func:`model_shapes` builds the
torchvision model on the ``meta`` device (no weights, no memory, no download),
runs one ``[1, 3, 224, 224]`` forward with a hook on every ``nn.Conv2d`` and
records ``(C_in, C_out, kernel, stride, padding, dilation, H, W)`` of each call.
The 7x7 stem is dropped (3 input channels: nothing to gate), 3x3 and 1x1 layers
are kept, and identical shapes are merged: a :class:`ConvShape` is named after
the first layer that has it (``"r50.layer2.0.conv2"``) and lists all of them,
so ``count`` says how often the network runs it.

:func:`gated_module` gives the ``gating.ChannelGatedConv2d`` of a shape, which
is what ``gating.accounting`` counts MACs and bytes from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from gating import ChannelGatedConv2d
from kernels import GateSpec, conv_output_size

MODELS = ("r18", "r50")
INPUT_SIZE = 224
KEPT_KERNELS = (1, 3)
QUICK_MIN_COUNT = 3


@dataclass(frozen=True)
class ConvShape:
    """One distinct conv layer shape of a network (groups = 1, square kernel)."""

    name: str
    layers: tuple[str, ...]
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int
    dilation: int
    height: int
    width: int

    @property
    def count(self) -> int:
        """How many layers of the network have this shape."""
        return len(self.layers)

    @property
    def out_height(self) -> int:
        """Output rows ``OH`` (``kernels.conv_output_size``)."""
        return conv_output_size(self.height, self.kernel, self.stride, self.padding, self.dilation)

    @property
    def out_width(self) -> int:
        """Output columns ``OW`` (``kernels.conv_output_size``)."""
        return conv_output_size(self.width, self.kernel, self.stride, self.padding, self.dilation)

    def input_shape(self, batch: int) -> torch.Size:
        return torch.Size((batch, self.in_channels, self.height, self.width))

    def output_shape(self, batch: int) -> torch.Size:
        return torch.Size((batch, self.out_channels, self.out_height, self.out_width))

    def conv_args(self) -> dict[str, int]:
        """``stride``, ``padding`` and ``dilation`` as keyword arguments of a conv call."""
        return {"stride": self.stride, "padding": self.padding, "dilation": self.dilation}

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "layers": list(self.layers),
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel": self.kernel,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "height": self.height,
            "width": self.width,
            "out_height": self.out_height,
            "out_width": self.out_width,
        }


def torchvision_model(model: str) -> nn.Module:
    """The torchvision ResNet named ``model`` (``"r18"`` or ``"r50"``) on the meta device, eval mode."""
    import torchvision

    constructors = {"r18": torchvision.models.resnet18, "r50": torchvision.models.resnet50}
    if model not in constructors:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    with torch.device("meta"):
        net = constructors[model](weights=None)
    return net.eval()


def _single(value: tuple[int, int], what: str, layer: str) -> int:
    """The one int of a square ``(h, w)`` conv parameter of ``layer``; ``ValueError`` if ``h != w``."""
    if value[0] != value[1]:
        raise ValueError(f"{layer}: non-square {what} {value} is not supported")
    return value[0]


@functools.lru_cache(maxsize=None)
def model_shapes(model: str) -> tuple[ConvShape, ...]:
    """Distinct 3x3 and 1x1 conv shapes of ``model`` at 224x224, in execution order."""
    net = torchvision_model(model)
    calls: list[tuple[str, nn.Conv2d, tuple[int, int]]] = []
    handles = [
        module.register_forward_hook(lambda mod, args, out, name=name: calls.append((name, mod, args[0].shape[2:])))
        for name, module in net.named_modules()
        if isinstance(module, nn.Conv2d)
    ]
    with torch.no_grad():
        net(torch.empty(1, 3, INPUT_SIZE, INPUT_SIZE, device="meta"))
    for handle in handles:
        handle.remove()
    merged: dict[tuple[int, ...], list[str]] = {}
    for name, conv, (height, width) in calls:
        kernel = _single(conv.kernel_size, "kernel", name)
        if kernel not in KEPT_KERNELS or conv.groups != 1:
            continue
        key = (
            conv.in_channels,
            conv.out_channels,
            kernel,
            _single(conv.stride, "stride", name),
            _single(conv.padding, "padding", name),
            _single(conv.dilation, "dilation", name),
            height,
            width,
        )
        merged.setdefault(key, []).append(f"{model}.{name}")
    return tuple(ConvShape(names[0], tuple(names), *key) for key, names in merged.items())


def find_shape(layer: str) -> ConvShape:
    """The shape of a layer given by its full name (``"r50.layer3.2.conv2"``: any layer that has it)."""
    for shape in model_shapes(layer.split(".")[0]):
        if layer in shape.layers:
            return shape
    raise KeyError(f"no 3x3 or 1x1 conv layer named {layer!r}")


def select_shapes(models: list[str] | tuple[str, ...], quick: bool) -> list[ConvShape]:
    """Shapes of ``models``; with ``quick`` only those run by >= ``QUICK_MIN_COUNT`` layers.

    The quick subset keeps the shapes that dominate each network (for ResNet-50:
    9 of 22 shapes, every stage, 3x3 and 1x1).
    """
    shapes = [shape for model in models for shape in model_shapes(model)]
    return [shape for shape in shapes if shape.count >= QUICK_MIN_COUNT] if quick else shapes


@functools.lru_cache(maxsize=None)
def gated_module(shape: ConvShape, spec: GateSpec) -> ChannelGatedConv2d:
    """The bfloat16 ``ChannelGatedConv2d`` of ``shape`` with gate settings ``spec``, on CPU.

    For ``gating.accounting``'s counts; cached (``GateSpec`` is hashable).
    """
    return ChannelGatedConv2d(
        shape.in_channels,
        shape.out_channels,
        shape.kernel,
        shape.stride,
        shape.padding,
        shape.dilation,
        spec=spec,
        dtype=torch.bfloat16,
    ).eval()
