"""Knowledge-distillation training of (gated) students.

:class:`Trainer` trains a student network, optionally distilling from a frozen
teacher with the Hinton loss :func:`kd_loss`: SGD with momentum (Nesterov by
default) and weight decay, a cosine learning-rate schedule stepped per batch
(with optional linear warmup, :func:`cosine_lr_factor`), mixed precision on
CUDA, atomic checkpoints (:mod:`gating.io`) and exact resumption.

Student protocol (duck-typed, every method optional; ``GatedModel`` implements
all three, a plain ``nn.Module`` none):

* ``gating_loss() -> Tensor``: scalar regulariser computed from the student's
  last forward; added to the loss of every training step.
* ``no_weight_decay_parameters() -> Iterable[Parameter]``: parameters (e.g. gate
  thresholds) put in an optimizer group with ``weight_decay=0``.
* ``executed_macs_ratio() -> float``: executed / dense MACs of the last forward;
  :meth:`Trainer.evaluate` reports its batch-size-weighted mean as
  ``macs_ratio``.

Loaders yield ``(inputs, targets)`` pairs and must have a length. When the
train loader's sampler has ``set_epoch(epoch)`` (e.g. ``gating.data.EpochSampler``)
it is called before every epoch, so the epoch's order is a function of
(seed, epoch).

Resumption is exact: a checkpoint records the epoch in progress, how many of
its batches were consumed, the RNG state at the start of the epoch and at the
checkpoint. Resuming sets the epoch-start RNG state, creates the epoch's
iterator, skips the consumed batches and then restores the checkpoint's RNG
state, so subsequent batches, augmentations, dropout masks and updates are
those of an uninterrupted run; on CPU the final weights are bit-for-bit equal.
This holds for ``num_workers=0`` loaders and for worker loaders without
``persistent_workers``. Skipping reads the consumed batches through the loader
again (cheap for in-memory data, one partial epoch of loading otherwise).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim import SGD
from torch.optim.lr_scheduler import LambdaLR
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .io import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    load_state_dict_checked,
    restore_rng_state,
    save_checkpoint,
)

__all__ = [
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "cosine_lr_factor",
    "kd_loss",
]

logger = logging.getLogger(__name__)

_TRAINER_KEYS = ("global_step", "history", "steps_per_epoch", "epoch_rng_state")
_RESUME_MUST_MATCH = (
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
)


class TrainingDivergedError(RuntimeError):
    """The training loss became NaN or infinite.

    Raised before the offending step's backward pass and optimizer update, and
    before any checkpoint for that step, so the last checkpoint on disk stays the
    last good state. ``step`` is the 0-based global step that diverged (equal to
    the number of steps completed before it).
    """

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


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


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the base learning rate for the update at 0-based ``step``.

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, then
    cosine annealing to zero: ``0.5 * (1 + cos(pi * (step - W) / (total - W)))``,
    which is 1 at the first post-warmup step and 0 at ``step == total_steps``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainConfig:
    """Hyper-parameters of a :class:`Trainer` run; invalid values raise ``ValueError``.

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
            always evaluated.
        checkpoint_every: also checkpoint every this many global steps (>= 0;
            0 = only at epoch ends). Needs the trainer's ``checkpoint_path``.
        seed: ``torch.manual_seed`` / ``random.seed`` at the start of ``fit``.
        device: torch device string; ``None`` = CUDA when available, else CPU.
        amp: float16 autocast + ``GradScaler``; ``None`` = on for CUDA only.
            ``True`` needs a CUDA device.
        progress: show a tqdm bar per epoch.
        max_grad_norm: clip the gradient norm to this value (> 0); ``None`` = no
            clipping.
    """

    epochs: int
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = True
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    warmup_epochs: int = 0
    eval_every: int = 1
    checkpoint_every: int = 0
    seed: int = 0
    device: str | None = None
    amp: bool | None = None
    progress: bool = True
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        _require(_is_int(self.epochs) and self.epochs >= 1, "epochs", "an int >= 1", self.epochs)
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
            _is_int(self.warmup_epochs) and 0 <= self.warmup_epochs < self.epochs,
            "warmup_epochs",
            f"an int in [0, epochs={self.epochs})",
            self.warmup_epochs,
        )
        _require(
            _is_int(self.eval_every) and self.eval_every >= 1, "eval_every", "an int >= 1", self.eval_every
        )
        _require(
            _is_int(self.checkpoint_every) and self.checkpoint_every >= 0,
            "checkpoint_every",
            "an int >= 0",
            self.checkpoint_every,
        )
        _require(_is_int(self.seed), "seed", "an int", self.seed)
        _require(_is_device(self.device), "device", "None or a torch device string", self.device)
        _require(self.amp is None or isinstance(self.amp, bool), "amp", "None or a bool", self.amp)
        _require(isinstance(self.progress, bool), "progress", "a bool", self.progress)
        _require(
            self.max_grad_norm is None or (_is_real(self.max_grad_norm) and self.max_grad_norm > 0),
            "max_grad_norm",
            "None or a finite number > 0",
            self.max_grad_norm,
        )


def _require(ok: bool, field: str, expectation: str, value: Any) -> None:
    """Raise ``ValueError`` naming ``TrainConfig.<field>`` unless ``ok``."""
    if not ok:
        raise ValueError(f"TrainConfig.{field} must be {expectation}, got {value!r}")


def _is_int(value: Any) -> bool:
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


class Trainer:
    """Train ``student`` on ``train_loader``, distilling from ``teacher`` when given.

    The teacher is frozen at construction (``eval()``, ``requires_grad=False``)
    and only run under ``torch.no_grad()``; it is skipped when
    ``config.kd_alpha == 1`` (the loss is then plain cross-entropy). Student and
    teacher are moved to the configured device.

    Attributes set at construction and rebuilt by :meth:`fit`: ``optimizer``
    (SGD), ``scheduler`` (per-step :func:`cosine_lr_factor` via ``LambdaLR``
    over ``epochs * len(train_loader)`` steps), ``scaler`` (``GradScaler``,
    disabled without AMP). Progress: ``epoch`` (epochs completed / epoch in
    progress), ``step_in_epoch`` (its batches consumed), ``global_step``
    (optimizer steps completed), ``history`` (evaluation records).

    Checkpoints (when ``checkpoint_path`` is given) are written atomically at
    every epoch end, every ``config.checkpoint_every`` global steps, and when
    ``fit`` stops early through ``stop_after_steps``.
    """

    def __init__(
        self,
        student: nn.Module,
        train_loader: DataLoader,
        test_loader: DataLoader,
        config: TrainConfig,
        teacher: nn.Module | None = None,
        checkpoint_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.device = _resolve_device(config.device)
        self.amp = _resolve_amp(config.amp, self.device)
        self.student = student.to(self.device)
        self.teacher = None if teacher is None else _freeze(teacher.to(self.device))
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("train_loader yields no batches")
        self._reset()

    # ------------------------------------------------------------------ public

    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs and return the evaluation history.

        Seeds ``torch`` and ``random`` with ``config.seed`` and starts from the
        student's current weights with a fresh optimizer and schedule. Each
        history record holds ``epoch`` (epochs completed), ``global_step``,
        ``lr`` and the metrics of :meth:`evaluate`.

        Args:
            resume: continue from ``checkpoint_path`` exactly where it stopped
                (see the module docstring). Without a checkpoint file there,
                training starts from scratch and a warning is logged.
            stop_after_steps: stop once ``global_step`` reaches this value
                (counted over the whole run, >= 1), writing a checkpoint first;
                ``fit(resume=True)`` then carries on.

        Raises:
            TrainingDivergedError: the loss became NaN or infinite.
            CheckpointError: the checkpoint is unusable or does not match this
                trainer (model, optimizer groups, steps per epoch, config).
            ValueError: ``resume=True`` without a ``checkpoint_path``, or a bad
                ``stop_after_steps``.
        """
        if stop_after_steps is not None and not (_is_int(stop_after_steps) and stop_after_steps >= 1):
            raise ValueError(f"stop_after_steps must be None or an int >= 1, got {stop_after_steps!r}")
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)
        self._reset()
        rng_after_skip = self._resume() if resume else None
        if self.teacher is not None:
            self.teacher.eval()
        was_training = self.student.training
        try:
            while self.epoch < self.config.epochs and not self._stop_reached(stop_after_steps):
                self._train_epoch(rng_after_skip, stop_after_steps)
                rng_after_skip = None
        finally:
            self.student.train(was_training)
        return [dict(record) for record in self.history]

    def evaluate(self, loader: DataLoader | None = None) -> dict[str, float]:
        """Evaluate the student on ``loader`` (default: the test loader).

        Runs in ``eval()`` mode under ``torch.no_grad()`` and restores the
        student's previous mode. Returns ``loss`` (mean cross-entropy),
        ``accuracy`` in percent (0..100) and, when the student has
        ``executed_macs_ratio()``, ``macs_ratio``: its mean over the batches
        weighted by batch size.

        Raises:
            ValueError: the loader yields no samples.
        """
        loader = self.test_loader if loader is None else loader
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.no_grad():
                return self._evaluate(loader)
        finally:
            self.student.train(was_training)

    # ------------------------------------------------------------ construction

    def _reset(self) -> None:
        """Fresh optimizer, schedule, scaler and progress counters."""
        self.optimizer = SGD(
            _param_groups(self.student, self.config.weight_decay),
            lr=self.config.lr,
            momentum=self.config.momentum,
            nesterov=self.config.nesterov,
            weight_decay=self.config.weight_decay,
        )
        total = self.config.epochs * self.steps_per_epoch
        warmup = self.config.warmup_epochs * self.steps_per_epoch
        self.scheduler = LambdaLR(self.optimizer, lambda step: cosine_lr_factor(step, total, warmup))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- training

    def _train_epoch(self, rng_after_skip: Mapping[str, Any] | None, stop_after_steps: int | None) -> None:
        """Run the rest of the current epoch, or up to ``stop_after_steps``."""
        batches, epoch_rng = self._epoch_batches(rng_after_skip)
        self.student.train()
        steps, loss_sum, correct, seen = 0, 0.0, 0, 0
        with self._progress_bar(batches) as bar:
            for inputs, targets in bar:
                loss, batch_correct = self._train_step(inputs, targets)
                self.step_in_epoch += 1
                self.global_step += 1
                steps, loss_sum = steps + 1, loss_sum + loss
                correct, seen = correct + batch_correct, seen + len(targets)
                bar.set_postfix(
                    loss=f"{loss_sum / steps:.4f}", acc=f"{100 * correct / seen:.2f}", refresh=False
                )
                if self._stop_reached(stop_after_steps):
                    self._save_checkpoint(epoch_rng)
                    return
                if self._mid_epoch_checkpoint_due():
                    self._save_checkpoint(epoch_rng)
        self._finish_epoch()

    def _epoch_batches(
        self, rng_after_skip: Mapping[str, Any] | None
    ) -> tuple[Iterator[Any], dict[str, Any]]:
        """Iterator over the current epoch's remaining batches, and the epoch-start RNG state.

        The consumed batches (``step_in_epoch``) are skipped; ``rng_after_skip``
        (when resuming) is restored after skipping, so that skipping leaves no
        trace on the random stream.
        """
        set_epoch = getattr(self.train_loader.sampler, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.epoch)
        epoch_rng = capture_rng_state()
        batches = iter(self.train_loader)
        for _ in range(self.step_in_epoch):
            next(batches)
        if rng_after_skip is not None:
            restore_rng_state(rng_after_skip)
        return batches, epoch_rng

    def _progress_bar(self, batches: Iterator[Any]) -> tqdm:
        return tqdm(
            batches,
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not self.config.progress,
            dynamic_ncols=True,
        )

    def _train_step(self, inputs: Tensor, targets: Tensor) -> tuple[float, int]:
        """One optimizer step; returns the loss and the number of correct predictions."""
        inputs = inputs.to(self.device, non_blocking=True)
        targets = targets.to(self.device, non_blocking=True)
        with self._autocast():
            teacher_logits = self._teacher_logits(inputs)
            logits = self.student(inputs)
            loss = kd_loss(logits, teacher_logits, targets, self.config.kd_alpha, self.config.kd_temperature)
            loss = loss + self._gating_loss()
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise TrainingDivergedError(
                f"loss is {loss_value} at global step {self.global_step} (0-based; "
                f"epoch {self.epoch + 1}/{self.config.epochs}, "
                f"batch {self.step_in_epoch + 1}/{self.steps_per_epoch}); "
                "stopped before the update, the last checkpoint is untouched",
                step=self.global_step,
            )
        self._update(loss)
        return loss_value, int((logits.argmax(dim=1) == targets).sum())

    def _teacher_logits(self, inputs: Tensor) -> Tensor | None:
        if self.teacher is None or self.config.kd_alpha == 1.0:
            return None
        with torch.no_grad():
            return self.teacher(inputs)

    def _gating_loss(self) -> Tensor | float:
        gating_loss = getattr(self.student, "gating_loss", None)
        return 0.0 if gating_loss is None else gating_loss()

    def _update(self, loss: Tensor) -> None:
        """Backward pass, optional clipping, optimizer, scaler and scheduler steps."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.config.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, enabled=self.amp)

    def _stop_reached(self, stop_after_steps: int | None) -> bool:
        return stop_after_steps is not None and self.global_step >= stop_after_steps

    def _mid_epoch_checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every
        return every > 0 and self.global_step % every == 0 and self.step_in_epoch < self.steps_per_epoch

    def _finish_epoch(self) -> None:
        """Count the epoch, evaluate when due, checkpoint."""
        self.epoch += 1
        self.step_in_epoch = 0
        if self.epoch % self.config.eval_every == 0 or self.epoch == self.config.epochs:
            record = {
                "epoch": self.epoch,
                "global_step": self.global_step,
                "lr": self.optimizer.param_groups[0]["lr"],
                **self.evaluate(),
            }
            self.history.append(record)
            logger.info("epoch %d: %s", self.epoch, record)
        self._save_checkpoint(capture_rng_state())

    # -------------------------------------------------------------- evaluation

    def _evaluate(self, loader: DataLoader) -> dict[str, float]:
        loss_sum, correct, seen, macs_sum = 0.0, 0, 0, 0.0
        macs_ratio = getattr(self.student, "executed_macs_ratio", None)
        for inputs, targets in loader:
            inputs = inputs.to(self.device, non_blocking=True)
            targets = targets.to(self.device, non_blocking=True)
            with self._autocast():
                logits = self.student(inputs)
            batch = len(targets)
            loss_sum += F.cross_entropy(logits.float(), targets, reduction="sum").item()
            correct += int((logits.argmax(dim=1) == targets).sum())
            seen += batch
            if macs_ratio is not None:
                macs_sum += float(macs_ratio()) * batch
        if seen == 0:
            raise ValueError("evaluation loader yielded no samples")
        metrics = {"loss": loss_sum / seen, "accuracy": 100.0 * correct / seen}
        if macs_ratio is not None:
            metrics["macs_ratio"] = macs_sum / seen
        return metrics

    # ------------------------------------------------------------- checkpoints

    def _save_checkpoint(self, epoch_rng: Mapping[str, Any]) -> None:
        """Atomically checkpoint the current position (no-op without a path)."""
        if self.checkpoint_path is None:
            return
        save_checkpoint(
            self.checkpoint_path,
            model_state=self.student.state_dict(),
            optimizer_state=self.optimizer.state_dict(),
            scheduler_state=self.scheduler.state_dict(),
            scaler_state=self.scaler.state_dict(),
            epoch=self.epoch,
            step=self.step_in_epoch,
            config=dataclasses.asdict(self.config),
            metrics=self.history[-1] if self.history else None,
            extra={
                "global_step": self.global_step,
                "history": self.history,
                "steps_per_epoch": self.steps_per_epoch,
                "epoch_rng_state": dict(epoch_rng),
            },
        )

    def _resume(self) -> dict[str, Any] | None:
        """Load the checkpoint; return the RNG state to restore after skipping batches.

        Returns ``None`` (train from scratch) when there is no checkpoint file.
        """
        path = self.checkpoint_path
        if path is None:
            raise ValueError("fit(resume=True) needs a Trainer checkpoint_path")
        if not path.exists():
            logger.warning("no checkpoint at %s; training from scratch", path)
            return None
        checkpoint = load_checkpoint(path)
        extra = self._check_resumable(checkpoint, path)
        load_state_dict_checked(self.student, checkpoint["model_state"], "student")
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        self.scheduler.load_state_dict(checkpoint["scheduler_state"])
        if checkpoint["scaler_state"]:
            self.scaler.load_state_dict(checkpoint["scaler_state"])
        self.epoch, self.step_in_epoch = checkpoint["epoch"], checkpoint["step"]
        self.global_step = extra["global_step"]
        self.history = [dict(record) for record in extra["history"]]
        restore_rng_state(extra["epoch_rng_state"])
        logger.info("resuming from %s at epoch %d, batch %d", path, self.epoch, self.step_in_epoch)
        return checkpoint["rng_state"]

    def _check_resumable(self, checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
        """Validate a checkpoint against this trainer before anything is loaded; return its ``extra``."""
        extra = checkpoint.get("extra") or {}
        missing = [key for key in _TRAINER_KEYS if key not in extra]
        if missing or checkpoint.get("rng_state") is None or checkpoint.get("optimizer_state") is None:
            what = ", ".join(missing) or "RNG or optimizer state"
            raise CheckpointError(f"{path} is not a Trainer checkpoint (missing {what})")
        if extra["steps_per_epoch"] != self.steps_per_epoch:
            raise CheckpointError(
                f"{path} was written with {extra['steps_per_epoch']} steps per epoch; "
                f"this train loader has {self.steps_per_epoch}"
            )
        current = dataclasses.asdict(self.config)
        changed = [
            f"{key}: {checkpoint['config'].get(key)!r} -> {current[key]!r}"
            for key in _RESUME_MUST_MATCH
            if checkpoint["config"].get(key) != current[key]
        ]
        if changed:
            raise CheckpointError(f"{path} was written with a different config ({'; '.join(changed)})")
        _check_optimizer_groups(checkpoint["optimizer_state"], self.optimizer, path)
        return dict(extra)


def _resolve_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _resolve_amp(amp: bool | None, device: torch.device) -> bool:
    if amp is None:
        return device.type == "cuda"
    if amp and device.type != "cuda":
        raise ValueError(f"TrainConfig.amp=True needs a CUDA device, got {device}")
    return amp


def _freeze(teacher: nn.Module) -> nn.Module:
    """Put ``teacher`` in eval mode with gradients off; returns it."""
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def _param_groups(student: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into a decayed group and a ``weight_decay=0`` group."""
    no_decay_method = getattr(student, "no_weight_decay_parameters", None)
    no_decay_ids = set() if no_decay_method is None else {id(p) for p in no_decay_method()}
    trainable = [p for p in student.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in no_decay_ids], "weight_decay": weight_decay},
        {"params": [p for p in trainable if id(p) in no_decay_ids], "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def _check_optimizer_groups(saved: Mapping[str, Any], optimizer: SGD, path: Path) -> None:
    """Raise :class:`CheckpointError` unless the saved optimizer's groups have our sizes."""
    saved_sizes = [len(group["params"]) for group in saved["param_groups"]]
    sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"{path}: optimizer parameter groups have sizes {saved_sizes}, this student's have {sizes}"
        )
