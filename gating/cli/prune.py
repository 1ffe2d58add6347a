"""``python -m gating prune``: load a model saved with :func:`gating.save`, prune it with
:func:`gating.prune.prune`, print the storage / MAC table and save the smaller model."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..prune import CRITERIA
from .errors import USAGE_STATUS, CommandError

__all__ = ["add_prune_parser", "run_prune"]


def add_prune_parser(commands: argparse._SubParsersAction) -> None:
    prune = commands.add_parser("prune", help="prune a model saved with gating.save and save the smaller one")
    prune.add_argument("model_dir", type=Path, help="folder written by gating.save")
    prune.add_argument("--out", type=Path, required=True, help="folder for the pruned model")
    prune.add_argument("--criterion", choices=CRITERIA, default="l1", help="channel importance (default l1)")
    target = prune.add_mutually_exclusive_group(required=True)
    target.add_argument("--ratio", type=float, help="fraction of the scored channels to remove, in [0, 1)")
    target.add_argument("--flops", type=float, help="keep at most this fraction of the MACs, in (0, 1]")
    target.add_argument("--params", type=float, help="keep at most this fraction of the parameters, in (0, 1]")
    prune.add_argument("--scope", choices=("global", "layer"), default="global",
                       help="one threshold over all groups, or the same ratio in every group (default global)")
    prune.add_argument("--max-ratio", type=float, default=0.9,
                       help="largest fraction of one group removed (default 0.9)")
    prune.add_argument("--round-to", type=int, default=8,
                       help="kept channel counts are multiples of this (and of a gated layer's gate group; default 8)")
    prune.add_argument("--similarity-source", choices=("weights", "features"), default="weights",
                       help="what the similarity criterion compares (default weights)")
    prune.add_argument("--image-size", type=int, default=224,
                       help="side of the square input the model is traced and counted at (default 224)")
    prune.add_argument("--calibration-images", type=int, default=64,
                       help="built-in images run through the model for the gate and feature-similarity criteria "
                            "(default 64)")
    prune.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run_prune(args: argparse.Namespace) -> None:
    """The ``prune`` subcommand: load, prune, print the table, save. Bad input exits with one line."""
    import torch

    from .. import io
    from ..data.synthetic import synthetic_dataset
    from ..prune import PruneConfig, TraceError, prune

    try:
        config = PruneConfig(criterion=args.criterion, ratio=args.ratio, flops=args.flops, params=args.params,
                             scope=args.scope, max_ratio=args.max_ratio, round_to=args.round_to,
                             similarity_source=args.similarity_source)
    except ValueError as error:
        message = str(error)
        for field in ("criterion", "ratio", "flops", "params", "scope", "max_ratio", "round_to", "similarity_source"):
            message = message.replace(f"PruneConfig.{field} ", f"--{field.replace('_', '-')} ")
        raise CommandError(f"gating prune: {message}", USAGE_STATUS) from None
    if args.image_size < 8 or args.calibration_images < 1:
        raise CommandError("gating prune: --image-size must be >= 8 and --calibration-images >= 1", USAGE_STATUS)
    if args.out.exists() and not args.overwrite:
        raise CommandError(f"gating prune: {args.out} exists; pass --overwrite to replace it", USAGE_STATUS)
    try:
        model = io.load(args.model_dir)
    except io.ModelFileError as error:
        raise CommandError(f"gating prune: {error}") from None
    channels = next(m.in_channels for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd))
    example = torch.zeros(1, channels, args.image_size, args.image_size)
    calibration = None
    if config.criterion == "gate" or (config.criterion == "similarity" and config.similarity_source == "features"):
        calibration = synthetic_dataset(args.calibration_images, image_size=args.image_size, seed=0).tensors[0]
        if calibration.shape[1] != channels:
            raise CommandError(f"gating prune: the built-in images have {calibration.shape[1]} channels, "
                               f"the model reads {channels}")
    try:
        result = prune(model, example, config, calibration=calibration)
    except (TraceError, ValueError) as error:
        raise CommandError(f"gating prune: {error}") from None
    io.save(model, args.out, overwrite=args.overwrite)
    print(result.table(extra_rows=[("bytes on disk", io.disk_bytes(args.model_dir), io.disk_bytes(args.out))]))
    print(f"wrote {args.out}")
