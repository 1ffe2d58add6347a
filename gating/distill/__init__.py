"""Knowledge-distillation training of (gated) students.

:class:`Trainer` trains a student network, optionally distilling from a frozen
teacher with the Hinton loss :func:`kd_loss` and, on named intermediate
layers, :func:`feature_kd_loss`: SGD with momentum (Nesterov by default) and
weight decay, a cosine learning-rate schedule stepped per batch (with optional
linear warmup, :func:`cosine_lr_factor`), an optional ramp of the MAC budget
target (:func:`budget_target`), BatchNorm re-estimation and an exact budget
fit after the last epoch (:func:`recalibrate_batchnorm`,
``GatedModel.fit_budget``), mixed precision on CUDA, atomic checkpoints
(:mod:`gating.io`) and exact resumption. The recipe the demo uses, and what
each of its parts measured, is in ``docs/design.md#training-recipe``.

Modules: :mod:`.config` (``TrainConfig``), :mod:`.losses`, :mod:`.schedules`,
:mod:`.batchnorm`, :mod:`.evaluation` (:func:`evaluate_classifier`),
:mod:`.features`, :mod:`.teacher_logits`, :mod:`.teacher` (the dense teacher's recipe), :mod:`.trainer` (``Trainer``), :mod:`.resume`
(checkpoints), :mod:`.stopping` (``TrainingDivergedError``, ``TrainingInterrupted``),
:mod:`.distributed` (``DistributedRun``: data-parallel training under
``torchrun``) and :mod:`.sync_batchnorm` (BatchNorm over the global batch on
any backend).

Student protocol (duck-typed, every member optional; ``GatedModel``
implements all of them, a plain ``nn.Module`` none):

* ``gating_loss() -> Tensor``: scalar regulariser computed from the student's
  last forward; added to the loss of every training step.
* ``no_weight_decay_parameters() -> Iterable[Parameter]``: parameters (e.g. gate
  thresholds) put in an optimizer group with ``weight_decay=0``.
* ``executed_macs_ratio() -> float``: executed / dense MACs of the last forward;
  :meth:`Trainer.evaluate` reports its batch-size-weighted mean as
  ``macs_ratio``.
* ``budget_goal`` (read) and ``budget_target`` (written): the MAC ratio the
  budget loss aims at in the end, and the one it aims at now; the trainer
  writes ``budget_target`` every step while ``TrainConfig.budget_ramp_epochs``
  lasts.
* ``gate_batchnorms() -> Iterable[Module]``: BatchNorms that BatchNorm
  re-estimation must leave as they are (the gates' decision statistics).
* ``fit_budget(batches) -> float``: shift the gates so the student meets its
  ``budget_goal`` on ``batches`` (``TrainConfig.budget_fit_batches``).

Loaders yield ``(inputs, targets)`` pairs and must have a length. A train
loader may yield ``(inputs, targets, teacher_logits)`` instead (a dataset from
:func:`with_teacher_logits`, :mod:`.teacher_logits`): the teacher then does not
run for its logits (offline distillation, for data without random
augmentation). When the
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

Stopping: SIGTERM during ``fit`` (in the main thread) lets the step in
progress finish, writes a checkpoint and raises :class:`TrainingInterrupted`;
a process killed outright (SIGKILL) resumes from its last checkpoint
(``TrainConfig.checkpoint_every`` sets how many steps that may be back).
Checkpoints are written to a temporary file and renamed, so none is ever
half-written. Both resume bit-for-bit on CPU (``tests/test_crash_safety.py``).
"""

from .batchnorm import recalibrate_batchnorm
from .config import TrainConfig
from .distributed import DistributedRun
from .evaluation import evaluate_classifier
from .losses import feature_kd_loss, kd_loss
from .schedules import budget_target, cosine_lr_factor
from .teacher import teacher_recipe, train_teacher
from .teacher_logits import with_teacher_logits
from .stopping import TrainingDivergedError, TrainingInterrupted
from .trainer import Trainer

__all__ = [
    "DistributedRun",
    "TrainConfig",
    "Trainer",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "budget_target",
    "cosine_lr_factor",
    "evaluate_classifier",
    "feature_kd_loss",
    "kd_loss",
    "recalibrate_batchnorm",
    "teacher_recipe",
    "train_teacher",
    "with_teacher_logits",
]
