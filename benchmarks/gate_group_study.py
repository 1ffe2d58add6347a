"""Gate granularity study: accuracy and kernel work of demo students trained at several gate granularities.

    python -m benchmarks.gate_group_study --out runs/gate_groups [--gate-groups 16 32 64] [--gate-blocks 1 2 4]
                                          [--coherence-weights 0 1] [--seeds 0 1 2] [--images 64]
                                          [--threads N] [--result FILE]

For every setting (``gate_group`` x ``gate_block`` x ``coherence_weight``),
the demo pipeline (``python -m gating demo``, its default recipe) runs once
per seed in ``OUT/g{G}/seed-{S}`` (``-b{B}`` appended for blocks over 1,
``-tv{W}`` for a coherence loss; :func:`setting_name`). Finished
runs are reused and an interrupted one resumes from its checkpoints; the
dense teacher of a seed is trained once and shared by every setting
(``OUT/teacher-seed-{S}.ckpt``), so the settings differ only in their gates. Each student's decisions on
``--images`` built-in test images of its seed are then recorded and counted
(:mod:`benchmarks.recorded`): the algorithmic MAC reduction, and the
conditional MACs the gated kernel runs over the exact ones, for the default
(compacted) schedule (whole network at batch ``--images`` and its worst
layer) and for the tiled schedule, and the roofline-estimated time of the
gated kernels over the dense kernel's from their tile-rounded MACs and issued
bytes (:mod:`benchmarks.time_estimate`: at the compute-bound and
memory-bound limits and the worst case over every machine balance). Prints
one row per setting and the setting the library defaults follow
(:func:`choose_default`), and writes the JSON (default
``benchmarks/results/gate_group_study.json``) with every run, the
per-setting summary, the choice, the recipe, the torch version and the CPU's
vector capability (another one rounds differently). Timing needs a GPU and is
not part of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import platform
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gating import data
from gating.config import differing_settings
from gating.demo import DemoConfig, run_demo
from gating.demo_seeds import check_seeds, summarize_seeds
from gating.io import atomic_write_json

from .counting import network_totals
from .record_decisions import demo_student
from .recorded import record_decisions, recorded_records
from .time_estimate import time_ratio_bounds

__all__ = ["ACCURACY_WINDOW", "choose_default", "count_student", "main", "study"]

RESULT = Path(__file__).resolve().parent / "results" / "gate_group_study.json"


def count_student(run: Path, images: int) -> dict[str, Any]:
    """Whole-network counts of the student of demo run ``run`` on ``images`` built-in test images of its seed."""
    student, config = demo_student(run)
    inputs = data.synthetic_dataset(images, config.image_size, seed=2 * config.seed + 1).tensors[0]
    name = f"{setting_name(config.gate_group, config.gate_block, config.coherence_weight)}-seed{config.seed}"
    layers = record_decisions(student, inputs, prefix=f"{name}.")
    records = recorded_records(layers, [images], name)
    (total,) = network_totals(records)
    keep = ("macs_dense", "macs_executed", "ideal_speedup", "conditional_macs", "kernel_conditional_macs",
            "kernel_overhead", "worst_layer_kernel_overhead", "tiled_kernel_overhead", "kernel_macs",
            "dense_kernel_macs", "kernel_bytes", "dense_kernel_bytes")  # fmt: skip
    estimate = {f"time_ratio_{key}": value for key, value in time_ratio_bounds(records).items()}
    return {key: total[key] for key in keep} | estimate


def setting_name(gate_group: int, gate_block: int, coherence_weight: float = 0.0) -> str:
    """``g{G}``, plus ``-b{B}`` for pixel blocks and ``-tv{W}`` for a coherence loss: the folder and label."""
    name = f"g{gate_group}" if gate_block == 1 else f"g{gate_group}-b{gate_block}"
    return name if coherence_weight == 0 else f"{name}-tv{coherence_weight:g}"


def _run(config: DemoConfig, shared_teacher: Path) -> dict[str, Any]:
    """One demo run (reused when finished), its teacher taken from / given to ``shared_teacher``."""
    results = config.out / "results.json"
    if results.is_file():
        result = json.loads(results.read_text())
        _check_same_recipe(result["demo_config"], config)
        return result
    config.out.mkdir(parents=True, exist_ok=True)
    teacher = config.out / "teacher.ckpt"
    if shared_teacher.is_file() and not teacher.is_file():
        shutil.copy(shared_teacher, teacher)
    result = run_demo(dataclasses.replace(config, resume=True))
    if not shared_teacher.is_file():
        shutil.copy(teacher, shared_teacher)
    return result


_RUN_ONLY = ("out", "resume", "progress", "device")  # settings that do not change what a run trains


def _check_same_recipe(saved: dict[str, Any], config: DemoConfig) -> None:
    """``ValueError`` naming the differing settings unless a finished run was trained with ``config``'s recipe.

    Settings the run's ``results.json`` predates take their defaults (what it ran with).
    """
    wanted = config.to_dict()
    saved, differing = differing_settings(saved, wanted, DemoConfig(progress=False).to_dict(), _RUN_ONLY)
    if differing:
        details = ", ".join(f"{key}={saved.get(key)!r} (wanted {wanted.get(key)!r})" for key in differing)
        raise ValueError(f"{config.out} holds a run with another recipe: {details}; use another --out")


def study(
    out: Path,
    gate_groups: Sequence[int],
    seeds: Sequence[int],
    images: int,
    base: DemoConfig | None = None,
    gate_blocks: Sequence[int] = (1,),
    coherence_weights: Sequence[float] = (0.0,),
) -> dict[str, Any]:
    """Train and count every (gate_group, gate_block, coherence_weight, seed); returns what :func:`main` writes.

    ``base``: the demo settings every run starts from (default ``DemoConfig()``;
    its ``out``, ``seed``, ``gate_group``, ``gate_block`` and
    ``coherence_weight`` are replaced).
    """
    check_seeds(seeds)
    base = base or DemoConfig()
    settings = []
    for gate_group, gate_block, coherence in itertools.product(gate_groups, gate_blocks, coherence_weights):
        runs = []
        for seed in seeds:
            print(f"=== gate_group {gate_group}, gate_block {gate_block}, coherence_weight {coherence:g}, "
                  f"seed {seed} ===", flush=True)  # fmt: skip
            run_dir = out / setting_name(gate_group, gate_block, coherence) / f"seed-{seed}"
            config = dataclasses.replace(base, out=run_dir, seed=seed, gate_group=gate_group, gate_block=gate_block,
                                         coherence_weight=float(coherence))  # fmt: skip
            result = _run(config, out / f"teacher-seed-{seed}.ckpt")
            runs.append({key: result[key] for key in ("seed", "teacher_accuracy", "student_accuracy", "accuracy_gap",
                                                      "macs_reduction", "bytes_reduction")}
                        | {"counts": count_student(run_dir, images)})  # fmt: skip
        summary = summarize_seeds(runs)
        overheads = [run["counts"]["kernel_overhead"] for run in runs]
        settings.append({
            "gate_group": gate_group, "gate_block": gate_block, "coherence_weight": float(coherence), **summary,
            "mean_kernel_overhead": sum(overheads) / len(overheads), "worst_kernel_overhead": max(overheads),
            "worst_layer_kernel_overhead": max(run["counts"]["worst_layer_kernel_overhead"] for run in runs),
            "mean_tiled_kernel_overhead": sum(run["counts"]["tiled_kernel_overhead"] for run in runs) / len(runs),
            **{f"mean_time_ratio_{key}": sum(run["counts"][f"time_ratio_{key}"] for run in runs) / len(runs)
               for key in ("compute_bound", "memory_bound", "worst")},
            "runs": runs,
        })  # fmt: skip
    return {
        "benchmark": "gate_group_study",
        "images": images,
        "demo_config": {**base.to_dict(), "out": None, "seed": None, "gate_group": None, "gate_block": None,
                        "coherence_weight": None},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "python": platform.python_version(),
        "settings": settings,
        "chosen": choose_default(settings),
    }


ACCURACY_WINDOW = 0.5
"""Points of mean accuracy gap a setting may lose to the most accurate one and still be chosen."""


def choose_default(settings: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The setting the library defaults follow, by the rule in ``docs/design.md#gate-granularity``.

    Among the settings whose mean accuracy gap is within :data:`ACCURACY_WINDOW`
    points of the smallest (inclusive) (the teachers are shared, so this is the most
    accurate), the one with the lowest mean worst-case estimated time ratio
    (:func:`benchmarks.time_estimate.time_ratio_bounds`: faster on every
    device balance); ties go to the lower kernel overhead. Returns its
    ``gate_group``, ``gate_block``, ``coherence_weight`` and the settings
    that were eligible.
    """
    if not settings:
        raise ValueError("choose_default needs at least one setting")
    best_gap = min(s["mean_gap"] for s in settings)
    # inclusive; gaps are means of test-set percentages, so allow their float rounding
    eligible = [s for s in settings if s["mean_gap"] <= best_gap + ACCURACY_WINDOW + 1e-9]
    chosen = min(eligible, key=lambda s: (s["mean_time_ratio_worst"], s["mean_kernel_overhead"]))
    keys = ("gate_group", "gate_block", "coherence_weight")
    return {key: chosen[key] for key in keys} | {
        "eligible": [setting_name(*(s[key] for key in keys)) for s in eligible],
        "accuracy_window": ACCURACY_WINDOW,
    }


