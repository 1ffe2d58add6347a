"""The demo for several seeds: one run per seed and a robustness summary.

:func:`run_demo_seeds` runs :func:`gating.demo.run_demo` for each seed (one
folder each) and writes ``OUT/summary.json`` with :func:`summarize_seeds`:
mean and worst accuracy gap and MAC reduction, so robustness is one command
away.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any


from . import io
from .demo import DemoConfig, run_demo

__all__ = ["check_seeds", "run_demo_seeds", "seeds_table", "summarize_seeds"]


def summarize_seeds(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Robustness summary of several demo runs.

    Each entry needs ``seed``, ``teacher_accuracy`` and ``student_accuracy``
    (percent) and ``macs_reduction`` (dense / executed MACs). Returns the
    seeds, per-seed ``gaps`` (teacher - student, points), ``mean_gap``,
    ``worst_gap`` (the largest), ``mean_macs_reduction``,
    ``worst_macs_reduction`` (the smallest), and the means of both
    accuracies.

    Raises:
        ValueError: no runs given.
    """
    if not per_seed:
        raise ValueError("summarize_seeds needs at least one run")
    gaps = [run["teacher_accuracy"] - run["student_accuracy"] for run in per_seed]
    reductions = [run["macs_reduction"] for run in per_seed]
    count = len(per_seed)
    return {
        "seeds": [run["seed"] for run in per_seed],
        "gaps": gaps,
        "macs_reductions": reductions,
        "mean_gap": math.fsum(gaps) / count,
        "worst_gap": max(gaps),
        "mean_macs_reduction": math.fsum(reductions) / count,
        "worst_macs_reduction": min(reductions),
        "mean_teacher_accuracy": math.fsum(run["teacher_accuracy"] for run in per_seed) / count,
        "mean_student_accuracy": math.fsum(run["student_accuracy"] for run in per_seed) / count,
    }


def run_demo_seeds(config: DemoConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Run the demo once per seed (in ``config.out / f"seed-{s}"``) and write ``config.out / "summary.json"``.

    Returns the summary of :func:`summarize_seeds` plus ``runs`` (each seed's
    headline numbers) and the shared settings.

    Raises:
        ValueError: ``seeds`` is empty or holds a repeated, negative or
            non-integer entry.
    """
    check_seeds(seeds)
    started = time.perf_counter()
    runs = []
    for seed in seeds:
        print(f"=== seed {seed} ===", flush=True)
        run = run_demo(dataclasses.replace(config, seed=seed, out=config.out / f"seed-{seed}"))
        runs.append({key: run[key] for key in _HEADLINE})
    result = {
        **summarize_seeds(runs),
        "runs": runs,
        "demo_config": {**config.to_dict(), "seed": None},
    }
    return io.publish_results(result, config.out / "summary.json", started, seeds_table(result))


_HEADLINE = ("seed", "teacher_accuracy", "student_accuracy", "accuracy_gap", "macs_reduction",
             "bytes_reduction", "teacher_macs", "macs_executed", "teacher_params", "student_params",
             "teacher_param_bytes", "student_param_bytes", "teacher_disk_bytes", "student_disk_bytes", "seconds")


def check_seeds(seeds: Sequence[int]) -> None:
    """Raise ``ValueError`` naming the first repeated, negative or non-integer seed (or an empty list)."""
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    seen = set()
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seeds: {seed!r} is not an integer")
        if seed < 0:
            raise ValueError(f"seeds: {seed} is negative")
        if seed in seen:
            raise ValueError(f"seeds: {seed} is repeated")
        seen.add(seed)


def seeds_table(result: dict[str, Any]) -> str:
    """The multi-seed run's printed table."""
    lines = ["", f"{'seed':>6}{'teacher %':>11}{'student %':>11}{'gap':>7}{'MAC red.':>10}"]
    for run in result["runs"]:
        lines.append(f"{run['seed']:>6}{run['teacher_accuracy']:>11.2f}{run['student_accuracy']:>11.2f}"
                     f"{run['accuracy_gap']:>7.2f}{run['macs_reduction']:>9.2f}x")
    lines.append(f"{'mean':>6}{result['mean_teacher_accuracy']:>11.2f}{result['mean_student_accuracy']:>11.2f}"
                 f"{result['mean_gap']:>7.2f}{result['mean_macs_reduction']:>9.2f}x")
    lines.append(f"{'worst':>6}{'':>22}{result['worst_gap']:>7.2f}{result['worst_macs_reduction']:>9.2f}x")
    return "\n".join(lines)
