"""``InferenceModel``: the built network, its input contract and the decisions of its last forward.

The network is the fx ``GraphModule`` the build produced (converted chains as
``DenseConvInference`` / ``GatedConvInference`` / ``RuntimeConvInference``,
the rest as the model's own eval-mode modules, every tensor in the build
dtype and on the build device). ``forward`` refuses an input it was not
built for instead of casting it, converts it to channels_last (the layout
the kernels read) and runs the network without autograd, through a CUDA
graph when built with ``cuda_graph=True``.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

from ..gates import ChannelGatedConv2d, RuntimeGatedConv2d
from ..ops import GatedConvInference, RuntimeConvInference
from .cuda_graph import CudaGraphRunner

__all__ = ["InferenceModel"]

_DECISION_LAYERS = (GatedConvInference, ChannelGatedConv2d)
_MASK_LAYERS = (RuntimeConvInference, RuntimeGatedConv2d)


class InferenceModel(nn.Module):
    """A model built for inference by :func:`gating.engine.build`; call it like the eval-mode model.

    ``forward(x)``: ``x`` ``[N, C_in, H, W]`` with exactly the build's dtype
    and device and ``in_channels`` channels (when the build could read them
    from the first layer); ``ValueError`` for another rank, channel count or
    device, ``TypeError`` for a non-tensor or another dtype, each naming what
    was expected and what was given. Returns what the model returns, in the
    build dtype.

    The dtype and device are fixed at build time: build again for another
    (``.to()`` would leave ``dtype``/``device`` and the packed weights apart).

    Attributes:
        network: the built ``torch.fx.GraphModule``.
        dtype, device: what inputs must have.
        in_channels: the input channels ``C_in`` (``None`` if unknown).
        last_decisions: per gated layer (by its name in ``GatedModel.gated_names``),
            what it decided in the last forward: bool ``[N, G, OH, OW]`` for a
            partial-sum gate (``docs/design.md#decisions-layout``), bool
            ``[N, C_out]`` kept channels for a runtime gate (its ``last_masks``).
            Empty before the first forward. With ``cuda_graph`` these are the
            graph's static tensors, overwritten by the next forward.
    """

    def __init__(
        self,
        network: fx.GraphModule,
        *,
        dtype: torch.dtype,
        device: torch.device,
        in_channels: int | None,
        cuda_graph: bool,
    ) -> None:
        super().__init__()
        self.network = network
        self.dtype, self.device, self.in_channels = dtype, device, in_channels
        self.cuda_graph = cuda_graph
        self._runner = CudaGraphRunner(network) if cuda_graph else None
        self._gated = _gated_layers(network)
        self.last_decisions: dict[str, torch.Tensor] = {}

    def check_input(self, x: object) -> None:
        """Raise ``TypeError`` / ``ValueError`` naming expected vs got unless ``x`` is an input this build takes."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"InferenceModel: expected a torch.Tensor input, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"InferenceModel: expected a 4-D input [N, C, H, W], got shape {tuple(x.shape)}")
        if self.in_channels is not None and x.shape[1] != self.in_channels:
            raise ValueError(
                f"InferenceModel: expected {self.in_channels} input channels, got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        if x.dtype != self.dtype:
            raise TypeError(
                f"InferenceModel: built for {self.dtype} inputs, got {x.dtype} (no implicit cast: convert the "
                "input or build with another dtype)"
            )
        if x.device != self.device:
            raise ValueError(f"InferenceModel: built for inputs on {self.device}, got one on {x.device}")

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = x.contiguous(memory_format=torch.channels_last)
        out = self._runner(x) if self._runner is not None else self.network(x)
        self.last_decisions = {name: _decisions(module) for name, module in self._gated.items()}
        return out

    def extra_repr(self) -> str:
        return (
            f"dtype={self.dtype}, device={self.device}, in_channels={self.in_channels}, "
            f"cuda_graph={self.cuda_graph}, gated_layers={len(self._gated)}"
        )


def _gated_layers(network: nn.Module) -> dict[str, nn.Module]:
    """The modules that record decisions, by name, outermost only (a runtime inference module's ``gate`` is not)."""
    layers: dict[str, nn.Module] = {}
    for name, module in network.named_modules():
        inside = any(name.startswith(outer + ".") for outer in layers)
        if isinstance(module, (*_DECISION_LAYERS, *_MASK_LAYERS)) and not inside:
            layers[name] = module
    return layers


def _decisions(module: nn.Module) -> torch.Tensor:
    """What a gated layer decided in its last call: ``last_decisions``, or ``last_masks`` for a runtime gate."""
    return module.last_decisions if isinstance(module, _DECISION_LAYERS) else module.last_masks
