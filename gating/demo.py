"""The demo workflow: teacher, gated student, measurement, on the built-in data.

:func:`run_demo` trains a dense ResNet-20 teacher on the built-in synthetic
data, wraps a copy with ``GatedModel``, calibrates its gates to the start of
the MAC budget ramp on a batch of training images (``GatedModel.calibrate``),
distils the gated student from the teacher with the training recipe of
``docs/design.md#training-recipe`` (logit distillation from teacher logits
computed once per training image, BatchNorm re-estimation and a budget fit
at the end), then
measures accuracy and MACs / bytes dense vs executed over the whole test set
and writes ``OUT/results.json``. Checkpoints ``OUT/teacher.ckpt`` and
``OUT/student.ckpt`` are written as it goes; ``resume`` continues from them.
Both models are saved at the end with :func:`gating.save` (``OUT/teacher_model``,
``OUT/student_model``), so their parameters and bytes on disk are reported.

With ``prune_ratio > 0`` the teacher trains with the network-slimming penalty
(for the ``"slimming"`` criterion), a copy of it is pruned statically
(:func:`gating.prune.prune`) and that smaller network is gated and distilled
from the unpruned teacher: the student then stores fewer parameters and
executes fewer MACs than the teacher (``docs/design.md#static-pruning``).

:mod:`gating.demo_seeds` runs the same pipeline for several seeds.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from kernels import GateSpec

from . import data, io
from .accounting import Report
from .recorder import count_model
from .config import GateConfig, require_int
from .distill import Trainer, TrainConfig, teacher_recipe, train_teacher, with_teacher_logits
from .measurement import calibration_batch, measure, saved_sizes
from .model import GatedModel
from .models import BasicBlock, resnet20
from .prune import PruneConfig, hold_zero_kernels, prune

PRUNE_CRITERIA = ("slimming", "l1", "similarity", "multigranularity")
"""Criteria the demo can prune by (``"gate"`` needs a gated model, and the demo prunes before gating)."""

__all__ = ["DemoConfig", "PRUNE_CRITERIA", "run_demo", "summary"]


@dataclass
class DemoConfig:
    """Everything the demo does, with its defaults; invalid values raise ``ValueError`` naming the field.

    Data and models:
        out: folder for ``results.json`` and the checkpoints.
        teacher_epochs, student_epochs: epochs of dense teacher training and of
            gated distillation (>= 1).
        num_train, num_test: built-in images generated for training / testing.
        image_size: image side in pixels (>= 8).
        batch_size: batch size of the teacher's training and of evaluation.
        width: ResNet-20 base width.
        seed: seed of data, initialisation and training order.
        device: torch device string; ``None`` = CUDA when available.
        resume: continue from the checkpoints in ``out``.
        progress: show tqdm progress bars.

    Gates and budget:
        target_flops: executed/dense MAC ratio the student ends at (0, 1].
        gate_group: output channels sharing one gate decision.
        gate_block: side of the pixel block sharing one gate decision
            (``GateConfig.gate_block``; 1 = per pixel).
        coherence_weight: weight of the gate-map coherence loss
            (``GateConfig.coherence_weight``; 0 = off).
        budget_weight: weight of the budget loss.
        calibration_images: training images the gates are calibrated on.

    Student recipe (``docs/design.md#training-recipe``; the defaults are the
    best of the variants measured there):
        student_batch_size: batch size of the student's distillation (and so
            the unit of ``bn_recalibration_batches`` and
            ``budget_fit_batches``). Smaller batches give more optimizer
            steps per epoch; what they measured is in
            ``docs/design.md#training-recipe``.
        student_lr: base learning rate of the student (cosine schedule).
        kd_alpha, kd_temperature: logit distillation (weight of the hard
            cross-entropy; temperature).
        feature_kd_weight: weight of block-output feature distillation (every
            ``BasicBlock``'s output); 0 = off (the default: it measured no
            gain, and without it the teacher's logits are computed once per
            training image instead of once per step).
        budget_ramp_epochs: epochs over which the MAC target ramps from
            ``budget_ramp_start`` to ``target_flops``; 0 = calibrate straight
            to the target.
        budget_ramp_start: MAC ratio the ramp starts at (the gates are
            calibrated to it).
        bn_recalibration_batches: student training batches the student's
            BatchNorm statistics are re-estimated on after training; 0 = off.
        budget_fit_batches: student training batches on which, after training, one
            common threshold offset is fitted so the student meets
            ``target_flops`` exactly; 0 = off.

    Static pruning (off by default):
        prune_ratio: fraction of the teacher's prunable channels removed
            before gating, in [0, 1); 0 = no pruning.
        prune_criterion: ``"slimming"``, ``"l1"``, ``"similarity"`` or
            ``"multigranularity"`` (``gating.prune.criteria``).
        slimming_weight: network-slimming penalty on the teacher's BatchNorm
            scales while it trains (``TrainConfig.slimming_weight``); used
            only when pruning by ``"slimming"``.
        kernel_l1_weight: adaptive L1 on the teacher's 2-D kernels while it
            trains (``TrainConfig.kernel_l1_weight``); used only when pruning
            by ``"multigranularity"``, whose zeroed kernels then stay zero
            while the student trains (``gating.prune.hold_zero_kernels``).
    """

    out: Path = Path("runs/demo")
    teacher_epochs: int = 5
    student_epochs: int = 5
    num_train: int = 6000
    num_test: int = 2000
    image_size: int = 24
    batch_size: int = 128
    width: int = 16
    seed: int = 0
    device: str | None = None
    resume: bool = False
    progress: bool = True
    target_flops: float = 0.39
    gate_group: int = GateSpec.gate_group
    gate_block: int = GateSpec.gate_block
    coherence_weight: float = 0.0
    budget_weight: float = 50.0
    calibration_images: int = 512
    student_batch_size: int = 64
    student_lr: float = 0.05
    kd_alpha: float = 0.5
    kd_temperature: float = 4.0
    feature_kd_weight: float = 0.0
    budget_ramp_epochs: float = 0.0
    budget_ramp_start: float = 1.0
    bn_recalibration_batches: int = 20
    budget_fit_batches: int = 4
    prune_ratio: float = 0.0
    prune_criterion: str = "slimming"
    slimming_weight: float = 1e-4
    kernel_l1_weight: float = 1.0

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        for name in ("teacher_epochs", "student_epochs", "num_train", "num_test", "batch_size", "width",
                     "calibration_images", "student_batch_size"):
            require_int("DemoConfig", name, getattr(self, name), 1)
        require_int("DemoConfig", "image_size", self.image_size, 8)
        require_int("DemoConfig", "seed", self.seed, 0)
        if not 0.0 < self.target_flops <= 1.0:
            raise ValueError(f"DemoConfig.target_flops must be in (0, 1], got {self.target_flops!r}")
        if self.budget_ramp_start < self.target_flops:
            raise ValueError(
                f"DemoConfig.budget_ramp_start ({self.budget_ramp_start!r}) must be >= target_flops "
                f"({self.target_flops!r})"
            )
        if isinstance(self.prune_ratio, bool) or not isinstance(self.prune_ratio, (int, float)) or not (
            0 <= self.prune_ratio < 1
        ):
            raise ValueError(f"DemoConfig.prune_ratio must be in [0, 1), got {self.prune_ratio!r}")
        if self.prune_criterion not in PRUNE_CRITERIA:
            raise ValueError(f"DemoConfig.prune_criterion must be one of {PRUNE_CRITERIA}, got {self.prune_criterion!r}")
        # The library configs check everything else, before any training.
        self.gate_config()
        self.student_config()
        self.teacher_config()
        if self.prune_ratio:
            self.prune_config()

    def gate_config(self) -> GateConfig:
        """The student's gate configuration."""
        return GateConfig(target_flops_ratio=self.target_flops, gate_group=self.gate_group,
                          gate_block=self.gate_block, budget_weight=self.budget_weight,
                          coherence_weight=self.coherence_weight)

    def teacher_config(self) -> TrainConfig:
        """The dense teacher's training run (not evaluated: :func:`run_demo` measures it)."""
        slimming = self.slimming_weight if self.prune_ratio and self.prune_criterion == "slimming" else 0.0
        kernel_l1 = self.kernel_l1_weight if self.prune_ratio and self.prune_criterion == "multigranularity" else 0.0
        return teacher_recipe(self.teacher_epochs, slimming_weight=slimming, kernel_l1_weight=kernel_l1,
                              **self._common())

    def prune_config(self) -> PruneConfig:
        """The static pruning of the teacher's copy (``prune_ratio`` of the prunable channels)."""
        return PruneConfig(criterion=self.prune_criterion, ratio=self.prune_ratio)

    def student_config(self) -> TrainConfig:
        """The gated student's distillation run (not evaluated: :func:`run_demo` measures it)."""
        return TrainConfig(
            epochs=self.student_epochs,
            lr=self.student_lr,
            kd_alpha=self.kd_alpha,
            kd_temperature=self.kd_temperature,
            eval_every=None,
            feature_kd_weight=self.feature_kd_weight,
            feature_kd_layers=_block_names(self.width) if self.feature_kd_weight > 0 else (),
            budget_ramp_epochs=self.budget_ramp_epochs,
            budget_ramp_start=self.budget_ramp_start,
            bn_recalibration_batches=self.bn_recalibration_batches,
            budget_fit_batches=self.budget_fit_batches,
            **self._common(),
        )

    def _common(self) -> dict[str, Any]:
        return {"seed": self.seed, "device": self.device, "progress": self.progress}

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form for ``results.json`` (the folder as a string)."""
        out = dataclasses.asdict(self)
        out["out"] = str(self.out)
        return out


def _block_names(width: int) -> tuple[str, ...]:
    """Names of the residual blocks of the demo's ResNet-20 (their outputs are distilled)."""
    return tuple(name for name, module in resnet20(width=width).named_modules() if isinstance(module, BasicBlock))


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run the demo described in the module docstring; returns what it writes to ``results.json``."""
    started = time.perf_counter()
    config.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_loader, test_loader, num_classes = data.build_loaders(
        "synthetic",
        batch_size=config.batch_size,
        num_train=config.num_train,
        num_test=config.num_test,
        image_size=config.image_size,
        seed=config.seed,
    )
    print(f"[1/3] teacher: ResNet-20 (width {config.width}) on {config.num_train} built-in images", flush=True)
    teacher = io.build("resnet20", num_classes=num_classes, width=config.width)
    device = train_teacher(teacher, train_loader, test_loader, config.teacher_config(),
                           config.out / "teacher.ckpt", resume=config.resume)

    start = config.budget_ramp_start if config.budget_ramp_epochs > 0 else config.target_flops
    ramp = f"{start} -> " if start != config.target_flops else ""
    print(f"[2/3] student: gated copy distilled from the teacher, MAC ratio {ramp}{config.target_flops}",
          flush=True)
    gate_config = config.gate_config()
    network, pruning = teacher, None
    if config.prune_ratio:
        network = copy.deepcopy(teacher)
        example = test_loader.dataset[0][0][None].to(device)
        pruning = prune(network, example, config.prune_config())
        print(f"      pruned {config.prune_ratio:.0%} of the prunable channels by {config.prune_criterion!r}:\n"
              + "\n".join("        " + line for line in pruning.table().splitlines()), flush=True)
    student = GatedModel(network, gate_config).to(device)
    if pruning is not None and pruning.zeroed_kernels:
        hold_zero_kernels(student)
    density = student.calibrate(calibration_batch(train_loader, config.calibration_images, device), start)
    print(f"      calibrated every gate to density {density:.3f} on {config.calibration_images} training images",
          flush=True)
    student_config = config.student_config()
    # The built-in data has no random augmentation, so the teacher's logits are
    # computed once per training image instead of once per step (offline distillation).
    distilled = with_teacher_logits(train_loader.dataset, teacher, device)
    student_loader = DataLoader(distilled, batch_size=config.student_batch_size,
                                sampler=data.EpochSampler(len(distilled), config.seed))
    Trainer(student, student_loader, test_loader, student_config, teacher=teacher,
            checkpoint_path=config.out / "student.ckpt").fit(resume=config.resume)

    print("[3/3] measuring on the test set", flush=True)
    teacher_accuracy, _ = measure(teacher, test_loader, device)
    student_accuracy, report = measure(student, test_loader, device)
    example = test_loader.dataset[0][0][None].to(device)
    teacher_macs = count_model(teacher.eval(), example).macs_dense * len(test_loader.dataset)
    results = {
        "seed": config.seed,
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "accuracy_gap": teacher_accuracy - student_accuracy,
        "teacher_macs": teacher_macs,
        "macs_dense": report.macs_dense,
        "macs_executed": report.macs_executed,
        "macs_reduction": teacher_macs / report.macs_executed,
        **saved_sizes({"teacher": teacher, "student": student}, config.out),
        "pruning": None if pruning is None else {
            "criterion": config.prune_criterion,
            "ratio": config.prune_ratio,
            "before": dataclasses.asdict(pruning.before),
            "after": dataclasses.asdict(pruning.after),
            "kept_channels": {pruning.groups[i].producers[0]: list(kept) for i, kept in pruning.kept.items()},
            "zeroed_kernels": {name: list(counts) for name, counts in pruning.zeroed_kernels.items()},
        },
        "bytes_dense": report.bytes_dense,
        "bytes_executed": report.bytes_executed,
        "bytes_reduction": report.bytes_reduction,
        "layers": {layer.name: layer.density for layer in report.layers if layer.density is not None},
        "report": report.to_dict()["layers"],
        "test_images": config.num_test,
        "demo_config": config.to_dict(),
        "gate_config": gate_config.to_dict(),
        "teacher_train_config": dataclasses.asdict(config.teacher_config()),
        "student_train_config": dataclasses.asdict(student_config),
        "device": str(device),
    }
    return io.publish_results(results, config.out / "results.json", started, summary(results, report))


def summary(results: dict[str, Any], report: Report) -> str:
    """The demo's printed table."""
    lines = [
        "",
        f"{'':<22}{'teacher':>12}{'gated student':>16}",
        f"{'test accuracy (%)':<22}{results['teacher_accuracy']:>12.2f}{results['student_accuracy']:>16.2f}",
        f"{'MACs (M, test set)':<22}{results['teacher_macs'] / 1e6:>12.1f}{results['macs_executed'] / 1e6:>16.1f}",
        f"{'parameters':<22}{results['teacher_params']:>12,d}{results['student_params']:>16,d}",
        f"{'bytes on disk':<22}{results['teacher_disk_bytes']:>12,d}{results['student_disk_bytes']:>16,d}",
        f"{'bytes (MB, test set)':<22}{results['bytes_dense'] / 1e6:>12.1f}{results['bytes_executed'] / 1e6:>16.1f}",
        "",
        "per layer (summed over the test set):",
        report.table(),
    ]
    return "\n".join(lines)
