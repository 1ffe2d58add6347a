"""``python -m gating bench``: exact counts (any device) and CUDA timings of gated models built for inference.

* :class:`BenchConfig` (:mod:`.config`): every setting, checked up front.
* :func:`run_bench` (:mod:`.run`): prepare each model (:mod:`.subjects`),
  count each batch (:mod:`.counts`), time it on CUDA (:mod:`.speed`, with
  :mod:`.timing` and :mod:`.roofline`), write one JSON.
* :class:`BenchSetupError`: a setting a model cannot take.

What is measured and what is counted: ``docs/engine.md`` ("Benchmark and report").
"""

from .config import BENCH_DTYPES, DEFAULT_MODELS, DEFAULT_TARGET_FLOPS, BenchConfig, known_models
from .run import TIMING_NEEDS_CUDA, default_out, run_bench
from .subjects import BenchSetupError, bench_input, calibration_input

__all__ = [
    "BENCH_DTYPES",
    "DEFAULT_MODELS",
    "DEFAULT_TARGET_FLOPS",
    "TIMING_NEEDS_CUDA",
    "BenchConfig",
    "BenchSetupError",
    "bench_input",
    "calibration_input",
    "default_out",
    "known_models",
    "run_bench",
]
