"""One bisection for every "largest setting that stays within a budget" search of the project."""

from __future__ import annotations

from typing import Callable

__all__ = ["largest_within"]


def largest_within(
    measure: Callable[[float], float], target: float, low: float, high: float, steps: int, tolerance: float = 0.0
) -> float:
    """The largest ``x`` in ``[low, high]`` found by bisection with ``measure(x) <= target``.

    ``measure`` must not decrease with ``x`` (a MAC or parameter ratio as a
    keep ratio or a budget grows). ``high`` is tried first and returned when
    it fits; otherwise ``steps`` halvings, stopping early once a fitting
    ``x`` is within ``tolerance`` of ``target``. Returns ``low`` when no
    tried ``x`` fits (``low`` itself is not measured).
    """
    if measure(high) <= target:
        return high
    best = low
    for _ in range(steps):
        mid = (low + high) / 2
        value = measure(mid)
        if value <= target:
            low = best = mid
            if target - value <= tolerance:
                break
        else:
            high = mid
    return best
