"""Command line: ``python -m gating demo`` and ``python -m gating prune`` (also the ``gating`` command).

``demo`` only maps flags to a :class:`gating.demo.DemoConfig` (whose defaults
are the flags' defaults) and calls :func:`gating.demo.run_demo`, or
:func:`gating.demo_seeds.run_demo_seeds` with ``--seeds``. ``prune`` loads a model
saved with :func:`gating.save`, prunes it with :func:`gating.prune.prune`
(a :class:`gating.prune.PruneConfig` built from the flags), prints the
storage / MAC table and saves the smaller model. A bad value exits with a
one-line error naming the flag (exit status 2); a checkpoint, saved model or
data folder that cannot be used, or a diverged run, exits with its one-line
message and status 1 (``gating --debug ...`` shows the traceback). SIGTERM during training writes a checkpoint
and exits with status 143 (128 + SIGTERM) and a one-line message;
``--resume`` continues.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from .data import DatasetError
from .distill import TrainingInterrupted
from .demo import DemoConfig, run_demo
from .demo_seeds import check_seeds, run_demo_seeds
from .prune import CRITERIA

USAGE_STATUS = 2
"""Exit status of a bad argument (as argparse uses)."""

SIGTERM_STATUS = 143
"""Exit status after SIGTERM stopped training (128 + 15, what a shell reports for a process SIGTERM ended)."""

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


def build_parser() -> argparse.ArgumentParser:
    """The ``gating`` argument parser (subcommand ``demo``)."""
    parser = argparse.ArgumentParser(prog="gating", description="Dynamic runtime channel gating for CNNs.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure instead of its one-line message")
    commands = parser.add_subparsers(dest="command", required=True)
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
    _add_prune_parser(commands)
    _add_train_rl_parser(commands)
    return parser


_RL_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--out", "out", Path, "output folder"),
    ("--teacher-epochs", "teacher_epochs", int, "epochs of dense teacher training"),
    ("--num-train", "num_train", int, "built-in training images"),
    ("--num-test", "num_test", int, "built-in test images"),
    ("--image-size", "image_size", int, "image side in pixels (None: 24 for the built-in data, the data's own otherwise)"),
    ("--width", "width", int, "ResNet-20 base width"),
    ("--seed", "seed", int, "seed of data, initialisation, budgets and training order"),
    ("--data", "data", str, "synthetic (built in), cifar10 or imagefolder"),
    ("--root", "root", Path, "dataset folder for cifar10 / imagefolder"),
    ("--param-budget", "param_budget", float,
     "static policy: keep this fraction of the parameters, removing channels for storage (None: no static pruning)"),
    ("--static-updates", "static_updates", int, "PPO updates of the static policy"),
    ("--channel-group", "channel_group", int, "kept channel counts are multiples of this"),
    ("--rounds", "rounds", int, "rounds of policy training followed by fine-tuning"),
    ("--policy-updates", "policy_updates", int, "PPO updates per round (one batch each)"),
    ("--finetune-epochs", "finetune_epochs", int, "fine-tuning epochs per round"),
    ("--student-lr", "student_lr", float, "fine-tuning learning rate"),
    ("--budget-low", "budget_low", float, "lowest training budget"),
    ("--budget-high", "budget_high", float, "highest training budget"),
)


def _add_train_rl_parser(commands: argparse._SubParsersAction) -> None:
    from .rl.workflow import RLConfig

    defaults = RLConfig()
    rl = commands.add_parser("train-rl", help="runtime channel gates with a budget policy on the built-in data")
    for flag, field, kind, help_text in _RL_FLAGS:
        default = getattr(defaults, field)
        rl.add_argument(flag, dest=field, type=kind, default=default, help=f"{help_text} (default {default})")
    rl.add_argument("--budgets", default=",".join(str(b) for b in defaults.budgets),
                    help="comma-separated budgets measured at the end (default %(default)s)")
    rl.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    rl.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")


def run_train_rl_command(args: argparse.Namespace) -> None:
    """The ``train-rl`` subcommand: an ``RLConfig`` from the flags, then :func:`gating.rl.workflow.run_train_rl`."""
    from .rl.workflow import RLConfig, run_train_rl

    try:
        budgets = tuple(float(part) for part in args.budgets.split(","))
        config = RLConfig(**{field: getattr(args, field) for _, field, _, _ in _RL_FLAGS}, budgets=budgets,
                          resume=args.resume, progress=args.progress)
    except ValueError as error:
        message = str(error)
        for flag, field, _, _ in (*_RL_FLAGS, ("--budgets", "budgets", str, "")):
            message = message.replace(f"RLConfig.{field} ", f"{flag} ")
        raise CommandError(f"gating train-rl: {message}", USAGE_STATUS) from None
    run_train_rl(config)


def _add_prune_parser(commands: argparse._SubParsersAction) -> None:
    prune = commands.add_parser("prune", help="prune a model saved with gating.save and save the smaller one")
    prune.add_argument("model_dir", type=Path, help="folder written by gating.save")
    prune.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    prune.add_argument("--criterion", choices=CRITERIA, default="l1", help="channel importance (default l1)")
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="fraction of the scored channels to remove, in [0, 1)")
    target.add_argument("--flops", type=float, help="keep at most this fraction of the MACs, in (0, 1]")
    target.add_argument("--params", type=float, help="keep at most this fraction of the parameters, in (0, 1]")
    prune.add_argument("--scope", choices=("global", "layer"), default="global",
                       help="one threshold over all groups, or the same ratio in every group (default global)")
    prune.add_argument("--max-ratio", type=float, default=0.9,
                       help="largest fraction of one group removed (default 0.9)")
    prune.add_argument("--round-to", type=int, default=8,
                       help="kept channel counts are multiples of this (and of a gated layer's gate group; default 8)")
    prune.add_argument("--similarity-source", choices=("weights", "features"), default="weights",
                       help="what the similarity criterion compares (default weights)")
    prune.add_argument("--image-size", type=int, default=224,
                       help="side of the square input the model is traced and counted at (default 224)")
    prune.add_argument("--calibration-images", type=int, default=64,
                       help="built-in images run through the model for the gate and feature-similarity criteria "
                            "(default 64)")
    prune.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def demo_config(args: argparse.Namespace) -> DemoConfig:
    """The ``DemoConfig`` the parsed flags describe; an invalid value exits naming its flag."""
    values = {field: getattr(args, field) for _, field, _, _ in _DEMO_FLAGS}
    try:
        return DemoConfig(**values, resume=args.resume, progress=args.progress)
    except ValueError as error:
        raise CommandError(f"gating demo: {_flag_message(str(error))}", USAGE_STATUS) from None


def _flag_message(message: str) -> str:
    """Rewrite ``DemoConfig.<field>`` / ``TrainConfig.<field>`` in a message as the flag users typed."""
    for flag, field, _, _ in _DEMO_FLAGS:
        for owner in ("DemoConfig", "TrainConfig"):
            message = message.replace(f"{owner}.{field} ", f"{flag} ")
    return message


def run_prune(args: argparse.Namespace) -> None:
    """The ``prune`` subcommand: load, prune, print the table, save. Bad input exits with one line."""
    import torch

    from . import io
    from .data.synthetic import synthetic_dataset
    from .prune import PruneConfig, TraceError, prune

    try:
        config = PruneConfig(criterion=args.criterion, ratio=args.ratio, flops=args.flops, params=args.params,
                             scope=args.scope, max_ratio=args.max_ratio, round_to=args.round_to,
                             similarity_source=args.similarity_source)
    except ValueError as error:
        message = str(error)
        for field in ("criterion", "ratio", "flops", "params", "scope", "max_ratio", "round_to", "similarity_source"):
            message = message.replace(f"PruneConfig.{field} ", f"--{field.replace('_', '-')} ")
        raise CommandError(f"gating prune: {message}", USAGE_STATUS) from None
    if args.image_size < 8 or args.calibration_images < 1:
        raise CommandError("gating prune: --image-size must be >= 8 and --calibration-images >= 1", USAGE_STATUS)
    if args.out.exists() and not args.overwrite:
        raise CommandError(f"gating prune: {args.out} exists; pass --overwrite to replace it", USAGE_STATUS)
    try:
        model = io.load(args.model_dir)
    except io.ModelFileError as error:
        raise CommandError(f"gating prune: {error}") from None
    channels = next(m.in_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    example = torch.zeros(1, channels, args.image_size, args.image_size)
    calibration = None
    if config.criterion == "gate" or (config.criterion == "similarity" and config.similarity_source == "features"):
        calibration = synthetic_dataset(args.calibration_images, image_size=args.image_size, seed=0).tensors[0]
        if calibration.shape[1] != channels:
            raise CommandError(f"gating prune: the built-in images have {calibration.shape[1]} channels, "
                               f"the model reads {channels}")
    try:
        result = prune(model, example, config, calibration=calibration)
    except (TraceError, ValueError) as error:
        raise CommandError(f"gating prune: {error}") from None
    io.save(model, args.out, overwrite=args.overwrite)
    print(result.table(extra_rows=[("bytes on disk", io.disk_bytes(args.model_dir), io.disk_bytes(args.out))]))
    print(f"wrote {args.out}")


class CommandError(SystemExit):
    """A subcommand failed: ``str()`` is its one-line message, ``status`` the exit status
    (:data:`USAGE_STATUS` for a bad argument, 1 for a failure while running)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message, self.status = message, status

    def __str__(self) -> str:
        return self.message


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Failures of a run that get a one-line message (exit status 1) unless ``--debug``."""
    from .io import CheckpointError, ModelFileError
    from .distill import TrainingDivergedError

    return (CheckpointError, ModelFileError, DatasetError, TrainingDivergedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns 0 (or :data:`SIGTERM_STATUS`), raises :class:`CommandError` on failure.

    Bad arguments raise ``CommandError`` with status 2 before any long work;
    a checkpoint, saved model or data folder that cannot be used, or a
    diverged training run, raises it with status 1, except under ``--debug``,
    which lets the original exception (and its traceback) through.
    """
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            config = demo_config(args)
            if args.seeds is not None:
                run_demo_seeds(config, args.seeds)
            else:
                run_demo(config)
        elif args.command == "prune":
            run_prune(args)
        elif args.command == "train-rl":
            run_train_rl_command(args)
    except TrainingInterrupted as stopped:
        print(f"gating {args.command}: {stopped}; run the same command with --resume", file=sys.stderr)
        return SIGTERM_STATUS
    except _runtime_errors() as error:
        if args.debug:
            raise
        raise CommandError(f"gating {args.command}: {error}") from None
    return 0


def run(argv: Sequence[str] | None = None) -> int:
    """The console entry point (``gating``, ``python -m gating``): :func:`main`, with a failure printed as
    its one line on stderr and turned into its exit status."""
    try:
        return main(argv)
    except CommandError as error:
        print(error.message, file=sys.stderr)
        return error.status


if __name__ == "__main__":
    sys.exit(run())
