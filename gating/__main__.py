"""``python -m gating``: the command line of ``gating.cli``."""

import sys

from .cli import main

sys.exit(main())
