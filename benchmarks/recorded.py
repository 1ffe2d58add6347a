"""Gate decisions recorded from real gated models, replayed in counting (mask source ``"real"``).

Blob masks (:mod:`benchmarks.masks`) are far more coherent than the decisions
trained gates make, so every count is also made on decisions recorded from
real models. :func:`record_decisions` runs a ``GatedModel`` once over a batch
of images and keeps, for every gated layer call, its geometry, its gate
settings and its decisions (bool ``[N, G, OH, OW]``, exactly as made: never
resampled to another shape, which would fake coherence). :func:`save_decisions`
and :func:`load_decisions` write and read them as a plain-tensor file (loaded
with ``weights_only=True``; written atomically), :func:`recorded_records`
counts them per layer for the first ``batch`` images, the way
:func:`benchmarks.counting.count_records` counts blob masks.

``python -m benchmarks.record_decisions`` (:mod:`benchmarks.record_decisions`)
records from the demo's trained student or a calibrated torchvision ResNet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gating import ChannelGatedConv2d, GatedModel, io
from gating.accounting import gated_count
from gating.recorder import CallRecorder
from gating.modes import train_mode
from kernels import GateSpec, conv_output_size, gate_group_count

from .counting import count_fields, kernel_work_fields, schedule_fields
from .shapes import ConvShape
from .sweep import ELEM_SIZE

__all__ = [
    "FORMAT",
    "RecordedLayer",
    "load_decisions",
    "model_layers",
    "record_decisions",
    "recorded_records",
    "save_decisions",
]

FORMAT = "gating-decisions"
"""Format marker of a decisions file."""

FORMAT_VERSION = 1

_GEOMETRY = ("in_channels", "out_channels", "kernel", "stride", "padding", "dilation", "height", "width")


@dataclass(frozen=True)
class RecordedLayer:
    """One gated conv call of a real model with the decisions it made.

    ``kernel``, ``stride``, ``padding``, ``dilation`` are ``(h, w)`` pairs;
    ``height``, ``width`` the input map; ``decisions`` bool ``[N, G, OH, OW]``
    on CPU with ``G = ceil(out_channels / spec.gate_group)``.

    Raises:
        ValueError: the decisions do not have the shape the layer's geometry
            and gate group give (the message names the layer and both shapes).
    """

    name: str
    in_channels: int
    out_channels: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    height: int
    width: int
    spec: GateSpec
    decisions: torch.Tensor

    def __post_init__(self) -> None:
        expected = self.decisions_shape(self.decisions.shape[0] if self.decisions.dim() else 0)
        if self.decisions.dtype != torch.bool or tuple(self.decisions.shape) != expected:
            raise ValueError(
                f"recorded decisions of layer {self.name} are {self.decisions.dtype} "
                f"{list(self.decisions.shape)}; the layer needs bool {list(expected)}"
            )

    @property
    def out_hw(self) -> tuple[int, int]:
        """``(OH, OW)`` of the layer's output."""
        return tuple(
            conv_output_size(size, k, s, p, d)
            for size, k, s, p, d in zip((self.height, self.width), self.kernel, self.stride, self.padding, self.dilation)
        )

    def decisions_shape(self, batch: int) -> tuple[int, int, int, int]:
        """``(N, G, OH, OW)`` of the layer's decisions for ``batch`` images."""
        return (batch, gate_group_count(self.out_channels, self.spec.gate_group), *self.out_hw)

    def module(self) -> ChannelGatedConv2d:
        """The bfloat16 gated conv of this geometry and spec, on CPU (what accounting counts from)."""
        return ChannelGatedConv2d(
            self.in_channels, self.out_channels, self.kernel, self.stride, self.padding, self.dilation,
            spec=self.spec, dtype=torch.bfloat16,
        ).eval()  # fmt: skip

    def shape(self) -> ConvShape:
        """The layer as a benchmark :class:`~benchmarks.shapes.ConvShape` (square kernel, stride, padding, dilation).

        Raises ``NotImplementedError`` naming the layer when one of them is not square.
        """
        pairs = {"kernel": self.kernel, "stride": self.stride, "padding": self.padding, "dilation": self.dilation}
        uneven = [f"{name}={value}" for name, value in pairs.items() if value[0] != value[1]]
        if uneven:
            raise NotImplementedError(f"layer {self.name}: the benchmark cases are square, got {', '.join(uneven)}")
        square = {name: value[0] for name, value in pairs.items()}
        return ConvShape(self.name, (self.name,), self.in_channels, self.out_channels, height=self.height,
                         width=self.width, **square)  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """Plain values and the decisions tensor, as stored in a decisions file."""
        out = {name: getattr(self, name) for name in ("name", *_GEOMETRY)}
        out.update({key: list(value) for key, value in out.items() if isinstance(value, tuple)})
        return out | {"spec": self.spec.to_dict(), "decisions": self.decisions}


