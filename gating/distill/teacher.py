"""The dense teacher's training run, shared by every workflow that distils from one.

``teacher_recipe`` is the one recipe (SGD at learning rate 0.1, plain
cross-entropy, channels_last, no evaluation during training: the workflows
measure the teacher themselves); ``train_teacher`` runs it with a resumable
checkpoint and hands the model back in the contiguous (NCHW) format the
gated students and the measurements use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .config import TrainConfig
from .distributed import DistributedRun
from .trainer import Trainer

__all__ = ["teacher_recipe", "train_teacher"]


def teacher_recipe(epochs: int, **overrides: Any) -> TrainConfig:
    """The dense teacher's ``TrainConfig``: ``epochs`` epochs; ``overrides`` set any other field (seed, progress, penalties)."""
    settings = {"epochs": epochs, "lr": 0.1, "kd_alpha": 1.0, "eval_every": None, "channels_last": True}
    return TrainConfig(**(settings | overrides))


def train_teacher(
    teacher: nn.Module,
    train_loader: DataLoader,
    test_loader: DataLoader,
    config: TrainConfig,
    checkpoint_path: Path,
    resume: bool = False,
    run: DistributedRun | None = None,
) -> torch.device:
    """Train ``teacher`` in place with ``config`` (checkpoint at ``checkpoint_path``); returns the device it ran on.

    Trained in channels_last for speed, the teacher comes back contiguous
    (NCHW): the gated students built from it, and the measurements, run in
    that format. ``run``: this process's place in a data-parallel run (the
    loaders then hold its shares; see :class:`~gating.distill.Trainer`).
    """
    trainer = Trainer(teacher, train_loader, test_loader, config, checkpoint_path=checkpoint_path, run=run)
    trainer.fit(resume=resume)
    teacher.to(memory_format=torch.contiguous_format)
    return trainer.device
