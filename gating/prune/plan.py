"""Choosing which channels stay, and pruning a network in one call.

``prune(model, example, PruneConfig(...))`` traces the dependency groups,
scores channels with a criterion (:mod:`gating.prune.criteria`), picks the
kept channels per group by ratio or by a MAC / parameter budget, and slices
the network in place (:mod:`gating.prune.surgery`). Counting is exact:
parameters and bytes from the tensors, MACs from
``torch.utils.flop_counter.FlopCounterMode`` on ``example``
(``docs/design.md#static-pruning``).
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from . import criteria as crit
from .groups import DependencyGroup, dependency_groups
from .surgery import apply_cuts, module_cuts

SCOPES = ("global", "layer")
SIMILARITY_SOURCES = ("weights", "features")


@dataclass(frozen=True)
class PruneConfig:
    """How much to prune and by which criterion; invalid values raise ``ValueError`` naming the field.

    Attributes:
        criterion: ``"l1"``, ``"slimming"``, ``"similarity"``, ``"gate"``,
            ``"static"`` or ``"multigranularity"`` (:mod:`gating.prune.criteria`; the last
            takes a ``ratio``, used for channels and for kernels alike).
        ratio: fraction of the scored channels to remove, in ``[0, 1)``.
        flops: instead of ``ratio``: keep at most this fraction of the MACs (in ``(0, 1]``).
        params: instead of ``ratio``: keep at most this fraction of the parameters (in ``(0, 1]``).
        scope: ``"global"`` (one threshold over all groups' scores, as network
            slimming) or ``"layer"`` (every group loses ``ratio`` of its channels).
        max_ratio: largest fraction of one group that may be removed, in ``[0, 1)``.
        round_to: kept channel counts are rounded up to a multiple of this
            (and of the ``gate_group`` or ``channel_group`` of a gated producer); at least
            ``round_to`` channels (or all of a smaller group) stay.
        similarity_source: ``"weights"`` or ``"features"`` for the similarity criterion.
    """

    criterion: str = "l1"
    ratio: float | None = None
    flops: float | None = None
    params: float | None = None
    scope: str = "global"
    max_ratio: float = 0.9
    round_to: int = 8
    similarity_source: str = "weights"

    def __post_init__(self) -> None:
        if self.criterion not in crit.CRITERIA:
            raise ValueError(f"PruneConfig.criterion must be one of {crit.CRITERIA}, got {self.criterion!r}")
        targets = [name for name in ("ratio", "flops", "params") if getattr(self, name) is not None]
        if len(targets) != 1:
            raise ValueError(f"PruneConfig needs exactly one of ratio, flops, params; got {targets or 'none'}")
        if self.ratio is not None and not (_real(self.ratio) and 0 <= self.ratio < 1):
            raise ValueError(f"PruneConfig.ratio must be in [0, 1), got {self.ratio!r}")
        if self.criterion == "multigranularity" and self.ratio is None:
            raise ValueError("PruneConfig: the 'multigranularity' criterion takes a ratio, not a flops or params budget")
        for name in ("flops", "params"):
            value = getattr(self, name)
            if value is not None and not (_real(value) and 0 < value <= 1):
                raise ValueError(f"PruneConfig.{name} must be in (0, 1], got {value!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"PruneConfig.scope must be one of {SCOPES}, got {self.scope!r}")
        if not (_real(self.max_ratio) and 0 <= self.max_ratio < 1):
            raise ValueError(f"PruneConfig.max_ratio must be in [0, 1), got {self.max_ratio!r}")
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise ValueError(f"PruneConfig.round_to must be an int >= 1, got {self.round_to!r}")
        if self.similarity_source not in SIMILARITY_SOURCES:
            raise ValueError(
                f"PruneConfig.similarity_source must be one of {SIMILARITY_SOURCES}, got {self.similarity_source!r}"
            )


def _real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


@dataclass(frozen=True)
class Size:
    """Exact size of a network: parameters, the non-zero ones, their bytes, and dense MACs on one example input."""

    params: int
    param_bytes: int
    macs: int
    nonzero_params: int


@dataclass
class PruneResult:
    """What :func:`prune` did.

    Attributes:
        before, after: :class:`Size` of the network before and after.
        kept: per pruned group index, ``(kept channels, channels)``.
        groups: the dependency groups traced before pruning.
        floored: group indices whose count was raised to ``round_to`` (the
            ratio would have emptied or nearly emptied them).
        zeroed_kernels: with ``"multigranularity"``, per convolution of a
            coupled group, ``(zero 2-D kernels, kernels)``.
    """

    before: Size
    after: Size
    kept: dict[int, tuple[int, int]]
    groups: list[DependencyGroup]
    floored: list[int] = field(default_factory=list)
    zeroed_kernels: dict[str, tuple[int, int]] = field(default_factory=dict)

    def table(self, extra_rows: Sequence[tuple[str, int, int]] = ()) -> str:
        """A text table of parameters, parameter bytes and MACs before / after, then ``extra_rows`` (label, before, after)."""
        rows = [("parameters", self.before.params, self.after.params),
                ("non-zero parameters", self.before.nonzero_params, self.after.nonzero_params),
                ("parameter bytes", self.before.param_bytes, self.after.param_bytes),
                ("MACs (dense, example input)", self.before.macs, self.after.macs), *extra_rows]
        lines = [f"{'':30s} {'before':>14s} {'after':>14s} {'ratio':>7s}"]
        for label, a, b in rows:
            lines.append(f"{label:30s} {a:14,d} {b:14,d} {b / a if a else float('nan'):7.3f}")
        return "\n".join(lines)


@torch.no_grad()
def measure(model: nn.Module, example: torch.Tensor) -> Size:
    """:class:`Size` of ``model``: its parameters and the MACs of one eval-mode forward on ``example``."""
    params = list(model.parameters())
    with FlopCounterMode(display=False) as counter:
        crit.eval_forward(model, example)
    return Size(
        params=sum(p.numel() for p in params),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        macs=int(counter.get_total_flops()) // 2,
        nonzero_params=sum(int(torch.count_nonzero(p)) for p in params),
    )


def _round_to(model: nn.Module, group: DependencyGroup, round_to: int) -> int:
    modules = dict(model.named_modules())
    step = round_to
    for name in group.producers:
        for attr in ("gate_group", "channel_group"):  # partial-sum and runtime gates
            size = getattr(modules[name], attr, None)
            if isinstance(size, int):
                step = math.lcm(step, size)
    return step


def _kept_count(wanted: int, channels: int, step: int, max_ratio: float) -> tuple[int, bool]:
    """Kept channels: ``wanted`` raised to the per-group maximum removal, rounded up to ``step``, at least ``step``.

    The flag is true when the floor of ``step`` channels (or the whole group)
    kept more than ``wanted``.
    """
    floor = min(step, channels)
    count = max(wanted, channels - math.floor(max_ratio * channels))
    count = max(floor, min(channels, step * math.ceil(count / step)))
    return count, wanted < floor


def select_counts(
    model: nn.Module, groups: list[DependencyGroup], scores: dict[int, torch.Tensor], ratio: float, config: PruneConfig
) -> tuple[dict[int, int], list[int]]:
    """Kept channels per scored group for a removal ``ratio`` (global threshold or per group)."""
    by_index = {g.index: g for g in groups}
    wanted: dict[int, int] = {}
    if config.scope == "layer":
        for index, score in scores.items():
            wanted[index] = len(score) - math.floor(ratio * len(score))
    else:
        everything = torch.cat([s for s in scores.values()]) if scores else torch.zeros(0)
        remove = math.floor(ratio * len(everything))
        if remove == 0:
            wanted = {index: len(s) for index, s in scores.items()}
        else:
            threshold = everything.sort().values[remove - 1]
            wanted = {index: int((s > threshold).sum()) for index, s in scores.items()}
    counts, floored = {}, []
    for index, want in wanted.items():
        group = by_index[index]
        count, was_floored = _kept_count(want, group.channels, _round_to(model, group, config.round_to), config.max_ratio)
        counts[index] = count
        if was_floored:
            floored.append(index)
    return counts, floored


def keep_for_ratios(
    model: nn.Module, groups: list[DependencyGroup], scores: Mapping[int, torch.Tensor], ratios: Mapping[int, float],
    round_to: int = 8, max_ratio: float = 0.9,
) -> dict[int, torch.Tensor]:
    """Channels to keep (sorted int64 indices) per group for a kept fraction per group (``ratios``, group index ->
    fraction in [0, 1]): the highest ``scores``, their count rounded as :class:`PruneConfig` rounds it
    (``round_to``, the gated producer's group size, ``max_ratio``). Groups absent from ``ratios`` stay whole."""
    by_index = {g.index: g for g in groups}
    counts = {}
    for index, fraction in ratios.items():
        group = by_index[index]
        wanted = math.ceil(float(fraction) * group.channels - 1e-9)
        counts[index] = _kept_count(wanted, group.channels, _round_to(model, group, round_to), max_ratio)[0]
    return _keep_top(dict(scores), counts)


def _keep_top(scores: dict[int, torch.Tensor], counts: dict[int, int]) -> dict[int, torch.Tensor]:
    keep = {}
    for index, count in counts.items():
        if count < len(scores[index]):
            top = scores[index].argsort(descending=True, stable=True)[:count]
            keep[index] = top.sort().values.to(torch.int64)
    return keep


def _coupled(group: DependencyGroup) -> bool:
    """A group whose channels a residual add or a concatenation ties to several producers."""
    return len(group.producers) > 1


def _scores(model: nn.Module, groups: list[DependencyGroup], config: PruneConfig, calibration: torch.Tensor | None):
    if config.criterion in ("l1", "similarity"):
        return crit.l1_scores(model, groups)
    if config.criterion == "multigranularity":
        return crit.l1_scores(model, [g for g in groups if not _coupled(g)])
    if config.criterion == "slimming":
        return crit.slimming_scores(model, groups)
    if config.criterion == "static":
        return crit.static_scores(model, groups)
    if calibration is None:
        raise ValueError("prune: the 'gate' criterion needs calibration inputs (calibration=...)")
    return crit.gate_scores(model, groups, calibration)


def _plan(model, groups, scores, ratio, config, rows) -> tuple[dict[int, torch.Tensor], list[int]]:
    counts, floored = select_counts(model, groups, scores, ratio, config)
    if config.criterion != "similarity":
        return _keep_top(scores, counts), floored
    keep = {}
    for index, count in counts.items():
        if count < len(scores[index]):
            keep[index] = crit.similar_representatives(rows[index], scores[index], count)
    return keep, floored


def _size_after(model: nn.Module, groups, keep, example) -> Size:
    trial = copy.deepcopy(model)
    apply_cuts(trial, module_cuts(groups, keep))
    return measure(trial, example)


def prune(
    model: nn.Module, example: torch.Tensor, config: PruneConfig, calibration: torch.Tensor | None = None
) -> PruneResult:
    """Remove channels from ``model`` in place as ``config`` says; returns what changed.

    ``example`` is an input like the model's (e.g. ``[1, 3, H, W]``): it
    drives the trace and the MAC count. ``calibration`` (a batch of inputs)
    is needed by the ``"gate"`` criterion and by ``"similarity"`` with
    ``source="features"``. A ``GatedModel`` stays gated: its gated layers keep
    their spec and rebuild their partitions (``ChannelGatedConv2d.prune_channels``).

    With ``flops`` or ``params`` the removal ratio is found by bisection on
    measured sizes; ``ValueError`` says what the smallest reachable size is
    when the budget cannot be met within ``max_ratio`` and ``round_to``.
    Groups that ``round_to`` keeps larger than the ratio asks are warned about.
    """
    if not isinstance(config, PruneConfig):
        raise TypeError(f"prune: config must be a PruneConfig, got {type(config).__name__}")
    groups = dependency_groups(model, example)
    before = measure(model, example)
    scores = _scores(model, groups, config, calibration)
    if not scores:
        raise ValueError(f"prune: the {config.criterion!r} criterion scores no prunable group of {type(model).__name__}")
    rows = None
    if config.criterion == "similarity":
        if config.similarity_source == "features":
            if calibration is None:
                raise ValueError("prune: similarity with source='features' needs calibration inputs")
            rows = crit.feature_rows(model, groups, calibration)
        else:
            rows = crit.filter_rows(model, groups)
    if config.ratio is not None:
        keep, floored = _plan(model, groups, scores, config.ratio, config, rows)
    else:
        keep, floored = _budget_plan(model, groups, scores, config, rows, example, before)
    if floored:
        names = [groups[i].producers[0] for i in floored]
        warnings.warn(f"prune: kept at least round_to={config.round_to} channels in groups produced by {names}", stacklevel=2)
    apply_cuts(model, module_cuts(groups, keep))
    zeroed = _zero_coupled_kernels(model, groups, config) if config.criterion == "multigranularity" else {}
    after = measure(model, example)
    kept = {index: (len(k), groups[index].channels) for index, k in keep.items()}
    return PruneResult(before=before, after=after, kept=kept, groups=groups, floored=floored, zeroed_kernels=zeroed)


def _zero_coupled_kernels(model: nn.Module, groups: list[DependencyGroup], config: PruneConfig) -> dict[str, tuple[int, int]]:
    """Multi-granularity: in every coupled group, zero ``ratio`` of each producing convolution's 2-D kernels."""
    modules = dict(model.named_modules())
    zeroed = {}
    for group in groups:
        if not (group.prunable and _coupled(group)):
            continue
        for name in group.producers:
            weight = getattr(modules[name], "weight", None)
            if isinstance(weight, torch.Tensor) and weight.dim() == 4:
                count = crit.zero_weak_kernels(modules[name], min(config.ratio, config.max_ratio))
                zeroed[name] = (count, weight.shape[0] * weight.shape[1])
    return zeroed


def _budget_plan(model, groups, scores, config, rows, example, before):
    field_name = "flops" if config.flops is not None else "params"
    target = config.flops if config.flops is not None else config.params

    def fraction(size: Size) -> float:
        return size.macs / before.macs if field_name == "flops" else size.params / before.params

    low, high = 0.0, config.max_ratio
    best = None
    plan_low = _plan(model, groups, scores, low, config, rows)
    if fraction(before) <= target:
        return plan_low
    plan_high = _plan(model, groups, scores, high, config, rows)
    reached = fraction(_size_after(model, groups, plan_high[0], example))
    if reached > target:
        raise ValueError(
            f"prune: {field_name}={target} cannot be reached: at most max_ratio={config.max_ratio} of each group "
            f"removed (round_to={config.round_to}) leaves {reached:.3f} of the {field_name}"
        )
    best = plan_high
    for _ in range(14):
        mid = (low + high) / 2
        plan = _plan(model, groups, scores, mid, config, rows)
        if fraction(_size_after(model, groups, plan[0], example)) <= target:
            high, best = mid, plan
        else:
            low = mid
    return best
