"""``python -m gating report``: one self-contained HTML page from a run folder (and a bench JSON).

* :func:`make_report` (:mod:`.page`): read, draw, write atomically.
* :mod:`.inputs`: :func:`load_run`, :func:`load_bench`, :class:`ReportInputError`.
* :mod:`.plots`: the matplotlib figures as PNG bytes (Agg).
* :mod:`.html`: the page (PNGs as base64 data URIs) and the number formats it uses.
"""

from .inputs import EpochPoint, ReportInputError, RunData, load_bench, load_run
from .page import make_report

__all__ = ["EpochPoint", "ReportInputError", "RunData", "load_bench", "load_run", "make_report"]
