"""``python -m gating report RUN_DIR [--bench JSON] [--out HTML]``: :func:`gating.report.make_report`."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import CommandError

__all__ = ["add_report_parser", "run_report_command"]


def add_report_parser(commands: argparse._SubParsersAction) -> None:
    """The ``report`` subcommand's arguments."""
    report = commands.add_parser("report", help="an HTML page of a train / demo run folder (and a bench JSON)")
    report.add_argument("run_dir", type=Path, help="run folder of python -m gating train or demo (holds results.json)")
    report.add_argument("--bench", type=Path, default=None, help="JSON written by python -m gating bench")
    report.add_argument("--kernels", type=Path, default=None,
                        help="JSON written by python -m benchmarks.run_gpu (the per-layer kernel sweep)")
    report.add_argument("--out", type=Path, default=None, help="HTML path (default RUN_DIR/report.html)")


def run_report_command(args: argparse.Namespace) -> None:
    """The ``report`` subcommand: an unreadable input is a one-line error (status 1) naming it."""
    from ..report import ReportInputError, make_report

    try:
        out = make_report(args.run_dir, args.bench, args.out, kernels=args.kernels)
    except ReportInputError as error:
        raise CommandError(f"gating report: {error}") from None
    print(f"wrote {out}")
