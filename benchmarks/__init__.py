"""Benchmarks of the gated convolution: exact counts on any machine, timings on CUDA.

* :mod:`benchmarks.run_gpu`: the command (``python -m benchmarks.run_gpu``).
* :mod:`benchmarks.sweep`: what a run sweeps, with its defaults (:class:`~benchmarks.sweep.Sweep`).
* :mod:`benchmarks.shapes`, :mod:`benchmarks.masks`: the conv shapes and the gate decisions of a case.
* :mod:`benchmarks.counting`: MACs and bytes of each case (``gating.accounting``).
* :mod:`benchmarks.cases`, :mod:`benchmarks.checks`, :mod:`benchmarks.timing`: GPU inputs,
  float64 checks and ``do_bench`` timings.
* :mod:`benchmarks.report`: achieved rates, the target summary and printed tables.
* ``bench_*.py``: the pytest benchmarks and tests of all of the above.
"""
