"""Offline logit distillation: the teacher's logits computed once per training example.

A distillation step normally runs the teacher on every batch. When the
training examples are the same in every epoch (no random augmentation, as on
the built-in data), the teacher's logits are too, so they can be computed once
and stored beside the examples: :func:`with_teacher_logits` returns the
dataset with them as a third element, and :class:`~gating.distill.Trainer`
uses a batch's third element instead of running the teacher for its logits
(the teacher still runs when feature distillation needs its features).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..modes import train_mode

__all__ = ["with_teacher_logits"]


@torch.no_grad()
def with_teacher_logits(
    dataset: Dataset, teacher: nn.Module, device: torch.device | str = "cpu", batch_size: int = 256
) -> TensorDataset:
    """``dataset``'s ``(input, target)`` examples with the teacher's logits added: ``(input, target, logits)``.

    The teacher runs once over the dataset in order, in ``eval()`` mode (its
    previous mode is restored), in float32 on ``device``, ``batch_size``
    examples at a time. Only valid when an example's input is the same every
    time it is read (no random augmentation): the logits are those of the
    inputs read here.

    Returns:
        A ``TensorDataset`` on CPU of inputs (as read), int64 targets ``[len]``
        and float32 logits ``[len, num_classes]``.

    Raises:
        ValueError: ``dataset`` is empty or ``batch_size`` < 1.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"with_teacher_logits: batch_size must be an int >= 1, got {batch_size!r}")
    if len(dataset) == 0:
        raise ValueError("with_teacher_logits: the dataset is empty")
    device = torch.device(device)
    inputs, targets, logits = [], [], []
    with train_mode(teacher, False):
        for batch_inputs, batch_targets in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            inputs.append(batch_inputs)
            targets.append(torch.as_tensor(batch_targets, dtype=torch.int64))
            logits.append(teacher(batch_inputs.to(device)).float().cpu())
    return TensorDataset(torch.cat(inputs), torch.cat(targets), torch.cat(logits))
