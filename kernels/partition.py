"""Channel partitions shared by the gate modules, the kernels and accounting.

Everything that must agree on *which* input channels form the base path of an
output channel, and *which* output channels share one gate decision, reads it
from here (see ``docs/design.md#partial-sum-gate`` and
``docs/design.md#decisions-layout``). Pure PyTorch; no Triton. The checks and
sizes (:func:`check_partition`, :func:`base_sizes`) build no tensors, so the
registered ops' fake implementations can use them. :func:`check_fraction`,
:func:`check_layout` and :func:`check_gate_group` are the rules of the three
gate settings; :class:`kernels.spec.GateSpec` holds the settings and applies them.

Base layouts (``base_fraction = 1/p``):

* ``"first"``: every output channel reads the first
  ``base_channels(C_in, base_fraction)`` input channels in its base path.
* ``"grouped"``: block diagonal with ``p`` chunks; output chunk ``i``
  (channels ``[i*C_out//p, (i+1)*C_out//p)``) reads input chunk ``i``
  (channels ``[i*C_in//p, (i+1)*C_in//p)``) in its base path. ``1/base_fraction``
  must be an integer no larger than ``C_in`` or ``C_out``.

Gate groups: output channels ``[j*g, min((j+1)*g, C_out))`` share decision
``j``; there are ``ceil(C_out / g)`` groups, the last one possibly smaller.

Gate blocks: with ``gate_block = b > 1`` the output pixels are tiled into
``b x b`` blocks from the top-left corner (edge blocks are cut off by the
map's border, and a block larger than the map covers all of it); every pixel
of a block takes the decision of the block's mean gate statistic
(:func:`block_mean`). Decisions stay stored per pixel.
"""

from __future__ import annotations

import math

import torch

BASE_LAYOUTS = ("first", "grouped")


def check_fraction(base_fraction: float, name: str = "base_fraction") -> None:
    """``TypeError`` unless ``base_fraction`` is a real number (bool excluded), ``ValueError`` unless in (0, 1].

    ``name`` is the argument the messages name (e.g. ``"GateSpec.base_fraction"``).
    """
    if isinstance(base_fraction, bool) or not isinstance(base_fraction, (int, float)):
        raise TypeError(f"{name} must be a float, got {base_fraction!r} ({type(base_fraction).__name__})")
    if not (0.0 < float(base_fraction) <= 1.0):
        raise ValueError(f"{name} must be in (0, 1], got {base_fraction!r}")


def check_layout(base_layout: str, name: str = "base_layout") -> None:
    """``TypeError`` unless ``base_layout`` is a str, ``ValueError`` unless it is one of :data:`BASE_LAYOUTS`."""
    if not isinstance(base_layout, str):
        raise TypeError(f"{name} must be a str, got {base_layout!r} ({type(base_layout).__name__})")
    if base_layout not in BASE_LAYOUTS:
        raise ValueError(f"{name} must be one of {BASE_LAYOUTS}, got {base_layout!r}")


def check_gate_group(gate_group: int, name: str = "gate_group") -> None:
    """``TypeError`` unless ``gate_group`` is an int (bool excluded), ``ValueError`` unless it is >= 1."""
    if isinstance(gate_group, bool) or not isinstance(gate_group, int):
        raise TypeError(f"{name} must be an int, got {gate_group!r} ({type(gate_group).__name__})")
    if gate_group < 1:
        raise ValueError(f"{name} must be a positive int, got {gate_group!r}")


def check_gate_block(gate_block: int, name: str = "gate_block") -> None:
    """``TypeError`` unless ``gate_block`` is an int (bool excluded), ``ValueError`` unless it is >= 1."""
    if isinstance(gate_block, bool) or not isinstance(gate_block, int):
        raise TypeError(f"{name} must be an int, got {gate_block!r} ({type(gate_block).__name__})")
    if gate_block < 1:
        raise ValueError(f"{name} must be a positive int (1 = one decision per pixel), got {gate_block!r}")


