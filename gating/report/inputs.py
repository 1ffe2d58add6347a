"""What a report reads: a run folder's ``results.json`` (and ``student_metrics.jsonl``), and a bench JSON.

A run folder is one written by ``python -m gating train`` or ``python -m
gating demo``. Both write in ``results.json`` the teacher's and student's test
accuracies (percent), the teacher's dense MACs and the student's executed
MACs over the test set, ``layers`` (gated layer name -> density) and
``report`` (the student's per-layer counts, ``LayerCount.to_dict()``).
``train`` also writes ``macs_ratio``; a demo's is
``macs_executed / teacher_macs``. ``student_metrics.jsonl`` (optional) holds
one record per epoch; those with ``accuracy`` and ``macs_ratio`` (the
epochs that were evaluated) become per-epoch points.

A bench JSON is one written by ``python -m gating bench`` (``gating.bench.run``).
A kernel-sweep JSON is one written by ``python -m benchmarks.run_gpu``:
timed on CUDA it holds ``gated`` records (per layer shape, batch and
density: ``speedup`` over cuDNN, ``ideal_speedup`` from the MACs,
``roofline_ideal_speedup``), with ``--count-only`` ``counts`` records (the
ideal speedups only).
Anything missing or unreadable raises :class:`ReportInputError`, one line
naming the path and what is expected.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EpochPoint", "ReportInputError", "RunData", "kernel_records", "load_bench", "load_kernels", "load_run"]

_RUN_KEYS = ("teacher_accuracy", "student_accuracy", "teacher_macs", "macs_executed", "layers", "report")
_BENCH_KEYS = ("benchmark", "environment", "parameters", "timing", "records")


class ReportInputError(ValueError):
    """A run folder or bench JSON the report cannot read: the message names the path and what is expected."""


@dataclass(frozen=True)
class EpochPoint:
    """One evaluated epoch of the student: ``epoch`` (1-based), test ``accuracy`` (%) and ``macs_ratio``
    (executed / dense MACs of the student's network on the test set)."""

    epoch: int
    accuracy: float
    macs_ratio: float


@dataclass(frozen=True)
class RunData:
    """A run folder's results: ``results`` (``results.json`` as read), ``epochs`` (from the metrics log; empty
    without one), ``path`` (the folder)."""

    path: Path
    results: dict[str, Any]
    epochs: tuple[EpochPoint, ...]

    @property
    def macs_ratio(self) -> float:
        """The student's executed MACs over the teacher's dense MACs (``results["macs_ratio"]`` when present)."""
        if "macs_ratio" in self.results:
            return self.results["macs_ratio"]
        return self.results["macs_executed"] / self.results["teacher_macs"]


def _read_json(path: Path, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReportInputError(f"{path} does not exist; expected {expected}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = str(error).splitlines()[0]
        raise ReportInputError(f"{path} is unreadable ({reason}); expected {expected}") from None


def load_run(run_dir: Path) -> RunData:
    """Read the run folder ``run_dir`` (module docstring)."""
    run_dir = Path(run_dir)
    expected = "the results.json that python -m gating train / demo writes in its --out folder"
    if not run_dir.is_dir():
        raise ReportInputError(f"{run_dir} is not a folder; expected a run folder of python -m gating train / demo")
    path = run_dir / "results.json"
    results = _read_json(path, expected)
    missing = [key for key in _RUN_KEYS if not isinstance(results, dict) or key not in results]
    if missing:
        raise ReportInputError(f"{path} lacks {', '.join(missing)}; expected {expected}")
    return RunData(run_dir, results, _epochs(run_dir / "student_metrics.jsonl"))


def _epochs(path: Path) -> tuple[EpochPoint, ...]:
    if not path.exists():
        return ()
    points = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ReportInputError(f"{path} is unreadable ({error}); expected one JSON record per epoch") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as error:
            raise ReportInputError(f"{path} line {number} is not JSON ({error}); expected one JSON record per "
                                   "epoch") from None
        if isinstance(record, dict) and record.get("accuracy") is not None and record.get("macs_ratio") is not None:
            points.append(EpochPoint(int(record["epoch"]), float(record["accuracy"]), float(record["macs_ratio"])))
    return tuple(points)


def load_bench(path: Path) -> dict[str, Any]:
    """Read a bench JSON (module docstring)."""
    path = Path(path)
    expected = "a JSON written by python -m gating bench"
    bench = _read_json(path, expected)
    missing = [key for key in _BENCH_KEYS if not isinstance(bench, dict) or key not in bench]
    if missing:
        raise ReportInputError(f"{path} lacks {', '.join(missing)}; expected {expected}")
    return bench


def load_kernels(path: Path) -> dict[str, Any]:
    """Read a kernel-sweep JSON of ``python -m benchmarks.run_gpu`` (module docstring)."""
    path = Path(path)
    expected = "a JSON written by python -m benchmarks.run_gpu (timed, or with --count-only)"
    sweep = _read_json(path, expected)
    if not isinstance(sweep, dict) or sweep.get("benchmark") != "gated_conv2d":
        raise ReportInputError(f"{path} is not a gated_conv2d kernel sweep; expected {expected}")
    if not isinstance(sweep.get("gated", sweep.get("counts")), list):
        raise ReportInputError(f"{path} holds neither gated (timed) nor counts records; expected {expected}")
    return sweep


def kernel_records(sweep: dict[str, Any]) -> tuple[bool, list[dict[str, Any]]]:
    """``(timed, records)``: the sweep's gated records (timed) or count records (``--count-only``) of blob masks."""
    timed = "gated" in sweep
    records = sweep["gated"] if timed else sweep["counts"]
    return timed, [r for r in records if r.get("mask_source", "blob") == "blob"]
