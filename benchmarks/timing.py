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

from .cases import make_case
from .checks import check_dense, check_gated
from .counting import case_key, count_case, count_fields, dense_fields
from .report import dense_rates, gated_rates
from .shapes import ConvShape
from .sweep import Sweep

__all__ = ["QUANTILES", "measure_dense", "measure_gated", "time_ms", "timing_records"]

QUANTILES = {"median": 0.5, "p20": 0.2, "p80": 0.8}
"""Time quantiles of every timed record: their names in the record and their values."""


def time_ms(fn: Callable[[], object], sweep: Sweep) -> dict[str, float]:
    """``do_bench`` quantiles of ``fn`` in milliseconds, keyed as in :data:`QUANTILES`."""
    import triton.testing

    times = triton.testing.do_bench(fn, warmup=sweep.warmup_ms, rep=sweep.rep_ms, quantiles=list(QUANTILES.values()))
    return dict(zip(QUANTILES, times))


def measure_dense(sweep: Sweep, shape: ConvShape, batch: int, density: float) -> dict[str, object]:
    """cuDNN and Triton dense timings and rates of (shape, batch), checked at ``sweep.check_batch``."""
    check = None
    if batch == sweep.check_batch:
        check = check_dense(make_case(sweep, shape, batch, density, "check-dense"))
    case = make_case(sweep, shape, batch, density, "time")
    counts = dense_fields(sweep, shape, batch)
    cudnn = time_ms(case.cudnn, sweep)
    triton_dense = time_ms(case.triton_dense, sweep)
    return {
        **case_key(shape, batch),
        **counts,
        "cudnn_ms": cudnn,
        "triton_dense_ms": triton_dense,
        "cudnn_rates": dense_rates(cudnn, counts["macs_dense"], counts["bytes_dense"]),
        "triton_dense_rates": dense_rates(triton_dense, counts["macs_dense"], counts["bytes_dense"]),
        "triton_dense_vs_cudnn": cudnn["median"] / triton_dense["median"],
        "check": check,
    }


def measure_gated(sweep: Sweep, shape: ConvShape, batch: int, density: float, dense: dict) -> dict[str, object]:
    """Triton gated timing, rates, decisions, counts and kernel counters of one case.

    Checked at ``sweep.check_batch``; ``dense`` is the :func:`measure_dense`
    record of the same (shape, batch), the baseline of the speedups.
    """
    check = None
    if batch == sweep.check_batch:
        check = check_gated(make_case(sweep, shape, batch, density, f"check-{density}"))
    case = make_case(sweep, shape, batch, density, "time")
    _, decisions, stats = case.triton_gated(return_stats=True)
    counts = count_fields(count_case(sweep, shape, batch, decisions))
    kernel = stats.to_dict()
    kernel_macs = kernel["base_macs"] + kernel["conditional_macs"]
    gated = time_ms(case.triton_gated, sweep)
    speedup = dense["cudnn_ms"]["median"] / gated["median"]
    return {
        **case_key(shape, batch),
        "target_density": density,
        "decisions_match_mask": torch.equal(decisions, case.inputs.decisions),
        **counts,
        "kernel_stats": kernel | {"macs": kernel_macs},
        "triton_gated_ms": gated,
        "triton_gated_rates": gated_rates(gated, counts["macs_executed"], counts["bytes_executed"], kernel_macs),
        "speedup": speedup,
        "speedup_over_ideal": speedup / counts["ideal_speedup"],
        "gated_over_triton_dense": gated["median"] / dense["triton_dense_ms"]["median"],
        "check": check,
    }


def timing_records(sweep: Sweep, shapes: Sequence[ConvShape]) -> tuple[list[dict], list[dict]]:
    """Dense records per (shape, batch) and gated records per (shape, batch, density), with a progress bar."""
    from tqdm import tqdm

    dense_records, gated_records = [], []
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False, allow_tf32=True):
        with tqdm(total=len(shapes) * len(sweep.batches) * len(sweep.densities), unit="case") as bar:
            for shape in shapes:
                for batch in sweep.batches:
                    bar.set_postfix_str(f"{shape.name} b{batch}")
                    dense = measure_dense(sweep, shape, batch, sweep.densities[0])
                    dense_records.append(dense)
                    for density in sweep.densities:
                        gated_records.append(measure_gated(sweep, shape, batch, density, dense))
                        bar.update()
                    torch.cuda.empty_cache()
    return dense_records, gated_records
