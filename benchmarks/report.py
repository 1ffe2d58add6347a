"""What a benchmark run reports: achieved rates, the target summary, the environment, printed tables.

**Rates.** A time alone hides how far a kernel is from the roof, so every
timed record also carries the achieved rates at each of its time quantiles:

* ``TFLOP/s = 2 * MACs / ms * 1e-9`` (:func:`tflops`);
* ``GB/s = bytes / ms * 1e-6`` (:func:`gbps`).

The MACs and bytes are those of ``gating.accounting`` (see
:mod:`benchmarks.counting`). For the cuDNN and Triton-dense runs they are the
dense ones (``macs_dense``, ``bytes_dense``). For a gated run they are the
algorithmic executed ones (``macs_executed`` with the gate's MACs,
``bytes_executed``) and, beside them, the MACs the kernel counted itself
(tile-rounded base + conditional work, ``kernel_stats["macs"]``); the kernel
does not count bytes. A rate keyed ``"p20"`` is the one at the 20 % time
quantile (the faster runs), so it is the higher rate.

**Summary.** :func:`summarize` computes the numbers the project targets
(the module docstring of :mod:`benchmarks.run_gpu` defines (a), (b), (c)),
against the thresholds of a :class:`~benchmarks.sweep.Targets`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

import kernels

from .sweep import DTYPE, ELEM_SIZE, Targets

__all__ = [
    "RESULTS_DIR",
    "default_out",
    "dense_rates",
    "environment",
    "gated_rates",
    "gbps",
    "geomean",
    "print_rates",
    "print_summary",
    "print_totals",
    "recorded_summary",
    "summarize",
    "tflops",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
"""Where result JSONs go by default."""


# --------------------------------------------------------------------- rates
def tflops(macs: int, ms: float) -> float:
    """Achieved TFLOP/s of ``macs`` multiply-accumulates (2 FLOPs each) done in ``ms`` milliseconds."""
    return 2 * macs / ms * 1e-9


def gbps(nbytes: int, ms: float) -> float:
    """Achieved GB/s (1e9 bytes per second) of ``nbytes`` bytes moved in ``ms`` milliseconds."""
    return nbytes / ms * 1e-6


def dense_rates(times_ms: Mapping[str, float], macs: int, nbytes: int) -> dict[str, dict[str, float]]:
    """``{"tflops": {q: ...}, "gbps": {q: ...}}`` of a dense run, for every time quantile ``q`` of ``times_ms``."""
    return {
        "tflops": {q: tflops(macs, ms) for q, ms in times_ms.items()},
        "gbps": {q: gbps(nbytes, ms) for q, ms in times_ms.items()},
    }


def gated_rates(
    times_ms: Mapping[str, float], macs_executed: int, bytes_executed: int, kernel_macs: int
) -> dict[str, dict[str, float]]:
    """Rates of a gated run per time quantile: executed TFLOP/s and GB/s, and kernel-counted TFLOP/s.

    Returns ``{"tflops_executed": {q: ...}, "tflops_kernel": {q: ...},
    "gbps_executed": {q: ...}}``.
    """
    return {
        "tflops_executed": {q: tflops(macs_executed, ms) for q, ms in times_ms.items()},
        "tflops_kernel": {q: tflops(kernel_macs, ms) for q, ms in times_ms.items()},
        "gbps_executed": {q: gbps(bytes_executed, ms) for q, ms in times_ms.items()},
    }


# ------------------------------------------------------------------- summary
def geomean(values: Sequence[float]) -> float | None:
    """Geometric mean, or None for no values."""
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def recorded_summary(recorded: Sequence[dict]) -> list[dict[str, object]]:
    """Per (model, batch) of the timed real decisions: the whole network's times and speedups.

    Sums over the recorded layer calls: cuDNN, Triton dense and Triton gated
    median times, the speedup over cuDNN, and the MAC- and roofline-ideal
    speedups of the summed counts and roofline times.
    """
    groups: dict[tuple[str, int], list[dict]] = {}
    for rec in recorded:
        groups.setdefault((rec["model"], rec["batch"]), []).append(rec)
    summary = []
    for (model, batch), recs in groups.items():
        cudnn = sum(r["cudnn_ms"]["median"] for r in recs)
        dense = sum(r["triton_dense_ms"]["median"] for r in recs)
        gated = sum(r["triton_gated_ms"]["median"] for r in recs)
        macs_dense, macs_executed = (sum(r[f] for r in recs) for f in ("macs_dense", "macs_executed"))
        roofline_dense = sum(r["roofline_dense_ms"] for r in recs)
        roofline_executed = sum(r["roofline_executed_ms"] for r in recs)
        summary.append({
            "model": model, "batch": batch, "layers": len(recs), "cudnn_ms": cudnn, "triton_dense_ms": dense,
            "triton_gated_ms": gated, "speedup": cudnn / gated, "ideal_speedup": macs_dense / macs_executed,
            "roofline_ideal_speedup": roofline_dense / roofline_executed,
        })  # fmt: skip
    return summary


def _ratio_summary(ratios: Sequence[float], targets: Targets) -> dict[str, object]:
    return {
        "cases": len(ratios),
        "fraction_at_least_target": (
            sum(r >= targets.fraction_of_ideal for r in ratios) / len(ratios) if ratios else None
        ),
        "geomean_speedup_over_ideal": geomean(ratios),
    }


def summarize(dense: Sequence[dict], gated: Sequence[dict], targets: Targets = Targets()) -> dict[str, object]:
    """The project's target numbers (a), (b), (c); None where no case applies."""
    throughput = [
        rec["triton_dense_vs_cudnn"]
        for rec in dense
        if rec["model"] == targets.throughput_model and rec["batch"] == targets.throughput_batch
    ]
    sparse = [
        rec for rec in gated
        if rec["target_density"] in targets.sparse_densities and rec["batch"] in targets.summary_batches
    ]  # fmt: skip
    full = [rec["gated_over_triton_dense"] for rec in gated if rec["target_density"] == 1.0]
    return {
        "a_triton_dense_vs_cudnn_geomean": {
            "model": targets.throughput_model, "batch": targets.throughput_batch,
            "shapes": len(throughput), "value": geomean(throughput),
        },
        "b_speedup_vs_ideal": {
            "target_fraction_of_ideal": targets.fraction_of_ideal,
            "batches": list(targets.summary_batches),
            "all": _ratio_summary([rec["speedup_over_ideal"] for rec in sparse], targets),
            "per_density": {
                str(d): _ratio_summary(
                    [rec["speedup_over_ideal"] for rec in sparse if rec["target_density"] == d], targets
                )
                for d in targets.sparse_densities
            },
        },
        "b_speedup_vs_roofline_ideal": {
            "target_fraction_of_ideal": targets.fraction_of_ideal,
            "batches": list(targets.summary_batches),
            "all": _ratio_summary([rec["speedup_over_roofline_ideal"] for rec in sparse], targets),
        },
        "c_gated_over_dense_at_density_1": {
            "cases": len(full), "geomean": geomean(full), "max": max(full) if full else None,
        },
    }  # fmt: skip