@torch.no_grad()
def record_decisions(model: GatedModel, images: torch.Tensor, prefix: str = "") -> list[RecordedLayer]:
    """Run ``model`` in eval mode on ``images`` and record every gated layer call's decisions.

    Layers forced open are skipped (they ran dense). Names are ``prefix +``
    the layer's name in the model. The model's train/eval mode is restored.
    """
    with train_mode(model, False), CallRecorder(model) as recorder:
        model(images)
        calls = [call for call in recorder if isinstance(call.module, ChannelGatedConv2d)]
    return [
        RecordedLayer(
            prefix + call.name.removeprefix("model."), call.module.in_channels, call.module.out_channels,
            call.module.kernel_size, call.module.stride, call.module.padding, call.module.dilation,
            call.inp[2], call.inp[3], call.module.spec, call.decisions.detach().cpu().bool(),
        )  # fmt: skip
        for call in calls
        if call.decisions is not None
    ]


def save_decisions(layers: Sequence[RecordedLayer], path: str | Path, source: dict[str, Any]) -> None:
    """Write ``layers`` and a description of where they come from (``source``, plain values) atomically."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "source": dict(source),
        "layers": [layer.to_dict() for layer in layers],
    }
    io.atomic_save(payload, path)


def load_decisions(path: str | Path) -> tuple[list[RecordedLayer], dict[str, Any]]:
    """Read a file of :func:`save_decisions`: the layers and their ``source``.

    Raises:
        ValueError: the file is missing, unreadable, not a decisions file, of
            another version, or holds decisions whose shape does not match
            their layer (naming the file, the layer and both shapes).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"decisions file {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"decisions file {path} is truncated or not a safe torch file: {type(exc).__name__}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a decisions file (no {FORMAT!r} format marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"decisions file {path} has version {payload.get('format_version')!r}, not {FORMAT_VERSION}")
    layers = []
    for entry in payload["layers"]:
        fields = {key: tuple(value) if isinstance(value, list) else value for key, value in entry.items()}
        fields["spec"] = GateSpec(**entry["spec"])
        try:
            layers.append(RecordedLayer(**fields))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"decisions file {path}: {exc}") from exc
    return layers, payload["source"]


def model_layers(path: str | Path) -> tuple[str, list[RecordedLayer]]:
    """A decisions file's model name (its layers' names' first part, else the file's stem) and layers.

    Raises ``ValueError`` for a bad file (:func:`load_decisions`) and
    ``NotImplementedError`` for a layer the benchmark cases cannot build
    (non-square geometry, :meth:`RecordedLayer.shape`).
    """
    layers, _ = load_decisions(path)
    for layer in layers:
        layer.shape()
    return (layers[0].name.split(".")[0] if layers else Path(path).stem), layers


def recorded_records(
    layers: Iterable[RecordedLayer], batches: Sequence[int], model: str
) -> list[dict[str, object]]:
    """Counts of every recorded layer for the first ``batch`` images of each of ``batches``.

    Records have the fields of :func:`benchmarks.counting.count_records` with
    ``mask_source`` ``"real"``, ``layers`` 1 (each call is its own record)
    and ``target_density`` ``None`` (the gates chose it). A batch larger than
    the recording is skipped: decisions are never made up.
    """
    records = []
    for layer in layers:
        module = layer.module()
        recorded = layer.decisions.shape[0]
        for batch in batches:
            if batch > recorded:
                continue
            decisions = layer.decisions[:batch]
            inp = torch.Size((batch, layer.in_channels, layer.height, layer.width))
            out = torch.Size((batch, layer.out_channels, *layer.out_hw))
            count = gated_count(layer.name, module, inp, out, ELEM_SIZE, decisions)
            records.append(
                {
                    "model": model, "shape": layer.name, "layers": 1, "batch": batch, "mask_source": "real",
                    "target_density": None, **count_fields(count), **schedule_fields(module, decisions),
                    **kernel_work_fields(module, decisions),
                }
            )  # fmt: skip
    return records
