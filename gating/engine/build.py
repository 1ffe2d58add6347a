"""``build``: a trained (gated) model turned into an inference model (``docs/engine.md``).

The steps: trace the network with ``torch.fx`` (:mod:`gating.engine.trace`),
find the conv -> BatchNorm -> residual add -> ReLU chains
(:mod:`gating.engine.fuse`), replace each by one registered-op module with
the BatchNorm folded and the add and ReLU fused (:mod:`gating.engine.convert`),
cast what stays PyTorch to the build dtype, and wrap the result in an
:class:`~gating.engine.inference.InferenceModel`.
"""

from __future__ import annotations

import warnings

import torch
import torch.fx as fx
from torch import nn

from kernels import TRITON_AVAILABLE

from ..gates import ChannelGatedConv2d
from .convert import INFERENCE_MODULES, convert
from .dense import DENSE_BACKENDS
from .inference import InferenceModel
from .trace import input_node, trace_network

__all__ = ["BUILD_DTYPES", "build"]

BUILD_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
"""The dtypes a model can be built in (float64 on CPU only when Triton runs the CUDA ops)."""


def build(
    model: nn.Module,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    fuse_residual: bool = True,
    cuda_graph: bool = False,
    dense: str = "fastest",
) -> InferenceModel:
    """Build ``model`` (a ``GatedModel`` or a plain ``nn.Module``) for inference; ``model`` is not changed.

    Args:
        model: a ``GatedModel`` (partial-sum or runtime gates, statically
            pruned or not) or any ``nn.Module`` whose forward takes one
            tensor and that ``torch.fx`` can trace. Its eval-mode function is
            what the result computes: BatchNorms use their running statistics,
            gates their current thresholds / keep ratios (a snapshot: rebuild
            after changing them).
        dtype: float16, bfloat16, float32 or float64; default the model's
            parameter dtype. Folding runs in float32 (float64 when the model
            or ``dtype`` is float64) and is rounded once to ``dtype``.
        device: where the result runs; default the model's device.
        fuse_residual: fuse the add of ``relu(bn(conv(x)) + identity)`` into
            the convolution's epilogue (its two operands must have the same
            shape, as in residual blocks).
        dense: where dense convolutions run: ``"fastest"`` (per input shape,
            the faster of ``gating::conv2d`` and cuDNN, timed once on the
            first call on CUDA; the op elsewhere), ``"kernel"`` or ``"cudnn"``
            (:data:`~gating.engine.dense.DENSE_BACKENDS`).
        cuda_graph: replay a CUDA graph captured for the first input shape
            (recaptured on a new shape; :mod:`gating.engine.cuda_graph`).
            Needs a CUDA ``device``.

    Returns:
        An :class:`InferenceModel` whose ``forward(x)`` equals ``model.eval()(x)``
        up to rounding and whose ``last_decisions`` hold the gated layers'
        decisions.

    Warns (``warnings.warn``, one line each): a layer that runs as its
    PyTorch module instead of a registered op, naming it and why; a
    ``GatedModel`` whose partial-sum gates were never calibrated or trained.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, ``dtype`` not one of
            :data:`BUILD_DTYPES`, a non-bool flag.
        ValueError: ``cuda_graph`` without a CUDA device, a model without
            floating parameters and no ``dtype``/``device``, a forward that
            does not take exactly one input.
        NotImplementedError: ``torch.fx`` cannot trace the model (naming
            its class and why); float64 on CUDA with the Triton kernels.
    """
    dtype, device = _check_arguments(model, dtype, device, fuse_residual, cuda_graph)
    if dense not in DENSE_BACKENDS:
        raise ValueError(f"gating.engine.build: dense must be one of {DENSE_BACKENDS}, got {dense!r}")
    _warn_uncalibrated(model)
    network = trace_network(model).to(device)
    in_channels = _input_channels(network)
    notes = convert(network, dtype, _fold_dtype(model, dtype), fuse_residual=fuse_residual, dense=dense)
    _cast_unconverted(network, dtype)
    network.requires_grad_(False)
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return InferenceModel(network, dtype=dtype, device=device, in_channels=in_channels, cuda_graph=cuda_graph)


def _first_floating(model: nn.Module) -> torch.Tensor | None:
    """The model's first floating parameter or buffer, or ``None``."""
    tensors = (*model.parameters(), *model.buffers())
    return next((t for t in tensors if t.is_floating_point()), None)


