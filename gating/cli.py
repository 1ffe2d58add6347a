"""Command line: ``python -m gating demo`` (also installed as ``gating demo``).

``demo`` trains a dense ResNet-20 teacher on the built-in synthetic data,
wraps a copy with ``GatedModel``, calibrates its gates to the MAC budget on a
batch of training images (``GatedModel.calibrate``), distils the gated student
from the teacher (SGD, cosine schedule, budget loss holding the target),
then prints a table (accuracies; MACs and bytes dense vs executed over the
whole test set; per-layer density) and writes ``OUT/results.json``.
Checkpoints ``OUT/teacher.ckpt`` and ``OUT/student.ckpt`` are written as it
goes; ``--resume`` continues from them.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader

from . import data, io
from .accounting import Report
from .config import GateConfig
from .distill import Trainer, TrainConfig
from .model import GatedModel
from .models import resnet20


CALIBRATION_IMAGES = 512
STUDENT_LR = 0.1


def calibration_batch(loader: DataLoader, count: int, device: torch.device) -> torch.Tensor:
    """The first ``count`` images of ``loader``'s dataset (in dataset order), on ``device``."""
    count = min(count, len(loader.dataset))
    return torch.stack([loader.dataset[i][0] for i in range(count)]).to(device)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gating", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="train a teacher and a gated student on the built-in data")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder (default runs/demo)")
    demo.add_argument("--teacher-epochs", type=int, default=5, help="epochs of dense teacher training (default 5)")
    demo.add_argument("--student-epochs", type=int, default=4, help="epochs of gated distillation (default 4)")
    demo.add_argument("--num-train", type=int, default=6000, help="built-in training images (default 6000)")
    demo.add_argument("--num-test", type=int, default=2000, help="built-in test images (default 2000)")
    demo.add_argument("--image-size", type=int, default=32, help="image side in pixels (default 32)")
    demo.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    demo.add_argument("--width", type=int, default=16, help="ResNet-20 base width (default 16)")
    demo.add_argument(
        "--target-flops", type=float, default=0.45,
        help="executed/dense MAC ratio the student is calibrated to and the budget loss aims at (default 0.45)",
    )
    demo.add_argument("--gate-group", type=int, default=16, help="output channels per gate decision (default 16)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    demo.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser


def _positive(args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) < 1:
            raise SystemExit(f"gating demo: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")


@torch.no_grad()
def measure(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, Report | None]:
    """Accuracy in percent over ``loader`` and, for a ``GatedModel``, its counts summed over batches."""
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


def run_demo(args: argparse.Namespace) -> dict:
    """Run the demo described in the module docstring; returns what it writes to results.json."""
    _positive(args, "teacher_epochs", "student_epochs", "num_train", "num_test", "batch_size", "width")
    if not 0.0 < args.target_flops <= 1.0:
        raise SystemExit(f"gating demo: --target-flops must be in (0, 1], got {args.target_flops}")
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    train_loader, test_loader, num_classes = data.build_loaders(
        "synthetic",
        batch_size=args.batch_size,
        num_train=args.num_train,
        num_test=args.num_test,
        image_size=args.image_size,
        seed=args.seed,
    )
    # Evaluate once, at the end of each training run: the demo's time budget is small.
    common = dict(seed=args.seed, device=args.device, progress=not args.no_progress)

    print(f"[1/3] teacher: ResNet-20 (width {args.width}) on {args.num_train} built-in images", flush=True)
    teacher = resnet20(num_classes=num_classes, width=args.width)
    teacher_cfg = TrainConfig(epochs=args.teacher_epochs, lr=0.1, kd_alpha=1.0, eval_every=args.teacher_epochs,
                              **common)
    teacher_trainer = Trainer(teacher, train_loader, test_loader, teacher_cfg,
                              checkpoint_path=args.out / "teacher.ckpt")
    teacher_trainer.fit(resume=args.resume)

    print(f"[2/3] student: gated copy distilled from the teacher, target MAC ratio {args.target_flops}", flush=True)
    gate_config = GateConfig(target_flops_ratio=args.target_flops, gate_group=args.gate_group, budget_weight=50.0)
    student = GatedModel(copy.deepcopy(teacher), gate_config).to(teacher_trainer.device)
    density = student.calibrate(calibration_batch(train_loader, CALIBRATION_IMAGES, teacher_trainer.device),
                                args.target_flops)
    print(f"      calibrated every gate to density {density:.3f} on {CALIBRATION_IMAGES} training images", flush=True)
    student_cfg = TrainConfig(epochs=args.student_epochs, lr=STUDENT_LR, kd_alpha=0.5, kd_temperature=4.0,
                              eval_every=args.student_epochs, **common)
    Trainer(student, train_loader, test_loader, student_cfg, teacher=teacher,
            checkpoint_path=args.out / "student.ckpt").fit(resume=args.resume)

    print("[3/3] measuring on the test set", flush=True)
    device = teacher_trainer.device
    teacher_accuracy, _ = measure(teacher, test_loader, device)
    student_accuracy, report = measure(student, test_loader, device)
    results = {
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "macs_dense": report.macs_dense,
        "macs_executed": report.macs_executed,
        "macs_reduction": report.macs_reduction,
        "bytes_dense": report.bytes_dense,
        "bytes_executed": report.bytes_executed,
        "bytes_reduction": report.bytes_reduction,
        "layers": {layer.name: layer.density for layer in report.layers if layer.density is not None},
        "report": report.to_dict()["layers"],
        "test_images": args.num_test,
        "gate_config": gate_config.to_dict(),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "device": str(device),
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    io.atomic_write_json(results, args.out / "results.json")
    print(summary(results, report))
    print(f"wrote {args.out / 'results.json'}")
    return results


def summary(results: dict, report: Report) -> str:
    """The demo's printed table."""
    lines = [
        "",
        f"{'':<22}{'teacher':>12}{'gated student':>16}",
        f"{'test accuracy (%)':<22}{results['teacher_accuracy']:>12.2f}{results['student_accuracy']:>16.2f}",
        f"{'MACs (M, test set)':<22}{results['macs_dense'] / 1e6:>12.1f}{results['macs_executed'] / 1e6:>16.1f}",
        f"{'bytes (MB, test set)':<22}{results['bytes_dense'] / 1e6:>12.1f}{results['bytes_executed'] / 1e6:>16.1f}",
        "",
        "per layer (summed over the test set):",
        report.table(),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        run_demo(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
