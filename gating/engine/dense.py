"""Dense convolutions at inference: a BatchNorm folded into the weights, run through ``gating::conv2d``.

:func:`fold_conv_batchnorm` is the exact eval-mode folding of
``bn(conv(x))`` into one convolution: with ``scale = gamma / sqrt(running_var
+ eps)``, ``W' = W * scale`` (per output channel) and ``b' = beta + (b -
running_mean) * scale``, computed in float64 whatever the layer's dtype and
rounded once to the dtype asked for.

:class:`DenseConvInference` runs a folded convolution (groups = 1, zero
padding) with the epilogue ``relu(conv(x, W') + b' + residual)`` on one of
:data:`DENSE_BACKENDS`: the registered op ``gating::conv2d`` (epilogue
fused), cuDNN (``F.conv2d``, then the epilogue as PyTorch ops), or whichever
of the two measured faster for the input's shape (``"fastest"``: timed once
per shape with CUDA events on the first call, which the CUDA-graph warm-up
makes before capture; on a CPU it is the op); :func:`folded_conv2d` is the plain
``nn.Conv2d`` form for a convolution the op cannot take (grouped or
depthwise, another padding mode), whose ReLU and residual add stay PyTorch
ops.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from kernels import PackedWeight, conv2d, pack_weight

from ..ops import batchnorm_affine, conv_bias

__all__ = ["DENSE_BACKENDS", "DenseConvInference", "fold_conv_batchnorm", "folded_conv2d"]

DENSE_BACKENDS = ("fastest", "kernel", "cudnn")
"""Where a dense convolution runs: the faster of the two for each input shape, ``gating::conv2d``, or cuDNN."""

TIMING_REPS = 5
"""Calls timed per backend when ``"fastest"`` chooses (after one warm-up call each)."""


@torch.no_grad()
def fold_conv_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight, bias)`` in float64 of ``bn(conv(x))`` (eval statistics) as one convolution.

    ``weight`` is ``[C_out, C_in / groups, kh, kw]``, ``bias`` ``[C_out]``
    (``None`` when there is neither a conv bias nor a BatchNorm); callers
    round them once to the dtype they run in. ``bn`` must track running
    statistics (the caller checks :func:`~gating.engine.fuse.foldable_batchnorm`).
    """
    weight = conv.weight.detach().double()
    if bn is None:
        return weight, None if conv.bias is None else conv.bias.detach().double()
    scale, shift = batchnorm_affine(conv_bias(conv.bias, conv.out_channels, weight), bn)
    return weight * scale[:, None, None, None], shift


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
    ``packed_weight`` (``[kh, kw, C_in, C_out]``, :func:`kernels.pack_weight`,
    for the op) / ``weight`` (``[C_out, C_in, kh, kw]`` channels_last, for
    cuDNN) and ``shift`` are non-persistent buffers; ``backend`` is one of
    :data:`DENSE_BACKENDS`, and ``choices`` records what ``"fastest"`` chose
    per ``(shape, dtype, with residual)``.
    """

    def __init__(
        self, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, dtype: torch.dtype, *, relu: bool, name: str,
        backend: str = "fastest",
    ) -> None:
        super().__init__()
        if backend not in DENSE_BACKENDS:
            raise ValueError(f"DenseConvInference: backend must be one of {DENSE_BACKENDS}, got {backend!r}")
        weight, bias = fold_conv_batchnorm(conv, bn)
        shift = None if bias is None else bias.to(torch.promote_types(dtype, torch.float32))
        kernel = pack_weight(weight.to(dtype)).data if backend != "cudnn" else None
        cudnn = weight.to(dtype).contiguous(memory_format=torch.channels_last) if backend != "kernel" else None
        self.register_buffer("packed_weight", kernel, persistent=False)
        self.register_buffer("weight", cudnn, persistent=False)
        self.register_buffer("shift", shift, persistent=False)
        self.backend = backend
        self.choices: dict[tuple[tuple[int, ...], torch.dtype, bool], str] = {}
        self.geometry = {"stride": tuple(conv.stride), "padding": tuple(conv.padding), "dilation": tuple(conv.dilation)}
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.relu = relu
        self.layer_name = name

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        run = self._kernel if self._backend_for(x, residual) == "kernel" else self._cudnn
        return run(x, residual)

    def _kernel(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        return conv2d(
            x, PackedWeight(self.packed_weight), shift=self.shift, residual=residual, relu=self.relu, **self.geometry
        )

    def _cudnn(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """``F.conv2d`` (cuDNN on CUDA), then shift, residual add and ReLU as separate PyTorch ops in x's dtype."""
        y = F.conv2d(x, self.weight, None, **self.geometry)
        if self.shift is not None:
            y = y + self.shift.to(y.dtype)[None, :, None, None]
        if residual is not None:
            y = y + residual
        return torch.relu_(y) if self.relu else y

    def _backend_for(self, x: torch.Tensor, residual: torch.Tensor | None) -> str:
        """``backend``, or for ``"fastest"`` the faster one on this input's shape (the op off CUDA)."""
        if self.backend != "fastest":
            return self.backend
        if x.device.type != "cuda":
            return "kernel"
        key = (tuple(x.shape), x.dtype, residual is not None)
        if key not in self.choices:
            times = {name: _cuda_ms(lambda run=run: run(x, residual))
                     for name, run in (("kernel", self._kernel), ("cudnn", self._cudnn))}
            self.choices[key] = min(times, key=times.get)
        return self.choices[key]

    def extra_repr(self) -> str:
        return (f"{self.layer_name!r}, {self.in_channels}, {self.out_channels}, relu={self.relu}, {self.geometry}, "
                f"backend={self.backend!r}")


def _cuda_ms(run: Callable[[], torch.Tensor]) -> float:
    """Mean milliseconds of ``run`` over :data:`TIMING_REPS` calls after one warm-up, by CUDA events."""
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(TIMING_REPS):
        run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / TIMING_REPS
