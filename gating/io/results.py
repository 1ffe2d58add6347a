"""A workflow's results file: the run's environment added, written atomically, its table printed."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_json

__all__ = ["publish_results"]


def publish_results(results: dict[str, Any], path: Path, started: float, table: str) -> dict[str, Any]:
    """Add ``torch``, ``python`` and ``seconds`` (since ``started``, a ``time.perf_counter()``) to ``results``,
    write them to ``path`` as JSON (atomically), print ``table`` and where they went; returns ``results``."""
    results.update(torch=torch.__version__, python=platform.python_version(),
                   seconds=round(time.perf_counter() - started, 1))
    atomic_write_json(results, path)
    print(table)
    print(f"wrote {path}")
    return results
