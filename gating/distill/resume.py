"""Checkpoints of a :class:`~gating.distill.Trainer`: atomic saves and exact resumption (and its metrics log).

The functions take the :class:`~gating.distill.Trainer` whose state they
write or restore (``student``, ``optimizer``, ``scheduler``, ``scaler``,
progress counters, ``config``, ``checkpoint_path``). A checkpoint records
the epoch in progress, how many of its batches were
consumed, the RNG state at the start of the epoch and at the checkpoint (see
the package docstring for how resumption replays them).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.optim import Optimizer

from ..io import CheckpointError, atomic_write, load_checkpoint, load_state_dict_checked, restore_rng_state, save_checkpoint
from .config import RESUME_MUST_MATCH

__all__ = ["load_trainer_checkpoint", "save_metrics_log", "save_trainer_checkpoint"]

logger = logging.getLogger(__name__)

_TRAINER_KEYS = ("global_step", "history", "steps_per_epoch", "epoch_rng_state")


def save_trainer_checkpoint(trainer: Any, epoch_rng: Mapping[str, Any]) -> None:
    """Atomically checkpoint ``trainer``'s current position (no-op without a path, or outside the main process)."""
    if trainer.checkpoint_path is None or not trainer.run.is_main:
        return
    save_checkpoint(
        trainer.checkpoint_path,
        model_state=trainer.student.state_dict(),
        optimizer_state=trainer.optimizer.state_dict(),
        scheduler_state=trainer.scheduler.state_dict(),
        scaler_state=trainer.scaler.state_dict(),
        epoch=trainer.epoch,
        step=trainer.step_in_epoch,
        config=dataclasses.asdict(trainer.config),
        metrics=trainer.history[-1] if trainer.history else None,
        extra={
            "global_step": trainer.global_step,
            "history": trainer.history,
            "steps_per_epoch": trainer.steps_per_epoch,
            "epoch_rng_state": dict(epoch_rng),
            "epoch_sums": list(trainer.epoch_sums),
        },
    )


def save_metrics_log(path: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history`` to ``path`` as JSON lines, atomically (rewritten whole, so it matches the checkpoint)."""
    atomic_write(path, lambda file: file.write("".join(json.dumps(record) + "\n" for record in history).encode()))


def load_trainer_checkpoint(trainer: Any) -> dict[str, Any] | None:
    """Load the checkpoint into ``trainer``; return the RNG state to restore after skipping batches.

    Returns ``None`` (train from scratch) when there is no checkpoint file.
    Everything is validated before anything is loaded.
    """
    path = trainer.checkpoint_path
    if path is None:
        raise ValueError("fit(resume=True) needs a Trainer checkpoint_path")
    if not path.exists():
        logger.warning("no checkpoint at %s; training from scratch", path)
        return None
    checkpoint = load_checkpoint(path)
    extra = _check_resumable(trainer, checkpoint, path)
    load_state_dict_checked(trainer.student, checkpoint["model_state"], "student")
    trainer.optimizer.load_state_dict(checkpoint["optimizer_state"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler_state"])
    if checkpoint["scaler_state"]:
        trainer.scaler.load_state_dict(checkpoint["scaler_state"])
    trainer.epoch, trainer.step_in_epoch = checkpoint["epoch"], checkpoint["step"]
    trainer.global_step = extra["global_step"]
    trainer.history = [dict(record) for record in extra["history"]]
    trainer.epoch_sums = [float(v) for v in extra.get("epoch_sums", (0.0, 0.0, 0.0))]
    restore_rng_state(extra["epoch_rng_state"])
    logger.info("resuming from %s at epoch %d, batch %d", path, trainer.epoch, trainer.step_in_epoch)
    return checkpoint["rng_state"]


def _check_resumable(trainer: Any, checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """Validate a checkpoint against ``trainer`` before anything is loaded; return its ``extra``."""
    extra = checkpoint.get("extra") or {}
    missing = [key for key in _TRAINER_KEYS if key not in extra]
    if missing or checkpoint.get("rng_state") is None or checkpoint.get("optimizer_state") is None:
        what = ", ".join(missing) or "RNG or optimizer state"
        raise CheckpointError(f"{path} is not a Trainer checkpoint (missing {what})")
    if extra["steps_per_epoch"] != trainer.steps_per_epoch:
        raise CheckpointError(
            f"{path} was written with {extra['steps_per_epoch']} steps per epoch; "
            f"this train loader has {trainer.steps_per_epoch}"
        )
    current = dataclasses.asdict(trainer.config)
    default = {f.name: _field_default(f) for f in dataclasses.fields(trainer.config)}
    changed = [
        f"{key}: {checkpoint['config'].get(key, default[key])!r} -> {current[key]!r}"
        for key in RESUME_MUST_MATCH
        if _plain(checkpoint["config"].get(key, default[key])) != _plain(current[key])
    ]
    if changed:
        raise CheckpointError(f"{path} was written with a different config ({'; '.join(changed)})")
    _check_optimizer_groups(checkpoint["optimizer_state"], trainer.optimizer, path)
    return dict(extra)


def _field_default(field: dataclasses.Field) -> Any:
    """A field's default value (what a checkpoint written before the field existed meant)."""
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None if field.default is dataclasses.MISSING else field.default


def _plain(value: Any) -> Any:
    """Lists and tuples compare alike (a checkpoint may hold either)."""
    return tuple(value) if isinstance(value, list | tuple) else value


def _check_optimizer_groups(saved: Mapping[str, Any], optimizer: Optimizer, path: Path) -> None:
    """Raise :class:`CheckpointError` unless the saved optimizer's groups have our sizes."""
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"{path}: optimizer parameter groups have sizes {saved_sizes}, this student's have {sizes}"
        )
