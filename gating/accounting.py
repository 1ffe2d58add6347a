"""Exact counts of the work a (gated) network does for one batch (``docs/design.md#accounting``).

Counted layers are the ones ``torch.utils.flop_counter.FlopCounterMode``
counts in a CNN: every convolution (``nn.Conv1d/2d/3d``, transposed too,
``ChannelGatedConv2d``) and every ``nn.Linear``. Normalisation, activation,
pooling and residual adds are taken as fused into the epilogues of these
layers and not counted. FLOPs = 2 x MACs.

MACs (per layer, batch ``N``, output ``[N, C_out, OH, OW]``, kernel
``kh x kw``, input channels ``C_in``, ``g`` groups)::

    conv dense      = N * OH * OW * C_out * (C_in / g) * kh * kw
    conv transposed = N * H * W * C_in * (C_out / g) * kh * kw      (input positions)
    linear          = (input.numel() / in_features) * in_features * out_features

For a ``ChannelGatedConv2d`` with base mask ``B`` (``|B_c|`` base input
channels of output ``c``) and decisions ``d[n, j, oh, ow]``::

    base        = N * OH * OW * sum_c |B_c| * kh * kw
    conditional = sum_{n, j, oh, ow} d[n, j, oh, ow] * sum_{c in j} (C_in - |B_c|) * kh * kw
    gate        = N * OH * OW * C_out      (one multiply-add per output element:
                                            a_c * Yp + b_c summed into the group)
    executed    = base + conditional + gate

(these MAC terms are ``kernels.work``'s rule, which the ``gating::gated_conv2d``
op's FLOP formula uses too, so ``FlopCounterMode`` over a folded layer reports
2x the ``macs_executed`` counted here)

Bytes (device memory traffic; ``e`` = element size of the activation dtype,
``e_w`` of the weights; each element is read once per use, tiles never
re-read; decisions are stored as 1 byte each)::

    dense    = weights * e_w + bias * e_w + N*C_in*H*W * e + N*C_out*OH*OW * e
    gated    = base weights * e_w + sum_{groups j on anywhere in the batch} conditional weights of j * e_w
             + bias * e_w + 2 * C_out * 4                       (folded gate scale/shift, fp32)
             + N * |union_c B_c| * H * W * e                    (base inputs, read in full)
             + conditional input elements * e                   (below)
             + N*C_out*OH*OW * e                                (outputs, all written)
             + N * G * OH * OW                                  (decisions written)

A conditional input element ``x[n, i, ih, iw]`` is read when some output
position whose receptive field holds ``(ih, iw)`` has an active decision for a
group that reads channel ``i`` conditionally. A layer run with its gates
forced open (``GatedModel.open_gates``) is counted as the dense conv it
computes.

For a ``RuntimeGatedConv2d`` with kept output channels ``m[n, c]`` and input
channels that are not all zero ``a[n, i]`` (the previous layer's pruned
channels), the saving compounds::

    conv      = sum_n |m_n| * |a_n| * OH * OW * kh * kw
    predictor = N * C_in * C_out                  (the FC after global pooling)
    executed  = conv + predictor                  (dense: the conv alone)
    bytes     = kept-anywhere x active-anywhere weights * e_w + bias, BatchNorm
                and predictor parameters * e_w + sum_n |a_n| * H * W * e
                + N*C_out*OH*OW * e (zeros written too) + N * C_out (masks)
"""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kernels import COUNTER_FIELDS, conv_input_span, gated_kernel_counters
from kernels.partition import base_sizes, group_index
from kernels.work import conditional_macs, conditional_per_group
from kernels.work import gated_mac_terms as _kernel_mac_terms

from .gates import ChannelGatedConv2d, RuntimeGatedConv2d
from .gates.runtime import channel_macs, predictor_macs

COUNTED_TYPES = (nn.modules.conv._ConvNd, nn.Linear, ChannelGatedConv2d, RuntimeGatedConv2d)
GATE_KINDS = ("gated", "runtime")


