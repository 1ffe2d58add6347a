"""Surgery: remove channels from a network in place, following its dependency groups.

A *plan* says, per prunable dependency group (:mod:`gating.prune.groups`),
which channels stay (``{group index: sorted int64 indices}``).
:func:`module_cuts` turns it into per-module index lists and :func:`apply_cuts`
slices every affected module in place, so forward hooks, module names and
``state_dict`` keys survive (``docs/design.md#static-pruning``):

* ``nn.Conv2d`` (groups = 1): output and input channels;
* depthwise ``nn.Conv2d``: its channels (groups = in = out channels);
* ``nn.BatchNorm1d/2d``: affine parameters and running statistics;
* ``nn.Linear``: output rows and input features;
* any module with ``prune_channels(out_keep, in_keep)`` (the gated
  convolution rebuilds its base / conditional split and gate groups).

The cuts applied are recorded on the traced network as ``pruned_channels``
(``{module: {"out": [...], "in": [...]}}``, indices into the original
channels, composed over repeated pruning) so :mod:`gating.io` can save the
recipe of the smaller network and rebuild it.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..convs import is_depthwise
from .groups import DependencyGroup, traced_network

Cuts = dict[str, dict[str, torch.Tensor]]


def check_keep(keep: torch.Tensor | None, size: int, what: str) -> torch.Tensor:
    """``keep`` as a CPU int64 index tensor into ``size`` channels (``None``: all of them).

    Raises ``TypeError`` unless it is a 1-D integer tensor and ``ValueError``
    unless its indices are distinct, in ``[0, size)`` and at least one;
    ``what`` names the argument in the messages.
    """
    if keep is None:
        return torch.arange(size)
    if not isinstance(keep, torch.Tensor) or keep.dtype != torch.int64 or keep.dim() != 1:
        raise TypeError(f"{what} must be a 1-D int64 tensor, got {getattr(keep, 'dtype', type(keep).__name__)}")
    if len(keep) == 0 or int(keep.min()) < 0 or int(keep.max()) >= size or len(torch.unique(keep)) != len(keep):
        raise ValueError(f"{what} must hold distinct channel indices in [0, {size}), at least one")
    return keep.cpu()


@torch.no_grad()
def prune_batchnorm(bn: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> None:
    """Keep only channels ``keep`` (int64 indices) of ``bn``, in place (affine and running statistics)."""
    keep = check_keep(keep, bn.num_features, f"{type(bn).__name__}: keep")
    device = next((t.device for t in (bn.weight, bn.running_mean) if t is not None), keep.device)
    keep = keep.to(device)
    if bn.affine:
        bn.weight = nn.Parameter(bn.weight[keep].clone())
        bn.bias = nn.Parameter(bn.bias[keep].clone())
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[keep].clone()
        bn.running_var = bn.running_var[keep].clone()
    bn.num_features = len(keep)


@torch.no_grad()
def _prune_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None, name: str) -> None:
    depthwise = is_depthwise(conv)
    if conv.groups > 1 and not depthwise:
        raise NotImplementedError(f"{name}: grouped convolution (groups={conv.groups}) cannot be pruned")
    out_idx = check_keep(out_keep, conv.out_channels, f"{name}: out_keep").to(conv.weight.device)
    if depthwise:
        if in_keep is not None and not torch.equal(in_keep.cpu(), out_idx.cpu()):
            raise ValueError(f"{name}: a depthwise convolution keeps the same input and output channels")
        weight = conv.weight[out_idx]
        conv.groups = conv.in_channels = len(out_idx)
    else:
        in_idx = check_keep(in_keep, conv.in_channels, f"{name}: in_keep").to(conv.weight.device)
        weight = conv.weight[out_idx][:, in_idx]
        conv.in_channels = len(in_idx)
    conv.weight = nn.Parameter(weight.clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias[out_idx].clone())
    conv.out_channels = len(out_idx)


@torch.no_grad()
def _prune_linear(linear: nn.Linear, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None, name: str) -> None:
    out_idx = check_keep(out_keep, linear.out_features, f"{name}: out_keep").to(linear.weight.device)
    in_idx = check_keep(in_keep, linear.in_features, f"{name}: in_keep").to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight[out_idx][:, in_idx].clone())
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias[out_idx].clone())
    linear.out_features, linear.in_features = len(out_idx), len(in_idx)


def prune_module(module: nn.Module, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None, name: str) -> None:
    """Keep output channels ``out_keep`` and input channels ``in_keep`` of one module, in place.

    ``None`` keeps a side whole. ``name`` is used in error messages.
    Raises ``NotImplementedError`` for module types surgery does not know.
    """
    if hasattr(module, "prune_channels"):
        module.prune_channels(out_keep, in_keep)
    elif isinstance(module, nn.Conv2d):
        _prune_conv(module, out_keep, in_keep, name)
    elif isinstance(module, nn.Linear):
        _prune_linear(module, out_keep, in_keep, name)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        if in_keep is not None:
            raise ValueError(f"{name}: a BatchNorm has no separate input channels")
        if out_keep is not None:
            prune_batchnorm(module, out_keep)
    else:
        raise NotImplementedError(f"{name}: surgery does not know {type(module).__name__}")


def module_cuts(groups: list[DependencyGroup], keep: Mapping[int, torch.Tensor]) -> Cuts:
    """Per-module index lists (``{module: {"out"|"in": int64 indices}}``) for a plan.

    ``keep`` maps group indices to the kept channels of that group (sorted,
    distinct); groups not in it keep everything. A module side made of
    several group segments (after a concatenation) keeps the union, in order;
    a side whose channels each span ``repeat`` features (a linear after a
    flatten) keeps every feature of a kept channel.
    """
    by_index = {g.index: g for g in groups}
    for index, kept in keep.items():
        group = by_index.get(index)
        if group is None:
            raise ValueError(f"plan names dependency group {index}, which the model does not have")
        if not group.prunable:
            raise ValueError(f"dependency group {index} ({group.channels} channels) cannot be pruned: {group.reason}")
        check_keep(kept, group.channels, f"plan for dependency group {index}")
    sides: dict[tuple[str, str], tuple] = {}
    for group in groups:
        for member in group.members:
            sides[(member.module, member.role)] = member.layout
    cuts: Cuts = {}
    for (module, role), layout in sides.items():
        if not any(seg.group in keep for seg in layout):
            continue
        pieces, offset = [], 0
        for seg in layout:
            channels = keep[seg.group] if seg.group in keep else torch.arange(seg.length)
            features = channels[:, None] * seg.repeat + torch.arange(seg.repeat)[None, :]
            pieces.append(offset + features.reshape(-1))
            offset += seg.length * seg.repeat
        cuts.setdefault(module, {})[role] = torch.cat(pieces).to(torch.int64)
    return cuts


def apply_cuts(model: nn.Module, cuts: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
    """Slice every module named in ``cuts`` (names relative to the traced network), in place.

    Every cut is checked against its module before any module changes, so a
    bad plan leaves the model as it was. The cuts are composed into the
    network's ``pruned_channels`` record.
    """
    network, prefix = traced_network(model)
    plain = {name[len(prefix):] if prefix and name.startswith(prefix) else name: sides for name, sides in cuts.items()}
    modules = dict(network.named_modules())
    for name, sides in plain.items():
        if name not in modules:
            raise ValueError(f"cut names module {name!r}, which {type(network).__name__} does not have")
        for role, index in sides.items():
            if role not in ("out", "in"):
                raise ValueError(f"cut for {name!r}: side must be 'out' or 'in', got {role!r}")
            check_keep(index, _side_size(modules[name], role, name), f"cut for {name!r} ({role})")
    record: dict[str, dict[str, list[int]]] = getattr(network, "pruned_channels", {}) or {}
    for name, sides in plain.items():
        module = modules[name]
        previous = record.setdefault(name, {})
        for role, index in sides.items():
            original = previous.get(role, list(range(_side_size(module, role, name))))
            previous[role] = [original[i] for i in index.tolist()]
        # A gate that took over the BatchNorm after its conv (named in the network it
        # came from) records that BatchNorm's cut too, so the recipe replays on the plain network.
        folded = getattr(module, "batchnorm_name", None)
        if folded and "out" in previous:
            record[folded] = {"out": list(previous["out"])}
        prune_module(module, sides.get("out"), sides.get("in"), name)
    network.pruned_channels = record


def _side_size(module: nn.Module, role: str, name: str) -> int:
    for attr in (("out_channels", "out_features", "num_features") if role == "out" else ("in_channels", "in_features")):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and role == "in":
        raise ValueError(f"cut for {name!r}: a BatchNorm has no input side")
    raise NotImplementedError(f"{name}: surgery does not know {type(module).__name__}")


def replay_cuts(network: nn.Module, record: Mapping[str, Mapping[str, list[int]]]) -> None:
    """Apply a ``pruned_channels`` record (indices into the original channels) to an unpruned network.

    Used by :func:`gating.load` to rebuild a pruned network from its recipe.
    """
    cuts = {name: {role: torch.tensor(list(index), dtype=torch.int64) for role, index in sides.items()}
            for name, sides in record.items()}
    apply_cuts(network, cuts)
