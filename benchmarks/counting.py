"""MAC and byte counts of the benchmark cases (no conv is run; any machine).

Every case's gate decisions are a blob mask (:mod:`benchmarks.masks`) of the
target density at the shape's output resolution, the same for every gate
group. ``gating.accounting`` counts the gated call on them with
:data:`~benchmarks.sweep.ELEM_SIZE`-byte elements: dense and executed MACs and
bytes, the gate's own MACs, and the ideal (count-implied) speedups
``macs_dense / macs_executed`` and ``bytes_dense / bytes_executed``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence

import torch

from gating.accounting import LayerCount, dense_count, gated_count
from gating.gates import ChannelGatedConv2d
from kernels import COUNTER_FIELDS, gated_kernel_counters
from kernels.kernel_bytes import dense_kernel_bytes, dense_kernel_macs, gated_kernel_bytes

from .masks import blob_scores, group_decisions, top_fraction
from .shapes import ConvShape, gated_module
from .sweep import ELEM_SIZE, Sweep, derived_seed

__all__ = [
    "TOTALLED_FIELDS",
    "case_key",
    "case_mask",
    "count_case",
    "count_fields",
    "count_records",
    "dense_fields",
    "kernel_work_fields",
    "network_totals",
    "schedule_fields",
]

TOTALLED_FIELDS = (
    "macs_dense", "macs_executed", "bytes_dense", "bytes_executed", "conditional_macs", "kernel_conditional_macs",
    "tiled_kernel_conditional_macs",
)  # fmt: skip
"""Fields of a count record that :func:`network_totals` adds up over layers."""

KERNEL_WORK_FIELDS = ("kernel_macs", "dense_kernel_macs", "kernel_bytes", "dense_kernel_bytes")
"""Fields of :func:`kernel_work_fields` that :func:`network_totals` adds up when every record of a total has them."""


@functools.lru_cache(maxsize=4)
def _case_scores(sweep: Sweep, shape: ConvShape, batch: int) -> torch.Tensor:
    return blob_scores(batch, shape.out_height, shape.out_width, seed=derived_seed(sweep, "mask", shape.name, batch))


def case_mask(sweep: Sweep, shape: ConvShape, batch: int, density: float) -> torch.Tensor:
    """Bool ``[N, OH, OW]`` blob mask of a case, on CPU.

    One score field per (shape, batch), so the masks of a case's densities are
    nested.
    """
    return top_fraction(_case_scores(sweep, shape, batch), density, shape.out_height, shape.out_width)


def count_case(sweep: Sweep, shape: ConvShape, batch: int, decisions: torch.Tensor) -> LayerCount:
    """``gating.accounting`` counts of one gated call of ``shape`` with bool ``decisions`` ``[N, G, OH, OW]``."""
    module = gated_module(shape, sweep.spec)
    return gated_count(
        shape.name, module, shape.input_shape(batch), shape.output_shape(batch), ELEM_SIZE, decisions.cpu()
    )


def count_fields(count: LayerCount) -> dict[str, object]:
    """The counts of a gated case (MACs, bytes), with the ideal (count-implied) speedups."""
    return {
        "measured_density": count.density,
        "macs_dense": count.macs_dense,
        "macs_executed": count.macs_executed,
        "gate_macs": count.gate_macs,
        "bytes_dense": count.bytes_dense,
        "bytes_executed": count.bytes_executed,
        "ideal_speedup": count.macs_dense / count.macs_executed,
        "ideal_bytes_speedup": count.bytes_dense / count.bytes_executed,
        "conditional_macs": count.conditional_macs,
        "kernel_conditional_macs": count.kernel_conditional_macs,
        "kernel_overhead": count.kernel_overhead,
    }


def schedule_fields(module: ChannelGatedConv2d, decisions: torch.Tensor) -> dict[str, int]:
    """``tiled_kernel_conditional_macs``: what the single-launch tiled schedule would run on ``decisions``.

    ``kernel_conditional_macs`` (from :func:`count_fields`) is the default
    schedule's; this one is kept beside it so every record compares both.
    """
    counters = gated_kernel_counters(
        decisions.cpu(), module.in_channels, module.out_channels, module.kernel_size,
        base_fraction=module.base_fraction, base_layout=module.base_layout, gate_group=module.gate_group,
        schedule="tiled",
    )  # fmt: skip
    return {"tiled_kernel_conditional_macs": int(counters[COUNTER_FIELDS.index("conditional_macs")])}


def kernel_work_fields(module: ChannelGatedConv2d, decisions: torch.Tensor) -> dict[str, object]:
    """Tile-rounded MACs and issued tile traffic of the gated kernel (default schedule) and of the dense kernel.

    ``kernel_macs``: the gated kernel's base and conditional MACs in its tiles
    (:func:`kernels.gated_kernel_counters`); ``dense_kernel_macs``: the dense
    kernel's at its heuristic tiling (:func:`kernels.kernel_bytes.dense_kernel_macs`).

    ``kernel_bytes``: :func:`kernels.kernel_bytes.gated_kernel_bytes` (total;
    ``kernel_bytes_parts``: its first launch, the ops between the launches, the
    conditional launches); ``dense_kernel_bytes``:
    :func:`kernels.kernel_bytes.dense_kernel_bytes` at the heuristic tiling;
    ``kernel_bytes_ratio``: gated over dense. :data:`~benchmarks.sweep.ELEM_SIZE`-byte
    elements, no residual. Upper bounds on DRAM traffic (caches not modelled),
    unlike ``bytes_executed``, which counts each element once.
    """
    n, _, oh, ow = decisions.shape
    gated = gated_kernel_bytes(
        decisions.cpu(), module.in_channels, module.out_channels, module.kernel_size,
        base_fraction=module.base_fraction, base_layout=module.base_layout, gate_group=module.gate_group,
        gate_block=module.gate_block, element_size=ELEM_SIZE,
    )  # fmt: skip
    dense = dense_kernel_bytes(n * oh * ow, module.in_channels, module.out_channels, module.kernel_size,
                               element_size=ELEM_SIZE)  # fmt: skip
    counters = gated_kernel_counters(
        decisions.cpu(), module.in_channels, module.out_channels, module.kernel_size,
        base_fraction=module.base_fraction, base_layout=module.base_layout, gate_group=module.gate_group,
        gate_block=module.gate_block,
    )  # fmt: skip
    macs = sum(int(counters[COUNTER_FIELDS.index(field)]) for field in ("base_macs", "conditional_macs"))
    return {
        "kernel_macs": macs,
        "dense_kernel_macs": dense_kernel_macs(n * oh * ow, module.in_channels, module.out_channels,
                                               module.kernel_size),  # fmt: skip
        "kernel_bytes": gated.total,
        "kernel_bytes_parts": gated._asdict(),
        "dense_kernel_bytes": dense,
        "kernel_bytes_ratio": gated.total / dense if dense else None,
    }


def dense_fields(sweep: Sweep, shape: ConvShape, batch: int) -> dict[str, int]:
    """``macs_dense`` and ``bytes_dense`` of the plain conv of (shape, batch): the work of a dense run."""
    module = gated_module(shape, sweep.spec)
    count = dense_count(shape.name, module, shape.input_shape(batch), shape.output_shape(batch), ELEM_SIZE)
    return {"macs_dense": count.macs_dense, "bytes_dense": count.bytes_dense}


def case_key(shape: ConvShape, batch: int) -> dict[str, object]:
    """The fields that name a (shape, batch) case in every record."""
    return {"model": shape.name.split(".")[0], "shape": shape.name, "layers": shape.count, "batch": batch}


def count_records(sweep: Sweep, shapes: Sequence[ConvShape]) -> list[dict[str, object]]:
    """Counts of every (shape, batch, density) from the masks themselves (no conv is run)."""
    records = []
    for shape in shapes:
        module = gated_module(shape, sweep.spec)
        for batch in sweep.batches:
            for density in sweep.densities:
                decisions = group_decisions(case_mask(sweep, shape, batch, density), module.num_groups)
                count = count_case(sweep, shape, batch, decisions)
                records.append(
                    {**case_key(shape, batch), "mask_source": "blob", "target_density": density, **count_fields(count),
                     **schedule_fields(module, decisions), **kernel_work_fields(module, decisions)}  # fmt: skip
                )
    return records


def network_totals(records: Iterable[dict[str, object]]) -> list[dict[str, object]]:
    """Per (model, mask source, batch, density): MACs and bytes of the counted layers of the whole network.

    ``kernel_overhead`` is the gated Triton kernel's conditional MACs over the
    exact conditional MACs (``None`` when nothing conditional ran), for the
    default schedule; ``tiled_kernel_overhead`` the same for the tiled
    schedule; ``worst_layer_kernel_overhead`` the largest per-record
    ``kernel_overhead`` of the group (every layer, however small its share).
    ``kernel_macs``, ``dense_kernel_macs``, ``kernel_bytes`` and ``dense_kernel_bytes`` (:func:`kernel_work_fields`)
    are totalled too, with ``kernel_bytes_ratio`` their ratio, when every
    record of the group has them (``None`` otherwise).

    Each shape's counts are weighted by how many layers have it (the 7x7 stem
    and the classifier are not included).
    """
    totals: dict[tuple[object, ...], dict[str, object]] = {}
    for rec in records:
        key = {name: rec[name] for name in ("model", "mask_source", "batch", "target_density")}
        total = totals.setdefault(
            tuple(key.values()), key | dict.fromkeys(TOTALLED_FIELDS, 0) | dict.fromkeys(KERNEL_WORK_FIELDS, 0)
        )
        for field in TOTALLED_FIELDS:
            total[field] += rec["layers"] * rec[field]
        for field in KERNEL_WORK_FIELDS:
            value = rec.get(field)
            total[field] = None if value is None or total[field] is None else total[field] + rec["layers"] * value
        if rec["kernel_overhead"] is not None:
            worst = total.get("worst_layer_kernel_overhead") or 0.0
            total["worst_layer_kernel_overhead"] = max(worst, rec["kernel_overhead"])
    for total in totals.values():
        total["ideal_speedup"] = total["macs_dense"] / total["macs_executed"]
        total["ideal_bytes_speedup"] = total["bytes_dense"] / total["bytes_executed"]
        exact = total["conditional_macs"]
        total["kernel_overhead"] = total["kernel_conditional_macs"] / exact if exact else None
        total["tiled_kernel_overhead"] = total["tiled_kernel_conditional_macs"] / exact if exact else None
        dense_bytes = total["dense_kernel_bytes"]
        total["kernel_bytes_ratio"] = total["kernel_bytes"] / dense_bytes if dense_bytes else None
        total.setdefault("worst_layer_kernel_overhead", None)
    return list(totals.values())