@dataclass
class LayerCount:
    """Counts of one layer call. MACs are multiply-accumulates; bytes are bytes."""

    name: str
    kind: str  # "gated" (partial-sum gate), "runtime" (runtime channel gate), "conv" or "linear"
    macs_dense: int
    macs_executed: int
    bytes_dense: int
    bytes_executed: int
    gate_macs: int = 0
    decisions_on: int = 0  # gated layers: (sample, group, pixel) decisions on; runtime: (sample, channel) kept
    decisions_total: int = 0  # gated layers: all decisions; runtime: N * C_out
    conditional_macs: int = 0  # gated layers: the conditional part of macs_executed
    kernel_conditional_macs: int = 0  # gated layers: conditional MACs the Triton kernel runs (tile-rounded)

    @property
    def kernel_overhead(self) -> float | None:
        """``kernel_conditional_macs / conditional_macs``: the gated kernel's conditional work over the exact work.

        ``None`` for layers without a gate or with no conditional work.
        """
        if self.kind != "gated" or not self.conditional_macs:
            return None
        return self.kernel_conditional_macs / self.conditional_macs

    @property
    def density(self) -> float | None:
        """Fraction of decisions on (runtime gates: of channels kept); ``None`` for layers without a gate."""
        if self.kind not in GATE_KINDS:
            return None
        return self.decisions_on / self.decisions_total if self.decisions_total else 0.0

    def __add__(self, other: "LayerCount") -> "LayerCount":
        if (self.name, self.kind) != (other.name, other.kind):
            raise ValueError(f"cannot add counts of {self.name!r} and {other.name!r}")
        return LayerCount(
            self.name,
            self.kind,
            *(getattr(self, f) + getattr(other, f) for f in _SUMMED_FIELDS),
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "density": self.density, "kernel_overhead": self.kernel_overhead}


_SUMMED_FIELDS = (
    "macs_dense",
    "macs_executed",
    "bytes_dense",
    "bytes_executed",
    "gate_macs",
    "decisions_on",
    "decisions_total",
    "conditional_macs",
    "kernel_conditional_macs",
)


