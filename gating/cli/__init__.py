"""Command line: ``python -m gating <subcommand>`` (also the ``gating`` command).

One module per subcommand parses its flags into a config dataclass and calls
a library function: :mod:`.demo` (``demo``: :class:`gating.demo.DemoConfig`),
:mod:`.train` (``train``: :class:`gating.train.TrainRunConfig`, also under
``torchrun``), :mod:`.train_rl` (``train-rl``: ``RLConfig``), :mod:`.prune`
(``prune``: :class:`gating.prune.PruneConfig` on a saved model). A bad value
exits with a one-line error naming the flag (exit status 2, nothing written);
a checkpoint, saved model or data folder that cannot be used, or a diverged
run, exits with its one-line message and status 1 (``gating --debug ...``
shows the traceback). SIGTERM during training writes a checkpoint and exits
with status 143 (128 + SIGTERM) and a one-line message; ``--resume``
continues.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..data import DatasetError
from ..distill import TrainingInterrupted
from .bench import add_bench_parser, run_bench_command
from .demo import add_demo_parser, demo_config, parse_seeds, run_demo_command
from .errors import SIGTERM_STATUS, USAGE_STATUS, CommandError, require_single_process
from .prune import add_prune_parser, run_prune
from .report import add_report_parser, run_report_command
from .train import add_train_parser, run_train_command
from .train_rl import add_train_rl_parser, run_train_rl_command

__all__ = [
    "SIGTERM_STATUS",
    "USAGE_STATUS",
    "CommandError",
    "build_parser",
    "demo_config",
    "main",
    "parse_seeds",
    "run",
]


def build_parser() -> argparse.ArgumentParser:
    """The ``gating`` argument parser (subcommands ``demo``, ``train``, ``train-rl``, ``prune``)."""
    parser = argparse.ArgumentParser(prog="gating", description="Dynamic runtime channel gating for CNNs.")
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of a failure instead of its one-line message")
    commands = parser.add_subparsers(dest="command", required=True)
    add_demo_parser(commands)
    add_train_parser(commands)
    add_prune_parser(commands)
    add_train_rl_parser(commands)
    add_bench_parser(commands)
    add_report_parser(commands)
    return parser


def _runtime_errors() -> tuple[type[BaseException], ...]:
    """Failures of a run that get a one-line message (exit status 1) unless ``--debug``."""
    from ..io import CheckpointError, ModelFileError
    from ..distill import TrainingDivergedError

    return (CheckpointError, ModelFileError, DatasetError, TrainingDivergedError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a subcommand; returns 0 (or :data:`SIGTERM_STATUS`), raises :class:`CommandError` on failure.

    Bad arguments raise ``CommandError`` with status 2 before any long work;
    a checkpoint, saved model or data folder that cannot be used, or a
    diverged training run, raises it with status 1, except under ``--debug``,
    which lets the original exception (and its traceback) through.
    """
    args = build_parser().parse_args(argv)
    if args.command not in ("train", "train-rl"):
        require_single_process(args.command)
    handlers = {"demo": run_demo_command, "train": run_train_command, "train-rl": run_train_rl_command,
                "prune": run_prune, "bench": run_bench_command, "report": run_report_command}
    try:
        handlers[args.command](args)
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
