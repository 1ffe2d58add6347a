"""``python -m gating train``: flags of :class:`gating.train.TrainRunConfig` (with its ``GateConfig`` and
``TrainConfig``), then :func:`gating.train.run_train`, on one process or under ``torchrun``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import USAGE_STATUS, CommandError, flag_message

__all__ = ["add_train_parser", "run_train_command"]


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _amp(text: str) -> bool | None:
    choices = {"auto": None, "on": True, "off": False}
    if text not in choices:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return choices[text]


# (flag, owner, field, type, help): owner "run" is TrainRunConfig, "gate" its GateConfig, "train" its TrainConfig.
_FLAGS: tuple[tuple[str, str, str, Any, str], ...] = (
    ("--out", "run", "out", Path, "run folder: config, checkpoints, metrics logs, results, saved models"),
    ("--data", "run", "data", str, "synthetic (built in), cifar10 or imagefolder"),
    ("--root", "run", "root", Path, "dataset folder for cifar10 / imagefolder"),
    ("--num-train", "run", "num_train", _optional_int, "training images (None: all / the built-in default)"),
    ("--num-test", "run", "num_test", _optional_int, "test images (None: all / the built-in default)"),
    ("--image-size", "run", "image_size", _optional_int, "image side in pixels (None: the data's own)"),
    ("--num-workers", "run", "num_workers", int, "data loader worker processes per training process"),
    ("--model", "run", "model", str,
     "a torchvision classification model name, resnet20 / resnet56, or module:callable"),
    ("--teacher", "run", "teacher", Path,
     "dense teacher: a gating.save folder or a checkpoint / state_dict file (None: train it first)"),
    ("--teacher-epochs", "run", "teacher_epochs", int, "epochs of dense teacher training (without --teacher)"),
    ("--teacher-lr", "run", "teacher_lr", float, "teacher learning rate (without --teacher)"),
    ("--teacher-batch-size", "run", "teacher_batch_size", int, "teacher's global batch (without --teacher)"),
    ("--batch-size", "run", "batch_size", int, "student's global batch, split between the processes"),
    ("--calibration-images", "run", "calibration_images", int, "training images the gates start from"),
    ("--kind", "gate", "kind", str, "partial_sum or runtime gates"),
    ("--target-flops", "gate", "target_flops_ratio", _optional_float, "executed/dense MAC ratio of the student"),
    ("--gate-group", "gate", "gate_group", int, "output channels per partial-sum gate decision"),
    ("--gate-block", "gate", "gate_block", int, "side of the pixel block per partial-sum gate decision"),
    ("--base-fraction", "gate", "base_fraction", float, "fraction of input channels always computed"),
    ("--budget-weight", "gate", "budget_weight", float, "weight of the budget loss"),
    ("--threshold-weight", "gate", "threshold_weight", float, "weight of the threshold loss"),
    ("--coherence-weight", "gate", "coherence_weight", float, "weight of the gate-map coherence loss (0 = off)"),
    ("--channel-group", "gate", "channel_group", int, "runtime gates: kept channel counts are multiples of this"),
    ("--runtime-ratio", "gate", "runtime_ratio", float, "runtime gates: weight of runtime against static importance"),
    ("--include", "gate", "include", _names, "comma-separated module names to gate even if the rules skip them"),
    ("--exclude", "gate", "exclude", _names, "comma-separated module names never to gate"),
    ("--epochs", "train", "epochs", int, "student distillation epochs"),
    ("--lr", "train", "lr", float, "student learning rate (cosine schedule)"),
    ("--momentum", "train", "momentum", float, "SGD momentum"),
    ("--weight-decay", "train", "weight_decay", float, "weight decay"),
    ("--kd-alpha", "train", "kd_alpha", float, "weight of the hard-label loss (1 - it: distillation)"),
    ("--kd-temperature", "train", "kd_temperature", float, "distillation temperature"),
    ("--warmup-epochs", "train", "warmup_epochs", int, "epochs of linear learning-rate warmup"),
    ("--eval-every", "train", "eval_every", _optional_int, "evaluate every this many epochs (None: only the last)"),
    ("--checkpoint-every", "train", "checkpoint_every", int, "also checkpoint every this many steps (0: epoch ends)"),
    ("--max-grad-norm", "train", "max_grad_norm", _optional_float, "clip the gradient norm (None: off)"),
    ("--budget-ramp-epochs", "train", "budget_ramp_epochs", float, "epochs the MAC target ramps down over (0: off)"),
    ("--budget-ramp-start", "train", "budget_ramp_start", float, "MAC ratio the ramp starts at"),
    ("--bn-recalibration-batches", "train", "bn_recalibration_batches", int,
     "batches re-estimating BatchNorm statistics after training (0: off)"),
    ("--budget-fit-batches", "train", "budget_fit_batches", int,
     "batches on which the thresholds meet --target-flops exactly after training (0: off)"),
    ("--amp", "train", "amp", _amp, "mixed precision: auto (CUDA only), on or off"),
    ("--seed", "train", "seed", int, "seed of data subsets, initialisation and training order"),
    ("--device", "train", "device", str, "torch device (None: cuda:LOCAL_RANK if available, else cpu)"),
)
_TEACHER_FLAGS = ("teacher_epochs", "teacher_lr", "teacher_batch_size")


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """The ``train`` subcommand's flags (defaults from ``TrainRunConfig()``)."""
    from ..train import TrainRunConfig

    defaults = TrainRunConfig()
    train = commands.add_parser("train", help="gate your model on your data (also under torchrun)")
    for flag, owner, field, kind, help_text in _FLAGS:
        default = _owner(defaults, owner).__dict__[field]
        shown = ",".join(default) if isinstance(default, tuple) else default
        # teacher flags default to None so that setting them beside --teacher can be refused
        train.add_argument(flag, dest=field, type=kind, default=None if field in _TEACHER_FLAGS else default,
                           help=f"{help_text} (default {shown})")
    train.add_argument("--model-arg", dest="model_args", action="append", default=[], metavar="KEY=VALUE",
                       help="keyword argument of the model constructor (VALUE read as JSON, else a string); repeatable")
    train.add_argument("--channels-last", action="store_true", help="train the student in channels_last")
    train.add_argument("--sync-bn", dest="sync_batchnorm", action="store_true",
                       help="BatchNorm statistics over the global batch when several processes train")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")


