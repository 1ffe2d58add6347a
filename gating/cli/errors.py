"""Failures of a subcommand: one line on stderr and an exit status."""

from __future__ import annotations

import os

__all__ = ["CommandError", "SIGTERM_STATUS", "USAGE_STATUS", "flag_message", "require_single_process"]

USAGE_STATUS = 2
"""Exit status of a bad argument (as argparse uses)."""

SIGTERM_STATUS = 143
"""Exit status after SIGTERM stopped training (128 + 15, what a shell reports for a process SIGTERM ended)."""

class CommandError(SystemExit):
    """A subcommand failed: ``str()`` is its one-line message, ``status`` the exit status
    (:data:`USAGE_STATUS` for a bad argument, 1 for a failure while running)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message, self.status = message, status

    def __str__(self) -> str:
        return self.message



def flag_message(message: str, flags: dict[str, str], owners: tuple[str, ...]) -> str:
    """Rewrite ``<Owner>.<field> `` in a config's error message as the flag users typed (``flags``: field -> flag)."""
    for field, flag in flags.items():
        for owner in owners:
            message = message.replace(f"{owner}.{field} ", f"{flag} ")
    return message


def require_single_process(command: str) -> None:
    """Refuse (status 2) to run ``command`` in a process that torchrun started as one of several:
    only ``train`` and ``train-rl`` are data-parallel; the others would each write the same files."""
    world_size = os.environ.get("WORLD_SIZE", "1")
    if world_size.isdigit() and int(world_size) > 1:
        raise CommandError(f"gating {command}: runs in one process (WORLD_SIZE={world_size} here); only "
                           "`gating train` and `gating train-rl` are data-parallel: run this command without torchrun",
                           USAGE_STATUS)
