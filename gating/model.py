"""``GatedModel``: wraps any CNN, swaps its convolutions for gated ones.

Gate semantics: ``docs/design.md#partial-sum-gate``; where the model sits in
the code: ``docs/design.md#layers-of-the-code``.

Which convolutions are gated (``GateConfig``):

1. a name in ``exclude`` is never gated;
2. a name in ``include`` is always gated; a conv the gate cannot represent
   (groups > 1, transposed, non-zero padding mode) named there raises
   ``NotImplementedError``;
3. otherwise ``nn.Conv2d`` modules are gated except: the stem (the first
   ``nn.Conv2d`` in module registration order) when ``skip_stem``; 1x1 convs
   on a shortcut path (a name component ``downsample`` or ``shortcut``) when
   ``skip_shortcut``; depthwise convs (silently); other grouped or transposed
   convs (with a one-line warning).

Every other module and weight of the wrapped network is kept as it was: the
gated conv holds a copy of the original weight and bias.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from typing import Any, Callable, Iterable, Iterator

import torch
from torch import nn

from . import calibration
from .accounting import Report, conv_macs, gated_mac_terms
from .bisection import largest_within
from .convs import is_depthwise
from .recorder import CallRecorder, RecordedCall
from .config import GateConfig, differing_settings
from .gates import ChannelGatedConv2d, RuntimeGatedConv2d, check_conv_input, total_variation, unsupported_reason
from .prune.groups import following_batchnorms

SHORTCUT_NAMES = ("downsample", "shortcut")


def _is_shortcut(name: str, conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and any(part in SHORTCUT_NAMES for part in name.split("."))


def select_convs(model: nn.Module, config: GateConfig) -> list[str]:
    """Names of the convolutions of ``model`` that ``config`` gates, in registration order."""
    convs = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, ChannelGatedConv2d)
    ]
    inside_gates = [name + "." for name, m in model.named_modules() if isinstance(m, RuntimeGatedConv2d)]
    convs = [(name, m) for name, m in convs if not any(name.startswith(prefix) for prefix in inside_gates)]
    known = {name for name, _ in model.named_modules()}
    for name in (*config.include, *config.exclude):
        if name not in known:
            raise ValueError(f"GateConfig names module {name!r}, which {type(model).__name__} does not have")
    stem = next((name for name, m in convs if isinstance(m, nn.Conv2d)), None)
    selected = []
    for name, conv in convs:
        reason = unsupported_reason(conv)
        if name in config.exclude:
            continue
        if name in config.include:
            if reason is not None:
                raise NotImplementedError(f"GateConfig.include names {name!r}, which cannot be gated: {reason}")
            selected.append(name)
            continue
        if reason is not None:
            if not is_depthwise(conv, multiplier=True):
                warnings.warn(f"gating: skipping {name!r}: {reason}", stacklevel=3)
            continue
        if config.skip_stem and name == stem:
            continue
        if config.skip_shortcut and _is_shortcut(name, conv):
            continue
        selected.append(name)
    return selected


def _input_check(name: str):
    """Forward pre-hook giving an ungated ``nn.Conv2d`` the same input errors as a gated one."""

    def check(module: nn.Conv2d, args: tuple) -> None:
        check_conv_input(name, args[0], module.in_channels, module.weight.dtype)

    return check


class GatedModel(nn.Module):
    """A network whose selected convolutions are ``ChannelGatedConv2d``.

    ``GatedModel(model)`` leaves ``model`` untouched: it wraps a deep copy,
    as PyTorch's conversion APIs do unless told otherwise. With
    ``inplace=True`` it wraps ``model`` itself and swaps its convolutions
    (no copy of the weights; ``model`` is then changed). ``forward`` is the
    wrapped model's forward; every counted layer call is recorded so
    ``report()``, ``gate_stats()`` and the losses describe the last forward.

    The budget loss aims at ``budget_target``, the executed/dense MAC ratio
    wanted now: ``config.target_flops_ratio`` (``budget_goal``) unless a
    training schedule (``TrainConfig.budget_ramp_epochs``) sets it step by
    step.

    ``state_dict()`` holds the wrapped model's tensors under ``model.`` plus
    an extra state with the gate configuration and the gated layer names;
    loading into a ``GatedModel`` built with a different configuration raises
    ``ValueError``.
    """

    pruning_root = "model"  # the network that gating.prune traces (its forward is this one's)

    def __init__(self, model: nn.Module, config: GateConfig | None = None, *, inplace: bool = False) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"GatedModel wraps an nn.Module, got {type(model).__name__}")
        if not isinstance(inplace, bool):
            raise TypeError(f"GatedModel: inplace must be a bool, got {inplace!r}")
        self.config = config or GateConfig()
        self.model = model if inplace else copy.deepcopy(model)
        self.budget_target: float | None = self.config.target_flops_ratio
        self._batch_mean: Callable[[torch.Tensor], torch.Tensor] | None = None
        model = self.model
        self.gated_names = select_convs(model, self.config)
        batchnorms = following_batchnorms(model) if self.config.kind == "runtime" and self.gated_names else {}
        for name in self.gated_names:
            self._swap(name, batchnorms.get(name))
        self._recorder = CallRecorder(self.model)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_pre_hook(_input_check(name))

    def _swap(self, name: str, batchnorm: str | None = None) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        cfg = self.config
        if cfg.kind == "runtime":
            self._swap_runtime(name, parent, child, batchnorm)
            return
        try:
            gated = ChannelGatedConv2d.from_conv(
                getattr(parent, child),
                spec=cfg.spec,
                alpha=cfg.alpha,
                sparse_bp=cfg.sparse_bp,
                threshold_init=cfg.threshold_init,
            )
        except ValueError as err:
            raise ValueError(f"cannot gate {name!r}: {err}") from err
        gated.layer_name = name
        setattr(parent, child, gated)

    def _swap_runtime(self, name: str, parent: nn.Module, child: str, batchnorm: str | None) -> None:
        """Put ``name`` and the BatchNorm after it (now an ``nn.Identity``) into a ``RuntimeGatedConv2d``."""
        bn = None
        if batchnorm is not None:
            bn_parent_name, _, bn_child = batchnorm.rpartition(".")
            bn_parent = self.model.get_submodule(bn_parent_name) if bn_parent_name else self.model
            bn = getattr(bn_parent, bn_child)
            setattr(bn_parent, bn_child, nn.Identity())
        cfg = self.config
        try:
            gated = RuntimeGatedConv2d.from_conv(
                getattr(parent, child), bn, channel_group=min(cfg.channel_group, getattr(parent, child).out_channels),
                pruner=cfg.pruner, runtime_ratio=cfg.runtime_ratio,
            )
        except ValueError as err:
            raise ValueError(f"cannot gate {name!r}: {err}") from err
        gated.layer_name, gated.batchnorm_name = name, batchnorm
        setattr(parent, child, gated)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._recorder.clear()
        return self.model(*args, **kwargs)

    # ---------------------------------------------------------------- queries
    def gated_layers(self) -> dict[str, ChannelGatedConv2d | RuntimeGatedConv2d]:
        """The gated convolutions by module name (relative to the wrapped model), of either kind."""
        return {name: self.model.get_submodule(name) for name in self.gated_names}

    def _partial_sum_layers(self) -> list[ChannelGatedConv2d]:
        return [layer for layer in self.gated_layers().values() if isinstance(layer, ChannelGatedConv2d)]

    def gate_stats(self) -> dict[str, float]:
        """Per gated layer: fraction of (sample, group, pixel) decisions on in the last forward."""
        return {name: layer.density() for name, layer in self.gated_layers().items()}

    def recorded_calls(self) -> list[RecordedCall]:
        """The counted layer calls of the last forward, in execution order (what ``report()`` counts, one
        ``LayerCount`` per call, with each gated call's decisions)."""
        return list(self._recorder.calls)

    def report(self) -> Report:
        """MACs and bytes per counted layer and in total for the last forward."""
        if not self._recorder.calls:
            raise RuntimeError("GatedModel.report(): run a forward pass first")
        return self._recorder.report()

    def executed_macs_ratio(self) -> float:
        """``macs_executed / macs_dense`` of the last forward (gate overhead included)."""
        report = self.report()
        return report.macs_executed / report.macs_dense

    @property
    def budget_goal(self) -> float | None:
        """The executed/dense MAC ratio the budget loss ends at: ``config.target_flops_ratio``."""
        return self.config.target_flops_ratio

    def gate_batchnorms(self) -> list[nn.BatchNorm2d]:
        """The gates' decision BatchNorms (``gate_bn`` of every gated layer), in forward order."""
        return [layer.gate_bn for layer in self._partial_sum_layers()]

    def no_weight_decay_parameters(self) -> Iterator[nn.Parameter]:
        """The learned thresholds of partial-sum gates, which the optimiser should not decay."""
        for layer in self._partial_sum_layers():
            yield layer.threshold

    # ----------------------------------------------------------------- losses
    def threshold_loss(self) -> torch.Tensor:
        """``threshold_weight * sum over layers and channels of (Δ - target_threshold)^2``."""
        thresholds = [layer.threshold for layer in self._partial_sum_layers()]
        if not thresholds:
            return torch.zeros(())
        deviation = torch.cat(thresholds) - self.config.target_threshold
        return self.config.threshold_weight * deviation.pow(2).sum()

    def _mac_split(self, caller: str) -> Iterator[tuple[RecordedCall, int, int, int]]:
        """Per recorded call of the last forward: ``(call, dense, fixed, conditional)`` MACs.

        For a gated call ``fixed`` is its base + gate MACs and ``conditional``
        its conditional MACs if every decision were on; for any other call
        ``fixed`` is its executed MACs and ``conditional`` is 0.
        """
        if not self._recorder.calls:
            raise RuntimeError(f"GatedModel.{caller}(): run a forward pass first")
        for call in self._recorder.calls:
            if isinstance(call.module, ChannelGatedConv2d):
                base, conditional, gate = gated_mac_terms(call.module, call.out)
                yield call, conv_macs(call.module, call.inp, call.out), base + gate, conditional
            else:
                count = self._recorder.count(call)
                yield call, count.macs_dense, count.macs_executed, 0

    def soft_macs_ratio(self) -> torch.Tensor:
        """Differentiable ``macs_executed / macs_dense`` of the last forward.

        Its value equals ``executed_macs_ratio()``; its gradient reaches the
        gates through the straight-through sigmoid surrogate of each
        decision (gated layers' conditional MACs scale with their batch-mean
        density); it stays on the device of the gates (no host sync). Layers
        run without grad or with gates forced open count their exact executed
        MACs as constants. A gated layer called twice in one forward uses
        the density of its last call.
        """
        dense_total, constant, variable = 0, 0, []
        for call, dense, fixed, conditional in self._mac_split("soft_macs_ratio"):
            soft = call.module.last_soft_density if conditional else None
            dense_total += dense
            if soft is None or call.decisions is None:
                constant += self._recorder.count(call).macs_executed
            else:
                constant += fixed
                mean = soft.mean() if self._batch_mean is None else self._batch_mean(soft)
                variable.append(conditional * mean)
        executed = torch.stack(variable).sum() if variable else torch.zeros(())
        return (executed + constant) / dense_total

    @torch.no_grad()
    def per_sample_macs_ratio(self) -> torch.Tensor:
        """``[N]`` executed / dense MACs of each input of the last forward (float64, CPU).

        Runtime gates count each input's kept outputs over its non-zero inputs
        plus the predictor; other layers count their dense MACs. Partial-sum
        gates are not split per input (``NotImplementedError``).
        """
        if not self._recorder.calls:
            raise RuntimeError("GatedModel.per_sample_macs_ratio(): run a forward pass first")
        dense = executed = None
        for call in self._recorder.calls:
            n = call.inp[0]
            if isinstance(call.module, ChannelGatedConv2d):
                raise NotImplementedError("GatedModel.per_sample_macs_ratio() counts runtime gates only")
            count = self._recorder.count(call)
            per_dense = torch.full((n,), count.macs_dense / n, dtype=torch.float64)
            if isinstance(call.module, RuntimeGatedConv2d):
                masks, active = call.decisions.cpu(), call.active_inputs.cpu()
                pairs = (masks.sum(dim=1) * active.sum(dim=1)).double()
                per_pair = math.prod(call.module.kernel_size) * call.out[2] * call.out[3]
                per_exec = pairs * per_pair + count.gate_macs / n
            else:
                per_exec = per_dense
            dense = per_dense if dense is None else dense + per_dense
            executed = per_exec if executed is None else executed + per_exec
        return executed / dense

    def budget_loss(self) -> torch.Tensor:
        """``(soft_macs_ratio - budget_target)^2``; zero when no target is set."""
        if self.budget_target is None:
            return torch.zeros(())
        return (self.soft_macs_ratio() - self.budget_target).pow(2)

    def coherence_loss(self) -> torch.Tensor:
        """Mean over the gated calls of the last training forward of ``total_variation`` of their soft gate maps.

        Zero when no call kept a soft map (eval mode, no grad, gates forced
        open). A layer called twice in one forward counts its last call.
        """
        maps = [layer.last_soft_map for layer in self._partial_sum_layers() if layer.last_soft_map is not None]
        if not maps:
            return torch.zeros(())
        return torch.stack([total_variation(soft) for soft in maps]).mean()

    def gating_loss(self) -> torch.Tensor:
        """``threshold_loss + budget_weight * budget_loss + coherence_weight * coherence_loss`` (last forward)."""
        loss = self.threshold_loss()
        if self.budget_target is not None:
            budget = self.budget_loss()
            loss = loss.to(budget.device) + self.config.budget_weight * budget
        if self.config.coherence_weight > 0:
            coherence = self.coherence_loss()
            loss = loss.to(coherence.device) + self.config.coherence_weight * coherence
        return loss

    # ------------------------------------------------------------ calibration
    def uniform_density(self, target_flops_ratio: float) -> float:
        """The gate density, equal in every gated layer, at which the last forward's
        executed-MAC ratio would be ``target_flops_ratio`` (clipped to [0, 1])."""
        dense = fixed = conditional = 0
        for _, call_dense, call_fixed, call_conditional in self._mac_split("uniform_density"):
            dense, fixed, conditional = dense + call_dense, fixed + call_fixed, conditional + call_conditional
        if conditional == 0:
            return 1.0
        return min(1.0, max(0.0, (target_flops_ratio * dense - fixed) / conditional))

    def _require_kind(self, kind: str, caller: str, instead: str) -> None:
        if self.config.kind != kind:
            raise NotImplementedError(f"GatedModel.{caller}() is for {kind!r} gates; this model's are "
                                      f"{self.config.kind!r} ({instead})")

    def calibrate(self, inputs: torch.Tensor, target_flops_ratio: float) -> float:
        """Start the gates near a budget: see :func:`gating.calibration.calibrate`; returns the density set."""
        self._require_kind("partial_sum", "calibrate", "use set_budget")
        return calibration.calibrate(self, inputs, target_flops_ratio)

    def set_keep_ratio(self, keep_ratio: float | torch.Tensor | dict[str, float | torch.Tensor]) -> None:
        """Runtime gates: the fraction of output channels each layer keeps (one value, or one per layer name)."""
        self._require_kind("runtime", "set_keep_ratio", "use calibrate / fit_budget")
        layers = self.gated_layers()
        if isinstance(keep_ratio, dict):
            unknown = sorted(set(keep_ratio) - set(layers))
            if unknown:
                raise ValueError(f"GatedModel.set_keep_ratio: no runtime-gated layers named {unknown}")
            for name, ratio in keep_ratio.items():
                layers[name].set_keep_ratio(ratio)
        else:
            for layer in layers.values():
                layer.set_keep_ratio(keep_ratio)

    @torch.no_grad()
    def set_budget(self, budget: float, inputs: torch.Tensor, *, tolerance: float = 0.005, max_steps: int = 30) -> float:
        """Runtime gates: one keep ratio in every layer (the fixed schedule) so that the eval-mode
        executed-MAC ratio on ``inputs`` meets ``budget`` in (0, 1]; returns the keep ratio set.

        Bisection on the measured ratio (predictor MACs included); the result
        is the largest ratio found whose executed MACs do not exceed the
        budget, or the smallest ratio (``1 / C_out``, rounded up to the
        channel group) when even that exceeds it. The training mode is kept.
        """
        self._require_kind("runtime", "set_budget", "use calibrate / fit_budget")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
            raise ValueError(f"GatedModel.set_budget: budget must be in (0, 1], got {budget!r}")
        was_training = self.training
        self.eval()
        try:
            def executed(keep: float) -> float:
                self.set_keep_ratio(keep)
                self(inputs)
                return self.executed_macs_ratio()

            best = largest_within(executed, budget, 1e-6, 1.0, max_steps, tolerance)
            self.set_keep_ratio(best)
            return best
        finally:
            self.train(was_training)

    def fit_budget(
        self, batches: Iterable[torch.Tensor], target_flops_ratio: float | None = None, **options: Any
    ) -> float:
        """Meet a budget (default ``budget_goal``) exactly by one common threshold offset, returned.

        See :func:`gating.calibration.fit_budget` (``options``: ``tolerance``,
        ``max_steps``).
        """
        self._require_kind("partial_sum", "fit_budget", "use set_budget")
        target = self.budget_goal if target_flops_ratio is None else target_flops_ratio
        return calibration.fit_budget(self, batches, target, **options)

    # ------------------------------------------------------------- open gates
    @contextlib.contextmanager
    def open_gates(self) -> Iterator["GatedModel"]:
        """Within the block every gate is forced open: each gated conv computes
        the original dense convolution, so the model equals the unwrapped one."""
        layers = list(self.gated_layers().values())
        previous = [layer.force_open for layer in layers]
        for layer in layers:
            layer.force_open = True
        try:
            yield self
        finally:
            for layer, was in zip(layers, previous):
                layer.force_open = was

    @contextlib.contextmanager
    def global_batch(self, mean: Callable[[torch.Tensor], torch.Tensor]) -> Iterator["GatedModel"]:
        """Within the block the budget loss averages gate densities with ``mean`` (``[N]`` -> scalar) instead of
        over the local batch: a data-parallel run passes the differentiable mean over the global batch
        (``gating.distill.DistributedRun.mean``), so ``soft_macs_ratio`` is that of the global batch."""
        previous, self._batch_mean = self._batch_mean, mean
        try:
            yield self
        finally:
            self._batch_mean = previous

    # ------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict[str, Any]:
        return {"gate_config": self.config.to_dict(), "gated_names": list(self.gated_names)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "gate_config" not in state or "gated_names" not in state:
            raise ValueError("GatedModel state_dict: malformed extra state (not saved by GatedModel?)")
        if not isinstance(state["gate_config"], dict):
            raise ValueError(f"GatedModel state_dict: malformed gate config {state['gate_config']!r} (expected a dict)")
        current = self.config.to_dict()
        saved, differing = differing_settings(state["gate_config"], current, GateConfig().to_dict())
        if differing:
            raise ValueError(
                f"GatedModel state_dict was saved with gate config {saved}, this model uses "
                f"{current} (differing: {', '.join(differing)})"
            )
        if list(state["gated_names"]) != list(self.gated_names):
            raise ValueError(
                f"GatedModel state_dict gates layers {state['gated_names']}, this model gates {self.gated_names}"
            )
