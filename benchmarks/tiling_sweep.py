"""Tile variants of the compacted gated kernel on recorded real decisions: counted on any machine, timed on CUDA.

``python -m benchmarks.tiling_sweep [--decisions FILE...] [--blob MODEL...] [--densities D...]
[--block-m 16 32 64 128] [--in-place-percent P...] [--column-major] [--batches 8 64] [--count-only]
[--warmup MS] [--rep MS] [--out PATH]``

The compacted schedule's conditional launch runs each gate group's active
pixels in tiles of ``block_m`` rows (:func:`kernels.compact_tiling`: 128, or
the layer's pixels rounded down to a power of two) and the last ``< block_m``
of them in 64-, 32-, 16- and 8-row remainder tiles (:func:`kernels.compact_tiles`),
so the height changes no MAC. Tall tiles give the tensor cores their widest
instructions (a Hopper warpgroup MMA needs 64 rows) and load a group's
weight columns once per more rows. A first-launch tile with at least ``in_place_percent`` % of
its pairs on runs its conditional work in place instead (``CompactTiling``).
The conditional launch numbers its programs tile-major (``tile_major``: tile
``t`` of every group together, for L2 reuse of the input rows that the
issued-bytes count cannot see); ``--column-major`` adds the group-by-group
order, which only a timed run can tell apart.
This sweep runs the layer's own tiles and the same tiles with each
``--block-m`` and each ``--in-place-percent`` (the ``tiling=`` override of
``kernels.gated_conv2d_triton``, :func:`kernels.check_gated_tiling`) on every
recorded layer call (``--decisions``: the decisions handed to the kernel, as
``run_gpu --decisions`` does) and on every conv shape of the ``--blob``
networks with ``run_gpu``'s blob masks at each of ``--densities`` (the
default gate settings), and reports, per variant:

* counted (any machine): the conditional MACs the kernel runs over the exact
  conditional MACs (``kernel_overhead``), its issued bytes
  (:func:`kernels.gated_kernel_bytes`) and, per network and batch, the
  roofline-estimated time over the dense kernel's at the compute-bound and
  memory-bound limits and the worst machine balance
  (:func:`benchmarks.time_estimate.time_ratio_bounds`);
* timed (CUDA, without ``--count-only``): the ``do_bench`` median of the
  gated kernel, its output's largest difference from the own tiles' output,
  and per network and batch the summed time over the own tiles'.

Layers whose schedule is not compacted (gate groups under 16 channels) have
no such variants and are left out. One JSON under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch

import kernels
from gating.accounting import gated_count
from gating.io import atomic_write_json
from kernels import COUNTER_FIELDS, CompactTiling, GateSpec, gate_group_count

from .cases import DEVICE, recorded_case
from .counting import case_mask, count_fields
from .recorded import RecordedLayer, model_layers
from .report import RESULTS_DIR, environment
from .shapes import MODELS, select_shapes
from .sweep import ELEM_SIZE, Sweep
from .time_estimate import time_ratio_bounds

__all__ = ["BLOCK_M", "blob_layers", "layer_variants", "main", "summarize_variants", "variant_records"]

BLOCK_M = (16, 32, 64, 128)
"""Conditional tile heights swept by default (16: one launch, no remainder tiles)."""

OWN = "own"
"""Name of the layer's own tiles among the variants."""


def own_tiling(layer: RecordedLayer, batch: int) -> CompactTiling | None:
    """The layer's own compacted tiles at ``batch`` images (decisions given), or None when it is not compacted."""
    spec = layer.spec
    if kernels.resolve_schedule("auto", spec.gate_group, layer.out_channels, 1) != "compact":
        return None
    oh, ow = layer.out_hw
    return kernels.compact_tiling(batch * oh * ow, layer.in_channels, layer.out_channels, layer.kernel,
                                  spec.gate_group, spec.base_fraction, spec.base_layout)  # fmt: skip


def layer_variants(
    own: CompactTiling, block_ms: Sequence[int], in_place_percents: Sequence[int] = (), column_major: bool = False
) -> dict[str, CompactTiling]:
    """``{"own": own, "block_m=B": own with conditional tiles of B rows (8 warps from 128x128 tiles, else 4),
    "in_place=P": own with CompactTiling.in_place_percent P, "column_major": own numbered group by group (only
    with ``column_major``)}``."""
    variants = {OWN: own}
    for block_m in block_ms:
        warps = 8 if block_m * own.block_n >= 128 * 128 else 4
        variants[f"block_m={block_m}"] = dataclasses.replace(own, block_m=block_m, num_warps=warps)
    for percent in in_place_percents:
        variants[f"in_place={percent}"] = dataclasses.replace(own, in_place_percent=percent)
    if column_major:
        variants["column_major"] = dataclasses.replace(own, tile_major=False)
    return variants


