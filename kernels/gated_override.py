"""The tiles a gated call runs: the layer's own (:mod:`kernels.gated_tiling`), or a checked ``tiling=`` override.

:func:`schedule_tiling` is the one place the launcher
(:func:`kernels.gated_conv2d.gated_conv2d`) and the work predictions
(:func:`kernels.gated_kernel_counters`, :func:`kernels.gated_kernel_bytes`)
take their tiles from; :func:`check_gated_tiling` says which overrides the
kernels can run on a layer (they change speed and counted work, never the
result). Pure host code.
"""

from __future__ import annotations

from ._validation import check_tile_block, check_tile_fields, check_tile_launch, describe
from .gated_tiling import MAX_BLOCK_N, CompactTiling, GatedTiling, compact_tiling, gated_tiling

__all__ = ["MAX_BLOCK_K", "MAX_BLOCK_M", "check_gated_tiling", "schedule_tiling"]


def schedule_tiling(
    schedule: str, pixels: int, in_channels: int, out_channels: int, kernel: tuple[int, int], gate_group: int,
    base_fraction: float, base_layout: str, override: GatedTiling | CompactTiling | None = None,
) -> GatedTiling | CompactTiling:  # fmt: skip
    """The tiles of a resolved ``schedule``: :func:`compact_tiling` or :func:`gated_tiling`, or a checked ``override``.

    The launcher and :func:`gated_kernel_counters` both take their tiles from
    here. ``override`` (the ``tiling=`` argument of the launcher and of the
    work predictions) replaces the layer's own tiles once
    :func:`check_gated_tiling` accepts it.
    """
    if schedule == "compact":
        own = compact_tiling(pixels, in_channels, out_channels, kernel, gate_group, base_fraction, base_layout)
    else:
        own = gated_tiling(pixels, in_channels, out_channels, gate_group, base_fraction)
    if override is None:
        return own
    check_gated_tiling(override, own, schedule, gate_group, out_channels)
    return override


MAX_BLOCK_M = 256
"""Tallest pixel tile of a gated program (an override's ``block_m``)."""

MAX_BLOCK_K = 128
"""Widest K step of a gated program (an override's ``block_k``)."""


def check_gated_tiling(
    tiling: object, own: GatedTiling | CompactTiling, schedule: str, gate_group: int, out_channels: int
) -> None:
    """Raise unless ``tiling`` can replace ``own``, the layer's tiles for ``schedule`` (:func:`schedule_tiling`).

    ``TypeError`` (naming ``tiling``) unless it is of ``own``'s class
    (:class:`CompactTiling` for ``"compact"``, :class:`GatedTiling` for
    ``"tiled"``) with int fields (``flat_k`` a bool). ``ValueError`` naming the
    field and the reason when a field fixed by ``gate_group`` and
    ``C_out`` differs from ``own``'s (a program's ``group_slot`` and
    ``sub_blocks``, the conditional columns' ``block_n``), when a program's
    ``block_n`` is not ``group_slot * groups_per_block`` or lies outside [16,
    :data:`MAX_BLOCK_N`], when ``block_m`` is not a power of two in [16,
    :data:`MAX_BLOCK_M`] or ``block_k`` in [16, :data:`MAX_BLOCK_K`], and for
    ``num_warps`` / ``tail_num_warps`` outside {1, 2, 4, 8}, ``num_stages``
    under 1 or ``in_place_percent`` outside [0, 100]. What it accepts runs exactly (tests check it against the
    reference); the override changes only speed and the counted work.
    """
    if type(tiling) is not type(own):
        raise TypeError(
            f"tiling must be a kernels.gated_tiling.{type(own).__name__} for the {schedule!r} schedule (or None), "
            f"got {describe(tiling)}"
        )
    check_tile_fields(tiling)
    layer = f"gate_group={gate_group} over C_out={out_channels}"
    if isinstance(tiling, CompactTiling):
        _check_program(tiling.base, own.base, "tiling.base", layer)
        _check_fixed(tiling, own, ("block_n", "sub_blocks"), "tiling", layer)
        check_tile_block("tiling: block_m", tiling.block_m, MAX_BLOCK_M)
        check_tile_block("tiling: block_k", tiling.block_k, MAX_BLOCK_K)
        check_tile_launch("tiling", tiling.num_warps, tiling.num_stages)
        check_tile_launch("tiling.tail_num_warps", tiling.tail_num_warps)
        if not 0 <= tiling.in_place_percent <= 100:
            raise ValueError(
                f"tiling.in_place_percent={tiling.in_place_percent} must be in [0, 100] (0: never in place)"
            )
        return
    _check_program(tiling, own, "tiling", layer)


def _check_fixed(tiling: object, own: object, fields: tuple[str, ...], name: str, layer: str) -> None:
    """``ValueError`` naming ``name.field`` when a field the layer fixes differs from ``own``'s."""
    for field in fields:
        value, needed = getattr(tiling, field), getattr(own, field)
        if value != needed:
            raise ValueError(f"{name}.{field}={value} does not fit this layer: {layer} needs {field}={needed}")


def _check_program(tiling: GatedTiling, own: GatedTiling, name: str, layer: str) -> None:
    """The checks of one :class:`GatedTiling` (a tiled program, or a compacted first launch's)."""
    _check_fixed(tiling, own, ("group_slot", "sub_blocks"), name, layer)
    if tiling.groups_per_block < 1 or tiling.block_n != tiling.group_slot * tiling.groups_per_block:
        raise ValueError(
            f"{name}: block_n={tiling.block_n} must hold whole gate groups: group_slot*groups_per_block = "
            f"{tiling.group_slot}*{tiling.groups_per_block}"
        )
    check_tile_block(f"{name}: block_n", tiling.block_n, MAX_BLOCK_N)
    check_tile_block(f"{name}: block_m", tiling.block_m, MAX_BLOCK_M)
    check_tile_block(f"{name}: block_k", tiling.block_k, MAX_BLOCK_K)
    check_tile_launch(name, tiling.num_warps, tiling.num_stages)
