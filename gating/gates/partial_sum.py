"""Partial-sum channel gating for one convolution (``docs/design.md#partial-sum-gate``).

``ChannelGatedConv2d`` computes, for weight ``W[C_out, C_in, kh, kw]`` and the
base mask ``B[C_out, C_in]`` of ``kernels.partition``::

    Yp = conv(x, W*B) + bias           # base partial sum, always computed
    Yr = conv(x, W*(1-B))              # conditional path
    s  = BN_gate(Yp)                   # non-affine BatchNorm2d, decision only
    z  = mean_{c in group j}(s_c - Δ_c)            # per (n, group j, h, w)
    zb = block_mean(z, gate_block)     # mean over the pixel's gate block (gate_block = 1: zb = z)
    d  = 1[zb > 0]                     # hard step forward
    Y  = Yp + d * Yr

Backward through ``d`` is straight-through with the slope of
``sigmoid(alpha * zb)``; with ``sparse_bp`` that surrogate gradient is zeroed
where ``d = 0``. The decisions of the last forward are kept in
``last_decisions`` (bool ``[N, G, OH, OW]``, ``G = ceil(C_out / gate_group)``,
per pixel, constant over each gate block) and are what accounting, tests and
kernels read (``docs/design.md#decisions-layout``).

At inference the gate folds into a per-channel affine of the raw partial sum
(``folded_gate``): ``d = 1[block_mean(sum_{c in j}(a_c * Yp_c + b_c)) > 0]`` with
``a_c = 1/sigma_c`` and ``b_c = -mu_c/sigma_c - Δ_c`` (running statistics of
``BN_gate``); for ``gate_group = 1`` this is ``Yp > mu + sigma*Δ``.

This module is the pure-PyTorch training semantics: it computes both paths
densely (``first`` layout slices channels so no MAC is spent twice). The
kernels in ``kernels/`` are what skip the conditional work at inference.

Errors (``docs/design.md#exception-policy``): ``TypeError`` for a wrong type
or dtype, ``ValueError`` for a wrong shape, channel count or value (including
a gate BatchNorm without running statistics), ``NotImplementedError`` for a
convolution this gate does not support; each message names the argument or
the layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import GateSpec, as_pair, conv_output_size
from kernels.partition import (
    base_channels,
    base_mask,
    block_mean,
    gate_group_count,
    group_sizes,
    group_sum,
    mask_groups,
)

from ..prune.surgery import check_keep, prune_batchnorm


class ChannelGatedConv2d(nn.Module):
    """A 2-D convolution (groups = 1) with a partial-sum channel gate.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation,
            bias: as ``nn.Conv2d`` (ints or ``(h, w)`` pairs of ints: kernel_size,
            stride and dilation >= 1, padding >= 0; zero padding only).
        spec: the gate settings (:class:`kernels.GateSpec`); default ``GateSpec()``.
        base_fraction, base_layout, gate_group, gate_block: the same settings
            one by one (unset ones keep ``GateSpec``'s defaults); giving any of
            them together with ``spec`` is a ``ValueError``. After construction
            all four are read-only properties reading ``spec``.
        alpha: slope of the sigmoid surrogate for the straight-through gradient.
        sparse_bp: zero the surrogate gradient where the gate is off.
        threshold_init: initial value of the learned thresholds ``Δ``.

    Shapes: input ``[N, C_in, H, W]`` floating point; output
    ``[N, C_out, OH, OW]`` in the same dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = False,
        *,
        spec: GateSpec | None = None,
        base_fraction: float | None = None,
        base_layout: str | None = None,
        gate_group: int | None = None,
        gate_block: int | None = None,
        alpha: float = 2.0,
        sparse_bp: bool = False,
        threshold_init: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check_channels(in_channels, out_channels)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = as_pair(kernel_size, "kernel_size", 1)
        self.stride = as_pair(stride, "stride", 1)
        self.padding = as_pair(padding, "padding", 0)
        self.dilation = as_pair(dilation, "dilation", 1)
        self.spec = _gate_spec(
            spec, base_fraction=base_fraction, base_layout=base_layout, gate_group=gate_group, gate_block=gate_block
        )
        self.spec.check(self.out_channels, self.in_channels)
        self.alpha = float(alpha)
        self.sparse_bp = bool(sparse_bp)
        self.layer_name = "ChannelGatedConv2d"

        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self.gate_bn = nn.BatchNorm2d(out_channels, affine=False, **factory)
        self.threshold = nn.Parameter(torch.full((out_channels,), float(threshold_init), **factory))
        self._derive_partition(device)

        self.force_open = False
        self.last_decisions: torch.Tensor | None = None
        self.last_soft_density: torch.Tensor | None = None
        self.last_soft_map: torch.Tensor | None = None
        self.last_forced_open = False
        self.reset_parameters()

    def _derive_partition(self, device: torch.device | str | None) -> None:
        """(Re)build the buffers that follow from the channel counts and the spec."""
        mask = base_mask(self.out_channels, self.in_channels, self.base_fraction, self.base_layout, device=device)
        self.register_buffer("base_mask", mask, persistent=False)
        self.num_groups = gate_group_count(self.out_channels, self.gate_group)
        # Conditional MACs per output position of each gate group, normalised to
        # sum to 1: weights of the soft density used by the budget loss.
        cond_per_channel = (~mask).sum(dim=1).double()
        sizes = group_sizes(self.out_channels, self.gate_group)
        per_group = torch.stack([c.sum() for c in cond_per_channel.split(sizes)])
        total = per_group.sum()
        weights = per_group / total if total > 0 else torch.zeros_like(per_group)
        self.register_buffer("_group_weight", weights.float(), persistent=False)
        self.register_buffer("_group_size", torch.tensor(sizes, dtype=torch.float32, device=device), persistent=False)

    @torch.no_grad()
    def prune_channels(self, out_keep: torch.Tensor | None = None, in_keep: torch.Tensor | None = None) -> None:
        """Keep only output channels ``out_keep`` and input channels ``in_keep`` (int64 index tensors), in place.

        The weight, bias, thresholds and the gate BatchNorm's statistics keep
        the selected channels; the base / conditional split, the gate groups
        and their weights are rebuilt for the new channel counts with the same
        :class:`kernels.GateSpec` (``docs/design.md#static-pruning``). ``None``
        keeps every channel on that side. Raises ``ValueError`` naming the
        layer when the new counts do not fit the spec (e.g. ``"grouped"``
        layout chunks); the layer is unchanged then. Decisions of earlier
        forwards are dropped. Parameters are new ``nn.Parameter`` objects, so
        optimizers built before must be rebuilt.
        """
        out_keep = check_keep(out_keep, self.out_channels, f"{self.layer_name}: out_keep")
        in_keep = check_keep(in_keep, self.in_channels, f"{self.layer_name}: in_keep")
        try:
            self.spec.check(len(out_keep), len(in_keep))
        except ValueError as err:
            raise ValueError(f"{self.layer_name}: cannot keep {len(out_keep)} output and {len(in_keep)} input "
                             f"channels: {err}") from err
        device = self.weight.device
        out_idx, in_idx = out_keep.to(device), in_keep.to(device)
        self.weight = nn.Parameter(self.weight[out_idx][:, in_idx].clone())
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias[out_idx].clone())
        self.threshold = nn.Parameter(self.threshold[out_idx].clone())
        prune_batchnorm(self.gate_bn, out_idx)
        self.out_channels, self.in_channels = len(out_keep), len(in_keep)
        self._derive_partition(device)
        self.last_decisions = self.last_soft_density = self.last_soft_map = None

    def reset_parameters(self) -> None:
        """Initialise weight and bias as ``nn.Conv2d`` does."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)

    @property
    def base_fraction(self) -> float:
        """``spec.base_fraction``: fraction of input channels in the base path (read-only)."""
        return self.spec.base_fraction

    @property
    def base_layout(self) -> str:
        """``spec.base_layout``: ``"first"`` or ``"grouped"`` (read-only)."""
        return self.spec.base_layout

    @property
    def gate_group(self) -> int:
        """``spec.gate_group``: output channels sharing one decision per pixel (read-only)."""
        return self.spec.gate_group

    @property
    def gate_block(self) -> int:
        """``spec.gate_block``: side of the pixel block sharing one decision per group (read-only)."""
        return self.spec.gate_block

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **gate_kwargs: Any) -> "ChannelGatedConv2d":
        """Build a gated conv holding a copy of ``conv``'s weight and bias.

        ``gate_kwargs`` are the keyword arguments of the constructor (``spec=``
        or the settings one by one, ``alpha``, ``sparse_bp``, ...).

        Raises ``NotImplementedError`` for convs this gate cannot represent
        (groups > 1, transposed, non-zero padding modes, string padding).
        """
        reason = unsupported_reason(conv)
        if reason is not None:
            raise NotImplementedError(f"cannot gate {type(conv).__name__}: {reason}")
        gated = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            bias=conv.bias is not None,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **gate_kwargs,
        )
        with torch.no_grad():
            gated.weight.copy_(conv.weight)
            if conv.bias is not None:
                gated.bias.copy_(conv.bias)
        gated.train(conv.training)
        return gated

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
            f"bias={self.bias is not None}, spec={self.spec}, alpha={self.alpha}, sparse_bp={self.sparse_bp}"
        )

    # ----------------------------------------------------------------- forward
    def _conv(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation)

    def partial_sums(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Base partial sum ``Yp`` (bias included) and conditional sum ``Yr``."""
        if self.base_layout == "first":
            cb = base_channels(self.in_channels, self.base_fraction)
            yp = self._conv(x[:, :cb], self.weight[:, :cb], self.bias)
            if cb == self.in_channels:
                return yp, torch.zeros_like(yp)
            return yp, self._conv(x[:, cb:], self.weight[:, cb:], None)
        mask = self.base_mask[:, :, None, None].to(self.weight.dtype)
        return self._conv(x, self.weight * mask, self.bias), self._conv(x, self.weight * (1 - mask), None)

    def gate_statistic(self, yp: torch.Tensor) -> torch.Tensor:
        """What each decision thresholds at 0: ``block_mean(z, gate_block)`` ``[N, G, OH, OW]``, float32 or wider.

        ``z[n, j, h, w] = mean_{c in j}(BN_gate(Yp)_c - Δ_c)``, averaged over
        the pixel's gate block (``kernels.partition.block_mean``; ``z`` itself
        for ``gate_block = 1``).
        """
        dtype = torch.promote_types(yp.dtype, torch.float32)
        s = self.gate_bn(yp.to(dtype)) - self.threshold.to(dtype)[None, :, None, None]
        z = group_sum(s, self.gate_group) / self._group_size.to(dtype)[None, :, None, None]
        return block_mean(z, self.gate_block)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(OH, OW)`` for an ``H x W`` input (``kernels.conv_output_size``); ``ValueError`` if either is < 1."""
        out_hw = tuple(
            conv_output_size(size, k, s, p, d)
            for size, k, s, p, d in zip((height, width), self.kernel_size, self.stride, self.padding, self.dilation)
        )
        if min(out_hw) < 1:
            raise ValueError(
                f"{self.layer_name}: input spatial size {(height, width)} is too small for kernel_size "
                f"{self.kernel_size} with padding {self.padding} and dilation {self.dilation} (output {out_hw})"
            )
        return out_hw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_conv_input(self.layer_name, x, self.in_channels, self.weight.dtype)
        self.output_size(x.shape[2], x.shape[3])
        if self.force_open:
            y = self._conv(x, self.weight, self.bias)
            self.last_forced_open = True
            self.last_decisions = torch.ones(
                y.shape[0], self.num_groups, y.shape[2], y.shape[3], dtype=torch.bool, device=y.device
            )
            self.last_soft_density = None
            self.last_soft_map = None
            return y
        self.last_forced_open = False
        yp, yr = self.partial_sums(x)
        z = self.gate_statistic(yp)
        hard = (z > 0).to(z.dtype)
        if torch.is_grad_enabled():
            soft = torch.sigmoid(self.alpha * z)
            surrogate = soft - soft.detach()
            # Per-sample executed fraction of the conditional MACs, exact in the
            # forward and with the sigmoid slope backward (straight-through),
            # for the budget loss; never sparsified so it can reopen gates.
            self.last_soft_density = torch.einsum(
                "ngxy,g->n", hard + surrogate, self._group_weight.to(z.dtype)
            ) / (z.shape[2] * z.shape[3])
            decisions = hard + (surrogate * hard if self.sparse_bp else surrogate)
            self.last_soft_map = soft  # [N, G, OH, OW], for the coherence loss
        else:
            decisions = hard
            self.last_soft_density = None
            self.last_soft_map = None
        self.last_decisions = hard.detach().bool()
        return yp + mask_groups(yr, decisions, self.gate_group)

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def folded_gate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel affine ``(a, b)`` (``[C_out]``, float32 or the weight dtype if wider) of the raw partial sum.

        With the gate BatchNorm's running statistics, the eval-mode decision is
        ``group_sum(a * Yp + b) > 0`` where ``Yp`` includes the bias. Raises
        ``ValueError`` when the gate BatchNorm tracks no running statistics.
        """
        bn = self.gate_bn
        if bn.running_var is None or bn.running_mean is None:
            raise ValueError(f"{self.layer_name}: gate_bn, the gate BatchNorm, tracks no running statistics")
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        inv_std = torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
        shift = -bn.running_mean.to(dtype) * inv_std - self.threshold.to(dtype)
        return inv_std, shift

    def density(self) -> float:
        """Fraction of (sample, group, pixel) decisions that were on in the last forward."""
        if self.last_decisions is None:
            raise RuntimeError(f"{self.layer_name}: no forward has run yet")
        return float(self.last_decisions.float().mean()) if self.last_decisions.numel() else 0.0