def _check_arguments(
    model: object, dtype: object, device: object, fuse_residual: object, cuda_graph: object
) -> tuple[torch.dtype, torch.device]:
    """The build's ``(dtype, device)`` after checking every argument (module docstring of :func:`build`)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"gating.engine.build: model must be an nn.Module, got {type(model).__name__}")
    for flag, value in (("fuse_residual", fuse_residual), ("cuda_graph", cuda_graph)):
        if not isinstance(value, bool):
            raise TypeError(f"gating.engine.build: {flag} must be a bool, got {value!r}")
    reference = _first_floating(model)
    if reference is None and (dtype is None or device is None):
        raise ValueError(
            f"gating.engine.build: {type(model).__name__} has no floating parameters; give dtype and device"
        )
    dtype = reference.dtype if dtype is None else dtype
    if dtype not in BUILD_DTYPES:
        raise TypeError(f"gating.engine.build: dtype must be one of {BUILD_DTYPES}, got {dtype!r}")
    device = _normalized_device(reference.device if device is None else torch.device(device))
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"gating.engine.build: cuda_graph=True needs a CUDA device, got device {device}")
    if device.type == "cuda" and dtype == torch.float64 and TRITON_AVAILABLE:
        raise NotImplementedError(
            "gating.engine.build: float64 runs on CPU only (the Triton kernels take float16, bfloat16, float32)"
        )
    return dtype, device


def _normalized_device(device: torch.device) -> torch.device:
    """``device`` with its index made explicit for CUDA (``cuda`` -> ``cuda:<current>``), as tensors report it."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _fold_dtype(model: nn.Module, dtype: torch.dtype) -> torch.dtype:
    """float64 when the model or the build is float64, else float32: the precision folding runs in."""
    reference = _first_floating(model)
    source = dtype if reference is None else reference.dtype
    return torch.promote_types(torch.promote_types(source, dtype), torch.float32)


def _input_channels(network: fx.GraphModule) -> int | None:
    """``C_in`` read from the first module that reads the input and has ``in_channels``, else ``None``."""
    for user in input_node(network).users:
        if user.op == "call_module":
            channels = getattr(network.get_submodule(str(user.target)), "in_channels", None)
            if isinstance(channels, int):
                return channels
    return None


@torch.no_grad()
def _cast_unconverted(network: nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating tensors of the modules left as PyTorch to ``dtype`` (4-D weights channels_last).

    Converted modules are skipped: their packed weights are in ``dtype`` and
    their folded scale/shift stay in float32 (or float64), as the ops apply them.
    """
    converted = {id(m) for outer in network.modules() if isinstance(outer, INFERENCE_MODULES) for m in outer.modules()}
    for module in network.modules():
        if id(module) in converted:
            continue
        for param in module.parameters(recurse=False):
            param.data = _cast(param.data, dtype)
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, _cast(buffer, dtype))


def _cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` in ``dtype`` if floating (channels_last if 4-D), else unchanged."""
    if not t.is_floating_point():
        return t
    t = t.to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if t.dim() == 4 else t


def _warn_uncalibrated(model: nn.Module) -> None:
    """One warning when partial-sum gates still hold their initial thresholds and gate BatchNorm statistics."""
    layers = [m for m in model.modules() if isinstance(m, ChannelGatedConv2d)]
    config = getattr(model, "config", None)
    threshold_init = float(getattr(config, "threshold_init", 0.0))
    fresh = [layer.layer_name for layer in layers if _never_calibrated(layer, threshold_init)]
    if fresh:
        warnings.warn(
            f"gating.engine: {len(fresh)} of {len(layers)} partial-sum gated layers were never calibrated or "
            f"trained (thresholds at threshold_init={threshold_init}, gate BatchNorm statistics at mean 0 / var 1), "
            f"e.g. {fresh[0]!r}: their decisions are arbitrary; run GatedModel.calibrate or train the gates first",
            stacklevel=3,
        )


def _never_calibrated(layer: ChannelGatedConv2d, threshold_init: float) -> bool:
    """Whether ``layer``'s thresholds and gate BatchNorm statistics are exactly their initial values."""
    bn = layer.gate_bn
    if bn.running_mean is None or bn.running_var is None or bn.num_batches_tracked is None:
        return False
    return (
        int(bn.num_batches_tracked) == 0
        and bool((bn.running_mean == 0).all() and (bn.running_var == 1).all())
        and bool((layer.threshold == threshold_init).all())
    )
