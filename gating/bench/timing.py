"""CUDA timing of one callable: ``triton.testing.do_bench`` quantiles in milliseconds.

``do_bench(fn, warmup, rep, quantiles=(0.5, 0.2, 0.8))`` runs ``fn`` for
about ``warmup`` ms untimed, then as many times as fit in about ``rep`` ms,
each call between two CUDA events, with the L2 cache flushed before each
call; the first call (compilation, cuDNN autotuning, a CUDA graph capture)
is part of the warm-up, never of the timed region. The kernel sweeps
(:mod:`benchmarks.timing`) and ``python -m gating bench`` both time with
:func:`time_ms`. Importable without CUDA or Triton; only calling it needs them.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["QUANTILES", "time_ms"]

QUANTILES = {"median": 0.5, "p20": 0.2, "p80": 0.8}
"""Time quantiles of every timed record: their names in the record and their values."""


def time_ms(fn: Callable[[], object], warmup_ms: float, rep_ms: float) -> dict[str, float]:
    """``do_bench`` quantiles of ``fn`` in milliseconds, keyed as in :data:`QUANTILES`."""
    import triton.testing

    times = triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, quantiles=list(QUANTILES.values()))
    return dict(zip(QUANTILES, times))
