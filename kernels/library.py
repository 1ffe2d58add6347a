"""The dense and gated kernels as registered PyTorch ops, and the public wrappers over them (``docs/design.md#registered-ops``).

The channel-sparse op follows the same pattern in :mod:`kernels.channel_sparse_op`.
Three ``torch.library.custom_op``s in the ``gating`` namespace, opaque to
``torch.compile`` and ``torch.export`` (one graph node each)::

    gating::conv2d(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation,
                   Tensor? scale, Tensor? shift, Tensor? residual, bool relu) -> Tensor
    gating::gated_conv2d(Tensor x, Tensor weight, Tensor gate_scale, Tensor gate_shift,
                         float base_fraction, str base_layout, int gate_group, int gate_block,
                         int[2] stride, int[2] padding, int[2] dilation,
                         Tensor? scale, Tensor? shift, Tensor? residual, bool relu,
                         Tensor? decisions, bool count_work) -> (Tensor, Tensor, Tensor)
    gating::channel_sparse_conv2d(Tensor x, Tensor weight, Tensor out_mask, Tensor? in_mask,
                                  int[2] stride, int[2] padding, int[2] dilation,
                                  Tensor? scale, Tensor? shift, Tensor? residual, bool relu,
                                  int block, bool count_work) -> (Tensor, Tensor)

``weight`` is ``[C_out, C_in, kh, kw]`` (any strides; the ``PackedWeight.unpack()``
view reaches the Triton kernel without a copy). Outputs are always fresh
tensors, never an input: ``out`` channels_last; the gated op's ``decisions``
bool ``[N, G, OH, OW]`` channels_last (a copy of the given ones, if any) and
``counters`` int64 ``[9]`` with ``count_work`` (:mod:`kernels.work`), else int64 ``[0]``;
the channel-sparse op's ``counters`` int64 ``[8]`` with ``count_work``
(``CHANNEL_SPARSE_FIELDS``, :mod:`kernels.channel_sparse_reference`), else int64 ``[0]``.

* Default implementation (CPU, and any device where Triton is missing): the
  references of :mod:`kernels.reference` and
  :mod:`kernels.channel_sparse_reference` (the channel-sparse op's counters
  are the ones the Triton kernel reports for the same masks, predicted from
  the masks).
* CUDA implementation (when Triton is installed): the Triton launch functions
  :func:`kernels.conv2d.conv2d` / :func:`kernels.gated_conv2d.gated_conv2d` /
  :func:`kernels.channel_sparse_conv2d.channel_sparse_conv2d`, launched under
  ``torch.cuda.device(x.device)``.
* Fake implementation: the same checks (:mod:`kernels._validation`, so the
  same exception type and message), then empty outputs of the right shape,
  dtype and strides; no kernel, no cached tensors.
* FLOP formulas (``torch.utils.flop_counter``): dense ``2 * N*OH*OW*C_out*C_in*kh*kw``
  (PyTorch's own conv rule); gated ``2 * (base + conditional + gate)`` MACs of
  :mod:`kernels.work`, the conditional term read from the decisions the op
  returned (with fake or meta outputs, whose values cannot be read, every
  decision is taken as on: an upper bound); the gate term only when the op
  computed the decisions; channel-sparse ``2 * sum_n kept_out_n * active_in_n *
  kh*kw*OH*OW`` read from the masks (the dense count under fake or meta masks).

:func:`conv2d`, :func:`gated_conv2d` and :func:`channel_sparse_conv2d` keep the
public signatures (``PackedWeight``, int-or-pair geometry, ``groups``,
``return_stats`` -> :class:`GatedConvStats`, ``return_counters``, a given
``decisions`` returned as is), check their arguments like the ops
(``docs/design.md#exception-policy``) and call the ops; the torch dispatcher
picks the implementation from the tensors' device.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.utils.flop_counter import conv_flop_count, register_flop_formula

from ._common import PackedWeight, new_decisions, new_output, weight_4d
from ._validation import validate_conv, validate_gated
from .reference import conv2d_reference, gated_conv2d_reference
from .spec import GateSpec
from .work import (
    COUNTER_FIELDS,
    GatedConvStats,
    conditional_macs,
    conditional_per_group,
    gated_mac_terms,
    reference_counters,
)

try:
    from .conv2d import conv2d as conv2d_triton
    from .gated_conv2d import gated_conv2d as gated_conv2d_triton
except ModuleNotFoundError as error:
    if error.name != "triton":
        raise
    TRITON_AVAILABLE = False
else:
    TRITON_AVAILABLE = True

CONV2D_SCHEMA = (
    "(Tensor x, Tensor weight, int[2] stride, int[2] padding, int[2] dilation, "
    "Tensor? scale, Tensor? shift, Tensor? residual, bool relu) -> Tensor"
)
GATED_CONV2D_SCHEMA = (
    "(Tensor x, Tensor weight, Tensor gate_scale, Tensor gate_shift, "
    "float base_fraction, str base_layout, int gate_group, int gate_block, "
    "int[2] stride, int[2] padding, int[2] dilation, "
    "Tensor? scale, Tensor? shift, Tensor? residual, bool relu, Tensor? decisions, bool count_work) "
    "-> (Tensor, Tensor, Tensor)"
)
Tensor = torch.Tensor
OptTensor = torch.Tensor | None


# ------------------------------------------------------------------ dense op
@torch.library.custom_op("gating::conv2d", mutates_args=(), schema=CONV2D_SCHEMA)
def conv2d_op(
    x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool,
) -> Tensor:  # fmt: skip
    """Default implementation of ``gating::conv2d``: :func:`kernels.reference.conv2d_reference`."""
    return conv2d_reference(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
        relu=relu,
    )  # fmt: skip


@conv2d_op.register_fake
def _conv2d_fake(
    x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool,
) -> Tensor:  # fmt: skip
    geom = validate_conv(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual
    )
    return new_output(geom, x)


@register_flop_formula(torch.ops.gating.conv2d)
def _conv2d_flops(
    x_shape: torch.Size, w_shape: torch.Size, *args: object, out_shape: torch.Size, **kwargs: object
) -> int:
    """``2 * N*OH*OW*C_out*C_in*kh*kw``: PyTorch's rule for ``aten.convolution``."""
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


