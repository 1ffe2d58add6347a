"""``python -m gating``: the command line of ``gating.cli``."""

import sys

from .cli import run

sys.exit(run())