def _owner(config: Any, owner: str) -> Any:
    return config if owner == "run" else getattr(config, owner)


def train_config(args: argparse.Namespace) -> Any:
    """The ``TrainRunConfig`` the flags describe; a bad or conflicting value exits (status 2) naming its flag."""
    import dataclasses

    from ..config import GateConfig
    from ..distill import TrainConfig
    from ..train import TrainRunConfig

    given_teacher = [field for field in _TEACHER_FLAGS if getattr(args, field) is not None]
    if args.teacher is not None and given_teacher:
        flags = ", ".join("--" + field.replace("_", "-") for field in given_teacher)
        raise CommandError(f"gating train: {flags} train a teacher; --teacher loads one: give one or the other",
                           USAGE_STATUS)
    if args.data == "synthetic" and args.root is not None:
        raise CommandError("gating train: --root is for --data cifar10 / imagefolder; the built-in data has none",
                           USAGE_STATUS)
    defaults = TrainRunConfig()
    values: dict[str, dict[str, Any]] = {"run": {}, "gate": defaults.gate.to_dict(), "train": {}}
    values["train"] = dataclasses.asdict(defaults.train)
    for _, owner, field, _, _ in _FLAGS:
        value = getattr(args, field)
        if value is not None or field not in _TEACHER_FLAGS:
            values[owner][field] = value
    values["train"].update(channels_last=args.channels_last or defaults.train.channels_last, progress=args.progress)
    try:
        model_args = _model_args(args.model_args)
        gate = GateConfig.from_dict(values["gate"])
        train = TrainConfig(**values["train"])
        return TrainRunConfig(**values["run"], model_args=model_args, gate=gate, train=train,
                              sync_batchnorm=args.sync_batchnorm, resume=args.resume)
    except (ValueError, TypeError) as error:
        raise CommandError(f"gating train: {_flag_message(str(error))}", USAGE_STATUS) from None


def _model_args(pairs: list[str]) -> dict[str, Any]:
    parsed = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-arg expects KEY=VALUE, got {pair!r}")
        try:
            parsed[key] = json.loads(text)
        except ValueError:
            parsed[key] = text
    return parsed


_OWNERS = {"run": "TrainRunConfig", "gate": "GateConfig", "train": "TrainConfig"}


def _flag_message(message: str) -> str:
    """Name flags instead of config fields: ``GateConfig.x`` / ``TrainRunConfig.gate.x`` in validation errors,
    ``gate.x:`` (``x:`` for run fields) in the list of settings a refused ``--resume`` names."""
    for flag, owner, field, _, _ in _FLAGS:
        message = flag_message(message, {field: flag}, (_OWNERS[owner], f"TrainRunConfig.{owner}"))
        setting = field if owner == "run" else f"{owner}.{field}"
        for before in ("(", "; "):
            message = message.replace(f"{before}{setting}:", f"{before}{flag}:")
    return message


def run_train_command(args: argparse.Namespace) -> None:
    """The ``train`` subcommand: validate every flag, then run (in every process under torchrun)."""
    from ..distill import DistributedRun
    from ..train import RunDirectoryError, TrainSetupError, run_train

    config = train_config(args)
    try:
        run = DistributedRun.from_environment(config.train.device, config.sync_batchnorm)
    except (ValueError, RuntimeError) as error:
        raise CommandError(f"gating train: {error}", USAGE_STATUS) from None
    try:
        run_train(config, run)
    except (TrainSetupError, RunDirectoryError) as error:
        raise CommandError(f"gating train: {_flag_message(str(error))}", USAGE_STATUS) from None
    finally:
        run.close()
