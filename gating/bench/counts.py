"""Exact counts of one benched batch: the dense baseline, the gated model per layer, and the kernels' counters.

MACs and bytes are :mod:`gating.accounting`'s (``count_model`` for the dense
baseline, ``GatedModel.report()`` for the gated model, in the bench dtype's
element size). Per layer, beside each ``LayerCount``, the work the Triton
kernel runs on the same decisions, predicted by the kernels package's own
rule (no GPU needed; the tests of ``kernels`` check it equals the on-device
counters):

* a partial-sum gated layer: :func:`kernels.gated_kernel_counters`, laid out
  as :data:`kernels.work.COUNTER_FIELDS` (tile-rounded MACs, tiles);
* a runtime-gated layer: :func:`kernels.channel_sparse_counters` of its
  kept-channel masks and active inputs, laid out as
  :data:`kernels.CHANNEL_SPARSE_FIELDS`;
* any other layer, or a gate forced open: ``None``.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels import CHANNEL_SPARSE_FIELDS, COUNTER_FIELDS, channel_sparse_counters, gated_kernel_counters

from ..accounting import LayerCount, Report
from ..gates import ChannelGatedConv2d, RuntimeGatedConv2d
from ..recorder import RecordedCall, count_model
from .subjects import Subject

__all__ = ["TOTAL_FIELDS", "count_batch", "kernel_counters"]

TOTAL_FIELDS = ("macs_dense", "bytes_dense", "macs_network_dense", "bytes_network_dense", "macs_executed",
                "bytes_executed")
"""Totals of a counted batch: the dense baseline, the benched network run densely (differs from the baseline
only after pruning) and what the gated model executes."""


def kernel_counters(call: RecordedCall) -> dict[str, int] | None:
    """The counters the layer's Triton kernel reports for this call's decisions (module docstring), or ``None``."""
    module = call.module
    if isinstance(module, ChannelGatedConv2d) and call.decisions is not None:
        values = gated_kernel_counters(
            call.decisions.cpu(), module.in_channels, module.out_channels, module.kernel_size,
            base_fraction=module.base_fraction, base_layout=module.base_layout, gate_group=module.gate_group,
            gate_block=module.gate_block,
        )  # fmt: skip
        return dict(zip(COUNTER_FIELDS, values.tolist()))
    if isinstance(module, RuntimeGatedConv2d) and call.decisions is not None:
        conv = module.conv
        values = channel_sparse_counters(call.decisions.cpu(), call.active_inputs.cpu(), conv.in_channels,
                                         tuple(conv.kernel_size), (call.out[2], call.out[3]))
        return dict(zip(CHANNEL_SPARSE_FIELDS, values.tolist()))
    return None


def _layer(count: LayerCount, counters: dict[str, int] | None) -> dict[str, Any]:
    """One layer's record: its ``LayerCount`` fields, the reductions it reaches and its kernel's counters."""
    return count.to_dict() | {
        "macs_reduction": count.macs_dense / count.macs_executed if count.macs_executed else None,
        "bytes_reduction": count.bytes_dense / count.bytes_executed if count.bytes_executed else None,
        "kernel_counters": counters,
    }


@torch.no_grad()
def count_batch(subject: Subject, x: torch.Tensor) -> dict[str, Any]:
    """Counts of ``subject`` on the batch ``x`` (on the subject's device and in the bench dtype).

    Returns the :data:`TOTAL_FIELDS` (MACs and bytes), ``macs_reduction`` /
    ``bytes_reduction`` (dense baseline over executed), ``kernel_overhead``
    (``Report.kernel_overhead``) and ``layers``: one record per counted layer
    call of the gated model, in execution order (:func:`_layer`).
    """
    dense = count_model(subject.dense, x)
    subject.gated(x)
    report: Report = subject.gated.report()
    calls = subject.gated.recorded_calls()  # one per report layer, in the same order
    totals = {
        "macs_dense": dense.macs_dense, "bytes_dense": dense.bytes_dense,
        "macs_network_dense": report.macs_dense, "bytes_network_dense": report.bytes_dense,
        "macs_executed": report.macs_executed, "bytes_executed": report.bytes_executed,
    }  # fmt: skip
    return totals | {
        "macs_reduction": dense.macs_dense / report.macs_executed,
        "bytes_reduction": dense.bytes_dense / report.bytes_executed,
        "kernel_overhead": report.kernel_overhead,
        "layers": [_layer(count, kernel_counters(call)) for count, call in zip(report.layers, calls)],
    }
