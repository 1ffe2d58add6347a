"""Launch configurations of the dense conv kernel (:func:`kernels.conv2d.conv2d`): candidates, heuristic, check, choice.

Selection rule (:func:`select_tiling`): on a CUDA device (not under the Triton
interpreter) the first call for a shape key (:func:`tuning_key`: output pixels
rounded up to a power of two, C_in, C_out, kernel, stride, dilation, dtype,
device) times every candidate that fits the shape (:func:`candidates`) with
CUDA events and caches the fastest for that key; later calls of the key use
the cached choice. Nothing is timed while the current stream is being captured
into a CUDA graph: a key seen before capture uses its cached choice, an unseen
one the heuristic. On CPU (interpreter), ``meta`` and every other device the
heuristic (:func:`conv_tiling`) is used, untimed and uncached.

Split-K (``split_k > 1``): when the output tiles fill less than two waves of
the device's SMs, the K loop is split in ``split_k`` contiguous ranges of K
steps; each writes float32 partial sums to a workspace and a second kernel
sums them in a fixed order (deterministic) and applies the epilogue.
Pure host code: no Triton kernels here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._common import gemm_tile_mk, interpreting, next_power_of_2
from ._validation import (
    ConvGeometry,
    check_tile_block,
    check_tile_elements,
    check_tile_fields,
    check_tile_launch,
    describe,
)

__all__ = [
    "CANDIDATES", "ConvTiling", "candidates", "check_tiling", "clear_choices", "conv_tiling", "heuristic_tiling",
    "select_tiling", "split_k_rule",
]  # fmt: skip

MAX_SPLIT_K = 4  # more splits cost more workspace traffic than the extra wave buys
MIN_STEPS_PER_SPLIT = 4  # K steps (one BLOCK_K-wide dot each) a split must keep at least
MAX_BLOCK_K = 128
TIMING_REPS = 5  # timed launches per candidate, after one untimed warm-up (compile) launch


@dataclass(frozen=True)
class ConvTiling:
    """One launch configuration of ``_conv2d_kernel``.

    ``block_m`` output pixels x ``block_n`` output channels per program, K in
    ``block_k``-channel steps (one filter tap per step); ``num_warps`` and
    ``num_stages`` (software-pipeline depth) as Triton takes them;
    ``group_m``: pixel tiles per group of the grouped program order (1 is
    channel-block-fastest); ``split_k``: programs per output tile, each over a
    contiguous range of the ``kh*kw*ceil(C_in/block_k)`` K steps.
    """

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8
    split_k: int = 1


# Hopper-oriented (wgmma needs 64-row warpgroup tiles); clamped to each shape by :func:`candidates`.
CANDIDATES: tuple[ConvTiling, ...] = (
    ConvTiling(128, 128, 32, 8, 3),
    ConvTiling(128, 128, 64, 8, 3),
    ConvTiling(128, 256, 64, 8, 3),
    ConvTiling(128, 64, 32, 4, 4),
    ConvTiling(128, 64, 64, 4, 3),
    ConvTiling(64, 128, 32, 4, 4),
    ConvTiling(64, 128, 64, 4, 3),
    ConvTiling(64, 64, 64, 4, 3),
)


def k_step_count(geom: ConvGeometry, block_k: int) -> int:
    """K steps of one output tile: ``kh * kw * ceil(C_in / block_k)``."""
    return geom.kernel[0] * geom.kernel[1] * math.ceil(geom.in_channels / block_k)


def split_k_rule(tiles: int, k_steps: int, sm_count: int | None) -> int:
    """Splits of K for ``tiles`` output tiles on ``sm_count`` SMs (1 when unknown or at least two waves).

    Enough splits for two waves, at most :data:`MAX_SPLIT_K`, each split at
    least :data:`MIN_STEPS_PER_SPLIT` of the ``k_steps`` K steps.
    """
    if sm_count is None or tiles >= 2 * sm_count:
        return 1
    return max(1, min(MAX_SPLIT_K, math.ceil(2 * sm_count / tiles), k_steps // MIN_STEPS_PER_SPLIT))


def conv_tiling(
    pixels: int, in_channels: int, out_channels: int, *, taps: int = 1, sm_count: int | None = None
) -> ConvTiling:
    """Heuristic tiles for an ``M=pixels``, ``N=out_channels`` implicit GEMM over ``in_channels`` per tap.

    ``BLOCK_M``/``BLOCK_K`` from :func:`gemm_tile_mk` over C_in; ``BLOCK_N``
    the next power of two of C_out in [16, 128]. Eight warps for 128x128
    tiles, four otherwise; three stages; grouped order over 8 pixel tiles.
    ``split_k`` from :func:`split_k_rule` over ``taps*ceil(C_in/BLOCK_K)`` K
    steps when ``sm_count`` is given (1 otherwise).
    """
    block_m, block_k = gemm_tile_mk(pixels, in_channels)
    block_n = min(128, max(16, next_power_of_2(out_channels)))
    tiles = math.ceil(pixels / block_m) * math.ceil(out_channels / block_n)
    split_k = split_k_rule(tiles, taps * math.ceil(in_channels / block_k), sm_count)
    return ConvTiling(block_m, block_n, block_k, 8 if block_m * block_n >= 128 * 128 else 4, 3, 8, split_k)


def heuristic_tiling(geom: ConvGeometry, sm_count: int | None = None) -> ConvTiling:
    """:func:`conv_tiling` for a checked conv geometry."""
    taps = geom.kernel[0] * geom.kernel[1]
    return conv_tiling(geom.pixels, geom.in_channels, geom.out_channels, taps=taps, sm_count=sm_count)


def shared_bytes(tiling: ConvTiling, element_size: int) -> int:
    """Shared memory of the pipelined A and B tiles: ``num_stages * (BM*BK + BK*BN) * element_size`` bytes."""
    return tiling.num_stages * (tiling.block_m + tiling.block_n) * tiling.block_k * element_size


def candidates(
    geom: ConvGeometry, dtype: torch.dtype, sm_count: int | None = None, shared_limit: int | None = None
) -> list[ConvTiling]:
    """The :data:`CANDIDATES` and the heuristic (:func:`heuristic_tiling`) fitted to a shape, without duplicates.

    Each candidate's ``block_k`` is clamped to ``max(16, next_power_of_2(C_in))``
    (64 only where C_in > 32), ``block_n`` to ``max(16, next_power_of_2(C_out))``
    and ``block_m`` to ``max(64, next_power_of_2(pixels))``; those whose
    pipelined tiles exceed ``shared_limit`` bytes (when given) are dropped. With
    ``sm_count``, a candidate whose tiles fill less than two waves is listed
    once with ``split_k`` 1 and once with :func:`split_k_rule`'s split.
    """
    fitted: list[ConvTiling] = []
    cap_k = max(16, next_power_of_2(geom.in_channels))
    cap_n = max(16, next_power_of_2(geom.out_channels))
    cap_m = max(64, next_power_of_2(geom.pixels))
    element_size = dtype.itemsize
    for base in (*CANDIDATES, heuristic_tiling(geom)):
        tiling = dataclasses.replace(
            base, block_m=min(base.block_m, cap_m), block_n=min(base.block_n, cap_n), block_k=min(base.block_k, cap_k)
        )
        if shared_limit is not None and shared_bytes(tiling, element_size) > shared_limit:
            continue
        tiles = math.ceil(geom.pixels / tiling.block_m) * math.ceil(geom.out_channels / tiling.block_n)
        split_k = split_k_rule(tiles, k_step_count(geom, tiling.block_k), sm_count)
        fitted += [tiling] + ([dataclasses.replace(tiling, split_k=split_k)] if split_k > 1 else [])
    return list(dict.fromkeys(fitted))


def check_tiling(tiling: object, geom: ConvGeometry) -> None:
    """Raise unless ``tiling`` is a :class:`ConvTiling` the kernel can run on ``geom``.

    ``TypeError`` for another type or a non-int field; ``ValueError`` (naming
    ``tiling`` and the reason) for a block size that is not a power of two, a
    block under 16 (``tl.dot``), ``block_k`` over 128 or another block over 256, ``block_m*block_n`` over
    :data:`kernels._validation.MAX_TILE_ELEMENTS`, ``num_warps`` not in {1, 2, 4, 8},
    ``num_stages`` or ``group_m`` under 1, ``split_k`` under 1 or over the
    shape's K steps (:func:`k_step_count`).
    """
    if not isinstance(tiling, ConvTiling):
        raise TypeError(f"tiling must be a kernels.conv_tuning.ConvTiling or None, got {describe(tiling)}")
    check_tile_fields(tiling)
    for name in ("block_m", "block_n", "block_k"):
        check_tile_block(f"tiling: {name}", getattr(tiling, name), MAX_BLOCK_K if name == "block_k" else 256)
    check_tile_elements("tiling", tiling.block_m, tiling.block_n)
    check_tile_launch("tiling", tiling.num_warps)
    for name in ("num_stages", "group_m", "split_k"):
        if getattr(tiling, name) < 1:
            raise ValueError(f"tiling: {name}={getattr(tiling, name)} must be >= 1")
    steps = k_step_count(geom, tiling.block_k)
    if tiling.split_k > steps:
        raise ValueError(
            f"tiling: split_k={tiling.split_k} exceeds the {steps} K steps of this conv "
            f"(kh*kw*ceil(C_in/block_k) = {geom.kernel[0]}*{geom.kernel[1]}*ceil({geom.in_channels}/{tiling.block_k}))"
        )


def tuning_key(geom: ConvGeometry, dtype: torch.dtype, device: torch.device) -> tuple[object, ...]:
    """Cache key of a timed choice: pixels rounded up to a power of two, C_in, C_out, kernel, stride, dilation, ..."""
    pixels = next_power_of_2(geom.pixels)
    return (pixels, geom.in_channels, geom.out_channels, geom.kernel, geom.stride, geom.dilation, dtype, device)


_CHOICES: dict[tuple[object, ...], ConvTiling] = {}


def clear_choices() -> None:
    """Forget every timed choice (the next call of each key times again)."""
    _CHOICES.clear()


def cached_choice(geom: ConvGeometry, dtype: torch.dtype, device: torch.device) -> ConvTiling | None:
    """The timed choice of the shape key, or None when none is cached."""
    return _CHOICES.get(tuning_key(geom, dtype, device))


def select_tiling(
    geom: ConvGeometry, dtype: torch.dtype, device: torch.device, launch: Callable[[ConvTiling], None]
) -> ConvTiling:
    """The launch configuration for ``geom`` by the module's selection rule (module doc).

    ``launch(tiling)`` runs the conv once with a tiling, on the current
    stream; it is called only to time candidates (a warm-up launch, then
    :data:`TIMING_REPS` timed ones each), on CUDA and never while the current
    stream is capturing. Candidates that do not fit the device (Triton's
    ``OutOfResources``) are skipped.
    """
    if device.type != "cuda" or interpreting():
        return heuristic_tiling(geom)
    properties = torch.cuda.get_device_properties(device)
    key = tuning_key(geom, dtype, device)
    choice = _CHOICES.get(key)
    if choice is not None:
        return choice
    if torch.cuda.is_current_stream_capturing():
        return heuristic_tiling(geom, properties.multi_processor_count)
    from triton.runtime.errors import OutOfResources

    times: dict[ConvTiling, float] = {}
    for tiling in candidates(geom, dtype, properties.multi_processor_count, properties.shared_memory_per_block_optin):
        try:
            times[tiling] = time_ms(launch, tiling)
        except OutOfResources:
            continue
    choice = min(times, key=times.__getitem__) if times else heuristic_tiling(geom, properties.multi_processor_count)
    _CHOICES[key] = choice
    return choice


def time_ms(launch: Callable[[ConvTiling], None], tiling: ConvTiling, reps: int = TIMING_REPS) -> float:
    """Mean milliseconds of ``launch(tiling)`` over ``reps`` launches on the current CUDA stream (after a warm-up)."""
    launch(tiling)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        launch(tiling)
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps
