"""``BenchConfig``: every setting of ``python -m gating bench``, checked before any model is built."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import GATE_KINDS, require_int

__all__ = ["BENCH_DTYPES", "DEFAULT_MODELS", "DEFAULT_TARGET_FLOPS", "BenchConfig", "known_models"]

DEFAULT_MODELS = ("resnet18", "resnet50", "mobilenet_v2")
"""The torchvision models benched by default (random initialisation, 1000 classes)."""

BENCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
"""The dtypes a bench runs in, by flag value (float32 only on CPU)."""

DEFAULT_TARGET_FLOPS = 0.33
"""Executed/dense MAC budget of a freshly gated model when none is given."""


def known_models() -> tuple[str, ...]:
    """Names a bench can build: ``gating.models`` names and torchvision classification models."""
    import torchvision

    from .. import models

    return (*models.MODEL_NAMES, *torchvision.models.list_models(module=torchvision.models))


@dataclass
class BenchConfig:
    """What ``python -m gating bench`` measures; invalid values raise ``ValueError`` naming the field.

    Models: ``models`` (names for :func:`gating.build`, random initialisation,
    ``num_classes`` 1000) or ``saved`` (one folder written by
    :func:`gating.save`; then ``models`` is not used). Inputs: square
    ``image_size`` pixels, 3 channels (a saved model's own input channels),
    at every batch of ``batches``, drawn from ``torch.randn`` seeded by ``seed``.

    Gating: ``kind`` (``None``: ``"partial_sum"``, or a saved
    ``GatedModel``'s own), ``target_flops`` (executed/dense MAC budget in
    (0, 1]; ``None``: :data:`DEFAULT_TARGET_FLOPS` for a model gated here, the
    saved gates unchanged for a saved ``GatedModel``), reached on
    ``calibration_images`` seeded images; ``base_fraction`` (partial-sum
    gates made here: the fraction of input channels every pixel computes;
    the default 0.125 lets torchvision ResNets reach a third of their MACs,
    which 0.25 cannot); ``prune_params (fraction of the
    parameters kept by L1 static pruning before gating, in (0, 1); ``None``:
    no pruning).

    Run: ``device`` (``None``: ``"cuda"`` when available, else ``"cpu"``),
    ``dtype`` (a :data:`BENCH_DTYPES` name; ``None``: float16 on CUDA,
    float32 on CPU, which only takes float32), ``warmup_ms`` / ``rep_ms``
    (``do_bench`` warm-up and repetition time per measurement, CUDA only),
    ``out`` (the JSON; ``None``: ``benchmarks/results/bench_<device>.json``).
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    saved: Path | None = None
    image_size: int = 224
    batches: tuple[int, ...] = (1, 16, 64)
    dtype: str | None = None
    device: str | None = None
    kind: str | None = None
    target_flops: float | None = None
    base_fraction: float = 0.125
    prune_params: float | None = None
    calibration_images: int = 16
    seed: int = 0
    warmup_ms: float = 100.0
    rep_ms: float = 500.0
    out: Path | None = None

    def __post_init__(self) -> None:
        self.models = tuple(self.models)
        self.batches = tuple(self.batches)
        self.saved = None if self.saved is None else Path(self.saved)
        self.out = None if self.out is None else Path(self.out)
        self._check_models()
        require_int("BenchConfig", "image_size", self.image_size, 8)
        if not self.batches:
            raise ValueError("BenchConfig.batches must list at least one batch size")
        for batch in self.batches:
            require_int("BenchConfig", "batches", batch, 1)
        require_int("BenchConfig", "calibration_images", self.calibration_images, 1)
        require_int("BenchConfig", "seed", self.seed, 0)
        self._check_device()
        if self.kind is not None and self.kind not in GATE_KINDS:
            raise ValueError(f"BenchConfig.kind must be one of {GATE_KINDS}, got {self.kind!r}")
        if self.target_flops is not None and not _number_in(self.target_flops, 0, 1, upper_open=False):
            raise ValueError(f"BenchConfig.target_flops must be in (0, 1], got {self.target_flops!r}")
        if not _number_in(self.base_fraction, 0, 1, upper_open=False):
            raise ValueError(f"BenchConfig.base_fraction must be in (0, 1], got {self.base_fraction!r}")
        if self.prune_params is not None and not _number_in(self.prune_params, 0, 1, upper_open=True):
            raise ValueError(f"BenchConfig.prune_params must be in (0, 1), got {self.prune_params!r}")
        for name in ("warmup_ms", "rep_ms"):
            if not _number_in(getattr(self, name), 0, math.inf, upper_open=True):
                raise ValueError(f"BenchConfig.{name} must be a finite number > 0, got {getattr(self, name)!r}")

    def _check_models(self) -> None:
        if self.saved is not None:
            if not self.saved.is_dir():
                raise ValueError(f"BenchConfig.saved must be a folder written by gating.save, got {self.saved}")
            return
        if not self.models:
            raise ValueError("BenchConfig.models must list at least one model")
        known = known_models()
        for name in self.models:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=5)
                hint = f" (close matches: {', '.join(close)})" if close else ""
                raise ValueError(f"BenchConfig.models names an unknown model {name!r}{hint}; expected torchvision "
                                 "classification model names or resnet20 / resnet56")

    def _check_device(self) -> None:
        cuda = torch.cuda.is_available()
        if self.device is None:
            self.device = "cuda" if cuda else "cpu"
        try:
            device = torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"BenchConfig.device is not a torch device ({error})") from None
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"BenchConfig.device must be cpu or cuda, got {self.device!r}")
        if device.type == "cuda" and not cuda:
            raise ValueError(f"BenchConfig.device {self.device} needs CUDA, and torch.cuda.is_available() is False")
        if self.dtype is None:
            self.dtype = "float16" if device.type == "cuda" else "float32"
        if self.dtype not in BENCH_DTYPES:
            raise ValueError(f"BenchConfig.dtype must be one of {tuple(BENCH_DTYPES)}, got {self.dtype!r}")
        if device.type == "cpu" and self.dtype != "float32":
            raise ValueError(f"BenchConfig.dtype {self.dtype} needs CUDA: on cpu the bench counts in float32")

    @property
    def torch_dtype(self) -> torch.dtype:
        """The bench dtype as a ``torch.dtype``."""
        return BENCH_DTYPES[self.dtype]

    @property
    def cuda(self) -> bool:
        """Whether the bench runs on a CUDA device (and so times)."""
        return torch.device(self.device).type == "cuda"

    def to_dict(self) -> dict[str, Any]:
        """Every setting as JSON values (paths as strings, tuples as lists)."""
        return {
            "models": list(self.models), "saved": None if self.saved is None else str(self.saved),
            "image_size": self.image_size, "batches": list(self.batches), "dtype": self.dtype,
            "device": self.device, "kind": self.kind, "target_flops": self.target_flops,
            "base_fraction": self.base_fraction, "prune_params": self.prune_params, "calibration_images": self.calibration_images, "seed": self.seed,
            "warmup_ms": self.warmup_ms, "rep_ms": self.rep_ms, "out": None if self.out is None else str(self.out),
        }  # fmt: skip


def _number_in(value: object, low: float, high: float, *, upper_open: bool) -> bool:
    """Whether ``value`` is a finite real number in ``(low, high)`` (``(low, high]`` unless ``upper_open``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return low < value < high if upper_open else low < value <= high