# --------------------------------------------------------------- environment
def _triton_version() -> str | None:
    if not kernels.TRITON_AVAILABLE:
        return None
    import triton

    return triton.__version__


def environment(cuda: bool) -> dict[str, object]:
    """GPU name and software versions of this run."""
    return {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "torch": torch.__version__,
        "triton": _triton_version(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "dtype": str(DTYPE).removeprefix("torch."),
        "element_size_bytes": ELEM_SIZE,
    }


def default_out(count_only: bool) -> Path:
    """``results/gated_conv_counts.json``, or ``results/gated_conv_<gpu>.json`` for a timing run."""
    if count_only:
        return RESULTS_DIR / "gated_conv_counts.json"
    gpu = re.sub(r"[^a-z0-9]+", "_", torch.cuda.get_device_name().lower()).strip("_")
    return RESULTS_DIR / f"gated_conv_{gpu}.json"


# ------------------------------------------------------------------- printing
def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def print_summary(summary: dict[str, object]) -> None:
    """The target numbers, one line each."""
    a = summary["a_triton_dense_vs_cudnn_geomean"]
    b = summary["b_speedup_vs_ideal"]
    c = summary["c_gated_over_dense_at_density_1"]
    print(
        f"(a) Triton dense / cuDNN throughput, {a['model']} b{a['batch']}, "
        f"geomean of {a['shapes']} shapes: {_fmt(a['value'])}"
    )
    for name, part in [("all", b["all"]), *b["per_density"].items()]:
        print(
            f"(b) density {name:>4}, batches {b['batches']}: {part['cases']} cases, speedup >= "
            f"{b['target_fraction_of_ideal']} x ideal in {_fmt(part['fraction_at_least_target'])} of them, "
            f"geomean speedup/ideal {_fmt(part['geomean_speedup_over_ideal'])}"
        )
    roof = summary["b_speedup_vs_roofline_ideal"]["all"]
    print(
        f"(b) all densities, against the roofline-ideal speedup: {roof['cases']} cases, >= "
        f"{b['target_fraction_of_ideal']} x in {_fmt(roof['fraction_at_least_target'])}, "
        f"geomean {_fmt(roof['geomean_speedup_over_ideal'])}"
    )
    print(
        f"(c) density 1.0, gated / Triton dense time ({c['cases']} cases): "
        f"geomean {_fmt(c['geomean'])}, max {_fmt(c['max'])}"
    )
    for net in summary.get("d_real_decisions", []):
        print(
            f"(d) real decisions, {net['model']} b{net['batch']} ({net['layers']} layer calls): cuDNN "
            f"{net['cudnn_ms']:.3f} ms, Triton dense {net['triton_dense_ms']:.3f} ms, gated "
            f"{net['triton_gated_ms']:.3f} ms; speedup {net['speedup']:.2f}x (ideal {net['ideal_speedup']:.2f}x, "
            f"roofline {net['roofline_ideal_speedup']:.2f}x)"
        )


def print_rates(dense: Iterable[dict], gated: Iterable[dict]) -> None:
    """Median times and achieved rates of every timed case, one line per implementation run.

    ``TFLOP/s`` and ``GB/s`` are from the dense counts for cuDNN and Triton
    dense and from the executed counts for Triton gated; ``kernel TFLOP/s``
    is from the gated kernel's own (tile-rounded) MAC count.
    """
    print(f"{'case':<32}{'impl':>14}{'ms':>9}{'TFLOP/s':>9}{'kernel TFLOP/s':>16}{'GB/s':>8}")
    for rec in dense:
        case = f"{rec['shape']} b{rec['batch']}"
        for impl in ("cudnn", "triton_dense"):
            rates = rec[f"{impl}_rates"]
            print(
                f"{case:<32}{impl:>14}{rec[f'{impl}_ms']['median']:>9.3f}"
                f"{rates['tflops']['median']:>9.1f}{'':>16}{rates['gbps']['median']:>8.0f}"
            )
    for rec in gated:
        case = f"{rec['shape']} b{rec['batch']} d{rec['target_density']}"
        rates = rec["triton_gated_rates"]
        print(
            f"{case:<32}{'triton_gated':>14}{rec['triton_gated_ms']['median']:>9.3f}"
            f"{rates['tflops_executed']['median']:>9.1f}{rates['tflops_kernel']['median']:>16.1f}"
            f"{rates['gbps_executed']['median']:>8.0f}"
        )


def print_totals(totals: Iterable[dict[str, object]]) -> None:
    """Whole-network counted MACs and bytes per (model, mask source, batch, density), and the kernel's overhead.

    ``kernel/exact cond``: conditional MACs the gated Triton kernel runs (whole
    tiles, default schedule) over the exact conditional MACs of the decisions;
    ``worst layer``: the largest of that ratio over the layers; ``tiled``: the
    same whole-network ratio for the single-launch tiled schedule.
    """
    print(
        f"{'model':<12}{'masks':>6}{'batch':>6}{'density':>9}{'GMACs dense':>13}{'GMACs exec':>12}"
        f"{'ideal x':>9}{'MB dense':>10}{'MB exec':>10}{'kernel/exact cond':>19}{'worst layer':>13}{'tiled':>8}"
    )

    def ratio(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for t in totals:
        density = "learned" if t["target_density"] is None else t["target_density"]
        print(
            f"{t['model']:<12}{t['mask_source']:>6}{t['batch']:>6}{density:>9}"
            f"{t['macs_dense'] / 1e9:>13.2f}{t['macs_executed'] / 1e9:>12.2f}{t['ideal_speedup']:>9.2f}"
            f"{t['bytes_dense'] / 1e6:>10.1f}{t['bytes_executed'] / 1e6:>10.1f}{ratio(t['kernel_overhead']):>19}"
            f"{ratio(t['worst_layer_kernel_overhead']):>13}{ratio(t['tiled_kernel_overhead']):>8}"
        )