def total_variation(soft_map: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertically and horizontally neighbouring pixels of ``[N, G, H, W]``.

    ``(sum |m[h+1, w] - m[h, w]| + sum |m[h, w+1] - m[h, w]|) / (number of such
    pairs)``, a scalar in the map's dtype (0 for a map without neighbours).
    On a gate's soft map ``sigmoid(alpha * zb)`` it is the coherence loss:
    low when neighbouring pixels decide alike.
    """
    vertical = (soft_map[..., 1:, :] - soft_map[..., :-1, :]).abs()
    horizontal = (soft_map[..., :, 1:] - soft_map[..., :, :-1]).abs()
    pairs = vertical.numel() + horizontal.numel()
    if pairs == 0:
        return soft_map.sum() * 0.0
    return (vertical.sum() + horizontal.sum()) / pairs


def _gate_spec(spec: GateSpec | None, **settings: Any) -> GateSpec:
    """``spec``, or the :class:`GateSpec` of the settings given one by one (``None`` = not given).

    ``TypeError`` for a ``spec`` that is not a ``GateSpec``; ``ValueError`` when
    both a spec and a setting are given; a bad setting raises as ``GateSpec``
    does, naming ``ChannelGatedConv2d.<field>``.
    """
    given = {name: value for name, value in settings.items() if value is not None}
    if spec is None:
        return GateSpec.of("ChannelGatedConv2d", **given)
    if not isinstance(spec, GateSpec):
        raise TypeError(f"ChannelGatedConv2d: spec must be a kernels.GateSpec, got {type(spec).__name__}")
    if given:
        raise ValueError(
            f"ChannelGatedConv2d: give the gate settings either as spec= or one by one, not both "
            f"(got spec={spec} and {', '.join(f'{k}={v!r}' for k, v in given.items())})"
        )
    return spec


def _check_channels(in_channels: object, out_channels: object) -> None:
    """``TypeError`` for non-int channel counts, ``ValueError`` for counts below 1."""
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"ChannelGatedConv2d: {name} must be an int, got {type(value).__name__}")
    if in_channels < 1 or out_channels < 1:
        raise ValueError(
            f"ChannelGatedConv2d needs positive channel counts, got in_channels={in_channels}, "
            f"out_channels={out_channels}"
        )


def check_conv_input(layer: str, x: object, in_channels: int, weight_dtype: torch.dtype) -> None:
    """Raise a clear error naming ``layer`` unless ``x`` is a batched NCHW float input it can take.

    ``ValueError`` for a wrong rank or channel count, ``TypeError`` for a
    non-tensor, a non-floating dtype, or a dtype that differs from the weight's
    (allowed under autocast).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{layer}: expected a Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{layer}: expected a 4-D input [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{layer}: expected {in_channels} input channels, got {x.shape[1]} (input shape {tuple(x.shape)})"
        )
    if not x.is_floating_point():
        raise TypeError(f"{layer}: expected a floating-point input, got {x.dtype}")
    if x.dtype != weight_dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{layer}: input dtype {x.dtype} does not match weight dtype {weight_dtype}")


def unsupported_reason(conv: nn.Module) -> str | None:
    """Why ``conv`` cannot become a ``ChannelGatedConv2d``, or ``None`` if it can."""
    if getattr(conv, "transposed", False):
        return "transposed convolutions are not supported"
    if not isinstance(conv, nn.Conv2d):
        return f"{type(conv).__name__} is not an nn.Conv2d"
    if conv.groups != 1:
        return f"groups={conv.groups} (only groups=1 is supported)"
    if conv.padding_mode != "zeros":
        return f"padding_mode={conv.padding_mode!r} (only 'zeros' is supported)"
    if isinstance(conv.padding, str):
        return f"padding={conv.padding!r} (only explicit integer padding is supported)"
    return None