def blob_layers(
    model: str, batch: int, density: float, spec: GateSpec, seed: int = 0
) -> tuple[list[RecordedLayer], list[int]]:
    """Every conv shape of ``model`` (:func:`benchmarks.shapes.select_shapes`) with ``run_gpu``'s blob mask at
    ``(batch, density)`` decided in every gate group, and how many layers each shape stands for."""
    sweep = Sweep(models=(model,), batches=(batch,), densities=(density,), seed=seed, **spec.to_dict())
    layers, counts = [], []
    for shape in select_shapes((model,), False):
        mask = case_mask(sweep, shape, batch, density)  # bool [N, OH, OW]
        groups = gate_group_count(shape.out_channels, spec.gate_group)
        decisions = mask[:, None].expand(-1, groups, -1, -1).contiguous()
        pairs = [(value, value) for value in (shape.kernel, shape.stride, shape.padding, shape.dilation)]
        layers.append(RecordedLayer(shape.name, shape.in_channels, shape.out_channels, *pairs, shape.height,
                                    shape.width, spec, decisions))  # fmt: skip
        counts.append(shape.count)
    return layers, counts


def _counted(layer: RecordedLayer, decisions: torch.Tensor, tiling: CompactTiling) -> dict[str, int]:
    """The kernel's counted work on ``decisions`` with ``tiling``: conditional and total MACs, issued bytes."""
    spec = layer.spec.to_dict()
    common = (decisions, layer.in_channels, layer.out_channels, layer.kernel)
    counters = kernels.gated_kernel_counters(*common, **spec, decisions_given=True, tiling=tiling)
    conditional = int(counters[COUNTER_FIELDS.index("conditional_macs")])
    issued = kernels.gated_kernel_bytes(*common, **spec, decisions_given=True, element_size=ELEM_SIZE, tiling=tiling)
    return {
        "kernel_conditional_macs": conditional,
        "kernel_macs": int(counters[COUNTER_FIELDS.index("base_macs")]) + conditional,
        "kernel_bytes": issued.total,
    }


def variant_records(
    layers: Sequence[RecordedLayer], model: str, batches: Sequence[int], block_ms: Sequence[int],
    sweep: Sweep | None = None, device: torch.device | str = DEVICE, in_place_percents: Sequence[int] = (),
    counts: Sequence[int] | None = None, mask_source: str = "real", column_major: bool = False,
) -> list[dict[str, object]]:  # fmt: skip
    """One record per (compacted layer call, batch, variant); timed on ``device`` when ``sweep`` is given.

    A batch larger than the recording is skipped (decisions are never made up).
    ``counts``: how many layers of the network each of ``layers`` stands for
    (default 1 each). Each record: ``model``, ``mask_source``, ``shape``,
    ``layers`` (its count), ``batch``, ``variant``, ``block_m``,
    ``in_place_percent``, ``tile_major``, the exact ``conditional_macs``,
    :func:`_counted`'s fields, ``kernel_overhead`` (kernel over exact
    conditional MACs; None when nothing is on), the dense kernel's
    ``dense_kernel_macs`` / ``dense_kernel_bytes``, and with ``sweep`` the
    ``do_bench`` quantiles ``ms`` and ``max_abs_diff_vs_own``.
    """
    records = []
    for layer, count in zip(layers, counts or [1] * len(layers)):
        module = layer.module()
        for batch in batches:
            own = own_tiling(layer, batch)
            if own is None or batch > layer.decisions.shape[0]:
                continue
            decisions = layer.decisions[:batch]
            oh, ow = layer.out_hw
            inp = torch.Size((batch, layer.in_channels, layer.height, layer.width))
            out = torch.Size((batch, layer.out_channels, oh, ow))
            exact = count_fields(gated_count(layer.name, module, inp, out, ELEM_SIZE, decisions))["conditional_macs"]
            pixels = batch * oh * ow
            dense = {
                "dense_kernel_macs": kernels.dense_kernel_macs(pixels, layer.in_channels, layer.out_channels,
                                                               layer.kernel),  # fmt: skip
                "dense_kernel_bytes": kernels.dense_kernel_bytes(pixels, layer.in_channels, layer.out_channels,
                                                                 layer.kernel, element_size=ELEM_SIZE),  # fmt: skip
            }
            variants = layer_variants(own, block_ms, in_place_percents, column_major)
            timed = _time_variants(sweep, layer, batch, variants, device) if sweep is not None else {}
            for name, tiling in variants.items():
                counted = _counted(layer, decisions, tiling)
                records.append(
                    {"model": model, "mask_source": mask_source, "shape": layer.name, "layers": count,
                     "batch": batch, "variant": name,
                     "block_m": tiling.block_m, "in_place_percent": tiling.in_place_percent,
                     "tile_major": tiling.tile_major,
                     "conditional_macs": exact, **counted,
                     "kernel_overhead": counted["kernel_conditional_macs"] / exact if exact else None,
                     **dense, **timed.get(name, {})}
                )  # fmt: skip
    return records


