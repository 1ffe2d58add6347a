"""Evaluation of a (gated) classifier: accuracy, loss and executed-MAC ratio over a loader."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ..modes import train_mode

Reduce = Callable[[Sequence[float]], list[float]]
"""Sums of per-process values over the processes of a data-parallel run (``DistributedRun.sum``)."""

__all__ = ["evaluate_classifier"]


def evaluate_classifier(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast: bool = False, reduce: Reduce | None = None
) -> dict[str, float]:
    """Evaluate ``model`` on ``loader`` in ``eval()`` mode under ``torch.no_grad()``.

    Batches ``(inputs, int64 targets [B])`` are moved to ``device``; with
    ``autocast`` the forward runs under ``torch.autocast(device.type)``. The
    model's previous train/eval mode is restored. In a data-parallel run
    each process passes its share of the test set and ``reduce`` (summing
    over the processes): the metrics are then those of the whole set, the
    same in every process.

    Returns:
        ``loss`` (mean cross-entropy, in float32), ``accuracy`` in percent
        (0..100) and, when the model has ``executed_macs_ratio()``,
        ``macs_ratio``: its value per batch averaged with batch-size weights.

    Raises:
        ValueError: the loader yields no samples (in no process).
    """
    with train_mode(model, False), torch.no_grad():
        return _evaluate(model, loader, device, autocast, reduce)


def _evaluate(
    model: nn.Module, loader: DataLoader, device: torch.device, autocast: bool, reduce: Reduce | None
) -> dict[str, float]:
    loss_sum, correct, seen, macs_sum = 0.0, 0, 0, 0.0
    macs_ratio = getattr(model, "executed_macs_ratio", None)
    for inputs, targets in loader:
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast(device.type, enabled=autocast):
            logits = model(inputs)
        batch = len(targets)
        loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += batch
        if macs_ratio is not None:
            macs_sum += float(macs_ratio()) * batch
    if reduce is not None:
        loss_sum, correct, seen, macs_sum = reduce([loss_sum, correct, seen, macs_sum])
    if seen == 0:
        raise ValueError("evaluation loader yielded no samples")
    metrics = {"loss": loss_sum / seen, "accuracy": 100.0 * correct / seen}
    if macs_ratio is not None:
        metrics["macs_ratio"] = macs_sum / seen
    return metrics
