"""The device's measured peaks and roofline times: :mod:`gating.bench.roofline`, where they live so that
``python -m gating bench`` uses the same rule as the kernel sweeps (re-exported here for them)."""

from gating.bench.roofline import DevicePeaks, measure_peaks, roofline_fields, roofline_ms

__all__ = ["DevicePeaks", "measure_peaks", "roofline_fields", "roofline_ms"]
