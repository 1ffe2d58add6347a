"""``GatedModel``: wraps any CNN, swaps its convolutions for gated ones (DESIGN §2.1, §3).

Which convolutions are gated (``GateConfig``):

1. a name in ``exclude`` is never gated;
2. a name in ``include`` is always gated, and is an error if the conv cannot
   be gated (groups > 1, transposed, non-zero padding mode);
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
import warnings
from typing import Any, Iterator

import torch
from torch import nn

from kernels.partition import expand_groups

from .accounting import CallRecorder, RecordedCall, Report, conv_macs, gated_mac_terms
from .config import GateConfig
from .gates import ChannelGatedConv2d, check_conv_input, unsupported_reason

SHORTCUT_NAMES = ("downsample", "shortcut")


def _is_depthwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels


def _is_shortcut(name: str, conv: nn.Conv2d) -> bool:
    return conv.kernel_size == (1, 1) and any(part in SHORTCUT_NAMES for part in name.split("."))


def select_convs(model: nn.Module, config: GateConfig) -> list[str]:
    """Names of the convolutions of ``model`` that ``config`` gates, in registration order."""
    convs = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, ChannelGatedConv2d)
    ]
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
                raise ValueError(f"GateConfig.include names {name!r}, which cannot be gated: {reason}")
            selected.append(name)
            continue
        if reason is not None:
            if not _is_depthwise(conv):
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


def _capture_gate_statistic(model: nn.Module, layer: ChannelGatedConv2d, inputs: torch.Tensor) -> torch.Tensor:
    """Run ``model(inputs)`` and return ``layer``'s gate statistic ``z`` of that forward."""
    captured: list[torch.Tensor] = []

    def hook(module: ChannelGatedConv2d, args: tuple) -> None:
        captured.append(module.gate_statistic(module.partial_sums(args[0])[0]))

    handle = layer.register_forward_pre_hook(hook)
    try:
        model(inputs)
    finally:
        handle.remove()
    return captured[0]


