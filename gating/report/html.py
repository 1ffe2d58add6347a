"""One self-contained HTML page: the run's numbers and figures, and a bench's, with no external resource.

Figures are ``<img>`` elements whose ``src`` is a ``data:image/png;base64,``
URI; styles are inline in one ``<style>`` element; there is no script. Every
value cell carries a ``data-field`` attribute naming what it shows (layer
rows a ``data-layer``, bench rows ``data-model`` and ``data-batch``), and its
text is the value formatted by the ``fmt_*`` function for its unit, so a
reader (or a test) can match each number with its JSON source.
"""

from __future__ import annotations

import base64
from html import escape
from typing import Any

from .inputs import RunData

__all__ = ["fmt_accuracy", "fmt_count", "fmt_ms", "fmt_ratio", "fmt_speedup", "png_uri", "render_page"]

_STYLE = """
body { font-family: sans-serif; margin: 2em; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
figure { margin: 1em 0; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.6em 1em; }
"""


def fmt_accuracy(value: float) -> str:
    """A test accuracy in percent: two decimals (``"91.25"``)."""
    return f"{value:.2f}"


def fmt_ratio(value: float | None) -> str:
    """A ratio in [0, 1] such as a density or executed/dense MACs: four decimals (``"0.3312"``); ``"n/a"`` for None."""
    return "n/a" if value is None else f"{value:.4f}"


def fmt_speedup(value: float | None) -> str:
    """A speedup or reduction factor: two decimals and ``x`` (``"3.02x"``); ``"n/a"`` for None."""
    return "n/a" if value is None else f"{value:.2f}x"


def fmt_ms(value: float | None) -> str:
    """A time in milliseconds: three decimals (``"1.234"``); ``"n/a"`` for None."""
    return "n/a" if value is None else f"{value:.3f}"


def fmt_count(value: int) -> str:
    """An exact count (MACs, bytes, images): thousands separated by commas (``"1,234,567"``)."""
    return f"{value:,d}"


