"""Runtime channel-importance gate for one convolution (``docs/design.md#runtime-importance-gate``).

``RuntimeGatedConv2d`` keeps, per input, the ``k`` most important output
channels of a convolution (followed by its BatchNorm, which the gate holds so
that pruned channels leave it as exact zeros)::

    u_r = FC(GAP(x))                    # runtime importance [N, C_out]
    u_s                                 # static importance [C_out], learned
    u   = u_r * u_s, negative when both are negative (the sign fix)
    k   = keep_ratio * C_out rounded up to a multiple of channel_group
    m   = top-k of u per input          ("unified" pruner), or the trade-off
          pruner: channels in the bottom C_out - k of both u_r and u_s are
          always pruned, and of the rest a fraction runtime_ratio (R_r) of the
          channels still to prune is taken from the bottom of u_r, the others
          from the bottom of u_s
    s   = sigmoid(u)
    y   = BN(conv(x)) * m * (1 + (s - stop_gradient(s)))

Forward, a kept channel is exactly ``BN(conv(x))`` and a pruned one exactly 0,
so a following ReLU keeps it 0 and the next layer can skip it as an input;
backward, the importances get the gradient of a multiplicative scale
(straight-through), squashed by the sigmoid so that large importances can
neither overflow nor get unbounded gradients (the ranking is that of ``u``). ``keep_ratio`` is a float (every input) or a tensor
``[N]`` (one ratio per input, as a budget policy sets it). The masks of the
last forward are ``last_masks`` (bool ``[N, C_out]``) and the input channels
that were not all zero ``last_active_inputs`` (bool ``[N, C_in]``); accounting
reads both (``docs/design.md#accounting``).

This module computes the convolution densely and masks it: it is the
training semantics. The inference path, ``gating.ops.RuntimeConvInference``,
runs the same masks through ``kernels.channel_sparse_conv2d``, which skips
the pruned output channels and the all-zero input channels.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..prune.surgery import check_keep, prune_batchnorm, prune_module
from .partial_sum import check_conv_input, unsupported_reason

PRUNERS = ("unified", "tradeoff")


def unified_importance(runtime: torch.Tensor, static: torch.Tensor) -> torch.Tensor:
    """``runtime * static`` (``[N, C]`` times ``[C]``), made negative where both factors are negative."""
    product = runtime * static
    both_negative = (runtime < 0) & (static < 0)
    return torch.where(both_negative, -product, product)


def keep_counts(keep_ratio: torch.Tensor, channels: int, channel_group: int) -> torch.Tensor:
    """Channels kept per input: ``ceil(ratio * channels / group) * group``, within ``[min(group, channels), channels]``."""
    k = torch.ceil(keep_ratio * channels / channel_group - 1e-9) * channel_group
    return k.clamp(min(channel_group, channels), channels).long()


def _bottom(scores: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, C]``: the ``count[n]`` lowest scores of each row (ties broken by channel index)."""
    rank = scores.argsort(dim=1, stable=True).argsort(dim=1)
    return rank < count[:, None]


