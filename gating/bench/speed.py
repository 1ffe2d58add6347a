"""CUDA latency and throughput of a benched model in four forms, and the roofline ideal of its counts.

Per model, built once and timed at every batch (:func:`gating.bench.timing.time_ms`,
median and 20/80 % quantiles over the repetitions, CUDA events, warm-up):

* ``built``: ``gating.engine.build(gated, dtype=, device=)`` (registered ops,
  BatchNorm folded, residual and ReLU fused);
* ``built_cuda_graph``: the same built with ``cuda_graph=True``, at batch 1 only;
* ``cudnn_eager``: the dense baseline in the bench dtype, channels_last,
  ``torch.no_grad()``, ``cudnn.benchmark`` on;
* ``compiled``: ``torch.compile(dense, mode="max-autotune")`` of that baseline.

Each form's first call at a batch shape (compilation, autotuning, graph
capture) runs before the timing, and its wall time is recorded as
``first_call_s``.

A form that fails (a capture or compilation error) is recorded as
``{"error": "<type>: <message>"}`` instead of its times; the other forms are
still timed. Throughput is ``batch / median seconds`` (images/s).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..engine import build
from .config import BenchConfig
from .roofline import DevicePeaks, measure_peaks, roofline_fields
from .subjects import Subject
from .timing import time_ms

__all__ = ["FORMS", "Forms", "device_peaks", "model_forms", "roofline", "time_batch"]

FORMS = ("built", "built_cuda_graph", "cudnn_eager", "compiled")
"""The timed forms of a model, in the order of every timing record."""

Forms = dict[str, Callable[[torch.Tensor], torch.Tensor] | str]
"""A model's forms by name: a callable taking the input batch, or the error that building it raised."""


def _error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def model_forms(subject: Subject, config: BenchConfig) -> Forms:
    """The :data:`FORMS` of ``subject`` in the bench dtype on the bench device (module docstring)."""
    dtype, device = config.torch_dtype, torch.device(config.device)
    forms: Forms = {}
    for name, graph in (("built", False), ("built_cuda_graph", True)):
        try:
            forms[name] = build(subject.gated, dtype=dtype, device=device, cuda_graph=graph)
        except (RuntimeError, ValueError, NotImplementedError, TypeError) as error:
            forms[name] = _error(error)
    eager = copy.deepcopy(subject.dense).to(device=device, dtype=dtype, memory_format=torch.channels_last).eval()
    forms["cudnn_eager"] = eager
    forms["compiled"] = torch.compile(eager, mode="max-autotune")
    return forms


def device_peaks(config: BenchConfig) -> DevicePeaks:
    """The device's bf16 matmul and copy peaks (:func:`gating.bench.roofline.measure_peaks`), timed like the models."""
    return measure_peaks(lambda fn: time_ms(fn, config.warmup_ms, config.rep_ms)["median"], config.device)


def roofline(counts: dict[str, Any], peaks: DevicePeaks) -> dict[str, Any]:
    """Roofline ideal speedups (dense baseline over executed) of a counted batch, in total and per layer."""
    total = roofline_fields(counts["macs_dense"], counts["bytes_dense"], counts["macs_executed"],
                            counts["bytes_executed"], peaks)
    layers = [roofline_fields(layer["macs_dense"], layer["bytes_dense"], layer["macs_executed"],
                              layer["bytes_executed"], peaks)["roofline_ideal_speedup"] for layer in counts["layers"]]
    return total | {"layers_roofline_ideal_speedup": layers}


@torch.no_grad()
def _time_form(form: nn.Module, x: torch.Tensor, batch: int, config: BenchConfig) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        form(x)  # first call: compilation, autotuning, graph capture
        torch.cuda.synchronize()
        first_s = time.perf_counter() - started
        times = time_ms(lambda: form(x), config.warmup_ms, config.rep_ms)
    except Exception as error:  # noqa: BLE001 - any failure of one form is recorded, the others still run
        return {"error": _error(error)}
    return {"ms": times, "images_per_s": batch / (times["median"] * 1e-3), "first_call_s": first_s}


def time_batch(forms: Forms, x: torch.Tensor, config: BenchConfig, counts: dict[str, Any]) -> dict[str, Any]:
    """Times of every form on ``x`` ``[N, C, S, S]`` (bench dtype and device), and the measured speedups.

    ``speedup_over_cudnn`` / ``speedup_over_compiled``: the dense form's
    median over the built model's; ``ideal_speedup`` the MAC ratio of
    ``counts`` (dense baseline over executed), ``speedup_over_ideal`` the
    first over it. ``built_cuda_graph`` runs at batch 1 only (``None`` otherwise).
    """
    batch = x.shape[0]
    x = x.contiguous(memory_format=torch.channels_last)
    record: dict[str, Any] = {}
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        for name in FORMS:
            form = forms[name]
            if name == "built_cuda_graph" and batch != 1:
                record[name] = None
            elif isinstance(form, str):
                record[name] = {"error": form}
            else:
                record[name] = _time_form(form, x, batch, config)
    built = _median(record["built"])
    ideal = record["ideal_speedup"] = counts["macs_reduction"]
    for baseline in ("cudnn_eager", "compiled"):
        reference = _median(record[baseline])
        speedup = reference / built if reference is not None and built is not None else None
        record[f"speedup_over_{baseline.split('_')[0]}"] = speedup
    cudnn = record["speedup_over_cudnn"]
    record["speedup_over_ideal"] = None if cudnn is None else cudnn / ideal
    return record


def _median(result: dict[str, Any] | None) -> float | None:
    return None if result is None or "ms" not in result else result["ms"]["median"]
