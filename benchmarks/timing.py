"""Timing of the benchmark cases on CUDA, with their counts, checks and achieved rates.

``triton.testing.do_bench(fn, warmup, rep, quantiles=(0.5, 0.2, 0.8))``:
CUDA events around each call, L2 flushed before each call, the median and the
20/80 % quantiles in milliseconds. The first call (compilation, cuDNN
autotuning) is outside the timed region. Importable without CUDA or Triton;
only calling the functions needs them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gating.accounting import dense_count, gated_count
from gating.bench.timing import QUANTILES
from gating.bench.timing import time_ms as do_bench_ms

from .cases import ConvCase, make_case, recorded_case
from .checks import check_dense, check_gated
from .counting import case_key, count_case, count_fields, dense_fields
from .recorded import RecordedLayer
from .report import dense_rates, gated_rates
from .roofline import DevicePeaks, measure_peaks, roofline_fields
from .shapes import ConvShape
from .sweep import ELEM_SIZE, Sweep

__all__ = [
    "QUANTILES",
    "measure_dense",
    "measure_gated",
    "measure_recorded",
    "recorded_timing_records",
    "time_ms",
    "timing_records",
]


def time_ms(fn: Callable[[], object], sweep: Sweep) -> dict[str, float]:
    """``do_bench`` quantiles of ``fn`` in milliseconds (:func:`gating.bench.timing.time_ms`), keyed as in
    :data:`QUANTILES`, with the sweep's warm-up and repetition times."""
    return do_bench_ms(fn, sweep.warmup_ms, sweep.rep_ms)


def measure_dense(sweep: Sweep, shape: ConvShape, batch: int, density: float) -> dict[str, object]:
    """cuDNN and Triton dense timings and rates of (shape, batch), checked at ``sweep.check_batch``."""
    check_case = make_case(sweep, shape, batch, density, "check-dense") if batch == sweep.check_batch else None
    case = make_case(sweep, shape, batch, density, "time")
    return {**case_key(shape, batch), **_dense_timing(sweep, case, dense_fields(sweep, shape, batch), check_case)}


def _dense_timing(sweep: Sweep, case: ConvCase, counts: dict[str, int], check_case: ConvCase | None) -> dict:
    """Dense counts, cuDNN and Triton dense times and rates of ``case``; ``check_case`` checked if given."""
    check = check_dense(check_case) if check_case is not None else None
    cudnn = time_ms(case.cudnn, sweep)
    triton_dense = time_ms(case.triton_dense, sweep)
    return {
        **counts,
        "cudnn_ms": cudnn,
        "triton_dense_ms": triton_dense,
        "cudnn_rates": dense_rates(cudnn, counts["macs_dense"], counts["bytes_dense"]),
        "triton_dense_rates": dense_rates(triton_dense, counts["macs_dense"], counts["bytes_dense"]),
        "triton_dense_vs_cudnn": cudnn["median"] / triton_dense["median"],
        "check": check,
    }


def measure_gated(
    sweep: Sweep, shape: ConvShape, batch: int, density: float, dense: dict, peaks: DevicePeaks
) -> dict[str, object]:
    """Triton gated timing, rates, decisions, counts and kernel counters of one case.

    Checked at ``sweep.check_batch``; ``dense`` is the :func:`measure_dense`
    record of the same (shape, batch), the baseline of the speedups; ``peaks``
    the device's measured peaks, for the roofline-ideal speedup.
    """
    check_case = make_case(sweep, shape, batch, density, f"check-{density}") if batch == sweep.check_batch else None
    case = make_case(sweep, shape, batch, density, "time")
    record = _gated_timing(sweep, case, dense, peaks, check_case, lambda decisions: count_fields(
        count_case(sweep, shape, batch, decisions)))  # fmt: skip
    return {**case_key(shape, batch), "target_density": density, **record}


