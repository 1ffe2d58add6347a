"""What one benchmark run sweeps, with its defaults written once.

:class:`Sweep` holds every parameter of a run (the shapes' networks, batches,
gate densities, ``do_bench`` times, seed and gate settings) and is written
into the result JSON as is. Its field defaults are the full sweep;
:meth:`Sweep.preset` gives the ``--quick`` one. The command line
(:mod:`benchmarks.run_gpu`) reads its defaults from here, and so do the pytest
benchmarks (:mod:`benchmarks.bench_gated_conv`): ``Sweep()`` is the default run.

:class:`Targets` holds the thresholds and case selections of the summary the
project targets (:func:`benchmarks.report.summarize`).

The element type is fixed: every timed tensor is :data:`DTYPE` (bfloat16), and
accounting counts :data:`ELEM_SIZE` bytes per activation element.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, replace

import torch

from kernels import GateSpec

from .shapes import MODELS

__all__ = [
    "CHECK_BATCH",
    "DTYPE",
    "ELEM_SIZE",
    "QUICK_BATCHES",
    "QUICK_MODELS",
    "Sweep",
    "Targets",
    "derived_seed",
]

DTYPE = torch.bfloat16
"""Dtype of every timed activation and weight."""

ELEM_SIZE = DTYPE.itemsize
"""Bytes per activation element, for accounting (2 for bfloat16)."""

CHECK_BATCH = 8
"""Batch at which outputs are checked against the float64 reference, when swept."""

QUICK_MODELS = ("r50",)
"""Networks of the ``--quick`` preset."""

QUICK_BATCHES = (8, 64)
"""Batches of the ``--quick`` preset."""

@dataclass(frozen=True)
class Sweep:
    """Every parameter of one run (written into the JSON); the defaults are the full sweep.

    Attributes:
        models: networks whose conv shapes are swept (names of
            :data:`benchmarks.shapes.MODELS`).
        batches: batch sizes ``N``, each >= 1.
        densities: target fractions of gate decisions on, each in ``(0, 1]``.
        quick: only the shapes run by several layers
            (:func:`benchmarks.shapes.select_shapes`).
        warmup_ms: ``do_bench`` warm-up time, milliseconds.
        rep_ms: ``do_bench`` repetition time, milliseconds.
        seed: seed of every mask and input of the run.
        base_fraction: fraction of input channels in the gate's partial sum.
        base_layout: ``"first"`` or ``"grouped"`` base channels.
        gate_group: output channels sharing one decision.
        gate_block: side of the pixel block sharing one decision (the
            masks are made block-constant, see :func:`benchmarks.masks.beacon_case`).
            The gate settings are flat here so the JSON and the command line
            keep their names; ``spec`` is the :class:`kernels.GateSpec` that
            validates them.

    Raises:
        ValueError: a value out of its range; the message names the field
            (``Sweep.<field>`` for the gate settings). ``TypeError`` for a
            wrongly typed gate setting, as :class:`kernels.GateSpec`.
    """

    models: tuple[str, ...] = MODELS
    batches: tuple[int, ...] = (1, 8, 64)
    densities: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    quick: bool = False
    warmup_ms: int = 25
    rep_ms: int = 100
    seed: int = 0
    base_fraction: float = GateSpec.base_fraction
    base_layout: str = GateSpec.base_layout
    gate_group: int = GateSpec.gate_group
    gate_block: int = GateSpec.gate_block

    def __post_init__(self) -> None:
        for name in ("models", "batches", "densities"):
            object.__setattr__(self, name, tuple(getattr(self, name)))  # lists from argparse or JSON
        if not self.models or any(m not in MODELS for m in self.models):
            raise ValueError(f"models must be a non-empty subset of {MODELS}, got {self.models}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise ValueError("batches must be >= 1")
        if not self.densities or any(not 0.0 < d <= 1.0 for d in self.densities):
            raise ValueError("densities must be in (0, 1]")
        if self.warmup_ms < 0 or self.rep_ms < 1:
            raise ValueError(f"warmup_ms must be >= 0 and rep_ms >= 1, got {self.warmup_ms} and {self.rep_ms}")
        GateSpec.read(self)  # the gate settings' one rule; errors name Sweep.<field>

    @classmethod
    def preset(cls, quick: bool = False, **overrides: object) -> Sweep:
        """The full sweep, or the quick one (:data:`QUICK_MODELS`, :data:`QUICK_BATCHES`), with ``overrides``.

        An override of ``None`` keeps the preset's value (what argparse gives
        for a flag that was not passed).
        """
        base = cls(quick=True, models=QUICK_MODELS, batches=QUICK_BATCHES) if quick else cls()
        return replace(base, **{name: value for name, value in overrides.items() if value is not None})

    @property
    def spec(self) -> GateSpec:
        """The gate settings as a :class:`kernels.GateSpec` (``spec.to_dict()``: keyword arguments of a gated call)."""
        return GateSpec.read(self)

    @property
    def check_batch(self) -> int:
        """The batch at which outputs are checked: :data:`CHECK_BATCH` if swept, else the smallest."""
        return CHECK_BATCH if CHECK_BATCH in self.batches else min(self.batches)

    def to_dict(self) -> dict[str, object]:
        """The parameters as JSON values (tuples become lists)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in asdict(self).items()}


@dataclass(frozen=True)
class Targets:
    """What the summary measures against (see :func:`benchmarks.report.summarize`).

    Attributes:
        fraction_of_ideal: a gated case meets the target when its speedup over
            cuDNN is at least this fraction of the count-implied ideal speedup.
        sparse_densities: densities whose gated cases are summarised in (b).
        summary_batches: batches whose gated cases are summarised in (b).
        throughput_model: network of the dense-throughput number (a).
        throughput_batch: batch of the dense-throughput number (a).
    """

    fraction_of_ideal: float = 0.7
    sparse_densities: tuple[float, ...] = (0.1, 0.25, 0.5)
    summary_batches: tuple[int, ...] = (8, 64)
    throughput_model: str = "r50"
    throughput_batch: int = 64


def derived_seed(sweep: Sweep, *parts: object) -> int:
    """A seed that depends only on ``sweep.seed`` and ``parts`` (stable across runs and machines)."""
    return zlib.crc32("/".join(map(str, (sweep.seed, *parts))).encode())