@dataclass
class Report:
    """Per-layer and total counts for the last forward of a model."""

    layers: list[LayerCount] = field(default_factory=list)

    @property
    def macs_dense(self) -> int:
        return sum(layer.macs_dense for layer in self.layers)

    @property
    def macs_executed(self) -> int:
        return sum(layer.macs_executed for layer in self.layers)

    @property
    def bytes_dense(self) -> int:
        return sum(layer.bytes_dense for layer in self.layers)

    @property
    def bytes_executed(self) -> int:
        return sum(layer.bytes_executed for layer in self.layers)

    @property
    def macs_reduction(self) -> float:
        """``macs_dense / macs_executed`` (>1 means fewer MACs executed)."""
        return self.macs_dense / self.macs_executed if self.macs_executed else math.inf

    @property
    def bytes_reduction(self) -> float:
        return self.bytes_dense / self.bytes_executed if self.bytes_executed else math.inf

    @property
    def kernel_overhead(self) -> float | None:
        """Gated layers' conditional MACs as the Triton kernel runs them over the exact ones; ``None`` without any."""
        exact = sum(layer.conditional_macs for layer in self.layers if layer.kind == "gated")
        kernel = sum(layer.kernel_conditional_macs for layer in self.layers if layer.kind == "gated")
        return kernel / exact if exact else None

    def to_dict(self) -> dict:
        return {
            "kernel_overhead": self.kernel_overhead,
            "macs_dense": self.macs_dense,
            "macs_executed": self.macs_executed,
            "bytes_dense": self.bytes_dense,
            "bytes_executed": self.bytes_executed,
            "macs_reduction": self.macs_reduction,
            "bytes_reduction": self.bytes_reduction,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def __add__(self, other: "Report") -> "Report":
        """Counts of two runs of the same network (e.g. two batches), layer by layer."""
        if len(self.layers) != len(other.layers):
            raise ValueError("cannot add reports of different networks")
        return Report([a + b for a, b in zip(self.layers, other.layers)])

    def table(self) -> str:
        """A fixed-width text table, one row per layer plus the total."""
        head = f"{'layer':<28} {'kind':<7} {'density':>7} {'MMACs dense':>12} {'MMACs exec':>11} {'KB dense':>10} {'KB exec':>10}"
        rows = [head, "-" * len(head)]
        for layer in self.layers:
            density = "" if layer.density is None else f"{layer.density:.3f}"
            rows.append(
                f"{layer.name[-28:]:<28} {layer.kind:<7} {density:>7} {layer.macs_dense / 1e6:>12.3f} "
                f"{layer.macs_executed / 1e6:>11.3f} {layer.bytes_dense / 1e3:>10.1f} {layer.bytes_executed / 1e3:>10.1f}"
            )
        rows.append("-" * len(head))
        rows.append(
            f"{'total':<28} {'':<6} {'':>7} {self.macs_dense / 1e6:>12.3f} {self.macs_executed / 1e6:>11.3f} "
            f"{self.bytes_dense / 1e3:>10.1f} {self.bytes_executed / 1e3:>10.1f}"
        )
        rows.append(
            f"MAC reduction {self.macs_reduction:.2f}x, memory-traffic reduction {self.bytes_reduction:.2f}x"
        )
        if self.kernel_overhead is not None:
            rows.append(
                f"the gated Triton kernel would run {self.kernel_overhead:.2f}x the exact conditional MACs "
                "(whole tiles on these decisions)"
            )
        return "\n".join(rows)


# --------------------------------------------------------------------- dense
def conv_macs(module: nn.modules.conv._ConvNd | ChannelGatedConv2d, inp: torch.Size, out: torch.Size) -> int:
    """Dense MACs of one convolution call (formulas in the module docstring)."""
    kernel = math.prod(module.kernel_size)
    groups = getattr(module, "groups", 1)
    if getattr(module, "transposed", False):
        return inp[0] * math.prod(inp[2:]) * module.in_channels * (module.out_channels // groups) * kernel
    return out[0] * math.prod(out[2:]) * module.out_channels * (module.in_channels // groups) * kernel


def linear_macs(module: nn.Linear, inp: torch.Size) -> int:
    rows = math.prod(inp) // module.in_features
    return rows * module.in_features * module.out_features


def _param_bytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def dense_count(name: str, module: nn.Module, inp: torch.Size, out: torch.Size, elem: int) -> LayerCount:
    """Counts of a layer run densely; ``elem`` is the activation element size."""
    if isinstance(module, nn.Linear):
        macs, kind = linear_macs(module, inp), "linear"
    else:
        macs, kind = conv_macs(module, inp, out), "conv"
    nbytes = _param_bytes(module.weight, getattr(module, "bias", None)) + (math.prod(inp) + math.prod(out)) * elem
    return LayerCount(name, kind, macs, macs, nbytes, nbytes)


# --------------------------------------------------------------------- gated
def _receptive_union(active: torch.Tensor, module: ChannelGatedConv2d, in_hw: tuple[int, int]) -> torch.Tensor:
    """Input pixels ``[N, K, H, W]`` (bool) feeding any active output position of ``active [N, K, OH, OW]``."""
    n, k, oh, ow = active.shape
    kh, kw = module.kernel_size
    (sh, sw), (ph, pw), (dh, dw) = module.stride, module.padding, module.dilation
    full_h = conv_input_span(oh, kh, sh, ph, dh)
    full_w = conv_input_span(ow, kw, sw, pw, dw)
    ones = torch.ones(k, 1, kh, kw, dtype=torch.float32, device=active.device)
    covered = F.conv_transpose2d(
        active.float(),
        ones,
        stride=(sh, sw),
        padding=(ph, pw),
        output_padding=(in_hw[0] - full_h, in_hw[1] - full_w),
        groups=k,
        dilation=(dh, dw),
    )
    return covered > 0


@dataclass(frozen=True)
class _GateLayout:
    """What counting needs of a gated layer's partition; depends only on the layer's shape and config."""

    base_per_channel: torch.Tensor  # [C_out] int64: |B_c|
    cond_per_group: torch.Tensor  # [G] int64: sum_{c in j} (C_in - |B_c|)
    base_inputs: int  # |union_c B_c|
    reader_sets: torch.Tensor  # [R, G] bool: distinct sets of groups reading an input channel conditionally
    reader_counts: list[int]  # input channels sharing each set


_LAYOUTS: "weakref.WeakKeyDictionary[ChannelGatedConv2d, _GateLayout]" = weakref.WeakKeyDictionary()


def _layout(module: ChannelGatedConv2d) -> _GateLayout:
    cached = _LAYOUTS.get(module)
    if cached is not None:
        return cached
    mask = module.base_mask.cpu()
    groups = group_index(module.out_channels, module.gate_group)
    config = (module.base_fraction, module.base_layout)
    base_per_channel = torch.tensor(base_sizes(module.out_channels, module.in_channels, *config))
    cond_per_group = torch.tensor(
        conditional_per_group(module.out_channels, module.in_channels, *config, module.gate_group)
    )
    # reads[j, i]: group j reads input channel i conditionally.
    reads = torch.zeros(module.num_groups, module.in_channels).index_add_(0, groups, (~mask).float()) > 0
    columns, counts = torch.unique(reads.t(), dim=0, return_counts=True)
    keep = columns.any(dim=1)
    layout = _GateLayout(
        base_per_channel, cond_per_group, int(mask.any(dim=0).sum()), columns[keep], counts[keep].tolist()
    )
    _LAYOUTS[module] = layout
    return layout


def gated_mac_terms(module: ChannelGatedConv2d, out: torch.Size) -> tuple[int, int, int]:
    """``(base, conditional if every decision were on, gate)`` MACs of a gated call with output ``out``.

    ``kernels.work.gated_mac_terms`` for the module's configuration.
    """
    config = (module.base_fraction, module.base_layout, module.gate_group)
    return _kernel_mac_terms(tuple(out), module.in_channels, module.kernel_size, *config)


def gated_count(
    name: str,
    module: ChannelGatedConv2d,
    inp: torch.Size,
    out: torch.Size,
    elem: int,
    decisions: torch.Tensor | None,
) -> LayerCount:
    """Counts of one ``ChannelGatedConv2d`` call from its decisions ``[N, G, OH, OW]``.

    ``decisions=None`` means the call ran with its gates forced open (dense).
    """
    dense = dense_count(name, module, inp, out, elem)
    dense.kind = "gated"
    if decisions is None:  # forced open: every decision on
        dense.decisions_on = dense.decisions_total = out[0] * module.num_groups * out[2] * out[3]
        return dense
    n, _, oh, ow = out
    kernel = module.kernel_size[0] * module.kernel_size[1]
    layout = _layout(module)
    dec = decisions.cpu()
    base_macs, _, gate_macs = gated_mac_terms(module, out)
    cond_macs = int(conditional_macs(dec, layout.cond_per_group.tolist(), module.kernel_size))

    group_on = dec.flatten(2).any(dim=2).any(dim=0)  # [G]
    weight_elems = int(layout.base_per_channel.sum()) + int((layout.cond_per_group * group_on.long()).sum())
    weight_bytes = weight_elems * kernel * module.weight.element_size()
    weight_bytes += _param_bytes(module.bias) + 2 * module.out_channels * 4

    in_h, in_w = inp[2], inp[3]
    cond_inputs = 0
    for readers, count in zip(layout.reader_sets, layout.reader_counts):
        active = dec[:, readers].any(dim=1, keepdim=True)
        cond_inputs += int(_receptive_union(active, module, (in_h, in_w)).sum()) * count
    act_bytes = (n * layout.base_inputs * in_h * in_w + cond_inputs + n * module.out_channels * oh * ow) * elem
    decision_bytes = dec.numel()

    return LayerCount(
        name,
        "gated",
        macs_dense=dense.macs_dense,
        macs_executed=base_macs + cond_macs + gate_macs,
        bytes_dense=dense.bytes_dense,
        bytes_executed=weight_bytes + act_bytes + decision_bytes,
        gate_macs=gate_macs,
        decisions_on=int(dec.sum()),
        decisions_total=dec.numel(),
        conditional_macs=cond_macs,
        kernel_conditional_macs=_kernel_conditional_macs(module, dec),
    )


def runtime_count(
    name: str,
    module: RuntimeGatedConv2d,
    inp: torch.Size,
    out: torch.Size,
    elem: int,
    masks: torch.Tensor,
    active_inputs: torch.Tensor,
) -> LayerCount:
    """Counts of one ``RuntimeGatedConv2d`` call from its kept-channel masks ``[N, C_out]`` and the
    input channels that were not all zero ``[N, C_in]`` (formulas in the module docstring)."""
    conv = module.conv
    dense = dense_count(name, conv, inp, out, elem)
    masks, active = masks.cpu(), active_inputs.cpu()
    n, c_out, oh, ow = out
    gate_macs = predictor_macs(module, n)
    kernel = math.prod(conv.kernel_size)
    rows, cols = int(masks.any(dim=0).sum()), int(active.any(dim=0).sum())
    weight_bytes = rows * cols * kernel * conv.weight.element_size()
    params = _param_bytes(conv.bias, module.predictor.weight, module.predictor.bias, module.static_importance)
    if module.bn is not None:
        params += _param_bytes(module.bn.weight, module.bn.bias, module.bn.running_mean, module.bn.running_var)
    act_bytes = (int(active.sum()) * inp[2] * inp[3] + n * c_out * oh * ow) * elem
    return LayerCount(
        name,
        "runtime",
        macs_dense=dense.macs_dense,
        macs_executed=channel_macs(module, masks, active, (oh, ow)) + gate_macs,
        bytes_dense=dense.bytes_dense,
        bytes_executed=weight_bytes + params + act_bytes + masks.numel(),
        gate_macs=gate_macs,
        decisions_on=int(masks.sum()),
        decisions_total=masks.numel(),
    )


def _kernel_conditional_macs(module: ChannelGatedConv2d, decisions: torch.Tensor) -> int:
    """Conditional MACs the gated Triton kernel runs on ``decisions`` (``kernels.gated_kernel_counters``)."""
    counters = gated_kernel_counters(
        decisions, module.in_channels, module.out_channels, module.kernel_size,
        base_fraction=module.base_fraction, base_layout=module.base_layout, gate_group=module.gate_group,
        gate_block=module.gate_block,
    )  # fmt: skip
    return int(counters[COUNTER_FIELDS.index("conditional_macs")])