def _gated_timing(
    sweep: Sweep, case: ConvCase, dense: dict, peaks: DevicePeaks, check_case: ConvCase | None,
    count: Callable[[torch.Tensor], dict[str, object]],
) -> dict[str, object]:  # fmt: skip
    """Gated time, rates, counts (``count`` of the kernel's decisions), counters and speedups of ``case``."""
    check = check_gated(check_case) if check_case is not None else None
    _, decisions, stats = case.triton_gated(return_stats=True)
    counts = count(decisions)
    kernel = stats.to_dict()
    kernel_macs = kernel["base_macs"] + kernel["conditional_macs"]
    gated = time_ms(case.triton_gated, sweep)
    speedup = dense["cudnn_ms"]["median"] / gated["median"]
    roofline = roofline_fields(
        counts["macs_dense"], counts["bytes_dense"], counts["macs_executed"], counts["bytes_executed"], peaks
    )
    return {
        "decisions_match_mask": torch.equal(decisions, case.inputs.decisions),
        **counts,
        "kernel_stats": kernel | {"macs": kernel_macs},
        "triton_gated_ms": gated,
        "triton_gated_rates": gated_rates(gated, counts["macs_executed"], counts["bytes_executed"], kernel_macs),
        "speedup": speedup,
        "speedup_over_ideal": speedup / counts["ideal_speedup"],
        **roofline,
        "speedup_over_roofline_ideal": speedup / roofline["roofline_ideal_speedup"],
        "gated_over_triton_dense": gated["median"] / dense["triton_dense_ms"]["median"],
        "check": check,
    }


def measure_recorded(sweep: Sweep, layer: RecordedLayer, batch: int, model: str, peaks: DevicePeaks) -> dict:
    """Dense and gated timings of a recorded layer on its first ``batch`` images' real decisions (given to the kernel).

    One record with the dense fields of :func:`measure_dense` and the gated
    ones of :func:`measure_gated`, ``mask_source`` ``"real"``, checked at
    ``sweep.check_batch`` on a second case with fresh inputs.
    """
    checked = batch == sweep.check_batch
    check_case = recorded_case(sweep, layer, batch, "check") if checked else None
    case = recorded_case(sweep, layer, batch, "time")
    module = layer.module()
    inp, out = case.shape.input_shape(batch), case.shape.output_shape(batch)
    plain = dense_count(layer.name, module, inp, out, ELEM_SIZE)
    dense = _dense_timing(sweep, case, {"macs_dense": plain.macs_dense, "bytes_dense": plain.bytes_dense}, check_case)

    def count(decisions: torch.Tensor) -> dict[str, object]:
        decisions = decisions.cpu()
        return count_fields(gated_count(layer.name, module, inp, out, ELEM_SIZE, decisions))

    gated = _gated_timing(sweep, case, dense, peaks, check_case, count)
    key = {"model": model, "shape": layer.name, "layers": 1, "batch": batch, "mask_source": "real"}
    dense_only = {name: dense[name] for name in ("cudnn_ms", "triton_dense_ms", "cudnn_rates", "triton_dense_rates",
                                                 "triton_dense_vs_cudnn")}  # fmt: skip
    return key | {"target_density": None} | dense_only | gated | {"dense_check": dense["check"]}


def timing_records(sweep: Sweep, shapes: Sequence[ConvShape]) -> tuple[list[dict], list[dict], DevicePeaks]:
    """Dense records per (shape, batch), gated records per (shape, batch, density), and the peaks they used."""
    from tqdm import tqdm

    dense_records, gated_records = [], []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        peaks = measure_peaks(lambda fn: time_ms(fn, sweep)["median"])
        with tqdm(total=len(shapes) * len(sweep.batches) * len(sweep.densities), unit="case") as bar:
            for shape in shapes:
                for batch in sweep.batches:
                    bar.set_postfix_str(f"{shape.name} b{batch}")
                    dense = measure_dense(sweep, shape, batch, sweep.densities[0])
                    dense_records.append(dense)
                    for density in sweep.densities:
                        gated_records.append(measure_gated(sweep, shape, batch, density, dense, peaks))
                        bar.update()
                    torch.cuda.empty_cache()
    return dense_records, gated_records, peaks


def recorded_timing_records(
    sweep: Sweep, recorded: Sequence[tuple[str, Sequence[RecordedLayer]]], peaks: DevicePeaks
) -> list[dict]:
    """:func:`measure_recorded` of every recorded layer of every ``(model, layers)`` at the sweep's batches.

    A batch larger than the recording is skipped (decisions are never made up).
    """
    from tqdm import tqdm

    jobs = [
        (model, layer, batch)
        for model, layers in recorded
        for layer in layers
        for batch in sweep.batches
        if batch <= layer.decisions.shape[0]
    ]
    records = []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        for model, layer, batch in tqdm(jobs, unit="case", desc="real decisions"):
            records.append(measure_recorded(sweep, layer, batch, model, peaks))
            torch.cuda.empty_cache()
    return records
