"""Re-estimate BatchNorm running statistics of a trained network (no parameter changes)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["recalibrate_batchnorm"]


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    batches: Iterable[Tensor],
    keep: Iterable[nn.Module] = (),
) -> int:
    """Recompute the running statistics of ``model``'s BatchNorms from ``batches``.

    The model runs in eval mode except its BatchNorm layers (those that track
    running statistics and are not in ``keep``), whose statistics are reset
    and replaced by the average over ``batches`` of each batch's mean and
    unbiased variance (``momentum=None``). Gated layers therefore decide as at inference, with
    the gate statistics in ``keep`` left as trained, so the re-estimated
    statistics describe the activations the gated network really produces.
    Only BatchNorm buffers (``running_mean``, ``running_var``,
    ``num_batches_tracked``) change; every parameter stays bit-identical.
    Momenta and train/eval modes are restored.

    Args:
        model: the network; its first parameter's device receives the inputs.
        batches: input tensors ``[N, C, H, W]`` (at least one).
        keep: BatchNorm modules whose statistics must not change (e.g. the
            gate statistics of ``GatedModel.gate_batchnorms()``).

    Returns:
        The number of input samples the statistics were computed over.

    Raises:
        ValueError: ``batches`` is empty.
    """
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("recalibrate_batchnorm: no batches given")
    kept = {id(module) for module in keep}
    norms = [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and id(module) not in kept
    ]
    modes = [(module, module.training) for module in model.modules()]
    momenta = [module.momentum for module in norms]
    device = next(model.parameters()).device
    seen = 0
    try:
        model.eval()
        for module in norms:
            module.reset_running_stats()
            module.momentum = None  # cumulative average over all batches
            module.train()
        for inputs in itertools.chain([first], iterator):
            model(inputs.to(device))
            seen += len(inputs)
    finally:
        for module, momentum in zip(norms, momenta):
            module.momentum = momentum
        for module, training in modes:
            module.training = training
    return seen