def _time_variants(
    sweep: Sweep, layer: RecordedLayer, batch: int, variants: dict[str, CompactTiling], device: torch.device | str
) -> dict[str, dict[str, object]]:
    """``do_bench`` quantiles of the gated kernel with each variant's tiles, and its output against the own tiles'."""
    from .timing import time_ms

    case = recorded_case(sweep, layer, batch, "time", device)
    inputs = case.inputs

    def run(tiling: CompactTiling) -> torch.Tensor:
        out, _, _ = kernels.gated_conv2d_triton(
            inputs.x, case.packed, inputs.gate_scale, inputs.gate_shift, scale=case.scale, shift=case.shift,
            decisions=inputs.decisions, tiling=tiling, **case.spec.to_dict(), **case.shape.conv_args(),
        )  # fmt: skip
        return out

    own_out = run(variants[OWN]).float()
    timed = {}
    for name, tiling in variants.items():
        diff = (run(tiling).float() - own_out).abs().max().item() if own_out.numel() else 0.0
        timed[name] = {"ms": time_ms(lambda: run(tiling), sweep), "max_abs_diff_vs_own": diff}
    return timed


def summarize_variants(records: Sequence[dict[str, object]]) -> list[dict[str, object]]:
    """Per (model, mask source, batch, variant): the network's kernel/exact conditional MACs, worst layer, bytes
    and times, each record counted ``layers`` times.

    ``kernel_overhead``: summed kernel over summed exact conditional MACs;
    ``worst_layer_kernel_overhead``: the largest layer's; ``bytes_vs_own``:
    issued bytes over the own tiles'; ``estimate``: roofline time over the
    dense kernel's (:func:`benchmarks.time_estimate.time_ratio_bounds`); with
    timings, ``ms`` (summed medians) and ``ms_vs_own``.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["model"], record.get("mask_source", "real"), record["batch"], record["variant"])].append(record)

    def total(layers: Sequence[dict], field: str) -> float:
        return sum(r.get("layers", 1) * (r[field]["median"] if field == "ms" else r[field]) for r in layers)

    rows = []
    for (model, source, batch, variant), layers in groups.items():
        own = groups[(model, source, batch, OWN)]
        exact = total(layers, "conditional_macs")
        overheads = [r["kernel_overhead"] for r in layers if r["kernel_overhead"] is not None]
        row = {
            "model": model, "mask_source": source, "batch": batch, "variant": variant,
            "layers": sum(r.get("layers", 1) for r in layers),
            "kernel_overhead": total(layers, "kernel_conditional_macs") / exact if exact else None,
            "worst_layer_kernel_overhead": max(overheads, default=None),
            "bytes_vs_own": total(layers, "kernel_bytes") / total(own, "kernel_bytes"),
            "estimate": time_ratio_bounds(layers),
        }  # fmt: skip
        if all("ms" in r for r in layers + own):
            row |= {"ms": total(layers, "ms"), "ms_vs_own": total(layers, "ms") / total(own, "ms")}
        rows.append(row)
    return rows


def _print_summary(rows: Sequence[dict[str, object]]) -> None:
    print(f"{'model':<22}{'batch':>6}  {'variant':<14}{'kernel/exact':>13}{'worst':>8}{'bytes/own':>10}"
          f"{'est. worst':>11}{'ms/own':>8}")  # fmt: skip
    for row in rows:
        overhead = "n/a" if row["kernel_overhead"] is None else f"{row['kernel_overhead']:.3f}"
        worst = "n/a" if row["worst_layer_kernel_overhead"] is None else f"{row['worst_layer_kernel_overhead']:.2f}"
        timed = f"{row['ms_vs_own']:.3f}" if "ms_vs_own" in row else "-"
        print(f"{row['model']:<22}{row['batch']:>6}  {row['variant']:<14}{overhead:>13}{worst:>8}"
              f"{row['bytes_vs_own']:>10.3f}{row['estimate']['worst']:>11.3f}{timed:>8}")  # fmt: skip


def default_out(count_only: bool) -> Path:
    """``results/tiling_sweep_counts.json``, or ``results/tiling_sweep_<gpu>.json`` for a timing run."""
    if count_only:
        return RESULTS_DIR / "tiling_sweep_counts.json"
    gpu = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    return RESULTS_DIR / f"tiling_sweep_{gpu}.json"


def _block_m(text: str) -> int:
    value = int(text)
    if value < 16 or value > 256 or value & (value - 1):
        raise argparse.ArgumentTypeError(f"--block-m {value}: must be a power of two in [16, 256]")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"--in-place-percent {value}: must be in [0, 100]")
    return value


def _density(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"--densities {value}: must be in (0, 1]")
    return value


def _batch(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batches {value}: must be >= 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tiling_sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=Path, nargs="*", default=[], metavar="FILE",
                        help="recorded real decisions (python -m benchmarks.record_decisions)")  # fmt: skip
    parser.add_argument("--blob", choices=MODELS, nargs="*", default=[], metavar="MODEL",
                        help=f"also run_gpu's blob masks on every conv shape of these networks {MODELS}")
    parser.add_argument("--densities", type=_density, nargs="+", default=[0.1, 0.25, 0.5, 1.0],
                        help="blob mask densities (default 0.1 0.25 0.5 1.0)")
    parser.add_argument("--block-m", type=_block_m, nargs="+", default=list(BLOCK_M),
                        help=f"conditional tile heights to try beside the own tiles (default {list(BLOCK_M)})")
    parser.add_argument("--in-place-percent", type=_percent, nargs="*", default=[],
                        help="CompactTiling.in_place_percent values to try beside the own tiles (default: none)")
    parser.add_argument("--column-major", action="store_true",
                        help="also the own tiles with the conditional programs numbered group by group")
    parser.add_argument("--batches", type=_batch, nargs="+", default=[8, 64], help="default: 8 64")
    parser.add_argument("--count-only", action="store_true", help="counts only (no GPU needed)")
    parser.add_argument("--warmup", type=int, default=Sweep.warmup_ms, help="do_bench warm-up, ms")
    parser.add_argument("--rep", type=int, default=Sweep.rep_ms, help="do_bench repetition, ms")
    parser.add_argument("--out", type=Path,
                        help="JSON path (default benchmarks/results/tiling_sweep_<gpu|counts>.json)")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Count (and on CUDA time) the variants; write the JSON and print the summary. Exit status 2 on bad input."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.decisions and not args.blob:
        parser.error("give --decisions FILE... and/or --blob MODEL...")
    cuda = torch.cuda.is_available()
    if not args.count_only and not cuda:
        print("tiling_sweep: timing needs a CUDA GPU; use --count-only for the counts on this machine",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        sweep = Sweep(batches=tuple(args.batches), warmup_ms=args.warmup, rep_ms=args.rep)
        recorded = [model_layers(path) for path in args.decisions]
    except (ValueError, NotImplementedError) as exc:
        print(f"tiling_sweep: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    records = []
    timed = None if args.count_only else sweep
    for model, layers in recorded:
        records += variant_records(layers, model, args.batches, args.block_m, timed,
                                   in_place_percents=args.in_place_percent, column_major=args.column_major)
    spec = GateSpec()
    for model in args.blob:
        for density in args.densities:
            for batch in args.batches:
                layers, counts = blob_layers(model, batch, density, spec)
                records += variant_records(layers, f"{model} blob {density}", (batch,), args.block_m, timed,
                                           in_place_percents=args.in_place_percent, counts=counts,
                                           mask_source="blob", column_major=args.column_major)  # fmt: skip
    rows = summarize_variants(records)
    payload = {
        "benchmark": "tiling_sweep",
        "environment": environment(cuda and not args.count_only),
        "parameters": {"decisions": [str(path) for path in args.decisions], "blob": args.blob,
                       "densities": args.densities, "gate": GateSpec().to_dict(), "block_m": args.block_m,
                       "in_place_percent": args.in_place_percent, "column_major": args.column_major,
                       "batches": args.batches, "count_only": args.count_only, "warmup_ms": args.warmup,
                       "rep_ms": args.rep},  # fmt: skip
        "records": records,
        "summary": rows,
        "wall_s": time.perf_counter() - start,
    }
    out = args.out or default_out(args.count_only)
    atomic_write_json(payload, out)
    _print_summary(rows)
    print(f"wrote {out} ({len(records)} records, {payload['wall_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
