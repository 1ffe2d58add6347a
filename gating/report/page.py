"""``make_report``: read a run folder (and a bench JSON), draw the figures, write one HTML page atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..io import atomic_write
from . import plots
from .html import render_page
from .inputs import RunData, kernel_records, load_bench, load_kernels, load_run

__all__ = ["bench_figures", "kernel_figure", "make_report", "run_figures"]


def run_figures(run: RunData) -> dict[str, bytes]:
    """The run's PNGs: ``accuracy_vs_macs``, and ``layer_densities`` when ``results["layers"]`` names any layer."""
    r = run.results
    figures = {"accuracy_vs_macs": plots.accuracy_vs_macs(r["teacher_accuracy"], r["student_accuracy"],
                                                          run.macs_ratio, run.epochs)}
    if r["layers"]:
        figures["layer_densities"] = plots.layer_densities(list(r["layers"]), list(r["layers"].values()))
    return figures


def bench_figures(bench: dict[str, Any]) -> dict[str, bytes]:
    """The bench's PNGs: ``speedups`` when it was timed, and ``bench_layers:<model> b<batch>`` for each model at
    its largest batch."""
    records = bench["records"]
    figures = {}
    if bench["timing"] is not None:
        figures["speedups"] = plots.speedups(
            [f"{r['model']} b{r['batch']}" for r in records],
            [r["timing"]["speedup_over_cudnn"] for r in records],
            [r["counts"]["macs_reduction"] for r in records],
            [r["roofline"]["roofline_ideal_speedup"] if r["roofline"] else None for r in records],
        )  # fmt: skip
    largest: dict[str, dict[str, Any]] = {}
    for record in records:
        if record["model"] not in largest or record["batch"] > largest[record["model"]]["batch"]:
            largest[record["model"]] = record
    for model, record in largest.items():
        layers = record["counts"]["layers"]
        roofline = record["roofline"]["layers_roofline_ideal_speedup"] if record["roofline"] else None
        label = f"{model} b{record['batch']}"
        figures[f"bench_layers:{label}"] = plots.layer_reductions(
            label, [layer["name"] for layer in layers], [layer["macs_reduction"] for layer in layers],
            [layer["bytes_reduction"] for layer in layers], roofline,
        )  # fmt: skip
    return figures


def kernel_figure(timed: bool, records: list[dict[str, Any]]) -> bytes | None:
    """The kernel sweep's measured-vs-ideal PNG when it was timed (``None`` for a counted-only sweep)."""
    if not timed or not records:
        return None
    return plots.kernel_speedups([r["roofline_ideal_speedup"] for r in records], [r["speedup"] for r in records],
                                 [r["measured_density"] for r in records])


def make_report(run_dir: Path, bench: Path | None = None, out: Path | None = None,
                kernels: Path | None = None) -> Path:
    """Write the report page of the run folder ``run_dir`` (with the bench JSON ``bench`` and the kernel sweep
    ``kernels`` of ``python -m benchmarks.run_gpu``) to ``out`` (default ``run_dir / "report.html"``),
    atomically; returns its path.

    Raises:
        gating.report.ReportInputError: ``run_dir`` lacks a readable ``results.json``, or ``bench`` is not a
            readable bench JSON (one line naming the path and what is expected).
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    bench_data = None if bench is None else load_bench(Path(bench))
    sweep = None if kernels is None else kernel_records(load_kernels(Path(kernels)))
    page = render_page(
        f"Gating report: {run_dir}", run, run_figures(run), bench=bench_data, bench_source=str(bench or ""),
        bench_figures=None if bench_data is None else bench_figures(bench_data),
        kernels=sweep, kernels_source=str(kernels or ""), kernels_figure=None if sweep is None else kernel_figure(*sweep),
    )  # fmt: skip
    out = run_dir / "report.html" if out is None else Path(out)
    atomic_write(out, lambda f: f.write(page.encode("utf-8")))
    return out
