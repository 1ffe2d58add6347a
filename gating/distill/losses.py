"""Distillation losses: logits (Hinton) and intermediate features."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["feature_kd_loss", "kd_loss"]


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    targets: Tensor,
    alpha: float,
    temperature: float,
) -> Tensor:
    """Hinton distillation loss, computed in float32.

    ``alpha * CE(student, targets) + (1 - alpha) * T^2 * KL(p_teacher || p_student)``
    with ``p = softmax(logits / T)`` and the KL divergence averaged over the batch
    (``batchmean``). The ``T^2`` factor keeps the soft-target gradients on the
    scale of the hard-target ones. With ``teacher_logits=None`` it is plain
    cross-entropy (``alpha`` is ignored).

    Raises:
        ValueError: ``alpha`` outside [0, 1] or ``temperature <= 0``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    if not temperature > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    student_logits = student_logits.float()
    hard = F.cross_entropy(student_logits, targets)
    if teacher_logits is None:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.float() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return alpha * hard + (1.0 - alpha) * temperature**2 * soft


def feature_kd_loss(student_features: Sequence[Tensor], teacher_features: Sequence[Tensor]) -> Tensor:
    """Mean over layers of the teacher-normalised squared error of feature maps, in float32.

    For each pair ``(s, t)`` of same-shaped tensors the term is
    ``mean((s - t)^2) / (mean(t^2) + 1e-8)``: the relative error of the
    student's feature map, so layers of different scale weigh alike and the
    loss of a student equal to its teacher is 0 (1 for a student that outputs
    zeros). The teacher features carry no gradient.

    Raises:
        ValueError: the sequences are empty, of different lengths, or a pair
            differs in shape.
    """
    if len(student_features) != len(teacher_features) or not student_features:
        raise ValueError(
            f"feature_kd_loss needs equally many (>= 1) student and teacher features, got "
            f"{len(student_features)} and {len(teacher_features)}"
        )
    terms = []
    for index, (student, teacher) in enumerate(zip(student_features, teacher_features)):
        if student.shape != teacher.shape:
            raise ValueError(
                f"feature_kd_loss: feature {index} has shape {tuple(student.shape)} in the student and "
                f"{tuple(teacher.shape)} in the teacher"
            )
        teacher = teacher.detach().float()
        error = (student.float() - teacher).pow(2).mean()
        terms.append(error / (teacher.pow(2).mean() + 1e-8))
    return torch.stack(terms).mean()