# ------------------------------------------------------------------ gated op
@torch.library.custom_op("gating::gated_conv2d", mutates_args=(), schema=GATED_CONV2D_SCHEMA)
def gated_conv2d_op(
    x: Tensor, weight: Tensor, gate_scale: Tensor, gate_shift: Tensor,
    base_fraction: float, base_layout: str, gate_group: int, gate_block: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, decisions: OptTensor, count_work: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    """Default implementation of ``gating::gated_conv2d``: the reference, fresh decisions, exact counters."""
    out, computed = gated_conv2d_reference(
        x, weight, gate_scale, gate_shift, base_fraction=base_fraction, base_layout=base_layout,
        gate_group=gate_group, gate_block=gate_block, stride=stride, padding=padding, dilation=dilation,
        scale=scale, shift=shift, residual=residual, relu=relu, decisions=decisions,
    )  # fmt: skip
    fresh = torch.empty(computed.shape, dtype=torch.bool, device=x.device, memory_format=torch.channels_last)
    fresh.copy_(computed)
    if not count_work:
        return out, fresh, torch.empty(0, dtype=torch.int64, device=x.device)
    kernel = (weight.shape[2], weight.shape[3])
    counters = reference_counters(fresh, out.shape, weight.shape[1], kernel, base_fraction, base_layout, gate_group)
    return out, fresh, counters


@gated_conv2d_op.register_fake
def _gated_conv2d_fake(
    x: Tensor, weight: Tensor, gate_scale: Tensor, gate_shift: Tensor,
    base_fraction: float, base_layout: str, gate_group: int, gate_block: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, decisions: OptTensor, count_work: bool,
) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
    geom = validate_gated(
        x, weight, gate_scale, gate_shift,
        base_fraction=base_fraction, base_layout=base_layout, gate_group=gate_group, gate_block=gate_block,
        decisions=decisions,
        stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
    )  # fmt: skip
    counters = torch.empty(len(COUNTER_FIELDS) if count_work else 0, dtype=torch.int64, device=x.device)
    return new_output(geom, x), new_decisions(geom, gate_group, x), counters


def values_readable(t: torch.Tensor) -> bool:
    """True when ``t``'s values can be read (not a fake tensor, not on the meta device)."""
    return not is_fake(t) and t.device.type != "meta"


@register_flop_formula(torch.ops.gating.gated_conv2d, get_raw=True)
def _gated_conv2d_flops(
    x: Tensor, weight: Tensor, gate_scale: Tensor, gate_shift: Tensor,
    base_fraction: float, base_layout: str, gate_group: int, gate_block: int,
    stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
    scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, decisions: OptTensor, count_work: bool,
    *, out_val: tuple[Tensor, Tensor, Tensor],
) -> int:  # fmt: skip
    """``2 * (base + conditional + gate)`` MACs the returned decisions imply (module docstring)."""
    out, decisions_out, _ = out_val
    kernel = (weight.shape[2], weight.shape[3])
    config = (base_fraction, base_layout, gate_group)
    base, conditional, gate = gated_mac_terms(out.shape, weight.shape[1], kernel, *config)
    if values_readable(decisions_out):
        per_group = conditional_per_group(out.shape[1], weight.shape[1], *config)
        conditional = int(conditional_macs(decisions_out, per_group, kernel))
    return 2 * (base + conditional + (0 if decisions is not None else gate))


# -------------------------------------------------------------- CUDA kernels
if TRITON_AVAILABLE:

    @conv2d_op.register_kernel("cuda")
    def _conv2d_cuda(
        x: Tensor, weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
        scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool,
    ) -> Tensor:  # fmt: skip
        return conv2d_triton(
            x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift,
            residual=residual, relu=relu,
        )  # fmt: skip

    @gated_conv2d_op.register_kernel("cuda")
    def _gated_conv2d_cuda(
        x: Tensor, weight: Tensor, gate_scale: Tensor, gate_shift: Tensor,
        base_fraction: float, base_layout: str, gate_group: int, gate_block: int,
        stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
        scale: OptTensor, shift: OptTensor, residual: OptTensor, relu: bool, decisions: OptTensor,
        count_work: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        return gated_conv2d_triton(
            x, weight, gate_scale, gate_shift, base_fraction=base_fraction, base_layout=base_layout,
            gate_group=gate_group, gate_block=gate_block, stride=stride, padding=padding, dilation=dilation,
            scale=scale, shift=shift, residual=residual, relu=relu, decisions=decisions, count_work=count_work,
        )  # fmt: skip


# ------------------------------------------------------------------ wrappers
def conv2d(
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
    """Dense 2-D convolution (groups=1) with a fused ``relu(conv(x, W)*scale + shift + residual)`` epilogue.

    Runs ``gating::conv2d``: the Triton kernel on CUDA, the reference elsewhere.

    Args:
        x: ``[N, C_in, H, W]`` floating point (float16/bfloat16/float32 on
            CUDA; any floating dtype elsewhere).
        weight: ``[C_out, C_in, kh, kw]`` in x's dtype, or a
            :class:`PackedWeight` (no per-call packing on CUDA).
        stride, padding, dilation: ints or ``(h, w)`` pairs (stride and
            dilation >= 1, padding >= 0).
        scale, shift: optional floating ``[C_out]`` per-output-channel affine
            (folded BatchNorm), applied in float32 or wider.
        residual: optional ``[N, C_out, OH, OW]`` in x's dtype, added after scale/shift.
        relu: apply ReLU last.
        groups: must be 1 (``NotImplementedError`` otherwise).

    Returns:
        A fresh ``[N, C_out, OH, OW]`` tensor in x's dtype, channels_last.
        Inference only (no autograd).

    Raises:
        ``TypeError`` / ``ValueError`` / ``NotImplementedError`` naming the
        argument, per ``docs/design.md#exception-policy``.
    """
    weight = weight_4d(weight)
    geom = validate_conv(
        x, weight, stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual,
        groups=groups,
    )  # fmt: skip
    return torch.ops.gating.conv2d(
        x, weight, list(geom.stride), list(geom.padding), list(geom.dilation), scale, shift, residual, bool(relu)
    )


def gated_conv2d(
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
) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, GatedConvStats]:
    """Partial-sum channel-gated conv (groups=1): ``relu((Yp + d*Yr)*scale + shift + residual)``.

    Runs ``gating::gated_conv2d``: the Triton kernel on CUDA (which skips the
    conditional work of gated-off tiles on device, without host sync), the
    reference elsewhere. Semantics: :func:`kernels.reference.gated_conv2d_reference`.

    Args:
        x, weight, stride, padding, dilation, scale, shift, residual, relu, groups: as :func:`conv2d`.
        gate_scale, gate_shift: floating ``[C_out]``, the gate folded to an
            affine of the base partial sum: ``d = group_sum(Yp*gate_scale + gate_shift) > 0``.
        base_fraction, base_layout: the base partition (``"first"`` or ``"grouped"``).
        gate_group: output channels per decision (int >= 1).
        gate_block: side of the square block of output pixels sharing one
            decision per gate group (int >= 1; :class:`GateSpec`): the decision
            is ``block_mean(group_sum(Yp*gate_scale + gate_shift)) > 0``
            (:func:`kernels.partition.block_mean`), stored per pixel.
        return_stats: also return a :class:`GatedConvStats` (work counted on device).
        decisions: optional bool ``[N, G, OH, OW]`` used instead of computing
            them; this same tensor is returned.

    Returns:
        ``(out, decisions)`` or ``(out, decisions, stats)``: out fresh
        ``[N, C_out, OH, OW]`` in x's dtype, channels_last; decisions bool
        ``[N, G, OH, OW]``, ``G = ceil(C_out / gate_group)`` (fresh and
        channels_last unless given). Inference only.

    Raises:
        As :func:`conv2d`, plus the gate arguments' checks
        (:func:`kernels._validation.validate_gated`).
    """
    weight = weight_4d(weight)
    geom = validate_gated(
        x, weight, gate_scale, gate_shift,
        base_fraction=base_fraction, base_layout=base_layout, gate_group=gate_group, gate_block=gate_block,
        decisions=decisions,
        stride=stride, padding=padding, dilation=dilation, scale=scale, shift=shift, residual=residual, groups=groups,
    )  # fmt: skip
    out, computed, counters = torch.ops.gating.gated_conv2d(
        x, weight, gate_scale, gate_shift, float(base_fraction), base_layout, gate_group, gate_block,
        list(geom.stride), list(geom.padding), list(geom.dilation), scale, shift, residual, bool(relu),
        decisions, bool(return_stats),
    )  # fmt: skip
    result = computed if decisions is None else decisions
    return (out, result, GatedConvStats(counters)) if return_stats else (out, result)