def png_uri(png: bytes) -> str:
    """``png`` as a ``data:image/png;base64,...`` URI."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _cell(field: str, text: str, title: str | None = None) -> str:
    extra = f' title="{escape(title)}"' if title else ""
    return f'<td data-field="{escape(field)}"{extra}>{escape(text)}</td>'


def _figure(png: bytes, alt: str, caption: str) -> str:
    return (f'<figure><img src="{png_uri(png)}" alt="{escape(alt)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>")


def _run_section(run: RunData, figures: dict[str, bytes]) -> str:
    r = run.results
    rows = [
        ("teacher test accuracy (%)", "teacher_accuracy", fmt_accuracy(r["teacher_accuracy"])),
        ("gated student test accuracy (%)", "student_accuracy", fmt_accuracy(r["student_accuracy"])),
        ("executed MACs / teacher's dense MACs", "macs_ratio", fmt_ratio(run.macs_ratio)),
        ("teacher MACs (test set)", "teacher_macs", fmt_count(r["teacher_macs"])),
        ("student executed MACs (test set)", "macs_executed", fmt_count(r["macs_executed"])),
    ]
    if "bytes_ratio" in r:
        rows.append(("executed bytes / teacher's dense bytes", "bytes_ratio", fmt_ratio(r["bytes_ratio"])))
    if "test_images" in r:
        rows.append(("test images", "test_images", fmt_count(r["test_images"])))
    body = "".join(f"<tr><th>{escape(label)}</th>{_cell(field, text)}</tr>" for label, field, text in rows)
    parts = [f'<section id="run"><h2>Run</h2><table id="summary">{body}</table>']
    parts.append(_figure(figures["accuracy_vs_macs"], "accuracy vs executed MACs",
                         "Test accuracy against executed MACs (relative to the teacher's dense MACs)."
                         + (f" Grey points: the student after each of {len(run.epochs)} evaluated epochs."
                            if run.epochs else "")))
    parts.append("</section>")
    return "".join(parts)


def _layer_section(run: RunData, figures: dict[str, bytes]) -> str:
    head = ("<tr><th>layer</th><th>kind</th><th>density</th><th>MACs dense</th><th>MACs executed</th>"
            "<th>bytes dense</th><th>bytes executed</th></tr>")
    rows = []
    for layer in run.results["report"]:
        rows.append(
            f'<tr data-layer="{escape(layer["name"])}"><td>{escape(layer["name"])}</td>'
            f'{_cell("kind", layer["kind"])}{_cell("density", fmt_ratio(layer.get("density")))}'
            f'{_cell("macs_dense", fmt_count(layer["macs_dense"]))}'
            f'{_cell("macs_executed", fmt_count(layer["macs_executed"]))}'
            f'{_cell("bytes_dense", fmt_count(layer["bytes_dense"]))}'
            f'{_cell("bytes_executed", fmt_count(layer["bytes_executed"]))}</tr>'
        )
    parts = ['<section id="layers"><h2>Per-layer density and work (student, test set)</h2>']
    if "layer_densities" in figures:
        parts.append(_figure(figures["layer_densities"], "per-layer density",
                             "Density of each gated layer: fraction of gate decisions on (partial-sum gates) "
                             "or of output channels kept (runtime gates), over the test set."))
    parts.append(f'<table id="layer-table">{head}{"".join(rows)}</table></section>')
    return "".join(parts)


def _form_ms(timing: dict[str, Any] | None, form: str) -> tuple[str, str | None]:
    """A timed form's median (formatted) and, when it failed, its error as the cell's title."""
    if timing is None or timing.get(form) is None:
        return "n/a", None
    result = timing[form]
    if "error" in result:
        return "error", result["error"]
    return fmt_ms(result["ms"]["median"]), None


def _bench_row(record: dict[str, Any]) -> str:
    counts, timing, roofline = record["counts"], record["timing"], record["roofline"]
    budget = record["setup"].get("target_flops")
    cells = [
        _cell("target_flops", "saved gates" if budget is None else str(budget)),
        _cell("macs_ratio", fmt_ratio(counts["macs_executed"] / counts["macs_dense"])),
        _cell("macs_reduction", fmt_speedup(counts["macs_reduction"])),
        _cell("bytes_reduction", fmt_speedup(counts["bytes_reduction"])),
        _cell("roofline_ideal_speedup", fmt_speedup(None if roofline is None else roofline["roofline_ideal_speedup"])),
    ]
    for form in ("built", "built_cuda_graph", "cudnn_eager", "compiled"):
        text, error = _form_ms(timing, form)
        cells.append(_cell(f"{form}_ms", text, error))
    built = None if timing is None else timing.get("built")
    cells.append(_cell("built_images_per_s", "n/a" if not built or "images_per_s" not in built
                       else f"{built['images_per_s']:.1f}"))
    for field in ("speedup_over_cudnn", "speedup_over_compiled", "speedup_over_ideal"):
        cells.append(_cell(field, fmt_speedup(None if timing is None else timing[field])))
    return (f'<tr data-model="{escape(record["model"])}" data-batch="{record["batch"]}">'
            f'<td>{escape(record["model"])}</td>{_cell("batch", str(record["batch"]))}{"".join(cells)}</tr>')


def _bench_section(bench: dict[str, Any], source: str, figures: dict[str, bytes]) -> str:
    env, params = bench["environment"], bench["parameters"]
    parts = ['<section id="bench"><h2>Benchmark</h2>',
             f"<p>From <code>{escape(source)}</code>: device {escape(str(env.get('device')))}, torch "
             f"{escape(str(env.get('torch')))}, triton {escape(str(env.get('triton')))}, python "
             f"{escape(str(env.get('python')))}; dtype {escape(str(params.get('dtype')))}, gates "
             f"{escape(str(params.get('kind') or 'partial_sum'))}, image size {escape(str(params.get('image_size')))}, "
             f"pruning to parameters {escape(str(params.get('prune_params')))}.</p>"]
    if bench["timing"] is None:
        reason = bench.get("timing_skipped") or "the bench was not run on CUDA"
        parts.append(f'<p class="note" id="no-timing">This bench has no timing ({escape(reason)}). The speedups '
                     "below are the ideal ones its exact counts imply; measured latency, throughput and speedups "
                     "need python -m gating bench on a CUDA GPU.</p>")
    head = ("<tr><th>model</th><th>batch</th><th>MAC budget</th><th>executed / dense MACs</th><th>ideal speedup (MACs)</th>"
            "<th>ideal speedup (bytes)</th><th>ideal speedup (roofline)</th><th>built ms</th>"
            "<th>built + CUDA graph ms</th><th>cuDNN eager ms</th><th>torch.compile ms</th><th>built images/s</th>"
            "<th>speedup over cuDNN</th><th>speedup over compile</th><th>measured / ideal</th></tr>")
    rows = "".join(_bench_row(record) for record in bench["records"])
    parts.append(f'<h3>End to end</h3><table id="bench-table">{head}{rows}</table>')
    for key, png in figures.items():
        if key == "speedups":
            parts.append(_figure(png, "measured vs ideal speedup", "Measured speedup of the built model over "
                                 "cuDNN eager against the ideal speedups of its counts, per model and batch."))
        elif key.startswith("bench_layers:"):
            label = key.removeprefix("bench_layers:")
            parts.append(_figure(png, f"per-layer ideal speedup {label}",
                                 f"Per-layer ideal speedups of {label} (dense over executed MACs and bytes)."))
    parts.append("</section>")
    return "".join(parts)


def _kernel_row(record: dict[str, Any], timed: bool) -> str:
    cells = [_cell("batch", str(record["batch"])), _cell("density", fmt_ratio(record.get("measured_density"))),
             _cell("ideal_speedup", fmt_speedup(record["ideal_speedup"])),
             _cell("roofline_ideal_speedup", fmt_speedup(record.get("roofline_ideal_speedup"))),
             _cell("speedup", fmt_speedup(record["speedup"] if timed else None)),
             _cell("speedup_over_roofline_ideal", fmt_speedup(record["speedup_over_roofline_ideal"] if timed else None))]
    return (f'<tr data-shape="{escape(record["shape"])}" data-batch="{record["batch"]}" '
            f'data-density="{record["target_density"]}"><td>{escape(record["shape"])}</td>{"".join(cells)}</tr>')


def _kernel_section(timed: bool, records: list[dict[str, Any]], source: str, figure: bytes | None) -> str:
    parts = ['<section id="kernels"><h2>Kernel sweep: measured against ideal speedup per layer and density</h2>',
             f"<p>From <code>{escape(source)}</code>, one row per layer shape, batch and gate density "
             "(spatially coherent masks).</p>"]
    if not timed:
        parts.append('<p class="note" id="kernels-not-timed">This sweep was counted only (run_gpu --count-only): '
                     "the ideal speedups its counts imply are shown; measured speedups need python -m "
                     "benchmarks.run_gpu on a CUDA GPU.</p>")
    if figure is not None:
        parts.append(_figure(figure, "kernel measured vs ideal speedup", "Measured speedup of the gated kernel "
                             "over cuDNN against the roofline-ideal speedup of its executed counts."))
    head = ("<tr><th>layer shape</th><th>batch</th><th>density</th><th>ideal speedup (MACs)</th>"
            "<th>ideal speedup (roofline)</th><th>measured speedup over cuDNN</th><th>measured / roofline ideal</th></tr>")
    rows = "".join(_kernel_row(record, timed) for record in records)
    parts.append(f'<table id="kernel-table">{head}{rows}</table></section>')
    return "".join(parts)


def render_page(title: str, run: RunData, figures: dict[str, bytes], bench: dict[str, Any] | None = None,
                bench_source: str = "", bench_figures: dict[str, bytes] | None = None,
                kernels: tuple[bool, list[dict[str, Any]]] | None = None, kernels_source: str = "",
                kernels_figure: bytes | None = None) -> str:
    """The whole page as a string (UTF-8 HTML5).

    ``figures``: ``accuracy_vs_macs`` and (when the run has gated layers)
    ``layer_densities`` PNGs; ``bench`` (a bench JSON as read) with its path
    ``bench_source`` and ``bench_figures`` (``speedups`` when timed, and
    ``bench_layers:<model> b<batch>`` per benched model); ``kernels``
    (``inputs.kernel_records`` of a kernel sweep) with its path and, when
    timed, its ``kernel_speedups`` figure.
    """
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
             f"<h1>{escape(title)}</h1>"]
    parts.append(_run_section(run, figures))
    parts.append(_layer_section(run, figures))
    if bench is not None:
        parts.append(_bench_section(bench, bench_source, bench_figures or {}))
    if kernels is not None:
        parts.append(_kernel_section(*kernels, kernels_source, kernels_figure))
    parts.append("</body></html>")
    return "\n".join(parts)
