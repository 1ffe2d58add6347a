"""Feature distillation taps: the outputs of named modules in student and teacher, kept per forward."""

from __future__ import annotations

from torch import Tensor, nn

from .config import TrainConfig
from .losses import feature_kd_loss

__all__ = ["FeatureTaps"]


class FeatureTaps:
    """Forward hooks that keep the outputs of the same named modules in student and teacher.

    Built by the trainer when ``TrainConfig.feature_kd_weight > 0``; every
    forward of either network overwrites its stored outputs, and
    :meth:`loss` compares the last ones.

    Raises:
        ValueError: no teacher, or a name missing from teacher or student.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, config: TrainConfig) -> None:
        if teacher is None:
            raise ValueError("TrainConfig.feature_kd_weight > 0 needs a teacher")
        self.names = config.feature_kd_layers
        self.student: dict[str, Tensor] = {}
        self.teacher: dict[str, Tensor] = {}
        for name in self.names:
            _submodule(teacher, name, "teacher").register_forward_hook(self._keep(self.teacher, name))
            _submodule(student, name, "student").register_forward_hook(self._keep(self.student, name))

    @staticmethod
    def _keep(store: dict[str, Tensor], name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor) -> None:
            store[name] = output

        return hook

    def loss(self) -> Tensor:
        """:func:`feature_kd_loss` of the last student and teacher forwards."""
        return feature_kd_loss([self.student[n] for n in self.names], [self.teacher[n] for n in self.names])


def _submodule(model: nn.Module, name: str, role: str) -> nn.Module:
    """``model``'s module ``name``, or that of the model it wraps (``model.model``, as ``GatedModel``)."""
    for candidate in (name, f"model.{name}"):
        try:
            return model.get_submodule(candidate)
        except AttributeError:
            continue
    raise ValueError(f"TrainConfig.feature_kd_layers names {name!r}, which the {role} does not have")
