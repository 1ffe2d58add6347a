"""``python -m gating train-rl``: flags of :class:`gating.rl.workflow.RLConfig`, then
:func:`gating.rl.workflow.run_train_rl`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import USAGE_STATUS, CommandError, flag_message

__all__ = ["add_train_rl_parser", "run_train_rl_command"]

_RL_FLAGS: tuple[tuple[str, str, type, str], ...] = (
    ("--out", "out", Path, "output folder"),
    ("--teacher-epochs", "teacher_epochs", int, "epochs of dense teacher training"),
    ("--num-train", "num_train", int, "built-in training images"),
    ("--num-test", "num_test", int, "built-in test images"),
    ("--image-size", "image_size", int, "image side in pixels (None: 24 for the built-in data, the data's own otherwise)"),
    ("--width", "width", int, "ResNet-20 base width"),
    ("--batch-size", "batch_size", int, "batch of teacher training and fine-tuning (global under torchrun)"),
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


def add_train_rl_parser(commands: argparse._SubParsersAction) -> None:
    from ..rl.workflow import RLConfig

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
    from ..rl.workflow import RLConfig, run_train_rl

    try:
        budgets = tuple(float(part) for part in args.budgets.split(","))
        config = RLConfig(**{field: getattr(args, field) for _, field, _, _ in _RL_FLAGS}, budgets=budgets,
                          resume=args.resume, progress=args.progress)
    except ValueError as error:
        flags = {field: flag for flag, field, _, _ in _RL_FLAGS} | {"budgets": "--budgets"}
        raise CommandError(f"gating train-rl: {flag_message(str(error), flags, ('RLConfig',))}",
                           USAGE_STATUS) from None
    from ..distill import DistributedRun

    try:
        run = DistributedRun.from_environment()
    except (ValueError, RuntimeError) as error:
        raise CommandError(f"gating train-rl: {error}", USAGE_STATUS) from None
    try:
        run_train_rl(config, run)
    finally:
        run.close()
