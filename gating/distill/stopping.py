"""How a training run stops early: divergence, and SIGTERM turned into a checkpoint and a clean stop."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["TrainingDivergedError", "TrainingInterrupted", "sigterm_flag"]


class TrainingInterrupted(Exception):
    """``fit`` stopped because the process received SIGTERM.

    The step in progress finished and, when the trainer has a
    ``checkpoint_path``, a checkpoint of it was written first, so
    ``fit(resume=True)`` in a new process ends in the same state as an
    uninterrupted run. ``step`` is the global step reached; ``path`` the
    checkpoint (``None`` without one).
    """

    def __init__(self, step: int, path: Path | None) -> None:
        where = f"checkpoint of step {step} written to {path}; resume to continue" if path is not None else (
            f"stopped after step {step}; no checkpoint path was set, so nothing was saved")
        super().__init__(f"SIGTERM received: {where}")
        self.step, self.path = step, path


@contextlib.contextmanager
def sigterm_flag() -> Iterator[list[bool]]:
    """While active (main thread only), SIGTERM sets ``flag[0]`` instead of killing the process."""
    flag = [False]
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def received(signum: int, frame: Any) -> None:
        flag[0] = True

    previous = signal.signal(signal.SIGTERM, received)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite.

    Raised before the offending step's backward pass and optimizer update, and
    before any checkpoint for that step, so the last checkpoint on disk stays the
    last good state. ``step`` is the 0-based global step that diverged (equal to
    the number of steps completed before it).
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step
