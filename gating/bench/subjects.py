"""The models a bench measures: the dense baseline and the gated (optionally pruned) model, on seeded inputs.

:func:`prepare` builds one :class:`Subject` per model name (or the saved
model): the model as given (random initialisation for a name, 1000 classes),
optionally pruned by L1 to ``prune_params`` of its parameters, gated
(``GatedModel``) and brought to the MAC budget on a seeded calibration batch:
partial-sum gates by ``calibrate`` then ``fit_budget``, runtime gates by
``set_budget``. A saved ``GatedModel`` keeps its gates unless a budget is
given (then only ``fit_budget`` / ``set_budget`` run, which keep the trained
thresholds' differences).
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .. import io
from ..config import GateConfig
from ..model import GatedModel
from .config import DEFAULT_TARGET_FLOPS, BenchConfig

__all__ = ["BenchSetupError", "OpenGates", "Subject", "bench_input", "calibration_input", "prepare"]


class BenchSetupError(ValueError):
    """A setting the model cannot take (a ``--kind`` against a saved ``GatedModel``'s, a prune budget it cannot
    reach, a gate configuration that does not fit it), found before anything is measured."""


class OpenGates(nn.Module):
    """A ``GatedModel`` run with every gate forced open: the dense network it wraps (the baseline of a saved one).

    ``forward(x)``: ``x`` as the model takes; returns the model's output.
    """

    def __init__(self, gated: GatedModel) -> None:
        super().__init__()
        self.gated = gated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.gated.open_gates():
            return self.gated(x)


@dataclass
class Subject:
    """One benched model: its name, dense baseline, gated model and how the gates were set.

    ``dense`` and ``gated`` are in float32 on the bench device, in eval mode;
    ``dense`` is the model before pruning and gating (a saved ``GatedModel``:
    :class:`OpenGates` of it before pruning). ``setup`` records, as JSON
    values, the gate kind, the budget, what calibration set, and pruning.
    """

    name: str
    dense: nn.Module
    gated: GatedModel
    in_channels: int
    setup: dict[str, Any]


def bench_input(batch: int, channels: int, image_size: int, seed: int) -> torch.Tensor:
    """Float32 ``[batch, channels, image_size, image_size]`` standard normal images on CPU, from a generator
    seeded with ``seed + 1``; a smaller batch is the first images of a larger one."""
    generator = torch.Generator().manual_seed(seed + 1)
    return torch.randn(batch, channels, image_size, image_size, generator=generator)


def calibration_input(config: BenchConfig, channels: int) -> torch.Tensor:
    """The calibration batch: float32 ``[calibration_images, channels, S, S]`` from a generator seeded with
    ``seed`` (so never the measured images), on CPU."""
    generator = torch.Generator().manual_seed(config.seed)
    size = config.image_size
    return torch.randn(config.calibration_images, channels, size, size, generator=generator)


def _first_conv_channels(model: nn.Module) -> int:
    conv = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if conv is None:
        raise BenchSetupError(f"{type(model).__name__} has no convolution to bench")
    return conv.in_channels


def prepare(config: BenchConfig, name: str | None) -> Subject:
    """The :class:`Subject` of model ``name`` (``None``: ``config.saved``), on ``config.device``.

    Raises:
        BenchSetupError: see the class.
        gating.io.ModelFileError: an unusable saved model.
    """
    torch.manual_seed(config.seed)
    if name is None:
        name, model = config.saved.name, io.load(config.saved)
    else:
        model = io.build(name, num_classes=1000)
    device = torch.device(config.device)
    model = model.to(device).eval()
    channels = _first_conv_channels(model)
    calibration = calibration_input(config, channels).to(device)
    dense = OpenGates(copy.deepcopy(model)) if isinstance(model, GatedModel) else copy.deepcopy(model)
    setup: dict[str, Any] = {"pruning": _prune(model, config, channels)}
    if isinstance(model, GatedModel):
        gated = model
        if config.kind is not None and config.kind != gated.config.kind:
            raise BenchSetupError(f"{config.saved} holds {gated.config.kind!r} gates, not {config.kind!r} "
                                  "(leave --kind out for a saved gated model)")
        setup |= _refit(gated, calibration, config.target_flops)
    else:
        kind = config.kind or "partial_sum"
        target = DEFAULT_TARGET_FLOPS if config.target_flops is None else config.target_flops
        try:
            gate = GateConfig(kind=kind, target_flops_ratio=target, base_fraction=config.base_fraction)
            gated = GatedModel(model, gate, inplace=True)
        except ValueError as error:
            raise BenchSetupError(f"{name}: {error}") from None
        setup |= _calibrate(gated, calibration, target)
        setup |= _budget_reached(gated, calibration, target, name)
    return Subject(name, dense.eval(), gated.eval(), channels, setup)


def _prune(model: nn.Module, config: BenchConfig, channels: int) -> dict[str, Any] | None:
    """L1-prune ``model`` in place to ``config.prune_params`` of its parameters; what changed, or ``None``."""
    if config.prune_params is None:
        return None
    from ..prune import PruneConfig, TraceError, prune

    example = torch.zeros(1, channels, config.image_size, config.image_size, device=next(model.parameters()).device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # rounding notes; the sizes reached are recorded
            result = prune(model, example, PruneConfig(criterion="l1", params=config.prune_params))
    except (TraceError, ValueError) as error:
        raise BenchSetupError(f"pruning to {config.prune_params} of the parameters: {error}") from None
    return {"criterion": "l1", "params": config.prune_params,
            "params_before": result.before.params, "params_after": result.after.params}


@torch.no_grad()
def _budget_reached(gated: GatedModel, calibration: torch.Tensor, target: float, name: str) -> dict[str, Any]:
    """The executed-MAC ratio reached on ``calibration``; one warning when it is above ``target`` (the gates'
    fixed part, base partial sums, ungated layers and gates, costs more than the budget)."""
    gated.eval()(calibration)
    reached = gated.executed_macs_ratio()
    if reached > target + 0.005:
        warnings.warn(
            f"gating bench: {name}: --target-flops {target} is below what its gates can execute ({reached:.3f} of "
            f"the dense MACs at the lowest threshold found, base fraction {gated.config.base_fraction}); lower "
            "--base-fraction or raise --target-flops", stacklevel=2)
    return {"reached_flops": reached, "budget_met": reached <= target + 0.005}


@torch.no_grad()
def _calibrate(gated: GatedModel, calibration: torch.Tensor, target: float) -> dict[str, Any]:
    """Bring fresh gates to ``target`` on ``calibration``; what was set."""
    if gated.config.kind == "runtime":
        return {"kind": "runtime", "target_flops": target, "keep_ratio": gated.set_budget(target, calibration)}
    density = gated.calibrate(calibration, target)
    offset = gated.fit_budget([calibration], target)
    return {"kind": "partial_sum", "target_flops": target, "calibrated_density": density, "threshold_offset": offset}


@torch.no_grad()
def _refit(gated: GatedModel, calibration: torch.Tensor, target: float | None) -> dict[str, Any]:
    """A saved ``GatedModel``'s gates: unchanged without ``target``, else one offset / keep ratio meeting it."""
    kind = gated.config.kind
    if target is None:
        return {"kind": kind, "target_flops": None, "saved_gates": True}
    if kind == "runtime":
        return {"kind": kind, "target_flops": target, "saved_gates": True,
                "keep_ratio": gated.set_budget(target, calibration)}
    return {"kind": kind, "target_flops": target, "saved_gates": True,
            "threshold_offset": gated.fit_budget([calibration], target)}
