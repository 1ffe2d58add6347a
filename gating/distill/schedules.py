"""Per-step schedules of a training run: learning rate and MAC budget target."""

from __future__ import annotations

import math

__all__ = ["budget_target", "cosine_lr_factor"]


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate for the update at 0-based ``step``.

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    cosine annealing to zero: ``0.5 * (1 + cos(pi * (step - W) / (total - W)))``,
    which is 1 at the first post-warmup step and 0 at ``step == total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def budget_target(step: int, ramp_steps: int, start: float, goal: float) -> float:
    """Executed/dense MAC target for the update at 0-based ``step``.

    Moves linearly from ``start`` (at step 0) to ``goal`` (reached at
    ``step == ramp_steps`` and held after); ``ramp_steps = 0`` means ``goal``
    from the first step. Steps before the end of the ramp get
    ``start + (goal - start) * step / ramp_steps``.
    """
    if ramp_steps <= 0 or step >= ramp_steps:
        return goal
    return start + (goal - start) * step / ramp_steps
