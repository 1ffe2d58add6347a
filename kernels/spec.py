"""``GateSpec``: the one definition of the gate settings the kernels and the modules must agree on.

``base_fraction``, ``base_layout``, ``gate_group`` and ``gate_block`` decide
which input channels form each output channel's base partial sum, which
output channels share one decision and over how large a block of pixels
(``docs/design.md#partial-sum-gate``). They are
defined, defaulted and validated here once; ``gating.GateConfig``, the gate
module, the folded inference form and the benchmark sweep hold or build a
``GateSpec`` instead of checking the fields themselves. The rules are the
checks of :mod:`kernels.partition`; this module only names the fields. The
registered op keeps taking the plain values (its schema holds only
tensors, numbers, strings and lists): :meth:`GateSpec.to_dict` expands a spec
at that boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from .partition import (
    check_fraction,
    check_gate_block,
    check_gate_group,
    check_layout,
    check_partition,
    chunk_count,
)

__all__ = ["GateSpec"]


def _check_settings(owner: str, base_fraction: Any, base_layout: Any, gate_group: Any, gate_block: Any) -> None:
    """The partition checks of the settings, each message naming ``<owner>.<field>``."""
    check_fraction(base_fraction, f"{owner}.base_fraction")
    check_layout(base_layout, f"{owner}.base_layout")
    if base_layout == "grouped":
        chunk_count(base_fraction, f"{owner}.base_fraction")
    check_gate_group(gate_group, f"{owner}.gate_group")
    check_gate_block(gate_block, f"{owner}.gate_block")


@dataclass(frozen=True)
class GateSpec:
    """The gate settings of one gated convolution, validated on construction (immutable, hashable).

    Attributes:
        base_fraction: fraction ``1/p`` of the input channels in each output
            channel's base partial sum, a float in ``(0, 1]`` (stored as float;
            default 0.25).
        base_layout: ``"first"`` (the first ``round(C_in * base_fraction)``
            input channels for every output) or ``"grouped"`` (block diagonal
            with ``p`` chunks; ``1/base_fraction`` must then be an integer).
        gate_group: output channels that share one decision per pixel, an int
            >= 1 (bool refused; default 32, chosen by the gate-granularity
            study, ``docs/design.md#gate-granularity``). A conv with ``C_out``
            outputs has ``ceil(C_out / gate_group)`` decisions per pixel.
        gate_block: side in output pixels of the square block that shares
            one decision per gate group, an int >= 1 (bool refused; default
            1 = one decision per pixel). Blocks tile the map from its top-left
            corner; edge blocks are cut by the border, and a block larger than
            the map covers all of it (the same as clamping ``gate_block`` to
            the map). Decisions stay stored per pixel, constant over a block
            (:func:`kernels.partition.block_mean`).

    Raises (``docs/design.md#exception-policy``): ``TypeError`` for a
    wrongly typed field (a non-number or bool ``base_fraction``, a non-str
    ``base_layout``, a non-int or bool ``gate_group`` or ``gate_block``), ``ValueError`` for a
    wrong value; the message names ``GateSpec.<field>``. Whether the spec fits
    a given conv's channel counts is :meth:`check`.
    """

    base_fraction: float = 0.25
    base_layout: str = "first"
    gate_group: int = 32
    gate_block: int = 1

    def __post_init__(self) -> None:
        _check_settings(type(self).__name__, self.base_fraction, self.base_layout, self.gate_group, self.gate_block)
        object.__setattr__(self, "base_fraction", float(self.base_fraction))

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order: ``("base_fraction", "base_layout", "gate_group", "gate_block")``."""
        return tuple(f.name for f in fields(cls))

    @classmethod
    def of(cls, owner: str, **settings: Any) -> GateSpec:
        """``GateSpec(**settings)`` (unset fields keep their defaults) whose errors name ``<owner>.<field>``.

        For an object that takes the settings as its own arguments or fields
        (``GateConfig``, ``ChannelGatedConv2d``, the benchmark ``Sweep``), so
        its errors name it. ``TypeError`` for an unknown setting name.
        """
        unknown = set(settings) - set(cls.names())
        if unknown:
            raise TypeError(f"{owner}: unknown gate settings {sorted(unknown)}; the settings are {cls.names()}")
        values = {f.name: f.default for f in fields(cls)} | settings
        _check_settings(owner, **values)
        return cls(**values)

    @classmethod
    def read(cls, holder: object) -> GateSpec:
        """The spec of an object with ``base_fraction``, ``base_layout``, ``gate_group`` and ``gate_block`` attributes.

        Errors name ``<type of holder>.<field>`` (see :meth:`of`).
        """
        return cls.of(type(holder).__name__, **{name: getattr(holder, name) for name in cls.names()})

    def check(self, out_channels: int, in_channels: int) -> None:
        """Raise ``ValueError`` naming the sizes unless this spec partitions a conv ``in_channels -> out_channels``.

        Only ``"grouped"`` can fail: its ``p = 1/base_fraction`` chunks need at
        least ``p`` input and ``p`` output channels. Builds no tensors.
        """
        check_partition(out_channels, in_channels, self.base_fraction, self.base_layout)

    def to_dict(self) -> dict[str, Any]:
        """``{"base_fraction": float, "base_layout": str, "gate_group": int, "gate_block": int}``.

        JSON values, and the keyword arguments of the kernels and the registered op.
        """
        return {name: getattr(self, name) for name in self.names()}
