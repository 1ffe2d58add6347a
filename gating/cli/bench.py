"""``python -m gating bench``: flags of :class:`gating.bench.BenchConfig`, then :func:`gating.bench.run_bench`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .errors import USAGE_STATUS, CommandError, flag_message

__all__ = ["add_bench_parser", "bench_config", "run_bench_command"]


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _batches(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


# (flag, BenchConfig field, type, help); the default comes from BenchConfig().
_FLAGS: tuple[tuple[str, str, Any, str], ...] = (
    ("--models", "models", _names, "comma-separated torchvision model names (random init, 1000 classes)"),
    ("--saved", "saved", Path, "bench this folder written by gating.save instead of --models"),
    ("--image-size", "image_size", int, "side of the square input images in pixels"),
    ("--batches", "batches", _batches, "comma-separated batch sizes"),
    ("--dtype", "dtype", str, "float16, bfloat16 or float32 (None: float16 on CUDA, float32 on CPU)"),
    ("--device", "device", str, "cpu or cuda[:i] (None: cuda if available, else cpu)"),
    ("--kind", "kind", str, "partial_sum or runtime gates (None: partial_sum, or a saved gated model's own)"),
    ("--target-flops", "target_flops", _optional_float,
     "executed/dense MAC budget the gates are calibrated to (None: 0.33; a saved gated model keeps its gates)"),
    ("--base-fraction", "base_fraction", float,
     "partial-sum gates made here: fraction of input channels every pixel computes"),
    ("--prune-params", "prune_params", _optional_float,
     "L1 static pruning to this fraction of the parameters before gating (None: no pruning)"),
    ("--calibration-images", "calibration_images", int, "seeded random images the budget is reached on"),
    ("--seed", "seed", int, "seed of the calibration and measured images and of the random weights"),
    ("--warmup-ms", "warmup_ms", float, "CUDA: warm-up time per timing, ms"),
    ("--rep-ms", "rep_ms", float, "CUDA: repetition time per timing, ms"),
    ("--out", "out", Path, "JSON path (None: benchmarks/results/bench_<device>.json)"),
)


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    """The ``bench`` subcommand's flags (defaults from ``BenchConfig()``, without touching the device)."""
    from ..bench import BenchConfig

    defaults = {field.name: field.default for field in BenchConfig.__dataclass_fields__.values()}
    bench = commands.add_parser("bench", help="count (and on CUDA time) gated models built for inference")
    for flag, field, kind, help_text in _FLAGS:
        default = defaults[field]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        # --models defaults to None so that giving it beside --saved can be refused
        bench.add_argument(flag, dest=field, type=kind, default=None if field == "models" else default,
                           help=f"{help_text} (default {shown})")


def bench_config(args: argparse.Namespace) -> Any:
    """The ``BenchConfig`` the flags describe; a bad or conflicting value exits (status 2) naming its flag."""
    from ..bench import BenchConfig

    if args.saved is not None and args.models is not None:
        raise CommandError("gating bench: --saved benches one saved model; leave --models out", USAGE_STATUS)
    values = {field: getattr(args, field) for _, field, _, _ in _FLAGS}
    if values["models"] is None:
        del values["models"]
    try:
        return BenchConfig(**values)
    except ValueError as error:
        flags = {field: flag for flag, field, _, _ in _FLAGS}
        raise CommandError(f"gating bench: {flag_message(str(error), flags, ('BenchConfig',))}",
                           USAGE_STATUS) from None


def run_bench_command(args: argparse.Namespace) -> None:
    """The ``bench`` subcommand: check every flag, then count (and time) and write the JSON."""
    from ..bench import BenchSetupError, run_bench

    config = bench_config(args)
    try:
        run_bench(config)
    except BenchSetupError as error:
        raise CommandError(f"gating bench: {error}", USAGE_STATUS) from None
