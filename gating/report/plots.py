"""The report's figures, drawn with matplotlib's Agg renderer (no display, no pyplot state) and returned as PNG bytes.

Each function takes numbers read from the run's or the bench's JSON and
returns the bytes of one PNG file (``b"\\x89PNG..."``, 100 dpi).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .inputs import EpochPoint

__all__ = ["accuracy_vs_macs", "kernel_speedups", "layer_densities", "layer_reductions", "speedups"]

DPI = 100


def _png(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def accuracy_vs_macs(teacher_accuracy: float, student_accuracy: float, student_macs_ratio: float,
                     epochs: Sequence[EpochPoint]) -> bytes:
    """Test accuracy (%) against executed MACs relative to the teacher's dense MACs: the teacher at 1, the
    final student, and the student after each evaluated epoch (``epochs``, executed/dense of its network)."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    if epochs:
        axes.plot([p.macs_ratio for p in epochs], [p.accuracy for p in epochs], "o-", color="tab:gray",
                  alpha=0.7, label="student, per epoch")
        for point in epochs:
            axes.annotate(str(point.epoch), (point.macs_ratio, point.accuracy), fontsize=7,
                          textcoords="offset points", xytext=(3, 3))
    axes.plot([1.0], [teacher_accuracy], "s", color="tab:blue", markersize=9, label="teacher (dense)")
    axes.plot([student_macs_ratio], [student_accuracy], "*", color="tab:red", markersize=14,
              label="gated student (final)")
    axes.set_xlabel("executed MACs / teacher's dense MACs")
    axes.set_ylabel("test accuracy (%)")
    axes.set_xlim(0, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(loc="best", fontsize=8)
    return _png(figure)


def layer_densities(names: Sequence[str], densities: Sequence[float]) -> bytes:
    """Horizontal bars: each gated layer's density (fraction of decisions on, or of channels kept), in order."""
    figure = Figure(figsize=(6, max(2.5, 0.25 * len(names) + 1)))
    axes = figure.add_subplot()
    rows = range(len(names))
    axes.barh(rows, densities, color="tab:green")
    axes.set_yticks(list(rows), labels=list(names), fontsize=7)
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("density (fraction of gate decisions on / channels kept)")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def speedups(labels: Sequence[str], measured: Sequence[float | None], ideal: Sequence[float],
             roofline: Sequence[float | None]) -> bytes:
    """Grouped bars per (model, batch): the measured speedup of the built model over cuDNN eager, the MAC-ideal
    speedup and the roofline-ideal speedup (a missing value draws no bar)."""
    figure = Figure(figsize=(max(6, 0.9 * len(labels) + 2), 4))
    axes = figure.add_subplot()
    width = 0.27
    for offset, (values, name, colour) in enumerate(
        ((measured, "measured (over cuDNN eager)", "tab:red"), (ideal, "ideal (MACs)", "tab:blue"),
         (roofline, "ideal (roofline)", "tab:orange"))):  # fmt: skip
        xs = [i + (offset - 1) * width for i, v in enumerate(values) if v is not None]
        axes.bar(xs, [v for v in values if v is not None], width, label=name, color=colour)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(labels)), labels=list(labels), rotation=30, ha="right", fontsize=8)
    axes.set_ylabel("speedup (x)")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _png(figure)


def layer_reductions(title: str, names: Sequence[str], macs: Sequence[float], bytes_: Sequence[float],
                     roofline: Sequence[float] | None) -> bytes:
    """Per layer of one benched (model, batch): the ideal speedups its counts imply (dense over executed MACs,
    dense over executed bytes, and the roofline ideal when the bench measured the device's peaks)."""
    figure = Figure(figsize=(7, max(2.5, 0.22 * len(names) + 1.2)))
    axes = figure.add_subplot()
    rows = list(range(len(names)))
    series = [(macs, "MACs", "tab:blue"), (bytes_, "bytes", "tab:purple")]
    if roofline is not None:
        series.append((roofline, "roofline", "tab:orange"))
    height = 0.8 / len(series)
    for index, (values, name, colour) in enumerate(series):
        axes.barh([r + (index - (len(series) - 1) / 2) * height for r in rows], values, height, label=name,
                  color=colour)
    axes.set_yticks(rows, labels=list(names), fontsize=6)
    axes.invert_yaxis()
    axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel("ideal speedup of the layer (dense / executed)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def kernel_speedups(ideal: Sequence[float], measured: Sequence[float], densities: Sequence[float]) -> bytes:
    """Measured speedup of the gated kernel over cuDNN against its ideal speedup, one point per (layer shape,
    batch, density), coloured by density; the diagonal is "as fast as the counts allow"."""
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    points = axes.scatter(ideal, measured, c=densities, cmap="viridis", s=18)
    top = max([*ideal, *measured, 1.0])
    axes.plot([0, top], [0, top], "--", color="tab:gray", label="measured = ideal")
    axes.set_xlabel("ideal speedup (roofline of the executed counts)")
    axes.set_ylabel("measured speedup over cuDNN")
    figure.colorbar(points, ax=axes, label="gate density")
    axes.legend(loc="upper left")
    return _png(figure)
