"""PyTorch references of the Triton kernels: the spec they are tested against.

Same signatures as :func:`kernels.conv2d` and :func:`kernels.gated_conv2d`, on
any device and dtype (float64 on CPU included), through
``torch.nn.functional.conv2d``; they are the default (CPU) implementations of
the registered ops (``docs/design.md#registered-ops``). The convolutions run in x's
dtype; everything after them (gate statistic, blend, scale/shift, residual,
ReLU) runs in ``promote_types(x.dtype, float32)`` and the result is cast back to
x's dtype once, as the kernels do. Outputs are channels_last like the kernels'.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import partition
from ._common import PackedWeight, weight_4d
from ._validation import ConvGeometry, validate_conv, validate_gated
from .spec import GateSpec


def _conv(x: torch.Tensor, weight: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    return F.conv2d(x, weight, None, geom.stride, geom.padding, geom.dilation)


def _per_channel(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return v.to(dtype)[None, :, None, None]


def _epilogue(
    y: torch.Tensor,
    out_dtype: torch.dtype,
    scale: torch.Tensor | None,
    shift: torch.Tensor | None,
    residual: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    """``relu(y*scale + shift + residual)`` in y's dtype, then cast to ``out_dtype`` into a fresh channels_last tensor.

    The result has exactly the strides of ``torch.empty(..., memory_format=torch.channels_last)``,
    like the kernels' outputs and the ops' fake outputs.
    """
    if scale is not None:
        y = y * _per_channel(scale, y.dtype)
    if shift is not None:
        y = y + _per_channel(shift, y.dtype)
    if residual is not None:
        y = y + residual.to(y.dtype)
    if relu:
        y = torch.relu(y)
    out = torch.empty(y.shape, dtype=out_dtype, device=y.device, memory_format=torch.channels_last)
    return out.copy_(y)


def conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    *,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    groups: int = 1,
) -> torch.Tensor:
    """Reference of :func:`kernels.conv2d`: ``relu(conv(x, W)*scale + shift + residual)``.

    x ``[N, C_in, H, W]``, weight ``[C_out, C_in, kh, kw]`` (or a PackedWeight),
    same dtype; scale/shift ``[C_out]``; residual ``[N, C_out, OH, OW]``.
    Returns ``[N, C_out, OH, OW]`` in x's dtype, channels_last. Raises like
    :func:`kernels.conv2d` (``docs/design.md#exception-policy``).
    """
    weight = weight_4d(weight)
    geom = validate_conv(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
        groups=groups,
    )
    acc = torch.promote_types(x.dtype, torch.float32)
    y = _conv(x, weight, geom).to(acc)
    return _epilogue(y, x.dtype, scale, shift, residual, relu)


def gated_conv2d_reference(
    x: torch.Tensor,
    weight: torch.Tensor | PackedWeight,
    gate_scale: torch.Tensor,
    gate_shift: torch.Tensor,
    *,
    base_fraction: float = GateSpec.base_fraction,
    base_layout: str = GateSpec.base_layout,
    gate_group: int = GateSpec.gate_group,
    gate_block: int = GateSpec.gate_block,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    scale: torch.Tensor | None = None,
    shift: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    relu: bool = False,
    groups: int = 1,
    return_stats: bool = False,
    decisions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, None]:
    """Reference of :func:`kernels.gated_conv2d`, literally the partial-sum gate of ``docs/design.md#partial-sum-gate``.

    * ``B = partition.base_mask(C_out, C_in, base_fraction, base_layout)``
    * ``Yp = conv(x, W*B)``, ``Yr = conv(x, W*(1-B))``
    * ``z = Yp*gate_scale + gate_shift`` (per output channel)
    * ``decisions = partition.block_mean(partition.group_sum(z, gate_group), gate_block) > 0``:
      bool ``[N, G, OH, OW]``, ``G = ceil(C_out / gate_group)``, constant over
      each ``gate_block x gate_block`` block; a given ``decisions`` replaces this step
      (``gate_scale``/``gate_shift`` are then only validated)
    * ``out = relu((Yp + expand_groups(decisions)*Yr)*scale + shift + residual)``

    Returns ``(out, decisions)``, or ``(out, decisions, None)`` with
    ``return_stats``: the reference runs no tiles, so it has no kernel stats
    (the registered op's CPU implementation counts the exact work instead, see
    :mod:`kernels.work`). ``out`` is ``[N, C_out, OH, OW]`` in x's dtype,
    channels_last; a given ``decisions`` is returned as is.
    """
    weight = weight_4d(weight)
    geom = validate_gated(
        x, weight, gate_scale, gate_shift,
        base_fraction=base_fraction, base_layout=base_layout, gate_group=gate_group, gate_block=gate_block,
        decisions=decisions, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual, groups=groups,
    )  # fmt: skip
    w = weight
    base = partition.base_mask(geom.out_channels, geom.in_channels, base_fraction, base_layout, x.device)
    base = base.to(w.dtype)[:, :, None, None]
    acc = torch.promote_types(x.dtype, torch.float32)
    y_base = _conv(x, w * base, geom).to(acc)
    y_cond = _conv(x, w * (1 - base), geom).to(acc)
    if decisions is None:
        z = y_base * _per_channel(gate_scale, acc) + _per_channel(gate_shift, acc)
        decisions = partition.block_mean(partition.group_sum(z, gate_group), gate_block) > 0
    on = partition.expand_groups(decisions, geom.out_channels, gate_group).to(acc)
    out = _epilogue(y_base + on * y_cond, x.dtype, scale, shift, residual, relu)
    return (out, decisions, None) if return_stats else (out, decisions)
