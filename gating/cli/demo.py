"""``python -m gating demo``: flags of :class:`gating.demo.DemoConfig`, then :func:`gating.demo.run_demo`
(or :func:`gating.demo_seeds.run_demo_seeds` with ``--seeds``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..demo import DemoConfig, run_demo
from ..demo_seeds import check_seeds, run_demo_seeds
from .errors import USAGE_STATUS, CommandError, flag_message

__all__ = ["add_demo_parser", "demo_config", "parse_seeds", "run_demo_command"]

_DEFAULTS = DemoConfig()

# flag -> (DemoConfig field, type, help); the default comes from DemoConfig.
_DEMO_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--out", "out", Path, "output folder"),
    ("--teacher-epochs", "teacher_epochs", int, "epochs of dense teacher training"),
    ("--student-epochs", "student_epochs", int, "epochs of gated distillation"),
    ("--num-train", "num_train", int, "built-in training images"),
    ("--num-test", "num_test", int, "built-in test images"),
    ("--image-size", "image_size", int, "image side in pixels"),
    ("--batch-size", "batch_size", int, "batch size of teacher training and of evaluation"),
    ("--student-batch-size", "student_batch_size", int,
     "batch size of gated distillation (also the unit of the two *-batches flags)"),
    ("--width", "width", int, "ResNet-20 base width"),
    ("--target-flops", "target_flops", float, "executed/dense MAC ratio the student ends at"),
    ("--gate-group", "gate_group", int, "output channels per gate decision"),
    ("--gate-block", "gate_block", int, "side of the square block of output pixels per gate decision"),
    ("--coherence-weight", "coherence_weight", float,
     "weight of the loss pulling neighbouring pixels' gate decisions together (0 = off)"),
    ("--seed", "seed", int, "seed of data, initialisation and training order"),
    ("--device", "device", str, "torch device (default: cuda if available, else cpu)"),
    ("--student-lr", "student_lr", float, "student learning rate (cosine schedule)"),
    ("--feature-kd-weight", "feature_kd_weight", float, "weight of block-output feature distillation (0 = off)"),
    ("--budget-ramp-epochs", "budget_ramp_epochs", float,
     "epochs over which the MAC target ramps down to --target-flops (0 = no ramp)"),
    ("--budget-ramp-start", "budget_ramp_start", float, "MAC ratio the ramp starts at"),
    ("--bn-recalibration-batches", "bn_recalibration_batches", int,
     "batches for re-estimating BatchNorm statistics after training (0 = off)"),
    ("--budget-fit-batches", "budget_fit_batches", int,
     "batches on which the thresholds are shifted after training to meet --target-flops exactly (0 = off)"),
    ("--prune", "prune_ratio", float,
     "fraction of the teacher's prunable channels removed statically before gating (0 = no pruning)"),
    ("--prune-criterion", "prune_criterion", str, "slimming, l1, similarity or multigranularity"),
    ("--slimming-weight", "slimming_weight", float,
     "network-slimming L1 weight on the teacher's BatchNorm scales (with --prune and slimming)"),
    ("--kernel-l1-weight", "kernel_l1_weight", float,
     "adaptive L1 weight on the teacher's 2-D kernels (with --prune and multigranularity)"),
)


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; a repeated, negative or non-integer entry is an ``argparse`` error."""
    seeds = []
    for part in text.split(","):
        try:
            seeds.append(int(part.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part.strip()!r} is not an integer") from None
    try:
        check_seeds(seeds)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error).removeprefix("seeds: ")) from None
    return seeds


def add_demo_parser(commands: argparse._SubParsersAction) -> None:
    """The ``demo`` subcommand's flags (defaults from ``DemoConfig``)."""
    demo = commands.add_parser("demo", help="train a teacher and a gated student on the built-in data")
    for flag, field, kind, help_text in _DEMO_FLAGS:
        default = getattr(_DEFAULTS, field)
        shown = "" if default is None else f" (default {default})"
        demo.add_argument(flag, dest=field, type=kind, default=default, help=help_text + shown)
    demo.add_argument("--seeds", type=parse_seeds, default=None,
                      help="comma-separated seeds: run the whole demo once per seed and summarise "
                           "mean / worst gap and MAC reduction (overrides --seed)")
    demo.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    demo.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The ``DemoConfig`` the parsed flags describe; an invalid value exits naming its flag."""
    values = {field: getattr(args, field) for _, field, _, _ in _DEMO_FLAGS}
    try:
        return DemoConfig(**values, resume=args.resume, progress=args.progress)
    except ValueError as error:
        flags = {field: flag for flag, field, _, _ in _DEMO_FLAGS}
        raise CommandError(f"gating demo: {flag_message(str(error), flags, ('DemoConfig', 'TrainConfig'))}",
                           USAGE_STATUS) from None


def run_demo_command(args: argparse.Namespace) -> None:
    """The ``demo`` subcommand."""
    config = demo_config(args)
    if args.seeds is not None:
        run_demo_seeds(config, args.seeds)
    else:
        run_demo(config)
