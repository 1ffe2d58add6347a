"""Test-set measurement of a model: accuracy and, for a ``GatedModel``, its counts summed over the batches.

Shared by the workflows (``gating.demo``, ``gating.rl.workflow``): one
definition of what "accuracy" and "executed MACs over the test set" mean in
their results (``docs/design.md#accounting``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import io
from .accounting import Report
from .model import GatedModel

__all__ = ["calibration_batch", "measure", "saved_sizes"]


def calibration_batch(loader: DataLoader, count: int, device: torch.device) -> torch.Tensor:
    """The first ``count`` images of ``loader``'s dataset (in dataset order), on ``device``."""
    count = min(count, len(loader.dataset))
    return torch.stack([loader.dataset[i][0] for i in range(count)]).to(device)


@torch.no_grad()
def measure(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, Report | None]:
    """Accuracy in percent over ``loader`` (eval mode) and, for a ``GatedModel``, its counts summed over batches."""
    model.eval()
    correct, seen, report = 0, 0, None
    for inputs, targets in loader:
        inputs, targets = inputs.to(device), targets.to(device)
        logits = model(inputs)
        correct += int((logits.argmax(dim=1) == targets).sum())
        seen += targets.numel()
        if isinstance(model, GatedModel):
            batch = model.report()
            report = batch if report is None else report + batch
    return 100.0 * correct / seen, report


def saved_sizes(models: dict[str, nn.Module], out: Path) -> dict[str, int]:
    """Save each model with ``gating.save`` to ``out / f"{role}_model"`` and return, per role, its parameters
    (``{role}_params``), parameter bytes in memory (``{role}_param_bytes``) and bytes on disk (``{role}_disk_bytes``)."""
    sizes = {}
    for role, model in models.items():
        folder = io.save(model, out / f"{role}_model", overwrite=True)
        params = list(model.parameters())
        sizes[f"{role}_params"] = sum(p.numel() for p in params)
        sizes[f"{role}_param_bytes"] = sum(p.numel() * p.element_size() for p in params)
        sizes[f"{role}_disk_bytes"] = io.disk_bytes(folder)
    return sizes
