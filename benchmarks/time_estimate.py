"""Roofline-estimated time of the gated kernels against the dense kernel, for any device, from exact counts.

A layer cannot run faster than its arithmetic at the device's matmul peak
``P`` (FLOP/s) or its memory traffic at the device's bandwidth ``B``
(bytes/s), whichever is slower: ``t = max(2 * macs / P, bytes / B)``. In
units of ``bytes / B`` that is ``max(2 * macs / balance, bytes)`` with the
machine balance ``balance = P / B`` (FLOP per byte), so the ratio of two
networks' estimated times depends on the device only through its balance.
:func:`time_ratio` sums each layer's estimate over the network for the gated
and the dense kernels (their tile-rounded MACs and issued bytes, counted by
the kernels' own rules: ``kernels.gated_kernel_counters`` /
``kernels.gated_kernel_bytes`` and the dense tiling);
:func:`time_ratio_bounds` gives it at the compute-bound and memory-bound
limits and its worst case over every balance, which needs no device and
no peak taken from a data sheet. With peaks measured on a device
(:class:`gating.bench.roofline.DevicePeaks`), :func:`balance_of` gives that
device's balance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["BALANCES", "balance_of", "time_ratio", "time_ratio_bounds"]

BALANCES = tuple(10 ** (k / 20) for k in range(-40, 101))
"""Machine balances (FLOP per byte) the worst case is taken over: 0.01 to 1e5, 20 per decade.

Below 0.01 every layer is compute-bound and above 1e5 every layer is
memory-bound for the shapes counted here, so the two limits are reached too."""

GATED = ("kernel_macs", "kernel_bytes")
DENSE = ("dense_kernel_macs", "dense_kernel_bytes")


def balance_of(matmul_tflops: float, copy_gbps: float) -> float:
    """A device's machine balance in FLOP per byte from its measured peaks (TFLOP/s and GB/s)."""
    if not (matmul_tflops > 0 and copy_gbps > 0):
        raise ValueError(f"peaks must be positive, got {matmul_tflops} TFLOP/s and {copy_gbps} GB/s")
    return matmul_tflops * 1e12 / (copy_gbps * 1e9)


def _network_time(layers: Sequence[dict[str, Any]], fields: tuple[str, str], balance: float) -> float:
    macs, bytes_ = fields
    return sum(layer.get("layers", 1) * max(2 * layer[macs] / balance, layer[bytes_]) for layer in layers)


def time_ratio(layers: Sequence[dict[str, Any]], balance: float) -> float:
    """Estimated network time of the gated kernels over the dense kernel's at machine ``balance`` (FLOP/byte).

    ``layers``: one record per layer with ``kernel_macs``, ``kernel_bytes``,
    ``dense_kernel_macs``, ``dense_kernel_bytes`` and optionally ``layers``
    (how many layers have that record; default 1).
    """
    if not balance > 0:
        raise ValueError(f"balance must be a positive FLOP/byte ratio, got {balance}")
    if not layers:
        raise ValueError("time_ratio needs at least one layer record")
    return _network_time(layers, GATED, balance) / _network_time(layers, DENSE, balance)


def time_ratio_bounds(layers: Sequence[dict[str, Any]]) -> dict[str, float]:
    """``compute_bound``, ``memory_bound`` and ``worst`` (largest over :data:`BALANCES`) estimated time ratios.

    ``compute_bound`` is the ratio of tile-rounded MACs, ``memory_bound`` the
    ratio of issued bytes; a setting with the lower ``worst`` is estimated
    faster on every device, whatever its balance.
    """
    if not layers:
        raise ValueError("time_ratio_bounds needs at least one layer record")

    def total(field: str) -> float:
        return sum(layer.get("layers", 1) * layer[field] for layer in layers)

    return {
        "compute_bound": total(GATED[0]) / total(DENSE[0]),
        "memory_bound": total(GATED[1]) / total(DENSE[1]),
        "worst": max(time_ratio(layers, balance) for balance in BALANCES),
    }