def table(result: dict[str, Any]) -> str:
    """One row per setting: accuracy gap (mean / worst), MAC reduction, kernel over exact conditional MACs."""
    lines = [f"{'gate_group':>10}{'block':>7}{'TV w':>6}{'mean gap':>10}{'worst gap':>11}{'MAC red.':>10}"
             f"{'kernel/exact':>14}{'worst layer':>13}{'tiled':>8}{'time MACs':>11}{'time bytes':>12}"
             f"{'time worst':>12}"]  # fmt: skip
    for w in result["settings"]:
        lines.append(
            f"{w['gate_group']:>10}{w.get('gate_block', 1):>7}{w.get('coherence_weight', 0.0):>6g}"
            f"{w['mean_gap']:>10.2f}{w['worst_gap']:>11.2f}{w['mean_macs_reduction']:>9.2f}x"
            f"{w['mean_kernel_overhead']:>14.2f}{w['worst_layer_kernel_overhead']:>13.2f}"
            f"{w['mean_tiled_kernel_overhead']:>8.2f}{w['mean_time_ratio_compute_bound']:>11.3f}"
            f"{w['mean_time_ratio_memory_bound']:>12.3f}{w['mean_time_ratio_worst']:>12.3f}"
        )
    chosen = result["chosen"]
    lines.append(f"chosen: {setting_name(chosen['gate_group'], chosen['gate_block'], chosen['coherence_weight'])} "
                 f"(fastest estimate among {', '.join(chosen['eligible'])}: within {chosen['accuracy_window']} "
                 "points of the best mean gap)")  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gate_group_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder of the runs (reused when finished)")
    parser.add_argument("--gate-groups", nargs="+", type=int, default=[16, 32, 64], help="default: %(default)s")
    parser.add_argument("--gate-blocks", nargs="+", type=int, default=[1], help="default: %(default)s")
    parser.add_argument("--coherence-weights", nargs="+", type=float, default=[0.0], help="default: %(default)s")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="default: %(default)s")
    parser.add_argument("--images", type=int, default=64, help="test images recorded per student (default %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--result", type=Path, default=RESULT, help="JSON to write (default %(default)s)")
    args = parser.parse_args(argv)
    if args.images < 1 or any(g < 1 for g in [*args.gate_groups, *args.gate_blocks]):
        parser.error("--images and every --gate-groups / --gate-blocks value must be >= 1")
    if any(not 0 <= w < float("inf") for w in args.coherence_weights):
        parser.error("every --coherence-weights value must be a finite number >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        result = study(args.out, args.gate_groups, args.seeds, args.images, gate_blocks=args.gate_blocks,
                       coherence_weights=args.coherence_weights)
    except ValueError as exc:
        print(f"gate_group_study: {exc}", file=sys.stderr)
        return 2
    atomic_write_json(result, args.result)
    print(table(result))
    print(f"wrote {args.result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