def top_k_mask(importance: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool ``[N, C]``: the ``k[n]`` highest importances of each row."""
    return ~_bottom(importance, importance.shape[1] - k)


def tradeoff_mask(runtime: torch.Tensor, static: torch.Tensor, k: torch.Tensor, runtime_ratio: float) -> torch.Tensor:
    """Bool ``[N, C]`` of kept channels by the trade-off pruner (module docstring), ``k[n]`` kept per row."""
    n, c = runtime.shape
    prune = c - k
    static_rows = static.detach().expand(n, c)
    by_runtime, by_static = _bottom(runtime.detach(), prune), _bottom(static_rows, prune)
    pruned = by_runtime & by_static
    rest = prune - pruned.sum(dim=1)
    from_runtime = torch.round(rest.double() * runtime_ratio).long()
    big = torch.finfo(torch.float64).max
    # Lowest runtime scores among the channels not yet pruned, then lowest static ones.
    runtime_left = torch.where(pruned, torch.full_like(runtime, big, dtype=torch.float64), runtime.detach().double())
    pruned = pruned | _bottom(runtime_left, from_runtime)
    static_left = torch.where(pruned, torch.full_like(runtime, big, dtype=torch.float64), static_rows.double())
    pruned = pruned | _bottom(static_left, prune - pruned.sum(dim=1))
    return ~pruned


class RuntimeGatedConv2d(nn.Module):
    """A convolution (groups = 1) and its BatchNorm whose output channels are kept per input by importance.

    Build with :meth:`from_conv`. Args:
        conv: the ``nn.Conv2d`` (groups = 1, zero padding) whose weights it keeps.
        bn: the ``nn.BatchNorm2d`` directly after it, or ``None``.
        channel_group: kept counts are multiples of this (>= 1, dividing ``C_out``).
        pruner: ``"unified"`` or ``"tradeoff"``.
        runtime_ratio: ``R_r`` in [0, 1] for the trade-off pruner.

    Shapes: input ``[N, C_in, H, W]`` floating point; output ``[N, C_out, OH, OW]``.
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        bn: nn.BatchNorm2d | None = None,
        *,
        channel_group: int = 8,
        pruner: str = "unified",
        runtime_ratio: float = 1.0,
    ) -> None:
        super().__init__()
        reason = unsupported_reason(conv)
        if reason is not None:
            raise NotImplementedError(f"RuntimeGatedConv2d: cannot gate {type(conv).__name__}: {reason}")
        if bn is not None and (not isinstance(bn, nn.BatchNorm2d) or bn.num_features != conv.out_channels):
            raise ValueError(f"RuntimeGatedConv2d: bn must be a BatchNorm2d over {conv.out_channels} channels, got {bn}")
        if isinstance(channel_group, bool) or not isinstance(channel_group, int) or not (
            1 <= channel_group <= conv.out_channels
        ):
            raise ValueError(
                f"RuntimeGatedConv2d: channel_group must be an int in [1, {conv.out_channels}] (the output channels), "
                f"got {channel_group!r}"
            )
        if conv.out_channels % channel_group:
            raise ValueError(
                f"RuntimeGatedConv2d: channel_group {channel_group} does not divide the {conv.out_channels} output "
                "channels (kept counts are whole groups)"
            )
        if pruner not in PRUNERS:
            raise ValueError(f"RuntimeGatedConv2d: pruner must be one of {PRUNERS}, got {pruner!r}")
        if not (isinstance(runtime_ratio, (int, float)) and 0.0 <= runtime_ratio <= 1.0):
            raise ValueError(f"RuntimeGatedConv2d: runtime_ratio must be in [0, 1], got {runtime_ratio!r}")
        self.conv, self.bn = conv, bn
        self.channel_group, self.pruner, self.runtime_ratio = channel_group, pruner, float(runtime_ratio)
        self.layer_name = "RuntimeGatedConv2d"
        self.batchnorm_name: str | None = None  # where ``bn`` sat in the network (set by GatedModel)
        factory = {"device": conv.weight.device, "dtype": conv.weight.dtype}
        # Starts as the static ranking: no runtime signal (weight 0, bias 1), static
        # importance = the filters' L1 norms over their mean.
        self.predictor = nn.Linear(conv.in_channels, conv.out_channels, **factory)
        nn.init.zeros_(self.predictor.weight)
        nn.init.ones_(self.predictor.bias)
        norms = conv.weight.detach().abs().sum(dim=(1, 2, 3))
        self.static_importance = nn.Parameter(norms / norms.mean().clamp_min(1e-12))
        self.keep_ratio: float | torch.Tensor = 1.0
        self.force_open = False
        self.last_masks: torch.Tensor | None = None
        self.last_active_inputs: torch.Tensor | None = None
        self.last_forced_open = False

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, bn: nn.BatchNorm2d | None = None, **kwargs) -> "RuntimeGatedConv2d":
        """The gate around ``conv`` (and ``bn``), sharing their modules (``GatedModel`` passes copies)."""
        return cls(conv, bn, **kwargs)

    @property
    def in_channels(self) -> int:
        return self.conv.in_channels

    @property
    def out_channels(self) -> int:
        return self.conv.out_channels

    @property
    def kernel_size(self) -> tuple[int, int]:
        return self.conv.kernel_size

    @property
    def weight(self) -> nn.Parameter:
        """The convolution's weight ``[C_out, C_in, kh, kw]`` (what pruning criteria read)."""
        return self.conv.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.conv.bias

    def set_keep_ratio(self, keep_ratio: float | torch.Tensor) -> None:
        """Fraction of output channels kept: a float in (0, 1], or a tensor ``[N]`` of them (one per input)."""
        values = torch.as_tensor(keep_ratio, dtype=torch.float64)
        if values.dim() > 1 or values.numel() == 0 or not bool(((values > 0) & (values <= 1)).all()):
            raise ValueError(
                f"{self.layer_name}: keep_ratio must be in (0, 1] (a float or a 1-D tensor, one per input), "
                f"got {keep_ratio!r}"
            )
        self.keep_ratio = float(values) if values.dim() == 0 else values

    def check_batch(self, x: torch.Tensor) -> None:
        """``ValueError`` when per-input keep ratios were set for a batch of another size than ``x``'s."""
        if isinstance(self.keep_ratio, torch.Tensor) and self.keep_ratio.shape[0] != x.shape[0]:
            raise ValueError(
                f"{self.layer_name}: {self.keep_ratio.shape[0]} per-input keep ratios for a batch of {x.shape[0]}"
            )

    def runtime_importance(self, x: torch.Tensor) -> torch.Tensor:
        """``FC(GAP(x))``: runtime importance ``[N, C_out]`` (predictor dtype) of input ``x`` ``[N, C_in, H, W]``."""
        return self.predictor(x.mean(dim=(2, 3)).to(self.predictor.weight.dtype))

    def masks(self, runtime: torch.Tensor) -> torch.Tensor:
        """Bool ``[N, C_out]`` kept channels for runtime importances ``runtime`` ``[N, C_out]``."""
        n, channels = runtime.shape
        ratio = torch.as_tensor(self.keep_ratio, dtype=torch.float64).to(runtime.device).expand(n)
        k = keep_counts(ratio, channels, self.channel_group)
        if self.pruner == "tradeoff":
            return tradeoff_mask(runtime, self.static_importance, k, self.runtime_ratio)
        return top_k_mask(unified_importance(runtime.detach(), self.static_importance.detach()), k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_conv_input(self.layer_name, x, self.in_channels, self.conv.weight.dtype)
        self.check_batch(x)
        self.last_active_inputs = x.detach().abs().amax(dim=(2, 3)) > 0
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        self.last_forced_open = self.force_open
        if self.force_open:
            self.last_masks = torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
            return y
        runtime = self.runtime_importance(x)
        mask = self.masks(runtime)
        squashed = torch.sigmoid(unified_importance(runtime, self.static_importance))
        scale = mask.to(squashed.dtype) * (1 + (squashed - squashed.detach()))  # exactly 1 forward
        self.last_masks = mask
        return y * scale.to(y.dtype)[:, :, None, None]

    def density(self) -> float:
        """Fraction of (sample, output channel) pairs kept in the last forward."""
        if self.last_masks is None:
            raise RuntimeError(f"{self.layer_name}: no forward has run yet")
        return float(self.last_masks.float().mean())

    @torch.no_grad()
    def prune_channels(self, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None) -> None:
        """Keep output channels ``out_keep`` and input channels ``in_keep`` (int64 indices), in place.

        Slices the convolution, its BatchNorm, the predictor's rows and
        columns and the static importance; ``channel_group`` must still fit.
        """
        out_keep = check_keep(out_keep, self.out_channels, f"{self.layer_name}: out_keep")
        in_keep = check_keep(in_keep, self.in_channels, f"{self.layer_name}: in_keep")
        if self.channel_group > len(out_keep):
            raise ValueError(f"{self.layer_name}: channel_group {self.channel_group} exceeds the {len(out_keep)} "
                             "output channels that would remain")
        name = self.layer_name
        prune_module(self.conv, out_keep, in_keep, f"{name}.conv")
        prune_module(self.predictor, out_keep, in_keep, f"{name}.predictor")
        if self.bn is not None:
            prune_batchnorm(self.bn, out_keep)
        out_idx = out_keep.to(self.static_importance.device)
        self.static_importance = nn.Parameter(self.static_importance[out_idx].clone())
        self.last_masks = self.last_active_inputs = None

    def extra_repr(self) -> str:
        return (f"channel_group={self.channel_group}, pruner={self.pruner!r}, runtime_ratio={self.runtime_ratio}, "
                f"keep_ratio={self.keep_ratio if isinstance(self.keep_ratio, float) else 'per input'}")


def predictor_macs(layer: RuntimeGatedConv2d, batch: int) -> int:
    """MACs of the importance predictor for ``batch`` inputs: the ``FC`` after global pooling."""
    return batch * layer.in_channels * layer.out_channels


def channel_macs(layer: RuntimeGatedConv2d, masks: torch.Tensor, active_inputs: torch.Tensor, out_hw: tuple[int, int]) -> int:
    """Convolution MACs with only kept outputs over non-zero inputs: ``sum_n kept_n * active_n * kh*kw*OH*OW``."""
    per_pair = math.prod(layer.kernel_size) * out_hw[0] * out_hw[1]
    return int((masks.sum(dim=1).long() * active_inputs.sum(dim=1).long()).sum()) * per_pair
