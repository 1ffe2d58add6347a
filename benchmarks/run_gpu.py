"""Gated-conv benchmark sweep: cuDNN dense vs Triton dense vs Triton gated, one JSON per run.

Run on a CUDA machine from the repository root::

    python -m benchmarks.run_gpu                      # full sweep
    python -m benchmarks.run_gpu --quick              # the dominant ResNet-50 shapes, batches 8 and 64
    python -m benchmarks.run_gpu --count-only --out /tmp/counts.json   # MAC/byte counts only, any machine

**What is measured.** Every 3x3 and 1x1 conv shape of torchvision ResNet-18 and
ResNet-50 at 224x224 (:mod:`benchmarks.shapes`), by default
(:class:`benchmarks.sweep.Sweep`) at batches 1, 8, 64 and gate densities 0.1,
0.25, 0.5, 1.0, in bfloat16, channels_last, as a layer runs
after BatchNorm folding: the Triton kernels apply a per-channel scale/shift in
their epilogue (residual and ReLU off), weights are packed once
(``kernels.pack_weight``). The cuDNN baseline is ``F.conv2d`` on the same
channels_last bfloat16 tensors, without bias or epilogue (so it does strictly
less work), with ``cudnn.benchmark`` autotuning on. The gate is
``base_fraction=0.25``, ``base_layout="first"``, ``gate_group=16``, ``gate_block=1`` unless told
otherwise. The gated kernel computes its decisions itself: its inputs are
built (:func:`benchmarks.masks.beacon_case`) so that they equal a spatially
coherent mask of the target density (:func:`benchmarks.masks.blob_mask`); the
decisions it returns are checked against that mask and the density reported is
the one measured from them.

**How it is timed.** ``triton.testing.do_bench(fn, warmup=25, rep=100,
quantiles=[0.5, 0.2, 0.8])``: CUDA events around each call, L2 flushed before
each call (which also hides host launch overhead behind the flush), the median
and the 20/80 % quantiles in milliseconds. The first call (compilation, cuDNN
autotuning) is outside the timed region. Inputs are random (never zeros).

**Correctness.** Once per shape, at batch 8 (or the smallest batch swept), every
implementation runs on fresh random inputs (so no stale buffer of an earlier
call can pass for an output) and is compared with the float64 reference of
``kernels.reference`` (gated: on the kernel's own decisions); the errors
``||out - ref|| / ||ref||`` (``rel_l2``) and ``max|out - ref| / max|ref|`` are
recorded. The tolerance of each output is measured, not fixed: the same
reference evaluated by PyTorch in bfloat16 has the error ``pytorch_rel_error``,
and ``tolerance = TOLERANCE_FACTOR * pytorch_rel_error + TOLERANCE_FLOOR``
(2 and 1e-6, :mod:`benchmarks.checks`); both are recorded with each check.
An error above its tolerance (or a decision that differs from the mask) makes
the run exit with status 1 after writing the JSON.

**What is counted.** ``gating.accounting.gated_count`` of the decisions, with
2-byte elements: dense and executed MACs and bytes and the gate's MACs; the
ideal speedup is ``macs_dense / macs_executed``. The kernel's own counters
(``GatedConvStats``: tiles and tile-rounded MACs it ran) come from one extra
call with ``return_stats=True`` outside the timed region.

**Real decisions.** ``--decisions FILE...`` (recorded by
``python -m benchmarks.record_decisions``) adds, per recorded layer call and
swept batch no larger than the recording, a record (``mask_source`` ``"real"``)
timed like the others but with the recorded decisions handed to the gated
kernel (``decisions=``; random input and weight), checked at the check batch,
and a whole-network summary (d) per (model, batch): summed cuDNN, Triton
dense and gated times, the speedup and its MAC- and roofline-ideal values.
With ``--count-only`` they are counted instead.

**Roofline.** The run first measures the device's bf16 matmul peak and copy
bandwidth (:mod:`benchmarks.roofline`, ``device_peaks`` in the JSON); every
gated record holds ``roofline_ideal_speedup`` (the dense roofline time over
the executed one, ``max(2*MACs/peak, bytes/bandwidth)``) beside the MAC ideal,
and ``speedup_over_roofline_ideal``; the summary (b) reports both.

**Achieved rates.** Beside each time, every timed record holds TFLOP/s
(``2 * MACs / ms * 1e-9``) and GB/s (``bytes / ms * 1e-6``) at each time
quantile (:mod:`benchmarks.report`): dense MACs and bytes for cuDNN and Triton
dense (``cudnn_rates``, ``triton_dense_rates``); for Triton gated
(``triton_gated_rates``) the executed MACs and bytes and the kernel-counted
MACs.

**Output.** One JSON (written atomically) with the GPU name, torch / triton /
CUDA / cuDNN versions, dtype, every parameter, the shapes, a record per
(shape, batch) for the dense runs and per (shape, batch, density) for the gated
runs, and the summary the project targets
(:func:`benchmarks.report.summarize`, thresholds in :class:`benchmarks.sweep.Targets`):

a. geometric mean over the ResNet-50 shapes at batch 64 of the Triton-dense
   throughput relative to cuDNN (``cudnn_ms / triton_dense_ms``);
b. at densities 0.1, 0.25, 0.5 and batches 8 and 64: the fraction of cases where
   the speedup over cuDNN (``cudnn_ms / triton_gated_ms``) is at least 0.7 times
   the ideal speedup, and the geometric mean of speedup / ideal;
c. at density 1.0 (all gates on): geometric mean and maximum of
   ``triton_gated_ms / triton_dense_ms``, the cost of the gate itself.

**Channel-sparse kernel.** A timing run then also runs
:mod:`benchmarks.bench_channel_sparse` (cuDNN dense vs
``kernels.channel_sparse_conv2d`` at keep 0.5 in and out, ResNet-18/50,
batches 1 and 32, with this run's seed and ``do_bench`` times) and writes its
JSON (``channel_sparse_<gpu>.json``) beside this one; a failed check there
also makes the exit status 1.

Without CUDA the timing sweep exits with status 2; ``--count-only`` writes the
counting records (and per-network totals) on any machine.

**Code.** This module is the command only: the parameters and their defaults
are :class:`benchmarks.sweep.Sweep`, counting is :mod:`benchmarks.counting`,
the GPU cases :mod:`benchmarks.cases`, the float64 checks
:mod:`benchmarks.checks`, timing :mod:`benchmarks.timing`, and rates, summary
and printing :mod:`benchmarks.report`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from gating.io import atomic_write_json
from kernels import GateSpec
from kernels.partition import BASE_LAYOUTS

from .bench_channel_sparse import ChannelSparseSweep
from .bench_channel_sparse import default_out as channel_sparse_out
from .bench_channel_sparse import run as run_channel_sparse
from .checks import failures
from .counting import count_records, network_totals
from .recorded import model_layers, recorded_records
from .report import default_out, environment, print_rates, print_summary, print_totals, recorded_summary, summarize
from .shapes import MODELS, QUICK_MIN_COUNT, select_shapes
from .sweep import Sweep
from .timing import QUANTILES, recorded_timing_records, timing_records

__all__ = ["build_parser", "main", "parse_args", "run", "sweep_from_args"]


def _words(values: Sequence[object]) -> str:
    return " ".join(map(str, values))


def build_parser() -> argparse.ArgumentParser:
    """The command line; every default comes from :class:`~benchmarks.sweep.Sweep` (``%(default)s`` in the help)."""
    full, quick = Sweep(), Sweep.preset(quick=True)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_gpu", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gated_conv_<gpu>.json)")
    parser.add_argument("--quick", action="store_true", help=f"only the shapes run by >= {QUICK_MIN_COUNT} layers")
    parser.add_argument("--count-only", action="store_true", help="MAC/byte counts only (no GPU needed)")
    models_help = f"default: {_words(full.models)} ({_words(quick.models)} with --quick)"
    batches_help = f"default: {_words(full.batches)} ({_words(quick.batches)} with --quick)"
    parser.add_argument("--models", nargs="+", choices=MODELS, help=models_help)
    parser.add_argument("--batches", nargs="+", type=int, help=batches_help)
    parser.add_argument(
        "--densities", nargs="+", type=float, default=list(full.densities), help=f"default: {_words(full.densities)}"
    )
    parser.add_argument("--warmup", type=int, default=full.warmup_ms, help="do_bench warm-up, ms (default %(default)s)")
    parser.add_argument("--rep", type=int, default=full.rep_ms, help="do_bench repetition, ms (default %(default)s)")
    parser.add_argument("--seed", type=int, default=full.seed, help="default: %(default)s")
    parser.add_argument("--base-fraction", type=float, default=full.base_fraction, help="default: %(default)s")
    parser.add_argument("--base-layout", choices=BASE_LAYOUTS, default=full.base_layout, help="default: %(default)s")
    parser.add_argument("--gate-group", type=int, default=full.gate_group, help="default: %(default)s")
    parser.add_argument("--gate-block", type=int, default=full.gate_block, help="default: %(default)s")
    parser.add_argument(
        "--decisions", nargs="+", type=Path, default=[], metavar="FILE",
        help="also count (and, on CUDA, time) these recorded real decisions (python -m benchmarks.record_decisions)",
    )  # fmt: skip
    return parser


def sweep_from_args(args: argparse.Namespace) -> Sweep:
    """The :class:`~benchmarks.sweep.Sweep` of parsed flags; ``--quick`` picks the preset for unset ones.

    The gate flags become one :class:`kernels.GateSpec` (validated there), passed on as the sweep's settings.
    """
    gate = GateSpec(args.base_fraction, args.base_layout, args.gate_group, args.gate_block)
    return Sweep.preset(
        args.quick,
        models=args.models,
        batches=args.batches,
        densities=args.densities,
        warmup_ms=args.warmup,
        rep_ms=args.rep,
        seed=args.seed,
        **gate.to_dict(),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Parsed flags; a value :class:`~benchmarks.sweep.Sweep` refuses exits with argparse's usage error.

    The gate flags are checked by :class:`kernels.GateSpec`; their messages name ``GateSpec.<field>``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        sweep_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


def run(sweep: Sweep, count_only: bool, out: Path | None = None, decisions: Sequence[Path] = ()) -> int:
    """Count (``count_only``) or time the sweep, write the JSON to ``out`` and print the tables.

    ``decisions``: files of recorded real decisions, counted (``count_only``)
    or timed beside the blob masks at the sweep's batches; a bad file exits
    with status 2 before anything is written.

    Returns the exit status: 0, 1 when a check failed (the JSON is written
    first), 2 for a timing run without CUDA (nothing is written).
    """
    cuda = torch.cuda.is_available()
    if not count_only and not cuda:
        print(
            "run_gpu: timing needs a CUDA GPU (torch.cuda.is_available() is False). "
            "Use --count-only for the MAC/byte counts on this machine.",
            file=sys.stderr,
        )
        return 2
    shapes = select_shapes(sweep.models, sweep.quick)
    out = out or default_out(count_only)
    start = time.perf_counter()
    payload: dict[str, object] = {
        "benchmark": "gated_conv2d",
        "environment": environment(cuda and not count_only),
        "parameters": sweep.to_dict() | {"count_only": count_only, "quantiles": list(QUANTILES.values())},
        "shapes": [shape.to_dict() for shape in shapes],
    }
    try:
        recorded = [model_layers(path) for path in decisions]
    except (ValueError, NotImplementedError) as exc:
        print(f"run_gpu: {exc}", file=sys.stderr)
        return 2
    if count_only:
        real = [record for model, layers in recorded for record in recorded_records(layers, sweep.batches, model)]
        records = count_records(sweep, shapes) + real
        totals = network_totals(records)
        payload |= {"counts": records, "network_totals": totals}
        bad: list[str] = []
        print_totals(totals)
    else:
        dense, gated, peaks = timing_records(sweep, shapes)
        real = recorded_timing_records(sweep, recorded, peaks)
        summary = summarize(dense, gated) | {"d_real_decisions": recorded_summary(real)}
        dense_checks = [{"shape": r["shape"], "batch": r["batch"], "check": r["dense_check"]} for r in real]
        bad = failures(dense + dense_checks, gated + real)
        payload |= {"device_peaks": peaks.to_dict(), "dense": dense, "gated": gated, "recorded": real,
                    "summary": summary, "failed_checks": bad}  # fmt: skip
        print_rates(dense, gated + real)
        print_summary(summary)
    payload["wall_s"] = time.perf_counter() - start
    atomic_write_json(payload, out)
    print(f"wrote {out} ({len(shapes)} shapes, {payload['wall_s']:.1f} s)")
    sparse_status = 0 if count_only else _run_channel_sparse(sweep, out.parent)
    if bad:
        print(f"run_gpu: {len(bad)} checks failed: {', '.join(bad)}", file=sys.stderr)
        return 1
    return sparse_status


def _run_channel_sparse(sweep: Sweep, directory: Path) -> int:
    """The channel-sparse timing (:mod:`benchmarks.bench_channel_sparse`, its own defaults: ResNet-18/50,
    batches 1 and 32, keep 0.5) with this run's seed and ``do_bench`` times; its JSON goes into ``directory``."""
    sparse = ChannelSparseSweep(seed=sweep.seed, warmup_ms=sweep.warmup_ms, rep_ms=sweep.rep_ms)
    return run_channel_sparse(sparse, count_only=False, out=channel_sparse_out(False, directory))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.run_gpu [flags]``: parse the flags, then :func:`run`."""
    args = parse_args(argv)
    return run(sweep_from_args(args), args.count_only, args.out, args.decisions)


if __name__ == "__main__":
    sys.exit(main())
