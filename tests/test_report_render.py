"""The report page rendered by a headless Chromium: every image decodes to a non-zero natural size and the
rendered text holds the run's numbers.

The browser is Debian's ``chromium-headless-shell`` (``apt-get install
chromium-headless-shell``; ``playwright install`` would download one from a
CDN, which these machines cannot reach), driven by the ``playwright`` Python
package (the ``dev`` extra) through ``executable_path``. The page loads from
a ``file://`` URL with every network request refused, so it can only show
what it embeds. A fresh install (pip only) has no browser, so this test is
marked ``browser`` and left out of the default run (``pyproject.toml``); the
page's content is checked without a browser in ``tests/test_report.py``.
"""

from __future__ import annotations

import json
import shutil

import pytest

from gating.cli import main
from gating.report.html import fmt_accuracy, fmt_ratio

pytestmark = pytest.mark.browser  # python -m pytest -m browser, on a machine with the browser

BROWSERS = ("chromium-headless-shell", "chromium")


def _browser() -> str:
    path = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    assert path, f"no headless Chromium on PATH ({', '.join(BROWSERS)}): apt-get install chromium-headless-shell"
    return path


def test_rendered_page_shows_images_and_numbers(tmp_path):
    from playwright.sync_api import sync_playwright

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    results = {
        "teacher_accuracy": 91.234, "student_accuracy": 90.5, "teacher_macs": 4_000_000, "macs_executed": 1_320_000,
        "macs_ratio": 0.33, "layers": {"layer1.conv": 0.25, "layer2.conv": 0.4375},
        "report": [{"name": name, "kind": "gated", "density": d, "macs_dense": 2_000_000, "macs_executed": 660_000,
                    "bytes_dense": 1000, "bytes_executed": 600} for name, d in (("layer1.conv", 0.25),
                                                                                 ("layer2.conv", 0.4375))],
    }  # fmt: skip
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "student_metrics.jsonl").write_text(json.dumps({"epoch": 1, "accuracy": 88.0, "macs_ratio": 0.4}))
    out = tmp_path / "report.html"
    assert main(["report", str(run_dir), "--out", str(out)]) == 0

    requested: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=_browser(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", lambda route: (requested.append(route.request.url), route.abort())
                       if not route.request.url.startswith(("file:", "data:")) else route.continue_())
            page.goto(out.as_uri(), wait_until="load")
            sizes = page.evaluate("[...document.images].map(i => [i.complete, i.naturalWidth, i.naturalHeight])")
            text = page.inner_text("body")
        finally:
            browser.close()
    assert requested == []
    assert len(sizes) == 2 and all(done and width > 0 and height > 0 for done, width, height in sizes)
    for number in (fmt_accuracy(91.234), fmt_accuracy(90.5), fmt_ratio(0.33), fmt_ratio(0.25), fmt_ratio(0.4375)):
        assert number in text
