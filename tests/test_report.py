"""``python -m gating report`` on a tiny ``gating train`` run folder: the page's figures and numbers.

The page is parsed with ``html.parser``: every figure must be a decodable PNG
data URI, and every number shown must equal its JSON source formatted as the
page formats it (``gating.report.html.fmt_*``).
"""

from __future__ import annotations

import base64
import copy
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

from gating.cli import CommandError, main
from gating.report.html import fmt_accuracy, fmt_count, fmt_ms, fmt_ratio, fmt_speedup

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Page(HTMLParser):
    """The parts of a report page the tests read: image sources, value cells by row, notes, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: dict[tuple[str, str], str] = {}  # (row key, data-field) -> text
        self.ids: set[str] = set()
        self._row = "summary"
        self._field: str | None = None
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            self.ids.add(attributes["id"])
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "tr":
            if "data-layer" in attributes:
                self._row = attributes["data-layer"]
            elif "data-model" in attributes:
                self._row = f"{attributes['data-model']} b{attributes['data-batch']}"
            elif "data-shape" in attributes:
                self._row = f"{attributes['data-shape']} b{attributes['data-batch']} d{attributes['data-density']}"
        elif tag == "td" and "data-field" in attributes:
            self._field = attributes["data-field"]
            self.cells[(self._row, self._field)] = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._field = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._field is not None:
            self.cells[(self._row, self._field)] += data


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run folder of ``python -m gating train`` on the built-in data (about 10 s)."""
    out = tmp_path_factory.mktemp("report") / "run"
    assert main(["train", "--out", str(out), "--num-train", "256", "--num-test", "128", "--image-size", "12",
                 "--model-arg", "width=4", "--teacher-epochs", "1", "--epochs", "1", "--batch-size", "32",
                 "--calibration-images", "64", "--bn-recalibration-batches", "2", "--budget-fit-batches", "2",
                 "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> Path:
    """A CPU bench JSON of ResNet-20 at 32x32 (counts only, about 1 s)."""
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", "--models", "resnet20", "--image-size", "32", "--batches", "1,2", "--device", "cpu",
                 "--calibration-images", "4", "--out", str(out)]) == 0
    return out


def _page(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def _check_images(page: Page, count: int) -> None:
    assert len(page.images) == count
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src.removeprefix(prefix), validate=True)
        assert png.startswith(PNG_SIGNATURE) and len(png) > len(PNG_SIGNATURE)


def test_run_page_shows_the_figures_and_the_json_numbers(run_dir, tmp_path):
    out = tmp_path / "page" / "report.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0
    page = _page(out)
    _check_images(page, 2)  # accuracy vs MACs, per-layer density
    results = json.loads((run_dir / "results.json").read_text())
    summary = {field: page.cells[("summary", field)] for field in
               ("teacher_accuracy", "student_accuracy", "macs_ratio", "teacher_macs", "macs_executed")}
    assert summary == {
        "teacher_accuracy": fmt_accuracy(results["teacher_accuracy"]),
        "student_accuracy": fmt_accuracy(results["student_accuracy"]),
        "macs_ratio": fmt_ratio(results["macs_ratio"]),
        "teacher_macs": fmt_count(results["teacher_macs"]),
        "macs_executed": fmt_count(results["macs_executed"]),
    }
    assert results["layers"]
    for name, density in results["layers"].items():
        assert page.cells[(name, "density")] == fmt_ratio(density)
    for layer in results["report"]:
        assert page.cells[(layer["name"], "macs_executed")] == fmt_count(layer["macs_executed"])
    assert "bench" not in page.ids
    assert not list(out.parent.glob(".*.tmp"))  # written through a temporary file, renamed


def test_default_out_is_in_the_run_folder(run_dir):
    assert main(["report", str(run_dir)]) == 0
    _check_images(_page(run_dir / "report.html"), 2)


def test_untimed_bench_says_so_and_shows_its_counts(run_dir, bench_json, tmp_path):
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--bench", str(bench_json), "--out", str(out)]) == 0
    page = _page(out)
    bench = json.loads(bench_json.read_text())
    assert bench["timing"] is None
    assert "no-timing" in page.ids and "This bench has no timing" in "".join(page.text)
    _check_images(page, 3)  # + the per-layer ideal speedups of resnet20 b2 (no measured-speedup figure)
    for record in bench["records"]:
        row, counts = f"{record['model']} b{record['batch']}", record["counts"]
        assert page.cells[(row, "macs_ratio")] == fmt_ratio(counts["macs_executed"] / counts["macs_dense"])
        assert page.cells[(row, "macs_reduction")] == fmt_speedup(counts["macs_reduction"])
        assert page.cells[(row, "bytes_reduction")] == fmt_speedup(counts["bytes_reduction"])
        assert page.cells[(row, "built_ms")] == "n/a" and page.cells[(row, "speedup_over_cudnn")] == "n/a"


