"""Record the gate decisions of a real gated model on built-in images, for counting (``--decisions``).

Usage::

    python -m benchmarks.record_decisions --out runs/decisions_demo.pt demo runs/demo
    python -m benchmarks.record_decisions --out runs/decisions_r50.pt torchvision r50

``demo RUN``: the trained student of a ``python -m gating demo`` run (its
``results.json`` and ``student.ckpt``), on the first ``--images`` built-in test
images of that run's seed, at the run's own image size.

``torchvision r18|r50``: a ``GatedModel`` around a randomly initialised
torchvision ResNet (no weights are downloaded) whose gates are calibrated
(``GatedModel.calibrate``) to ``--macs-ratio`` on ``--images`` built-in images of
``--image-size`` pixels and not trained: the file's ``source`` says so.

The file (:func:`benchmarks.recorded.save_decisions`) is then counted with
``python -m benchmarks.run_gpu --count-only --decisions FILE``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gating import GateConfig, GatedModel, data, io
from gating.demo import DemoConfig
from gating.models import resnet20

from .recorded import record_decisions, save_decisions

__all__ = ["build_parser", "demo_student", "main", "torchvision_gated"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.record_decisions", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="decisions file to write")
    parser.add_argument("--images", type=int, default=64, help="images recorded (default %(default)s)")
    sources = parser.add_subparsers(dest="source", required=True)
    demo = sources.add_parser("demo", help="the trained student of a demo run")
    demo.add_argument("run", type=Path, help="folder of a `python -m gating demo` run")
    tv = sources.add_parser("torchvision", help="a calibrated, untrained torchvision ResNet")
    tv.add_argument("model", choices=("r18", "r50"))
    tv.add_argument("--image-size", type=int, default=224, help="default %(default)s")
    tv.add_argument("--macs-ratio", type=float, default=0.4, help="calibrated MAC ratio (default %(default)s)")
    tv.add_argument("--seed", type=int, default=0, help="weights and images (default %(default)s)")
    return parser


def demo_student(run: Path) -> tuple[GatedModel, DemoConfig]:
    """The trained student of the demo run in ``run`` and the run's config.

    Raises:
        ValueError: ``run`` lacks ``results.json`` or ``student.ckpt``.
        gating.io.CheckpointError: the checkpoint is corrupt or does not fit.
    """
    results, checkpoint = run / "results.json", run / "student.ckpt"
    for path in (results, checkpoint):
        if not path.is_file():
            raise ValueError(f"{run} is not a finished demo run: {path.name} is missing")
    settings = json.loads(results.read_text())["demo_config"]
    config = DemoConfig(**{**settings, "out": run, "progress": False})
    student = GatedModel(resnet20(num_classes=len(data.SHAPE_NAMES), width=config.width), config.gate_config())
    io.load_state_dict_checked(student, io.load_checkpoint(checkpoint)["model_state"], f"student of {run}")
    return student.eval(), config


def torchvision_gated(model: str, images: torch.Tensor, macs_ratio: float, seed: int) -> GatedModel:
    """A randomly initialised torchvision ResNet wrapped in ``GatedModel``, gates calibrated on ``images``."""
    import torchvision

    torch.manual_seed(seed)
    constructor = {"r18": torchvision.models.resnet18, "r50": torchvision.models.resnet50}[model]
    gated = GatedModel(constructor(weights=None, num_classes=len(data.SHAPE_NAMES)).eval(), GateConfig())
    gated.calibrate(images, macs_ratio)
    return gated


def _record(args: argparse.Namespace) -> tuple[list, dict[str, Any]]:
    if args.source == "demo":
        student, config = demo_student(args.run)
        images = data.synthetic_dataset(args.images, config.image_size, seed=2 * config.seed + 1).tensors[0]
        source = {"kind": "demo student", "run": str(args.run), "trained": True, "seed": config.seed,
                  "image_size": config.image_size, "images": args.images}  # fmt: skip
        return record_decisions(student, images, prefix=f"demo-seed{config.seed}."), source
    images = data.synthetic_dataset(args.images, args.image_size, seed=args.seed).tensors[0]
    gated = torchvision_gated(args.model, images, args.macs_ratio, args.seed)
    source = {"kind": f"torchvision {args.model}", "trained": False, "calibrated_macs_ratio": args.macs_ratio,
              "seed": args.seed, "image_size": args.image_size, "images": args.images}  # fmt: skip
    return record_decisions(gated, images, prefix=f"{args.model}."), source


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, record, write the file; a bad run folder or checkpoint exits with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error(f"--images must be >= 1, got {args.images}")
    try:
        layers, source = _record(args)
    except (ValueError, io.CheckpointError) as exc:
        print(f"record_decisions: {exc}", file=sys.stderr)
        return 2
    save_decisions(layers, args.out, source)
    density = sum(int(layer.decisions.sum()) for layer in layers) / sum(layer.decisions.numel() for layer in layers)
    print(f"wrote {args.out}: {len(layers)} gated layers, {args.images} images, decision density {density:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
