"""A dense teacher from disk for ``python -m gating train --teacher``, checked against the model and the data.

:func:`load_teacher` accepts a folder written by :func:`gating.save` or a
checkpoint file (a ``gating`` training checkpoint, whose ``model_state`` is
used, or a plain ``state_dict`` saved with ``torch.save``) and refuses, with
a one-line :class:`gating.io.CheckpointError`, a teacher of another
architecture, of other constructor arguments, with another number of
classes than the data, or a gated model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import io
from .model import GatedModel

__all__ = ["load_teacher"]


def load_teacher(path: Path, model: str, model_args: dict[str, Any], num_classes: int) -> nn.Module:
    """The dense ``model(num_classes=num_classes, **model_args)`` with the weights at ``path``.

    Raises:
        gating.io.CheckpointError: ``path`` is missing, unreadable, gated,
            or holds another architecture / arguments / number of classes
            (the message names what differs).
        gating.io.ModelFileError: a ``gating.save`` folder that is corrupt.
    """
    path = Path(path)
    if path.is_dir():
        return _from_folder(path, model, model_args, num_classes)
    state = _state_dict(path)
    teacher = io.build(model, num_classes=num_classes, **model_args)
    head = _head(teacher)
    if head is not None and f"{head}.weight" in state:
        classes = state[f"{head}.weight"].shape[0]
        if classes != num_classes:
            raise io.CheckpointError(f"teacher checkpoint {path} classifies {classes} classes, the data has "
                                     f"{num_classes}")
    try:
        io.load_state_dict_checked(teacher, state, f"teacher checkpoint {path} for --model {model}")
    except io.CheckpointError as error:
        raise io.CheckpointError(f"{error} (another architecture or other --model-arg values?)") from None
    return teacher


def _from_folder(path: Path, model: str, model_args: dict[str, Any], num_classes: int) -> nn.Module:
    teacher = io.load(path)
    if isinstance(teacher, GatedModel):
        raise io.CheckpointError(f"teacher {path} is a gated model; --teacher needs the dense one")
    constructor = getattr(teacher, "constructor", {})
    saved_args = {k: v for k, v in constructor.get("kwargs", {}).items() if k != "num_classes"}
    if constructor.get("callable") != model or saved_args != model_args:
        raise io.CheckpointError(
            f"teacher {path} is {constructor.get('callable')!r} with arguments {saved_args}; "
            f"--model is {model!r} with arguments {model_args}")
    classes = constructor.get("kwargs", {}).get("num_classes")
    if classes is not None and classes != num_classes:
        raise io.CheckpointError(f"teacher {path} classifies {classes} classes, the data has {num_classes}")
    return teacher


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The model weights in ``path``: a gating checkpoint's ``model_state`` or a plain state dict (read once)."""
    loaded = io.load_torch_file(path, what="teacher checkpoint")
    if isinstance(loaded, dict) and loaded.get("format") == io.FORMAT:
        io.validate_checkpoint(loaded, path)
        loaded = loaded["model_state"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise io.CheckpointError(f"teacher checkpoint {path} holds no state dict (a dict of tensors)")
    if any(key.startswith("model.") for key in loaded) and "_extra_state" in loaded:
        raise io.CheckpointError(f"teacher checkpoint {path} is a gated model's; --teacher needs the dense one")
    return loaded


def _head(model: nn.Module) -> str | None:
    """Name of the last ``nn.Linear`` (the classifier), if any."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[-1] if names else None
