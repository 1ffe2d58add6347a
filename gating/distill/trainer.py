"""``Trainer``: SGD training of a (gated) student, optionally distilled from a frozen teacher."""

from __future__ import annotations

import itertools
import logging
import math
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..io import capture_rng_state, restore_rng_state
from ..prune import kernel_l1_penalty, slimming_penalty
from .batchnorm import recalibrate_batchnorm
from .config import TrainConfig, is_int, resolve_amp, resolve_device
from .distributed import DistributedRun
from .evaluation import evaluate_classifier
from .features import FeatureTaps
from .losses import kd_loss
from .optimization import freeze, sgd_with_schedule
from .resume import load_trainer_checkpoint, save_metrics_log, save_trainer_checkpoint
from .schedules import budget_target
from .stopping import TrainingDivergedError, TrainingInterrupted, sigterm_flag

__all__ = ["Trainer", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class Trainer:
    """Train ``student`` on ``train_loader``, distilling from ``teacher`` when given.

    The teacher is frozen at construction (``eval()``, ``requires_grad=False``)
    and only run under ``torch.no_grad()``; it is skipped when
    ``config.kd_alpha == 1`` and no feature distillation is asked for (the
    loss is then plain cross-entropy). Student and teacher are moved to the
    configured device; with ``config.channels_last`` the student is converted
    to that memory format (in place) and so is every training batch.

    Attributes set at construction and rebuilt by :meth:`fit`: ``optimizer``
    (SGD), ``scheduler`` (per-step :func:`cosine_lr_factor` via ``LambdaLR``
    over ``epochs * len(train_loader)`` steps), ``scaler`` (``GradScaler``,
    disabled without AMP). Progress: ``epoch`` (epochs completed / epoch in
    progress), ``step_in_epoch`` (its batches consumed), ``global_step``
    (optimizer steps completed), ``history`` (evaluation records).

    Checkpoints (when ``checkpoint_path`` is given) are written atomically at
    every epoch end, every ``config.checkpoint_every`` global steps, and when
    ``fit`` stops early through ``stop_after_steps``. With ``metrics_path``,
    the history is written there as JSON lines (one record per evaluated
    epoch, rewritten atomically after each, so it always matches the
    checkpoint).

    Data parallelism: with a ``run`` of several processes
    (:class:`DistributedRun`, e.g. under ``torchrun``) each process gets a
    loader over its share of every global batch
    (``gating.data.GlobalBatchSampler``) and a test loader over its share of
    the test set (``gating.data.ShardSampler``); the student trains wrapped in
    ``DistributedDataParallel``, evaluation metrics and the epoch's training
    loss and accuracy are summed over the processes, the processes stop
    together (SIGTERM or a non-finite loss in any of them), the budget fit after
    training runs on the global batches, and only the
    main process writes checkpoints and shows progress bars
    (``docs/design.md#data-parallel-training``).

    Raises (at construction):
        ValueError: an empty train loader; feature distillation without a
            teacher or with a layer name missing from teacher or student; a
            budget ramp for a student without a MAC budget goal; a
            data-parallel ``run`` on another device than ``config.device``.
    """

    def __init__(
        self,
        student: nn.Module,
        train_loader: DataLoader,
        test_loader: DataLoader,
        config: TrainConfig,
        teacher: nn.Module | None = None,
        checkpoint_path: str | Path | None = None,
        run: DistributedRun | None = None,
        metrics_path: str | Path | None = None,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        self.run = DistributedRun(device=self.device) if run is None else run
        if self.run.distributed and self.run.device != self.device:
            raise ValueError(f"TrainConfig.device is {self.device}, this process of the data-parallel run "
                             f"trains on {self.run.device}")
        self.amp = resolve_amp(config.amp, self.device)
        self.memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.student = student.to(self.device)
        if config.channels_last:
            self.student.to(memory_format=torch.channels_last)
        self.teacher = None if teacher is None else freeze(teacher.to(self.device))
        self.train_loader = train_loader
        self.test_loader = test_loader
        self.checkpoint_path = None if checkpoint_path is None else Path(checkpoint_path)
        self.metrics_path = None if metrics_path is None else Path(metrics_path)
        self.steps_per_epoch = len(train_loader)
        if self.steps_per_epoch == 0:
            raise ValueError("train_loader yields no batches")
        self.budget_ramp_steps = round(config.budget_ramp_epochs * self.steps_per_epoch)
        if self.budget_ramp_steps > 0 and getattr(student, "budget_goal", None) is None:
            raise ValueError(
                "TrainConfig.budget_ramp_epochs > 0 needs a student with a MAC budget goal "
                "(a GatedModel whose GateConfig.target_flops_ratio is set)"
            )
        if config.budget_fit_batches > 0 and (
            getattr(student, "budget_goal", None) is None or not hasattr(student, "fit_budget")
        ):
            raise ValueError(
                "TrainConfig.budget_fit_batches > 0 needs a student with fit_budget() and a MAC budget goal "
                "(a GatedModel whose GateConfig.target_flops_ratio is set)"
            )
        self._features = FeatureTaps(student, teacher, config) if config.feature_kd_weight > 0 else None
        self._reset()

    # ------------------------------------------------------------------ public

    def fit(self, resume: bool = False, stop_after_steps: int | None = None) -> list[dict[str, float]]:
        """Train for ``config.epochs`` epochs and return the evaluation history.

        Seeds ``torch`` and ``random`` with ``config.seed`` and starts from the
        student's current weights with a fresh optimizer and schedule. Each
        history record holds ``epoch`` (epochs completed), ``global_step``,
        ``lr`` and the metrics of :meth:`evaluate`. After the last epoch, and
        before its evaluation and checkpoint, the BatchNorm statistics are
        re-estimated (``config.bn_recalibration_batches > 0``), the budget is
        fitted (``config.budget_fit_batches > 0``; the last record then holds
        ``budget_fit_offset``) and BatchNorm re-estimated once more.

        Args:
            resume: continue from ``checkpoint_path`` exactly where it stopped
                (see the package docstring). Without a checkpoint file there,
                training starts from scratch and a warning is logged.
            stop_after_steps: stop once ``global_step`` reaches this value
                (counted over the whole run, >= 1), writing a checkpoint first;
                ``fit(resume=True)`` then carries on.

        SIGTERM during ``fit`` (main thread) lets the step in progress finish,
        writes a checkpoint and raises :class:`TrainingInterrupted`.

        Raises:
            TrainingDivergedError: the loss became NaN or infinite.
            TrainingInterrupted: the process received SIGTERM.
            CheckpointError: the checkpoint is unusable or does not match this
                trainer (model, optimizer groups, steps per epoch, config).
            ValueError: ``resume=True`` without a ``checkpoint_path``, or a bad
                ``stop_after_steps``.
        """
        if stop_after_steps is not None and not (is_int(stop_after_steps) and stop_after_steps >= 1):
            raise ValueError(f"stop_after_steps must be None or an int >= 1, got {stop_after_steps!r}")
        torch.manual_seed(self.config.seed)
        random.seed(self.config.seed)
        self._reset()
        rng_after_skip = load_trainer_checkpoint(self) if resume else None
        if self.teacher is not None:
            self.teacher.eval()
        was_training = self.student.training
        try:
            with sigterm_flag() as self._sigterm, self.run.training(self.student) as self._model:
                while self.epoch < self.config.epochs and not self._stop_reached(stop_after_steps):
                    self._train_epoch(rng_after_skip, stop_after_steps)
                    rng_after_skip = None
        finally:
            self._sigterm, self._model = [False], self.student
            self.student.train(was_training)
        return [dict(record) for record in self.history]

    def evaluate(self, loader: DataLoader | None = None) -> dict[str, float]:
        """Evaluate the student on ``loader`` (default: the test loader); see :func:`evaluate_classifier`.

        Returns ``loss`` (mean cross-entropy), ``accuracy`` in percent
        (0..100) and, when the student has ``executed_macs_ratio()``,
        ``macs_ratio`` (batch-size weighted mean). The student's mode is
        restored. ``ValueError`` when the loader yields no samples.
        """
        loader = self.test_loader if loader is None else loader
        return evaluate_classifier(self.student, loader, self.device, self.amp, reduce=self.run.sum)

    def recalibrate_batchnorm(self) -> int:
        """Re-estimate the student's BatchNorm statistics on ``config.bn_recalibration_batches`` batches.

        The batches are the first ones of the train loader in the order of
        epoch index ``config.epochs`` (one past the last trained epoch), so the
        result is a function of the seed. BatchNorms the student lists in
        ``gate_batchnorms()`` keep their statistics (see
        :func:`~gating.distill.recalibrate_batchnorm`). Returns the number of
        images used.
        """
        keep = getattr(self.student, "gate_batchnorms", lambda: ())()
        with self._autocast():
            return recalibrate_batchnorm(
                self.student, self._final_batches(self.config.bn_recalibration_batches, gather=False), keep=keep
            )

    def fit_budget(self) -> float:
        """Meet the student's budget goal on ``config.budget_fit_batches`` training batches (see ``fit_budget``).

        The batches are those :meth:`recalibrate_batchnorm` uses. Returns the
        threshold offset applied.
        """
        inputs = list(self._final_batches(self.config.budget_fit_batches, gather=True))
        with self._autocast():
            return self.student.fit_budget(inputs)

    def _final_batches(self, count: int, gather: bool) -> Iterator[Tensor]:
        """Inputs of the first ``count`` train batches in the order of epoch ``config.epochs``, on the device.

        In a data-parallel run each process reads its share; ``gather`` makes
        every process get the whole global batch (for the budget fit; the
        BatchNorm re-estimation sees the global batch through the global
        BatchNorm statistics instead).
        """
        self._select_epoch_order(self.config.epochs)
        batches = (batch[0].to(self.device) for batch in itertools.islice(self.train_loader, count))
        return (self.run.gather(batch) for batch in batches) if gather else batches

    # ------------------------------------------------------------ construction

    def _reset(self) -> None:
        """Fresh optimizer, schedule, scaler and progress counters."""
        self._sigterm, self._model, self._stop_requested = [False], self.student, False
        self.optimizer, self.scheduler = sgd_with_schedule(self.student, self.config, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.epoch = 0
        self.step_in_epoch = 0
        self.global_step = 0
        self.epoch_sums = [0.0, 0.0, 0.0]  # this epoch's summed training loss, correct predictions, images
        self.history: list[dict[str, float]] = []

    # ---------------------------------------------------------------- training

    def _train_epoch(self, rng_after_skip: Mapping[str, Any] | None, stop_after_steps: int | None) -> None:
        """Run the rest of the current epoch, or up to ``stop_after_steps``."""
        batches, epoch_rng = self._epoch_batches(rng_after_skip)
        self.student.train()
        with self._progress_bar(batches) as bar:
            for inputs, targets, *teacher_logits in bar:
                loss, batch_correct = self._train_step(inputs, targets, *teacher_logits)
                self.step_in_epoch += 1
                self.global_step += 1
                sums = self.epoch_sums
                sums[0], sums[1], sums[2] = sums[0] + loss * len(targets), sums[1] + batch_correct, sums[2] + len(targets)
                bar.set_postfix(
                    loss=f"{sums[0] / sums[2]:.4f}", acc=f"{100 * sums[1] / sums[2]:.2f}", refresh=False
                )
                if self._stop_reached(stop_after_steps):
                    save_trainer_checkpoint(self, epoch_rng)
                    return
                if self._stop_requested:
                    save_trainer_checkpoint(self, epoch_rng)
                    raise TrainingInterrupted(self.global_step, self.checkpoint_path)
                if self._mid_epoch_checkpoint_due():
                    save_trainer_checkpoint(self, epoch_rng)
        self._finish_epoch()

    def _epoch_batches(
        self, rng_after_skip: Mapping[str, Any] | None
    ) -> tuple[Iterator[Any], dict[str, Any]]:
        """Iterator over the current epoch's remaining batches, and the epoch-start RNG state.

        The consumed batches (``step_in_epoch``) are skipped; ``rng_after_skip``
        (when resuming) is restored after skipping, so that skipping leaves no
        trace on the random stream.
        """
        self._select_epoch_order(self.epoch)
        epoch_rng = capture_rng_state()
        batches = iter(self.train_loader)
        for _ in range(self.step_in_epoch):
            next(batches)
        if rng_after_skip is not None:
            restore_rng_state(rng_after_skip)
        return batches, epoch_rng

    def _select_epoch_order(self, epoch: int) -> None:
        """Make the train loader yield epoch ``epoch``'s order, when its sampler or batch sampler has ``set_epoch``."""
        for sampler in (self.train_loader.sampler, self.train_loader.batch_sampler):
            set_epoch = getattr(sampler, "set_epoch", None)
            if set_epoch is not None:
                set_epoch(epoch)

    def _progress_bar(self, batches: Iterator[Any]) -> tqdm:
        return tqdm(
            batches,
            total=self.steps_per_epoch,
            initial=self.step_in_epoch,
            desc=f"epoch {self.epoch + 1}/{self.config.epochs}",
            disable=not (self.config.progress and self.run.is_main),
            dynamic_ncols=True,
        )

    def _train_step(self, inputs: Tensor, targets: Tensor, cached_logits: Tensor | None = None) -> tuple[float, int]:
        """One optimizer step; returns the loss and the number of correct predictions.

        ``cached_logits``: the teacher's logits of this batch, when the loader
        yields them (``with_teacher_logits``).
        """
        inputs = inputs.to(self.device, non_blocking=True, memory_format=self.memory_format)
        targets = targets.to(self.device, non_blocking=True)
        self._schedule_budget()
        with self._autocast():
            teacher_logits = self._teacher_logits(inputs, cached_logits)
            logits = self._model(inputs)
            loss = kd_loss(logits, teacher_logits, targets, self.config.kd_alpha, self.config.kd_temperature)
            if self._features is not None:
                loss = loss + self.config.feature_kd_weight * self._features.loss()
            loss = loss + self._gating_loss()
            if self.config.slimming_weight > 0:
                loss = loss + self.config.slimming_weight * slimming_penalty(self.student)
            if self.config.kernel_l1_weight > 0:
                loss = loss + self.config.kernel_l1_weight * kernel_l1_penalty(self.student)
        loss_value = loss.item()
        # One agreement per step: stop on a non-finite loss now, or after this step on SIGTERM in any process.
        diverged, self._stop_requested = self.run.any(not math.isfinite(loss_value), self._sigterm[0])
        if diverged:
            what = f"loss is {loss_value}" if not math.isfinite(loss_value) else "loss of another process is not finite"
            raise TrainingDivergedError(
                f"{what} at global step {self.global_step} (0-based; "
                f"epoch {self.epoch + 1}/{self.config.epochs}, "
                f"batch {self.step_in_epoch + 1}/{self.steps_per_epoch}); "
                "stopped before the update, the last checkpoint is untouched",
                step=self.global_step,
            )
        self._update(loss)
        return loss_value, int((logits.argmax(dim=1) == targets).sum())

    def _schedule_budget(self) -> None:
        """Set the student's MAC budget target for this step when a ramp is configured."""
        if self.budget_ramp_steps > 0:
            self.student.budget_target = budget_target(
                self.global_step, self.budget_ramp_steps, self.config.budget_ramp_start, self.student.budget_goal
            )

    def _teacher_logits(self, inputs: Tensor, cached: Tensor | None) -> Tensor | None:
        """The teacher's logits of ``inputs``: ``cached`` when given, else a teacher forward when one is needed.

        Cached logits are used even without a teacher module. Feature
        distillation needs the teacher's features, so the teacher then runs
        (filling the feature taps) and its own logits are used.
        """
        if self.config.kd_alpha == 1.0 and self._features is None:
            return None
        if cached is not None and self._features is None:
            return cached.to(self.device, non_blocking=True)
        if self.teacher is None:
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
        """Count the epoch, finalize after the last one, evaluate when due, record, checkpoint."""
        self.epoch += 1
        self.step_in_epoch = 0
        loss_sum, correct, seen = self.run.sum(self.epoch_sums)
        self.epoch_sums = [0.0, 0.0, 0.0]
        last = self.epoch == self.config.epochs
        finishing = self._finalize_student() if last else {}
        every = self.config.eval_every
        evaluate = every is not None and (self.epoch % every == 0 or last)
        if evaluate or last:
            record = {
                "epoch": self.epoch,
                "global_step": self.global_step,
                "lr": self.optimizer.param_groups[0]["lr"],
                "train_loss": loss_sum / seen,
                "train_accuracy": 100.0 * correct / seen,
                **finishing,
                **(self.evaluate() if evaluate else {}),
            }
            self.history.append(record)
            logger.info("epoch %d: %s", self.epoch, record)
            if self.metrics_path is not None and self.run.is_main:
                save_metrics_log(self.metrics_path, self.history)
        save_trainer_checkpoint(self, capture_rng_state())

    def _finalize_student(self) -> dict[str, float]:
        """After the last epoch: re-estimate BatchNorm, meet the budget, re-estimate again (each when configured).

        Returns what the last history record adds: ``budget_fit_offset`` (the
        threshold offset applied) when the budget was fitted.
        """
        if self.config.bn_recalibration_batches > 0:
            self.recalibrate_batchnorm()
        if self.config.budget_fit_batches == 0:
            return {}
        offset = self.fit_budget()
        if self.config.bn_recalibration_batches > 0:
            self.recalibrate_batchnorm()
        return {"budget_fit_offset": offset}

