"""The optimizer of a :class:`~gating.distill.Trainer` run: SGD with two weight-decay groups and a per-step
cosine schedule, and the frozen teacher."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR

from .config import TrainConfig
from .schedules import cosine_lr_factor

__all__ = ["freeze", "param_groups", "sgd_with_schedule"]


def sgd_with_schedule(student: nn.Module, config: TrainConfig, steps_per_epoch: int) -> tuple[SGD, LambdaLR]:
    """SGD over ``student``'s trainable parameters (:func:`param_groups`) and a ``LambdaLR`` stepping
    :func:`cosine_lr_factor` once per batch over ``config.epochs * steps_per_epoch`` steps, after
    ``config.warmup_epochs`` epochs of linear warmup."""
    optimizer = SGD(param_groups(student, config.weight_decay), lr=config.lr, momentum=config.momentum,
                    nesterov=config.nesterov, weight_decay=config.weight_decay)
    total = config.epochs * steps_per_epoch
    warmup = config.warmup_epochs * steps_per_epoch
    return optimizer, LambdaLR(optimizer, lambda step: cosine_lr_factor(step, total, warmup))


def freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with gradients off; returns it."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def param_groups(student: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group and a ``weight_decay=0`` group
    (the student's ``no_weight_decay_parameters()``, e.g. gate thresholds)."""
    no_decay_method = getattr(student, "no_weight_decay_parameters", None)
    no_decay_ids = set() if no_decay_method is None else {id(p) for p in no_decay_method()}
    trainable = [p for p in student.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in no_decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in no_decay_ids], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]