def base_channels(in_channels: int, base_fraction: float) -> int:
    """Number of base input channels in the ``"first"`` layout.

    ``max(1, round(in_channels * base_fraction))``, so every output has a
    non-empty base path.
    """
    check_fraction(base_fraction)
    return max(1, min(in_channels, int(round(in_channels * base_fraction))))


def chunk_count(base_fraction: float, name: str = "base_fraction") -> int:
    """Number of block-diagonal chunks ``p = 1/base_fraction`` of ``"grouped"``.

    Raises like :func:`check_fraction`, and ``ValueError`` if ``1/base_fraction``
    is not (close to) an integer; the messages name ``name``.
    """
    check_fraction(base_fraction, name)
    p = round(1.0 / base_fraction)
    if abs(p * base_fraction - 1.0) > 1e-6:
        raise ValueError(f"base_layout='grouped' needs {name} = 1/p for an integer p, got {base_fraction!r}")
    return int(p)


def chunk_bounds(channels: int, chunks: int) -> list[int]:
    """Boundaries ``[0, b1, ..., channels]`` splitting ``channels`` into ``chunks`` parts."""
    return [i * channels // chunks for i in range(chunks + 1)]


def check_partition(out_channels: int, in_channels: int, base_fraction: float, layout: str) -> None:
    """Raise unless ``(base_fraction, layout)`` partitions ``in_channels`` inputs of ``out_channels`` outputs.

    ``TypeError`` for a non-string layout or a non-numeric base_fraction;
    ``ValueError`` for an unknown layout, a base_fraction outside (0, 1], or a
    ``"grouped"`` layout whose ``p = 1/base_fraction`` is not an integer no
    larger than ``in_channels`` and ``out_channels``. Builds no tensors.
    """
    check_layout(layout)
    if layout == "first":
        check_fraction(base_fraction)
        return
    p = chunk_count(base_fraction)
    if p > in_channels or p > out_channels:
        raise ValueError(
            f"base_layout='grouped' with p={p} chunks needs at least {p} input and output "
            f"channels, got in_channels={in_channels}, out_channels={out_channels}"
        )


def base_sizes(out_channels: int, in_channels: int, base_fraction: float, layout: str) -> list[int]:
    """``|B_c|``: the number of base input channels of each output channel (``base_mask(...).sum(1)``).

    Pure Python (no tensors); validates like :func:`check_partition`.
    """
    check_partition(out_channels, in_channels, base_fraction, layout)
    if layout == "first":
        return [base_channels(in_channels, base_fraction)] * out_channels
    p = chunk_count(base_fraction)
    ob, ib = chunk_bounds(out_channels, p), chunk_bounds(in_channels, p)
    return [ib[i + 1] - ib[i] for i in range(p) for _ in range(ob[i], ob[i + 1])]


def base_mask(
    out_channels: int,
    in_channels: int,
    base_fraction: float,
    layout: str,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Base-path mask ``B`` of shape ``[out_channels, in_channels]``, dtype bool.

    ``B[o, i]`` is True when input channel ``i`` is in the base partial sum of
    output channel ``o``. See the module docstring for the layouts.
    """
    check_partition(out_channels, in_channels, base_fraction, layout)
    mask = torch.zeros(out_channels, in_channels, dtype=torch.bool, device=device)
    if layout == "first":
        mask[:, : base_channels(in_channels, base_fraction)] = True
        return mask
    p = chunk_count(base_fraction)
    ob, ib = chunk_bounds(out_channels, p), chunk_bounds(in_channels, p)
    for i in range(p):
        mask[ob[i] : ob[i + 1], ib[i] : ib[i + 1]] = True
    return mask


def gate_group_count(out_channels: int, gate_group: int) -> int:
    """Number of gate decisions per pixel: ``ceil(out_channels / gate_group)``.

    ``TypeError`` for a gate_group that is not an int (bool included),
    ``ValueError`` for one below 1.
    """
    check_gate_group(gate_group)
    return math.ceil(out_channels / gate_group)


def group_index(out_channels: int, gate_group: int, device: torch.device | str | None = None) -> torch.Tensor:
    """``[out_channels]`` int64: the gate group of each output channel (``c // gate_group``)."""
    gate_group_count(out_channels, gate_group)
    return torch.arange(out_channels, device=device) // gate_group


def group_sizes(out_channels: int, gate_group: int) -> list[int]:
    """Channels in each gate group (all ``gate_group`` but possibly the last)."""
    groups = gate_group_count(out_channels, gate_group)
    return [min(gate_group, out_channels - j * gate_group) for j in range(groups)]


def expand_groups(decisions: torch.Tensor, out_channels: int, gate_group: int) -> torch.Tensor:
    """Expand per-group decisions ``[N, G, H, W]`` to per-channel ``[N, out_channels, H, W]``."""
    if decisions.dim() != 4 or decisions.shape[1] != gate_group_count(out_channels, gate_group):
        raise ValueError(
            f"decisions must be [N, {gate_group_count(out_channels, gate_group)}, H, W], "
            f"got {tuple(decisions.shape)}"
        )
    return decisions.index_select(1, group_index(out_channels, gate_group, decisions.device))


def mask_groups(per_channel: torch.Tensor, decisions: torch.Tensor, gate_group: int) -> torch.Tensor:
    """``per_channel * expand_groups(decisions)``: ``[N, C, H, W]`` scaled by its group's ``[N, G, H, W]`` value.

    Broadcasts over a ``[N, G, gate_group, H, W]`` view when ``gate_group``
    divides ``C`` (no per-channel copy of the decisions is made, forward or
    backward); otherwise expands them. The result has ``per_channel``'s dtype.
    """
    n, c, h, w = per_channel.shape
    groups = gate_group_count(c, gate_group)
    if decisions.shape != (n, groups, h, w):
        raise ValueError(f"decisions must be [{n}, {groups}, {h}, {w}], got {tuple(decisions.shape)}")
    decisions = decisions.to(per_channel.dtype)
    if c % gate_group:
        return per_channel * expand_groups(decisions, c, gate_group)
    grouped = per_channel.reshape(n, c // gate_group, gate_group, h, w) * decisions[:, :, None]
    return grouped.reshape(n, c, h, w)


def group_sum(per_channel: torch.Tensor, gate_group: int) -> torch.Tensor:
    """Sum ``[N, C, H, W]`` over the channels of each gate group -> ``[N, G, H, W]``."""
    n, c, h, w = per_channel.shape
    groups = gate_group_count(c, gate_group)
    pad = groups * gate_group - c
    if pad:
        per_channel = torch.nn.functional.pad(per_channel, (0, 0, 0, 0, 0, pad))
    return per_channel.reshape(n, groups, gate_group, h, w).sum(dim=2)


def block_mean(per_pixel: torch.Tensor, gate_block: int) -> torch.Tensor:
    """Each pixel's ``gate_block x gate_block`` block mean of ``per_pixel`` ``[N, G, H, W]``, at pixel resolution.

    Blocks tile the map from the top-left corner; an edge block averages only
    the pixels inside the map, and a block larger than the map covers all of
    it. Returns ``per_pixel`` itself for ``gate_block = 1``, else a fresh
    ``[N, G, H, W]`` tensor in its dtype, constant over each block.
    Differentiable: the gradient of a block's value spreads evenly over its
    pixels.
    """
    check_gate_block(gate_block)
    if gate_block == 1:
        return per_pixel
    height, width = per_pixel.shape[-2:]
    # No padding, so every window's divisor is the number of its pixels inside the map.
    pooled = torch.nn.functional.avg_pool2d(per_pixel, gate_block, gate_block, ceil_mode=True)
    rows = pooled.repeat_interleave(gate_block, dim=-2)[..., :height, :]
    return rows.repeat_interleave(gate_block, dim=-1)[..., :width]
