"""Pruning criteria: how important each channel of a dependency group is.

Every criterion returns, per prunable group it can score, a float64 tensor of
one score per channel (higher = keep); groups it cannot score are left out
and kept whole (``docs/design.md#static-pruning``):

* ``"l1"``: mean absolute filter weight of the group's producers (the conv or
  linear rows that make the channel), each relative to that producer's mean
  over its channels, averaged over producers.
* ``"slimming"``: ``|gamma|`` of the group's BatchNorms (network slimming);
  train with :func:`slimming_penalty` first. Groups without a BatchNorm are
  not scored.
* ``"gate"``: fraction of decisions on for the channel's gate group in the
  gated producers over a calibration batch (channels whose gate groups are
  almost never on go first). Groups without a gated producer are not scored.
* ``"multigranularity"``: ``"l1"`` on the groups with one producer (their
  channels can go); in the groups that a residual add or a concatenation
  couples (several producers), channels stay and the producers' weakest 2-D
  kernels ``W[o, i]`` are zeroed instead (:func:`zero_weak_kernels`), which
  :func:`gating.save` stores compactly. Train first with
  :func:`kernel_l1_penalty`, an adaptive L1 on the kernels.
* ``"static"``: the learned static importance of the runtime gates
  (``RuntimeGatedConv2d.static_importance``) that produce the group's
  channels, averaged over them: channels the runtime gates rank last for
  every input go first (issue 9's storage saving). Groups without a runtime
  gate among their producers are not scored.
* ``"similarity"``: not a score but a selection (:func:`similar_representatives`):
  channels are clustered hierarchically by the cosine distance of their
  filters (``source="weights"``) or of their feature maps on a calibration
  batch (``source="features"``) and the strongest (L1) channel of each
  cluster stays.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .groups import DependencyGroup, Member

CRITERIA = ("l1", "slimming", "similarity", "gate", "multigranularity", "static")


def slimming_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of ``|gamma|`` over every affine BatchNorm of ``model`` (0-dim tensor).

    Added to the loss with a weight ``s`` (``TrainConfig.slimming_weight``, the
    network-slimming sparsity, about 1e-5 to 1e-4), its subgradient is the
    ``s * sign(gamma)`` of network slimming.
    """
    terms = [m.weight.abs().sum() for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if not terms:
        return torch.zeros(())
    return torch.stack(terms).sum()


def _conv_kernels(model: nn.Module) -> list[torch.Tensor]:
    """The weights ``[C_out, C_in / groups, kh, kw]`` of every convolution (plain or gated) of ``model``."""
    weights = {}
    for m in model.modules():  # a gate and the conv it wraps share one weight: count it once
        weight = getattr(m, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() == 4:
            weights.setdefault(id(weight), weight)
    return list(weights.values())


def kernel_l1_penalty(model: nn.Module, eps: float = 1e-3) -> torch.Tensor:
    """Adaptive L1 over 2-D kernels: the mean over every kernel ``K = W[o, i]`` of every convolution of
    ``||K||_1 / (||K||_1 + eps)``, the weights ``1 / (||K||_1 + eps)`` held constant (0-dim tensor in [0, 1)).

    Its gradient on a weight is ``sign(w) / (N * (||K||_1 + eps))`` for ``N``
    kernels: weak kernels are pushed to zero much harder than strong ones
    (the adaptive reweighting of the multi-granularity method). Added to the
    loss with ``TrainConfig.kernel_l1_weight``.
    """
    norms = [w.abs().sum(dim=(2, 3)).flatten() for w in _conv_kernels(model)]
    if not norms:
        return torch.zeros(())
    norm = torch.cat(norms)
    return (norm / (norm.detach() + eps)).mean()


def zero_weak_kernels(module: nn.Module, ratio: float) -> int:
    """Zero the ``floor(ratio * kernels)`` 2-D kernels ``W[o, i]`` of smallest L1 norm in ``module.weight``, in place.

    Kernels already zero count first. Returns how many kernels are zero afterwards.
    """
    weight = module.weight
    norms = weight.detach().abs().sum(dim=(2, 3)).flatten()
    count = math.floor(ratio * norms.numel())
    with torch.no_grad():
        if count:
            weak = norms.argsort(stable=True)[:count]
            weight.view(-1, *weight.shape[2:])[weak] = 0
    return int((weight.detach().abs().sum(dim=(2, 3)) == 0).sum())


def hold_zero_kernels(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Keep every all-zero 2-D kernel of ``model``'s convolutions at zero while training.

    Registers a gradient hook on each convolution weight with zero kernels
    that zeroes their gradient; with SGD (momentum and weight decay
    included) a zero weight with zero gradient stays zero. Call after the
    model's final construction (``GatedModel`` copies weights into new
    parameters) and before building the optimizer. Returns the hook handles.
    """
    handles = []
    for weight in _conv_kernels(model):
        alive = (weight.detach().abs().sum(dim=(2, 3)) != 0)[:, :, None, None]
        if not bool(alive.all()):
            mask = alive.to(weight.dtype)
            handles.append(weight.register_hook(lambda grad, mask=mask: grad * mask))
    return handles


def _member_slice(group: DependencyGroup, member: Member, values: torch.Tensor) -> torch.Tensor:
    """The rows of ``values`` (one per channel of the member's side) that belong to ``group``."""
    rows = []
    for offset, repeat in group.offsets(member):
        rows.append(values[offset : offset + group.channels * repeat].reshape(group.channels, repeat, *values.shape[1:]))
    if not rows:
        raise ValueError(f"{member.module} holds no channel of dependency group {group.index}")
    return rows[0].flatten(1)


def _producer_rows(modules: dict[str, nn.Module], group: DependencyGroup) -> list[torch.Tensor]:
    """Per producer: its output filters for this group's channels, flattened ``[channels, fan_in]`` (float64)."""
    rows = []
    for member in group.members:
        if member.role == "out" and member.module in group.producers:
            weight = modules[member.module].weight.detach().double().cpu()
            rows.append(_member_slice(group, member, weight))
    return rows


def l1_scores(model: nn.Module, groups: list[DependencyGroup]) -> dict[int, torch.Tensor]:
    """``"l1"``: per prunable group, the mean over producers of each channel's mean ``|w|``."""
    modules = dict(model.named_modules())
    scores = {}
    for group in groups:
        if group.prunable:
            rows = _producer_rows(modules, group)
            per_producer = [r.abs().mean(dim=1) for r in rows]
            # Each producer's norms relative to its own mean, so that layers of
            # different fan-in (and init scale) compare under a global threshold.
            scores[group.index] = torch.stack([n / n.mean().clamp_min(1e-12) for n in per_producer]).mean(dim=0)
    return scores


def _mean_over_members(
    model: nn.Module, groups: list[DependencyGroup], values: Callable[[Member, nn.Module], torch.Tensor | None]
) -> dict[int, torch.Tensor]:
    """Per prunable group: the mean over its members of ``values(member, module)`` (one value per
    channel of the member's side, or ``None`` to skip the member), sliced to the group's channels."""
    modules = dict(model.named_modules())
    scores = {}
    for group in groups:
        if not group.prunable:
            continue
        found = []
        for member in group.members:
            per_channel = values(member, modules[member.module])
            if per_channel is not None:
                found.append(_member_slice(group, member, per_channel.double().cpu()[:, None])[:, 0])
        if found:
            scores[group.index] = torch.stack(found).mean(dim=0)
    return scores


def slimming_scores(model: nn.Module, groups: list[DependencyGroup]) -> dict[int, torch.Tensor]:
    """``"slimming"``: per prunable group with BatchNorms, the mean ``|gamma|`` over them."""

    def gamma(member: Member, module: nn.Module) -> torch.Tensor | None:
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            return module.weight.detach().abs()
        return None

    return _mean_over_members(model, groups, gamma)


def static_scores(model: nn.Module, groups: list[DependencyGroup]) -> dict[int, torch.Tensor]:
    """``"static"``: per prunable group with runtime-gated producers, their mean static importance."""

    def importance(member: Member, module: nn.Module) -> torch.Tensor | None:
        value = getattr(module, "static_importance", None)
        return value.detach() if member.role == "out" and isinstance(value, torch.Tensor) else None

    return _mean_over_members(model, groups, importance)


@torch.no_grad()
def eval_forward(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """``model(inputs)`` in eval mode without gradients; the model's training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return model(inputs)
    finally:
        model.train(was_training)


def gate_scores(model: nn.Module, groups: list[DependencyGroup], calibration: torch.Tensor) -> dict[int, torch.Tensor]:
    """``"gate"``: per prunable group with gated producers, each channel's gate on-rate on ``calibration``.

    Runs ``model`` once in eval mode on ``calibration`` and reads the gated
    producers' ``last_decisions`` (``[N, G, OH, OW]``, one decision per gate
    group of ``gate_group`` channels).
    """
    eval_forward(model, calibration)

    def on_rate(member: Member, module: nn.Module) -> torch.Tensor | None:
        if member.role != "out" or getattr(module, "last_decisions", None) is None:
            return None
        per_group = module.last_decisions.float().mean(dim=(0, 2, 3))
        return per_group.repeat_interleave(module.gate_group)[: module.out_channels]

    return _mean_over_members(model, groups, on_rate)


@torch.no_grad()
def feature_rows(model: nn.Module, groups: list[DependencyGroup], calibration: torch.Tensor) -> dict[int, torch.Tensor]:
    """Per prunable group: each channel's output feature map on ``calibration``, flattened (float64).

    The first producer's output is hooked (one eval-mode forward).
    """
    modules = dict(model.named_modules())
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for group in groups:
        if group.prunable:
            name = group.producers[0]
            handles.append(modules[name].register_forward_hook(_capture(captured, name)))
    try:
        eval_forward(model, calibration)
    finally:
        for handle in handles:
            handle.remove()
    rows = {}
    for group in groups:
        if group.prunable:
            out = captured[group.producers[0]].double().cpu()
            rows[group.index] = out.transpose(0, 1).reshape(out.shape[1], -1)
    return rows


def _capture(store: dict[str, torch.Tensor], name: str) -> Callable:
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        store[name] = output.detach()

    return hook


def filter_rows(model: nn.Module, groups: list[DependencyGroup]) -> dict[int, torch.Tensor]:
    """Per prunable group: each channel's producer filters, concatenated over producers (float64)."""
    modules = dict(model.named_modules())
    return {g.index: torch.cat(_producer_rows(modules, g), dim=1) for g in groups if g.prunable}


def similar_representatives(rows: torch.Tensor, strength: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices (sorted int64) of ``keep`` channels: the strongest of each cluster of similar channels.

    ``rows`` ``[C, D]`` describes each channel (filters or feature maps);
    channels are clustered with average-linkage hierarchical clustering on
    cosine distance (``scipy.cluster.hierarchy``) into ``keep`` clusters and
    the channel of largest ``strength`` (``[C]``, e.g. L1 norm) in each
    cluster stays. When ties leave fewer clusters, the strongest remaining
    channels fill up to ``keep``.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    channels = rows.shape[0]
    if not 1 <= keep <= channels:
        raise ValueError(f"similar_representatives: keep must be in [1, {channels}], got {keep}")
    if keep == channels:
        return torch.arange(channels)
    data = rows.double().cpu().numpy()
    norms = np.linalg.norm(data, axis=1, keepdims=True)
    data = np.where(norms > 0, data / np.where(norms > 0, norms, 1.0), 0.0)
    # Unit rows: Euclidean distance is a monotone function of cosine distance,
    # and average linkage on it is well defined for zero rows too.
    labels = fcluster(linkage(data, method="average", metric="euclidean"), t=keep, criterion="maxclust")
    strength = strength.double().cpu()
    chosen = []
    for label in np.unique(labels):
        members = torch.from_numpy(np.flatnonzero(labels == label))
        chosen.append(int(members[strength[members].argmax()]))
    if len(chosen) < keep:
        rest = [i for i in strength.argsort(descending=True).tolist() if i not in set(chosen)]
        chosen += rest[: keep - len(chosen)]
    return torch.tensor(sorted(chosen[:keep]), dtype=torch.int64)
