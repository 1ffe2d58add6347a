"""Setting gate thresholds from data: start a student at its budget, and meet the budget exactly at the end.

Both work on a ``GatedModel`` (duck-typed: ``gated_layers()``, ``open_gates()``,
``uniform_density()``, ``report()``) and change only gate thresholds and gate
BatchNorm statistics, never a weight. ``GatedModel.calibrate`` and
``GatedModel.fit_budget`` are these functions as methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from kernels.partition import expand_groups

from .gates import ChannelGatedConv2d
from .modes import train_mode

__all__ = ["calibrate", "fit_budget"]


@torch.no_grad()
def calibrate(model: nn.Module, inputs: torch.Tensor, target_flops_ratio: float) -> float:
    """Set the gate statistics and thresholds from data so the model starts near a budget.

    ``inputs`` is a representative batch ``[N, C, H, W]``. First every gate
    BatchNorm's running statistics are set to the cumulative average over
    ``inputs`` (gates open). Then, in one eval-mode forward, layer by layer
    in forward order (so each layer sees the inputs its calibrated
    predecessors give it), every
    threshold of gate group ``j`` is set to the ``1 - density`` quantile of
    that group's eval-mode gate statistic, where ``density`` is
    ``model.uniform_density(target_flops_ratio)``. Returns that density. The
    model's train/eval mode is restored.

    Raises:
        ValueError: ``target_flops_ratio`` outside (0, 1].
    """
    if not 0.0 < target_flops_ratio <= 1.0:
        raise ValueError(f"target_flops_ratio must be in (0, 1], got {target_flops_ratio!r}")
    layers = list(model.gated_layers().values())
    momenta = [layer.gate_bn.momentum for layer in layers]
    with train_mode(model, True):
        for layer in layers:
            layer.gate_bn.reset_running_stats()
            layer.gate_bn.momentum = None  # cumulative average
        with model.open_gates():
            model(inputs)
            density = model.uniform_density(target_flops_ratio)
        for layer, momentum in zip(layers, momenta):
            layer.gate_bn.momentum = momentum
        model.eval()
        _set_quantile_thresholds(model, layers, inputs, density)
    return density


def _set_quantile_thresholds(
    model: nn.Module, layers: list[ChannelGatedConv2d], inputs: torch.Tensor, density: float
) -> None:
    """One eval-mode forward of ``inputs`` that sets each layer's thresholds just before the layer runs.

    A forward pre-hook computes the layer's gate statistic at ``Δ = 0`` from
    the input it receives (produced by the layers before it, already
    calibrated in this same pass) and sets every threshold of gate group
    ``j`` to the ``1 - density`` quantile of group ``j``'s statistic; the
    layer then runs with them. Equal to calibrating the layers one full
    forward each, in forward order, at the cost of one forward.
    """

    def hook(layer: ChannelGatedConv2d, args: tuple) -> None:
        layer.threshold.zero_()
        statistic = layer.gate_statistic(layer.partial_sums(args[0])[0])  # [N, G, OH, OW] at Δ = 0
        per_group = statistic.transpose(0, 1).flatten(1).float()
        if density < 1.0:
            thresholds = torch.quantile(per_group, 1.0 - density, dim=1)
        else:  # every decision on: below the smallest statistic
            thresholds = per_group.min(dim=1).values - 1.0
        per_channel = expand_groups(thresholds.view(1, -1, 1, 1), layer.out_channels, layer.gate_group)
        layer.threshold.copy_(per_channel.view(-1))

    handles = [layer.register_forward_pre_hook(hook) for layer in layers]
    try:
        model(inputs)
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fit_budget(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    target_flops_ratio: float,
    tolerance: float = 2e-3,
    max_steps: int = 24,
) -> float:
    """Shift every threshold by one common offset so the eval-mode MAC ratio over ``batches`` meets a budget.

    The budget loss holds the executed ratio only approximately (the
    distillation losses pull towards more compute, and train-mode gate
    statistics differ from eval-mode ones). This finds, by bracketing and
    bisection, the offset ``δ`` added to every threshold ``Δ_c`` (in the
    gate statistic's normalised units, so one offset suits every layer and
    keeps the allocation between layers that training learned) whose
    eval-mode executed/dense MAC ratio over ``batches`` is at most
    ``target_flops_ratio`` and within ``tolerance`` of it, or the closest
    one not above it after ``max_steps`` bisection steps. The thresholds are
    left at ``Δ + δ``; returns ``δ`` (0.0 when already within tolerance).
    The model's train/eval mode is restored.

    Args:
        model: the gated model.
        batches: input tensors ``[N, C, H, W]`` on the model's device (held
            in memory: a few batches).
        target_flops_ratio: the budget, in (0, 1].
        tolerance: how far below the budget the ratio may end (> 0).
        max_steps: bisection steps (>= 1).

    Raises:
        ValueError: a budget outside (0, 1], a bad tolerance or step count,
            or no batches.
    """
    if target_flops_ratio is None or not 0.0 < target_flops_ratio <= 1.0:
        raise ValueError(f"fit_budget: target_flops_ratio must be in (0, 1], got {target_flops_ratio!r}")
    if not tolerance > 0 or max_steps < 1:
        raise ValueError(f"fit_budget: needs tolerance > 0 and max_steps >= 1, got {tolerance!r}, {max_steps!r}")
    batches = list(batches)
    if not batches:
        raise ValueError("fit_budget: no batches given")
    layers = list(model.gated_layers().values())
    trained = [layer.threshold.detach().clone() for layer in layers]

    def ratio_at(offset: float) -> float:
        for layer, threshold in zip(layers, trained):
            layer.threshold.copy_(threshold + offset)
        dense = executed = 0
        for inputs in batches:
            model(inputs)
            report = model.report()
            dense, executed = dense + report.macs_dense, executed + report.macs_executed
        return executed / dense

    with train_mode(model, False):
        offset = _bisect_offset(ratio_at, target_flops_ratio, tolerance, max_steps)
        for layer, threshold in zip(layers, trained):
            layer.threshold.copy_(threshold + offset)
    return offset


_BRACKET_DOUBLINGS = 16
"""Doublings of the first offset step (0.25) at most while bracketing: offsets up to +-16384."""


def _bisect_offset(ratio_at: Callable[[float], float], target: float, tolerance: float, max_steps: int) -> float:
    """Offset nearest 0 whose ratio is in ``[target - tolerance, target]`` (see :func:`fit_budget`).

    ``ratio_at`` is non-increasing in the offset. The bracket grows by
    doubling from +-0.25; bisection keeps one end feasible (ratio <= target)
    and returns it once its ratio is within tolerance or the steps run out.
    """
    ratio = ratio_at(0.0)
    if target - tolerance <= ratio <= target:
        return 0.0
    raise_thresholds = ratio > target
    step = 0.25 if raise_thresholds else -0.25
    near, far = 0.0, step
    for _ in range(_BRACKET_DOUBLINGS):
        if (ratio_at(far) <= target) == raise_thresholds:
            break
        near, far = far, far * 2
    feasible, infeasible = (far, near) if raise_thresholds else (near, far)
    for _ in range(max_steps):
        middle = 0.5 * (feasible + infeasible)
        ratio = ratio_at(middle)
        if ratio <= target:
            feasible = middle
            if ratio >= target - tolerance:
                break
        else:
            infeasible = middle
    return feasible