def test_timed_bench_shows_measured_against_ideal(run_dir, bench_json, tmp_path):
    """A bench JSON with the timing fields a CUDA run writes (values made up here): they are shown as given."""
    bench = json.loads(bench_json.read_text())
    timed = copy.deepcopy(bench)
    timed["timing"] = {"device_peaks": {"matmul_tflops": 500.0, "copy_gbps": 3000.0}, "forms": []}
    timed["timing_skipped"] = None
    for index, record in enumerate(timed["records"]):
        times = {form: {"ms": {"median": 1.5 + index + k, "p20": 1.0, "p80": 2.0}, "images_per_s": 100.0 + k,
                        "first_call_s": 0.1} for k, form in enumerate(("built", "cudnn_eager", "compiled"))}
        times["built_cuda_graph"] = {"error": "RuntimeError: capture failed"}
        record["timing"] = times | {"ideal_speedup": 3.0, "speedup_over_cudnn": 1.7 + index,
                                    "speedup_over_compiled": 1.2, "speedup_over_ideal": 0.5}
        record["roofline"] = {"roofline_ideal_speedup": 1.4, "roofline_dense_ms": 1.0, "roofline_executed_ms": 0.7,
                              "layers_roofline_ideal_speedup": [1.1] * len(record["counts"]["layers"])}
    path = tmp_path / "timed.json"
    path.write_text(json.dumps(timed))
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--bench", str(path), "--out", str(out)]) == 0
    page = _page(out)
    assert "no-timing" not in page.ids
    _check_images(page, 4)  # + measured vs ideal speedups
    for record in timed["records"]:
        row, timing = f"{record['model']} b{record['batch']}", record["timing"]
        assert page.cells[(row, "built_ms")] == fmt_ms(timing["built"]["ms"]["median"])
        assert page.cells[(row, "cudnn_eager_ms")] == fmt_ms(timing["cudnn_eager"]["ms"]["median"])
        assert page.cells[(row, "built_cuda_graph_ms")] == "error"
        assert page.cells[(row, "speedup_over_cudnn")] == fmt_speedup(timing["speedup_over_cudnn"])
        assert page.cells[(row, "roofline_ideal_speedup")] == fmt_speedup(1.4)


@pytest.mark.parametrize("broken", ["missing", "not-json", "no-keys"])
def test_a_folder_without_readable_results_is_a_one_line_error(tmp_path, broken):
    folder = tmp_path / "run"
    folder.mkdir()
    if broken == "not-json":
        (folder / "results.json").write_text("{not json")
    elif broken == "no-keys":
        (folder / "results.json").write_text("{}")
    with pytest.raises(CommandError) as caught:
        main(["report", str(folder), "--out", str(tmp_path / "r.html")])
    message = caught.value.message
    assert caught.value.status == 1 and "\n" not in message
    assert str(folder / "results.json") in message and "python -m gating train / demo" in message
    assert not (tmp_path / "r.html").exists()


def test_a_bad_bench_json_is_a_one_line_error(run_dir, tmp_path):
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"records": []}))
    with pytest.raises(CommandError) as caught:
        main(["report", str(run_dir), "--bench", str(path), "--out", str(tmp_path / "r.html")])
    assert caught.value.status == 1 and str(path) in caught.value.message
    assert "python -m gating bench" in caught.value.message


@pytest.fixture(scope="module")
def kernel_sweep(tmp_path_factory) -> Path:
    """The counted kernel sweep of ``python -m benchmarks.run_gpu --count-only --quick`` (about 1 s)."""
    from benchmarks.run_gpu import main as run_gpu

    out = tmp_path_factory.mktemp("kernels") / "counts.json"
    assert run_gpu(["--count-only", "--quick", "--out", str(out)]) == 0
    return out


def _kernel_key(record: dict) -> str:
    return f"{record['shape']} b{record['batch']} d{record['target_density']}"


def test_a_counted_kernel_sweep_shows_its_ideal_speedups_and_says_it_was_not_timed(run_dir, kernel_sweep, tmp_path):
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--kernels", str(kernel_sweep), "--out", str(out)]) == 0
    page = _page(out)
    assert "kernels-not-timed" in page.ids
    records = [r for r in json.loads(kernel_sweep.read_text())["counts"] if r["mask_source"] == "blob"]
    assert records
    for record in records:
        key = _kernel_key(record)
        assert page.cells[(key, "ideal_speedup")] == fmt_speedup(record["ideal_speedup"])
        assert page.cells[(key, "density")] == fmt_ratio(record["measured_density"])
        assert page.cells[(key, "speedup")] == "n/a"
    _check_images(page, 2)  # the run's two figures; a counted sweep has no measured-vs-ideal figure


def test_a_timed_kernel_sweep_shows_measured_against_ideal(run_dir, kernel_sweep, tmp_path):
    """A timed sweep's records carry ``speedup`` and ``roofline_ideal_speedup``; made here from the counted one."""
    sweep = json.loads(kernel_sweep.read_text())
    timed = [r | {"roofline_ideal_speedup": r["ideal_bytes_speedup"], "speedup": 0.5 * r["ideal_speedup"],
                  "speedup_over_roofline_ideal": 0.5 * r["ideal_speedup"] / r["ideal_bytes_speedup"]}
             for r in sweep.pop("counts") if r["mask_source"] == "blob"]
    path = tmp_path / "timed.json"
    path.write_text(json.dumps(sweep | {"gated": timed}))
    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--kernels", str(path), "--out", str(out)]) == 0
    page = _page(out)
    assert "kernels-not-timed" not in page.ids
    for record in timed:
        key = _kernel_key(record)
        assert page.cells[(key, "speedup")] == fmt_speedup(record["speedup"])
        assert page.cells[(key, "roofline_ideal_speedup")] == fmt_speedup(record["roofline_ideal_speedup"])
        assert page.cells[(key, "speedup_over_roofline_ideal")] == fmt_speedup(record["speedup_over_roofline_ideal"])
    _check_images(page, 3)


def test_a_json_that_is_no_kernel_sweep_is_a_one_line_error(run_dir, bench_json, tmp_path):
    with pytest.raises(CommandError) as caught:
        main(["report", str(run_dir), "--kernels", str(bench_json), "--out", str(tmp_path / "r.html")])
    assert caught.value.status == 1 and str(bench_json) in caught.value.message
    assert "not a gated_conv2d kernel sweep" in caught.value.message and "\n" not in caught.value.message
