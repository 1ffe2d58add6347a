"""``python -m gating train``: gate your own model on your own data, on one process or under ``torchrun``.

:func:`run_train` builds the loaders (the built-in data, CIFAR-10 or an
ImageFolder), the model (a ``gating.models`` or torchvision name, or
``module:callable``, through :func:`gating.build`), the dense teacher (loaded
from ``TrainRunConfig.teacher`` or trained first), wraps a copy of it with
``GatedModel``, starts the gates at the budget (partial-sum gates:
``calibrate``; runtime gates: ``set_budget``), distils the student with
:class:`gating.distill.Trainer` and writes, in ``out``:

* ``config.json``: every setting of the run (a later ``resume`` with other
  settings is refused, naming them);
* ``teacher.ckpt`` (when it trains the teacher) and ``student.ckpt``:
  resumable checkpoints, written atomically;
* ``teacher_metrics.jsonl`` / ``student_metrics.jsonl``: one JSON record
  per epoch (learning rate, training loss and accuracy, test loss, accuracy
  and executed-MAC ratio);
* ``teacher_model/`` and ``student_model/``: the models saved with
  :func:`gating.save` (loadable with :func:`gating.load`);
* ``results.json``: accuracy, executed MACs and bytes against the teacher,
  per-layer density, sizes, every setting, environment.

Under ``torchrun --nproc_per_node N`` every process runs this function; the
:class:`~gating.distill.DistributedRun` it gets splits each global batch
(``batch_size``) between them, and only rank 0 writes
(``docs/design.md#data-parallel-training``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from . import data, io
from .config import GateConfig, require_int
from .distill import DistributedRun, Trainer, TrainConfig, with_teacher_logits
from .measurement import calibration_batch, measure, saved_sizes
from .model import GatedModel
from .recorder import count_model
from .teacher_checkpoint import load_teacher

__all__ = ["RunDirectoryError", "TrainRunConfig", "TrainSetupError", "run_train", "table"]

EVAL_BATCH = 256
"""Images per evaluation batch in each process."""


class TrainSetupError(ValueError):
    """Settings the data, the model or the number of processes cannot satisfy, found before anything ran."""


class RunDirectoryError(TrainSetupError):
    """``out`` holds another run: not resumable with these settings, or not empty without ``resume``."""


def _student_defaults() -> TrainConfig:
    return TrainConfig(epochs=5, lr=0.05, eval_every=1, checkpoint_every=100, bn_recalibration_batches=20,
                       budget_fit_batches=4)


@dataclass
class TrainRunConfig:
    """Everything ``python -m gating train`` does; invalid values raise ``ValueError`` naming the field.

    Data: ``data`` (``"synthetic"``, ``"cifar10"``, ``"imagefolder"``),
    ``root`` (its folder; unused for synthetic), ``num_train`` / ``num_test``
    (``None``: all, or the built-in default), ``image_size`` (``None``: the
    data's own), ``num_workers`` (loader processes).

    Models: ``model`` (name for :func:`gating.build`), ``model_args``
    (JSON-valued keyword arguments; ``num_classes`` is the data's),
    ``teacher`` (a folder written by :func:`gating.save`, or a checkpoint
    file holding a ``state_dict`` of ``model``; ``None``: train the dense
    teacher for ``teacher_epochs`` epochs at ``teacher_lr``, global batch
    ``teacher_batch_size``).

    Student: ``gate`` (its :class:`GateConfig`; ``target_flops_ratio`` is
    the budget: calibrated to, held by the budget loss, met at the end),
    ``train`` (its :class:`TrainConfig`; seed, device and progress are
    those of the whole run), ``batch_size`` (the global batch, split between
    the processes), ``calibration_images`` (training images the gates start
    from), ``sync_batchnorm`` (BatchNorm over the global batch in a
    data-parallel run).

    Run: ``out``, ``resume``.
    """

    out: Path = Path("runs/train")
    data: str = "synthetic"
    root: Path | None = None
    num_train: int | None = None
    num_test: int | None = None
    image_size: int | None = None
    num_workers: int = 0
    model: str = "resnet20"
    model_args: dict[str, Any] = field(default_factory=dict)
    teacher: Path | None = None
    teacher_epochs: int = 5
    teacher_lr: float = 0.1
    teacher_batch_size: int = 128
    gate: GateConfig = field(default_factory=lambda: GateConfig(target_flops_ratio=0.5))
    train: TrainConfig = field(default_factory=_student_defaults)
    batch_size: int = 64
    calibration_images: int = 512
    sync_batchnorm: bool = False
    resume: bool = False

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.root = None if self.root is None else Path(self.root)
        self.teacher = None if self.teacher is None else Path(self.teacher)
        if self.data not in data.DATASETS:
            raise ValueError(f"TrainRunConfig.data must be one of {data.DATASETS}, got {self.data!r}")
        if self.data != "synthetic" and self.root is None:
            raise ValueError(f"TrainRunConfig.root is needed for --data {self.data} (the dataset folder)")
        for name in ("teacher_epochs", "teacher_batch_size", "batch_size", "calibration_images"):
            require_int("TrainRunConfig", name, getattr(self, name), 1)
        require_int("TrainRunConfig", "num_workers", self.num_workers, 0)
        for name in ("num_train", "num_test"):
            if getattr(self, name) is not None:
                require_int("TrainRunConfig", name, getattr(self, name), 1)
        if self.image_size is not None:
            require_int("TrainRunConfig", "image_size", self.image_size, 8)
        if not (isinstance(self.teacher_lr, (int, float)) and math.isfinite(self.teacher_lr) and self.teacher_lr > 0):
            raise ValueError(f"TrainRunConfig.teacher_lr must be a finite number > 0, got {self.teacher_lr!r}")
        if self.gate.kind == "partial_sum" and self.gate.target_flops_ratio is None:
            raise ValueError("TrainRunConfig.gate.target_flops_ratio must be set (the student's MAC budget)")
        if self.gate.kind == "runtime" and (self.train.budget_fit_batches or self.train.budget_ramp_epochs):
            raise ValueError("TrainRunConfig.train.budget_fit_batches and budget_ramp_epochs are for partial-sum "
                             "gates; runtime gates meet the budget by their keep ratio (set to 0)")
        io.export.check_json(self.model_args, "TrainRunConfig.model_args")
        if "num_classes" in self.model_args:
            raise ValueError("TrainRunConfig.model_args must not set num_classes: it is the data's")

    def settings(self) -> dict[str, Any]:
        """The settings a resumed run must share, flat: run fields, then ``gate.<field>`` and ``train.<field>``.

        Left out: ``out``, ``resume``, ``num_workers`` and the training
        ``device``, ``progress`` and ``checkpoint_every`` (they do not change
        the result).
        """
        flat = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)
                if f.name not in ("out", "resume", "num_workers", "gate", "train")}
        flat.update({f"gate.{key}": _plain(value) for key, value in self.gate.to_dict().items()})
        flat.update({f"train.{key}": _plain(value) for key, value in dataclasses.asdict(self.train).items()
                     if key not in ("device", "progress", "checkpoint_every")})
        return flat

    def teacher_config(self) -> TrainConfig:
        """The dense teacher's run: SGD at ``teacher_lr``, cross-entropy, channels_last, evaluated every epoch."""
        return TrainConfig(epochs=self.teacher_epochs, lr=self.teacher_lr, kd_alpha=1.0, channels_last=True,
                           checkpoint_every=self.train.checkpoint_every, seed=self.train.seed,
                           device=self.train.device, progress=self.train.progress)


def _plain(value: Any) -> Any:
    """JSON-comparable form: paths as strings, tuples as lists."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------ the run
def run_train(config: TrainRunConfig, run: DistributedRun | None = None) -> dict[str, Any] | None:
    """Run the workflow of the module docstring; returns the results (``None`` outside the main process).

    ``run``: this process's place in a data-parallel run (default: from
    torchrun's environment, a single process otherwise). Everything is
    validated before anything is written to ``out`` or trained.

    Raises:
        TrainSetupError: settings the data, the model or the number of
            processes cannot satisfy (an unknown model name, with close
            matches; a global batch smaller than the number of processes or
            not a multiple of it; too few images; a gate configuration the
            model cannot take).
        RunDirectoryError: ``out`` holds files and ``resume`` is off, or it
            holds a run with other settings (named) and ``resume`` is on.
        gating.data.DatasetError: a missing or malformed data folder.
        gating.io.CheckpointError / gating.io.ModelFileError: an unusable
            teacher or training checkpoint.
    """
    started = time.perf_counter()
    run = run or DistributedRun.from_environment(config.train.device, config.sync_batchnorm)
    student_config = dataclasses.replace(config.train, device=str(run.device))
    try:
        train_set, test_set, num_classes = _datasets(config)
        train_loader = _train_loader(train_set, config.batch_size, config, run)
        teacher_loader = None if config.teacher else _train_loader(train_set, config.teacher_batch_size, config, run)
        torch.manual_seed(config.train.seed)  # initialisation is a function of the seed, whatever ran before
        if config.teacher is None:
            teacher = io.build(config.model, num_classes=num_classes, **config.model_args)
        else:
            teacher = load_teacher(config.teacher, config.model, config.model_args, num_classes)
        GatedModel(teacher, config.gate)  # a gate configuration the model cannot take fails here
    except data.DatasetError:
        raise
    except (ValueError, TypeError) as error:
        raise TrainSetupError(str(error)) from None
    test_loader = DataLoader(test_set, batch_size=EVAL_BATCH, num_workers=config.num_workers,
                             sampler=data.ShardSampler(len(test_set), run.rank, run.world_size))
    example = test_set[0][0][None]
    _prepare_out(config, run)

    teacher = teacher.to(run.device)
    if config.teacher is None:
        _say(run, f"[1/3] teacher: dense {config.model} for {config.teacher_epochs} epochs on {len(train_set)} images")
        teacher_config = dataclasses.replace(config.teacher_config(), device=str(run.device))
        Trainer(teacher, teacher_loader, test_loader, teacher_config, checkpoint_path=config.out / "teacher.ckpt",
                run=run, metrics_path=config.out / "teacher_metrics.jsonl").fit(resume=config.resume)
        teacher.to(memory_format=torch.contiguous_format)
    else:
        _say(run, f"[1/3] teacher: loaded from {config.teacher}")

    _say(run, f"[2/3] student: {config.gate.kind} gates, MAC budget {_budget(config)}, "
              f"{run.world_size} process(es), global batch {config.batch_size}")
    student = GatedModel(teacher, config.gate).to(run.device)
    calibration = calibration_batch(train_loader, config.calibration_images, run.device)
    _start_gates(student, calibration, config)
    student_loader = train_loader
    if config.data == "synthetic":  # no augmentation: the teacher's logits once per image
        student_loader = _train_loader(with_teacher_logits(train_set, teacher, run.device), config.batch_size,
                                       config, run)
    Trainer(student, student_loader, test_loader, student_config, teacher=teacher,
            checkpoint_path=config.out / "student.ckpt", run=run,
            metrics_path=config.out / "student_metrics.jsonl").fit(resume=config.resume)
    if config.gate.kind == "runtime":
        student.set_budget(config.gate.target_flops_ratio or 1.0, calibration)

    results = None
    if run.is_main:
        _say(run, "[3/3] measuring on the test set")
        whole_test = DataLoader(test_set, batch_size=EVAL_BATCH, num_workers=config.num_workers)
        results = _results(config, teacher, student, whole_test, example.to(run.device), run, started)
    run.barrier()
    return results


def _datasets(config: TrainRunConfig) -> tuple[Dataset, Dataset, int]:
    loader, test_loader, num_classes = data.build_loaders(
        config.data, root=config.root, num_train=config.num_train, num_test=config.num_test,
        image_size=config.image_size, seed=config.train.seed)
    return loader.dataset, test_loader.dataset, num_classes


def _train_loader(dataset: Dataset, global_batch: int, config: TrainRunConfig, run: DistributedRun) -> DataLoader:
    sampler = data.GlobalBatchSampler(len(dataset), global_batch, config.train.seed, run.rank, run.world_size)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers)


def _budget(config: TrainRunConfig) -> str:
    return "none" if config.gate.target_flops_ratio is None else f"{config.gate.target_flops_ratio}"


def _start_gates(student: GatedModel, calibration: torch.Tensor, config: TrainRunConfig) -> None:
    """Partial-sum gates: calibrated to the budget; runtime gates: one keep ratio meeting it (if any)."""
    target = config.gate.target_flops_ratio
    if config.gate.kind == "partial_sum":
        start = config.train.budget_ramp_start if config.train.budget_ramp_epochs > 0 else target
        student.calibrate(calibration, start)
    elif target is not None:
        student.set_budget(target, calibration)


def _prepare_out(config: TrainRunConfig, run: DistributedRun) -> None:
    """Refuse an ``out`` that holds another run (checked in every process), then record the settings (rank 0)."""
    settings_file = config.out / "config.json"
    settings = config.settings()
    if config.resume and settings_file.exists():
        try:
            saved = json.loads(settings_file.read_text())
        except (OSError, ValueError) as error:
            raise RunDirectoryError(f"{settings_file} is unreadable ({error}); it records the run's settings") from None
        differing = [f"{key}: {saved.get(key)!r} -> {settings.get(key)!r}"
                     for key in sorted(saved.keys() | settings.keys()) if saved.get(key) != settings.get(key)]
        if differing:
            raise RunDirectoryError(f"{config.out} holds a run with other settings ({'; '.join(differing)}); "
                                    "run with the same settings, or choose another --out")
    elif not config.resume and config.out.exists() and any(config.out.iterdir()):
        raise RunDirectoryError(f"{config.out} is not empty: pass --resume to continue the run in it, "
                                "or choose another --out")
    run.barrier()  # every process has looked before rank 0 writes
    if run.is_main:
        config.out.mkdir(parents=True, exist_ok=True)
        io.atomic_write_json(settings, settings_file)


def _say(run: DistributedRun, message: str) -> None:
    if run.is_main:
        print(message, flush=True)


def _results(config: TrainRunConfig, teacher: nn.Module, student: GatedModel, test_loader: DataLoader,
             example: torch.Tensor, run: DistributedRun, started: float) -> dict[str, Any]:
    teacher_accuracy, _ = measure(teacher, test_loader, run.device)
    student_accuracy, report = measure(student, test_loader, run.device)
    teacher_count = count_model(teacher.eval(), example)
    images = len(test_loader.dataset)
    results = {
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "accuracy_gap": teacher_accuracy - student_accuracy,
        "teacher_macs": teacher_count.macs_dense * images,
        "teacher_bytes": teacher_count.bytes_dense * images,
        "macs_executed": report.macs_executed,
        "bytes_executed": report.bytes_executed,
        "macs_ratio": report.macs_executed / (teacher_count.macs_dense * images),
        "bytes_ratio": report.bytes_executed / (teacher_count.bytes_dense * images),
        **saved_sizes({"teacher": teacher, "student": student}, config.out),
        "layers": {layer.name: layer.density for layer in report.layers if layer.density is not None},
        "report": report.to_dict()["layers"],
        "test_images": images,
        "world_size": run.world_size,
        "settings": config.settings(),
        "device": str(run.device),
    }
    return io.publish_results(results, config.out / "results.json", started, table(results))


def table(results: dict[str, Any]) -> str:
    """The summary printed at the end: teacher against gated student."""
    rows = [
        ("test accuracy (%)", f"{results['teacher_accuracy']:.2f}", f"{results['student_accuracy']:.2f}"),
        ("MACs (M, test set)", f"{results['teacher_macs'] / 1e6:.1f}", f"{results['macs_executed'] / 1e6:.1f}"),
        ("bytes (MB, test set)", f"{results['teacher_bytes'] / 1e6:.1f}", f"{results['bytes_executed'] / 1e6:.1f}"),
        ("parameters", f"{results['teacher_params']:,d}", f"{results['student_params']:,d}"),
        ("bytes on disk", f"{results['teacher_disk_bytes']:,d}", f"{results['student_disk_bytes']:,d}"),
    ]
    lines = ["", f"{'':<22}{'teacher':>14}{'gated student':>16}"]
    lines += [f"{name:<22}{left:>14}{right:>16}" for name, left, right in rows]
    lines.append(f"executed MACs {results['macs_ratio']:.3f}x and bytes {results['bytes_ratio']:.3f}x of the teacher's")
    return "\n".join(lines)