class GatedModel(nn.Module):
    """A network whose selected convolutions are ``ChannelGatedConv2d``.

    The wrapped ``model`` is modified in place (pass a ``copy.deepcopy`` to
    keep the original). ``forward`` is the wrapped model's forward; every
    counted layer call is recorded so ``report()``, ``gate_stats()`` and the
    losses describe the last forward.

    ``state_dict()`` holds the wrapped model's tensors under ``model.`` plus
    an extra state with the gate configuration and the gated layer names;
    loading into a ``GatedModel`` built with a different configuration raises
    ``ValueError``.
    """

    def __init__(self, model: nn.Module, config: GateConfig | None = None) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"GatedModel wraps an nn.Module, got {type(model).__name__}")
        self.config = config or GateConfig()
        self.model = model
        self.gated_names = select_convs(model, self.config)
        for name in self.gated_names:
            self._swap(name)
        self._recorder = CallRecorder(self.model)
        for name, module in self.model.named_modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_pre_hook(_input_check(name))

    def _swap(self, name: str) -> None:
        parent_name, _, child = name.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        cfg = self.config
        try:
            gated = ChannelGatedConv2d.from_conv(
                getattr(parent, child),
                base_fraction=cfg.base_fraction,
                base_layout=cfg.base_layout,
                gate_group=cfg.gate_group,
                alpha=cfg.alpha,
                sparse_bp=cfg.sparse_bp,
                threshold_init=cfg.threshold_init,
            )
        except ValueError as err:
            raise ValueError(f"cannot gate {name!r}: {err}") from err
        gated.layer_name = name
        setattr(parent, child, gated)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self._recorder.clear()
        return self.model(*args, **kwargs)

    # ---------------------------------------------------------------- queries
    def gated_layers(self) -> dict[str, ChannelGatedConv2d]:
        """The gated convolutions by module name (relative to the wrapped model)."""
        return {name: self.model.get_submodule(name) for name in self.gated_names}

    def gate_stats(self) -> dict[str, float]:
        """Per gated layer: fraction of (sample, group, pixel) decisions on in the last forward."""
        return {name: layer.density() for name, layer in self.gated_layers().items()}

    def report(self) -> Report:
        """MACs and bytes per counted layer and in total for the last forward."""
        if not self._recorder.calls:
            raise RuntimeError("GatedModel.report(): run a forward pass first")
        return self._recorder.report()

    def executed_macs_ratio(self) -> float:
        """``macs_executed / macs_dense`` of the last forward (gate overhead included)."""
        report = self.report()
        return report.macs_executed / report.macs_dense

    def no_weight_decay_parameters(self) -> Iterator[nn.Parameter]:
        """The learned thresholds, which the optimiser should not decay."""
        for layer in self.gated_layers().values():
            yield layer.threshold

    # ----------------------------------------------------------------- losses
    def threshold_loss(self) -> torch.Tensor:
        """``threshold_weight * sum over layers and channels of (Δ - target_threshold)^2``."""
        thresholds = [layer.threshold for layer in self.gated_layers().values()]
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
                variable.append(conditional * soft.mean())
        executed = torch.stack(variable).sum() if variable else torch.zeros(())
        return (executed + constant) / dense_total

    def budget_loss(self) -> torch.Tensor:
        """``(soft_macs_ratio - target_flops_ratio)^2``; zero when no target is set."""
        if self.config.target_flops_ratio is None:
            return torch.zeros(())
        return (self.soft_macs_ratio() - self.config.target_flops_ratio).pow(2)

    def gating_loss(self) -> torch.Tensor:
        """``threshold_loss + budget_weight * budget_loss`` for the last forward."""
        loss = self.threshold_loss()
        if self.config.target_flops_ratio is not None:
            budget = self.budget_loss()
            loss = loss.to(budget.device) + self.config.budget_weight * budget
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

    @torch.no_grad()
    def calibrate(self, inputs: torch.Tensor, target_flops_ratio: float) -> float:
        """Set the gate statistics and thresholds from data so the model starts near a budget.

        ``inputs`` is a representative batch ``[N, C, H, W]``. First every gate
        BatchNorm's running statistics are set to the cumulative average over
        ``inputs`` (gates open). Then, layer by layer in forward order (so each
        layer sees the inputs its calibrated predecessors give it), every
        threshold of gate group ``j`` is set to the ``1 - density`` quantile of
        that group's eval-mode gate statistic, where ``density`` is
        ``uniform_density(target_flops_ratio)``. Returns that density. The
        model's train/eval mode is restored.
        """
        if not 0.0 < target_flops_ratio <= 1.0:
            raise ValueError(f"target_flops_ratio must be in (0, 1], got {target_flops_ratio!r}")
        was_training = self.training
        layers = list(self.gated_layers().values())
        momenta = [layer.gate_bn.momentum for layer in layers]
        try:
            self.train()
            for layer in layers:
                layer.gate_bn.reset_running_stats()
                layer.gate_bn.momentum = None  # cumulative average
            with self.open_gates():
                self(inputs)
                density = self.uniform_density(target_flops_ratio)
            for layer, momentum in zip(layers, momenta):
                layer.gate_bn.momentum = momentum
            self.eval()
            for layer in layers:
                layer.threshold.zero_()
                statistic = _capture_gate_statistic(self, layer, inputs)  # [N, G, OH, OW] at Δ = 0
                per_group = statistic.transpose(0, 1).flatten(1).float()
                if density < 1.0:
                    thresholds = torch.quantile(per_group, 1.0 - density, dim=1)
                else:  # every decision on: below the smallest statistic
                    thresholds = per_group.min(dim=1).values - 1.0
                per_channel = expand_groups(thresholds.view(1, -1, 1, 1), layer.out_channels, layer.gate_group)
                layer.threshold.copy_(per_channel.view(-1))
        finally:
            self.train(was_training)
        return density

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

    # ------------------------------------------------------------ persistence
    def get_extra_state(self) -> dict[str, Any]:
        return {"gate_config": self.config.to_dict(), "gated_names": list(self.gated_names)}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "gate_config" not in state or "gated_names" not in state:
            raise ValueError("GatedModel state_dict: malformed extra state (not saved by GatedModel?)")
        if state["gate_config"] != self.config.to_dict():
            raise ValueError(
                f"GatedModel state_dict was saved with gate config {state['gate_config']}, "
                f"this model uses {self.config.to_dict()}"
            )
        if list(state["gated_names"]) != list(self.gated_names):
            raise ValueError(
                f"GatedModel state_dict gates layers {state['gated_names']}, this model gates {self.gated_names}"
            )
