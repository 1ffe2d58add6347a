"""Configuration of partial-sum channel gating (docs/design.md#partial-sum-gate).

One small dataclass, validated on construction, that ``GatedModel`` reads to
decide which convolutions to gate and how.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from kernels.spec import GateSpec



def require_int(owner: str, name: str, value: object, minimum: int) -> None:
    """``ValueError`` ``"<owner>.<name> must be an int >= <minimum>, got <value>"`` unless ``value`` is such an int
    (a bool is not); the one check of the workflow configs' count fields."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{owner}.{name} must be an int >= {minimum}, got {value!r}")

def differing_settings(
    saved: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any], ignore: tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[str]]:
    """Compare a saved settings dict with the current one: ``(saved with defaults filled in, differing keys)``.

    Settings added after ``saved`` was written take their ``defaults``, which
    are what it ran with (a checkpoint from before ``gate_block`` existed holds
    a ``gate_block = 1`` model). The differing keys (sorted) range over both
    dicts, minus ``ignore``.
    """
    filled = {**defaults, **saved}
    keys = (filled.keys() | current.keys()) - set(ignore)
    return filled, sorted(key for key in keys if filled.get(key) != current.get(key))


GATE_KINDS = ("partial_sum", "runtime")


@dataclass
class GateConfig:
    """How ``GatedModel`` gates a network.

    Attributes:
        kind: ``"partial_sum"`` (``ChannelGatedConv2d``, the default) or
            ``"runtime"`` (``RuntimeGatedConv2d``: per-input top-k output
            channels by runtime x static importance, with the BatchNorm after
            each gated conv moved into the gate; ``docs/design.md#runtime-importance-gate``).
            The partial-sum settings below apply to the first, ``channel_group``,
            ``pruner`` and ``runtime_ratio`` to the second.
        base_fraction: fraction ``1/p`` of input channels in each output
            channel's base partial sum (default 1/4).
        base_layout: ``"first"`` (first ``C_in/p`` channels for every output)
            or ``"grouped"`` (block diagonal, ``p`` chunks).
        gate_group: output channels that share one decision per pixel
            (1 = the paper; 16 = default, matches tensor-core tiles).
        gate_block: side of the square block of output pixels that shares one
            decision per gate group, taken on the block's mean gate statistic
            (1 = default, one decision per pixel; edge blocks are cut by the
            map's border, a block larger than a map covers all of it).
            These four are validated by, and read together as, ``spec``
            (:class:`kernels.GateSpec`); their errors name ``GateConfig.<field>``.
        alpha: slope of the straight-through sigmoid surrogate.
        sparse_bp: zero the surrogate gradient where the gate is off.
        threshold_init: initial value of every learned threshold ``Δ``.
        target_threshold: ``T`` of the threshold loss ``λ Σ (Δ - T)^2``.
        threshold_weight: ``λ`` of the threshold loss (default 1e-4).
        target_flops_ratio: executed/dense MAC ratio the budget loss drives the
            whole model to (``None`` disables the budget loss).
        budget_weight: weight of the budget loss ``(ratio - target)^2``.
        coherence_weight: weight (>= 0) of the coherence loss, the mean over
            gated layers of the total variation of each layer's soft gate map
            ``sigmoid(alpha * zb)`` between neighbouring pixels
            (``gates.total_variation``): it pulls neighbouring decisions
            together while keeping pixel resolution; 0 = off (default).
        include: module names (as in ``named_modules``) to gate even if a
            default rule would skip them; an unsupported conv named here is an
            error.
        exclude: module names never to gate.
        skip_stem: skip the first convolution of the network (the stem).
        skip_shortcut: skip 1x1 convolutions on a shortcut path (a module name
            component ``downsample`` or ``shortcut``).
        channel_group: runtime gates keep a multiple of this many output
            channels (default 8; at most a gated layer's channels).
        pruner: runtime gates' selection, ``"unified"`` or ``"tradeoff"``.
        runtime_ratio: ``R_r`` in [0, 1] of the trade-off pruner.
    """

    base_fraction: float = GateSpec.base_fraction
    base_layout: str = GateSpec.base_layout
    gate_group: int = GateSpec.gate_group
    gate_block: int = GateSpec.gate_block
    alpha: float = 2.0
    sparse_bp: bool = False
    threshold_init: float = 0.0
    target_threshold: float = 1.0
    threshold_weight: float = 1e-4
    target_flops_ratio: float | None = None
    budget_weight: float = 1.0
    coherence_weight: float = 0.0
    include: tuple[str, ...] = field(default_factory=tuple)
    exclude: tuple[str, ...] = field(default_factory=tuple)
    skip_stem: bool = True
    skip_shortcut: bool = True
    kind: str = "partial_sum"
    channel_group: int = 8
    pruner: str = "unified"
    runtime_ratio: float = 1.0

    def __post_init__(self) -> None:
        self.include = tuple(self.include)
        self.exclude = tuple(self.exclude)
        GateSpec.read(self)  # the gate settings' one rule; errors name GateConfig.<field>
        if self.alpha <= 0:
            raise ValueError(f"GateConfig.alpha must be > 0, got {self.alpha!r}")
        if self.threshold_weight < 0 or self.budget_weight < 0:
            raise ValueError("GateConfig.threshold_weight and budget_weight must be >= 0")
        weight = self.coherence_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight < math.inf:
            raise ValueError(f"GateConfig.coherence_weight must be a finite number >= 0, got {weight!r}")
        if self.target_flops_ratio is not None and not 0.0 < self.target_flops_ratio <= 1.0:
            raise ValueError(
                f"GateConfig.target_flops_ratio must be in (0, 1] or None, got {self.target_flops_ratio!r}"
            )
        if self.kind not in GATE_KINDS:
            raise ValueError(f"GateConfig.kind must be one of {GATE_KINDS}, got {self.kind!r}")
        if isinstance(self.channel_group, bool) or not isinstance(self.channel_group, int) or self.channel_group < 1:
            raise ValueError(f"GateConfig.channel_group must be an int >= 1, got {self.channel_group!r}")
        if self.pruner not in ("unified", "tradeoff"):
            raise ValueError(f"GateConfig.pruner must be 'unified' or 'tradeoff', got {self.pruner!r}")
        ratio = self.runtime_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
            raise ValueError(f"GateConfig.runtime_ratio must be in [0, 1], got {ratio!r}")
        overlap = set(self.include) & set(self.exclude)
        if overlap:
            raise ValueError(f"GateConfig: modules both included and excluded: {sorted(overlap)}")

    @property
    def spec(self) -> GateSpec:
        """The :class:`kernels.GateSpec` of ``base_fraction``, ``base_layout``, ``gate_group`` and ``gate_block``."""
        return GateSpec.read(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists for tuples), for JSON and checkpoints."""
        out = asdict(self)
        out["include"], out["exclude"] = list(self.include), list(self.exclude)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GateConfig":
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        known = set(cls.__dataclass_fields__)
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"GateConfig: unknown fields {sorted(unknown)}")
        return cls(**data)
