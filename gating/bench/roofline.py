"""The device's measured peaks and the roofline time they imply for a count of MACs and bytes.

A layer cannot run faster than its arithmetic at the device's matmul peak or
its memory traffic at the device's copy bandwidth, whichever is slower:
``roofline_ms = max(2 * macs / peak_flops, bytes / peak_bandwidth)``. The
ideal speedup of skipping work is then ``roofline_ms(dense) /
roofline_ms(executed)``, which for a memory-bound layer is far below the MAC
ratio. Both peaks are measured in the same run as the kernels
(:func:`measure_peaks`), never taken from a data sheet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

__all__ = ["DevicePeaks", "measure_peaks", "roofline_fields", "roofline_ms"]


@dataclass(frozen=True)
class DevicePeaks:
    """Measured peaks: bf16 matmul TFLOP/s (``2 * MACs / s * 1e-12``) and device-to-device copy GB/s (read + write)."""

    matmul_tflops: float
    copy_gbps: float

    def __post_init__(self) -> None:
        if not (self.matmul_tflops > 0 and self.copy_gbps > 0):
            raise ValueError(f"device peaks must be positive, got {self}")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def measure_peaks(
    time_ms: Callable[[Callable[[], object]], float], device: torch.device | str = "cuda", size: int = 8192,
    copy_bytes: int = 1 << 30,
) -> DevicePeaks:  # fmt: skip
    """Peaks of ``device``: a ``size``-cubed bf16 matmul and a copy of ``copy_bytes``, timed by ``time_ms`` (ms)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    matmul_ms = time_ms(lambda: torch.mm(a, b))
    src = torch.empty(copy_bytes // 2, device=device, dtype=torch.bfloat16).uniform_()
    dst = torch.empty_like(src)
    copy_ms = time_ms(lambda: dst.copy_(src))
    return DevicePeaks(2 * size**3 / matmul_ms * 1e-9, 2 * copy_bytes / copy_ms * 1e-6)


def roofline_ms(macs: float, bytes_: float, peaks: DevicePeaks) -> float:
    """``max(2 * macs / peak TFLOP/s, bytes / peak GB/s)`` in milliseconds."""
    return max(2 * macs / peaks.matmul_tflops * 1e-9, bytes_ / peaks.copy_gbps * 1e-6)


def roofline_fields(
    macs_dense: int, bytes_dense: int, macs_executed: int, bytes_executed: int, peaks: DevicePeaks
) -> dict[str, float]:
    """Roofline times of the dense and the executed work, and their ratio, the roofline-ideal speedup."""
    dense = roofline_ms(macs_dense, bytes_dense, peaks)
    executed = roofline_ms(macs_executed, bytes_executed, peaks)
    return {"roofline_dense_ms": dense, "roofline_executed_ms": executed, "roofline_ideal_speedup": dense / executed}
