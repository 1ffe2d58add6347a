"""What a gated convolution executes: the MAC rule and the on-device work counters.

One rule for the algorithmic MACs of a partial-sum gated conv
(``docs/design.md#accounting``), used by the gated op's FLOP formula, the
reference implementation's counters and ``gating.accounting``:

    base        = N*OH*OW * sum_c |B_c| * kh*kw
    conditional = sum_{n, j, oh, ow} d[n, j, oh, ow] * sum_{c in group j} (C_in - |B_c|) * kh*kw
    gate        = N*OH*OW * C_out        (one multiply-add per output element, when the op computes d)

Counters (``docs/design.md#registered-ops``): the gated op returns an int64
``[9]`` tensor on x's device, laid out as :data:`COUNTER_FIELDS`: four work
counters, then the tiling unit they were counted in. The Triton kernel counts
tile-rounded work in its own tiles; the reference counts the exact work above
in units of one (pixel, gate group): ``block_m = 1``, ``block_n = min(gate_group,
C_out)``, ``block_k = 1``, one group per unit, one sub-block. Counters come
back when the op was called with ``count_work=True``; otherwise ``counters`` is an
empty int64 ``[0]`` (nothing counted, nothing launched). Pure PyTorch; no Triton.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import partition

WORK_FIELDS = ("tiles_total", "tiles_conditional_executed", "base_macs", "conditional_macs")
TILING_FIELDS = ("block_m", "block_n", "block_k", "groups_per_block", "sub_blocks")
COUNTER_FIELDS = WORK_FIELDS + TILING_FIELDS


def conditional_per_group(
    out_channels: int, in_channels: int, base_fraction: float, base_layout: str, gate_group: int
) -> list[int]:
    """Per gate group ``j``: ``sum_{c in j} (C_in - |B_c|)``, its conditional input channels summed over its outputs."""
    sizes = partition.base_sizes(out_channels, in_channels, base_fraction, base_layout)
    groups = partition.group_sizes(out_channels, gate_group)
    per_group, start = [], 0
    for size in groups:
        per_group.append(sum(in_channels - b for b in sizes[start : start + size]))
        start += size
    return per_group


def gated_mac_terms(
    out_shape: tuple[int, int, int, int] | torch.Size,
    in_channels: int,
    kernel: tuple[int, int],
    base_fraction: float,
    base_layout: str,
    gate_group: int,
) -> tuple[int, int, int]:
    """``(base, conditional if every decision were on, gate)`` MACs of a gated conv with output ``out_shape``.

    ``out_shape`` is ``[N, C_out, OH, OW]``; ``kernel`` is ``(kh, kw)``.
    """
    n, c_out, oh, ow = out_shape
    taps = kernel[0] * kernel[1]
    positions = n * oh * ow
    base = sum(partition.base_sizes(c_out, in_channels, base_fraction, base_layout))
    conditional = sum(conditional_per_group(c_out, in_channels, base_fraction, base_layout, gate_group))
    return positions * base * taps, positions * conditional * taps, positions * c_out


def conditional_macs(decisions: torch.Tensor, per_group: list[int], kernel: tuple[int, int]) -> torch.Tensor:
    """0-d int64 on the decisions' device: ``sum_j (decisions on in group j) * per_group[j] * kh*kw``.

    ``decisions`` is bool ``[N, G, OH, OW]``; ``per_group`` from
    :func:`conditional_per_group`. No host synchronisation.
    """
    on = decisions.sum(dim=(0, 2, 3), dtype=torch.int64)
    weights = torch.tensor(per_group, dtype=torch.int64, device=decisions.device)
    return (on * weights).sum() * (kernel[0] * kernel[1])


def _counter(name: str, as_int: bool = False) -> property:
    """A read-only view of counter ``name``: a 0-d int64 tensor, or an int (synchronising) with ``as_int``."""
    index = COUNTER_FIELDS.index(name)

    def read(self: "GatedConvStats") -> torch.Tensor | int:
        value = self.counters[index]
        return int(value) if as_int else value

    return property(read, doc=f"Counter ``{name}``.")


@dataclass(frozen=True)
class GatedConvStats:
    """Work executed by one gated conv call: a view of the op's int64 ``[9]`` counters on x's device.

    The work fields are 0-d int64 tensors (reading them, e.g. ``int(...)`` or
    :meth:`to_dict`, synchronises; the call does not); the tiling fields are
    ints (reading one synchronises too). See the module docstring for what the
    Triton kernel and the reference count.

    * ``tiles_total``: tiles (Triton: programs of the launch that computes
      the base sums, ``cdiv(N*OH*OW, base block_m) * cdiv(G, groups per
      block)``; reference: ``N*OH*OW*G`` (pixel, group) units);
    * ``tiles_conditional_executed``: tiles that ran conditional work (tiled
      schedule: programs with an active decision; compacted schedule: tiles of
      compacted active pixels, per gate group and sub-block);
    * ``base_macs`` / ``conditional_macs``: MACs of the base and conditional
      paths (Triton: tile-rounded, a tile's rows x columns x channels per K
      step run, taps included; reference: exact);
    * ``block_m``, ``block_n``, ``block_k``, ``groups_per_block``,
      ``sub_blocks``: the tiling unit of the conditional tiles
      (:func:`kernels.gated_kernel_counters` predicts all of them).
    """

    counters: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.counters, torch.Tensor) or self.counters.dtype != torch.int64:
            raise TypeError(f"counters must be an int64 tensor, got {self.counters!r}")
        if self.counters.shape != (len(COUNTER_FIELDS),):
            raise ValueError(
                f"counters must have shape [{len(COUNTER_FIELDS)}] (call the op with count_work=True), "
                f"got {tuple(self.counters.shape)}"
            )

    tiles_total = _counter("tiles_total")
    tiles_conditional_executed = _counter("tiles_conditional_executed")
    base_macs = _counter("base_macs")
    conditional_macs = _counter("conditional_macs")
    block_m = _counter("block_m", as_int=True)
    block_n = _counter("block_n", as_int=True)
    block_k = _counter("block_k", as_int=True)
    groups_per_block = _counter("groups_per_block", as_int=True)
    sub_blocks = _counter("sub_blocks", as_int=True)

    def to_dict(self) -> dict[str, int]:
        """Counters and tiling as plain ints (one synchronisation with the device)."""
        return dict(zip(COUNTER_FIELDS, self.counters.tolist()))


def reference_counters(
    decisions: torch.Tensor,
    out_shape: tuple[int, int, int, int],
    in_channels: int,
    kernel: tuple[int, int],
    base_fraction: float,
    base_layout: str,
    gate_group: int,
) -> torch.Tensor:
    """The reference's int64 ``[9]`` counters: exact work in (pixel, gate group) units (module docstring)."""
    n, c_out, oh, ow = out_shape
    base, _, _ = gated_mac_terms(out_shape, in_channels, kernel, base_fraction, base_layout, gate_group)
    per_group = conditional_per_group(c_out, in_channels, base_fraction, base_layout, gate_group)
    units = n * oh * ow * len(per_group)
    static = torch.tensor([units, 0, base, 0, 1, min(gate_group, c_out), 1, 1, 1], dtype=torch.int64)
    counters = static.to(decisions.device)
    counters[1] = decisions.sum(dtype=torch.int64)
    counters[3] = conditional_macs(decisions, per_group, kernel)
    return counters
