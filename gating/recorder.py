"""Forward hooks that record every counted layer call of a model, and the counts of a recorded forward.

``CallRecorder`` hooks the layers :mod:`gating.accounting` counts (convs,
linears, both gate kinds; a runtime gate's own conv and predictor are counted
by the gate, not hooked) and keeps one :class:`RecordedCall` per call, with
the decisions or masks the gate made; ``report()`` turns the calls into a
:class:`gating.accounting.Report`. ``count_model`` is the one-call form
(``docs/design.md#accounting``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from .accounting import COUNTED_TYPES, LayerCount, Report, dense_count, gated_count, runtime_count
from .gates import ChannelGatedConv2d, RuntimeGatedConv2d

__all__ = ["CallRecorder", "RecordedCall", "count_model"]


@dataclass
class RecordedCall:
    """One call of a counted layer: its shapes, activation element size and (gated) decisions."""

    name: str
    module: nn.Module
    inp: torch.Size
    out: torch.Size
    elem: int
    decisions: torch.Tensor | None  # gated layers that were not forced open; runtime gates: masks [N, C_out]
    active_inputs: torch.Tensor | None = None  # runtime gates: input channels not all zero [N, C_in]


class CallRecorder:
    """Forward hooks on every counted layer of a model, recording each call.

    ``calls`` holds the calls since the last ``clear()`` in execution order (a
    module called twice appears twice). Use as a context manager to remove the
    hooks on exit, or call ``remove()``.
    """

    def __init__(self, model: nn.Module) -> None:
        self.calls: list[RecordedCall] = []
        self._handles = []
        inside_runtime_gates: list[str] = []
        for name, module in model.named_modules():
            if any(name.startswith(prefix) for prefix in inside_runtime_gates):
                continue  # the gate counts its own conv and predictor
            if isinstance(module, RuntimeGatedConv2d):
                inside_runtime_gates.append(name + ".")
            if isinstance(module, COUNTED_TYPES):
                # A bound method (not a closure): ``copy.deepcopy`` of the model then hooks the copy's recorder.
                self._handles.append(module.register_forward_hook(functools.partial(self._record, name or type(module).__name__)))

    def _record(self, name: str, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        x = args[0]
        decisions = active = None
        if isinstance(module, ChannelGatedConv2d) and not module.last_forced_open:
            decisions = module.last_decisions
        if isinstance(module, RuntimeGatedConv2d):
            decisions, active = module.last_masks, module.last_active_inputs
        self.calls.append(RecordedCall(name, module, x.shape, output.shape, output.element_size(), decisions, active))

    def __getstate__(self) -> dict:
        # A copy (``copy.deepcopy`` of the model) starts without calls: they hold the original's modules and tensors.
        return {**self.__dict__, "calls": []}

    def clear(self) -> None:
        self.calls.clear()

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "CallRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __iter__(self) -> Iterator[RecordedCall]:
        return iter(self.calls)

    def report(self) -> Report:
        """Counts of the recorded calls (gated layers from their last decisions)."""
        return Report([self.count(call) for call in self.calls])

    @staticmethod
    def count(call: RecordedCall) -> LayerCount:
        """Counts of one recorded call."""
        if isinstance(call.module, ChannelGatedConv2d):
            return gated_count(call.name, call.module, call.inp, call.out, call.elem, call.decisions)
        if isinstance(call.module, RuntimeGatedConv2d):
            return runtime_count(call.name, call.module, call.inp, call.out, call.elem, call.decisions,
                                 call.active_inputs)
        return dense_count(call.name, call.module, call.inp, call.out, call.elem)


@torch.no_grad()
def count_model(model: nn.Module, example: torch.Tensor) -> Report:
    """Run ``model(example)`` once and return its counts (the model's mode is kept)."""
    with CallRecorder(model) as recorder:
        model(example)
        return recorder.report()
