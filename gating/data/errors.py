"""The one exception type of :mod:`gating.data`."""

from __future__ import annotations

__all__ = ["DatasetError"]


class DatasetError(ValueError):
    """A dataset folder is missing or malformed.

    Subclass of :class:`ValueError` (the ``root`` argument is an invalid
    value); the message names the offending path and the expected layout.
    """
