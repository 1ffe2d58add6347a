"""``TrainConfig``: the hyper-parameters of a :class:`~gating.distill.Trainer` run, validated on construction."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["RESUME_MUST_MATCH", "TrainConfig", "resolve_amp", "resolve_device"]


@dataclass
class TrainConfig:
    """Hyper-parameters of a :class:`Trainer` run; invalid values raise ``ValueError``.

    The gate-training recipe (``docs/design.md#training-recipe``) is the last
    group of fields; each is off by default, so a plain network trains as
    before, and the demo sets the values chosen by measurement.

    Attributes:
        epochs: number of passes over the train loader (>= 1).
        lr: base learning rate of SGD (> 0).
        momentum: SGD momentum (>= 0; > 0 when ``nesterov``).
        weight_decay: L2 weight decay (>= 0), not applied to the student's
            ``no_weight_decay_parameters()``.
        nesterov: Nesterov momentum.
        kd_alpha: weight of the hard-target cross-entropy in [0, 1]; the
            distillation term gets ``1 - kd_alpha``. Unused without a teacher.
        kd_temperature: distillation temperature (> 0).
        warmup_epochs: epochs of linear LR warmup before the cosine decay
            (0 <= warmup_epochs < epochs).
        eval_every: evaluate every this many epochs (>= 1); the last epoch is
            always evaluated. ``None``: never evaluate (the caller measures
            the trained model itself); the last epoch still adds a history
            record, without metrics.
        checkpoint_every: also checkpoint every this many global steps (>= 0;
            0 = only at epoch ends). Needs the trainer's ``checkpoint_path``.
        seed: ``torch.manual_seed`` / ``random.seed`` at the start of ``fit``.
        device: torch device string; ``None`` = CUDA when available, else CPU.
        amp: float16 autocast + ``GradScaler``; ``None`` = on for CUDA only.
            ``True`` needs a CUDA device.
        progress: show a tqdm bar per epoch.
        max_grad_norm: clip the gradient norm to this value (> 0); ``None`` = no
            clipping.
        channels_last: train in the channels_last memory format: the student
            is converted once at construction and every training batch on
            its way in (a speed setting: the same math, another summation
            order). On the 2-core CPU a dense ResNet-20 step at 24x24, batch
            128, took 0.24-0.29 s instead of 0.35-0.38 s; a gated student's
            step was not faster (``docs/design.md#training-recipe``).
        feature_kd_weight: weight (>= 0) of :func:`feature_kd_loss` between the
            outputs of ``feature_kd_layers`` in student and teacher; 0 = off.
        feature_kd_layers: module names (as in the teacher's
            ``named_modules``; a ``GatedModel`` student resolves them in the
            model it wraps) whose outputs are matched; needed when
            ``feature_kd_weight > 0``.
        budget_ramp_epochs: epochs (>= 0, at most ``epochs``; fractions
            allowed) over which the student's MAC budget target moves linearly
            from ``budget_ramp_start`` to its goal; 0 = the goal from the start.
            Needs a student with a ``budget_goal``.
        budget_ramp_start: executed/dense MAC ratio in (0, 1] the ramp starts
            from (1.0 = dense).
        bn_recalibration_batches: after the last epoch, re-estimate the
            student's BatchNorm running statistics on this many training
            batches with the gates at their final (eval-mode) state (>= 0;
            0 = off). Gate statistics and every parameter stay as trained.
        budget_fit_batches: after the last epoch, shift all gate thresholds
            by one offset so the eval-mode MAC ratio over this many training
            batches meets the student's budget goal (``fit_budget``), then
            re-estimate BatchNorm again if ``bn_recalibration_batches``
            (>= 0; 0 = off). Needs a student with ``fit_budget``.
        slimming_weight: weight ``s`` (>= 0) of the network-slimming penalty
            ``s * sum |gamma|`` over the student's BatchNorm scales
            (``gating.prune.slimming_penalty``), so that a later pruning by
            the ``"slimming"`` criterion removes channels the network learnt
            to switch off; 0 = off.
        kernel_l1_weight: weight (>= 0) of the adaptive L1 on the student's
            2-D convolution kernels (``gating.prune.kernel_l1_penalty``, a
            value in [0, 1)), before pruning by the ``"multigranularity"``
            criterion; 0 = off.
    """

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    warmup_epochs: int = 0
    eval_every: int | None = 1
    checkpoint_every: int = 0
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    progress: bool = True
    max_grad_norm: float | None = None
    channels_last: bool = False
    feature_kd_weight: float = 0.0
    feature_kd_layers: tuple[str, ...] = field(default_factory=tuple)
    budget_ramp_epochs: float = 0.0
    budget_ramp_start: float = 1.0
    bn_recalibration_batches: int = 0
    budget_fit_batches: int = 0
    slimming_weight: float = 0.0
    kernel_l1_weight: float = 0.0

    def __post_init__(self) -> None:
        _require(is_int(self.epochs) and self.epochs >= 1, "epochs", "an int >= 1", self.epochs)
        _require(_is_real(self.lr) and self.lr > 0, "lr", "a finite number > 0", self.lr)
        _require(
            _is_real(self.momentum) and self.momentum >= 0, "momentum", "a finite number >= 0", self.momentum
        )
        _require(
            _is_real(self.weight_decay) and self.weight_decay >= 0,
            "weight_decay",
            "a finite number >= 0",
            self.weight_decay,
        )
        _require(isinstance(self.nesterov, bool), "nesterov", "a bool", self.nesterov)
        _require(
            not self.nesterov or self.momentum > 0, "momentum", "> 0 when nesterov=True", self.momentum
        )
        _require(_is_real(self.kd_alpha) and 0 <= self.kd_alpha <= 1, "kd_alpha", "in [0, 1]", self.kd_alpha)
        _require(
            _is_real(self.kd_temperature) and self.kd_temperature > 0,
            "kd_temperature",
            "a finite number > 0",
            self.kd_temperature,
        )
        _require(
            is_int(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            f"an int in [0, epochs={self.epochs})",
            self.warmup_epochs,
        )
        _require(
            self.eval_every is None or (is_int(self.eval_every) and self.eval_every >= 1),
            "eval_every",
            "None or an int >= 1",
            self.eval_every,
        )
        _require(
            is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "an int >= 0",
            self.checkpoint_every,
        )
        _require(is_int(self.seed), "seed", "an int", self.seed)
        _require(_is_device(self.device), "device", "None or a torch device string", self.device)
        _require(self.amp is None or isinstance(self.amp, bool), "amp", "None or a bool", self.amp)
        _require(isinstance(self.progress, bool), "progress", "a bool", self.progress)
        _require(isinstance(self.channels_last, bool), "channels_last", "a bool", self.channels_last)
        _require(
            self.max_grad_norm is None or (_is_real(self.max_grad_norm) and self.max_grad_norm > 0),
            "max_grad_norm",
            "None or a finite number > 0",
            self.max_grad_norm,
        )
        self._check_recipe()

    def _check_recipe(self) -> None:
        if isinstance(self.feature_kd_layers, str):
            self.feature_kd_layers = (self.feature_kd_layers,)
        self.feature_kd_layers = tuple(self.feature_kd_layers)
        _require(
            _is_real(self.feature_kd_weight) and self.feature_kd_weight >= 0,
            "feature_kd_weight",
            "a finite number >= 0",
            self.feature_kd_weight,
        )
        _require(
            all(isinstance(name, str) and name for name in self.feature_kd_layers),
            "feature_kd_layers",
            "a tuple of module names",
            self.feature_kd_layers,
        )
        _require(
            self.feature_kd_weight == 0 or bool(self.feature_kd_layers),
            "feature_kd_layers",
            "non-empty when feature_kd_weight > 0",
            self.feature_kd_layers,
        )
        _require(
            _is_real(self.budget_ramp_epochs) and 0 <= self.budget_ramp_epochs <= self.epochs,
            "budget_ramp_epochs",
            f"a number in [0, epochs={self.epochs}]",
            self.budget_ramp_epochs,
        )
        _require(
            _is_real(self.budget_ramp_start) and 0 < self.budget_ramp_start <= 1,
            "budget_ramp_start",
            "in (0, 1]",
            self.budget_ramp_start,
        )
        _require(
            is_int(self.bn_recalibration_batches) and self.bn_recalibration_batches >= 0,
            "bn_recalibration_batches",
            "an int >= 0",
            self.bn_recalibration_batches,
        )
        _require(
            is_int(self.budget_fit_batches) and self.budget_fit_batches >= 0,
            "budget_fit_batches",
            "an int >= 0",
            self.budget_fit_batches,
        )
        _require(
            _is_real(self.slimming_weight) and self.slimming_weight >= 0,
            "slimming_weight",
            "a finite number >= 0",
            self.slimming_weight,
        )
        _require(
            _is_real(self.kernel_l1_weight) and self.kernel_l1_weight >= 0,
            "kernel_l1_weight",
            "a finite number >= 0",
            self.kernel_l1_weight,
        )


RESUME_MUST_MATCH = (
    "epochs",
    "lr",
    "momentum",
    "weight_decay",
    "nesterov",
    "kd_alpha",
    "kd_temperature",
    "warmup_epochs",
    "seed",
    "max_grad_norm",
    "channels_last",
    "feature_kd_weight",
    "feature_kd_layers",
    "budget_ramp_epochs",
    "budget_ramp_start",
    "bn_recalibration_batches",
    "budget_fit_batches",
    "slimming_weight",
    "kernel_l1_weight",
)
"""``TrainConfig`` fields a resumed run must share with its checkpoint."""


def _require(ok: bool, field: str, expectation: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``TrainConfig.<field>`` unless ``ok``."""
    if not ok:
        raise ValueError(f"TrainConfig.{field} must be {expectation}, got {value!r}")


def is_int(value: Any) -> bool:
    """``value`` is an ``int`` and not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_device(value: Any) -> bool:
    if value is None:
        return True
    if not isinstance(value, str):
        return False
    try:
        torch.device(value)
    except RuntimeError:
        return False
    return True



def resolve_device(device: str | None) -> torch.device:
    """``TrainConfig.device`` as a ``torch.device``: ``None`` = CUDA when available, else CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_amp(amp: bool | None, device: torch.device) -> bool:
    """``TrainConfig.amp`` resolved for ``device``: ``None`` = on for CUDA only; ``True`` needs CUDA."""
    if amp is None:
        return device.type == "cuda"
    if amp and device.type != "cuda":
        raise ValueError(f"TrainConfig.amp=True needs a CUDA device, got {device}")
    return amp
