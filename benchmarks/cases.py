"""The GPU inputs of one benchmark case and the three implementations run on them.

A case is one conv shape at one batch and gate density, as the layer runs
after BatchNorm folding: beacon inputs (:func:`benchmarks.masks.beacon_case`)
whose gate decisions are the case's blob mask, the weight packed once for the
Triton kernels and in channels_last for cuDNN, and a random per-channel
scale/shift for the Triton epilogue. Everything is :data:`~benchmarks.sweep.DTYPE`
on :data:`DEVICE` (or the device given to :func:`make_case`) except the float32
scale, shift and gate affine. Off CUDA, the "Triton" implementations are the
registered ops' PyTorch references, which is how the checks are tested on CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import kernels

from .counting import case_mask
from .masks import BeaconCase, beacon_case
from .recorded import RecordedLayer
from .shapes import ConvShape
from .sweep import DTYPE, Sweep, derived_seed

__all__ = ["DEVICE", "ConvCase", "make_case", "recorded_case"]

DEVICE = torch.device("cuda")
"""Where the timing cases live."""


@dataclass(frozen=True)
class ConvCase:
    """One benchmark case on the GPU: beacon inputs, packed weight, folded-BN scale/shift.

    Attributes:
        shape, batch, density: what the case is.
        inputs: ``x`` channels_last ``[N, C_in, H, W]``, weight, gate affine
            and the intended decisions (:class:`benchmarks.masks.BeaconCase`).
        packed: the weight packed for the Triton kernels.
        weight_cl: the weight ``[C_out, C_in, k, k]`` in channels_last, for cuDNN.
        scale, shift: float32 ``[C_out]`` epilogue of the Triton kernels.
        spec: the gate settings (:class:`kernels.GateSpec`).
        decisions_given: the gated kernel is handed ``inputs.decisions``
            (recorded real decisions) instead of computing its own.
    """

    shape: ConvShape
    batch: int
    density: float
    inputs: BeaconCase
    packed: kernels.PackedWeight
    weight_cl: torch.Tensor
    scale: torch.Tensor
    shift: torch.Tensor
    spec: kernels.GateSpec
    decisions_given: bool = False

    def cudnn(self) -> torch.Tensor:
        """``F.conv2d`` without bias or epilogue: output ``[N, C_out, OH, OW]``."""
        return F.conv2d(self.inputs.x, self.weight_cl, None, **self.shape.conv_args())

    def triton_dense(self) -> torch.Tensor:
        """``kernels.conv2d`` with the scale/shift epilogue: output ``[N, C_out, OH, OW]``."""
        return kernels.conv2d(
            self.inputs.x, self.packed, scale=self.scale, shift=self.shift, **self.shape.conv_args()
        )

    def triton_gated(self, return_stats: bool = False) -> tuple:
        """``kernels.gated_conv2d``: ``(out, decisions)``, plus the kernel's counters with ``return_stats``."""
        return kernels.gated_conv2d(
            self.inputs.x, self.packed, self.inputs.gate_scale, self.inputs.gate_shift,
            scale=self.scale, shift=self.shift, return_stats=return_stats, **self.spec.to_dict(),
            decisions=self.inputs.decisions if self.decisions_given else None, **self.shape.conv_args(),
        )  # fmt: skip


def make_case(
    sweep: Sweep, shape: ConvShape, batch: int, density: float, purpose: str, device: torch.device | str = DEVICE
) -> ConvCase:
    """A case on ``device`` (default :data:`DEVICE`); ``purpose`` salts the seed (fresh inputs per check)."""
    mask = case_mask(sweep, shape, batch, density).to(device)
    seed = derived_seed(sweep, purpose, shape.name, batch, density)
    inputs = beacon_case(shape, mask, dtype=DTYPE, seed=seed, **sweep.spec.to_dict())
    return _case(shape, batch, density, inputs, seed, sweep.spec, device)


def recorded_case(
    sweep: Sweep, layer: RecordedLayer, batch: int, purpose: str, device: torch.device | str = DEVICE
) -> ConvCase:
    """A case of a recorded layer: its first ``batch`` images' decisions, handed to the gated kernel.

    Random input and weight (the decisions are given, so they need not come
    from them), the layer's own gate settings, ``density`` the decisions'
    measured one.
    """
    shape = layer.shape()
    decisions = layer.decisions[:batch].to(device).contiguous(memory_format=torch.channels_last)
    seed = derived_seed(sweep, purpose, shape.name, batch, "real")
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(shape.input_shape(batch), generator=gen, device=device).to(DTYPE)
    fan_in = shape.in_channels * shape.kernel**2
    weight = torch.randn(shape.out_channels, shape.in_channels, shape.kernel, shape.kernel, generator=gen,
                         device=device) / math.sqrt(fan_in)  # fmt: skip
    ones = torch.ones(shape.out_channels, device=device)
    inputs = BeaconCase(x.contiguous(memory_format=torch.channels_last), weight.to(DTYPE), ones, 0 * ones, decisions,
                        beacon=0.0)  # fmt: skip
    density = float(decisions.float().mean()) if decisions.numel() else 0.0
    return _case(shape, batch, density, inputs, seed, layer.spec, device, decisions_given=True)


def _case(
    shape: ConvShape, batch: int, density: float, inputs: BeaconCase, seed: int, spec: kernels.GateSpec,
    device: torch.device | str, decisions_given: bool = False,
) -> ConvCase:  # fmt: skip
    """The case of ``inputs`` with the weight packed and a random folded-BN scale/shift seeded by ``seed + 1``."""
    gen = torch.Generator(device=device).manual_seed(seed + 1)
    scale = 0.5 + torch.rand(shape.out_channels, generator=gen, device=device)
    shift = torch.rand(shape.out_channels, generator=gen, device=device) - 0.5
    return ConvCase(
        shape, batch, density, inputs, kernels.pack_weight(inputs.weight),
        inputs.weight.contiguous(memory_format=torch.channels_last), scale, shift, spec, decisions_given,
    )  # fmt: skip
